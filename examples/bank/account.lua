-- An account: a balance that never goes below zero.
local luster = require "luster"
local money = require "money"
local S = luster.schema

local Deposit = luster.rpc("Deposit", { payload = { amount = money.amount }, success = S.number })
local Withdraw = luster.rpc("Withdraw", {
  payload = { amount = money.amount },
  success = S.number,
  error = money.insufficient,   -- a declared failure: HTTP 422, err.kind == "failure" in Lua
})
local Balance = luster.rpc("Balance", { success = S.number })

return luster.entity("Account", { Deposit, Withdraw, Balance }):handlers(function(ctx)
  local balance = 0
  return {
    Deposit = function(req)
      balance = balance + req.payload.amount
      return balance
    end,
    Withdraw = function(req)
      local amount = req.payload.amount
      if amount > balance then
        return nil, { reason = "insufficient_funds", balance = balance, requested = amount }
      end
      balance = balance - amount
      return balance
    end,
    Balance = function() return balance end,
  }
end)
