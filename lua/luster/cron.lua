-- luster.cron: parses cron expressions and finds their next and previous instants, in UTC.
--
-- A parsed schedule is a plain table that definitions keep:
--
--   { expr = "0 3 * * *",   -- the normalized text (what describe returns)
--     second = {0}, minute = {0}, hour = {3},   -- sorted arrays of allowed values
--     day = {1, ..., 31}, month = {1, ..., 12}, weekday = {0, ..., 6} }
--
-- Day-of-week is stored 0-6 (Sunday = 0; a 7 in the text folds to 0).
-- Day rule (Vixie cron): when both day-of-month and day-of-week are
-- restricted, a day matches if EITHER matches; otherwise both must. A field
-- counts as restricted when its set is not the whole range, so `*`, `?`,
-- `1-31` and `*/1` all leave day-of-month unrestricted.
--
-- next/prev do not step second by second. They hold a broken-down UTC time
-- (year, month, day, hour, minute, second) and, from the largest field down,
-- either accept the field or jump it to the next (prev: previous) allowed
-- value and reset every smaller field to its minimum (prev: maximum). A field
-- with no allowed value left bumps the field above it; the loop restarts and
-- the overflow (minute 60, hour 24, day 32, month 13) cascades upward on its
-- own. Each turn moves strictly forward (backward), so it ends, and the year
-- bound below caps it for schedules that can never fire. Dates are converted
-- with Howard Hinnant's days-from-civil arithmetic: exact, no os.date, no
-- local time.

local type, error, pcall, tonumber, tostring, ipairs = type, error, pcall, tonumber, tostring, ipairs
local math_type, floor, tointeger, huge = math.type, math.floor, math.tointeger, math.huge
local format, upper, match, gmatch, find = string.format, string.upper, string.match, string.gmatch, string.find
local concat = table.concat

local M = {}

-- Why 10 years: the longest gap between two instants of a schedule that can
-- fire at all is 8 years ("0 0 29 2 *" from 2096 to 2104: 2100 is not a leap
-- year). Every other combination fires at least once a year, or (day-of-week
-- restricted) at least once a month. 10 covers that with margin; searching
-- further would only spend time on schedules that never fire.
local HORIZON_YEARS = 10
M.HORIZON_YEARS = HORIZON_YEARS

local MONTH_NAMES = { JAN = 1, FEB = 2, MAR = 3, APR = 4, MAY = 5, JUN = 6,
                      JUL = 7, AUG = 8, SEP = 9, OCT = 10, NOV = 11, DEC = 12 }
local DAY_NAMES = { SUN = 0, MON = 1, TUE = 2, WED = 3, THU = 4, FRI = 5, SAT = 6 }

-- Field specs, in text order (the seconds field only in 6-field form).
-- `hi` is the largest value the text may use; `star_hi` the largest one `*`
-- and `a/n` run to (day-of-week accepts 7 for Sunday, but `*` means 0-6 and
-- "WED/2" is Wednesday, Friday: it does not wrap round to Sunday).
local SECOND  = { key = "second",  name = "second",       lo = 0, hi = 59 }
local MINUTE  = { key = "minute",  name = "minute",       lo = 0, hi = 59 }
local HOUR    = { key = "hour",    name = "hour",         lo = 0, hi = 23 }
local DAY     = { key = "day",     name = "day-of-month", lo = 1, hi = 31, any = true }
local MONTH   = { key = "month",   name = "month",        lo = 1, hi = 12, names = MONTH_NAMES,
                  what = "a number 1-12 or a month name JAN-DEC" }
local WEEKDAY = { key = "weekday", name = "day-of-week",  lo = 0, hi = 7, star_hi = 6, any = true,
                  names = DAY_NAMES, what = "a number 0-7 or a day name SUN-SAT" }
local FIELDS5 = { MINUTE, HOUR, DAY, MONTH, WEEKDAY }
local FIELDS6 = { SECOND, MINUTE, HOUR, DAY, MONTH, WEEKDAY }

local MAX_DAYS = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }
local MONTH_TITLES = { "January", "February", "March", "April", "May", "June", "July",
                       "August", "September", "October", "November", "December" }

---------------------------------------------------------------------------
-- Calendar arithmetic (proleptic Gregorian, UTC)
---------------------------------------------------------------------------

local function is_leap(y)
  return y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)
