-- luster.json: JSON for payloads, replies and snapshots. Decoding turns whole
-- numbers into Lua integers (lua-cjson reads every number as a float), so
-- `tostring(req.payload.n)` is "1", not "1.0", wherever a value came from.
local cjson = require "cjson"

local M = { null = cjson.null, encode = cjson.encode }

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

-- Inside a runner the walk is done in C (luster.core.intify), much faster.
local has_core, core = pcall(require, "luster.core")
if has_core and core.intify then normalize = core.intify end

function M.decode(s)
  local v = cjson.decode(s)
  local tv = type(v)
  if tv == "table" then return normalize(v, 0) end
  if tv == "number" and mtype(v) == "float" and v > -LIMIT and v < LIMIT then return tointeger(v) or v end
  return v
end

return M
