package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
-- Specs for luster.cron: syntax, errors, next/prev across every boundary, the day rule, describe.
--
-- Every pinned epoch value was computed outside luster with
-- `date -u -d 2024-05-10T03:00:00Z +%s` (times 1000), so the specs fail if the
-- calendar arithmetic drifts. The comment beside each value is its UTC time.

local cron = require "luster.cron"

local function seq(lo, hi)
  local t = {}
  for v = lo, hi do t[#t + 1] = v end
  return t
end

local function next_of(expr, after_ms) return cron.next(cron.parse(expr), after_ms) end
local function prev_of(expr, at_ms) return cron.prev(cron.parse(expr), at_ms) end

local function parse_error(expr)
  -- not a tail call, so the error's level 2 points at this line
  local ok, err = pcall(function() local s = cron.parse(expr); return s end)
  assert.is_false(ok, "expected parse to fail for " .. tostring(expr))
  return err
end

-- The expected message, and that error level 2 blames the caller (this file).
local function assert_parse_error(expr, message)
  local err = parse_error(expr)
  assert.matches("cron_spec.lua:%d+: ", err)
  assert.equals(message, (err:gsub("^.-cron_spec%.lua:%d+: ", "")))
end

-- The successive instants of a schedule after `from_ms`.
local function run(expr, from_ms, n)
  local s, out, t = cron.parse(expr), {}, from_ms
  for i = 1, n do
    t = cron.next(s, t)
    out[i] = t
  end
  return out
end

describe("luster.cron", function()

  describe("parse", function()
    it("returns a plain table of sorted value arrays and the normalized text", function()
      assert.same({
        expr = "0 3 * * *",
        second = { 0 }, minute = { 0 }, hour = { 3 },
        day = seq(1, 31), month = seq(1, 12), weekday = seq(0, 6),
      }, cron.parse("0 3 * * *"))
      assert.is_nil(getmetatable(cron.parse("0 3 * * *")))
    end)

    it("reads a 6-field expression as a leading seconds field", function()
      local s = cron.parse("*/20 30 4 * * *")
      assert.same({ 0, 20, 40 }, s.second)
      assert.same({ 30 }, s.minute)
      assert.same({ 4 }, s.hour)
      assert.equals("*/20 30 4 * * *", cron.describe(s))
    end)

    it("accepts numbers, ranges, lists and a mix of them", function()
      local s = cron.parse("5 1-3 1,15,20-22 * *")
      assert.same({ 5 }, s.minute)
      assert.same({ 1, 2, 3 }, s.hour)
      assert.same({ 1, 15, 20, 21, 22 }, s.day)
      assert.same({ 0, 7, 8, 9 }, cron.parse("0,7-9 * * * *").minute)
      assert.same({ 5 }, cron.parse("05 * * * *").minute)
    end)

    it("accepts steps over *, a range, and from a start value to the field's end", function()
      assert.same({ 0, 15, 30, 45 }, cron.parse("*/15 * * * *").minute)
      assert.same({ 1, 3, 5, 7, 9 }, cron.parse("1-10/2 * * * *").minute)
      assert.same({ 5, 25, 45 }, cron.parse("5/20 * * * *").minute)
      assert.same({ 0, 12 }, cron.parse("0 */12 * * *").hour)
      assert.same({ 1, 11, 21, 31 }, cron.parse("0 0 */10 * *").day)
      assert.same({ 1, 4, 7, 10 }, cron.parse("0 0 1 */3 *").month)
      assert.same(seq(0, 59), cron.parse("*/1 * * * *").minute)
      assert.same({ 0 }, cron.parse("*/60 * * * *").minute)
      assert.same({ 0, 2, 10, 20, 30, 40, 50 }, cron.parse("*/10,2 * * * *").minute)
    end)

    it("accepts month names and day names in any case, alone and in ranges", function()
      assert.same({ 1, 2, 3 }, cron.parse("0 0 1 JAN-MAR *").month)
      assert.same({ 2, 12 }, cron.parse("0 0 1 feb,Dec *").month)
      assert.same({ 1, 2, 3, 4, 5 }, cron.parse("0 9 * * mon-FRI").weekday)
      assert.same({ 0, 6 }, cron.parse("0 9 * * Sat,sun").weekday)
      assert.same({ 3, 5 }, cron.parse("0 9 * * WED/2").weekday)  -- to Saturday, not round to Sunday
      assert.same({ 6, 8, 10, 12 }, cron.parse("0 0 1 JUN/2 *").month)
    end)

    it("treats day-of-week 0 and 7 both as Sunday", function()
      assert.same({ 0 }, cron.parse("0 0 * * 7").weekday)
      assert.same({ 0 }, cron.parse("0 0 * * 0").weekday)
      assert.same({ 0 }, cron.parse("0 0 * * 0,7").weekday)
      assert.same({ 0, 5, 6 }, cron.parse("0 0 * * 5-7").weekday)
      assert.same({ 6 }, cron.parse("0 0 * * 6/1").weekday)
    end)

    it("treats ? like * in the day fields", function()
      assert.same(cron.parse("0 0 * * 1"), cron.parse("0 0 ? * 1"))
      assert.same(seq(0, 6), cron.parse("0 0 1 * ?").weekday)
      assert.same(seq(1, 31), cron.parse("0 0 ? * ?").day)
    end)

    it("tolerates extra whitespace and tabs between and around fields", function()
      assert.equals("0 3 * * *", cron.describe(cron.parse("  0\t3   *  * *\n")))
    end)

    it("accepts a day that exists in only some of the months", function()
      assert.same({ 31 }, cron.parse("0 0 31 1,2 *").day)
      assert.same({ 30, 31 }, cron.parse("0 0 30,31 2,4 *").day)
      assert.same({ 29 }, cron.parse("0 0 29 2 *").day)
      -- with day-of-week restricted, the weekday alone can fire it
      assert.same({ 31 }, cron.parse("0 0 31 2 MON").day)
    end)
  end)

  describe("parse errors", function()
    it("rejects a non-string expression", function()
      assert_parse_error(42, "luster.cron: expression must be a string, got number")
      assert_parse_error(nil, "luster.cron: expression must be a string, got nil")
      assert_parse_error({}, "luster.cron: expression must be a string, got table")
    end)

    it("rejects the wrong number of fields", function()
      assert_parse_error("* * *", 'luster.cron: expected 5 or 6 fields, got 3 ("* * *")')
      assert_parse_error("", 'luster.cron: expected 5 or 6 fields, got 0 ("")')
      assert_parse_error("* * * * * * *", 'luster.cron: expected 5 or 6 fields, got 7 ("* * * * * * *")')
      assert_parse_error("@daily", 'luster.cron: expected 5 or 6 fields, got 1 ("@daily")')
    end)

    it("names the field and the value that is out of range", function()
      assert_parse_error("0 25 * * *", 'luster.cron: hour field "25" is out of range 0-23')
      assert_parse_error("60 * * * *", 'luster.cron: minute field "60" is out of range 0-59')
      assert_parse_error("60 * * * * *", 'luster.cron: second field "60" is out of range 0-59')
      assert_parse_error("0 0 0 * *", 'luster.cron: day-of-month field "0" is out of range 1-31')
      assert_parse_error("0 0 32 * *", 'luster.cron: day-of-month field "32" is out of range 1-31')
      assert_parse_error("0 0 1 13 *", 'luster.cron: month field "13" is out of range 1-12')
      assert_parse_error("0 0 1 0 *", 'luster.cron: month field "0" is out of range 1-12')
      assert_parse_error("0 0 * * 8", 'luster.cron: day-of-week field "8" is out of range 0-7')
    end)

    it("names the offending item inside a list or range", function()
      assert_parse_error("0 1,25 * * *", 'luster.cron: hour field "1,25": "25" is out of range 0-23')
      assert_parse_error("0 20-24 * * *", 'luster.cron: hour field "20-24": "24" is out of range 0-23')
    end)

    it("rejects values that are neither numbers nor names", function()
      assert_parse_error("x * * * *", 'luster.cron: minute field "x" is not a number 0-59')
      assert_parse_error("-1 * * * *", 'luster.cron: minute field "-1" is not a range like 1-5')
      assert_parse_error("1.5 * * * *", 'luster.cron: minute field "1.5" is not a number 0-59')
      assert_parse_error("0 0 1 FOO *",
        'luster.cron: month field "FOO" is not a number 1-12 or a month name JAN-DEC')
      assert_parse_error("0 0 1 JANUARY *",
        'luster.cron: month field "JANUARY" is not a number 1-12 or a month name JAN-DEC')
      assert_parse_error("0 0 * * MONDAY",
        'luster.cron: day-of-week field "MONDAY" is not a number 0-7 or a day name SUN-SAT')
      -- names belong to their own field only
      assert_parse_error("0 0 1 MON *",
        'luster.cron: month field "MON" is not a number 1-12 or a month name JAN-DEC')
      assert_parse_error("0 0 * * JAN",
        'luster.cron: day-of-week field "JAN" is not a number 0-7 or a day name SUN-SAT')
      assert_parse_error("0 JAN * * *", 'luster.cron: hour field "JAN" is not a number 0-23')
    end)

    it("rejects malformed ranges", function()
      assert_parse_error("5-2 * * * *", 'luster.cron: minute field "5-2" is a range whose start 5 is after its end 2')
      assert_parse_error("0 0 * * FRI-MON",
        'luster.cron: day-of-week field "FRI-MON" is a range whose start 5 is after its end 1')
      assert_parse_error("1-2-3 * * * *", 'luster.cron: minute field "1-2-3" is not a range like 1-5')
      assert_parse_error("1- * * * *", 'luster.cron: minute field "1-" is not a range like 1-5')
      assert_parse_error("*-5 * * * *", 'luster.cron: minute field "*-5": "*" is not a number 0-59')
    end)

    it("rejects bad steps", function()
      assert_parse_error("*/0 * * * *", 'luster.cron: minute field "*/0" has step 0, expected 1-60')
      assert_parse_error("*/61 * * * *", 'luster.cron: minute field "*/61" has step 61, expected 1-60')
      assert_parse_error("0 */25 * * *", 'luster.cron: hour field "*/25" has step 25, expected 1-24')
      assert_parse_error("0 0 * * */8", 'luster.cron: day-of-week field "*/8" has step 8, expected 1-7')
      assert_parse_error("*/x * * * *", 'luster.cron: minute field "*/x" has step "x", expected a whole number')
      assert_parse_error("*/ * * * *", 'luster.cron: minute field "*/" has step "", expected a whole number')
      assert_parse_error("*/2/3 * * * *", 'luster.cron: minute field "*/2/3" has step "2/3", expected a whole number')
      assert_parse_error("/5 * * * *", 'luster.cron: minute field "/5" is missing the value before "/"')
      assert_parse_error("0 0 1,*/0 * *",
        'luster.cron: day-of-month field "1,*/0": "*/0" has step 0, expected 1-31')
    end)

    it("reads day-of-week 7 with a step as Sunday, and describes it so it parses again (found by fuzz_cron)", function()
      local s = cron.parse("4/3 * 2 * 7/2")
      assert.are.same({ 0 }, s.weekday)
      assert.equals("4-58/3 * 2 * 0", cron.describe(s))
      assert.equals("4-58/3 * 2 * 0", cron.describe(cron.parse(cron.describe(s))))
    end)

    it("rejects a step too large for an integer with the same clear error (found by fuzz_cron)", function()
      assert_parse_error("*/77777777777777777777 * * * *",
        'luster.cron: minute field "*/77777777777777777777" has step 77777777777777777777, expected 1-60')
    end)

    it("rejects empty list items", function()
      assert_parse_error("1,,2 * * * *", 'luster.cron: minute field "1,,2" has an empty list item')
      assert_parse_error("1, * * * *", 'luster.cron: minute field "1," has an empty list item')
      assert_parse_error(",1 * * * *", 'luster.cron: minute field ",1" has an empty list item')
    end)

    it("allows ? only in the day fields, and only alone", function()
      assert_parse_error("? * * * *",
        'luster.cron: minute field "?": "?" is only allowed in the day-of-month and day-of-week fields')
      assert_parse_error("0 0 1 ? *",
        'luster.cron: month field "?": "?" is only allowed in the day-of-month and day-of-week fields')
      assert_parse_error("0 0 ?/2 * *", 'luster.cron: day-of-month field "?/2": "?" cannot take a step')
    end)

    it("rejects days that never occur in the chosen months when day-of-week is unrestricted", function()
      assert_parse_error("0 0 31 2 *", 'luster.cron: day-of-month field "31" never occurs in month field "2"'
        .. ' (February has at most 29 days), so the schedule would never run')
      assert_parse_error("0 0 30 FEB ?", 'luster.cron: day-of-month field "30" never occurs in month field "FEB"'
        .. ' (February has at most 29 days), so the schedule would never run')
      assert_parse_error("0 0 31 4,6,9,11 *", 'luster.cron: day-of-month field "31" never occurs in month field'
        .. ' "4,6,9,11" (none of those months has that many days), so the schedule would never run')
      assert_parse_error("0 0 0 31 APR *", 'luster.cron: day-of-month field "31" never occurs in month field'
        .. ' "APR" (April has at most 30 days), so the schedule would never run')
    end)
  end)

  describe("describe", function()
    it("returns the normalized text: numbers for names, compact fields", function()
      local cases = {
        ["0 3 * * *"] = "0 3 * * *",
        ["0 9 * jan-mar MON-FRI"] = "0 9 * 1-3 1-5",
        ["0 0 ? * 7"] = "0 0 * * 0",
        ["0 0 1-31 * 0-7"] = "0 0 * * *",
        ["*/1 * * * *"] = "* * * * *",
        ["0,15,30,45 * * * *"] = "*/15 * * * *",
        ["5/20 * * * *"] = "5-45/20 * * * *",
        ["1-10/2 * * * *"] = "1-9/2 * * * *",
        ["0 0,12 * * *"] = "0 0,12 * * *",
        ["3,1,2,9,5-6 * * * *"] = "1-3,5,6,9 * * * *",
        ["0 0 * * 5-7"] = "0 0 * * 0,5,6",
        ["*/1 * * * * *"] = "* * * * * *",
        ["0 0 3 * * *"] = "0 0 3 * * *",
      }
      for text, normalized in pairs(cases) do
        assert.equals(normalized, cron.describe(cron.parse(text)), text)
      end
    end)

    it("gives text that parses back to the same schedule", function()
      for _, text in ipairs { "0 9 * jan-mar MON-FRI", "5/20 1-10/3 1,15,31 */2 SUN,wed",
                              "*/7 */5 */3 */2 *", "10-20/5,1 0 29 2 *", "7 0 0 1 1 *" } do
        local s = cron.parse(text)
        assert.same(s, cron.parse(cron.describe(s)), text)
      end
    end)
  end)

  describe("next", function()
    it("finds the next daily instant later the same day and on the following day", function()
      assert.equals(1715310000000, next_of("0 3 * * *", 1715306400000))  -- 05-10 02:00 -> 05-10 03:00
      assert.equals(1715396400000, next_of("0 3 * * *", 1715310000001))  -- 03:00:00.001 -> 05-11 03:00
      assert.equals(1715310000000, next_of("0 3 * * *", 1715309999999))  -- 02:59:59.999 -> 05-10 03:00
    end)

    it("is strictly after: an instant exactly on schedule gives the following one", function()
      assert.equals(1715396400000, next_of("0 3 * * *", 1715310000000))  -- 2024-05-10 03:00 -> 05-11 03:00
      assert.equals(1715336160000, next_of("* * * * *", 1715336100000))   -- 10:15:00 -> 10:16:00
      assert.equals(1715336131000, next_of("* * * * * *", 1715336130000)) -- 10:15:30 -> 10:15:31
    end)

    it("returns whole seconds as integers", function()
      local t = next_of("* * * * * *", 1715335200500)                   -- 10:00:00.5
      assert.equals(1715335201000, t)
      assert.equals("integer", math.type(t))
      assert.equals(1715335201000, next_of("* * * * * *", 1715335200500.0))
      assert.equals("integer", math.type(next_of("0 3 * * *", 1715306400000.75)))
    end)

    it("crosses a minute boundary", function()
      assert.equals(1715336160000, next_of("* * * * *", 1715336130000))  -- 10:15:30 -> 10:16:00
    end)

    it("crosses an hour boundary", function()
      assert.equals(1715338800000, next_of("*/20 * * * *", 1715337900000)) -- 10:45 -> 11:00
    end)

    it("crosses a day boundary", function()
      assert.equals(1715470200000, next_of("30 23 * * *", 1715384700000)) -- 05-10 23:45 -> 05-11 23:30
      assert.equals(1715385600000, next_of("0 0 * * *", 1715385599000))   -- 05-10 23:59:59 -> 05-11 00:00
    end)

    it("crosses a month boundary, skipping months that lack the day", function()
      assert.equals(1714564800000, next_of("0 12 1 * *", 1713139200000)) -- 04-15 -> 05-01 12:00
      assert.equals(1717113600000, next_of("0 0 31 * *", 1711929600000)) -- 04-01 -> 05-31 (April has no 31st)
    end)

    it("crosses a year boundary", function()
      assert.equals(1767225540000, next_of("59 23 31 12 *", 1735689540000)) -- 2024-12-31 23:59 -> 2025-12-31 23:59
      assert.equals(1735689600000, next_of("0 0 1 1 *", 1735689599000))     -- 2024-12-31 23:59:59 -> 2025-01-01
      assert.equals(1735689600000, next_of("0 0 0 1 JAN *", 1735689599999))
    end)

    it("finds Feb 29 only in leap years, skipping 2100", function()
      assert.equals(1709164800000, next_of("0 0 29 2 *", 1672531200000)) -- 2023-01-01 -> 2024-02-29
      assert.equals(1835395200000, next_of("0 0 29 2 *", 1709164800000)) -- 2024-02-29 -> 2028-02-29
      assert.equals(4233686400000, next_of("0 0 29 2 *", 3981398400000)) -- 2096-03-01 -> 2104-02-29
      assert.equals(-2077747200000, next_of("0 0 29 2 *", -2203891200000)) -- 1900-03-01 -> 1904-02-29
    end)

    it("works before 1970", function()
      assert.equals(0, next_of("0 0 * * *", -1000))                          -- 1969-12-31 23:59:59 -> 1970-01-01
      assert.equals(0, next_of("0 0 1 1 *", -86400000 * 200))
    end)

    it("uses day and month names", function()
      -- 2024-03-29 10:00 is a Friday; the weekend and April-December are skipped
      assert.equals(1735722000000, next_of("0 9 * JAN-MAR mon-fri", 1711706400000)) -- -> 2025-01-01 09:00 (Wed)
    end)

    it("treats day-of-week 7 as Sunday", function()
      assert.equals(1715472000000, next_of("0 0 * * 7", 1715306400000))   -- Fri 05-10 -> Sun 05-12
      assert.equals(1715472000000, next_of("0 0 * * SUN", 1715306400000))
      assert.equals(1715472000000, next_of("0 0 * * 0", 1715306400000))
    end)

    it("matches a day when EITHER day field matches, if both are restricted", function()
      -- the 13th or any Friday, from 2024-10-01 (Tue): Fri 4th, Fri 11th, Sun 13th, Fri 18th
      assert.same({ 1728000000000, 1728604800000, 1728777600000, 1729209600000 },
                  run("0 0 13 * 5", 1727740800000, 4))
    end)

    it("requires only the restricted field when the other is * or ?", function()
      assert.same({ 1728777600000 }, run("0 0 13 * *", 1727740800000, 1)) -- only the 13th
      assert.same({ 1728777600000 }, run("0 0 13 * ?", 1727740800000, 1))
      assert.same({ 1728000000000, 1728604800000, 1729209600000 }, run("0 0 * * 5", 1727740800000, 3))
      assert.same({ 1728000000000, 1728604800000, 1729209600000 }, run("0 0 ? * FRI", 1727740800000, 3))
    end)

    it("counts a day field covering its whole range as unrestricted", function()
      -- "1-31" allows every day, so only Fridays fire (not every day)
      assert.same({ 1728000000000, 1728604800000 }, run("0 0 1-31 * 5", 1727740800000, 2))
      assert.same({ 1728777600000 }, run("0 0 13 * 0-7", 1727740800000, 1))
    end)

    it("fires a restricted weekday even where the day-of-month is impossible", function()
      -- "Feb 31st or a Monday in February": the Mondays fire
      assert.equals(1707091200000, next_of("0 0 31 2 MON", 1704067200000)) -- 2024-01-01 -> Mon 2024-02-05
    end)

    it("honours the seconds field of a 6-field expression", function()
      assert.equals(1715336140000, next_of("*/10 * * * * *", 1715336135000)) -- 10:15:35 -> 10:15:40
      assert.equals(1715385630000, next_of("30 0 0 * * *", 1715299230000))   -- 05-10 00:00:30 -> 05-11 00:00:30
      assert.equals(1715299230000, next_of("30 0 0 * * *", 1715299229999))
      assert.equals(1715336160000, next_of("0 * * * * *", 1715336130000))    -- 10:15:30 -> 10:16:00
    end)

    it("steps through a sequence in order", function()
      assert.same({ 1715336140000, 1715336150000, 1715336160000, 1715336170000 },
                  run("*/10 * * * * *", 1715336135000, 4))
      assert.same({ 1715310000000, 1715396400000, 1715482800000 },
                  run("0 3 * * *", 1715306400000, 3))
    end)

    it("returns nil after a bounded search when a schedule can never fire", function()
      -- parse refuses such schedules; a hand-edited table still must not hang
      local s = cron.parse("0 0 31 1 *")
      s.month = { 2 }
      assert.is_nil(cron.next(s, 1704067200000))
      assert.is_nil(cron.prev(s, 1704067200000))
    end)

    it("rejects a bad schedule or time, naming the caller", function()
      local s = cron.parse("* * * * *")
      local ok, err = pcall(cron.next, s, "soon")
      assert.is_false(ok)
      assert.equals("luster.cron: after_ms must be a finite number of epoch milliseconds, got string", err)
      ok, err = pcall(cron.next, s, 0 / 0)
      assert.is_false(ok)
      assert.matches("after_ms must be a finite number of epoch milliseconds, got [-]?nan", err)
      ok, err = pcall(cron.prev, s, math.huge)
      assert.matches("^luster.cron: at_ms must be a finite number of epoch milliseconds, got inf", err)
      ok, err = pcall(cron.next, "0 3 * * *", 0)
      assert.equals("luster.cron: schedule must be a table from cron.parse, got string", err)
      ok, err = pcall(function() local text = cron.describe(nil); return text end)
      assert.matches("cron_spec.lua:%d+: luster.cron: schedule must be a table from cron.parse, got nil", err)
    end)
  end)

  describe("prev", function()
    it("finds the latest instant at or before the time", function()
      assert.equals(1715223600000, prev_of("0 3 * * *", 1715306400000)) -- 05-10 02:00 -> 05-09 03:00
      assert.equals(1715310000000, prev_of("0 3 * * *", 1715310000000)) -- exactly on schedule -> itself
      assert.equals(1715310000000, prev_of("0 3 * * *", 1715310000999)) -- 03:00:00.999 -> 03:00
      assert.equals(1715223600000, prev_of("0 3 * * *", 1715309999999)) -- 02:59:59.999 -> 05-09 03:00
    end)

    it("crosses year and month boundaries backwards", function()
      assert.equals(1735689540000, prev_of("59 23 31 12 *", 1735689600000)) -- 2025-01-01 -> 2024-12-31 23:59
      assert.equals(1714564800000, prev_of("0 12 1 * *", 1717113600000))    -- 05-31 -> 05-01 12:00
      assert.equals(1714564800000, prev_of("0 12 1 * *", 1714564800000))
    end)

    it("finds the last Feb 29, back across 2100", function()
      assert.equals(1709164800000, prev_of("0 0 29 2 *", 1709251200000)) -- 2024-03-01 -> 2024-02-29
      assert.equals(3981312000000, prev_of("0 0 29 2 *", 4210099200000)) -- 2103-06-01 -> 2096-02-29
      assert.equals(-2330121600000, prev_of("0 0 29 2 *", -2203891200000)) -- 1900-03-01 -> 1896-02-29
    end)

    it("applies the day-of-month/day-of-week OR rule", function()
      assert.equals(1729209600000, prev_of("0 0 13 * 5", 1729252800000)) -- Fri 10-18 12:00 -> 10-18 00:00
      assert.equals(1728777600000, prev_of("0 0 13 * 5", 1729123200000)) -- Thu 10-17 -> Sun 10-13
    end)

    it("honours the seconds field", function()
      assert.equals(1715336130000, prev_of("*/15 * * * * *", 1715336144900)) -- 10:15:44.9 -> 10:15:30
      assert.equals(-1000, prev_of("* * * * * *", -1))                      -- -> 1969-12-31 23:59:59
    end)

    it("is the inverse of next around every instant of a sequence", function()
      local s = cron.parse("*/7 */5 */3 */2 *")
      local t = 1715306400000
      for _ = 1, 200 do
        local n = cron.next(s, t)
        assert.equals(n, cron.prev(s, n))
        assert.equals(n, cron.next(s, cron.prev(s, n - 1)))
        assert.is_true(cron.prev(s, n - 1) <= t)
        t = n
      end
    end)
  end)

  describe("against a naive search", function()
    -- An independent oracle: walk day by day with os.date("!*t") (the C
    -- library's calendar, not luster's) and try each time of day in order.
    local function naive(s, from_ms, dir)
      local secs = {}
      for _, h in ipairs(s.hour) do
        for _, m in ipairs(s.minute) do
          for _, x in ipairs(s.second) do secs[#secs + 1] = h * 3600 + m * 60 + x end
        end
      end
      local function has(a, v) for _, x in ipairs(a) do if x == v then return true end end return false end
      local day_any, week_any = #s.day == 31, #s.weekday == 7
      local t = from_ms // 1000
      local day = t // 86400
      for k = 0, 366 * 10 do
        local d = day + dir * k
        local tm = os.date("!*t", d * 86400)
        local dm, wm = has(s.day, tm.day), has(s.weekday, tm.wday - 1)
        local ok
        if day_any and week_any then ok = true
        elseif day_any then ok = wm
        elseif week_any then ok = dm
        else ok = dm or wm end
        if ok and has(s.month, tm.month) then
          local first, last, step = 1, #secs, 1
          if dir < 0 then first, last, step = #secs, 1, -1 end
          for i = first, last, step do
            local v = d * 86400 + secs[i]
            if (dir > 0 and v > t) or (dir < 0 and v <= t) then return v * 1000 end
          end
        end
      end
    end

    it("agrees on next and prev for assorted schedules at random instants", function()
      local exprs = { "0 3 * * *", "*/15 0-6/2 1,15 JAN-MAR MON-FRI", "0 0 29 2 *", "0 0 13 * 5",
                      "30 12 * 2 1", "*/7 */5 */3 */2 *", "0 0 1,15,31 * 0-2", "5 4 * * SUN",
                      "*/20 5 * * * *", "7,8 0 0 29 2 *", "59 59 23 31 12 *" }
      local rng = 12345
      local function rand(n)  -- a small LCG, so the instants are the same on every run
        rng = (rng * 1103515245 + 12345) % 2147483648
        return rng % n
      end
      for _, e in ipairs(exprs) do
        local s = cron.parse(e)
        for _ = 1, 40 do
          -- 1950 .. 2110, with a millisecond part
          local t = (-631152000 + rand(5049964800)) * 1000 + rand(1000)
          assert.equals(naive(s, t, 1), cron.next(s, t), e .. " next after " .. t)
          assert.equals(naive(s, t, -1), cron.prev(s, t), e .. " prev at " .. t)
        end
      end
    end)
  end)

  describe("performance", function()
    it("chains 10k next() calls on a sparse schedule (every Feb 29 for 41k years)", function()
      local s = cron.parse("0 0 29 2 *")
      local t = 946684800000                                        -- 2000-01-01
      for _ = 1, 10000 do
        local n = cron.next(s, t)
        local tm = os.date("!*t", n // 1000)
        if tm.month ~= 2 or tm.day ~= 29 or n <= t then
          error("not a Feb 29 after the previous one: " .. tostring(n))
        end
        t = n
      end
      -- the 10,000th leap day from 2000 is 43232-02-29 (by 400-year cycles: 146097 days each)
      assert.equals(1302108048000000, t)
    end)

    it("chains 10k 6-field next() calls across year ends", function()
      local s = cron.parse("59 59 23 31 12 *")
      local t = 946684800000
      for _ = 1, 10000 do t = cron.next(s, t) end
      assert.equals(316516204799000, t)                             -- 11999-12-31 23:59:59
    end)

    it("answers 10k next() and prev() calls from scattered instants", function()
      local s = cron.parse("0 0 29 2 *")
      local sum_next, sum_prev = 0, 0
      for i = 0, 9999 do
        local t = 946684800000 + i * 86400000 * 7                   -- weekly from 2000-01-01
        sum_next = sum_next + (cron.next(s, t) - t) // 86400000
        sum_prev = sum_prev + (t - cron.prev(s, t)) // 86400000
      end
      -- days until the next / since the last leap day, summed over ~191 years
      assert.equals(7625595, sum_next)
      assert.equals(7593225, sum_prev)
    end)
  end)
end)
