-- The examples in examples/ do what the README says they do.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"

describe("examples/counter", function()
  local r
  setup(function() r = H.start(H.root .. "/examples/counter") end)
  teardown(function() r:stop() end)

  it("answers {\"value\":1} to the README's first curl, then counts up", function()
    local status, _, _, raw = r:call("Counter", "counter-123", "Increment", '{"amount":1}')
    assert.are.equal(200, status)
    assert.are.equal('{"value":1}', raw)
    local _, doc = r:call("Counter", "counter-123", "Increment", { amount = 2.5 })
    assert.are.equal(3.5, doc.value)
  end)

  it("keeps separate counts per id", function()
    r:call("Counter", "a", "Increment", { amount = 10 })
    local _, doc = r:call("Counter", "b", "Increment", { amount = 1 })
    assert.are.equal(1, doc.value)
  end)

  it("passes `luster check`", function()
    local code, out = H.cli("check " .. H.sh_quote(H.root .. "/examples/counter"))
    assert.are.equal(0, code)
    assert.matches("ok   counter.lua  (entity Counter)", out, 1, true)
  end)
end)

describe("examples/bank", function()
  local r
  setup(function() r = H.start(H.root .. "/examples/bank") end)
  teardown(function() r:stop() end)

  it("moves money between accounts through a Transfer entity", function()
    assert.are.equal(200, (r:call("Account", "alice", "Deposit", { amount = 100 })))
    local status, doc = r:call("Transfer", "t-1", "Execute", { from = "alice", to = "bob", amount = 30 })
    assert.are.equal(200, status)
    assert.are.same({ from_balance = 70, to_balance = 30 }, doc.value)
    assert.are.equal(70, select(2, r:call("Account", "alice", "Balance", {})).value)
    assert.are.equal(30, select(2, r:call("Account", "bob", "Balance", {})).value)
  end)

  it("executes a transfer id once, however often it is sent", function()
    r:call("Account", "carol", "Deposit", { amount = 50 })
    local _, first = r:call("Transfer", "t-2", "Execute", { from = "carol", to = "dave", amount = 20 })
    local _, again = r:call("Transfer", "t-2", "Execute", { from = "carol", to = "dave", amount = 20 })
    assert.are.same(first.value, again.value)
    assert.are.equal(30, select(2, r:call("Account", "carol", "Balance", {})).value)
  end)

  it("answers insufficient funds as a declared failure (422) and moves nothing", function()
    r:call("Account", "erin", "Deposit", { amount = 5 })
    local status, doc = r:call("Transfer", "t-3", "Execute", { from = "erin", to = "frank", amount = 8 })
    assert.are.equal(422, status)
    assert.are.same({ reason = "insufficient_funds", balance = 5, requested = 8 }, doc.failure)
    assert.are.equal(5, select(2, r:call("Account", "erin", "Balance", {})).value)
    assert.are.equal(0, select(2, r:call("Account", "frank", "Balance", {})).value)
  end)

  it("rejects a non-positive amount with the schema path", function()
    local status, doc = r:call("Account", "gina", "Deposit", { amount = -1 })
    assert.are.equal(400, status)
    assert.are.equal("amount", doc.error.path)
    assert.matches("amount: expected number >= 0.01, got -1", doc.error.message, 1, true)
  end)
end)
