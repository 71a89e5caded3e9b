-- Shared schema pieces for the orders example (DIR/lib is on package.path).
local S = require("luster").schema

local M = {}
-- An order is placed, then paid and shipped, or expires unpaid.
M.status = S.literal("placed", "paid", "shipped", "expired")
M.order = { customer = S.string, items = S.array(S.string), total = S.number, status = M.status }
M.no_such_order = { reason = S.literal("no_such_order") }
return M
