-- The shop's board: the status of every order, read by the Dispatcher (what
-- to ship) and the Report (how many orders in each status).
local luster = require "luster"
local shop = require "shop"
local S = luster.schema

local Track = luster.rpc("Track", { payload = { number = S.string, status = shop.status } })
local Paid = luster.rpc("Paid", { success = S.array(S.string) })
local Summary = luster.rpc("Summary", { success = S.map(S.integer) })

return luster.entity("Board", { Track, Paid, Summary }):handlers(function(ctx, snapshot)
  ctx:keep_alive(true)   -- one instance for the whole shop, asked every second
  local statuses = snapshot or {}   -- order number -> status
  return {
    Track = function(req) statuses[req.payload.number] = req.payload.status end,

    Paid = function()
      local numbers = {}
      for number, status in pairs(statuses) do
        if status == "paid" then numbers[#numbers + 1] = number end
      end
      table.sort(numbers)
      return numbers
    end,

    Summary = function()
      local counts = { placed = 0, paid = 0, shipped = 0, expired = 0 }
      for _, status in pairs(statuses) do counts[status] = counts[status] + 1 end
      return counts
    end,

    snapshot = function() return statuses end,
  }
end)
