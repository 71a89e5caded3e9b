-- Shared schema pieces for the bank example (DIR/lib is on package.path).
local S = require("luster").schema

local M = {}
M.amount = S.number:min(0.01)
M.insufficient = { reason = S.literal("insufficient_funds"), balance = S.number, requested = S.number }
return M
