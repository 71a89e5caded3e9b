-- tools/soak.lua: a long run of three runners on a throwaway PostgreSQL under
-- mixed load and churn, sampled every second; fails when the history checker
-- fails or a runner's memory keeps growing. `make soak [SOAK_MINUTES=30]`.
--
--   lua5.4 tools/soak.lua --minutes M --out DIR [--seed N]   (from the repository root)
--
-- Load: volatile calls (spec/support/load.lua on every gateway), persisted
-- messages stored with ?discard=1, entity-to-entity calls (Relay -> Probe),
-- and a script reload every 20 s. Churn: every 30 s runner 2 or 3 is killed
-- (-9), frozen (SIGSTOP for two leases) or restarted (SIGTERM); runner 1 is
-- left alone so its memory is one process's over the whole run (the others'
-- peaks are checked against it).
--
-- Writes DIR/samples.csv (t_s,runner,pid,rss_kb,fds,latency_ms; latency -1
-- when the probe call failed, RSS and descriptors 0 while a runner is dead),
-- DIR/soak.png (gnuplot) and DIR/history/*.jsonl; prints a summary (runner
-- 1's RSS after warm-up and at the end, call latency p50/p99, the history
-- check) and exits 1 on a failure.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"
local PG = require "support.pg"
local History = require "support.history"
local socket = require "socket"

local LEASE = 2
local CHURN_EVERY, RELOAD_EVERY = 30, 20

local function parse_args()
  local o = { minutes = 30, out = "build/soak", seed = os.time() }
  local i = 1
  while i <= #arg do
    local k, v = arg[i], arg[i + 1]
    if k == "--minutes" then o.minutes = tonumber(v)
    elseif k == "--out" then o.out = v
    elseif k == "--seed" then o.seed = tonumber(v)
    else io.stderr:write("soak: unknown argument " .. tostring(k) .. "\n") os.exit(2) end
    if not v then io.stderr:write("soak: " .. k .. " needs a value\n") os.exit(2) end
    i = i + 2
  end
  if not o.minutes or o.minutes <= 0 then io.stderr:write("soak: --minutes must be a positive number\n") os.exit(2) end
  return o
end

local function log(fmt, ...) io.stdout:write(string.format("soak %6.1fs  " .. fmt .. "\n", ...)) io.stdout:flush() end

local function rss_kb(pid)
  return tonumber((H.read_file("/proc/" .. pid .. "/status") or ""):match("VmRSS:%s*(%d+)")) or 0
end

local function fds(pid)
  local p = io.popen("ls /proc/" .. pid .. "/fd 2>/dev/null | wc -l")
  local n = tonumber(p:read("*l")) or 0
  p:close()
  return n
end

-- One POST on a fresh connection with a short timeout: status (0 on no answer).
local function post(port, path, body, timeout)
  local c = socket.tcp()
  c:settimeout(timeout)
  if not c:connect("127.0.0.1", port) then c:close() return 0 end
  c:send(string.format("POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", path, #body, body))
  local ok, status = pcall(H.read_response, c)
  c:close()
  return ok and status or 0
end

-- The three runner slots: fixed gateway and transport ports, so a restarted
-- runner is found where the load generator looks for it.
local function new_slots(url, dir, hist)
  local slots = {}
  for i = 1, 3 do slots[i] = { n = i, http = H.free_port(), listen = H.free_port(), gen = 0 } end
  local function start(s)
    s.gen = s.gen + 1
    local file = string.format("%s/runner%d-%d.jsonl", hist, s.n, s.gen)
    s.r = H.start(dir, { http = "127.0.0.1:" .. s.http, env = { LUSTER_HISTORY = file },
      args = string.format("--storage %s --listen 127.0.0.1:%d --shards 64 --lease %ds --call-timeout 2s --max-idle 30s",
        url, s.listen, LEASE) })
    s.down, s.frozen_until = false, nil
  end
  return slots, start
end

-- Every 30 s: kill, freeze or restart runner 2 or 3. Returns a step(now)
-- that also ends freezes and restarts killed runners.
local function churn(slots, start, t0)
  local next_at = t0 + CHURN_EVERY
  local events = {}
  return function(now)
    for _, s in ipairs(slots) do
      if s.frozen_until and now >= s.frozen_until then s.r:kill("CONT") s.frozen_until = nil s.down = false end
      if s.restart_at and now >= s.restart_at then s.restart_at = nil start(s) end
    end
    if now < next_at then return events end
    next_at = next_at + CHURN_EVERY
    local s = slots[math.random(2, 3)]
    if s.down or s.restart_at then return events end
    local what = ({ "kill", "freeze", "restart" })[math.random(3)]
    events[#events + 1] = { t = now - t0, runner = s.n, what = what }
    log("runner %d: %s", now - t0, s.n, what)
    if what == "kill" then
      s.r:kill("KILL")
      H.wait_for("the killed runner to exit", 10, function() return not H.alive(s.r.pid) end)
      s.down, s.restart_at = true, now + 1
    elseif what == "freeze" then
      s.r:kill("STOP")
      s.down, s.frozen_until = true, now + 2 * LEASE
    else
      s.down = true
      s.r:stop(10)
      s.restart_at = now + 1
    end
    return events
  end
end

-- One second of the driver's own traffic: a latency probe on every runner,
-- persisted messages and relayed calls through the runners that are up.
local function drive(slots, state, csv, now, t0)
  local up = {}
  for _, s in ipairs(slots) do
    local pid = s.r.pid
    local lat = -1
    if not s.down then
      up[#up + 1] = s
      local t = H.now()
      if post(s.http, "/entities/Probe/lat" .. s.n .. "/Hit", "{}", 1) == 200 then lat = (H.now() - t) * 1000 end
    end
    csv:write(string.format("%.1f,%d,%d,%d,%d,%.2f\n", now - t0, s.n, pid, rss_kb(pid), fds(pid), lat))
  end
  if #up == 0 then return end
  for _ = 1, 6 do
    state.seq = state.seq + 1
    local key, id = "s" .. state.seq, "n" .. (state.seq % 20)
    local s = up[state.seq % #up + 1]
    if post(s.http, "/entities/Note/" .. id .. "/Add?discard=1", '{"key":"' .. key .. '"}', 1) == 202 then
      state.acks:write(string.format('{"ev":"ack","type":"Note","id":"%s","key":"%s"}\n', id, key))
      state.acked = state.acked + 1
    end
  end
  for j = 1, 3 do
    local s = up[j % #up + 1]
    post(s.http, "/entities/Relay/r" .. math.random(10) .. "/Via", '{"target":"p' .. math.random(200) .. '"}', 1)
  end
end

-- Percentile q (0..1) of a list of numbers.
local function percentile(list, q)
  if #list == 0 then return 0 end
  table.sort(list)
  return list[math.max(1, math.ceil(q * #list))]
end

-- RSS of runner 1 (one process all along) early after warm-up and at the
-- end: medians of two windows. Returns start_kb, end_kb.
local function rss_trend(samples, seconds)
  local warm = math.min(120, seconds / 3)
  local win = math.max(5, math.min(60, seconds / 6))
  local early, late = {}, {}
  for _, s in ipairs(samples) do
    if s.runner == 1 then
      if s.t >= warm and s.t < warm + win then early[#early + 1] = s.rss end
      if s.t >= seconds - win then late[#late + 1] = s.rss end
    end
  end
  return percentile(early, 0.5), percentile(late, 0.5)
end

-- The highest RSS runners 2 and 3 reached after warm-up, in kB.
local function rss_peak(samples, seconds)
  local warm, peak = math.min(120, seconds / 3), 0
  for _, s in ipairs(samples) do
    if s.runner ~= 1 and s.t >= warm and s.rss > peak then peak = s.rss end
  end
  return peak
end

local function plot(out)
  local gp = out .. "/soak.gp"
  H.write_file(gp, string.format([[
set terminal pngcairo size 1200,800
set output '%s/soak.png'
set datafile separator ','
set key outside right
set multiplot layout 3,1 title 'luster soak: three runners, one killed, frozen or restarted every 30 s'
set ylabel 'RSS (MB)'
plot for [i=1:3] '%s/samples.csv' using 1:($2==i && $4>0 ? $4/1024 : 1/0) skip 1 with points pt 7 ps 0.3 title sprintf('runner %%d', i)
set ylabel 'descriptors'
plot for [i=1:3] '%s/samples.csv' using 1:($2==i && $5>0 ? $5 : 1/0) skip 1 with points pt 7 ps 0.3 title sprintf('runner %%d', i)
set ylabel 'probe latency (ms)'
set xlabel 'seconds'
plot for [i=1:3] '%s/samples.csv' using 1:($2==i && $6>=0 ? $6 : 1/0) skip 1 with points pt 7 ps 0.3 title sprintf('runner %%d', i)
unset multiplot
]], out, out, out, out))
  if not os.execute("gnuplot " .. H.sh_quote(gp) .. " 2>" .. H.sh_quote(out .. "/gnuplot.err")) then
    return false, "gnuplot failed (make test-deps installs it): " .. (H.read_file(out .. "/gnuplot.err") or "")
  end
  return true
end

return (function()
  local o = parse_args()
  math.randomseed(o.seed)
  os.execute("rm -rf " .. H.sh_quote(o.out .. "/history") .. " && mkdir -p " .. H.sh_quote(o.out .. "/history"))
  local seconds = o.minutes * 60
  local pg = PG.start()
  local dir = H.tmpdir()
  for _, f in ipairs { "partition/probe.lua", "cluster/relay.lua", "soak/note.lua" } do
    os.execute(string.format("cp %s %s/", H.sh_quote(H.root .. "/spec/fixtures/" .. f), H.sh_quote(dir)))
  end
  local slots, start = new_slots(pg:create_db("soak"), dir, o.out .. "/history")
  local failures, load = {}, nil
  local ok, err = pcall(function()
    for _, s in ipairs(slots) do start(s) end
    H.wait_cluster(slots[1].r, 3, 30)
    local urls = {}
    for _, s in ipairs(slots) do urls[#urls + 1] = "http://127.0.0.1:" .. s.http end
    load = H.load(urls, 4, 200)
    local csv = assert(io.open(o.out .. "/samples.csv", "w"))
    csv:write("t_s,runner,pid,rss_kb,fds,latency_ms\n")
    local state = { seq = 0, acked = 0, acks = assert(io.open(o.out .. "/history/acks.jsonl", "w")) }
    state.acks:setvbuf("line")
    local t0 = H.now()
    local step = churn(slots, start, t0)
    local probe, next_reload = H.read_file(dir .. "/probe.lua"), t0 + RELOAD_EVERY
    log("seed %d, %d runners up, running for %d s; writing %s", 0, o.seed, #slots, seconds, o.out)
    while H.now() - t0 < seconds do
      local tick = H.now()
      step(tick)
      drive(slots, state, csv, tick, t0)
      if tick >= next_reload then
        next_reload = next_reload + RELOAD_EVERY
        H.write_file(dir .. "/probe.lua", probe .. "\n-- reload at " .. math.floor(tick - t0) .. "\n")
      end
      local rest = 1 - (H.now() - tick)
      if rest > 0 then H.sleep(rest) end
    end
    csv:close()
    state.acks:close()
    -- Churn over: every runner up, then every stored message must run.
    for _, s in ipairs(slots) do
      if s.frozen_until then s.r:kill("CONT") s.frozen_until = nil end
      if not H.alive(s.r.pid) then start(s) end
    end
    local files = {}
    local function history()
      local p = io.popen("ls " .. H.sh_quote(o.out .. "/history") .. "/*.jsonl")
      files = {}
      for f in p:lines() do files[#files + 1] = f end
      p:close()
      return History.read(files)
    end
    H.wait_for("every acknowledged persisted message to run", 120, function()
      local problems = History.check(history())
      for _, p in ipairs(problems) do if p:match("never ran") then return false end end
      return true
    end, 1)
    local recs = load.finish()
    load = nil
    local lat, ok200 = {}, 0
    for _, r in ipairs(recs) do
      if r.status == 200 then ok200 = ok200 + 1 lat[#lat + 1] = (r.recv - r.sent) / 1000 end
    end
    local problems, stats = History.check(history())
    for _, p in ipairs(problems) do failures[#failures + 1] = "history: " .. p end
    local samples = {}
    for line in io.lines(o.out .. "/samples.csv") do
      local t, n, _, rss = line:match("^([%d%.]+),(%d+),(%d+),(%d+)")
      if t then samples[#samples + 1] = { t = tonumber(t), runner = tonumber(n), rss = tonumber(rss) } end
    end
    local rss0, rss1 = rss_trend(samples, seconds)
    -- Growth after warm-up beyond a fifth plus 8 MB is a leak, not noise.
    if rss1 > rss0 * 1.2 + 8192 then
      failures[#failures + 1] = string.format("runner 1's RSS kept growing: %d kB after warm-up, %d kB at the end", rss0, rss1)
    end
    -- Runners 2 and 3 restart every minute or two, so no window shows one
    -- of their processes growing; a leak on their paths (takeovers, hand-offs,
    -- recovery scans) shows instead as a peak far above runner 1's.
    local peak = rss_peak(samples, seconds)
    if peak > math.max(rss0, rss1) * 1.5 + 16384 then
      failures[#failures + 1] = string.format("a churned runner reached %d kB, far above runner 1's %d kB", peak,
        math.max(rss0, rss1))
    end
    local okp, perr = plot(o.out)
    if not okp then failures[#failures + 1] = perr end
    print(string.format("soak summary: %.1f min, seed %d; runner 1 RSS %.1f MB after warm-up -> %.1f MB at the end, " ..
      "runners 2-3 peak %.1f MB; " ..
      "%d calls (%d ok), latency p50 %.1f ms, p99 %.1f ms; %d persisted messages acknowledged; history: %d runs, %d ids, " ..
      "%d handovers, %d problems; plot %s/soak.png", o.minutes, o.seed, rss0 / 1024, rss1 / 1024, peak / 1024, #recs, ok200,
      percentile(lat, 0.5), percentile(lat, 0.99), state.acked, stats.runs, stats.entities, stats.handovers, #problems, o.out))
  end)
  if load then pcall(load.finish) end
  for _, s in ipairs(slots) do
    if s.r then
      s.r:kill("CONT")
      local stopped, e = pcall(s.r.stop, s.r, 10)
      if not stopped then failures[#failures + 1] = tostring(e) end
    end
  end
  pg:destroy()
  H.rmdir(dir)
  if not ok then failures[#failures + 1] = tostring(err) end
  for _, f in ipairs(failures) do io.stderr:write("soak FAILED: ", f, "\n") end
  if #failures == 0 then print("soak passed") end
  os.exit(#failures == 0 and 0 or 1)
end)()
