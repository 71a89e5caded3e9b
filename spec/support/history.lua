-- spec/support/history.lua: checks a recorded history of a run (JSON lines)
-- against luster's guarantees, instead of a spec's own asserts.
--
--   local History = require "support.history"
--   local events = History.read(path)            -- JSON lines, one event each
--   local problems, stats = History.check(events, { dedupe = true })
--   History.assert(events, opts)                 -- errors naming the problems
--
--   lua5.4 spec/support/history.lua [--dedupe] FILE...   -- exit 1 on problems
--
-- Events (fields besides `ev`):
--   run    type id runner instance start end [key]   a handler run; `end`
--          absent when the run never finished (its runner died)
--   begin  run type id runner instance start [key]   the first half of a run,
--   end    run end                                   joined on the `run` token
--   ack    type id key                               a persisted message the
--          caller saw acknowledged (200, or 202 stored)
--   add    counter amount start end acked            an increment attempted
--   read   counter value start end                   a read of a counter
--
-- Run times come from the runners' common monotonic clock (luster.clock,
-- microseconds); add/read times from the caller's clock. The checker never
-- compares one clock with the other.
--
-- Checks:
--   1. no two instances of one (type, id) overlap in time: an instance's
--      span runs from its first run's start to its last run's end (a run
--      that never ended counts only at its start);
--   2. every acknowledged persisted message ran to completion;
--   3. with opts.dedupe, each key ran to completion at most once;
--   4. each read of a counter is at least the sum of the increments
--      acknowledged before the read began, and at most the sum of those
--      attempted before it ended.
local M = {}

local function decode(line)
  local ok, cjson = pcall(require, "cjson")
  if not ok then error("spec/support/history.lua needs lua-cjson") end
  return cjson.decode(line)
end

