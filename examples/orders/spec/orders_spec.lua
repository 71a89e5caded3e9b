-- orders_spec.lua - examples/orders under `luster test examples/orders`:
-- Place and Pay deduplicated by primary key, the expiry of an unpaid order by
-- its deliver_at message, the Dispatcher singleton shipping paid orders every
-- second and the Report cron every 10 s. Minutes of virtual time, run in a
-- fraction of a second.
local T = require "luster.test"

local cart = { customer = "ada", items = { "book", "lamp" }, total = 42.5 }

local function order(number) return T.client("Order", number) end

local function status_of(number)
  local value, err = order(number):Status()
  return value and value.status or err.value.reason
end

describe("Order", function()
  it("is placed once: a duplicate Place gets the first reply, another cart under its number is refused", function()
    local first = order("1001"):Place(cart)
    assert.are.same({ customer = "ada", items = { "book", "lamp" }, total = 42.5, status = "placed" }, first)
    assert.are.same(first, order("1001"):Place(cart))
    local value, err = order("1001"):Place { customer = "bob", items = { "mug" }, total = 8 }
    assert.is_nil(value)
    assert.are.equal("conflict", err.kind)
    assert.are.equal(1, #T.logs("placed for ada"))
    assert.are.equal(0, #T.logs("placed for bob"))
  end)

  it("charges a payment id once, and refuses a wrong amount as a declared failure", function()
    order("1002"):Place { customer = "ada", items = { "pen" }, total = 3 }
    local _, err = order("1002"):Pay { payment = "pay-1", amount = 2 }
    assert.are.equal("failure", err.kind)
    assert.are.same({ reason = "wrong_amount", total = 3 }, err.value)
    local paid = order("1002"):Pay { payment = "pay-2", amount = 3 }
    assert.are.equal("paid", paid.status)
    T.advance(1000)   -- the Dispatcher ships it
    assert.are.equal("shipped", status_of("1002"))
    -- The same payment again gets the first reply, though the order moved on.
    assert.are.same(paid, order("1002"):Pay { payment = "pay-2", amount = 3 })
  end)

  it("expires unpaid when its deliver_at message falls due, not before", function()
    order("1003"):Place { customer = "bob", items = { "mug" }, total = 8 }   -- 30 s to pay
    T.advance(29000)
    assert.are.equal("placed", status_of("1003"))
    T.advance(1000)
    assert.are.equal("expired", status_of("1003"))
    assert.are.equal(1, #T.logs("expired unpaid"))
    local _, err = order("1003"):Pay { payment = "pay-3", amount = 8 }
    assert.are.same({ reason = "not_payable", status = "expired" }, err.value)
  end)

  it("stays in memory while it waits for a payment, past the 60 s idle timeout", function()
    order("1004"):Place { customer = "cy", items = { "lamp" }, total = 20, pay_within = 600 }
    T.advance(120000)
    assert.is_true(T.active("Order", "1004"))
    assert.are.equal("placed", status_of("1004"))
  end)
end)

describe("Dispatcher", function()
  it("ships a paid order within a second, once", function()
    order("1005"):Place { customer = "cy", items = { "lamp" }, total = 20 }
    order("1005"):Pay { payment = "pay-5", amount = 20 }
    T.advance(1000)
    assert.are.equal("shipped", status_of("1005"))
    T.advance(10000)
    assert.are.equal(1, #T.logs("shipped order 1005 from local"))
  end)
end)

describe("Report", function()
  it("logs the counts every 10 s: six reports in a minute", function()
    order("1006"):Place { customer = "dee", items = { "pen" }, total = 2, pay_within = 600 }
    order("1007"):Place { customer = "eve", items = { "cup" }, total = 5 }
    order("1007"):Pay { payment = "pay-7", amount = 5 }
    T.advance(60000)
    local reports = T.logs("orders at")
    assert.are.equal(6, #reports)
    assert.matches("orders at %d%d:%d%d:%d0: 1 placed, 0 paid, 1 shipped, 0 expired", reports[6])
  end)

  it("follows a busy quarter of an hour of virtual time", function()
    local started = T.now()
    -- An order every 30 s, order i given 60*i s to pay; every fourth is paid.
    for i = 1, 20 do
      local number = tostring(2000 + i)
      order(number):Place { customer = "c" .. i, items = { "item" }, total = i, pay_within = 60 * i }
      if i % 4 == 0 then order(number):Pay { payment = "p" .. i, amount = i } end
      T.advance(30000)
    end
    T.advance(15 * 60000 - 20 * 30000)
    assert.are.equal(15 * 60000, T.now() - started)
    -- Unpaid order i expires 30*(i-1) + 60*i s after the start: i <= 10 did
    -- (but 4 and 8, paid). The Board keeps every order's status.
    assert.are.same({ placed = 7, paid = 0, shipped = 5, expired = 8 }, T.client("Board", "main"):Summary())
    local reports = T.logs("orders at")
    assert.are.equal(90, #reports)
    assert.matches(": 7 placed, 0 paid, 5 shipped, 8 expired$", reports[90])
  end)
end)
