-- Specs for luster.schema: types, constraints, error paths, describe and encode.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path

local S = require "luster.schema"
local cjson = require "cjson"
local null = cjson.null

-- The error a failing validation returns (asserting that it fails).
local function failure(s, v)
  local ok, err = S.validate(s, v)
  assert.is_nil(ok, "expected validation to fail")
  assert.is_table(err)
  return err
end

local function message(s, v)
  return failure(s, v).message
end

local function valid(s, v)
  local ok, err = S.validate(s, v)
  assert.is_true(ok, err and err.message)
end

-- The message of an error raised by f (asserting that it raises).
local function raised(f)
  local ok, err = pcall(f)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

local function contains(haystack, needle)
  assert(string.find(haystack, needle, 1, true),
    string.format("expected %q to contain %q", haystack, needle))
end

describe("luster.schema", function()

  describe("number", function()
    it("accepts integers and floats", function()
      valid(S.number, 0)
      valid(S.number, -7)
      valid(S.number, 2.5)
      valid(S.number, math.maxinteger)
    end)

    it("rejects non-numbers with the JSON type of what it got", function()
      assert.equal("expected number, got string", message(S.number, "1"))
      assert.equal("expected number, got boolean", message(S.number, true))
      assert.equal("expected number, got null", message(S.number, null))
      assert.equal("expected number, got nil", message(S.number, nil))
      assert.equal("expected number, got object", message(S.number, {}))
      assert.equal("expected number, got array", message(S.number, { 1 }))
      assert.equal("expected number, got function", message(S.number, print))
    end)

    it("rejects NaN and infinities, saying the number must be finite", function()
      assert.equal("expected finite number, got NaN", message(S.number, 0 / 0))
      assert.equal("expected finite number, got inf", message(S.number, math.huge))
      assert.equal("expected finite number, got -inf", message(S.number, -math.huge))
    end)

    it("keeps min and max inclusive and states both sides on violation", function()
      local s = S.number:min(0):max(10)
      valid(s, 0)
      valid(s, 10)
      valid(s, 5.5)
      assert.equal("expected number >= 0 and <= 10, got -5", message(s, -5))
      assert.equal("expected number >= 0 and <= 10, got 10.5", message(s, 10.5))
      assert.equal("expected number >= 0, got -5", message(S.number:min(0), -5))
      assert.equal("expected number <= 1.5, got 2", message(S.number:max(1.5), 2))
    end)

    it("rejects NaN and infinities even when they would pass the bounds", function()
      assert.equal("expected finite number <= 10, got -inf", message(S.number:max(10), -math.huge))
      assert.equal("expected finite number >= 0, got NaN", message(S.number:min(0), 0 / 0))
    end)
  end)

  describe("integer", function()
    it("accepts integral values, including integral floats", function()
      valid(S.integer, 3)
      valid(S.integer, 3.0)
      valid(S.integer, -0.0)
      valid(S.integer, 1e15)
    end)

    it("rejects fractional values, showing the value", function()
      assert.equal("expected integer, got 2.5", message(S.integer, 2.5))
      assert.equal("expected integer, got string", message(S.integer, "3"))
      assert.equal("expected finite integer, got inf", message(S.integer, math.huge))
    end)

    it("applies min and max", function()
      local s = S.integer:min(1):max(3)
      valid(s, 1)
      valid(s, 3)
      assert.equal("expected integer >= 1 and <= 3, got 0", message(s, 0))
      assert.equal("expected integer >= 1 and <= 3, got 4", message(s, 4))
      assert.equal("expected integer >= 1 and <= 3, got 2.5", message(s, 2.5))
    end)
  end)

  describe("string", function()
    it("accepts strings and rejects everything else", function()
      valid(S.string, "")
      valid(S.string, "hello")
      assert.equal("expected string, got number", message(S.string, 1))
      assert.equal("expected string, got null", message(S.string, null))
    end)

    it("counts max_len and min_len in UTF-8 characters", function()
      local s = S.string:max_len(5)
      valid(s, "héllo")                 -- 5 characters, 6 bytes
      valid(s, "日本語日本")             -- 5 characters, 15 bytes
      assert.equal("expected string of at most 5 characters, got 6 characters", message(s, "héllo!"))
      local m = S.string:min_len(3)
      valid(m, "abc")
      assert.equal("expected string of at least 3 characters, got 2 characters", message(m, "日本"))
    end)

    it("counts bytes when the string is not valid UTF-8", function()
      local s = S.string:max_len(3)
      valid(s, "\xff\xfe\xfd")
      assert.equal("expected string of at most 3 characters, got 4 characters",
        message(s, "\xff\xfe\xfd\xfc"))
    end)

    it("describes a length range and an exact length", function()
      assert.equal("string of 1 to 10 characters", S.describe(S.string:min_len(1):max_len(10)))
      assert.equal("string of exactly 2 characters", S.describe(S.string:min_len(2):max_len(2)))
      assert.equal("string of at least 1 character", S.describe(S.string:min_len(1)))
      assert.equal("expected string of 1 to 10 characters, got 0 characters",
        message(S.string:min_len(1):max_len(10), ""))
    end)

    it("matches a Lua pattern and shows the rejected string", function()
      local s = S.string:pattern("^%a+$")
      valid(s, "abc")
      assert.equal('expected string matching pattern "^%a+$", got "ab1"', message(s, "ab1"))
    end)

    it("treats an unanchored pattern as 'contains'", function()
      local s = S.string:pattern("%d")
      valid(s, "abc1def")
      assert.equal('expected string matching pattern "%d", got "abc"', message(s, "abc"))
    end)

    it("checks length before the pattern and describes both", function()
      local s = S.string:max_len(3):pattern("^%l+$")
      assert.equal('string of at most 3 characters matching pattern "^%l+$"', S.describe(s))
      assert.equal('expected string of at most 3 characters matching pattern "^%l+$", got 4 characters',
        message(s, "abcd"))
      assert.equal('expected string of at most 3 characters matching pattern "^%l+$", got "aB"',
        message(s, "aB"))
    end)

    it("shortens long rejected strings and escapes quotes and control characters", function()
      local long = string.rep("x", 100)
      assert.equal('expected string matching pattern "^y", got "' .. string.rep("x", 40) .. '"...',
        message(S.string:pattern("^y"), long))
      assert.equal([[expected string matching pattern "^y", got "a\"b\nc"]],
        message(S.string:pattern("^y"), 'a"b\nc'))
    end)

    it("rejects malformed patterns when the schema is defined", function()
      contains(raised(function() return S.string:pattern("[a-z") end), "missing ']'")
      contains(raised(function() return S.string:pattern("(ab") end), "unfinished capture")
      contains(raised(function() return S.string:pattern("ab%") end), "ends with '%'")
      contains(raised(function() return S.string:pattern("%b(") end), "missing arguments to '%b'")
      contains(raised(function() return S.string:pattern("%fa") end), "missing '[' after '%f'")
      contains(raised(function() return S.string:pattern("(a)%2") end), "invalid capture index %2")
      contains(raised(function() return S.string:pattern("a)") end), "invalid pattern capture")
      -- and accepts the well-formed ones Lua accepts
      for _, p in ipairs { "^[%]a]+$", "%b()", "%f[%w]%w+", "(a)%1", "()x", "[^%s]", "a%-b" } do
        assert.is_true(S.is(S.string:pattern(p)), p)
      end
    end)
  end)

  describe("boolean, null and any", function()
    it("boolean accepts true and false only", function()
      valid(S.boolean, true)
      valid(S.boolean, false)
      assert.equal("expected boolean, got number", message(S.boolean, 0))
      assert.equal("expected boolean, got nil", message(S.boolean, nil))
    end)

    it("null accepts nil and cjson.null only", function()
      valid(S.null, nil)
      valid(S.null, null)
      valid(S.null, cjson.decode("null"))
      assert.equal("expected null, got boolean", message(S.null, false))
      assert.equal("expected null, got number", message(S.null, 0))
      assert.equal("expected null, got object", message(S.null, {}))
    end)

    it("any accepts everything including nil", function()
      for _, v in ipairs { 1, "x", true, false, null, {}, { 1, 2 }, print } do valid(S.any, v) end
      valid(S.any, nil)
    end)

    it("exports cjson.null as S.null_value", function()
      assert.equal(cjson.null, S.null_value)
    end)
  end)

  describe("literal", function()
    it("accepts exactly the listed values", function()
      local s = S.literal("open", "closed")
      valid(s, "open")
      valid(s, "closed")
      assert.equal('expected "open" or "closed", got "x"', message(s, "x"))
      assert.equal('expected "open" or "closed", got 3', message(s, 3))
      assert.equal('expected "open" or "closed", got nil', message(s, nil))
      assert.equal('expected "open" or "closed", got object', message(s, {}))
    end)

    it("compares numbers by value, so 1 and 1.0 are the same literal", function()
      local s = S.literal(1, 2)
      valid(s, 1.0)
      valid(s, 2)
      assert.equal("expected 1 or 2, got 3", message(s, 3))
      assert.equal("expected 1 or 2, got \"1\"", message(s, "1"))
    end)

    it("supports booleans and null", function()
      valid(S.literal(true), true)
      assert.equal("expected true, got false", message(S.literal(true), false))
      local n = S.literal("x", S.null_value)
      valid(n, null)
      valid(n, nil)
      assert.equal('"x" or null', S.describe(n))
    end)

    it("refuses non-scalar and non-finite values and an empty list", function()
      contains(raised(function() return S.literal({}) end), "literal value #1 must be a string")
      contains(raised(function() return S.literal("a", 0 / 0) end), "got NaN")
      contains(raised(function() return S.literal() end), "at least one value")
    end)
  end)

  describe("optional", function()
    it("accepts nil, JSON null and the inner schema", function()
      local s = S.optional(S.string)
      valid(s, nil)
      valid(s, null)
      valid(s, "x")
    end)

    it("reports the inner error when a value is present", function()
      assert.equal("expected string, got number", message(S.optional(S.string), 5))
      assert.equal("expected string of at most 2 characters, got 3 characters",
        message(S.optional(S.string:max_len(2)), "abc"))
    end)

    it("makes a struct field omittable", function()
      local s = S.struct { name = S.optional(S.string) }
      valid(s, {})
      valid(s, { name = null })
      assert.equal("name: expected string, got boolean", message(s, { name = true }))
    end)
  end)

  describe("array", function()
    it("accepts sequences 1..n of the element schema, including the empty table", function()
      local s = S.array(S.number)
      valid(s, {})
      valid(s, { 1, 2, 3 })
      valid(s, cjson.decode("[]"))
    end)

    it("rejects tables with non-sequence keys as objects", function()
      local s = S.struct { tags = S.array(S.string) }
      local err = failure(s, { tags = { a = "x" } })
      assert.equal("tags", err.path)
      assert.equal("tags: expected array of string, got object", err.message)
      assert.equal("tags: expected array of string, got object", message(s, { tags = { [1] = "a", [3] = "c" } }))
      assert.equal("tags: expected array of string, got object", message(s, { tags = { "a", x = "b" } }))
      assert.equal("tags: expected array of string, got object", message(s, { tags = { [0] = "a" } }))
      -- a hole that the length operator does not see: # says 4, keys are 1, 2, 4
      local holed = { "a", "b", nil, "d" }
      assert.equal(4, #holed)
      assert.equal("tags: expected array of string, got object", message(s, { tags = holed }))
    end)

    it("names the first bad element by its 1-based index", function()
      local err = failure(S.array(S.number), { 1, 2, "three", "four" })
      assert.equal("[3]", err.path)
      assert.equal("[3]: expected number, got string", err.message)
    end)

    it("accepts null elements only when the element schema does", function()
      valid(S.array(S.optional(S.number)), cjson.decode("[1, null, 3]"))
      assert.equal("[2]: expected number, got null", message(S.array(S.number), cjson.decode("[1, null]")))
    end)

    it("applies min_len and max_len to the item count", function()
      local s = S.array(S.string):min_len(1):max_len(2)
      valid(s, { "a" })
      valid(s, { "a", "b" })
      assert.equal("expected array of string with 1 to 2 items, got 0 items", message(s, {}))
      assert.equal("expected array of string with 1 to 2 items, got 3 items", message(s, { "a", "b", "c" }))
      assert.equal("expected array of string with at most 1 item, got 2 items",
        message(S.array(S.string):max_len(1), { "a", "b" }))
    end)

    it("rejects non-tables", function()
      assert.equal("expected array of number, got string", message(S.array(S.number), "1,2"))
      assert.equal("expected array of number, got null", message(S.array(S.number), null))
    end)
  end)

  describe("struct", function()
    local Order = S.struct { amount = S.number, note = S.optional(S.string) }

    it("accepts a table with the declared fields, optional ones omitted", function()
      valid(Order, { amount = 1 })
      valid(Order, { amount = 1, note = "x" })
    end)

    it("names a missing required field and what it expected", function()
      local err = failure(Order, { note = "x" })
      assert.equal("amount", err.path)
      assert.equal("amount: missing required field (expected number)", err.message)
    end)

    it("rejects an undeclared field", function()
      local err = failure(Order, { amount = 1, foo = 2 })
      assert.equal("foo", err.path)
      assert.equal("foo: unexpected field", err.message)
    end)

    it("rejects non-string keys, naming them", function()
      assert.equal("expected object {amount: number, note: optional string}, got object with non-string key 1",
        message(Order, { amount = 1, [1] = "x", [true] = 1 }))
    end)

    it("rejects a non-empty array and non-tables including JSON null", function()
      assert.equal("expected object {amount: number, note: optional string}, got array", message(Order, { 1, 2 }))
      assert.equal("expected object {amount: number, note: optional string}, got null", message(Order, null))
      assert.equal("expected object {amount: number, note: optional string}, got string", message(Order, "x"))
    end)

    it("accepts the empty table as an empty struct", function()
      valid(S.struct {}, {})
      valid(S.struct {}, cjson.decode("[]"))
      assert.equal("x: unexpected field", message(S.struct {}, { x = 1 }))
    end)

    it("checks fields in sorted order so the reported error is stable", function()
      local s = S.struct { b = S.number, a = S.number, c = S.number }
      for _ = 1, 20 do
        assert.equal("a: expected number, got string", message(s, { c = "x", b = "x", a = "x" }))
      end
      assert.equal("b: missing required field (expected number)", message(s, { a = 1 }))
      assert.equal("d: unexpected field", message(S.struct {}, { f = 1, e = 1, d = 1 }))
    end)

    it("does not require fields whose schema accepts nil (null, any, optional)", function()
      local s = S.struct { a = S.null, b = S.any, c = S.optional(S.number), d = S.union(S.null, S.number) }
      valid(s, {})
      valid(s, { a = null, b = { 1 }, c = 2, d = 3 })
    end)

    it("builds dotted paths through nested structs", function()
      local s = S.struct { a = S.struct { b = S.struct { c = S.number } } }
      local err = failure(s, { a = { b = { c = "x" } } })
      assert.equal("a.b.c", err.path)
      assert.equal("a.b.c: expected number, got string", err.message)
      assert.equal("a.b.c: missing required field (expected number)", message(s, { a = { b = {} } }))
    end)

    it("quotes field names that are not identifiers", function()
      local s = S.struct { ["first name"] = S.string }
      assert.equal('object {"first name": string}', S.describe(s))
      assert.equal('["first name"]: expected string, got number', message(s, { ["first name"] = 1 }))
    end)

    it("returns an existing struct unchanged and refuses other schemas", function()
      assert.equal(Order, S.struct(Order))
      contains(raised(function() return S.struct(S.number) end), "got the schema number")
      contains(raised(function() return S.struct("x") end), 'got string "x"')
    end)
  end)

  describe("map", function()
    it("accepts tables with string keys and valid values, including empty", function()
      local s = S.map(S.number)
      valid(s, {})
      valid(s, { a = 1, b = 2 })
    end)

    it("names the bad value by its key", function()
      local err = failure(S.struct { m = S.map(S.number) }, { m = { a = 1, key = "x" } })
      assert.equal("m.key", err.path)
      assert.equal("m.key: expected number, got string", err.message)
    end)

    it("brackets and quotes keys that are not identifiers", function()
      local err = failure(S.struct { m = S.map(S.number) }, { m = { ["key with spaces"] = "x" } })
      assert.equal('m["key with spaces"]', err.path)
      assert.equal('m["key with spaces"]: expected number, got string', err.message)
    end)

    it("rejects non-string keys and arrays", function()
      assert.equal("expected map of number, got object with non-string key 1",
        message(S.map(S.number), { a = 1, [1] = 2 }))
      assert.equal("expected map of number, got array", message(S.map(S.number), { 1, 2 }))
      assert.equal("expected map of number, got null", message(S.map(S.number), null))
    end)

    it("limits the number of keys with max_len and min_len", function()
      local s = S.map(S.number):max_len(2)
      valid(s, { a = 1, b = 2 })
      assert.equal("expected map of number with at most 2 keys, got 3 keys", message(s, { a = 1, b = 2, c = 3 }))
      assert.equal("expected map of number with at least 1 key, got 0 keys",
        message(S.map(S.number):min_len(1), {}))
    end)
  end)

  describe("union", function()
    it("accepts a value matching any branch", function()
      local s = S.union(S.number, S.string)
      valid(s, 1)
      valid(s, "x")
    end)

    it("lists the alternatives when no branch has the value's type", function()
      local err = failure(S.struct { x = S.union(S.number, S.string) }, { x = true })
      assert.equal("x", err.path)
      assert.equal("x: expected number or string, got boolean", err.message)
    end)

    it("reports the precise error of the only branch of the value's type", function()
      local s = S.union(S.number:min(0), S.string)
      assert.equal("expected number >= 0, got -5", message(s, -5))
      local a = S.union(S.array(S.number), S.string)
      assert.equal("[2]: expected number, got string", message(a, { 1, "x" }))
    end)

    it("shows the value when several branches share its type", function()
      local s = S.union(S.literal("a"), S.literal("b"), S.number)
      assert.equal('expected "a" or "b" or number, got "c"', message(s, "c"))
    end)

    it("reports the object branch with the most valid fields", function()
      local s = S.union(
        { type = S.literal("deposit"), amount = S.number },
        { type = S.literal("transfer"), to = S.string, amount = S.number })
      local err = failure(s, { type = "transfer", to = 5, amount = 1 })
      assert.equal("to", err.path)
      assert.equal("to: expected string, got number", err.message)
      -- no branch recognisably meant: list the alternatives
      contains(message(s, { foo = 1 }), "expected object {amount: number, type: \"deposit\"} or object")
    end)

    it("accepts nil when a branch is optional or null", function()
      valid(S.union(S.null, S.number), nil)
      valid(S.union(S.number, S.optional(S.string)), null)
      assert.equal("expected number or string, got nil", message(S.union(S.number, S.string), nil))
    end)

    it("needs at least one branch and rejects non-schemas", function()
      contains(raised(function() return S.union() end), "at least one schema")
      contains(raised(function() return S.union(S.number, nil, S.string) end),
        "union branch #2: expected a schema, got nil")
    end)
  end)

  describe("paths", function()
    it("combine map keys, struct fields and array indexes", function()
      local s = S.struct {
        orders = S.map(S.struct { items = S.array(S.struct { name = S.string }) }),
      }
      local v = { orders = { o1 = { items = { { name = "a" }, { name = 3 } } } } }
      local err = failure(s, v)
      assert.equal("orders.o1.items[2].name", err.path)
      assert.equal("orders.o1.items[2].name: expected string, got number", err.message)
    end)

    it("start with the index when the root is an array", function()
      local err = failure(S.array(S.array { name = S.string }), { {}, { { name = "x" }, { name = false } } })
      assert.equal("[2][2].name", err.path)
      assert.equal("[2][2].name: expected string, got boolean", err.message)
    end)

    it("are empty at the root, with no prefix on the message", function()
      local err = failure(S.number, "x")
      assert.equal("", err.path)
      assert.equal("expected number, got string", err.message)
    end)
  end)

  describe("validation errors", function()
    it("carry kind 'schema' and read well through tostring", function()
      local err = failure(S.struct { a = S.number }, { a = "x" })
      assert.equal("schema", err.kind)
      assert.equal("schema error: a: expected number, got string", tostring(err))
    end)

    it("come from values decoded by cjson", function()
      local s = S.struct { id = S.string, tags = S.array(S.string), note = S.optional(S.string) }
      valid(s, cjson.decode('{"id":"a","tags":[],"note":null}'))
      valid(s, cjson.decode('{"id":"a","tags":{}}'))
      assert.equal("tags[2]: expected string, got number",
        message(s, cjson.decode('{"id":"a","tags":["x",2]}')))
    end)
  end)

  describe("shorthand plain tables", function()
    it("stand for S.struct wherever a schema is expected", function()
      local s = S.array { name = S.string, address = { city = S.string } }
      valid(s, { { name = "a", address = { city = "b" } } })
      assert.equal("[1].address.city: expected string, got number",
        message(s, { { name = "a", address = { city = 1 } } }))
      valid(S.optional { a = S.number }, nil)
      valid(S.map { a = S.number }, { k = { a = 1 } })
      valid(S.union(S.number, { a = S.number }), { a = 1 })
      valid({ a = S.number }, { a = 1 })
      assert.equal("object {a: number}", S.describe { a = S.number })
      assert.equal('{"a":[]}', S.encode({ a = S.array(S.number) }, { a = {} }))
    end)

    it("are checked field by field, naming the bad field", function()
      assert.equal("luster.schema: expected a schema for field order.amount, got number 5",
        (raised(function() return S.of { order = { amount = 5 } } end):gsub("^.-:%d+: ", "")))
      contains(raised(function() return S.of { tags = { S.string } } end),
        "for field tags, got table with non-string key 1 (fields are named by strings; use S.array(s) for arrays)")
    end)
  end)

  describe("unknown names", function()
    it("raise at the line that names them, suggesting the closest known name", function()
      local line = debug.getinfo(1, "l").currentline + 1
      local ok, err = pcall(function() return { n = S.integr } end)
      assert.is_false(ok)
      assert.are.equal(("spec/schema_spec.lua:%d: unknown schema type 'integr' (did you mean 'integer'?)"):format(line),
        err)
      assert.matches(":%d+: unknown schema type 'strnig' %(did you mean 'string'%?%)$",
        raised(function() return S.strnig end))
      assert.matches(":%d+: unknown schema type 'optinal' %(did you mean 'optional'%?%)$",
        raised(function() return S.optinal(S.string) end))
      assert.matches(":%d+: unknown schema type 'uuid'$", raised(function() return S.uuid end))
      assert.matches(":%d+: unknown schema type 1$", raised(function() return S[1] end))
    end)

    it("leave the known ones as they are", function()
      assert.is_true(S.is(S.integer))
      assert.are.equal(cjson.null, S.null_value)
      assert.is_function(S.optional)
    end)
  end)

  describe("S.of and S.is", function()
    it("passes schemas through and turns plain tables into structs", function()
      assert.equal(S.number, S.of(S.number))
      local s = S.of { a = S.number }
      assert.is_true(S.is(s))
      assert.equal("object {a: number}", tostring(s))
    end)

    it("tells schemas from everything else", function()
      assert.is_true(S.is(S.number))
      assert.is_true(S.is(S.array(S.string)))
      assert.is_false(S.is({ a = S.number }))
      assert.is_false(S.is(nil))
      assert.is_false(S.is("number"))
      assert.is_false(S.is(setmetatable({}, { __tostring = function() return "number" end })))
      assert.is_false(S.is(S.of))
    end)

    it("raises a clear error naming what it was given, at the caller's line", function()
      local e = raised(function() local s = S.of(5); return s end)
      contains(e, "schema_spec.lua:")
      contains(e, "luster.schema: expected a schema, got number 5")
      contains(raised(function() local s = S.of(nil); return s end), "expected a schema, got nil")
      contains(raised(function() local s = S.of("number"); return s end),
        'got string "number" (did you mean S.number?)')
      contains(raised(function() local s = S.of(S.optional); return s end), "got function (did you forget to call")
      contains(raised(function() local s = S.of(setmetatable({}, {})); return s end), "got table with a metatable")
      contains(raised(function() local s = S.of(null); return s end), "the schema is S.null")
      contains(raised(function() local s = S.array(nil); return s end), "schema_spec.lua:")
    end)

    it("applies to constructor arguments and to validate, describe and encode", function()
      contains(raised(function() local s = S.optional(42); return s end), "expected a schema, got number 42")
      contains(raised(function() local s = S.map(true); return s end), "expected a schema, got boolean true")
      contains(raised(function() local s = S.validate("x", 1); return s end), 'got string "x"')
      contains(raised(function() local s = S.describe(1); return s end), "got number 1")
      contains(raised(function() local s = S.encode(1, 1); return s end), "got number 1")
    end)
  end)

  describe("constraints", function()
    it("return new schemas and never change the receiver", function()
      local positive = S.number:min(0)
      local bounded = positive:max(10)
      valid(S.number, -1000)
      valid(positive, 1000)
      valid(bounded, 10)
      assert.equal("number", S.describe(S.number))
      assert.equal("number >= 0", S.describe(positive))
      assert.equal("number >= 0 and <= 10", S.describe(bounded))
      assert.are_not.equal(positive, bounded)
      local short = S.string:max_len(1)
      valid(S.string, "long string")
      assert.equal("string", tostring(S.string))
      assert.equal("string of at most 1 character", tostring(short))
      local arr = S.array(S.number)
      local _ = arr:max_len(0)
      valid(arr, { 1, 2 })
    end)

    it("replace an earlier bound of the same kind", function()
      local s = S.number:min(0):min(5)
      assert.equal("number >= 5", S.describe(s))
      assert.equal("expected number >= 5, got 1", message(s, 1))
    end)

    it("make schema values immutable", function()
      contains(raised(function() S.number.min_value = 3 end), "immutable")
      contains(raised(function() S.string.kind = "number" end), "immutable")
      assert.equal("number", S.number.kind)
    end)

    it("refuse schemas they do not apply to and bad arguments", function()
      contains(raised(function() return S.string:min(1) end),
        "min applies to number and integer schemas, not to string")
      contains(raised(function() return S.number:max_len(1) end),
        "max_len applies to string and array and map schemas, not to number")
      contains(raised(function() return S.number:pattern("x") end), "pattern applies to string schemas")
      contains(raised(function() return S.number:min("1") end), 'min expects a finite number, got string "1"')
      contains(raised(function() return S.number:min(math.huge) end), "min expects a finite number")
      contains(raised(function() return S.string:max_len(1.5) end), "expects a non-negative integer, got number 1.5")
      contains(raised(function() return S.string:min_len(-1) end), "expects a non-negative integer")
      contains(raised(function() return S.number:min(5):max(1) end), "min 5 is greater than max 1")
      contains(raised(function() return S.string:max_len(1):min_len(2) end), "min_len 2 is greater than max_len 1")
      contains(raised(function() return S.number.min(5) end), "must be called as a method")
      contains(raised(function() return S.string:maxlen(3) end), "string has no field or method maxlen")
    end)

    it("report misuse at the caller's line", function()
      contains(raised(function() local s = S.string:min(1); return s end), "schema_spec.lua:")
      contains(raised(function() local s = S.number:min(5):max(1); return s end), "schema_spec.lua:")
      contains(raised(function() local s = S.string:pattern("("); return s end), "schema_spec.lua:")
      contains(raised(function() local s = S.string:max_len("x"); return s end), "schema_spec.lua:")
    end)
  end)

  describe("describe", function()
    it("gives short human text for every kind", function()
      assert.equal("number", S.describe(S.number))
      assert.equal("integer", S.describe(S.integer))
      assert.equal("string", S.describe(S.string))
      assert.equal("boolean", S.describe(S.boolean))
      assert.equal("null", S.describe(S.null))
      assert.equal("any", S.describe(S.any))
      assert.equal("array of string", S.describe(S.array(S.string)))
      assert.equal("map of number", S.describe(S.map(S.number)))
      assert.equal("object {amount: number}", S.describe(S.struct { amount = S.number }))
      assert.equal("object {}", S.describe(S.struct {}))
      assert.equal('"a" or "b"', S.describe(S.literal("a", "b")))
      assert.equal("optional string", S.describe(S.optional(S.string)))
      assert.equal("number or string", S.describe(S.union(S.number, S.string)))
      assert.equal("integer >= 1", S.describe(S.integer:min(1)))
      assert.equal("array of number with at least 1 item", S.describe(S.array(S.number):min_len(1)))
    end)

    it("parenthesises alternatives inside array, map and optional", function()
      assert.equal("array of (number or string)", S.describe(S.array(S.union(S.number, S.string))))
      assert.equal('optional ("a" or "b")', S.describe(S.optional(S.literal("a", "b"))))
      assert.equal('map of "x"', S.describe(S.map(S.literal("x"))))
    end)

    it("lists struct fields sorted, nested descriptions included", function()
      assert.equal("object {a: array of object {b: optional integer}, z: boolean}",
        S.describe { z = S.boolean, a = S.array { b = S.optional(S.integer) } })
    end)

    it("is what tostring gives", function()
      assert.equal("array of string", tostring(S.array(S.string)))
      assert.equal("optional string", tostring(S.optional(S.string)))
    end)
  end)

  describe("encode", function()
    it("writes empty arrays as [] where the schema says array", function()
      assert.equal("[]", S.encode(S.array(S.number), {}))
      assert.equal('{"tags":[]}', S.encode({ tags = S.array(S.string) }, { tags = {} }))
      assert.equal('{"tags":{}}', cjson.encode({ tags = {} }))   -- what cjson alone would write
    end)

    it("keeps empty objects as {} where the schema says struct, map or any", function()
      local s = S.struct { tags = S.array(S.string), meta = S.map(S.number), opts = S.struct {}, x = S.any }
      assert.equal('{"meta":{},"opts":{},"tags":[],"x":{}}', S.encode(s, { tags = {}, meta = {}, opts = {}, x = {} }))
    end)

    it("finds empty arrays nested in arrays, structs and maps", function()
      local s = S.struct {
        matrix = S.array(S.array(S.number)),
        groups = S.map(S.struct { members = S.array(S.string) }),
      }
      local v = { matrix = { {}, { 1, 2 }, {} }, groups = { g = { members = {} } } }
      local json = S.encode(s, v)
      assert.equal('{"groups":{"g":{"members":[]}},"matrix":[[],[1,2],[]]}', json)
      valid(s, cjson.decode(json))
    end)

    it("finds empty arrays inside optional and union branches", function()
      assert.equal('{"a":[]}', S.encode({ a = S.optional(S.array(S.number)) }, { a = {} }))
      assert.equal("[]", S.encode(S.optional(S.array(S.number)), {}))
      assert.equal("null", S.encode(S.optional(S.array(S.number)), nil))
      assert.equal('{"a":null}', S.encode({ a = S.optional(S.array(S.number)) }, { a = null }))
      assert.equal("{}", S.encode({ a = S.optional(S.array(S.number)) }, {}))
      local u = S.union(S.string, S.array(S.number))
      assert.equal("[]", S.encode(u, {}))
      assert.equal('"x"', S.encode(u, "x"))
      local first = S.union(S.struct { k = S.array(S.number) }, S.array(S.number))
      assert.equal('{"k":[]}', S.encode(first, { k = {} }))
    end)

    it("writes non-empty arrays, strings and numbers as cjson does", function()
      local s = S.struct { list = S.array(S.struct { name = S.string, n = S.number }) }
      local v = { list = { { name = 'q"/\n', n = 0.1 }, { name = "b", n = 3 } } }
      local json = S.encode(s, v)
      assert.same(v, cjson.decode(json))
      assert.equal('{"list":' .. cjson.encode(v.list) .. "}", json)
    end)

    it("hands an array-free schema's value straight to cjson.encode", function()
      local s = S.struct { a = S.number, m = S.map(S.string) }
      -- an undeclared key would be dropped by the schema-guided walk: its
      -- presence proves the fast path encoded the whole value as is
      local v = { a = 1, m = {}, extra = true }
      assert.equal(cjson.encode(v), S.encode(s, v))
      assert.equal("5", S.encode(S.number, 5))
      assert.equal('"x"', S.encode(S.string, "x"))
    end)
  end)

  describe("hot path", function()
    local Order = S.of {
      id = S.string:max_len(64), amount = S.number:min(0), note = S.optional(S.string),
      status = S.literal("open", "closed"), kind = S.union(S.string, S.number),
      items = S.array { sku = S.string:pattern("^%w+$"), qty = S.integer:min(1) },
      meta = S.map(S.string),
    }
    local order = {
      id = "o-1", amount = 12.5, status = "open", kind = 3,
      items = { { sku = "a1", qty = 1 }, { sku = "b2", qty = 2 } }, meta = { k = "v" },
    }

    it("validates a valid message without allocating", function()
      assert.is_true(S.validate(Order, order))   -- warm up: stack growth, lazy tables
      collectgarbage()
      collectgarbage("stop")
      local before = collectgarbage("count")
      for _ = 1, 10000 do S.validate(Order, order) end
      local grown = (collectgarbage("count") - before) * 1024
      collectgarbage("restart")
      -- one small string or table per call would be hundreds of kilobytes
      assert.is_true(grown < 2048, string.format("allocated %d bytes", grown))
    end)

    it("compiles a plain table passed to validate once, not per call", function()
      local plain = { amount = S.number, tags = S.array(S.string) }
      local msg = { amount = 1, tags = { "a" } }
      assert.is_true(S.validate(plain, msg))
      collectgarbage()
      collectgarbage("stop")
      local before = collectgarbage("count")
      for _ = 1, 1000 do S.validate(plain, msg) end
      local grown = (collectgarbage("count") - before) * 1024
      collectgarbage("restart")
      assert.is_true(grown < 2048, string.format("allocated %d bytes", grown))
      assert.equal("tags[1]: expected string, got number", message(plain, { amount = 1, tags = { 1 } }))
    end)

    it("still reports the path when the same schema fails", function()
      local bad = { id = "o-1", amount = 1, status = "open", kind = 1, meta = {},
                    items = { { sku = "a1", qty = 1 }, { sku = "b 2", qty = 1 } } }
      assert.equal('items[2].sku: expected string matching pattern "^%w+$", got "b 2"', message(Order, bad))
    end)
  end)

  describe("depth guard", function()
    it("accepts schemas nested up to 200 levels", function()
      local s = S.number
      for _ = 1, 199 do s = S.array(s) end
      local v = 1
      for _ = 1, 199 do v = { v } end
      valid(s, v)
    end)

    it("refuses schemas nested deeper than 200 levels with a clear error", function()
      local e = raised(function()
        local s = S.number
        for _ = 1, 300 do s = S.array(s) end
        return s
      end)
      contains(e, "schema nested deeper than 200 levels")
    end)

    it("refuses deep and self-referencing plain tables", function()
      local deep = {}
      local cur = deep
      for _ = 1, 1000 do cur.x = {}; cur = cur.x end
      contains(raised(function() local s = S.of(deep); return s end), "schema nested deeper than 200 levels")
      local cyclic = { name = S.string }
      cyclic.child = cyclic
      contains(raised(function() local s = S.of(cyclic); return s end),
        "plain table schema for field child contains itself")
    end)
  end)
end)
