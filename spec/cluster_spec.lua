-- Cluster specs: several runners on loopback over one throwaway PostgreSQL.
-- Each spec gets its own database (so its own cluster) and stops only the
-- runners it started.
package.path = "spec/?.lua;" .. package.path
package.cpath = "build/?.so;" .. package.cpath
local H = require "support.helpers"
local core = require "luster_core"
local PG = require "support.pg"
local History = require "support.history"
local socket = require "socket"

local FIXTURES = H.root .. "/spec/fixtures/cluster"
local SHARDS = 64
local LEASE = "2s"

local pg
local dbs = 0


local url_of_last, db_of_last -- of the cluster new_cluster made last

-- A fresh cluster: a database of its own. Returns a function that starts a
-- runner in it.
local function new_cluster(opts)
  opts = opts or {}
  dbs = dbs + 1
  local url = pg:create_db("c" .. dbs)
  url_of_last, db_of_last = url, "c" .. dbs
  local start, stop_all = H.cluster_runners(url, { dir = FIXTURES, shards = opts.shards or SHARDS,
    lease = opts.lease or LEASE, args = "--max-idle 60s " .. (opts.args or ""), env = opts.env })
  return start, stop_all, url
end

-- Runs fn(start) in a fresh cluster. Whatever fn does, every runner it
-- started is stopped, then opts.cleanup(ok) runs; then fn's error, if any,
-- fails the spec (prefixed with opts.what).
local function in_cluster(opts, fn)
  opts = opts or {}
  local start, stop_all = new_cluster(opts)
  local ok, err = pcall(fn, start)
  stop_all()
  if opts.cleanup then opts.cleanup(ok) end
  if not ok then error(opts.what and (opts.what .. ": " .. tostring(err)) or err, 0) end
end

