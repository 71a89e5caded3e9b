-- luster.test: what a spec run by `luster test DIR` drives its in-process runtime with
-- (T.client, T.http, T.now, T.advance, T.active, T.passivate, T.write, T.logs, T.durable, T.restart).
local json = require "luster.json"
local errors = require "luster.errors"

local has_core, core = pcall(require, "luster.test.core")

local M = {}

local function fail(level, fmt, ...) error(string.format(fmt, ...), level + 1) end

-- Outside `luster test` (plain busted, or a script of a runner) every call says how to run it.
local function need(name)
  if not has_core then
    fail(3, "luster.test: %s works only in specs run by `luster test` (run `luster test DIR`, which "
      .. "loads DIR's scripts in process; plain busted has no runtime)", name)
  end
end

-- Each `it` gets a fresh runtime: the current one is dropped when a test ends.
if has_core and not core.subscribed() then
  local ok, busted = pcall(require, "busted")
  if ok and type(busted) == "table" and busted.subscribe then
    local function reset() core.reset(); return nil, true end
    busted.subscribe({ "test", "end" }, reset)
    busted.subscribe({ "file", "end" }, reset)
  end
end

---------------------------------------------------------------------------
-- Clients
---------------------------------------------------------------------------
local Client = { __name = "luster.test.client" }
local CLIENT_OPTIONS = { timeout = true, discard = true }

local function check_options(what, opts, allowed)
  if opts == nil then return {} end
  if type(opts) ~= "table" then fail(4, "%s: options must be a table, got %s", what, type(opts)) end
  for k in pairs(opts) do
    if not allowed[k] then fail(4, "%s: unknown option '%s'", what, tostring(k)) end
  end
  return opts
end

local function invoke(c, tag, payload, opts)
  if getmetatable(c) ~= Client then fail(3, "%s: call it with ':' (client:%s{...})", tag, tag) end
  opts = check_options("client:" .. tag, opts, CLIENT_OPTIONS)
  local timeout = opts.timeout or c.opts.timeout or 0
  if type(timeout) ~= "number" or timeout < 0 then fail(3, "client:%s: timeout must be a number of ms", tag) end
  local ok, body = pcall(json.encode, payload)
  if not ok then fail(3, "client:%s: payload cannot be encoded as JSON: %s", tag, tostring(body)) end
  local kind, reply = core.call(c.type, c.id, tag, body, math.floor(timeout), opts.discard == true)
  if kind == "ok" then
    local v = json.decode(reply)
    if v == json.null then return nil end
    return v
  end
  if kind == "accepted" then return true end
  return nil, errors.from_reply(kind, reply)
end

Client.__index = function(_, tag)
  if type(tag) ~= "string" then return nil end
  return function(c, payload, opts) return invoke(c, tag, payload, opts) end
end
Client.__tostring = function(c) return string.format("luster.test.client(%s, %s)", c.type, c.id) end

