-- luster.test: what a spec run by `luster test DIR` drives its in-process runtime with
-- (T.client, T.http, T.now, T.advance, T.active, T.passivate, T.write, T.logs, T.durable, T.restart).
local json = require "luster.json"

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
-- The spec's calls go through the runtime's router as a handler's do; the
-- payload and an "ok" reply cross as JSON text (the runtime's JSON hop).
local function call(type_name, id, tag, payload, timeout, discard)
  local ok, body = pcall(json.encode, payload)
  if not ok then return "encode", tostring(body) end
  local kind, reply = core.call(type_name, id, tag, body, timeout, discard)
  if kind ~= "ok" then return kind, reply end
  local v = json.decode(reply)
  if v == json.null then return nil, nil end
  return nil, v
end

-- The same clients as luster.client's (options, errors, err.kind), over the call above.
local new_client = has_core and require("luster")._client_factory("T.client", call)

-- T.client(type, id [, {timeout = ms}]): c:Rpc(payload [, {timeout = ms, discard = true}])
-- returns the value, true (discard), or nil, err (err.kind as luster.client's).
function M.client(type_name, id, opts)
  need("T.client")
  return new_client(type_name, id, opts) -- a tail call: argument errors name the spec's line
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

-- The lines logged in this test so far ("INFO text", "WARN text", "ERROR text"), those containing `text` (a plain substring) if given.
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
