-- The Dispatcher ships paid orders, once a second. It is a singleton: one
-- instance in the whole cluster, on the runner that owns the shard of the
-- name "Dispatcher", moved to another runner when that shard moves.
local luster = require "luster"

return luster.singleton("Dispatcher", function(ctx)
  local board = luster.client("Board", "main", { timeout = 5000 })
  local refused = {}   -- orders that declined to ship: reported once, then left alone
  while true do
    local paid, err = board:Paid()
    if err then ctx.log.warn("cannot read the board:", tostring(err)) end
    for _, number in ipairs(paid or {}) do
      if not refused[number] then
        local _, serr = luster.client("Order", number, { timeout = 5000 }):Ship()
        if not serr then
          ctx.log.info("shipped order", number, "from", ctx.runner)
        elseif serr.kind == "failure" then
          refused[number] = true
          ctx.log.warn("order", number, "cannot ship:", tostring(serr))
        else
          ctx.log.warn("shipping order", number, "failed, will retry:", tostring(serr))
        end
      end
    end
    luster.sleep(1000)
  end
end)
