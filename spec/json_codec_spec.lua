package.cpath = "build/?.so;" .. package.cpath
-- json_codec_spec.lua - the JSON codec runners use for payloads, replies and
-- snapshots (runtime/host/json.c), through the luster_core module. Its
-- encoding must match lua-cjson's (which scripts also reach, and which the
-- codec replaced) except where numbers are written more exactly.

local core = require("luster_core")
local cjson = require("cjson")
local encode, decode = core.json_encode, core.json_decode
local null = cjson.null

-- Values whose encoding must be byte for byte cjson's.
local function same_as_cjson(v)
  assert.are.equal(cjson.encode(v), encode(v))
end

local function random_string(rnd)
  local t = {}
  for i = 1, rnd(0, 12) do t[i] = string.char(rnd(0, 255)) end
  return table.concat(t)
end

-- A random value of what payloads hold: integers, short decimals, strings
-- of any bytes, booleans, null, arrays with holes, objects.
local function random_value(rnd, depth)
  local k = rnd(1, depth > 3 and 6 or 8)
  if k == 1 then return rnd(-1000000, 1000000) end
  if k == 2 then return rnd(-99999, 99999) / 8 end
  if k == 3 then return random_string(rnd) end
  if k == 4 then return rnd(0, 1) == 1 end
  if k == 5 then return null end
  if k == 6 then return rnd(-2 ^ 40, 2 ^ 40) end
  if k == 7 then
    local t = {}
    for i = 1, rnd(0, 6) do
      if rnd(1, 5) > 1 then t[i] = random_value(rnd, depth + 1) end
    end
    return t
  end
  local t = {}
  for _ = 1, rnd(0, 6) do t[random_string(rnd)] = random_value(rnd, depth + 1) end
  return t
end

-- Calls f with a thousand random values, the same ones for the same seed.
local function each_random_value(seed, f)
  math.randomseed(seed)
  for _ = 1, 1000 do f(random_value(math.random, 0)) end
end

