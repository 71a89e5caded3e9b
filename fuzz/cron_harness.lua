-- fuzz/cron_harness.lua - checks for fuzz_cron: the input is a cron
-- expression. parse either gives a schedule or raises a "luster.cron: "
-- error (never a Lua runtime error); describe parses back to itself; next
-- is after, prev at or before, the reference instant, on whole seconds, and
-- each finds the other.
local cron = require "luster.cron"

local T0 = 1764892800123 -- 2025-12-05T00:00:00.123Z

local function check(ok, what, ...)
  if not ok then error(string.format(what, ...), 0) end
end

return function(expr)
  local ok, s = pcall(cron.parse, expr)
  if not ok then
    check(type(s) == "string" and s:find("luster.cron: ", 1, true), "parse raised %s", tostring(s))
    return
  end
  local text = cron.describe(s)
  local ok2, s2 = pcall(cron.parse, text)
  check(ok2, "describe gave %q, which does not parse: %s", text, tostring(s2))
  check(cron.describe(s2) == text, "describe of %q is not stable", expr)
  local n, p = cron.next(s, T0), cron.prev(s, T0)
  check(n == nil or (math.type(n) == "integer" and n > T0 and n % 1000 == 0), "next %s of %q", tostring(n), expr)
  check(p == nil or (math.type(p) == "integer" and p <= T0 and p % 1000 == 0), "prev %s of %q", tostring(p), expr)
  if n then check(cron.prev(s, n) == n, "prev(next) is not next for %q", expr) end
  if p then check(cron.next(s, p - 1) == p, "next(prev - 1) is not prev for %q", expr) end
end
