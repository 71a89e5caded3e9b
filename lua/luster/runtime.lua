-- luster.runtime: what the runner calls inside each script's Lua state:
-- reading definitions, building ctx, activating instances, dispatching messages.
local cjson = require "cjson"
local json = require "luster.json"
local schema = require "luster.schema"
local luster = require "luster"
local core = require "luster.core"

local M = {}
local validate, encode = schema.validate, schema.encode
local decode, null = json.decode, cjson.null
local fmt = string.format

local function describe(v)
  if type(v) == "table" then
    local mt = getmetatable(v)
    return mt and mt.__name or "a table"
  end
  return type(v) == "nil" and "nothing" or "a " .. type(v)
end

-- Checks what a script returned and lists its definitions.
function M.definitions(result, file)
  local list
  if luster.is_definition(result) then
    list = { result }
  elseif type(result) == "table" and getmetatable(result) == nil and #result > 0 then
    list = {}
    for i, d in ipairs(result) do
      if not luster.is_definition(d) then
        if type(d) == "table" and getmetatable(d) and getmetatable(d).__name == "luster.entity" then
          error(fmt("%s: item %d is entity %s without handlers: return %s:handlers(function(ctx) ... end)",
            file, i, d.name, d.name), 0)
        end
        error(fmt("%s: item %d of the returned array is %s, not an entity, singleton or cron definition",
          file, i, describe(d)), 0)
      end
      list[i] = d
    end
  elseif type(result) == "table" and getmetatable(result) and getmetatable(result).__name == "luster.entity" then
    error(fmt("%s: returned entity %s without handlers: return %s:handlers(function(ctx) ... end)",
      file, result.name, result.name), 0)
  else
    error(fmt("%s: must return an entity definition (Entity:handlers(...)), a luster.singleton, "
      .. "a luster.cron, or an array of them; it returned %s", file, describe(result)), 0)
  end
  local seen = {}
  for _, d in ipairs(list) do
    if seen[d.name] then error(fmt("%s: defines '%s' twice", file, d.name), 0) end
    seen[d.name] = true
  end
  return list
end

---------------------------------------------------------------------------
-- ctx
---------------------------------------------------------------------------
local LEVELS = { "debug", "info", "warn", "error" }

local function make_logger(ctx)
  local prefix = ctx.id and fmt("[%s/%s] ", ctx.type, ctx.id) or fmt("[%s] ", ctx.type)
  local logger = {}
  local function emit(level, self_or_msg, ...)
    local parts = { ... }
    if self_or_msg ~= logger then table.insert(parts, 1, self_or_msg) end
    for i = 1, #parts do parts[i] = tostring(parts[i]) end
    core.log(level, prefix .. table.concat(parts, " "))
  end
  for _, level in ipairs(LEVELS) do
    logger[level] = function(...) return emit(level, ...) end
  end
  return setmetatable(logger, { __call = function(_, ...) return emit("info", ...) end })
end

local ctx_methods = {}
function ctx_methods.forget(self)
  if self.id == nil then error("forget is for entity instances", 2) end
  core.forget(self.type, self.id)
end

function ctx_methods.keep_alive(self, on)
  if self.id == nil then error("keep_alive is for entity instances", 2) end
  core.keep_alive(self.type, self.id, on ~= false)
end

local Ctx = { __name = "luster.ctx" }
Ctx.__index = function(t, k)
  if k == "runner" then return core.runner() end
  if k == "log" then return make_logger(t) end
  return ctx_methods[k]
end

local function new_ctx(name, id, shard)
  return setmetatable({ type = name, id = id, shard = shard }, Ctx)
end
M.new_ctx = new_ctx

---------------------------------------------------------------------------
-- activation and dispatch
---------------------------------------------------------------------------
local rpc_tags = setmetatable({}, { __mode = "k" }) -- def -> its RPC tags, in order

