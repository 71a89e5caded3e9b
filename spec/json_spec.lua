-- luster.json: whole numbers decode as Lua integers.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local json = require "luster.json"

describe("luster.json.decode", function()
  it("turns whole numbers into integers, at any depth", function()
    local v = json.decode('{"a":1,"b":[2,{"c":-3}],"d":1e3}')
    assert.are.equal("integer", math.type(v.a))
    assert.are.equal("1", tostring(v.a))
    assert.are.equal("integer", math.type(v.b[1]))
    assert.are.equal("integer", math.type(v.b[2].c))
    assert.are.equal(1000, v.d)
    assert.are.equal("integer", math.type(v.d))
  end)

  it("keeps fractions and numbers beyond 2^53 as floats", function()
    local v = json.decode('[2.5, 9007199254740993, -0.5]')
    assert.are.equal("float", math.type(v[1]))
    assert.are.equal("float", math.type(v[2]))
    assert.are.equal(-0.5, v[3])
  end)

  it("decodes a top-level number, string, null", function()
    assert.are.equal("integer", math.type(json.decode("42")))
    assert.are.equal("x", json.decode('"x"'))
    assert.are.equal(json.null, json.decode("null"))
  end)

  it("raises on invalid JSON", function()
    assert.has_error(function() json.decode("{") end)
  end)
end)