-- Events of one or more JSON-lines files (a string or a list of paths).
function M.read(paths)
  if type(paths) == "string" then paths = { paths } end
  local events = {}
  for _, path in ipairs(paths) do
    local f = io.open(path, "rb")
    if f then
      local lines = {}
      for line in f:lines() do lines[#lines + 1] = line end
      f:close()
      for n, line in ipairs(lines) do
        if line:match("%S") then
          local ok, ev = pcall(decode, line)
          if ok and type(ev) == "table" then
            events[#events + 1] = ev
          else
            -- A runner killed mid-write leaves a torn last line: allowed
            -- there, a problem anywhere else.
            events[#events + 1] = { ev = "torn", file = path, line = n, text = line, last = n == #lines }
          end
        end
      end
    end
  end
  return events
end

local function key_of(type_name, id) return tostring(type_name) .. "/" .. tostring(id) end

-- Joins begin/end halves into runs; returns runs and problems found.
local function runs_of(events, problems)
  local runs, open = {}, {}
  for _, e in ipairs(events) do
    if e.ev == "run" then
      runs[#runs + 1] = e
    elseif e.ev == "begin" then
      local r = { type = e.type, id = e.id, runner = e.runner, instance = e.instance, start = e.start, key = e.key }
      open[e.run] = r
      runs[#runs + 1] = r
    elseif e.ev == "end" then
      local r = open[e.run]
      if r then r["end"] = e["end"] else problems[#problems + 1] = "an end without a begin: run " .. tostring(e.run) end
    end
  end
  return runs
end

-- Check 1: instance spans of one entity never overlap.
local function check_instances(runs, problems, stats)
  local per = {} -- entity -> instance -> span
  for _, r in ipairs(runs) do
    local ent = key_of(r.type, r.id)
    local m = per[ent] or {}
    per[ent] = m
    local s = m[r.instance]
    local last = r["end"] or r.start
    if not s then
      s = { instance = r.instance, runner = r.runner, first = r.start, last = last }
      m[r.instance] = s
    end
    if r.start < s.first then s.first = r.start end
    if last > s.last then s.last = last end
  end
  for ent, m in pairs(per) do
    local list = {}
    for _, s in pairs(m) do list[#list + 1] = s end
    table.sort(list, function(a, b) return a.first < b.first end)
    stats.entities = stats.entities + 1
    for i = 2, #list do
      local a, b = list[i - 1], list[i]
      stats.handovers = stats.handovers + 1
      if b.first <= a.last then
        problems[#problems + 1] = string.format("%s: instances %s on %s (%d..%d) and %s on %s (%d..%d) overlap",
          ent, a.instance, tostring(a.runner), a.first, a.last, b.instance, tostring(b.runner), b.first, b.last)
      end
    end
  end
end

-- Checks 2 and 3: acknowledged keys ran; with dedupe, no key ran twice.
local function check_keys(events, runs, problems, opts)
  local done = {}
  for _, r in ipairs(runs) do
    if r.key ~= nil and r["end"] then
      local k = key_of(r.type, r.key)
      done[k] = done[k] or {}
      table.insert(done[k], r)
    end
  end
  for _, e in ipairs(events) do
    if e.ev == "ack" and not done[key_of(e.type, e.key)] then
      problems[#problems + 1] = string.format("%s: key %s was acknowledged but never ran to completion",
        key_of(e.type, e.id), tostring(e.key))
    end
  end
  if opts.dedupe then
    for k, list in pairs(done) do
      if #list > 1 then
        local where = {}
        for _, r in ipairs(list) do where[#where + 1] = tostring(r.instance) .. "@" .. tostring(r.start) end
        problems[#problems + 1] = string.format("key %s ran to completion %d times (%s)", k, #list,
          table.concat(where, ", "))
      end
    end
  end
end

-- Check 4: counter reads between the acknowledged and the attempted sums.
local function check_counters(events, problems, stats)
  local adds, reads = {}, {}
  for _, e in ipairs(events) do
    if e.ev == "add" then
      adds[e.counter] = adds[e.counter] or {}
      table.insert(adds[e.counter], e)
    elseif e.ev == "read" then
      reads[#reads + 1] = e
    end
  end
  for _, rd in ipairs(reads) do
    stats.reads = stats.reads + 1
    local low, high = 0, 0
    for _, a in ipairs(adds[rd.counter] or {}) do
      if a.acked and a["end"] < rd.start then low = low + a.amount end
      if a.start < rd["end"] then high = high + a.amount end
    end
    if rd.value < low then
      problems[#problems + 1] = string.format("counter %s read %s at %s, below the %d acknowledged before it",
        tostring(rd.counter), tostring(rd.value), tostring(rd.start), low)
    elseif rd.value > high then
      problems[#problems + 1] = string.format("counter %s read %s at %s, above the %d attempted before it",
        tostring(rd.counter), tostring(rd.value), tostring(rd.start), high)
    end
  end
end

-- Returns the list of problems (empty when the history is consistent) and
-- counts of what was checked.
function M.check(events, opts)
  opts = opts or {}
  local problems = {}
  local stats = { events = 0, runs = 0, entities = 0, handovers = 0, reads = 0 }
  for _, e in ipairs(events) do
    if e.ev ~= "torn" then
      stats.events = stats.events + 1
    elseif not e.last then
      problems[#problems + 1] = string.format("%s line %d is not a JSON object: %s", e.file, e.line, e.text)
    end
  end
  local runs = runs_of(events, problems)
  stats.runs = #runs
  for _, r in ipairs(runs) do
    if r.type == nil or r.id == nil or r.instance == nil or type(r.start) ~= "number" then
      problems[#problems + 1] = "a run without type, id, instance or start: " ..
        string.format("%s/%s %s %s", tostring(r.type), tostring(r.id), tostring(r.instance), tostring(r.start))
      return problems, stats
    end
  end
  check_instances(runs, problems, stats)
  check_keys(events, runs, problems, opts)
  check_counters(events, problems, stats)
  return problems, stats
end

-- Errors listing up to 20 problems when the history breaks a guarantee;
-- returns the stats otherwise.
function M.assert(events, opts)
  local problems, stats = M.check(events, opts)
  if #problems > 0 then
    local shown = {}
    for i = 1, math.min(20, #problems) do shown[i] = "  " .. problems[i] end
    if #problems > 20 then shown[#shown + 1] = "  ... " .. (#problems - 20) .. " more" end
    error(string.format("history check failed (%d problems):\n%s", #problems, table.concat(shown, "\n")), 2)
  end
  return stats
end

-- As a command: lua5.4 spec/support/history.lua [--dedupe] FILE...
if arg and arg[0] and arg[0]:match("history%.lua$") and not pcall(debug.getlocal, 4, 1) then
  local opts, files = {}, {}
  for _, a in ipairs(arg) do
    if a == "--dedupe" then opts.dedupe = true else files[#files + 1] = a end
  end
  if #files == 0 then
    io.stderr:write("usage: lua5.4 spec/support/history.lua [--dedupe] FILE...\n")
    os.exit(2)
  end
  local problems, stats = M.check(M.read(files), opts)
  for _, p in ipairs(problems) do io.stderr:write(p, "\n") end
  print(string.format("history: %d events, %d runs, %d entities, %d handovers, %d reads: %s", stats.events,
    stats.runs, stats.entities, stats.handovers, stats.reads, #problems == 0 and "ok" or (#problems .. " problems")))
  os.exit(#problems == 0 and 0 or 1)
end

return M
