-- An order, one entity per order number: placed once however often Place is
-- sent, paid once per payment, expired by a delayed message when nobody pays
-- in time, and shipped by the Dispatcher.
--
-- luster stores the persisted messages; the order itself lives in the
-- instance's memory (kept across reloads and graceful hand-offs by
-- `snapshot`, lost if its runner is killed). A real shop would also keep it in
-- its own database.
local luster = require "luster"
local shop = require "shop"
local S = luster.schema

local Place = luster.rpc("Place", {
  payload = {
    customer = S.string:min_len(1),
    items = S.array(S.string:min_len(1)):min_len(1),
    total = S.number:min(0.01),
    pay_within = S.optional(S.integer:min(1)),   -- seconds to pay in (default 30)
  },
  success = shop.order,
  persisted = true,   -- stored before it is acknowledged; re-delivered if its runner dies
  -- The entity id is the order number, so one constant key means one Place per
  -- order: a duplicate, from any runner, gets the first reply and never runs;
  -- another Place for the same number (another cart) is refused (conflict, 409).
  primary_key = function(p) return "place" end,
})

local Pay = luster.rpc("Pay", {
  payload = { payment = S.string:min_len(1), amount = S.number:min(0.01) },
  success = shop.order,
  error = S.union(shop.no_such_order,
    { reason = S.literal("not_payable"), status = shop.status },
    { reason = S.literal("wrong_amount"), total = S.number }),
  persisted = true,
  -- One charge per payment id: a client retrying after a timeout cannot pay twice.
  primary_key = function(p) return p.payment end,
})

-- Place sends this to its own order: stored at once, delivered at `at`
-- (epoch ms) by whichever runner owns the order then.
local Expire = luster.rpc("Expire", {
  payload = { at = S.integer },
  persisted = true,
  deliver_at = function(p) return p.at end,
  -- Should Place run twice (at-least-once), the order still expires once.
  primary_key = function(p) return "expire" end,
})

local Ship = luster.rpc("Ship", {
  success = shop.order,
  error = S.union(shop.no_such_order, { reason = S.literal("not_paid"), status = shop.status }),
})

local Status = luster.rpc("Status", { success = shop.order, error = shop.no_such_order })

local board = luster.client("Board", "main")

return luster.entity("Order", { Place, Pay, Expire, Ship, Status }):handlers(function(ctx, snapshot)
  local order = snapshot   -- nil for a new order

  -- Open orders wait for a payment or their expiry: pin them in memory.
  local function set_status(status)
    order.status = status
    ctx:keep_alive(status == "placed" or status == "paid")
  end
  if order then set_status(order.status) end

  -- A persisted handler that raises is retried (5 attempts in all), so each
  -- handler below calls out first and changes the order last: a retry then
  -- repeats only what is safe to repeat.
  local function track(status)
    local _, err = board:Track { number = ctx.id, status = status }
    if err then error("telling the Board that order " .. ctx.id .. " is " .. status .. ": " .. tostring(err)) end
  end

  return {
    Place = function(req)
      -- Keys are forgotten after --retention: an old order number stays placed once.
      if order then return order end
      local p = req.payload
      track("placed")
      local _, err = luster.client("Order", ctx.id):Expire(
        { at = luster.now() + (p.pay_within or 30) * 1000 }, { discard = true })
      -- A conflict: an earlier run of this Place stored its Expire (with
      -- another `at`) under the same key. The order expires once, at that time.
      if err and err.kind ~= "conflict" then
        error("scheduling the expiry of order " .. ctx.id .. ": " .. tostring(err))
      end
      order = { customer = p.customer, items = p.items, total = p.total }
      set_status("placed")
      ctx.log.info("placed for", p.customer, "total", p.total)
      return order
    end,

    Pay = function(req)
      local p = req.payload
      if not order then return nil, { reason = "no_such_order" } end
      if order.status ~= "placed" then return nil, { reason = "not_payable", status = order.status } end
      if p.amount ~= order.total then return nil, { reason = "wrong_amount", total = order.total } end
      track("paid")
      set_status("paid")
      return order
    end,

    Expire = function()
      if order and order.status == "placed" then
        track("expired")
        set_status("expired")
        ctx.log.info("expired unpaid")
      end
    end,

    Ship = function()
      if not order then return nil, { reason = "no_such_order" } end
      if order.status ~= "paid" and order.status ~= "shipped" then
        return nil, { reason = "not_paid", status = order.status }
      end
      track("shipped")   -- again when already shipped: the Dispatcher may ask twice
      set_status("shipped")
      return order
    end,

    Status = function()
      if not order then return nil, { reason = "no_such_order" } end
      return order
    end,

    snapshot = function() return order end,
  }
end)
