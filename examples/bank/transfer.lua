-- A transfer between two accounts: one Transfer entity per transfer id, so a
-- retried request with the same id never moves the money twice.
local luster = require "luster"
local money = require "money"
local S = luster.schema

local Execute = luster.rpc("Execute", {
  payload = { from = S.string:min_len(1), to = S.string:min_len(1), amount = money.amount },
  success = { from_balance = S.number, to_balance = S.number },
  error = S.union(money.insufficient, { reason = S.literal("same_account") }),
  persisted = true,
  -- One execution per transfer id (the entity id): a duplicate returns the first reply.
  primary_key = function(p) return "execute" end,
})

return luster.entity("Transfer", { Execute }):handlers(function(ctx)
  return {
    Execute = function(req)
      local p = req.payload
      if p.from == p.to then return nil, { reason = "same_account" } end
      local from, to = luster.client("Account", p.from), luster.client("Account", p.to)
      local from_balance, err = from:Withdraw { amount = p.amount }
      if err then
        if err.kind == "failure" then return nil, err.value end
        error("withdrawing from " .. p.from .. " failed: " .. tostring(err))
      end
      local to_balance, derr = to:Deposit { amount = p.amount }
      if derr then
        -- Put the money back before reporting the defect.
        from:Deposit { amount = p.amount }
        error("depositing to " .. p.to .. " failed: " .. tostring(derr))
      end
      ctx.log.info("moved", p.amount, "from", p.from, "to", p.to)
      return { from_balance = from_balance, to_balance = to_balance }
    end,
  }
end)
