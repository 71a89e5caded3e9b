-- bank_spec.lua - examples/bank under `luster test examples/bank`: accounts
-- that refuse to go below zero with a declared failure, and transfers that
-- run once per transfer id (a persisted message with a primary key).
local T = require "luster.test"

local function balance(name) return (T.client("Account", name):Balance()) end

describe("Account", function()
  it("takes deposits and withdrawals", function()
    local alice = T.client("Account", "alice")
    assert.are.equal(100, alice:Deposit { amount = 100 })
    assert.are.equal(70, alice:Withdraw { amount = 30 })
    assert.are.equal(70, alice:Balance())
  end)

  it("refuses to overdraw with a declared failure, and keeps the balance", function()
    local erin = T.client("Account", "erin")
    erin:Deposit { amount = 5 }
    local value, err = erin:Withdraw { amount = 8 }
    assert.is_nil(value)
    assert.are.equal("failure", err.kind)
    assert.are.same({ reason = "insufficient_funds", balance = 5, requested = 8 }, err.value)
    assert.are.equal(5, balance("erin"))
  end)

  it("refuses an amount below 0.01 with the schema path", function()
    local _, err = T.client("Account", "gina"):Deposit { amount = -1 }
    assert.are.equal("schema", err.kind)
    assert.matches("amount: expected number >= 0.01, got -1", tostring(err), 1, true)
  end)
end)

describe("Transfer", function()
  it("moves money between two accounts", function()
    T.client("Account", "alice"):Deposit { amount = 100 }
    local result = T.client("Transfer", "t-1"):Execute { from = "alice", to = "bob", amount = 30 }
    assert.are.same({ from_balance = 70, to_balance = 30 }, result)
    assert.are.equal(70, balance("alice"))
    assert.are.equal(30, balance("bob"))
    assert.are.equal(1, #T.logs("moved 30 from alice to bob"))
  end)

  it("executes a transfer id once however often it is sent: a duplicate gets the first reply", function()
    T.client("Account", "carol"):Deposit { amount = 50 }
    local transfer = T.client("Transfer", "t-2")
    local first = transfer:Execute { from = "carol", to = "dave", amount = 20 }
    local again = transfer:Execute { from = "carol", to = "dave", amount = 20 }
    assert.are.same(first, again)
    assert.are.equal(30, balance("carol"))
    assert.are.equal(20, balance("dave"))
    assert.are.equal(1, #T.logs("moved 20 from carol to dave"))
  end)

  it("passes on the account's declared failure and moves nothing", function()
    T.client("Account", "erin"):Deposit { amount = 5 }
    local value, err = T.client("Transfer", "t-3"):Execute { from = "erin", to = "frank", amount = 8 }
    assert.is_nil(value)
    assert.are.equal("failure", err.kind)
    assert.are.same({ reason = "insufficient_funds", balance = 5, requested = 8 }, err.value)
    assert.are.equal(5, balance("erin"))
    assert.are.equal(0, balance("frank"))
  end)

  it("refuses a transfer to the same account", function()
    local _, err = T.client("Transfer", "t-4"):Execute { from = "alice", to = "alice", amount = 1 }
    assert.are.equal("failure", err.kind)
    assert.are.same({ reason = "same_account" }, err.value)
  end)

  it("answers a declared failure with 422 through the HTTP gateway", function()
    local status, body = T.http("POST", "/entities/Transfer/t-5/Execute", '{"from":"zoe","to":"yan","amount":1}')
    assert.are.equal(422, status)
    assert.are.same({ reason = "insufficient_funds", balance = 0, requested = 1 }, body.failure)
  end)
end)