end

local function days_in_month(y, m)
  if m == 2 then return is_leap(y) and 29 or 28 end
  return MAX_DAYS[m]
end

-- Days since 1970-01-01 for a civil date (Hinnant, days_from_civil).
-- Lua's // floors, which is exactly the era arithmetic wants for y < 0.
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = y // 400
  local yoe = y - era * 400
  local doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

-- The civil date for a count of days since 1970-01-01 (civil_from_days).
local function civil_from_days(z)
  z = z + 719468
  local era = z // 146097
  local doe = z - era * 146097
  local yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
  local doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
  local mp = (5 * doy + 2) // 153
  local d = doy - (153 * mp + 2) // 5 + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end

-- 1970-01-01 was a Thursday (4).
local function weekday_of(days) return (days + 4) % 7 end

---------------------------------------------------------------------------
-- Parsing
---------------------------------------------------------------------------

-- Parse problems are raised as { msg } and turned into the public error in
-- M.parse, so the error level always points at the caller of parse.
local function raise(fmt, ...)
  error({ msg = format(fmt, ...) }, 0)
end

-- `where` prefixes a message about one item of a field: the whole field when
-- the item is the field, else the field and then the item.
local function where(spec, field, item)
  if item == field then return format("%s field %q", spec.name, field) end
  return format("%s field %q: %q", spec.name, field, item)
end

local function value_of(spec, field, text)
  local n
  if find(text, "^%d+$") then
    n = tonumber(text)
  elseif spec.names then
    n = spec.names[upper(text)]
  end
  if not n then
    raise("%s is not %s", where(spec, field, text), spec.what or format("a number %d-%d", spec.lo, spec.hi))
  end
  if n < spec.lo or n > spec.hi then
    raise("%s is out of range %d-%d", where(spec, field, text), spec.lo, spec.hi)
  end
  return n
end

-- Adds one list item ("*", "?", "5", "1-5", "*/15", "1-30/2", "5/10") to `set`.
local function add_item(spec, field, item, set)
  if item == "" then
    raise("%s field %q has an empty list item", spec.name, field)
  end
  local base, step_text = match(item, "^([^/]*)/(.*)$")
  if not base then base = item end
  local step
  if step_text then
    if not find(step_text, "^%d+$") then
      raise("%s has step %q, expected a whole number", where(spec, field, item), step_text)
    end
    step = tonumber(step_text)
    local span = (spec.star_hi or spec.hi) - spec.lo + 1
    if step < 1 or step > span then
      -- step_text, not step: a step of 20 digits is a float, which %d refuses.
      raise("%s has step %s, expected 1-%d", where(spec, field, item), step_text, span)
    end
  end
  local lo, hi
  if base == "*" then
    lo, hi = spec.lo, spec.star_hi or spec.hi
  elseif base == "?" then
    if not spec.any then
      raise("%s: \"?\" is only allowed in the day-of-month and day-of-week fields",
            where(spec, field, item))
    end
    if step then raise("%s: \"?\" cannot take a step", where(spec, field, item)) end
    lo, hi = spec.lo, spec.star_hi or spec.hi
  elseif base == "" then
    raise("%s is missing the value before \"/\"", where(spec, field, item))
  elseif find(base, "-", 1, true) then
    local a, b = match(base, "^([^-]+)-([^-]+)$")
    if not a then raise("%s is not a range like 1-5", where(spec, field, base)) end
    lo, hi = value_of(spec, field, a), value_of(spec, field, b)
    if lo > hi then
      raise("%s is a range whose start %d is after its end %d", where(spec, field, base), lo, hi)
    end
  else
    lo = value_of(spec, field, base)
    -- "7/2" in day-of-week starts past star_hi (6): it still means Sunday.
    hi = step and math.max(lo, spec.star_hi or spec.hi) or lo
  end
  for v = lo, hi, step or 1 do
    set[spec.key == "weekday" and v % 7 or v] = true
  end
end