function M.activate(def, id, shard, snapshot_json)
  local ctx = new_ctx(def.name, id, shard)
  local snapshot
  if snapshot_json then snapshot = decode(snapshot_json) end
  local h = def.activate(ctx, snapshot)
  if type(h) ~= "table" then
    error(fmt("%s: activate must return a table of handlers, it returned %s", def.name, describe(h)), 0)
  end
  if def.options.durable and type(h.snapshot) ~= "function" then
    error(fmt("%s is durable: activate must return a snapshot function with the handlers (its state is saved from it)",
      def.name), 0)
  end
  local tags = rpc_tags[def]
  if not tags then
    tags = {}
    for i, r in ipairs(def.rpcs) do tags[i] = r.tag end
    rpc_tags[def] = tags
  end
  for i = 1, #tags do
    if type(h[tags[i]]) ~= "function" then
      error(fmt("%s: activate returned no handler function for RPC '%s'", def.name, tags[i]), 0)
    end
  end
  return h, ctx
end

-- Schema errors always carry a path ("" for the payload as a whole).
local function error_body(kind, path, message)
  return encode(schema.any, { kind = kind, path = path or "", message = message })
end

local function decode_payload(rpc, payload)
  local value
  if payload ~= "" then
    local ok, v = pcall(decode, payload)
    if not ok then
      return nil, error_body("schema", "", "invalid JSON: " .. tostring(v):gsub("^.-: ", ""))
    end
    if v ~= null then value = v end
  end
  local ok, err = validate(rpc.payload, value)
  if not ok then return nil, error_body("schema", err.path, err.message) end
  return value
end

local Req = { __name = "luster.request" }
Req.__index = function(t, k)
  if k == "headers" then
    local raw = rawget(t, 1)
    local h = raw and decode(raw) or {}
    rawset(t, "headers", h)
    return h
  elseif k == "request_id" then
    local id = tostring(rawget(t, 2))
    rawset(t, "request_id", id)
    return id
  elseif k == "trace_id" then -- the handler's trace (32 hex digits), read while it runs
    local id = core.trace_id()
    rawset(t, "trace_id", id)
    return id
  end
end

-- Runs one message: returns kind ("ok", "failure", "schema") and the JSON
-- body; anything raised is a defect, reported by the runner. The payload is
-- the decoded value (the runner decodes it, and answers invalid JSON
-- itself), or for a persisted message its stored JSON text.
function M.handle(def, handlers, ctx, tag, payload, request_id, headers, persisted)
  local rpc = def.by_tag[tag]
  local value
  if persisted then
    local bad
    value, bad = decode_payload(rpc, payload)
    if bad then
      -- Stored under an earlier version of the script: retrying cannot help.
      local err = decode(bad)
      return "defect", error_body("defect", err.path or "",
        fmt("the stored %s.%s message no longer matches its payload schema: %s", def.name, tag, err.message))
    end
  else
    if payload ~= null then value = payload end
    local ok, err = validate(rpc.payload, value)
    if not ok then return "schema", error_body("schema", err.path, err.message) end
  end
  local req = setmetatable({ tag = tag, payload = value, headers, request_id }, Req)
  local result, failure = handlers[tag](req, ctx)
  if result == nil and failure ~= nil then
    if not rpc.error then
      error(fmt("%s.%s returned a failure, but the RPC declares no error schema", def.name, tag), 0)
    end
    local ok, err = validate(rpc.error, failure)
    if not ok then
      error(fmt("%s.%s returned a failure that does not match its error schema: %s", def.name, tag, err.message), 0)
    end
    return "failure", encode(rpc.error, failure)
  end
  local ok, err = validate(rpc.success, result)
  if not ok then
    error(fmt("%s.%s returned a value that does not match its success schema: %s", def.name, tag, err.message), 0)
  end
  if result == nil then return "ok", "null" end
  return "ok", encode(rpc.success, result)
end

-- For a persisted RPC, before the message is stored: validates the payload
-- and computes its primary key and delivery time.
function M.persist_info(def, tag, payload)
  local rpc = def.by_tag[tag]
  local value, bad = decode_payload(rpc, payload)
  if bad then return "schema", bad end
  local pk, at = false, false
  if rpc.primary_key then
    pk = rpc.primary_key(value)
    if type(pk) == "number" then pk = tostring(pk) end
    if type(pk) ~= "string" or pk == "" then
      error(fmt("%s.%s: primary_key must return a non-empty string, got %s", def.name, tag, describe(pk)), 0)
    end
  end
  if rpc.deliver_at then
    local t = rpc.deliver_at(value)
    if t ~= nil then
      if type(t) ~= "number" or t ~= t then
        error(fmt("%s.%s: deliver_at must return epoch milliseconds, got %s", def.name, tag, describe(t)), 0)
      end
      at = math.floor(t)
    end
  end
  return "ok", pk, at
