-- bench/run.lua: runs the scenarios of PERFORMANCE.md against build/luster
-- (and, with PEER=effect, the Effect Cluster peer in the same run,
-- alternating), prints a table of medians, appends one JSON line per scenario
-- to bench/results/results.jsonl and rewrites the table in bench/README.md.
--
--   lua5.4 bench/run.lua [scenario ...]     (make bench [SCENARIO=local-seq] [PEER=effect] [RUNS=3])
--
-- Every loop is bounded in count and time; every process started is stopped.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"
-- A scenario's phases are single calls that run for up to a minute (the
-- persisted warm-up and sequential phases on an fsync-on server): the
-- helpers' socket reads wait 10 s times this factor.
H.slow = math.max(H.slow, 12)
local cjson = require "cjson"
local socket = require "socket"

local RUNS = tonumber(os.getenv("RUNS") or "3")
local PEER = os.getenv("PEER")
if PEER == "" then PEER = nil end
local ROOT = H.root
local LOCAL_DIR = ROOT .. "/bench/scenarios/local"
local RUNNER_ARGS = "--instruction-budget 100000000000 --max-idle 10m --call-timeout 120s"

local function log(fmt, ...) io.stderr:write(string.format(fmt, ...) .. "\n") end

local function median(xs)
  local t = {}
  for _, x in ipairs(xs) do if x == x then t[#t + 1] = x end end
  if #t == 0 then return nil end
  table.sort(t)
  if #t % 2 == 1 then return t[(#t + 1) // 2] end
  return (t[#t // 2] + t[#t // 2 + 1]) / 2
end

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  p:close()
  return out
end

local function rss_bytes(pid)
  local status = H.read_file("/proc/" .. pid .. "/status") or ""
  return (tonumber(status:match("VmRSS:%s+(%d+) kB")) or 0) * 1024
end

-- Sends `bodies` as concurrent POSTs to one path (or to paths[i] each), one
-- connection each, and returns the decoded values.
local function concurrent_posts(r, path, bodies)
  local socks = {}
  for i, body in ipairs(bodies) do
    local c = r:connect()
    c:settimeout(300)
    local p = type(path) == "table" and path[i] or path
    c:send("POST " .. p .. "?timeout=300000 HTTP/1.1\r\nHost: x\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body)
    socks[i] = c
  end
  local values = {}
  for i, c in ipairs(socks) do
    local status, _, raw = H.read_response(c)
    c:close()
    assert(status == 200, "a load generator failed: " .. tostring(status) .. " " .. tostring(raw))
    values[i] = cjson.decode(raw).value
  end
  return values
end

-- Totals of the Driver Loop results of concurrent callers: calls, failed
-- calls and the seconds from the first start to the last stop.
local function sum_loops(vals)
  local calls, failed, start, stop = 0, 0, math.huge, 0
  for _, v in ipairs(vals) do
    calls, failed = calls + v.calls, failed + v.failed
    start, stop = math.min(start, v.start), math.max(stop, v.stop)
  end
  return calls, failed, stop - start
end

local function with_runner(dir, args, fn)
  local r = H.start(dir, { args = RUNNER_ARGS .. " " .. (args or "") })
  local ok, res = pcall(fn, r)
  r:stop()
  if not ok then error(res, 0) end
  return res
end

local function parse_wrk(out)
  local rps = tonumber(out:match("Requests/sec:%s+([%d%.]+)"))
  local function lat(pct)
    local v, unit = out:match("%s" .. pct .. "%%%s+([%d%.]+)(%a+)")
    if not v then return nil end
    local scale = ({ us = 1e-3, ms = 1, s = 1000 })[unit] or 1
    return tonumber(v) * scale
  end
  local non2xx = tonumber(out:match("Non%-2xx or 3xx responses:%s+(%d+)")) or 0
  local errors = 0
  for n in out:gmatch("Socket errors:[^\n]*") do
    for k in n:gmatch("(%d+)") do errors = errors + tonumber(k) end
  end
  return { rps = rps, p50_ms = lat(50), p99_ms = lat(99), non2xx = non2xx, socket_errors = errors }
end

---------------------------------------------------------------------------
-- luster scenarios
---------------------------------------------------------------------------
local scenarios = {}

scenarios[#scenarios + 1] = {
  id = "local-seq", num = 1, title = "local sequential",
  target = "≥ 400k/s, p50 ≤ 3 µs", peer_key = "seq",
  run = function()
    return with_runner(LOCAL_DIR, nil, function(r)
      r:call("Driver", "seq", "Seq", { n = 2000, id = "warm" })
      local _, doc = r:call("Driver", "seq", "Seq", { n = 200000, id = "one" }, "?timeout=300000")
      local v = doc.value
      return { calls_per_s = v.calls / v.seconds, p50_us = v.p50_us, p99_us = v.p99_us }
    end)
  end,
  show = function(v) return string.format("%.0fk/s, p50 %.1f µs", v.calls_per_s / 1000, v.p50_us) end,
  main = "calls_per_s",
  met = function(v) return v.calls_per_s >= 400000 and v.p50_us <= 3 end,
}

-- CPU seconds (user + system) process pid has used so far: on a shared
-- machine a runner's CPU time per call varies less than its rate.
local function cpu_seconds(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return 0 end
  local stat = f:read("a")
  f:close()
  local fields = {}
  for x in stat:match("%) (.*)$"):gmatch("%S+") do fields[#fields + 1] = x end
  return (tonumber(fields[12]) + tonumber(fields[13])) / 100 -- utime, stime in clock ticks (USER_HZ 100)
end

-- Scenario 2's load on runner r (scenario 16 runs it too).
local function local_throughput(r)
  -- Activate the 1000 ids first, as the peer does.
  r:call("Driver", "warm", "Loop", { n = 1000, ids = 1000, prefix = "t", fresh = false }, "?timeout=300000")
  local bodies = {}
  for _ = 1, 64 do bodies[#bodies + 1] = cjson.encode { n = 10000, ids = 1000, prefix = "t", fresh = false } end
  local cpu0 = cpu_seconds(r.pid)
  local calls, failed, seconds = sum_loops(concurrent_posts(r, "/entities/Driver/d/Loop", bodies))
  return { calls_per_s = calls / seconds, failed = failed, cpu_us_per_call = (cpu_seconds(r.pid) - cpu0) / calls * 1e6 }
end

-- Scenario 4's load on runner r.
local function http_load(r)
  local script = ROOT .. "/bench/wrk/increment.lua"
  sh(string.format("wrk -t2 -c64 -d1s -s %s %s", script, r.url))
  local cpu0 = cpu_seconds(r.pid)
  local w = parse_wrk(sh(string.format("wrk -t2 -c64 -d8s --latency -s %s %s", script, r.url)))
  local cpu = cpu_seconds(r.pid) - cpu0
  return { rps = w.rps, p50_ms = w.p50_ms, p99_ms = w.p99_ms, failed = w.non2xx + w.socket_errors,
    cpu_us_per_req = w.rps and w.rps > 0 and cpu / (w.rps * 8) * 1e6 or 0 }
end

scenarios[#scenarios + 1] = {
  id = "local-throughput", num = 2, title = "local throughput",
  target = "≥ 500k/s", peer_key = "throughput",
  run = function() return with_runner(LOCAL_DIR, nil, local_throughput) end,
  show = function(v) return string.format("%.0fk/s", v.calls_per_s / 1000) end,
  main = "calls_per_s",
  met = function(v) return v.calls_per_s >= 500000 end,
}

scenarios[#scenarios + 1] = {
  id = "activation", num = 3, title = "activation",
  target = "≥ 300k/s, ≤ 1 KB", peer_key = "activation",
  run = function()
    return with_runner(LOCAL_DIR, nil, function(r)
      r:call("Driver", "warm", "Loop", { n = 2000, ids = 2000, prefix = "w", fresh = true }, "?timeout=300000")
      local before = rss_bytes(r.pid)
      local lua_before = r:metric('luster_script_memory_bytes{file="counter.lua"}')
      local bodies = {}
      local per = 100000 // 64
      for k = 1, 64 do bodies[#bodies + 1] = cjson.encode { n = per, ids = 1, prefix = "a" .. k .. "-", fresh = true } end
      local calls, _, seconds = sum_loops(concurrent_posts(r, "/entities/Driver/d/Loop", bodies))
      local after = rss_bytes(r.pid)
      local lua_after = r:metric('luster_script_memory_bytes{file="counter.lua"}')
      local active = r:metric('luster_active_instances{type="Counter"}')
      return {
        activations_per_s = calls / seconds,
        rss_bytes_per_entity = (after - before) / calls,
        counter_state_bytes_per_entity = (lua_after - lua_before) / calls,
        active = active,
      }
    end)
  end,
  show = function(v)
    return string.format("%.0fk/s, %.2f KB RSS", v.activations_per_s / 1000, v.rss_bytes_per_entity / 1024)
  end,
  main = "activations_per_s",
  met = function(v) return v.activations_per_s >= 300000 and v.rss_bytes_per_entity <= 1024 end,
}

scenarios[#scenarios + 1] = {
  id = "http", num = 4, title = "HTTP gateway",
  target = "≥ 80k req/s, p99 ≤ 5 ms",
  run = function() return with_runner(LOCAL_DIR, nil, http_load) end,
  show = function(v) return string.format("%.0fk req/s, p99 %.2f ms", v.rps / 1000, v.p99_ms) end,
  main = "rps",
  met = function(v) return v.rps >= 80000 and v.p99_ms <= 5 and v.failed == 0 end,
}

-- Scenario 16: scenarios 2 and 4 with spans exported (--otlp-endpoint to a
-- local receiver that discards them, bench/otlp_sink.lua) as protobuf (the
-- default, "on") and as JSON ("json"), and without ("off"), one after the
-- other in the same minutes; with TRACE_BASE_BIN set (a build from
-- before tracing), that binary too, first in each round. Ratios are against
-- the run without an endpoint (and against the base build when given).
local function otlp_sink()
  local portfile = os.tmpname()
  local pid = tonumber(sh(string.format("lua5.4 %s %s >/dev/null 2>&1 & echo $!",
    H.sh_quote(ROOT .. "/bench/otlp_sink.lua"), H.sh_quote(portfile))):match("%d+"))
  local port = H.wait_for("the OTLP sink's port", 10, function()
    return tonumber(((H.read_file(portfile) or ""):match("^(%d+)")))
  end)
  os.remove(portfile)
  return pid, "http://127.0.0.1:" .. port .. "/v1/traces"
end

scenarios[#scenarios + 1] = {
  id = "tracing", num = 16, title = "tracing cost",
  target = "≤ 10% slower on, no change off",
  run = function()
    local sink, url = otlp_sink()
    local own_bin = H.bin
    local variants = { { "off", own_bin, nil }, { "on", own_bin, "--otlp-endpoint " .. url },
      { "json", own_bin, "--otlp-endpoint " .. url .. " --otlp-protocol http/json" } }
    local base = os.getenv("TRACE_BASE_BIN")
    if base and base ~= "" then table.insert(variants, 1, { "base", base, nil }) end
    local v = {}
    local ok, err = pcall(function()
      -- The spans' fate, read before the runner stops: a queue the receiver
      -- cannot drain drops spans (and skips building them), so "on" costs
      -- less than a full export would; the share sent says how much was.
      local function with_fate(load)
        return function(r)
          local res = load(r)
          res.sent = r:metric('luster_otlp_spans_total{result="sent"}') or 0
          res.dropped = r:metric('luster_otlp_spans_total{result="dropped"}') or 0
          return res
        end
      end
      for _, x in ipairs(variants) do
        H.bin = x[2]
        local l = with_runner(LOCAL_DIR, x[3], with_fate(local_throughput))
        v[x[1] .. "_local_calls_per_s"] = l.calls_per_s
        v[x[1] .. "_local_cpu_us_per_call"] = l.cpu_us_per_call
        if x[3] then v[x[1] .. "_local_sent_share"] = l.sent / math.max(1, l.sent + l.dropped) end
        local w = with_runner(LOCAL_DIR, x[3], with_fate(http_load))
        if x[3] then v[x[1] .. "_http_sent_share"] = w.sent / math.max(1, w.sent + w.dropped) end
        v[x[1] .. "_http_cpu_us_per_req"] = w.cpu_us_per_req
        v[x[1] .. "_http_rps"] = w.rps
        v[x[1] .. "_http_p99_ms"] = w.p99_ms
        v[x[1] .. "_http_failed"] = w.failed
      end
    end)
    H.bin = own_bin
    os.execute("kill " .. sink .. " 2>/dev/null")
    if not ok then error(err, 0) end
    -- CPU per call/request: > 1 means the runner spends more per call
    v.on_local_cpu_ratio = v.on_local_cpu_us_per_call / v.off_local_cpu_us_per_call
    v.on_http_cpu_ratio = v.on_http_cpu_us_per_req / v.off_http_cpu_us_per_req
    v.on_local_ratio = v.on_local_calls_per_s / v.off_local_calls_per_s
    v.on_http_ratio = v.on_http_rps / v.off_http_rps
    v.json_local_cpu_ratio = v.json_local_cpu_us_per_call / v.off_local_cpu_us_per_call
    v.json_http_cpu_ratio = v.json_http_cpu_us_per_req / v.off_http_cpu_us_per_req
    v.json_local_ratio = v.json_local_calls_per_s / v.off_local_calls_per_s
    v.json_http_ratio = v.json_http_rps / v.off_http_rps
    if v.base_http_rps then
      v.off_local_vs_base = v.off_local_calls_per_s / v.base_local_calls_per_s
      v.off_http_vs_base = v.off_http_rps / v.base_http_rps
      v.off_local_cpu_vs_base = v.off_local_cpu_us_per_call / v.base_local_cpu_us_per_call
      v.off_http_cpu_vs_base = v.off_http_cpu_us_per_req / v.base_http_cpu_us_per_req
    end
    return v
  end,
  show = function(v)
    local s = string.format("local %.0fk/s off, %.0fk/s on (%+.0f%%); HTTP %.0fk off, %.0fk on (%+.0f%%)",
      v.off_local_calls_per_s / 1000, v.on_local_calls_per_s / 1000, (v.on_local_ratio - 1) * 100,
      v.off_http_rps / 1000, v.on_http_rps / 1000, (v.on_http_ratio - 1) * 100)
    s = s .. string.format("; json %.0fk/s (%+.0f%%), %.0fk (%+.0f%%)", v.json_local_calls_per_s / 1000,
      (v.json_local_ratio - 1) * 100, v.json_http_rps / 1000, (v.json_http_ratio - 1) * 100)
    s = s .. string.format("; CPU per call %.2f/%.2f/%.2f µs, per request %.1f/%.1f/%.1f µs (off/on/json)",
      v.off_local_cpu_us_per_call, v.on_local_cpu_us_per_call, v.json_local_cpu_us_per_call,
      v.off_http_cpu_us_per_req, v.on_http_cpu_us_per_req, v.json_http_cpu_us_per_req)
    s = s .. string.format("; spans sent (not dropped) local %.0f%%/%.0f%%, HTTP %.0f%%/%.0f%% (on/json)",
      v.on_local_sent_share * 100, v.json_local_sent_share * 100, v.on_http_sent_share * 100, v.json_http_sent_share * 100)
    if v.base_http_rps and v.base_http_rps > 0 then
      s = s .. string.format("; base %.0fk/s, %.0fk req/s, %.2f µs, %.1f µs", v.base_local_calls_per_s / 1000,
        v.base_http_rps / 1000, v.base_local_cpu_us_per_call, v.base_http_cpu_us_per_req)
    end
    return s
  end,
  main = "on_http_ratio",
  met = function(v) return v.on_local_ratio >= 0.9 and v.on_http_ratio >= 0.9 end,
}

---------------------------------------------------------------------------
-- cluster scenarios: runners on loopback over a throwaway PostgreSQL
---------------------------------------------------------------------------
local PG = require "support.pg"
local pg, pg_dbs = nil, 0
-- Scenario 7 (luster and peer) runs on a server of its own that keeps
-- PostgreSQL's durable defaults (fsync, synchronous_commit and
-- full_page_writes on; support.pg turns them off for speed): a persisted
-- message is acknowledged only once its commit is flushed, as where the
-- peer's figures in PERFORMANCE.md were taken.
local pg_durable
local function durable_pg()
  if not pg_durable then
    pg_durable = PG.start { settings = { fsync = "on", synchronous_commit = "on", full_page_writes = "on" } }
  end
  return pg_durable
end
local CLUSTER_DIR = ROOT .. "/bench/scenarios/cluster"


-- Starts n runners in a fresh database; fn(runners, start_one) runs with
-- them; every runner started is stopped afterwards. opts.dirs: the
-- directories whose *.lua are the runners' scripts (default: the local and
-- cluster scenarios; a later directory's file replaces an earlier one of
-- the same name); opts.server: the PostgreSQL server (default: the shared one).
local function with_cluster(n, args, fn, opts)
  opts = opts or {}
  if not opts.server and not pg then pg = PG.start() end
  local server = opts.server or pg
  pg_dbs = pg_dbs + 1
  local url = server:create_db("bench" .. pg_dbs)
  local dir = H.tmpdir()
  for _, d in ipairs(opts.dirs or { LOCAL_DIR, CLUSTER_DIR }) do
    os.execute(string.format("cp -L %s/*.lua %s/", d, dir))
  end
  local start, stop_all, started = H.cluster_runners(url, { dir = dir, args = RUNNER_ARGS .. " " .. (args or "") })
  local function start_one(extra) return start({ args = extra }) end
  local rs = {}
  for i = 1, n do rs[i] = start_one() end
  H.wait_cluster(rs[1], #started, 30)
  local ok, res = pcall(fn, rs, start_one, started)
  stop_all()
  H.rmdir(dir)
  if not ok then error(res, 0) end
  return res
end

-- Ids (prefix..k) served by the runner at `address`, asked through r.
local function ids_on(r, address, prefix, want)
  local ids = {}
  local k = 0
  while #ids < want and k < want * 20 do
    k = k + 1
    local _, doc = r:call("Where", prefix .. k, "Ask", {})
    if doc.value == address then ids[#ids + 1] = prefix .. k end
  end
  assert(#ids == want, "not enough ids on " .. address)
  return ids
end

scenarios[#scenarios + 1] = {
  id = "cross-runner", num = 5, title = "cross-runner",
  target = "≥ 150k/s, p50 ≤ 1 ms", peer_key = "cluster",
  run = function()
    return with_cluster(2, nil, function(rs)
      local a, b = rs[1], rs[2]
      local remote = ids_on(a, b.address, "c", 1000)
      local drivers = ids_on(a, a.address, "d", 64)
      for _, id in ipairs(remote) do a:call("Counter", id, "Increment", { amount = 1 }) end
      local bodies = {}
      for k = 1, 64 do
        local mine = {}
        for j = 0, 15 do mine[#mine + 1] = remote[((k - 1) * 16 + j) % #remote + 1] end
        bodies[k] = cjson.encode { n = 4000, ids = mine }
      end
      -- Each POST goes to its own RemoteDriver, on its own connection.
      local paths = {}
      for k = 1, 64 do paths[k] = "/entities/RemoteDriver/" .. drivers[k] .. "/Run" end
      local vals = concurrent_posts(a, paths, bodies)
      local p50s = {}
      for k, v in ipairs(vals) do p50s[k] = v.p50_us end
      local calls, failed, seconds = sum_loops(vals)
      return { calls_per_s = calls / seconds, p50_us = median(p50s), failed = failed }
    end)
  end,
  show = function(v) return string.format("%.0fk/s, p50 %.0f µs", v.calls_per_s / 1000, v.p50_us) end,
  main = "calls_per_s",
  met = function(v) return v.calls_per_s >= 150000 and v.p50_us <= 1000 and v.failed == 0 end,
}

scenarios[#scenarios + 1] = {
  id = "cross-runner-seq", num = 6, title = "cross-runner sequential",
  target = "p50 ≤ 50 µs", peer_key = "cluster",
  run = function()
    return with_cluster(2, nil, function(rs)
      local a, b = rs[1], rs[2]
      local remote = ids_on(a, b.address, "s", 1)
      local driver = ids_on(a, a.address, "q", 1)[1]
      a:call("RemoteDriver", driver, "Run", { n = 2000, ids = remote })
      local _, doc = a:call("RemoteDriver", driver, "Run", { n = 50000, ids = remote }, "?timeout=300000")
      local v = doc.value
      return { calls_per_s = v.calls / (v.stop - v.start), p50_us = v.p50_us, p99_us = v.p99_us }
    end)
  end,
  show = function(v) return string.format("p50 %.1f µs (%.0fk/s)", v.p50_us, v.calls_per_s / 1000) end,
  main = "p50_us", lower_better = true,
  met = function(v) return v.p50_us <= 50 end,
}

-- The seed's Counter with a persisted Increment (bench/scenarios/persisted)
-- in place of the local one; the callers are RemoteDrivers, as in 5 and 6.
local PERSISTED_DIRS = { CLUSTER_DIR, ROOT .. "/bench/scenarios/persisted" }

-- The two phases of the persisted scenarios, from runner r: one caller
-- (driver `drivers[65]` or "seq") over `ids` in turn, then 64 callers
-- (RemoteDriver `drivers[k]` or "dk"), 16 ids each, every one on its own
-- connection. The ids are warmed (activated) first. `ms` caps each phase.
local function persisted_phases(r, ids, drivers, ms)
  local function driver(k, fallback) return drivers and drivers[k] or fallback end
  local _, warm = r:call("RemoteDriver", driver(65, "warm"), "Run", { n = #ids, ids = ids, ms = 60000 },
    "?timeout=300000")
  assert(warm.value and warm.value.failed == 0, "warm-up: " .. cjson.encode(warm))
  local _, doc = r:call("RemoteDriver", driver(65, "seq"), "Run", { n = 5000, ids = ids, ms = ms or 15000 },
    "?timeout=300000")
  local seq = doc.value
  assert(seq and seq.calls, "the sequential caller failed: " .. cjson.encode(doc))
  local bodies, paths = {}, {}
  for k = 1, 64 do
    local mine = {}
    for j = 0, 15 do mine[#mine + 1] = ids[((k - 1) * 16 + j) % #ids + 1] end
    bodies[k] = cjson.encode { n = 1600, ids = mine, ms = ms or 20000 }
    paths[k] = "/entities/RemoteDriver/" .. driver(k, "d" .. k) .. "/Run"
  end
  local vals = concurrent_posts(r, paths, bodies)
  local p50s, first_error = {}, seq.first_error
  for k, v in ipairs(vals) do
    p50s[k] = v.p50_us
    first_error = first_error or v.first_error
  end
  local calls, failed, seconds = sum_loops(vals)
  return {
    calls_per_s = calls / seconds, p50_us = median(p50s), failed = failed + seq.failed,
    seq_calls_per_s = seq.calls / (seq.stop - seq.start), seq_p50_us = seq.p50_us, seq_p99_us = seq.p99_us,
    sent = #ids + seq.calls + calls, first_error = first_error,
  }
end

scenarios[#scenarios + 1] = {
  id = "persisted", num = 7, title = "persisted", target = "≥ 20k/s / p50 ≤ 2 ms", peer_key = "persisted",
  run = function()
    return with_cluster(2, nil, function(rs)
      local a, b = rs[1], rs[2]
      local remote = ids_on(a, b.address, "p", 1000)
      local drivers = ids_on(a, a.address, "d", 65)
      local res = persisted_phases(a, remote, drivers)
      local stored = a:metric("luster_persisted_stored_total") + b:metric("luster_persisted_stored_total")
      local replies = a:metric("luster_persisted_replies_total") + b:metric("luster_persisted_replies_total")
      if res.failed > 0 then
        log("  persisted: %d calls failed; the first: %s", res.failed, tostring(res.first_error))
      end
      if stored ~= res.sent or replies ~= res.sent then
        log("  persisted: %d calls made, but %d messages and %d replies stored", res.sent, stored, replies)
      end
      -- Calls made whose message or reply the runners did not store (0).
      res.unstored = math.abs(res.sent - stored) + math.abs(res.sent - replies)
      return res
    end, { dirs = PERSISTED_DIRS, server = durable_pg() })
  end,
  show = function(v)
    return string.format("%.1fk/s (p50 %.1f ms) / p50 %.2f ms", v.calls_per_s / 1000, v.p50_us / 1000,
      v.seq_p50_us / 1000)
  end,
  -- Two figures, each with its ratio: 64 callers' rate, one caller's p50.
  main = "calls_per_s",
  ratios = { { key = "calls_per_s" }, { key = "seq_p50_us", lower_better = true } },
  met = function(v)
    return v.calls_per_s >= 20000 and v.seq_p50_us <= 2000 and v.failed == 0 and v.unstored == 0
  end,
}

scenarios[#scenarios + 1] = {
  id = "failover-kill", num = 8, title = "failover, kill -9",
  target = "≤ 1 s", peer_key = "cluster",
  run = function()
    return with_cluster(3, nil, function(rs)
      local a, c = rs[1], rs[3]
      local victim = ids_on(a, c.address, "k", 1)[1]
      local t0 = H.now()
      c:kill("KILL")
      local tries = 0
      H.wait_for("the victim id to answer again", 30, function()
        tries = tries + 1
        local status = a:call("Counter", victim, "Increment", { amount = 1 }, "?timeout=200")
        return status == 200
      end, 0.002)
      return { seconds = H.now() - t0, tries = tries }
    end)
  end,
  show = function(v) return string.format("%.0f ms", v.seconds * 1000) end,
  main = "seconds", lower_better = true,
  met = function(v) return v.seconds <= 1 end,
}

scenarios[#scenarios + 1] = {
  id = "failover-stop", num = 9, title = "failover, frozen runner",
  target = "≤ lease, no double owner",
  run = function()
    return with_cluster(3, "--lease 10s", function(rs)
      local a, c = rs[1], rs[3]
      local victim = ids_on(a, c.address, "f", 1)[1]
      local t0 = H.now()
      c:kill("STOP")
      H.wait_for("the frozen runner's id to answer elsewhere", 60, function()
        local status = a:call("Counter", victim, "Increment", { amount = 1 }, "?timeout=200")
        return status == 200
      end, 0.005)
      local took = H.now() - t0
      c:kill("CONT")
      -- On waking it fences what it lost before running anything (the
      -- cluster spec checks every served call for double ownership).
      H.wait_for("the woken runner to fence", 20, function()
        return c:log_text():find("stopped serving", 1, true) ~= nil
      end)
      return { seconds = took }
    end)
  end,
  show = function(v) return string.format("%.1f s (lease 10 s)", v.seconds) end,
  main = "seconds",
  met = function(v) return v.seconds <= 10.5 end,
}

scenarios[#scenarios + 1] = {
  id = "rolling", num = 10, title = "rolling change",
  target = "zero failed calls",
  run = function()
    return with_cluster(2, nil, function(rs, start_one)
      local a = rs[1]
      local script = ROOT .. "/bench/wrk/increment.lua"
      local wrk = io.popen(string.format("wrk -t2 -c32 -d8s -s %s %s 2>&1", script, a.url))
      socket.sleep(1)
      local c = start_one()
      H.wait_cluster(a, 3, 20) -- the joiner holds its shards
      socket.sleep(1)
      assert(c:stop(20), "the leaving runner exits on SIGTERM")
      local w = parse_wrk(wrk:read("a"))
      wrk:close()
      return { rps = w.rps, failed = w.non2xx + w.socket_errors }
    end)
  end,
  show = function(v) return string.format("%d failed (%.0fk req/s)", v.failed, v.rps / 1000) end,
  main = "rps",
  met = function(v) return v.failed == 0 end,
}

scenarios[#scenarios + 1] = {
  id = "reload", num = 11, title = "hot reload",
  target = "0 failed, ≤ 100 ms",
  run = function()
    local dir = H.tmpdir()
    os.execute(string.format("cp -L %s/*.lua %s/", LOCAL_DIR, dir))
    local src = H.read_file(dir .. "/counter.lua")
    local res = with_runner(dir, nil, function(r)
      local script = ROOT .. "/bench/wrk/increment.lua"
      local wrk = io.popen(string.format("wrk -t1 -c16 -d4s -s %s %s 2>&1", script, r.url))
      socket.sleep(0.5)
      local lat = {}
      for k = 1, 3 do
        local factor = k + 1
        local newsrc = src:gsub("return count\n", "return count * " .. factor .. "\n")
        local t0 = H.now()
        H.write_file(dir .. "/counter.lua", newsrc)
        local n = 0
        H.wait_for("version " .. k .. " to serve", 5, function()
          n = n + 1
          local _, doc = r:call("Counter", "probe-" .. k .. "-" .. n, "Increment", { amount = 1 })
          return doc.value == factor
        end, 0.001)
        lat[k] = (H.now() - t0) * 1000
        socket.sleep(0.6)
      end
      local w = parse_wrk(wrk:read("a"))
      wrk:close()
      return { write_to_serving_ms = median(lat), failed = w.non2xx + w.socket_errors, rps_during = w.rps }
    end)
    H.rmdir(dir)
    return res
  end,
  show = function(v) return string.format("%.0f ms, %d failed", v.write_to_serving_ms, v.failed) end,
  main = "write_to_serving_ms",
  met = function(v) return v.failed == 0 and v.write_to_serving_ms <= 100 end,
}

-- Scenario 7 on one runner over a SQLite file (--storage sqlite:PATH, the
-- default synchronous NORMAL in WAL): the same persisted Counter and
-- RemoteDrivers, every caller and Counter on the one runner. BENCH_MS caps
-- each phase (a quick check that the scenario runs: BENCH_MS=1000).
local SQLITE_MS = tonumber(os.getenv("BENCH_MS") or "")

scenarios[#scenarios + 1] = {
  id = "sqlite-persisted", num = 12, title = "persisted on SQLite", target = "≥ 20k/s / p50 ≤ 1 ms",
  run = function()
    local dir = H.tmpdir()
    for _, d in ipairs(PERSISTED_DIRS) do os.execute(string.format("cp -L %s/*.lua %s/", d, dir)) end
    local db = dir .. "/bench.db"
    local ok, res = pcall(with_runner, dir, "--storage sqlite:" .. db, function(r)
      local ids = {}
      for k = 1, 1000 do ids[k] = "p" .. k end
      local res = persisted_phases(r, ids, nil, SQLITE_MS)
      local stored = r:metric("luster_persisted_stored_total")
      local replies = r:metric("luster_persisted_replies_total")
      res.unstored, res.messages = math.abs(res.sent - stored) + math.abs(res.sent - replies), res.sent
      return res
    end)
    -- The file after the runner's exit (its WAL checkpointed into it).
    local f = io.open(db, "rb")
    local size = f and f:seek("end") or 0
    if f then f:close() end
    H.rmdir(dir)
    if not ok then error(res, 0) end
    res.bytes_per_message = size / res.messages
    return res
  end,
  show = function(v)
    return string.format("%.1fk/s (p50 %.1f ms) / p50 %.2f ms, %.0f B/msg", v.calls_per_s / 1000, v.p50_us / 1000,
      v.seq_p50_us / 1000, v.bytes_per_message)
  end,
  main = "calls_per_s",
  met = function(v)
    return v.calls_per_s >= 20000 and v.seq_p50_us <= 1000 and v.failed == 0 and v.unstored == 0
  end,
}

-- The seed's Counter as a durable entity (bench/scenarios/durable): every
-- Increment writes its state before the reply. One runner on the durable
-- PostgreSQL server (fsync on), the local drivers as in scenario 2.
local DURABLE_DIRS = { LOCAL_DIR, CLUSTER_DIR, ROOT .. "/bench/scenarios/durable" }

-- The load of scenario 13 on runner r: 1000 durable Counters activated, then
-- 64 concurrent Drivers, 2 000 calls each; every call must write its state.
local function durable_load(r)
  r:call("Driver", "warm", "Loop", { n = 1000, ids = 1000, prefix = "t", fresh = false }, "?timeout=300000")
  local before = r:metric('luster_state_writes_total{type="Counter"}') or 0
  local bodies = {}
  for _ = 1, 64 do bodies[#bodies + 1] = cjson.encode { n = 2000, ids = 1000, prefix = "t", fresh = false } end
  local calls, failed, seconds = sum_loops(concurrent_posts(r, "/entities/Driver/d/Loop", bodies))
  local written = (r:metric('luster_state_writes_total{type="Counter"}') or 0) - before
  if written ~= calls - failed then
    log("  durable-state: %d calls succeeded but %d states written", calls - failed, written)
  end
  return { calls_per_s = calls / seconds, failed = failed, unwritten = math.abs(calls - failed - written) }
end

local function durable_show(v)
  return string.format("%.1fk/s, %.0f B on disk per entity", v.calls_per_s / 1000, v.bytes_per_entity)
end
local function durable_met(v) return v.calls_per_s >= 20000 and v.failed == 0 and v.unwritten == 0 end

scenarios[#scenarios + 1] = {
  id = "durable-state", num = 13, title = "durable state (PostgreSQL)", target = "≥ 20k/s",
  run = function()
    return with_cluster(1, nil, function(rs)
      local res = durable_load(rs[1])
      local server, db = durable_pg(), "bench" .. pg_dbs
      local rows = tonumber(server:psql("SELECT count(*) FROM luster_entity_state", db):match("%d+"))
      local bytes = tonumber(server:psql("SELECT pg_total_relation_size('luster_entity_state')", db):match("%d+"))
      res.rows, res.bytes_per_entity = rows, rows > 0 and bytes / rows or 0
      return res
    end, { dirs = DURABLE_DIRS, server = durable_pg() })
  end,
  show = durable_show, main = "calls_per_s", met = durable_met,
}

-- Scenario 13 on one runner over a SQLite file (synchronous NORMAL in WAL).
-- Bytes per entity: the file after the runner's exit (its WAL checkpointed
-- into it) over the 1000 Counters; nothing else in it is stored, as the
-- drivers and the Counter's Increment are volatile.
scenarios[#scenarios + 1] = {
  id = "durable-state-sqlite", num = 13, title = "durable state (SQLite)", target = "≥ 20k/s",
  run = function()
    local dir = H.tmpdir()
    for _, d in ipairs(DURABLE_DIRS) do os.execute(string.format("cp -L %s/*.lua %s/", d, dir)) end
    local db = dir .. "/bench.db"
    local ok, res = pcall(with_runner, dir, "--storage sqlite:" .. db, durable_load)
    local f = io.open(db, "rb")
    local size = f and f:seek("end") or 0
    if f then f:close() end
    H.rmdir(dir)
    if not ok then error(res, 0) end
    res.rows, res.bytes_per_entity = 1000, size / 1000
    return res
  end,
  show = durable_show, main = "calls_per_s", met = durable_met,
}

---------------------------------------------------------------------------
-- the Effect peer
---------------------------------------------------------------------------
local PEER_SRC = ROOT .. "/../shared/peers/effect"
local PEER_DIR = ROOT .. "/build/peer-effect"

local function peer_prepare()
  if not sh("command -v node && command -v npm"):find("npm") then
    log("PEER=effect needs node and npm (Node.js 20+: apt-get install nodejs npm); the peer will not run")
    return false
  end
  if H.read_file(PEER_DIR .. "/node_modules/.package-lock.json") then return true end
  log("preparing the Effect peer in %s (npm ci)", PEER_DIR)
  os.execute(string.format("mkdir -p %s && cp -r %s/package.json %s/package-lock.json %s/tsconfig.json %s/src %s/",
    PEER_DIR, PEER_SRC, PEER_SRC, PEER_SRC, PEER_SRC, PEER_DIR))
  local out = sh(string.format("cd %s && npm ci --no-audit --no-fund", PEER_DIR))
  if not H.read_file(PEER_DIR .. "/node_modules/.package-lock.json") then
    log("npm ci failed; the peer will not run:\n%s", out)
    return false
  end
  return true
end

local function peer_local()
  local out = sh(string.format("cd %s && timeout 150 node --expose-gc --import tsx src/bench-local.ts", PEER_DIR))
  local line = out:match("(%b{})%s*$")
  local ok, doc = pcall(cjson.decode, line or "")
  if not ok or type(doc) ~= "table" or not doc.seq then
    log("the peer's bench-local gave no result:\n%s", out:sub(-2000))
    return nil
  end
  return {
    ["local-seq"] = { calls_per_s = doc.seq.calls_per_s, p50_us = doc.seq.p50_us, p99_us = doc.seq.p99_us },
    ["local-throughput"] = { calls_per_s = doc.throughput.calls_per_s },
    ["activation"] = { activations_per_s = doc.activation.activations_per_s,
                       rss_bytes_per_entity = doc.activation.rss_bytes_per_entity },
  }
end

-- The peer's two-runner bench (cross-runner throughput, sequential, kill -9
-- failover), on the same throwaway PostgreSQL as luster's cluster scenarios,
-- with Effect's default ShardingConfig.
local function peer_cluster()
  if not pg then pg = PG.start() end
  pg_dbs = pg_dbs + 1
  local db = "effect" .. pg_dbs
  pg:create_db(db)
  local out = sh(string.format("cd %s && PGPORT=%d PGDATABASE=%s timeout 170 node --import tsx src/bench-cluster.ts",
    PEER_DIR, pg.port, db))
  local line = out:match("(%b{})%s*$")
  local ok, doc = pcall(cjson.decode, line or "")
  if not ok or type(doc) ~= "table" or not doc.throughput then
    log("the peer's bench-cluster gave no result:\n%s", out:sub(-2000))
    return nil
  end
  local res = {
    ["cross-runner"] = { calls_per_s = doc.throughput.calls_per_s, p50_us = doc.throughput.p50_us },
    ["cross-runner-seq"] = { p50_us = doc.sequential.p50_us, calls_per_s = doc.sequential.calls_per_s },
  }
  if doc.failover and doc.failover.call_ok_after_ms then
    res["failover-kill"] = { seconds = doc.failover.call_ok_after_ms / 1000 }
  end
  return res
end

-- The peer's persisted bench (PersistedCounter: ClusterSchema.Persisted
-- Increment, SqlMessageStorage), the same two runners plus a client-only
-- caller, on the same throwaway (durable) PostgreSQL as luster's scenario 7.
local function peer_persisted()
  local server = durable_pg()
  pg_dbs = pg_dbs + 1
  local db = "effect" .. pg_dbs
  server:create_db(db)
  local out = sh(string.format("cd %s && PGPORT=%d PGDATABASE=%s timeout 170 node --import tsx src/bench-persisted.ts",
    PEER_DIR, server.port, db))
  local line = out:match("(%b{})%s*$")
  local ok, doc = pcall(cjson.decode, line or "")
  if not ok or type(doc) ~= "table" or not doc.throughput or not doc.sequential then
    log("the peer's bench-persisted gave no result:\n%s", out:sub(-2000))
    return nil
  end
  return {
    ["persisted"] = { calls_per_s = doc.throughput.calls_per_s, p50_us = doc.throughput.p50_us,
                      seq_calls_per_s = doc.sequential.calls_per_s, seq_p50_us = doc.sequential.p50_us,
                      seq_p99_us = doc.sequential.p99_us },
  }
end

---------------------------------------------------------------------------
-- run
---------------------------------------------------------------------------
local wanted = {}
for _, a in ipairs(arg) do if a ~= "" then wanted[a] = true end end
if os.getenv("SCENARIO") and os.getenv("SCENARIO") ~= "" then wanted[os.getenv("SCENARIO")] = true end
local function selected(s) return next(wanted) == nil or wanted[s.id] or wanted[tostring(s.num)] end
for name in pairs(wanted) do
  local known = false
  for _, s in ipairs(scenarios) do if s.id == name or tostring(s.num) == name then known = true end end
  if not known then
    local ids = {}
    for _, s in ipairs(scenarios) do ids[#ids + 1] = s.id end
    io.stderr:write("unknown scenario '" .. name .. "'; known: " .. table.concat(ids, ", ") .. "\n")
    os.exit(2)
  end
end

local peer_on = PEER == "effect" and peer_prepare()
if PEER and PEER ~= "effect" then log("PEER=%s is not known; only 'effect'", PEER) end

local results, peer_results = {}, {}
local want_peer_local = peer_on and (selected(scenarios[1]) or selected(scenarios[2]) or selected(scenarios[3]))
local function selected_id(id)
  for _, s in ipairs(scenarios) do if s.id == id then return selected(s) end end
end
local want_peer_cluster = peer_on and (selected_id("cross-runner") or selected_id("cross-runner-seq")
  or selected_id("failover-kill"))
local want_peer_persisted = peer_on and selected_id("persisted")
for run = 1, RUNS do
  for _, s in ipairs(scenarios) do
    if selected(s) and s.run then
      log("run %d/%d: %s", run, RUNS, s.id)
      local ok, v = pcall(s.run)
      if ok then
        results[s.id] = results[s.id] or {}
        table.insert(results[s.id], v)
      else
        log("  %s failed: %s", s.id, tostring(v))
      end
    end
  end
  for _, peer in ipairs {
    { want_peer_local, "bench-local", peer_local },
    { want_peer_cluster, "bench-cluster", peer_cluster },
    { want_peer_persisted, "bench-persisted", peer_persisted },
  } do
    local want, name, fn = peer[1], peer[2], peer[3]
    if want then
      log("run %d/%d: Effect peer, %s", run, RUNS, name)
      local ok, p = pcall(fn)
      if not ok then log("  the peer's %s failed: %s", name, tostring(p)) end
      if ok and p then
        for id, v in pairs(p) do
          peer_results[id] = peer_results[id] or {}
          table.insert(peer_results[id], v)
        end
      end
    end
  end
end

local function med_of(list)
  if not list or #list == 0 then return nil end
  local out = {}
  for k in pairs(list[1]) do
    local xs = {}
    for _, v in ipairs(list) do xs[#xs + 1] = v[k] end
    out[k] = median(xs)
  end
  return out
end

local machine = (sh("nproc"):gsub("%s+$", "")) .. " cores, "
  .. ((sh("grep -m1 'model name' /proc/cpuinfo"):match(":%s*(.-)%s*$")) or "?")
  .. ", " .. ((sh("free -g | awk '/Mem:/{print $2}'"):gsub("%s+$", "")) .. " GiB")
local when = os.date("!%Y-%m-%d %H:%M UTC")
os.execute("mkdir -p " .. ROOT .. "/bench/results")
local jsonl = assert(io.open(ROOT .. "/bench/results/results.jsonl", "a"))

local rows = {}
local header = "| # | scenario | luster (median) | Effect peer (median) | × better | target | met |"
rows[1] = header
rows[2] = "|---|---|---|---|---|---|---|"
for _, s in ipairs(scenarios) do
  if selected(s) then
    local lm, pm = med_of(results[s.id]), med_of(peer_results[s.id])
    local lcell, pcell, ratio, met = "", "", "", ""
    if s.missing then
      lcell, met = "not measured: " .. s.missing, "—"
    elseif lm then
      lcell = s.show(lm)
      met = s.met(lm) and "yes" or "no"
    else
      lcell, met = "failed (see log)", "no"
    end
    if pm then
      pcell = s.show(setmetatable(pm, { __index = function() return 0 end }))
      -- How many times better luster is: a rate over the peer's, or the
      -- peer's time over luster's where lower is better; one ratio per
      -- figure for a scenario with two (s.ratios), "/"-separated as its target.
      local cells = {}
      for i, f in ipairs(s.ratios or { { key = s.main, lower_better = s.lower_better } }) do
        local l, p = lm and lm[f.key], pm[f.key]
        cells[i] = "–"
        if l and p and l > 0 and p > 0 then
          cells[i] = string.format("%.1f×", f.lower_better and p / l or l / p)
        end
      end
      ratio = table.concat(cells, " / ")
      if ratio == "–" then ratio = "" end
    elseif PEER == "effect" and s.peer_key then
      pcell = "no result"
    end
    rows[#rows + 1] = string.format("| %d | %s | %s | %s | %s | %s | %s |", s.num, s.title, lcell, pcell, ratio, s.target, met)
    jsonl:write(cjson.encode {
      scenario = s.id, number = s.num, at = when, machine = machine, runs = RUNS,
      luster = lm or cjson.null, luster_runs = results[s.id] or cjson.null,
      peer = pm or cjson.null, peer_name = pm and "effect 4.1.0" or cjson.null,
      missing = s.missing or cjson.null,
    } .. "\n")
  end
end
jsonl:close()

if pg then pg:destroy() end
if pg_durable then pg_durable:destroy() end

local tbl = table.concat(rows, "\n")
print(tbl)
print(string.format("\n%s; %s; medians of %d run%s", machine, when, RUNS, RUNS == 1 and "" or "s"))

-- Keep the latest full table in bench/README.md.
if next(wanted) == nil then
  local readme_path = ROOT .. "/bench/README.md"
  local readme = H.read_file(readme_path) or ""
  local block = string.format("<!-- latest -->\nMeasured %s on %s, medians of %d runs%s.\n\n%s\n<!-- /latest -->",
    when, machine, RUNS, PEER == "effect" and ", the Effect peer alternating in the same run" or "", tbl)
  local replaced
  readme, replaced = readme:gsub("<!%-%- latest %-%->.-<!%-%- /latest %-%->", function() return block end)
  if replaced == 0 then readme = readme .. "\n" .. block .. "\n" end
  H.write_file(readme_path, readme)
end
