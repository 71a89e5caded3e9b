-- Singletons and cron jobs on one runner.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"
local PG = require "support.pg"
local socket = require "socket"

describe("singletons and cron jobs", function()
  local r
  setup(function() r = H.start(H.root .. "/spec/fixtures/background") end)
  teardown(function() r:stop() end)

  local function list(id)
    local status, doc = r:call("Recorder", id, "List", {})
    assert.are.equal(200, status)
    return doc.value
  end

  it("runs a singleton as soon as the runner starts, and keeps it running", function()
    local seen = H.wait_for("the Ticker singleton to record 5 ticks", 5, function()
      local l = list("ticks")
      return #l >= 5 and l
    end)
    for i = 1, #seen do assert.are.equal(i, seen[i]) end
  end)

  it("restarts a singleton that raised", function()
    local seen = H.wait_for("Flaky to be started twice", 5, function()
      local l = list("flaky")
      return #l >= 2 and l
    end)
    assert.are.same({ 1, 2 }, seen)
    assert.matches("singleton 'Flaky' raised: .*first start fails; restarting it in 1 s", r:log_text())
  end)

  it("runs a cron job once per scheduled second, on time", function()
    local seen = H.wait_for("three cron ticks", 6, function()
      local l = list("cron")
      return #l >= 3 and l
    end)
    for i, t in ipairs(seen) do
      assert.are.equal(0, t % 1000)
      if i > 1 then assert.are.equal(1000, t - seen[i - 1]) end
    end
    -- The last tick ran at (or just after) its instant, not a poll later.
    assert.is_true(socket.gettime() * 1000 - seen[#seen] < 1000 * H.slow)
  end)

  it("lists singletons and cron jobs in /cluster", function()
    local kinds = {}
    for _, t in ipairs(r:cluster().types) do kinds[t.name] = t end
    assert.are.equal("singleton", kinds.Ticker.kind)
    assert.are.equal("cron", kinds.EverySecond.kind)
    assert.are.equal("* * * * * *", kinds.EverySecond.schedule)
  end)

  it("shows where each singleton and cron job runs, since when, and the cron's last and next instants", function()
    local me = r:cluster().runner.address
    local kinds = H.wait_for("EverySecond to have run", 5, function()
      local kinds = {}
      for _, t in ipairs(r:cluster().types) do kinds[t.name] = t end
      return type(kinds.EverySecond.last) == "number" and kinds
    end)
    local now = socket.gettime() * 1000
    local ticker, cron = kinds.Ticker, kinds.EverySecond
    assert.are.equal(me, ticker.runner)
    assert.is_true(ticker.running)
    assert.are.equal(1, ticker.active)
    assert.is_true(ticker.since > 0 and ticker.since <= now, "since " .. tostring(ticker.since))
    assert.are.equal(me, cron.runner)
    assert.are.equal(1, cron.active)
    assert.are.equal(0, cron.last % 1000)
    assert.are.equal(cron.last + 1000, cron.next)
    assert.is_true(cron.last <= now and cron.next > now - 1000 * H.slow, ("last %.0f next %.0f now %.0f"):format(
      cron.last, cron.next, now))
    -- `luster status` prints them in a table of their own, with those instants.
    local code, out = H.cli("status --url " .. r.url)
    assert.are.equal(0, code)
    local when = "%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d"
    assert.matches("SINGLETON / CRON%s+KIND%s+RUNNER%s+SINCE%s+LAST%s+NEXT", out)
    assert.matches("\nTicker%s+singleton%s+" .. me:gsub("%p", "%%%0") .. "%s+" .. when .. "\n", out)
    assert.matches("\nEverySecond%s+cron%s+" .. me:gsub("%p", "%%%0") .. "%s+" .. when .. "%s+" .. when .. "%s+"
      .. when .. "\n", out)
    assert.matches("\nTicker%s+singleton%s+jobs%.lua%s+%x+%s+1%s", out)
  end)
end)

describe("a singleton that loops without waiting", function()
  it("is stopped by the instruction budget and restarted, while the runner serves", function()
    local r = H.start(H.root .. "/spec/fixtures/background_spin", { args = "--instruction-budget 1000000" })
    local ok, err = pcall(function()
      H.wait_for("Spinner to be stopped twice", 10, function()
        local _, n = r:log_text():gsub("singleton 'Spinner' raised: [^\n]*instruction budget exceeded: the job ran "
          .. "more than 1000000 Lua VM instructions without waiting", "")
        return n >= 2
      end)
      local status = r:request("GET", "/health")
      assert.are.equal(200, status)
    end)
    r:stop()
    assert(ok, err)
  end)
end)

describe("singletons and cron jobs in a cluster", function()
  local pg
  setup(function() pg = PG.start() end)
  teardown(function() if pg then pg:destroy() end end)

  -- Only the runner that runs a job knows since when (and a cron job's
  -- instants); `luster status` on another runner asks that one.
  it("names the runner of each job on every runner, and `luster status` anywhere shows since when", function()
    local start, stop_all = H.cluster_runners(pg:create_db("background"), { dir = H.root .. "/spec/fixtures/background",
      shards = 16, lease = "2s" })
    local ok, err = pcall(function()
      local rs = { start(), start() }
      H.wait_cluster(rs[1], 2)
      local by_address = { [rs[1].address] = rs[1], [rs[2].address] = rs[2] }
      local function jobs(r)
        local t = {}
        for _, ty in ipairs(r:cluster().types) do t[ty.name] = ty end
        return t
      end
      -- Both runners name the same runner for each job; that one runs it.
      local placed = H.wait_for("every job placed, running, and the cron job to have run", 10, function()
        local one, two = jobs(rs[1]), jobs(rs[2])
        local placed = {}
        for _, name in ipairs { "Ticker", "Flaky", "EverySecond" } do
          local where = one[name].runner
          if type(where) ~= "string" or two[name].runner ~= where or not by_address[where] then return false end
          local runs = jobs(by_address[where])[name]
          if not runs.running or type(runs.since) ~= "number" then return false end
          if name == "EverySecond" and type(runs.last) ~= "number" then return false end
          placed[name] = where
        end
        return placed
      end, 0.1)
      local when = "%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d"
      for name, where in pairs(placed) do
        local other = by_address[where] == rs[1] and rs[2] or rs[1]
        local there = jobs(other)[name]
        assert.is_false(there.running)
        assert.are.equal(0, there.active)
        local code, out = H.cli("status --url " .. other.url)
        assert.are.equal(0, code)
        local row = "\n" .. name .. "%s+%a+%s+" .. where:gsub("%p", "%%%0") .. "%s+" .. when
          .. (name == "EverySecond" and ("%s+" .. when .. "%s+" .. when) or "") .. "\n"
        assert.matches(row, out)
      end
    end)
    stop_all()
    assert(ok, err)
  end)
end)
