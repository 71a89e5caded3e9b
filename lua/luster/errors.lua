-- luster.errors: the error objects returned by entity calls (`nil, err`).
local cjson = require "cjson"
local json = require "luster.json"

local M = {}

local KINDS = {
  failure = true, defect = true, schema = true, not_found = true,
  timeout = true, unavailable = true, mailbox_full = true, conflict = true,
}
M.KINDS = KINDS

local Error = {}
Error.__index = Error
Error.__name = "luster.error"

function Error.__tostring(e)
  if e.kind == "failure" then
    local ok, text = pcall(json.encode, e.value)
    return "failure: " .. (ok and text or tostring(e.value))
  end
  if e.path and e.path ~= "" and e.message and e.message:sub(1, #e.path + 1) ~= e.path .. ":" then
    return e.kind .. ": " .. e.path .. ": " .. e.message
  end
  return e.kind .. ": " .. tostring(e.message)
end

function M.new(kind, message, fields)
  assert(KINDS[kind], "unknown error kind " .. tostring(kind))
  local e = { kind = kind, message = message }
  if fields then for k, v in pairs(fields) do e[k] = v end end
  return setmetatable(e, Error)
end

function M.is(x) return getmetatable(x) == Error end

-- Builds the error object for a reply the runner delivered: `body` is the
-- JSON value for a failure, or {"kind", "message", "path"} for the others.
function M.from_reply(kind, body)
  local ok, v = pcall(json.decode, body)
  if kind == "failure" then
    if not ok then v = body end
    if v == cjson.null then v = nil end
    return setmetatable({ kind = "failure", value = v, message = "declared failure" }, Error)
  end
  if not KINDS[kind] then kind = "defect" end
  if ok and type(v) == "table" then
    return setmetatable({ kind = kind, message = v.message, path = v.path }, Error)
  end
  return setmetatable({ kind = kind, message = body }, Error)
end

return M
