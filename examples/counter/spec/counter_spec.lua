-- counter_spec.lua - examples/counter under `luster test examples/counter`:
-- the Counter's calls, its schema, its passivation after 60 s idle (on the
-- virtual clock), a failed hot reload and the HTTP gateway's answer to the
-- README's curl.
local T = require "luster.test"

describe("Counter", function()
  it("adds each amount to its count", function()
    local counter = T.client("Counter", "counter-123")
    assert.are.equal(1, counter:Increment { amount = 1 })
    assert.are.equal(3.5, counter:Increment { amount = 2.5 })
  end)

  it("keeps one count per id, and each `it` starts on a fresh runtime", function()
    -- counter-123 counted up to 3.5 in the test above; here it starts again.
    assert.are.equal(10, T.client("Counter", "counter-123"):Increment { amount = 10 })
    assert.are.equal(1, T.client("Counter", "other"):Increment { amount = 1 })
  end)

  it("refuses a payload that does not match the schema, naming the field", function()
    local value, err = T.client("Counter", "c"):Increment { amount = "one" }
    assert.is_nil(value)
    assert.are.equal("schema", err.kind)
    assert.matches("amount: expected number, got string", tostring(err), 1, true)
  end)

  it("is passivated after 60 s idle; its count lived in memory, so it starts again from 0", function()
    local counter = T.client("Counter", "c")
    counter:Increment { amount = 5 }
    assert.are.equal(1, T.active("Counter"))
    T.advance(59000)
    assert.is_true(T.active("Counter", "c"))
    T.advance(2000)
    assert.is_false(T.active("Counter", "c"))
    assert.are.equal(0, T.active("Counter"))
    assert.are.equal(1, counter:Increment { amount = 1 })
  end)

  it("answers the README's curl through the HTTP gateway", function()
    local status, body = T.http("POST", "/entities/Counter/counter-123/Increment", '{"amount":1}')
    assert.are.equal(200, status)
    assert.are.same({ value = 1 }, body)
    status, body = T.http("POST", "/entities/Counter/counter-123/Increment", '{"amount":"x"}')
    assert.are.equal(400, status)
    assert.are.equal("amount", body.error.path)
  end)

  it("keeps serving its old version when a new one fails to load (hot reload)", function()
    local counter = T.client("Counter", "c")
    counter:Increment { amount = 2 }
    local ok, err = T.write("counter.lua", "return luster.entity(")   -- as if saved half-written
    assert.is_nil(ok)
    assert.matches("counter.lua:1: unexpected symbol near <eof>", err, 1, true)
    assert.are.equal(3, counter:Increment { amount = 1 })
  end)
end)