-- Runs one runner of the cluster at url with exactly the environment env
-- (LUSTER_CLUSTER_SECRET unset unless given), expecting it to be refused at
-- start; one that keeps running is stopped after 20 s (exit code 124).
-- Returns its exit code and output.
local function run_once(url, env)
  local out = os.tmpname()
  local vars = { "-u LUSTER_CLUSTER_SECRET" }
  for k, v in pairs(env) do vars[#vars + 1] = k .. "=" .. H.sh_quote(v) end
  local cmd = string.format("env %s timeout 20 %s run %s --storage %s --listen 127.0.0.1:%d --http 127.0.0.1:0"
    .. " --shards %d --lease %s >%s 2>&1", table.concat(vars, " "), H.sh_quote(H.bin), H.sh_quote(FIXTURES),
    H.sh_quote(url), H.free_port(), SHARDS, LEASE, H.sh_quote(out))
  local _, how, code = os.execute(cmd)
  local text = H.read_file(out) or ""
  os.remove(out)
  if how == "signal" then code = 128 + code end
  if os.getenv("LUSTER_ASAN") then
    assert(not text:find("Sanitizer", 1, true) and not text:find("runtime error:", 1, true), "sanitizer report:\n" .. text)
  end
  return code, text
end

-- shard -> runner address, from a /cluster document.
local function owners(doc)
  local map = {}
  for _, o in ipairs(doc.shards.owners) do
    for _, range in ipairs(o.ranges) do
      for s = range[1], range[2] do map[s] = o.runner end
    end
  end
  return map
end

local function hit(r, id)
  local status, doc = r:call("Probe", id, "Hit", {})
  return status, type(doc) == "table" and doc.value or doc
end

-- Starts the load generator; returns a handle with :finish() -> records.
local function load(runners, conc, nids)
  local urls = {}
  for _, r in ipairs(runners) do urls[#urls + 1] = r.url end
  return H.load(urls, conc, nids)
end

local function failures(recs)
  local bad = {}
  for _, r in ipairs(recs) do
    if r.status ~= 200 then bad[#bad + 1] = r end
  end
  return bad
end

local function describe_failures(bad)
  local t = {}
  for i = 1, math.min(5, #bad) do t[#t + 1] = string.format("%s status %d", bad[i].id, bad[i].status) end
  return #bad .. " failed calls: " .. table.concat(t, ", ")
end

-- No two instances of one id ever served at overlapping times: the safety
-- property of single ownership, from the handlers' own clock readings,
-- checked by the history checker. Returns the number of handovers checked.
local function check_single_owner(recs)
  local events = {}
  for _, r in ipairs(recs) do
    if r.status == 200 then
      events[#events + 1] = { ev = "run", type = "Probe", id = r.id, runner = r.runner, instance = r.instance,
                              start = r.at, ["end"] = r.at }
    end
  end
  return History.assert(events).handovers
end

describe("cluster", function()
  setup(function() pg = PG.start() end)
  teardown(function() if pg then pg:destroy() end end)

  it("serves every id from one runner, reached from any runner's gateway and from other entities", function()
    in_cluster({}, function(start)
      local rs = { start(), start(), start() }
      local doc = H.wait_cluster(rs[1], 3)
      assert.are.equal(3, #doc.runners)
      local seen = {}
      for i = 1, 60 do
        local id = "p" .. i
        local where
        for _, r in ipairs(rs) do
          local status, v = hit(r, id)
          assert.are.equal(200, status, "call to " .. id .. " through " .. r.url)
          where = where or v.runner
          assert.are.equal(where, v.runner, id .. " answered from two runners")
        end
        seen[where] = true
        -- An entity calling the Probe from whichever runner it lives on.
        local status, v = rs[(i % 3) + 1]:call("Relay", "r" .. i, "Via", { target = id })
        assert.are.equal(200, status)
        assert.are.equal(where, v.value.runner)
      end
      local n = 0
      for _ in pairs(seen) do n = n + 1 end
      assert.are.equal(3, n, "ids should spread over all three runners")
      -- The shard map is the same from every runner.
      local o1 = owners(rs[1]:cluster())
      for k = 2, 3 do assert.are.same(o1, owners(rs[k]:cluster())) end
      -- Visibility: metrics name the cluster's state.
      assert.are.equal(3, rs[1]:metric("luster_cluster_runners"))
      assert.is_true(rs[1]:metric("luster_shards_held") > 0)
      assert.is_true(rs[1]:metric("luster_lease_refreshes_total") > 0)
      assert.is_true(rs[1]:metric("luster_lease_refresh_seconds") >= 0)
      assert.is_true(rs[1]:metric("luster_router_forwarded_total") > 0)
      -- A message too large for the runner transport fails at once, saying
      -- why, instead of waiting for its deadline; local ones still work.
      local local_ok, remote_refused = 0, 0
      for i = 1, 12 do
        -- Building 18 MB strings holds the loop for a while on a loaded or
        -- sanitizer build, so a lease refresh can come late and the call be
        -- refused as unavailable (503, retryable): it is sent again then.
        local status, v
        H.wait_for("Push " .. i .. " answered other than unavailable", 30, function()
          status, v = rs[1]:call("Pusher", "push", "Push", { target = "s" .. i, size = 18 * 1024 * 1024 })
          return status ~= 503
        end)
        assert.are.equal(200, status)
        if v.value.ok then local_ok = local_ok + 1
        else
          assert.truthy(v.value.message:find("larger than runners carry", 1, true), v.value.message)
          remote_refused = remote_refused + 1
        end
      end
      assert.is_true(local_ok > 0 and remote_refused > 0, local_ok .. " local, " .. remote_refused .. " refused")
      local code, out = H.cli("status --url " .. rs[2].url)
      assert.are.equal(0, code)
      for _, r in ipairs(rs) do assert.truthy(out:find(r.address, 1, true), "status lists " .. r.address) end
    end)
  end)

  it("says where an id lives from either runner, the non-owner asking the owner", function()
    in_cluster({}, function(start)
      local rs = { start(), start() }
      H.wait_cluster(rs[1], 2)
      local map = owners(rs[1]:cluster())
      local remote_seen = {}
      for i = 1, 12 do
        local id = "w" .. i
        local before = {}
        for k, r in ipairs(rs) do
          local status, doc = r:request("GET", "/entities/Probe/" .. id)
          assert.are.equal(200, status, id .. " through " .. r.url)
          assert.is_false(doc.active)
          assert.are.equal(map[doc.shard], doc.runner)
          if doc.runner ~= r.address then remote_seen[k] = true end
          before[k] = doc
        end
        assert.are.same(before[1], before[2])
        local status, v = hit(rs[1], id)
        assert.are.equal(200, status)
        assert.are.equal(v.runner, before[1].runner)
        for _, r in ipairs(rs) do
          local _, doc = r:request("GET", "/entities/Probe/" .. id)
          assert.is_true(doc.active, id .. " through " .. r.url)
          assert.are.equal(0, doc.mailbox)
        end
      end
      assert.is_true(remote_seen[1] and remote_seen[2], "each runner answered for ids it does not own")
      local status, doc = rs[2]:request("GET", "/entities/Nope/x")
      assert.are.equal(404, status)
      assert.are.equal("unknown entity type 'Nope'", doc.error.message)
    end)
  end)

  it("moves only about a quarter of the shards to a fourth runner joining under load, failing no call", function()
    in_cluster({ args = "--call-timeout 10s" }, function(start)
      local rs = { start(), start(), start() }
      local before = owners(H.wait_cluster(rs[1], 3))
      local L = load(rs, 6, 200)
      local r4 = start()
      local after = owners(H.wait_cluster(rs[1], 4))
      H.wait_for("more calls after the join", 10, function() return L.count() > 500 end)
      local recs = L.finish()
      local bad = failures(recs)
      assert(#bad == 0, describe_failures(bad))
      -- Bounded load may spill a shard or two between old runners; the rest
      -- of what moves goes to the newcomer.
      local moved, spill = 0, 0
      for s = 1, SHARDS do
        if before[s] ~= after[s] then
          moved = moved + 1
          if after[s] ~= r4.address then spill = spill + 1 end
        end
      end
      local fraction = moved / SHARDS
      print(string.format("\n  join: %d of %d shards moved (%.2f; %d between old runners), %d calls, none failed",
        moved, SHARDS, fraction, spill, #recs))
      assert.is_true(fraction > 0.12 and fraction < 0.40, "moved fraction " .. fraction)
      assert.is_true(spill <= math.max(2, moved // 5), spill .. " of " .. moved .. " moved shards went to old runners")
      check_single_owner(recs)
    end)
  end)

  it("hands shards over on SIGTERM under load without failing a call, and carries snapshots along", function()
    in_cluster({ args = "--call-timeout 10s" }, function(start)
      local rs = { start(), start(), start() }
      H.wait_cluster(rs[1], 3)
      -- Counts that live on the leaving runner.
      local mine = {}
      for i = 1, 100 do
        local status, v = hit(rs[1], "p" .. i)
        assert.are.equal(200, status)
        if v.runner == rs[3].address then mine[#mine + 1] = { id = "p" .. i, count = v.count } end
      end
      assert.is_true(#mine > 0)
      local L = load({ rs[1], rs[2] }, 6, 100)
      assert.is_true(rs[3]:stop(15), "the runner exits on SIGTERM")
      H.wait_cluster(rs[1], 2)
      H.wait_for("calls after the hand-off", 10, function() return L.count() > 300 end)
      local recs = L.finish()
      local bad = failures(recs)
      assert(#bad == 0, describe_failures(bad))
      assert.truthy(rs[3]:log_text():find("handed over every shard", 1, true))
      check_single_owner(recs)
      -- The snapshot came along: counts continue rather than restart.
      local continued = 0
      for _, m in ipairs(mine) do
        local status, v = hit(rs[1], m.id)
        assert.are.equal(200, status)
        if v.count > m.count + 1 then continued = continued + 1 end
      end
      assert.are.equal(#mine, continued, "every handed-over instance kept its count")
    end)
  end)

  it("keeps handed-over state of ids never messaged through stop-start cycles, a reload and a third move", function()
    local dir = H.tmpdir()
    os.execute(string.format("cp %s/*.lua %s/", FIXTURES, dir))
    in_cluster({ cleanup = function() H.rmdir(dir) end }, function(start)
      local a = start({ dir = dir })
      local b = start()
      H.wait_cluster(a, 2)
      -- Counts of 1 everywhere; about half of them live on b.
      local on_b = 0
      for i = 1, 80 do
        local status, v = hit(a, "q" .. i)
        assert.are.equal(200, status)
        assert.are.equal(1, v.count)
        if v.runner == b.address then on_b = on_b + 1 end
      end
      assert.is_true(on_b > 10, on_b .. " ids on b")
      local function expect(from, lo, hi, count, when)
        for i = lo, hi do
          local status, v = hit(from, "q" .. i)
          assert.are.equal(200, status)
          assert.are.equal(count, v.count, "q" .. i .. " " .. when .. " (served by " .. v.runner .. ")")
        end
      end
      -- b leaves: its snapshots wait on a, unclaimed. b comes back (a new
      -- runner takes about half the shards again) before anyone asks.
      assert.is_true(b:stop(15), "b exits on SIGTERM")
      H.wait_cluster(a, 1)
      local b2 = start()
      H.wait_cluster(a, 2)
      expect(a, 1, 40, 2, "after leaving and coming back")
      -- A third move of snapshots still unclaimed: they went b -> a -> b2,
      -- and now back to a; a reload on a in between changes nothing.
      assert.is_true(b2:stop(15), "b2 exits on SIGTERM")
      H.wait_cluster(a, 1)
      H.write_file(dir .. "/probe.lua", H.read_file(dir .. "/probe.lua") .. "\n-- edited\n")
      H.wait_for("a to reload probe.lua", 10, function()
        return a:log_text():find("reloaded probe.lua", 1, true)
      end)
      expect(a, 41, 80, 2, "after a third move and a reload")
      -- And once more the other way, for instances that ran in between.
      start()
      H.wait_cluster(a, 2)
      expect(a, 1, 80, 3, "after a fourth move")
    end)
  end)

  it("keeps an unclaimed hand-off snapshot however long its id stays quiet", function()
    in_cluster({}, function(start)
      local a, b, c = start(), start(), start()
      H.wait_cluster(a, 3)
      local on_c = {}
      for i = 1, 60 do
        local status, v = hit(a, "t" .. i)
        assert.are.equal(200, status)
        if v.runner == c.address then on_c[#on_c + 1] = "t" .. i end
      end
      assert.is_true(#on_c > 3, #on_c .. " ids on c")
      -- c's snapshots wait on a and b, unclaimed, for over a minute (longer
      -- than --max-idle); then b leaves, and its own snapshots and c's
      -- arrive on a.
      assert.is_true(c:stop(15), "c exits on SIGTERM")
      local map = owners(H.wait_cluster(a, 2))
      local waiting_on_a = {}
      for _, id in ipairs(on_c) do
        if map[core.shard(id, SHARDS)] == a.address then waiting_on_a[#waiting_on_a + 1] = id end
      end
      assert.is_true(#waiting_on_a > 0, "some of c's snapshots wait on a")
      H.sleep(65) -- the quiet time itself is what this spec is about
      -- Fresh instances on b, whose snapshots reach a when b leaves.
      local fresh_on_b = 0
      for i = 1, 30 do
        local _, v = hit(a, "u" .. i)
        if v.runner == b.address then fresh_on_b = fresh_on_b + 1 end
      end
      assert.is_true(fresh_on_b > 0)
      assert.is_true(b:stop(15), "b exits on SIGTERM")
      H.wait_cluster(a, 1)
      -- Those that waited on a all along first, then those that came via b.
      for _, list in ipairs { { waiting_on_a, "waited on a" }, { on_c, "came via b" } } do
        for _, id in ipairs(list[1]) do
          local status, v = hit(a, id)
          assert.are.equal(200, status)
          assert.is_true(v.count >= 2, id .. " (" .. list[2] .. ") kept its count")
        end
      end
      -- The last runner has nobody to hand its snapshots to: it does not
      -- wait for a taker (the hand-off time is 6 s here).
      local t0 = H.now()
      assert.is_true(a:stop(15), "a exits on SIGTERM")
      assert.is_true(H.now() - t0 < 3 * H.slow, string.format("the last runner took %.1f s to leave", H.now() - t0))
    end)
  end)

  it("serves a killed runner's ids again within about a second", function()
    in_cluster({ args = "--call-timeout 2s" }, function(start)
      local rs = { start(), start(), start() }
      H.wait_cluster(rs[1], 3)
      local victims = {}
      for i = 1, 100 do
        local _, v = hit(rs[1], "p" .. i)
        if v.runner == rs[3].address then victims[#victims + 1] = "p" .. i end
      end
      assert.is_true(#victims > 3)
      local t0 = socket.gettime()
      rs[3]:kill("KILL")
      -- Every victim id answers again (from a survivor).
      local pending = {}
      for _, id in ipairs(victims) do pending[id] = true end
      H.wait_for("the killed runner's ids to answer again", 15, function()
        for id in pairs(pending) do
          local status, v = hit(rs[(#id % 2) + 1], id)
          if status == 200 and v.runner ~= rs[3].address then pending[id] = nil end
        end
        return next(pending) == nil
      end, 0.01)
      local took = socket.gettime() - t0
      print(string.format("\n  kill -9 failover: %d ids served again after %.0f ms", #victims, took * 1000))
      assert.is_true(took < 3 * H.slow, "failover took " .. took .. " s")
      H.wait_cluster(rs[1], 2)
    end)
  end)

  it("never lets a frozen runner serve ids it lost (SIGSTOP past the lease, then SIGCONT)", function()
    in_cluster({ args = "--call-timeout 1s" }, function(start)
      local rs = { start(), start(), start() }
      H.wait_cluster(rs[1], 3)
      local L = load({ rs[1], rs[2] }, 6, 150)
      rs[3]:kill("STOP")
      -- The others take over once its lease has run out.
      H.wait_cluster(rs[1], 2, 30)
      local n = L.count()
      H.wait_for("calls served by the survivors", 10, function() return L.count() > n + 300 end)
      rs[3]:kill("CONT")
      -- It wakes, stops serving what it lost, and comes back as a member.
      H.wait_cluster(rs[1], 3, 30)
      n = L.count()
      H.wait_for("calls after it rejoined", 10, function() return L.count() > n + 300 end)
      local recs = L.finish()
      local checked = check_single_owner(recs)
      assert.is_true(checked > 0, "some ids changed hands")
      assert.truthy(rs[3]:log_text():find("stopped serving", 1, true), "the woken runner fenced its shards")
      -- Every id answers again.
      for i = 1, 150 do assert.are.equal(200, (hit(rs[1], "p" .. i))) end
    end)
  end)

  it("survives a PostgreSQL restart under load", function()
    in_cluster({ args = "--call-timeout 2s" }, function(start)
      local rs = { start(), start(), start() }
      H.wait_cluster(rs[1], 3)
      local L = load({ rs[1], rs[2], rs[3] }, 6, 100)
      pg:restart()
      H.wait_cluster(rs[1], 3, 30)
      local n = L.count()
      H.wait_for("calls after the restart", 15, function() return L.count() > n + 300 end)
      local recs = L.finish()
      check_single_owner(recs)
      -- Calls after the cluster settled all succeed.
      for i = 1, 100 do assert.are.equal(200, (hit(rs[(i % 3) + 1], "p" .. i)), "p" .. i) end
    end)
  end)

  it("shows, on every runner, which script version each runner serves", function()
    local dirs = {}
    local function remove_dirs() for _, d in ipairs(dirs) do H.rmdir(d) end end
    in_cluster({ cleanup = remove_dirs }, function(start)
      for i = 1, 2 do
        dirs[i] = H.tmpdir()
        os.execute(string.format("cp %s/*.lua %s/", FIXTURES, dirs[i]))
      end
      local r1, r2 = start({ dir = dirs[1] }), start({ dir = dirs[2] })
      H.wait_cluster(r1, 2)
      local function versions(from)
        local v = {}
        for _, m in ipairs(from:cluster().runners) do v[m.address] = m.scripts["probe.lua"] end
        return v
      end
      local v = H.wait_for("both runners' versions", 10, function()
        local x = versions(r1)
        return x[r1.address] and x[r2.address] and x
      end)
      assert.are.equal(v[r1.address], v[r2.address])
      -- Edit the script on one runner only: the other sees the new version there.
      H.write_file(dirs[2] .. "/probe.lua", H.read_file(dirs[2] .. "/probe.lua") .. "\n-- edited\n")
      local after = H.wait_for("r2's new version, seen from r1", 10, function()
        local x = versions(r1)
        return x[r2.address] ~= v[r2.address] and x
      end)
      assert.are.equal(v[r1.address], after[r1.address])
      assert.are.same(after, versions(r2))
    end)
  end)

  it("runs a singleton on exactly one runner, and moves it when that runner is killed", function()
    in_cluster({ args = "--call-timeout 2s" }, function(start)
      local rs = { start(), start(), start() }
      H.wait_cluster(rs[1], 3)
      -- Runners that beat in the last 300 ms, as seen through r.
      local function beating(r)
        local status, doc = r:call("Tally", "beacon", "Report", {})
        if status ~= 200 then return nil end
        local who = {}
        for runner, at in pairs(doc.value.beats) do
          if doc.value.now - at < 300000 then who[#who + 1] = runner end
        end
        return who
      end
      local owner = H.wait_for("the singleton to beat", 10, function()
        local who = beating(rs[1])
        return who and #who == 1 and who[1]
      end)
      for _ = 1, 10 do
        local who = beating(rs[1])
        if who then assert.are.equal(1, #who, "runners beating at once: " .. table.concat(who, ", ")) end
        socket.sleep(0.1)
      end
      local victim, observer
      for _, r in ipairs(rs) do
        if r.address == owner then victim = r elseif not observer then observer = r end
      end
      victim:kill("KILL")
      local successor = H.wait_for("another runner to take the singleton over", 15, function()
        local who = beating(observer)
        return who and #who == 1 and who[1] ~= owner and who[1]
      end)
      for _ = 1, 10 do
        local who = beating(observer)
        if who then assert.are.equal(1, #who, "runners beating at once: " .. table.concat(who, ", ")) end
        socket.sleep(0.1)
      end
      assert.are_not.equal(owner, successor)
    end)
  end)

  it("stops serving while PostgreSQL is down past the lease, and serves again when it returns", function()
    -- If the spec fails half-way, the next specs still need the server.
    local function server_back(ok) if not ok then pcall(pg.restart, pg) end end
    in_cluster({ args = "--call-timeout 1s", cleanup = server_back }, function(start)
      local rs = { start(), start() }
      H.wait_cluster(rs[1], 2)
      assert.are.equal(200, (hit(rs[1], "p1")))
      pg:stop()
      -- Leases cannot be confirmed: every runner fences, says so, and calls
      -- fail at their deadline instead of running on an unconfirmed lease.
      for _, r in ipairs(rs) do
        H.wait_for("the runner to stop serving", 15, function()
          return r:request("GET", "/health") == 503 and r:metric("luster_shards_held") == 0
        end)
      end
      local status, doc = hit(rs[1], "p2")
      assert.are.equal(504, status)
      assert.are.equal("timeout", doc.error.kind)
      assert.is_true(rs[1]:metric("luster_lease_fences_total") + rs[2]:metric("luster_lease_fences_total") > 0)
      pg:restart()
      H.wait_cluster(rs[1], 2, 30)
      for i = 1, 20 do assert.are.equal(200, (hit(rs[(i % 2) + 1], "p" .. i))) end
      for _, r in ipairs(rs) do assert.are.equal(200, (r:request("GET", "/health"))) end
    end)
  end)

  it("refuses a runner whose shard count or lease differs from the cluster's", function()
    in_cluster({}, function(start)
      local r1 = start()
      H.wait_cluster(r1, 1)
      local r2 = start({ shards = 32, wait = false })
      H.wait_for("the mismatched runner to exit", 15, function() return not H.alive(r2.pid) end)
      local text = r2:log_text()
      assert.truthy(text:find("--shards " .. SHARDS, 1, true), text)
      assert.truthy(text:find("--shards 32", 1, true), text)
      local r3 = start({ lease = "3s", wait = false })
      H.wait_for("the runner with another lease to exit", 15, function() return not H.alive(r3.pid) end)
      text = r3:log_text()
      assert.truthy(text:find("lease of 2000 ms", 1, true), text)
      assert.truthy(text:find("--lease 3000ms", 1, true), text)
      assert.are.equal(200, (hit(r1, "p1")))
    end)
  end)

  it("refuses a peer with the wrong secret, and garbage on the runner port, and keeps serving", function()
    in_cluster({ env = { LUSTER_CLUSTER_SECRET = "s3cret" } }, function(start)
      local r1 = start()
      local r2 = start()
      H.wait_cluster(r1, 2)
      -- Garbage, an oversized length and a truncated request sent before
      -- authenticating each close that connection only.
      local host, port = r1.address:match("^(.*):(%d+)$")
      for _, junk in ipairs { "GET / HTTP/1.1\r\n\r\n", "\0\0\0\5\4abc", string.rep("\255", 64) } do
        local c = assert(socket.connect(host, tonumber(port)))
        c:settimeout(15) -- a truncated frame waits for the handshake timeout (5 s)
        c:send(junk)
        -- The server's greeting may come first; then the connection closes.
        local e
        repeat
          local d, err = c:receive(1)
          e = err
        until not d
        assert.are.equal("closed", e)
        c:close()
      end
      assert.is_true(r1:metric("luster_transport_auth_failures_total") + r1:metric("luster_transport_protocol_errors_total") >= 3)
      -- A runner with another secret is refused at start (see below); the
      -- others keep serving.
      local code, text = run_once(url_of_last, { LUSTER_CLUSTER_SECRET = "wrong" })
      assert.are_not.equal(0, code, text)
      assert.truthy(text:find("cluster secret mismatch", 1, true), text)
      for i = 1, 30 do assert.are.equal(200, (hit(r1, "p" .. i))) end
      assert.are.equal(2, #r1:cluster().runners)
    end)
  end)

  it("refuses at start a runner whose cluster secret differs from the live runners', or that has none", function()
    local secret, other = "s3cret-of-the-cluster", "an0ther-secret"
    in_cluster({ env = { LUSTER_CLUSTER_SECRET = secret } }, function(start)
      local r1 = start()
      H.wait_cluster(r1, 1)
      local function refused(env, problem)
        local code, text = run_once(url_of_last, env)
        assert.are_not.equal(0, code, text)
        assert.are_not.equal(124, code, "the runner kept running: " .. text)
        assert.truthy(text:find("cluster secret mismatch: " .. problem, 1, true), text)
        assert.truthy(text:find(r1.address, 1, true), "names the live runner: " .. text)
        -- Nothing about either secret is revealed.
        assert.falsy(text:find(secret, 1, true), text)
        assert.falsy(text:find(other, 1, true), text)
      end
      refused({ LUSTER_CLUSTER_SECRET = other }, "this runner's LUSTER_CLUSTER_SECRET does not match the cluster's")
      refused({}, "the cluster's runners have a LUSTER_CLUSTER_SECRET and this runner has none")
      assert.are.equal(1, #r1:cluster().runners)
      for i = 1, 10 do assert.are.equal(200, (hit(r1, "p" .. i))) end
      -- The same secret joins.
      local r2 = start()
      H.wait_cluster(r1, 2)
      assert.are.equal(200, (hit(r2, "p1")))
    end)
    -- And the reverse: a cluster without a secret refuses a runner with one.
    in_cluster({}, function(start)
      local r1 = start()
      H.wait_cluster(r1, 1)
      local code, text = run_once(url_of_last, { LUSTER_CLUSTER_SECRET = secret })
      assert.are_not.equal(0, code, text)
      assert.are_not.equal(124, code, "the runner kept running: " .. text)
      assert.truthy(text:find("cluster secret mismatch: this runner has a LUSTER_CLUSTER_SECRET and the cluster's "
        .. "runners have none", 1, true), text)
      assert.falsy(text:find(secret, 1, true), text)
      assert.are.equal(1, #r1:cluster().runners)
    end)
  end)

  it("assigns no shards to a runner that its peers cannot authenticate", function()
    in_cluster({ env = { LUSTER_CLUSTER_SECRET = "s3cret" } }, function(start)
      local r1 = start()
      H.wait_cluster(r1, 1)
      -- r1 publishes no proof, as a runner of an older luster would: the
      -- check at start cannot refuse the next runner, so the second line
      -- has to keep it from taking shards.
      pg:psql("UPDATE luster_runners SET secret_proof = NULL", db_of_last)
      local r2 = start({ env = { LUSTER_CLUSTER_SECRET = "zq-other-9" }, args = "--call-timeout 500ms" })
      local doc = H.wait_cluster(r1, 2)
      local seen
      for _, m in ipairs(doc.runners) do
        if m.address == r2.address then
          seen = m
          assert.are.equal(0, m.shards_assigned)
          assert.are.equal("secret mismatch", m.status)
          assert.is_false(m.healthy)
        end
      end
      assert.truthy(seen, "r1 lists r2")
      for i = 1, 30 do
        local status, v = hit(r1, "p" .. i)
        assert.are.equal(200, status)
        assert.are.equal(r1.address, v.runner)
      end
      H.wait_for("r1 to name the problem", 5, function()
        return r1:log_text():find("cluster secret mismatch: runner " .. r2.address, 1, true)
      end)
      assert.falsy(r1:log_text():find("zq-other-9", 1, true))
      -- What r2 sends is refused at the handshake: its calls fail at their
      -- deadline instead of reaching the owner, and r1 counts the refusals.
      local before = r1:metric("luster_transport_auth_failures_total")
      local refused = 0
      for i = 1, 10 do
        if hit(r2, "p" .. i) ~= 200 then refused = refused + 1 end
      end
      assert.are.equal(10, refused)
      -- r2 redials only when its backoff allows, so the refusal r1 counts may
      -- come after the calls above: keep calling until it does.
      H.wait_for("r1 to count refused handshakes", 15, function()
        if r1:metric("luster_transport_auth_failures_total") > before then return true end
        assert.are_not.equal(200, (hit(r2, "p1")))
      end)
    end)
  end)

  it("hands every shard back and takes none when an earlier runner with another secret returns", function()
    in_cluster({ env = { LUSTER_CLUSTER_SECRET = "s3cret" } }, function(start)
      local r1 = start()
      H.wait_cluster(r1, 1)
      -- r1 is cut off past its lease: it is no longer live, so a runner with
      -- another secret passes the check at start and takes every shard.
      r1:kill("STOP")
      H.wait_for("r1's lock session to end", 15, function()
        return pg:psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'luster lock'",
          db_of_last) == "0\n"
      end, 0.1)
      local w = start({ env = { LUSTER_CLUSTER_SECRET = "zq-other-9" } })
      H.wait_cluster(w, 1)
      -- r1 comes back: w finds that the runner registered before it does not
      -- prove its secret, so it takes no shards and hands them all to r1.
      r1:kill("CONT")
      H.wait_for("r1 to hold every shard", 30, function()
        return r1:metric("luster_shards_held") == SHARDS and w:metric("luster_shards_held") == 0
      end, 0.1)
      H.wait_for("w to report itself unhealthy", 10, function() return w:request("GET", "/health") == 503 end)
      for _, m in ipairs(w:cluster().runners) do
        assert.are.equal("secret mismatch", m.status, m.address)
        assert.are.equal(0, m.shards_assigned, m.address)
      end
      assert.truthy(w:log_text():find("cluster secret mismatch: this runner's LUSTER_CLUSTER_SECRET does not match "
        .. "the cluster's; taking no shards", 1, true), w.log)
      for i = 1, 20 do
        local status, v = hit(r1, "p" .. i)
        assert.are.equal(200, status)
        assert.are.equal(r1.address, v.runner)
      end
    end)
  end)

  it("keeps one owner per id through a seeded storm of joins, leaves, kills and freezes under load", function()
    local seed = tonumber(os.getenv("LUSTER_STORM_SEED") or "") or 20261124
    math.randomseed(seed)
    in_cluster({ args = "--call-timeout 1s --shutdown-timeout 4s", what = "storm seed " .. seed }, function(start)
      local live = { start(), start(), start() }
      H.wait_cluster(live[1], 3)
      local L = load({ live[1] }, 6, 120)
      local actions = { "join", "term", "kill", "freeze" }
      local done = {}
      for step = 1, 6 do
        local action = actions[math.random(#actions)]
        if #live <= 2 then action = "join" end
        -- The load goes through live[1]; never act on it.
        local k = math.random(2, #live)
        local victim = live[k]
        if action == "join" then
          live[#live + 1] = start()
        elseif action == "term" then
          assert.is_true(victim:stop(15), "step " .. step .. ": SIGTERM exits")
          table.remove(live, k)
        elseif action == "kill" then
          victim:kill("KILL")
          H.wait_for("the killed runner to exit", 10, function() return not H.alive(victim.pid) end)
          table.remove(live, k)
        else -- a freeze shorter than the lease: nothing may move, nothing may break
          victim:kill("STOP")
          socket.sleep(0.3)
          victim:kill("CONT")
        end
        H.wait_cluster(live[1], #live, 30)
        done[#done + 1] = action
        local n = L.count()
        H.wait_for("calls after step " .. step .. " (" .. action .. ")", 15, function() return L.count() > n + 100 end)
      end
      local recs = L.finish()
      check_single_owner(recs)
      print(string.format("\n  storm (seed %d): %s; %d calls", seed, table.concat(done, ", "), #recs))
      for i = 1, 120 do assert.are.equal(200, (hit(live[1], "p" .. i)), "p" .. i) end
      for _, r in ipairs(live) do assert.is_true(H.alive(r.pid), "a runner died on its own: " .. r.log) end
    end)
  end)
end)
