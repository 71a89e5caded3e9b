-- The seed's Counter with its Increment persisted: each call is stored in
-- PostgreSQL before it is acknowledged, delivered by the id's owner, and its
-- reply stored before the caller sees it (no primary key: every call is a new
-- message). The persisted scenario runs it in place of
-- bench/scenarios/local/counter.lua, so the cluster drivers call it unchanged.
local luster = require "luster"
local S = luster.schema

local Increment = luster.rpc("Increment", {
  payload = { amount = S.number },
  success = S.number,
  persisted = true,
})

return luster.entity("Counter", { Increment }):handlers(function(ctx)
  local count = 0
  return {
    Increment = function(req)
      count = count + req.payload.amount
      return count
    end,
  }
end)