-- Deep equality that reads cjson's floats and our integers as equal numbers.
local function same_value(a, b)
  if type(a) == "number" and type(b) == "number" then return a == b end
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do if not same_value(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

describe("json_encode", function()
  it("escapes every byte as cjson does", function()
    for c = 0, 255 do same_as_cjson(string.char(c)) end
    same_as_cjson('a "quoted" \\ back/slash\r\n\t\b\f')
  end)

  it("writes scalars, null, arrays (with holes) and objects as cjson does", function()
    for _, v in ipairs {
      true, false, null, 0, -7, 42, 1.5, -0.25, 1e300, "", "héllo", {}, { 1, 2, 3 }, { 1, 2, nil, 4 },
      { [2] = "x" }, { [1] = 1, [10] = 2 }, { a = 1 }, { [1.5] = "k" }, { a = { b = { 1, { c = null } } } },
    } do
      same_as_cjson(v)
    end
    assert.are.equal("null", encode(nil))
  end)

  it("matches cjson on a thousand random values of integers, short decimals, strings and nesting", function()
    -- Key order is lua_next's for both, so the texts compare whole.
    each_random_value(20261125, function(v) assert.are.equal(cjson.encode(v), encode(v)) end)
  end)

  it("writes integers exactly and floats in the fewest digits that read back the same, where cjson keeps 14", function()
    assert.are.equal("123456789012345678", encode(123456789012345678))
    assert.are.equal("-9223372036854775808", encode(math.mininteger))
    assert.are.equal("9007199254740992", encode(2.0 ^ 53))
    assert.are.equal("0.30000000000000004", encode(0.1 + 0.2))
    assert.are.equal("0.1", encode(0.1))
    assert.are.equal("[3]", encode({ 3.0 }))
    for _, x in ipairs { 1 / 3, math.pi, 2 ^ 60 + 0.0, 1e-320, -123.456e78 } do
      assert.are.equal(x, tonumber(encode(x)))
    end
  end)

  it("refuses what cjson refuses, naming it", function()
    local cases = {
      { 0 / 0, "Cannot serialise number: must not be NaN or Inf" },
      { math.huge, "Cannot serialise number: must not be NaN or Inf" },
      { print, "Cannot serialise function: type not supported" },
      { { [true] = 1 }, "Cannot serialise boolean: table key must be a number or string" },
      { { [1] = 1, [11] = 2 }, "Cannot serialise table: excessively sparse array" },
      { { x = coroutine.create(print) }, "Cannot serialise thread: type not supported" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(encode, c[1])
      assert.is_false(ok)
      assert.are.equal(c[2], err)
    end
  end)

  it("refuses nesting deeper than 1000, and a table that contains itself", function()
    local deep = {}
    local t = deep
    for _ = 1, 1000 do t[1] = {}; t = t[1] end
    local ok, err = pcall(encode, deep)
    assert.is_false(ok)
    assert.matches("excessive nesting (1001)", err, 1, true)
    local loop = {}
    loop.self = loop
    ok, err = pcall(encode, loop)
    assert.is_false(ok)
    assert.matches("excessive nesting", err, 1, true)
    local fine = {}
    t = fine
    for _ = 1, 998 do t[1] = {}; t = t[1] end
    assert.are.equal(string.rep("[", 998) .. "{}" .. string.rep("]", 998), encode(fine))
  end)
end)

describe("json_decode", function()
  it("reads what cjson reads, whole numbers as integers", function()
    local v = decode(' {"a": 1, "b": [2, 2.5, -3e2, 1.0, -0], "c": null, "d": true, "e": false, "f": "x"} ')
    assert.are.same({ a = 1, b = { 2, 2.5, -300, 1, 0 }, c = null, d = true, e = false, f = "x" }, v)
    for _, n in ipairs { v.a, v.b[1], v.b[3], v.b[4], v.b[5] } do assert.are.equal("integer", math.type(n)) end
    assert.are.equal("float", math.type(v.b[2]))
    assert.are.equal("float", math.type(decode("9007199254740993")))
    assert.are.equal("float", math.type(decode("-9007199254740992")))
    assert.are.equal(9007199254740991, decode("9007199254740991"))
    assert.are.equal("float", math.type(decode("123456789012345678901234567890")))
  end)

  it("unescapes strings, surrogate pairs included, and keeps any other byte", function()
    assert.are.equal('"\\/\b\f\n\r\té😀', decode('"\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00"'))
    assert.are.equal("\0\255", decode('"\\u0000\255"'))
  end)

  it("reads back what it writes, for a thousand random values", function()
    each_random_value(42, function(v)
      local text = encode(v)
      local back = decode(text)
      assert.is_true(same_value(back, decode(encode(back))), text)
      assert.is_true(same_value(cjson.decode(text), back), text)
    end)
  end)

  it("refuses what is not JSON, naming the character", function()
    local cases = {
      { "", "expected a value but found the end of the input at character 1" },
      { "{", "expected an object key (a string) but found the end of the input at character 2" },
      { "[1,2", "expected ',' or ']' but found the end of the input at character 5" },
      { '{"a":}', "expected a value but found '}' at character 6" },
      { '{"a" 1}', "expected ':' after an object key but found '1' at character 6" },
      { "[1,]", "expected a value but found ']' at character 4" },
      { "tru", "expected a value but found 't' at character 1" },
      { "01", "expected the end of the input but found '1' at character 2" },
      { "1.", "expected a digit after the decimal point but found the end of the input at character 3" },
      { "-", "expected a digit but found the end of the input at character 2" },
      { "1e+", "expected a digit in the exponent but found the end of the input at character 4" },
      { "nan", "expected a value but found 'n' at character 1" },
      { '"abc', "expected the end of a string but found the end of the input at character 5" },
      { '"\\q"', "expected a valid escape (\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u) but found 'q' at character 3" },
      { '"\\u12"', "expected four hex digits after \\u but found '\\' at character 2" },
      { '"\\ud83d"', "expected the low half of a UTF-16 surrogate pair but found '\"' at character 8" },
      { '"\\ude00"', "expected a \\u escape other than a lone low surrogate but found '\\' at character 2" },
      { "[1] x", "expected the end of the input but found 'x' at character 5" },
      { "\1", "expected a value but found byte 0x01 at character 1" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(decode, c[1])
      assert.is_false(ok, c[1])
      assert.are.equal(c[2], err)
    end
  end)

  it("refuses nesting deeper than 1000 and reads 1000", function()
    assert.are.equal("table", type(decode(string.rep("[", 1000) .. string.rep("]", 1000))))
    local ok, err = pcall(decode, string.rep("[", 1001) .. string.rep("]", 1001))
    assert.is_false(ok)
    assert.are.equal("found more than 1000 nested arrays and objects at character 1001", err)
  end)

  it("never crashes on random bytes, answering a value or an error", function()
    math.randomseed(7)
    local rnd = math.random
    local alphabet = '{}[]",:-+.eE0123456789 \\utrfalsn\0\255'
    for _ = 1, 3000 do
      local t = {}
      for i = 1, rnd(0, 20) do
        local k = rnd(1, #alphabet)
        t[i] = alphabet:sub(k, k)
      end
      local s = table.concat(t)
      local ok, err = pcall(decode, s)
      if not ok then assert.matches("at character %d+$", err) end
    end
  end)
end)