-- T.client(type, id [, {timeout = ms}]): c:Rpc(payload [, {timeout = ms, discard = true}])
-- returns the value, true (discard), or nil, err (err.kind as luster.client's).
function M.client(type_name, id, opts)
  need("T.client")
  if type(type_name) ~= "string" or type_name == "" then fail(2, "T.client: type must be a non-empty string") end
  if math.type(id) == "integer" then id = tostring(id) end
  if type(id) ~= "string" or id == "" then fail(2, "T.client(%s): id must be a non-empty string", type_name) end
  opts = check_options("T.client", opts, { timeout = true })
  return setmetatable({ type = type_name, id = id, opts = opts }, Client)
end

---------------------------------------------------------------------------
-- HTTP without a socket
---------------------------------------------------------------------------
local function parse_answer(text)
  local status, rest = text:match("^(%d+)\r\n(.*)$")
  local head, body = rest:match("^(.-)\r\n\r\n(.*)$")
  if not head then head, body = rest:match("^(.-)\r\n(.*)$") end
  local headers = {}
  for name, value in (head .. "\r\n"):gmatch("([^:\r\n]+):%s*([^\r\n]*)\r\n") do headers[name:lower()] = value end
  if (headers["content-type"] or ""):find("json", 1, true) then
    local ok, v = pcall(json.decode, body)
    if ok then body = v end
  end
  return math.tointeger(tonumber(status)), body, headers
end

-- T.http(method, path [, body [, headers]]) -> status, body (a table when JSON), headers (lower-cased names).
function M.http(method, path, body, headers)
  need("T.http")
  if type(method) ~= "string" then fail(2, "T.http: method must be a string such as \"POST\"") end
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" then fail(2, "T.http: path must start with '/'") end
  if type(body) == "table" then body = json.encode(body)
  elseif body ~= nil and type(body) ~= "string" then fail(2, "T.http: body must be a table (sent as JSON) or a string") end
  local hjson
  if headers ~= nil then
    if type(headers) ~= "table" then fail(2, "T.http: headers must be a table of name = value") end
    local lower = {}
    for k, v in pairs(headers) do lower[tostring(k):lower()] = tostring(v) end
    hjson = json.encode(lower)
  end
  local text, why = core.http(method:upper(), path, body or "", hjson)
  if not text then fail(2, "T.http: %s", why) end
  return parse_answer(text)
end

---------------------------------------------------------------------------
-- Time, instances, scripts, logs, storage
---------------------------------------------------------------------------
function M.now()
  need("T.now")
  return core.now()
end

function M.advance(ms)
  need("T.advance")
  if type(ms) ~= "number" or ms < 0 or ms ~= ms then fail(2, "T.advance: expected milliseconds >= 0, got %s", tostring(ms)) end
  core.advance(math.floor(ms))
end

local function check_type(fn, type_name, n)
  if n < 0 then fail(3, "%s: no entity type '%s' is served (check its script loads: T.logs())", fn, type_name) end
end

function M.active(type_name, id)
  need("T.active")
  if type(type_name) ~= "string" then fail(2, "T.active: type must be a string") end
  if id ~= nil and type(id) ~= "string" then id = tostring(id) end
  local n = core.active(type_name, id)
  check_type("T.active", type_name, n)
  if id ~= nil then return n == 1 end
  return n
end

-- true when passivated; false, "not active" or false, "busy" otherwise.
function M.passivate(type_name, id)
  need("T.passivate")
  if type(type_name) ~= "string" or id == nil then fail(2, "T.passivate: expected (type, id)") end
  local rc = core.passivate(type_name, tostring(id))
  if rc == -2 then check_type("T.passivate", type_name, -1) end
  if rc == 1 then return true end
  return false, rc == 0 and "not active" or "busy"
end

function M.write(file, source)
  need("T.write")
  if type(file) ~= "string" or type(source) ~= "string" then fail(2, "T.write: expected (file, source), two strings") end
  local report, why = core.write(file, source)
  if not report then return nil, why end
  -- A script that no longer loads fails the write: the file itself, or
  -- (a lib/ module) a script that requires it.
  local ok, rep = pcall(json.decode, report)
  local failed = ok and type(rep) == "table" and rep.failed or {}
  for _, f in ipairs(failed) do
    if f.file == file then return nil, f.message end
  end
  if failed[1] then return nil, failed[1].message end
  return true
end

-- The lines logged in this test so far ("LEVEL text"), those containing `text` (a plain substring) if given.
function M.logs(text)
  need("T.logs")
  if text ~= nil and type(text) ~= "string" then fail(2, "T.logs: the filter must be a string") end
  local out = {}
  for line in core.logs():gmatch("([^\n]*)\n") do
    if not text or line:find(text, 1, true) then out[#out + 1] = line end
  end
  return out
end

-- This test's runtime on SQLite in its temporary directory (call first); T.restart needs it.
function M.durable()
  need("T.durable")
  core.durable()
end

function M.restart()
  need("T.restart")
  core.restart()
end

return M
