local luster = require "luster"
local S = luster.schema

-- 1. Describe the messages the entity can handle, as RPCs.
local Increment = luster.rpc("Increment", {
  payload = { amount = S.number },   -- a plain table is shorthand for S.struct
  success = S.number,
})

-- 2. Pair a stable entity-type name with its RPC protocol.
local Counter = luster.entity("Counter", { Increment })

-- 3. Implement the handlers. `activate` runs once per instance; the state
--    (here a local) lives as long as the instance is active on its runner.
return Counter:handlers(function(ctx)
  local count = 0
  return {
    Increment = function(req)
      count = count + req.payload.amount
      return count
    end,
  }
end)
