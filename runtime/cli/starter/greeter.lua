-- greeter.lua - a starter entity: one Greeter per name, counting its visits.
-- Each top-level *.lua file of this directory is one entity type (or a list
-- of them); `luster run .` serves them, `luster test .` runs spec/.
local luster = require "luster"
local S = luster.schema

-- The messages a Greeter handles, with the schemas of their payloads and replies.
local Greet = luster.rpc("Greet", {
  payload = { greeting = S.optional(S.string:min_len(1):max_len(40)) },
  success = { message = S.string, visits = S.integer },
})
local Visits = luster.rpc("Visits", { success = S.integer })

-- durable: the state returned by `snapshot` is saved after every message, and
-- handed back to `activate` when the instance is created again (here after
-- 30 s idle, when it is passivated and its memory freed).
local Greeter = luster.entity("Greeter", { Greet, Visits }, { durable = true, max_idle = 30000 })

return Greeter:handlers(function(ctx, snapshot)
  local visits = snapshot and snapshot.visits or 0
  return {
    Greet = function(req)
      visits = visits + 1
      ctx.log.info("visit", visits)
      return { message = (req.payload.greeting or "Hello") .. ", " .. ctx.id .. "!", visits = visits }
    end,
    Visits = function() return visits end,
    snapshot = function() return { visits = visits } end,
  }
end)
