-- A report every 10 seconds (a 6-field cron expression: seconds first, UTC)
-- of how many orders are in each status. Each instant runs once in the whole
-- cluster, whichever runner serves it.
local luster = require "luster"

return luster.cron("Report", "*/10 * * * * *", function(ctx, scheduled_ms)
  -- Instants missed while no runner ran the job are run on return, oldest
  -- first (see --cron-catch-up). Today's counts say nothing about an instant
  -- long past, so such runs do nothing.
  if luster.now() - scheduled_ms > 10000 then return end
  local counts, err = luster.client("Board", "main"):Summary()
  -- Raising is logged; the next instant runs as usual.
  if err then error("cannot read the board: " .. tostring(err)) end
  ctx.log.info(string.format("orders at %s: %d placed, %d paid, %d shipped, %d expired",
    os.date("!%H:%M:%S", scheduled_ms // 1000), counts.placed, counts.paid, counts.shipped, counts.expired))
end)
