package.cpath = "build/?.so;" .. package.cpath
-- memstore_spec.lua - the embedded message store (storage/memory.c) alone,
-- through the luster_memstore Lua module (spec/support/luster_memstore.c,
-- `make build/luster_memstore.so`): its own scheduler on a virtual clock, no
-- host, entity or router; two stores in one process share nothing.

local mem = require("luster_memstore")

describe("the embedded store on its own", function()
  it("stores a keyed message once: a retry is done, another payload a conflict", function()
    local s = mem.new(60000)
    assert.equal("new", s:put(1, "a", '{"x":1}', "k1"))
    assert.equal("done", s:put(2, "a", '{ "x" : 1 }', "k1"))
    assert.equal("conflict", s:put(3, "a", '{"x":2}', "k1"))
    assert.equal(1, s:count())
    local kind, body = s:get(1)
    assert.equal("ok", kind)
    assert.equal("42", body)
    assert.equal("not_found", (s:get(3)))
    s:close()
  end)

  it("prunes a reply after the retention period, by the virtual clock", function()
    local s = mem.new(120000)
    assert.equal("new", s:put(7, "a", "{}", "k"))
    s:advance(119999)
    assert.equal(1, s:count())
    s:advance(1)
    assert.equal(0, s:count())
    assert.equal("not_found", (s:get(7)))
    s:close()
  end)

  it("keeps two stores apart", function()
    local a, b = mem.new(60000), mem.new(60000)
    assert.equal("new", a:put(1, "x", "{}", "k"))
    assert.equal("new", b:put(1, "x", '{"other":true}', "k"))
    assert.equal(1, a:count())
    assert.equal(1, b:count())
    a:advance(60000)
    assert.equal(0, a:count())
    assert.equal(1, b:count())
    a:close()
    b:close()
  end)
end)
