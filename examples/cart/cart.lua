-- A shopping cart, one entity per cart id, declared durable: its contents
-- are saved after every message, before the reply goes out, so a cart
-- survives passivation, a restart, a hand-off to another runner and a
-- `kill -9` (with --storage postgres://...; on memory storage, as long as
-- the process). Checkout is persisted and keyed by order number: the order
-- and the emptied cart commit together, once, however often it is sent.
local luster = require "luster"
local S = luster.schema

local Line = { sku = S.string:min_len(1):max_len(64), qty = S.integer:min(1) }
local Contents = { items = S.array(Line), count = S.integer }

local Add = luster.rpc("Add", {
  payload = { sku = S.string:min_len(1):max_len(64), qty = S.optional(S.integer:min(1):max(1000)) },
  success = Contents,
})

local Remove = luster.rpc("Remove", {
  payload = { sku = S.string:min_len(1), qty = S.optional(S.integer:min(1)) },
  success = Contents,
  error = { reason = S.literal("not_in_cart"), sku = S.string },
})

local List = luster.rpc("List", { success = Contents })

local Checkout = luster.rpc("Checkout", {
  payload = { order = S.string:min_len(1) },
  success = { order = S.string, items = S.array(Line) },
  error = { reason = S.literal("empty") },
  persisted = true,
  primary_key = function(p) return p.order end,
})

return luster.entity("Cart", { Add, Remove, List, Checkout }, { durable = true }):handlers(function(ctx, snapshot)
  -- sku -> quantity; the saved snapshot, or an empty cart.
  local qty = snapshot and snapshot.qty or {}

  local function contents()
    local items, count = {}, 0
    for sku, n in pairs(qty) do
      items[#items + 1] = { sku = sku, qty = n }
      count = count + n
    end
    table.sort(items, function(a, b) return a.sku < b.sku end)
    return { items = items, count = count }
  end

  return {
    Add = function(req)
      local p = req.payload
      qty[p.sku] = (qty[p.sku] or 0) + (p.qty or 1)
      return contents()
    end,
    Remove = function(req)
      local p = req.payload
      local have = qty[p.sku]
      if not have then return nil, { reason = "not_in_cart", sku = p.sku } end
      local left = have - (p.qty or have)
      qty[p.sku] = left > 0 and left or nil
      return contents()
    end,
    List = function() return contents() end,
    Checkout = function(req)
      local items = contents().items
      if #items == 0 then return nil, { reason = "empty" } end
      ctx.log:info("order " .. req.payload.order .. ": " .. #items .. " lines")
      -- The cart is done with: its saved state goes with this message's
      -- reply, and the instance ends after it.
      ctx:forget()
      return { order = req.payload.order, items = items }
    end,
    -- What is saved: a map of sku to quantity ({} when empty).
    snapshot = function() return { qty = qty } end,
  }
end)
