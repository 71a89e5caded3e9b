-- The seed's Counter as a durable entity: its count is saved to storage
-- after every Increment (volatile), before the reply goes out. The durable
-- scenario (13) runs it in place of bench/scenarios/local/counter.lua, so
-- the local drivers call it unchanged.
local luster = require "luster"
local S = luster.schema

local Increment = luster.rpc("Increment", {
  payload = { amount = S.number },
  success = S.number,
})

return luster.entity("Counter", { Increment }, { durable = true }):handlers(function(ctx, snapshot)
  local count = snapshot and snapshot.count or 0
  return {
    Increment = function(req)
      count = count + req.payload.amount
      return count
    end,
    snapshot = function() return { count = count } end,
  }
end)
