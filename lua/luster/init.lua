-- luster: the library every entity script requires (rpc, entity, client, sleep, singleton, cron).
local cjson = require "cjson"
local schema = require "luster.schema"
local errors = require "luster.errors"
local json = require "luster.json"

-- The runner preloads `luster.core` with its C functions; in plain Lua (specs
-- of the library itself) definitions work and calls say they need a runner.
local has_core, core = pcall(require, "luster.core")
if not has_core then
  local function no_runner() error("this needs a running luster runner", 3) end
  core = setmetatable({}, { __index = function() return no_runner end })
end

local M = { schema = schema, errors = errors, null = cjson.null }

local TAG_PATTERN = "^[%a_][%w_]*$"
local NAME_PATTERN = "^[%w_.%-]+$"

local function fail(level, fmt, ...)
  error(string.format(fmt, ...), level + 1)
end

local NO_OPTIONS = setmetatable({}, { __newindex = function() error("options are read-only", 2) end })

local function check_options(what, opts, allowed)
  if opts == nil then return NO_OPTIONS end
  if type(opts) ~= "table" then fail(3, "%s: options must be a table, got %s", what, type(opts)) end
  for k in pairs(opts) do
    if not allowed[k] then
      local names = {}
      for name in pairs(allowed) do names[#names + 1] = name end
      table.sort(names)
      fail(3, "%s: unknown option '%s' (known: %s)", what, tostring(k), table.concat(names, ", "))
    end
  end
  return opts
end

-- Durations in options are milliseconds, or strings such as "250ms", "30s", "5m".
local UNITS = { ms = 1, s = 1000, m = 60000, h = 3600000 }
local function duration_ms(what, v)
  if type(v) == "number" and v > 0 and v == v and v ~= math.huge then return math.floor(v) end
  if type(v) == "string" then
    local n, unit = v:match("^(%d+%.?%d*)(%a*)$")
    local scale = UNITS[unit ~= "" and unit or "ms"]
    if n and scale and tonumber(n) > 0 then return math.floor(tonumber(n) * scale) end
  end
  fail(4, "%s: expected a positive duration in ms (or a string like \"30s\"), got %s", what, tostring(v))
end

local function positive_int(what, v)
  if math.type(v) == "integer" and v >= 1 then return v end
  if type(v) == "number" and v >= 1 and v == math.floor(v) then return math.tointeger(v) end
  fail(4, "%s: expected an integer >= 1, got %s", what, tostring(v))
end

---------------------------------------------------------------------------
-- RPCs
---------------------------------------------------------------------------
local RPC = { __name = "luster.rpc" }
RPC.__index = RPC
local RPC_OPTIONS = { payload = true, success = true, error = true, persisted = true,
                      primary_key = true, deliver_at = true }
local EMPTY_PAYLOAD = schema.optional(schema.struct {})

function M.rpc(tag, opts)
  if type(tag) ~= "string" or not tag:match(TAG_PATTERN) then
    fail(2, "luster.rpc: tag must be an identifier (letters, digits, _), got %s", tostring(tag))
  end
  opts = check_options("luster.rpc(" .. tag .. ")", opts, RPC_OPTIONS)
  local function sch(field)
    local ok, s = pcall(schema.of, opts[field])
    if not ok then fail(3, "luster.rpc(%s): %s: %s", tag, field, tostring(s):gsub("^.-luster%.schema: ", "")) end
    return s
  end
  local r = setmetatable({ tag = tag }, RPC)
  r.payload = opts.payload ~= nil and sch("payload") or EMPTY_PAYLOAD
  r.success = opts.success ~= nil and sch("success") or schema.any
  r.error = opts.error ~= nil and sch("error") or nil
  if opts.persisted ~= nil and type(opts.persisted) ~= "boolean" then
    fail(2, "luster.rpc(%s): persisted must be a boolean", tag)
  end
  r.persisted = opts.persisted == true
  for _, f in ipairs { "primary_key", "deliver_at" } do
    if opts[f] ~= nil then
      if type(opts[f]) ~= "function" then fail(2, "luster.rpc(%s): %s must be a function(payload)", tag, f) end
      if not r.persisted then fail(2, "luster.rpc(%s): %s needs persisted = true", tag, f) end
      r[f] = opts[f]
    end
  end
  return r
end

function M.is_rpc(x) return getmetatable(x) == RPC end

---------------------------------------------------------------------------
-- Entities
---------------------------------------------------------------------------
local Entity = { __name = "luster.entity" }
Entity.__index = Entity
local Definition = { __name = "luster.definition" }
Definition.__index = Definition
local ENTITY_OPTIONS = { max_idle = true, concurrency = true, mailbox = true, durable = true }

function M.entity(name, rpcs, opts)
  if type(name) ~= "string" or not name:match(NAME_PATTERN) then
    fail(2, "luster.entity: type name must be a non-empty string of letters, digits, '_', '-', '.', got %s",
      tostring(name))
  end
  if type(rpcs) ~= "table" then fail(2, "luster.entity(%s): expected an array of luster.rpc, got %s", name, type(rpcs)) end
  opts = check_options("luster.entity(" .. name .. ")", opts, ENTITY_OPTIONS)
  local list, by_tag = {}, {}
  for i, r in ipairs(rpcs) do
    if not M.is_rpc(r) then fail(2, "luster.entity(%s): rpcs[%d] is not a luster.rpc", name, i) end
    if by_tag[r.tag] then fail(2, "luster.entity(%s): RPC '%s' is listed twice", name, r.tag) end
    list[#list + 1] = r
    by_tag[r.tag] = r
  end
  local e = setmetatable({ name = name, rpcs = list, by_tag = by_tag, options = {} }, Entity)
  if opts.max_idle ~= nil then e.options.max_idle = duration_ms("luster.entity(" .. name .. "): max_idle", opts.max_idle) end
  if opts.concurrency ~= nil then e.options.concurrency = positive_int("luster.entity(" .. name .. "): concurrency", opts.concurrency) end
  if opts.mailbox ~= nil then e.options.mailbox = positive_int("luster.entity(" .. name .. "): mailbox", opts.mailbox) end
  if opts.durable ~= nil then
    if type(opts.durable) ~= "boolean" then
      fail(2, "luster.entity(%s): durable must be a boolean, got %s", name, type(opts.durable))
    end
    -- Its state is saved after each message, which needs one message at a
    -- time: a snapshot taken while another handler is half-way would save
    -- that half-done run.
    if opts.durable and (e.options.concurrency or 1) > 1 then
      fail(2, "luster.entity(%s): a durable entity handles one message at a time; remove concurrency = %d", name,
        e.options.concurrency)
    end
    e.options.durable = opts.durable
  end
  return e
end

function Entity:handlers(activate)
  if getmetatable(self) ~= Entity then error("Entity:handlers: call it with ':' on an entity", 2) end
  if type(activate) ~= "function" then
    fail(2, "%s:handlers: expected function(ctx, snapshot) returning the handlers, got %s", self.name, type(activate))
  end
  return setmetatable({ kind = "entity", name = self.name, entity = self, rpcs = self.rpcs,
                        by_tag = self.by_tag, options = self.options, activate = activate }, Definition)
end

function M.singleton(name, run, opts)
  if type(name) ~= "string" or not name:match(NAME_PATTERN) then
    fail(2, "luster.singleton: name must be a non-empty string of letters, digits, '_', '-', '.', got %s", tostring(name))
  end
  if type(run) ~= "function" then fail(2, "luster.singleton(%s): expected function(ctx), got %s", name, type(run)) end
  check_options("luster.singleton(" .. name .. ")", opts, {})
  return setmetatable({ kind = "singleton", name = name, run = run, options = {} }, Definition)
end

function M.cron(name, expr, run, opts)
  if type(name) ~= "string" or not name:match(NAME_PATTERN) then
    fail(2, "luster.cron: name must be a non-empty string of letters, digits, '_', '-', '.', got %s", tostring(name))
  end
  local cron = require "luster.cron"
  local ok, parsed = pcall(cron.parse, expr)
  if not ok then fail(2, "luster.cron(%s): %s", name, tostring(parsed):gsub("^.-luster%.cron: ", "")) end
  if type(run) ~= "function" then fail(2, "luster.cron(%s): expected function(ctx, scheduled_ms), got %s", name, type(run)) end
  check_options("luster.cron(" .. name .. ")", opts, {})
  return setmetatable({ kind = "cron", name = name, expr = expr, schedule = parsed, run = run, options = {} }, Definition)
end

function M.is_definition(x) return getmetatable(x) == Definition end

---------------------------------------------------------------------------
-- Calling entities
---------------------------------------------------------------------------
local CLIENT_OPTIONS = { timeout = true, discard = true }
local CLIENT_NEW_OPTIONS = { timeout = true }

local floor = math.floor

-- Clients over `call` (core.call in a runner; luster.test's own in a spec),
-- named `what` in their errors. call(type, id, tag, payload, timeout_ms,
-- discard) returns nil, value on success; "accepted"; "encode", why when the
-- payload is not JSON; or kind, reply body. Returns the constructor.
local function client_factory(what, call)
  local Client = { __name = what }

  local function invoke(c, tag, payload, opts)
    if getmetatable(c) ~= Client then
      fail(3, "%s: call it with ':' (client:%s{...})", tag, tag)
    end
    local timeout, discard = c[4], false
    if opts ~= nil or not timeout then
      if opts ~= nil then opts = check_options("client:" .. tag, opts, CLIENT_OPTIONS) else opts = NO_OPTIONS end
      timeout = opts.timeout or c[3].timeout or 0
      if type(timeout) ~= "number" or timeout < 0 then fail(3, "client:%s: timeout must be a number of ms", tag) end
      timeout = floor(timeout)
      discard = opts.discard == true
    end
    local kind, v = call(c[1], c[2], tag, payload, timeout, discard)
    if kind == nil then return v end
    if kind == "accepted" then return true end
    if kind == "encode" then fail(3, "client:%s: payload cannot be encoded as JSON: %s", tag, v) end
    return nil, errors.from_reply(kind, v)
  end

  -- One method closure per RPC tag, shared by every proxy: a proxy holds only
  -- its type, id and options, and c:Tag finds the method in this table (made
  -- on first use of the tag) without a metamethod call or a field of its own.
  local methods, nmethods = nil, 0
  methods = setmetatable({}, {
    __index = function(self, tag)
      if type(tag) ~= "string" then return nil end
      local f = function(c, payload, opts) return invoke(c, tag, payload, opts) end
      -- Kept (a script names a bounded set of RPCs); past that, made per use.
      if nmethods < 4096 then
        nmethods = nmethods + 1
        rawset(self, tag, f)
      end
      return f
    end,
  })
  Client.__index = methods
  Client.__tostring = function(c) return string.format("%s(%s, %s)", what, c[1], c[2]) end

  return function(type_name, id, opts)
    if type(type_name) ~= "string" or type_name == "" then fail(2, "%s: type must be a non-empty string", what) end
    if type(id) ~= "string" then
      if math.type(id) == "integer" then id = tostring(id) else fail(2, "%s: id must be a string, got %s", what, type(id)) end
    end
    if id == "" then fail(2, "%s(%s): id must not be empty", what, type_name) end
    if opts == nil then return setmetatable({ type_name, id, NO_OPTIONS, 0 }, Client) end
    opts = check_options(what, opts, CLIENT_NEW_OPTIONS)
    -- [4]: the timeout of calls without options, when it is a valid one.
    local timeout = opts.timeout or 0
    if type(timeout) == "number" and timeout >= 0 then timeout = floor(timeout) else timeout = nil end
    return setmetatable({ type_name, id, opts, timeout }, Client)
  end
end

-- core.call encodes the payload, and decodes an "ok" reply, in C; without a
-- runner it is the function that says one is needed.
M.client = client_factory("luster.client", core.call)
-- Not part of the scripts' API: luster.test makes T.client with it.
M._client_factory = client_factory

function M.sleep(ms)
  if type(ms) ~= "number" or ms < 0 or ms ~= ms then fail(2, "luster.sleep: expected milliseconds >= 0, got %s", tostring(ms)) end
  return core.sleep(math.floor(ms))
end

function M.now() return core.now() end

-- Monotonic seconds (nanosecond resolution) for measuring durations.
function M.clock() return core.clock() end

return M
