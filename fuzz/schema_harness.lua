-- fuzz/schema_harness.lua - checks for fuzz_schema: byte 1 of the input picks
-- a schema, the rest is a JSON payload. A payload that decodes must validate
-- to true or to a schema error (kind, path, message); validation never
-- raises; a valid payload encodes to JSON that decodes and validates again.
local S = require "luster.schema"
local json = require "luster.json"

local schemas = {
  S.struct { amount = S.integer:min(1):max(100), note = S.optional(S.string:max_len(10)) },
  S.array(S.union(S.number, S.string:pattern("^[a-z]+$"), S.null)),
  S.map(S.struct { tags = S.array(S.string):max_len(3), at = S.optional(S.number:min(0)) }),
  S.literal("a", "b", 3, true),
  S.struct { id = S.string:min_len(1), items = S.array(S.struct { sku = S.string, qty = S.integer:min(0) }),
             meta = S.optional(S.map(S.any)) },
  S.union(S.struct { kind = S.literal("x"), v = S.number }, S.array(S.array(S.integer))),
  S.any,
}

local function check(ok, what, ...)
  if not ok then error(string.format(what, ...), 0) end
end

local function validate(s, v)
  local ok, err = S.validate(s, v)
  if ok == true then return true end
  check(ok == nil and type(err) == "table", "validate returned %s, %s", tostring(ok), tostring(err))
  check(err.kind == "schema" and type(err.path) == "string" and type(err.message) == "string"
    and #err.message > 0, "a schema error without kind, path and message")
  return false
end

return function(input)
  if #input < 1 then return end
  local s = schemas[input:byte(1) % #schemas + 1]
  local ok, v = pcall(json.decode, input:sub(2))
  if not ok then return end
  if not validate(s, v) then return end
  local okenc, text = pcall(S.encode, s, v)
  -- As in lua-cjson, a number past a double's range decodes to infinity,
  -- which JSON cannot write: the one value that does not encode.
  if not okenc and tostring(text):find("NaN or Inf", 1, true) then return end
  check(okenc and type(text) == "string", "encode failed: %s", tostring(text))
  local ok2, back = pcall(json.decode, text)
  check(ok2, "encoded text does not decode: %s (%s)", tostring(back), text)
  check(validate(s, back), "a valid payload is not valid after encode and decode: %s", text)
end
