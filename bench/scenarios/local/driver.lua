-- Load generators that run inside the runner, so the local scenarios measure
-- entity-to-entity calls rather than HTTP. Each message is one caller.
local luster = require "luster"
local S = luster.schema

-- Sequential calls to one Counter id, timing each.
local Seq = luster.rpc("Seq", {
  payload = { n = S.integer:min(1), id = S.string },
  success = { calls = S.integer, seconds = S.number, p50_us = S.number, p99_us = S.number },
})
-- One caller of many: n calls over `ids` ids (or each to a new id when fresh).
local Loop = luster.rpc("Loop", {
  payload = { n = S.integer:min(1), ids = S.integer:min(1), prefix = S.string, fresh = S.boolean },
  success = { calls = S.integer, failed = S.integer, start = S.number, stop = S.number },
})

return luster.entity("Driver", { Seq, Loop }, { concurrency = 1024 }):handlers(function(ctx)
  return {
    Seq = function(req)
      local n, c = req.payload.n, luster.client("Counter", req.payload.id)
      local lat = {}
      local clock = luster.clock
      local t0 = clock()
      for i = 1, n do
        local s = clock()
        local _, err = c:Increment { amount = 1 }
        if err then error(tostring(err)) end
        lat[i] = clock() - s
      end
      local seconds = clock() - t0
      table.sort(lat)
      return { calls = n, seconds = seconds, p50_us = lat[n // 2 + 1] * 1e6, p99_us = lat[n * 99 // 100 + 1] * 1e6 }
    end,
    Loop = function(req)
      local p = req.payload
      local clients, failed = {}, 0
      local start = luster.clock()
      for i = 1, p.n do
        local c
        if p.fresh then
          c = luster.client("Counter", p.prefix .. i)
        else
          local k = (i * 7919) % p.ids + 1
          c = clients[k]
          if not c then c = luster.client("Counter", p.prefix .. k) clients[k] = c end
        end
        local _, err = c:Increment { amount = 1 }
        if err then failed = failed + 1 end
      end
      return { calls = p.n, failed = failed, start = start, stop = luster.clock() }
    end,
  }
end)
