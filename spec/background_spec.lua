-- Singletons and cron jobs on one runner.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"
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