end

function M.snapshot(def, handlers)
  local f = handlers.snapshot
  if type(f) ~= "function" then return nil end
  local s = f()
  if s == nil then return nil end
  -- The encoder's own error names luster's file: say what was returned.
  local ok, text = pcall(encode, schema.any, s)
  if not ok then
    error(fmt("%s: snapshot() returned a value that cannot be encoded as JSON: %s", def.name,
      tostring(text):gsub("^luster/[%w_]+%.lua:%d+: ", "")), 0)
  end
  return text
end

function M.run_singleton(def, ctx)
  return def.run(ctx)
end

-- Cron bookkeeping in the cluster's database: BEGIN, CLAIM, DONE (see
-- storage/pgstore.h). Returns false without a cluster; retries (every
-- second) while the database cannot be reached.
local CRON_BEGIN, CRON_CLAIM, CRON_DONE = 0, 1, 2
local function cron_store(def, op, at)
  while true do
    local kind, body = core.cron(op, def.name, at)
    if kind == nil then return false end
    if kind == "ok" then
      local a, b = body:match("^(%-?%d+) (%-?%d+)$")
      return tonumber(a), tonumber(b)
    end
    core.log("warn", fmt("[%s] cron bookkeeping failed (%s); retrying in 1 s", def.name, body))
    core.sleep(1000)
  end
end

-- Runs a cron job forever: each scheduled instant once, in order. The next
-- instant is computed from the last one run (not from the clock), so a timer
-- that fires a little early can neither skip nor repeat an instant; instants
-- more than a second old when reached (a run that took longer than the
-- period) are skipped rather than replayed in a burst.
--
-- In a cluster each instant is claimed in the database before it runs and
-- marked done after, so it runs once cluster-wide: a runner taking the job
-- over runs again an instant whose run was cut off, then every instant
-- missed since the last one done that is younger than --cron-catch-up
-- (older ones are skipped and logged).
function M.run_cron(def, ctx)
  local cron = require "luster.cron"
  local function run(at)
    core.trace_new() -- each run is a trace of its own
    local ok, err = pcall(def.run, ctx, at)
    if not ok then core.log("error", fmt("[%s] cron run for %d raised: %s", def.name, at, tostring(err))) end
  end
  local ran = 0 -- the last instant run (in a cluster: done anywhere), for GET /cluster
  local function run_once(at, durable)
    if durable then
      local claimed = cron_store(def, CRON_CLAIM, at)
      if claimed ~= 1 then ran = at return end -- done already
    end
    run(at)
    ran = at
    if durable then cron_store(def, CRON_DONE, at) end
  end
  local last = core.wall()
  local done, claimed = cron_store(def, CRON_BEGIN, last)
  local durable = done ~= false
  if durable then
    if claimed > done then -- its run was cut off (the runner died): run it again
      run(claimed)
      cron_store(def, CRON_DONE, claimed)
      done = claimed
    end
    last = done
    ran = done
    local now, horizon = core.wall(), core.cron_catch_up()
    if now - last > horizon then
      local from = last
      last = now - horizon
      local first = cron.next(def.schedule, from)
      if first and first <= last then
        core.log("warn", fmt("[%s] skipped the instants from %d to %d: older than --cron-catch-up (%d ms)",
          def.name, first, last, horizon))
      end
    end
    while true do
      local at = cron.next(def.schedule, last)
      if not at or at > core.wall() then break end
      run_once(at, true)
      last = at
    end
  end
  while true do
    local at = cron.next(def.schedule, last)
    core.cron_progress(ran, at or 0)
    if not at then
      core.log("error", fmt("[%s] the schedule %q has no next instant; the job stops", def.name, def.expr))
      return
    end
    local wait = at - core.wall()
    while wait > 0 do
      core.sleep(wait)
      wait = at - core.wall()
    end
    last = at
    run_once(at, durable)
    local now = core.wall()
    if now - last > 1000 then last = now - 1000 end
  end
end

return M
