-- luster.json: JSON for payloads, replies and snapshots. Decoding turns whole
-- numbers into Lua integers (lua-cjson reads every number as a float), so
-- `tostring(req.payload.n)` is "1", not "1.0", wherever a value came from.
local cjson = require "cjson"

local M = { null = cjson.null }

local tointeger, mtype, next, type = math.tointeger, math.type, next, type
local LIMIT = 2 ^ 53 -- beyond this a float's integer value is not exact JSON

local function normalize(t, depth)
  for k, v in next, t do
    local tv = type(v)
    if tv == "number" then
      if mtype(v) == "float" and v > -LIMIT and v < LIMIT then
        local i = tointeger(v)
        if i then t[k] = i end
      end
    elseif tv == "table" and depth < 1000 then
      normalize(v, depth + 1)
    end
  end
  return t
end

-- Inside a runner both directions are done in C (runtime/host/json.c): the
-- same encoding rules as cjson, but integers exact and floats in as few
-- digits as read back the same, and no second walk to make integers.
local has_core, core = pcall(require, "luster.core")
if has_core and core.json_decode then
  M.decode, M.encode = core.json_decode, core.json_encode
  return M
end

-- cjson.encode writes integers with 14 significant digits and wants a value.
function M.encode(v)
  if mtype(v) == "integer" then return tostring(v) end
  if v == nil then v = cjson.null end
  return cjson.encode(v)
end

function M.decode(s)
  local v = cjson.decode(s)
  local tv = type(v)
  if tv == "table" then return normalize(v, 0) end
  if tv == "number" and mtype(v) == "float" and v > -LIMIT and v < LIMIT then return tointeger(v) or v end
  return v
end

return M
