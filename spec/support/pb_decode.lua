-- pb_decode.lua - a small protobuf decoder for the specs, written for them:
-- pb.fields(bytes) lists a message's fields as they are on the wire, and
-- pb.trace_request(bytes) reads an OTLP ExportTraceServiceRequest into the
-- shape of its OTLP/JSON mapping (what cjson.decode gives for the JSON
-- encoding: resourceSpans, lowerCamelCase keys, ids as lowercase hex, 64-bit
-- integers as decimal strings), so a spec checks either encoding the same
-- way. Strict: a field number or wire type the schema below does not have,
-- a truncated field or a varint over ten bytes is an error, so a wrong field
-- number in the encoder fails a spec instead of being skipped.
local M = {}

local VARINT, I64, LEN, I32 = 0, 1, 2, 5

-- The varint at s[i..]; returns its value (64-bit, wrapping as int64) and the
-- index after it.
local function varint(s, i)
  local v, shift = 0, 0
  for k = 0, 9 do
    local b = s:byte(i + k)
    if not b then error("protobuf: a varint cut short at byte " .. (i + k)) end
    v = v | ((b & 0x7f) << shift)
    if b < 0x80 then return v, i + k + 1 end
    shift = shift + 7
  end
  error("protobuf: a varint longer than ten bytes at byte " .. i)
end

-- Every field of the message s: { field = N, wire = W, value = V } in wire
-- order; V is an integer (varint, fixed64, fixed32) or the bytes of a
-- length-delimited field.
function M.fields(s)
  local out, i = {}, 1
  while i <= #s do
    local key
    key, i = varint(s, i)
    local field, wire = key >> 3, key & 7
    if field == 0 then error("protobuf: field number 0 at byte " .. i) end
    local v
    if wire == VARINT then
      v, i = varint(s, i)
    elseif wire == I64 then
      if i + 7 > #s then error("protobuf: a fixed64 cut short") end
      v = string.unpack("<i8", s, i)
      i = i + 8
    elseif wire == I32 then
      if i + 3 > #s then error("protobuf: a fixed32 cut short") end
      v = string.unpack("<I4", s, i)
      i = i + 4
    elseif wire == LEN then
      local n
      n, i = varint(s, i)
      if n < 0 or i + n - 1 > #s then error("protobuf: a length-delimited field of " .. n .. " bytes cut short") end
      v = s:sub(i, i + n - 1)
      i = i + n
    else
      error("protobuf: wire type " .. wire .. " of field " .. field)
    end
    out[#out + 1] = { field = field, wire = wire, value = v }
  end
  return out
end

local function hex(b) return (b:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end

-- A 64-bit value as an unsigned decimal string, as the JSON mapping writes
-- fixed64.
local function u64(v)
  if v >= 0 then return tostring(v) end
  local q = (v >> 1) // 5 -- v / 10 without the sign bit
  return tostring(q) .. tostring(v - q * 10)
end

-- Reads message s by schema: field number -> { name, wire, conv, repeated }.
local function read(s, schema, what)
  local msg = {}
  for _, f in ipairs(M.fields(s)) do
    local d = schema[f.field]
    if not d then error(string.format("protobuf: %s has no field %d", what, f.field)) end
    if d.wire ~= f.wire then
      error(string.format("protobuf: %s.%s (field %d) has wire type %d, expected %d", what, d.name, f.field, f.wire, d.wire))
    end
    local v = d.conv and d.conv(f.value) or f.value
    if d.repeated then
      msg[d.name] = msg[d.name] or {}
      table.insert(msg[d.name], v)
    else
      msg[d.name] = v
    end
  end
  return msg
end

local function utf8_string(what)
  return function(b)
    if not utf8.len(b) then error("protobuf: " .. what .. " is not UTF-8: " .. ("%q"):format(b)) end
    return b
  end
end

local function any_value(b)
  local v = read(b, {
    [1] = { name = "stringValue", wire = LEN, conv = utf8_string("a string value") },
    [3] = { name = "intValue", wire = VARINT, conv = tostring },
  }, "AnyValue")
  return v
end

local function key_value(b)
  return read(b, {
    [1] = { name = "key", wire = LEN, conv = utf8_string("a key") },
    [2] = { name = "value", wire = LEN, conv = any_value },
  }, "KeyValue")
end

local function status(b)
  local st = read(b, {
    [2] = { name = "message", wire = LEN, conv = utf8_string("a status message") },
    [3] = { name = "code", wire = VARINT },
  }, "Status")
  st.code = st.code or 0
  return st
end

local function id(len, what)
  return function(b)
    if #b ~= len then error(string.format("protobuf: %s of %d bytes, expected %d", what, #b, len)) end
    return hex(b)
  end
end

local function span(b)
  local s = read(b, {
    [1] = { name = "traceId", wire = LEN, conv = id(16, "a trace id") },
    [2] = { name = "spanId", wire = LEN, conv = id(8, "a span id") },
    [4] = { name = "parentSpanId", wire = LEN, conv = id(8, "a parent span id") },
    [5] = { name = "name", wire = LEN, conv = utf8_string("a span name") },
    [6] = { name = "kind", wire = VARINT },
    [7] = { name = "startTimeUnixNano", wire = I64, conv = u64 },
    [8] = { name = "endTimeUnixNano", wire = I64, conv = u64 },
    [9] = { name = "attributes", wire = LEN, conv = key_value, repeated = true },
    [15] = { name = "status", wire = LEN, conv = status },
    [16] = { name = "flags", wire = I32 },
  }, "Span")
  -- proto3 leaves zeros out; the JSON encoding writes these always
  s.name = s.name or ""
  s.kind = s.kind or 0
  s.startTimeUnixNano = s.startTimeUnixNano or "0"
  s.endTimeUnixNano = s.endTimeUnixNano or "0"
  s.attributes = s.attributes or {}
  s.status = s.status or { code = 0 }
  return s
end

local function scope_spans(b)
  local ss = read(b, {
    [1] = { name = "scope", wire = LEN, conv = function(x)
      return read(x, { [1] = { name = "name", wire = LEN } }, "InstrumentationScope")
    end },
    [2] = { name = "spans", wire = LEN, conv = span, repeated = true },
  }, "ScopeSpans")
  ss.spans = ss.spans or {}
  return ss
end

local function resource_spans(b)
  return read(b, {
    [1] = { name = "resource", wire = LEN, conv = function(x)
      return read(x, { [1] = { name = "attributes", wire = LEN, conv = key_value, repeated = true } }, "Resource")
    end },
    [2] = { name = "scopeSpans", wire = LEN, conv = scope_spans, repeated = true },
  }, "ResourceSpans")
end

-- An ExportTraceServiceRequest in its JSON mapping's shape.
function M.trace_request(s)
  local req = read(s, { [1] = { name = "resourceSpans", wire = LEN, conv = resource_spans, repeated = true } },
    "ExportTraceServiceRequest")
  req.resourceSpans = req.resourceSpans or {}
  return req
end

return M
