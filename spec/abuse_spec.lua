-- Abuse that must stay bounded: connections beyond the descriptor limit, peers
-- that never authenticate, a burst of distinct ids, a flood of persisted
-- messages to one id. Each asserts a stated bound on memory and descriptors
-- and that the runner still answers afterwards.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"
local PG = require "support.pg"
local socket = require "socket"
local cjson = require "cjson"

local FIXTURES = H.root .. "/spec/fixtures/abuse"

-- What /proc says about a process: resident memory (kB), open descriptors,
-- CPU time used so far (seconds).
local function rss_kb(pid)
  return tonumber((H.read_file("/proc/" .. pid .. "/status") or ""):match("VmRSS:%s*(%d+)")) or 0
end

local function fds(pid)
  local p = io.popen("ls /proc/" .. pid .. "/fd 2>/dev/null | wc -l")
  local n = tonumber(p:read("*l"))
  p:close()
  return n
end

local CLK_TCK = (function()
  local p = io.popen("getconf CLK_TCK")
  local n = tonumber(p:read("*l")) or 100
  p:close()
  return n
end)()

local function cpu_seconds(pid)
  local stat = H.read_file("/proc/" .. pid .. "/stat") or ""
  local rest = stat:match("^%d+ %b() (.*)$") or ""
  local f = {}
  for w in rest:gmatch("%S+") do f[#f + 1] = w end
  -- utime and stime are fields 14 and 15 of stat; rest starts at field 3.
  return ((tonumber(f[12]) or 0) + (tonumber(f[13]) or 0)) / CLK_TCK
end

-- Sends `reqs` (list of {path, body}) pipelined on one keep-alive connection
-- in batches of 100; returns how many answered 2xx.
local function pipeline(r, reqs)
  local c = r:connect()
  local ok = 0
  for from = 1, #reqs, 100 do
    local batch = {}
    for i = from, math.min(#reqs, from + 99) do
      local q = reqs[i]
      batch[#batch + 1] = string.format("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", q[1], #q[2], q[2])
    end
    assert(c:send(table.concat(batch)))
    for _ = 1, #batch do
      local status, err = H.read_response(c)
      assert(status, "no answer in the pipeline: " .. tostring(err))
      if status >= 200 and status < 300 then ok = ok + 1 end
    end
  end
  c:close()
  return ok
end

local function answers(r)
  local status = r:call("Tally", "alive", "Touch", {})
  return status == 200
end

describe("abuse that must stay bounded", function()
  local r
  after_each(function()
    if r then r:stop() end
    r = nil
  end)

  it("accepts and drops connections beyond the descriptor limit without spinning, within 50 MB, and serves once they close", function()
    r = H.start(FIXTURES)
    local base, base_rss = fds(r.pid), rss_kb(r.pid)
    -- 40 descriptors to spare, then 300 clients that connect and wait.
    local limit = base + 40
    assert(os.execute(string.format("prlimit --pid %d --nofile=%d:%d", r.pid, limit, limit)), "prlimit failed")
    local held = {}
    local ok, err = pcall(function()
      for i = 1, 300 do
        local c = socket.tcp()
        c:settimeout(2)
        if c:connect("127.0.0.1", r.port) then held[#held + 1] = c else c:close() end
        if i % 50 == 0 then socket.sleep(0.01) end
      end
      H.wait_for("the runner to reach its descriptor limit", 10, function() return fds(r.pid) >= limit - 2 end)
      -- libuv's EMFILE problem: a listening socket with pending connections
      -- it cannot accept stays readable, and a naive loop spins on it. Bound:
      -- under a quarter of one core while the clients wait.
      local cpu0, t0 = cpu_seconds(r.pid), H.now()
      socket.sleep(2)
      local used, spent = cpu_seconds(r.pid) - cpu0, H.now() - t0
      assert(used < 0.25 * spent * H.slow, string.format("the runner used %.2fs of CPU in %.2fs at its descriptor limit",
        used, spent))
      print(string.format("\n  at the descriptor limit (%d): %.2fs of CPU in %.2fs", limit, used, spent))
      assert(rss_kb(r.pid) - base_rss < 50 * 1024, "RSS grew by " .. (rss_kb(r.pid) - base_rss) .. " kB")
      assert.is_true(H.alive(r.pid), "the runner died at its descriptor limit")
    end)
    for _, c in ipairs(held) do c:close() end
    if not ok then error(err, 0) end
    H.wait_for("the runner to answer after the clients left", 10, function() return answers(r) end)
    H.wait_for("descriptors back near " .. base, 10, function() return fds(r.pid) <= base + 5 end)
    assert.is_true(r:stop(), "the runner did not stop on SIGTERM")
  end)

  it("serves a burst of 20 000 distinct ids within 200 MB, and passivates them all", function()
    r = H.start(FIXTURES, { args = "--max-idle 1s" })
    local base = rss_kb(r.pid)
    local reqs = {}
    for i = 1, 20000 do reqs[i] = { "/entities/Tally/burst-" .. i .. "/Touch", "{}" } end
    local peak = base
    for from = 1, #reqs, 2000 do
      local part = { table.unpack(reqs, from, from + 1999) }
      assert.are.equal(#part, pipeline(r, part))
      peak = math.max(peak, rss_kb(r.pid))
    end
    assert(peak - base < 200 * 1024, string.format("RSS grew by %d kB during the burst", peak - base))
    H.wait_for("every burst instance to passivate", 20, function()
      return r:metric('luster_active_instances{type="Tally"}') == 0
    end, 0.2)
    assert.is_true(answers(r))
    assert(rss_kb(r.pid) - base < 200 * 1024, "RSS after passivation: " .. rss_kb(r.pid) .. " kB")
    assert(fds(r.pid) < 64, "descriptors after the burst: " .. fds(r.pid))
  end)

  it("takes a flood of 5 000 persisted messages to one id within 100 MB, runs each once, and keeps answering", function()
    r = H.start(FIXTURES, { args = "--retention 2s" })
    local base = rss_kb(r.pid)
    local reqs = {}
    for i = 1, 5000 do
      reqs[i] = { "/entities/Tally/flood/Add?discard=1", cjson.encode { key = "k" .. i, amount = 1 } }
    end
    local peak = base
    for from = 1, #reqs, 1000 do
      local part = { table.unpack(reqs, from, from + 999) }
      assert.are.equal(#part, pipeline(r, part))
      peak = math.max(peak, rss_kb(r.pid))
      -- Other ids are served while the flood is queued.
      assert.is_true(answers(r), "the runner stopped answering other ids during the flood")
    end
    H.wait_for("every flooded message to run", 60, function()
      local status, doc = r:call("Tally", "flood", "Count", {})
      return status == 200 and doc.value == 5000
    end, 0.2)
    -- The same keys again: deduplicated, so the total stays.
    assert.are.equal(100, pipeline(r, { table.unpack(reqs, 1, 100) }))
    local status, doc = r:call("Tally", "flood", "Count", {})
    assert.are.equal(200, status)
    assert.are.equal(5000, doc.value)
    peak = math.max(peak, rss_kb(r.pid))
    assert(peak - base < 100 * 1024, string.format("RSS grew by %d kB during the flood", peak - base))
    assert(fds(r.pid) < 64, "descriptors after the flood: " .. fds(r.pid))
  end)

  describe("on the runner transport", function()
    local pg
    setup(function() pg = PG.start() end)
    teardown(function() if pg then pg:destroy() end end)

    it("closes 500 peers that connect and never authenticate, within 100 MB and their descriptors, and keeps serving", function()
      local port = H.free_port()
      r = H.start(FIXTURES, { args = string.format("--storage %s --listen 127.0.0.1:%d --shards 16 --lease 2s",
        pg:create_db("abuse"), port) })
      H.wait_for("the runner to hold every shard", 20, function() return r:cluster().runners[1].shards == 16 end)
      local base_fds, base_rss = fds(r.pid), rss_kb(r.pid)
      local held = {}
      local ok, err = pcall(function()
        for _ = 1, 500 do
          local c = socket.tcp()
          c:settimeout(2)
          assert(c:connect("127.0.0.1", port))
          held[#held + 1] = c
        end
        assert.is_true(answers(r), "the runner stopped answering with 500 silent peers")
        local peak = fds(r.pid)
        assert(peak <= base_fds + 500 + 5, "descriptors with 500 silent peers: " .. peak .. " (base " .. base_fds .. ")")
        assert(rss_kb(r.pid) - base_rss < 100 * 1024, "RSS grew by " .. (rss_kb(r.pid) - base_rss) .. " kB")
        -- Each peer gets the runner's HELLO, then is closed at the handshake
        -- deadline (5 s).
        local t0 = H.now()
        for i, c in ipairs(held) do
          c:settimeout(math.max(0.1, t0 + 10 * H.slow - H.now()))
          local data, e, partial = c:receive("*a")
          assert(data or e == "closed", "peer " .. i .. " was not closed by the runner: " .. tostring(e) ..
            " after " .. #(partial or "") .. " bytes")
        end
        H.wait_for("descriptors back near " .. base_fds, 10, function() return fds(r.pid) <= base_fds + 2 end)
      end)
      for _, c in ipairs(held) do c:close() end
      if not ok then error(err, 0) end
      assert.is_true(answers(r))
      assert(r:log_text():match("did not authenticate within 5000 ms"), "no log line names the silent peers")
    end)
  end)
end)
