-- RemoteDriver: a caller that only calls Counters on other runners (the
-- bench picks the ids), timing each call. It stops after n calls, or once
-- `ms` milliseconds have passed when given; first_error is the first failed
-- call's error, if any.
local luster = require "luster"
local S = luster.schema

local Run = luster.rpc("Run", {
  payload = { n = S.integer:min(1), ids = S.array(S.string), ms = S.optional(S.integer:min(1)) },
  success = { calls = S.integer, failed = S.integer, start = S.number, stop = S.number, p50_us = S.number,
              p99_us = S.number, first_error = S.optional(S.string) },
})

return luster.entity("RemoteDriver", { Run }, { concurrency = 1024 }):handlers(function(ctx)
  return {
    Run = function(req)
      local p = req.payload
      local clients = {}
      for i, id in ipairs(p.ids) do clients[i] = luster.client("Counter", id) end
      local k, failed, lat, first_error = #clients, 0, {}, nil
      local clock = luster.clock
      local start = clock()
      local deadline = p.ms and start + p.ms / 1000 or math.huge
      local n = 0
      for i = 1, p.n do
        local s = clock()
        if s > deadline then break end
        local _, err = clients[(i - 1) % k + 1]:Increment { amount = 1 }
        if err then
          failed = failed + 1
          first_error = first_error or tostring(err)
        end
        lat[i] = clock() - s
        n = i
      end
      local stop = clock()
      table.sort(lat)
      return { calls = n, failed = failed, start = start, stop = stop, p50_us = lat[n // 2 + 1] * 1e6,
               p99_us = lat[n * 99 // 100 + 1] * 1e6, first_error = first_error }
    end,
  }
end)