local function parse_field(spec, field)
  local set = {}
  -- The extra "," makes every item, the last included, end in a comma.
  for item in gmatch(field .. ",", "([^,]*),") do
    add_item(spec, field, item, set)
  end
  local values = {}
  for v = spec.lo, spec.star_hi or spec.hi do
    if set[v] then values[#values + 1] = v end
  end
  return values
end

-- Renders a sorted value array back to compact field text: "*" for the whole
-- range, "*/n" or "a-b/n" for an evenly stepped set of 3 or more, otherwise
-- a list of values and runs ("1-5,7,9").
local function render(spec, values)
  local lo, hi, n = spec.lo, spec.star_hi or spec.hi, #values
  if n == hi - lo + 1 then return "*" end
  if n >= 3 then
    local step = values[2] - values[1]
    local even = step > 1
    for i = 3, n do
      if values[i] - values[i - 1] ~= step then even = false; break end
    end
    if even then
      if values[1] == lo and values[n] + step > hi then return "*/" .. step end
      return format("%d-%d/%d", values[1], values[n], step)
    end
  end
  local parts, i = {}, 1
  while i <= n do
    local j = i
    while j < n and values[j + 1] == values[j] + 1 do j = j + 1 end
    if j - i >= 2 then
      parts[#parts + 1] = values[i] .. "-" .. values[j]
    else
      for k = i, j do parts[#parts + 1] = tostring(values[k]) end
    end
    i = j + 1
  end
  return concat(parts, ",")
end

-- With day-of-week unrestricted only day-of-month decides, so a schedule
-- whose days exist in none of its months ("0 0 31 2 *") would never fire.
local function check_possible(sched, texts)
  if #sched.weekday ~= 7 or #sched.day == 31 then return end
  for _, m in ipairs(sched.month) do
    if sched.day[1] <= MAX_DAYS[m] then return end
  end
  local m = sched.month[1]
  local why = #sched.month == 1 and format("%s has at most %d days", MONTH_TITLES[m], MAX_DAYS[m])
              or "none of those months has that many days"
  raise("day-of-month field %q never occurs in month field %q (%s), so the schedule would never run",
        texts.day, texts.month, why)
end

local function parse(expr)
  local words = {}
  for w in gmatch(expr, "%S+") do words[#words + 1] = w end
  if #words ~= 5 and #words ~= 6 then
    raise("expected 5 or 6 fields, got %d (%q)", #words, expr)
  end
  local specs = #words == 6 and FIELDS6 or FIELDS5
  local sched, texts, out = { second = { 0 } }, {}, {}
  for i, spec in ipairs(specs) do
    sched[spec.key] = parse_field(spec, words[i])
    texts[spec.key] = words[i]
    out[i] = render(spec, sched[spec.key])
  end
  check_possible(sched, texts)
  sched.expr = concat(out, " ")
  return sched
end

function M.parse(expr)
  if type(expr) ~= "string" then
    error(format("luster.cron: expression must be a string, got %s", type(expr)), 2)
  end
  local ok, res = pcall(parse, expr)
  if ok then return res end
  if type(res) == "table" and res.msg then error("luster.cron: " .. res.msg, 2) end
  error(res, 0)
end

---------------------------------------------------------------------------
-- Searching
---------------------------------------------------------------------------

-- The first value >= v in a sorted array, or nil.
local function first_ge(values, v)
  for i = 1, #values do
    if values[i] >= v then return values[i] end
  end
  return nil
end

-- The last value <= v in a sorted array, or nil.
local function last_le(values, v)
  for i = #values, 1, -1 do
    if values[i] <= v then return values[i] end
  end
  return nil
end

local function has(values, v) return first_ge(values, v) == v end

-- Whether day `d` of the month starting at `first` (days since epoch) is a
-- scheduled day, under the Vixie OR rule.
local function day_matches(sched, first, d)
  local day_any, week_any = #sched.day == 31, #sched.weekday == 7
  if day_any and week_any then return true end
  if week_any then return has(sched.day, d) end
  local wd = weekday_of(first + d - 1)
  if day_any then return has(sched.weekday, wd) end
  return has(sched.day, d) or has(sched.weekday, wd)
end

local function check_schedule(sched)
  if type(sched) ~= "table" or type(sched.minute) ~= "table" or type(sched.weekday) ~= "table" then
    error(format("luster.cron: schedule must be a table from cron.parse, got %s", type(sched)), 3)
  end
end

-- Whole seconds since the epoch for a millisecond time, floored.
local function to_seconds(what, ms)
  if math_type(ms) == "integer" then return ms // 1000 end
  if type(ms) ~= "number" or ms ~= ms or ms == huge or ms == -huge then
    error(format("luster.cron: %s must be a finite number of epoch milliseconds, got %s",
                 what, type(ms) == "number" and tostring(ms) or type(ms)), 3)
  end
  return tointeger(floor(ms / 1000)) or error(format("luster.cron: %s %s is out of range", what, tostring(ms)), 3)
end

local function split(t)
  local days, rem = t // 86400, t % 86400
  local y, mo, d = civil_from_days(days)
  return y, mo, d, rem // 3600, rem % 3600 // 60, rem % 60
end

-- The first scheduled second >= t, or nil past the horizon.
local function search_forward(sched, t)
  local y, mo, d, h, mi, s = split(t)
  local limit = y + HORIZON_YEARS
  while y <= limit do
    local v = first_ge(sched.month, mo)
    if not v then
      y, mo, d, h, mi, s = y + 1, 1, 1, 0, 0, 0
    elseif v ~= mo then
      mo, d, h, mi, s = v, 1, 0, 0, 0
    else
      local dim, first = days_in_month(y, mo), days_from_civil(y, mo, 1)
      local dd = d
      while dd <= dim and not day_matches(sched, first, dd) do dd = dd + 1 end
      if dd > dim then
        mo, d, h, mi, s = mo + 1, 1, 0, 0, 0
      elseif dd ~= d then
        d, h, mi, s = dd, 0, 0, 0
      else
        v = first_ge(sched.hour, h)
        if not v then
          d, h, mi, s = d + 1, 0, 0, 0
        elseif v ~= h then
          h, mi, s = v, 0, 0
        else
          v = first_ge(sched.minute, mi)
          if not v then
            h, mi, s = h + 1, 0, 0
          elseif v ~= mi then
            mi, s = v, 0
          else
            v = first_ge(sched.second, s)
            if not v then
              mi, s = mi + 1, 0
            else
              return (first + d - 1) * 86400 + h * 3600 + mi * 60 + v
            end
          end
        end
      end
    end
  end
  return nil
end

-- The last scheduled second <= t, or nil past the horizon. Day 99 stands for
-- "the last day of the month", clamped once the month is known.
local function search_backward(sched, t)
  local y, mo, d, h, mi, s = split(t)
  local limit = y - HORIZON_YEARS
  while y >= limit do
    local v = last_le(sched.month, mo)
    if not v then
      y, mo, d, h, mi, s = y - 1, 12, 99, 23, 59, 59
    elseif v ~= mo then
      mo, d, h, mi, s = v, 99, 23, 59, 59
    else
      local dim, first = days_in_month(y, mo), days_from_civil(y, mo, 1)
      local dd = d < dim and d or dim
      while dd >= 1 and not day_matches(sched, first, dd) do dd = dd - 1 end
      if dd < 1 then
        mo, d, h, mi, s = mo - 1, 99, 23, 59, 59
      elseif dd ~= d then
        d, h, mi, s = dd, 23, 59, 59
      else
        v = last_le(sched.hour, h)
        if not v then
          d, h, mi, s = d - 1, 23, 59, 59
        elseif v ~= h then
          h, mi, s = v, 59, 59
        else
          v = last_le(sched.minute, mi)
          if not v then
            h, mi, s = h - 1, 59, 59
          elseif v ~= mi then
            mi, s = v, 59
          else
            v = last_le(sched.second, s)
            if not v then
              mi, s = mi - 1, 59
            else
              return (first + d - 1) * 86400 + h * 3600 + mi * 60 + v
            end
          end
        end
      end
    end
  end
  return nil
end

-- The first scheduled instant strictly after `after_ms`, in epoch ms (a
-- whole second), or nil when the schedule never fires within the horizon.
function M.next(sched, after_ms)
  check_schedule(sched)
  local t = search_forward(sched, to_seconds("after_ms", after_ms) + 1)
  return t and t * 1000
end

-- The latest scheduled instant at or before `at_ms`, in epoch ms, or nil
-- when there is none within the horizon.
function M.prev(sched, at_ms)
  check_schedule(sched)
  local t = search_backward(sched, to_seconds("at_ms", at_ms))
  return t and t * 1000
end

-- The normalized expression: single spaces, names as numbers, each field in
-- its compact form ("0 3 * * 1-5"); parsing it gives the same schedule.
function M.describe(sched)
  check_schedule(sched)
  return sched.expr
end

return M
