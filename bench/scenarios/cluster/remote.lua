-- RemoteDriver: a caller that only calls Counters on other runners (the
-- bench picks the ids), timing each call.
local luster = require "luster"
local S = luster.schema

local Run = luster.rpc("Run", {
  payload = { n = S.integer:min(1), ids = S.array(S.string) },
  success = { calls = S.integer, failed = S.integer, start = S.number, stop = S.number, p50_us = S.number,
              p99_us = S.number },
})

return luster.entity("RemoteDriver", { Run }, { concurrency = 1024 }):handlers(function(ctx)
  return {
    Run = function(req)
      local p = req.payload
      local clients = {}
      for i, id in ipairs(p.ids) do clients[i] = luster.client("Counter", id) end
      local k, failed, lat = #clients, 0, {}
      local clock = luster.clock
      local start = clock()
      for i = 1, p.n do
        local s = clock()
        local _, err = clients[(i - 1) % k + 1]:Increment { amount = 1 }
        if err then failed = failed + 1 end
        lat[i] = clock() - s
      end
      local stop = clock()
      table.sort(lat)
      return { calls = p.n, failed = failed, start = start, stop = stop, p50_us = lat[p.n // 2 + 1] * 1e6,
               p99_us = lat[p.n * 99 // 100 + 1] * 1e6 }
    end,
  }
end)
