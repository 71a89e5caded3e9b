-- A runner whose peer stops reading (here: frozen with SIGSTOP while it is
-- still a member) drops that connection after the transport's write timeout
-- (5 s) instead of keeping the unwritten requests until the peer's lease
-- runs out, and keeps serving its own shards.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"
local PG = require "support.pg"
local socket = require "socket"

local FIXTURES = H.root .. "/spec/fixtures/cluster"
-- Longer than the write timeout plus a margin: the frozen runner must still
-- be a member (its lock session alive, about 0.9 of a lease) when the drop
-- is checked, so it is the write bound that drops it, not the membership.
local LEASE = "14s"

describe("a runner whose peer stops reading", function()
  local pg
  setup(function() pg = PG.start() end)
  teardown(function() if pg then pg:destroy() end end)

  it("resets the connection after the write timeout, drops what it queued, and keeps serving", function()
    local start, stop_all = H.cluster_runners(pg:create_db("stall"), { dir = FIXTURES, shards = 16, lease = LEASE,
      args = "--call-timeout 3s" })
    local clients = {}
    local ok, err = pcall(function()
      local a, b = start(), start()
      H.wait_cluster(a, 2, 60)
      -- An id whose shard the frozen runner will hold, and one of a's own.
      local on_b, on_a
      for i = 1, 200 do
        local status, doc = a:call("Probe", "p" .. i, "Hit", {})
        assert.are.equal(200, status)
        if doc.value.runner == b.address then on_b = on_b or ("p" .. i) else on_a = on_a or ("p" .. i) end
        if on_a and on_b then break end
      end
      assert(on_a and on_b, "no ids on both runners")
      local rss0 = H.rss_kb(a.pid)
      b:kill("STOP")
      local frozen_at = H.now()
      -- 40 calls of 512 KiB each to the frozen runner's entity through a:
      -- 20 MiB of requests, more than the socket buffers between them hold.
      local body = '{"data":"' .. string.rep("x", 512 * 1024) .. '"}'
      local req = ("POST /entities/Sink/%s/Take HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s")
        :format(on_b, #body, body)
      for i = 1, 40 do
        local c = assert(socket.tcp4())
        assert(c:connect("127.0.0.1", a.port))
        assert(c:send(req))
        clients[i] = c
      end
      local peak = rss0
      H.wait_for("a to drop its connection to the frozen runner", 10, function()
        peak = math.max(peak, H.rss_kb(a.pid) or 0)
        return a:log_text():find("dropped: the peer read none of our requests for 5000 ms", 1, true)
      end, 0.05)
      local took = H.now() - frozen_at
      assert.is_true(took < 0.9 * 14, ("dropped %.1f s after the freeze, not before the lease ran out"):format(took))
      -- The 64 MiB per-peer queue bounds what a holds meanwhile; the
      -- sanitizer build keeps freed memory in quarantine on top.
      local bound = (120 + (os.getenv("LUSTER_ASAN") and 320 or 0)) * 1024
      assert.is_true(peak - rss0 < bound, ("RSS grew by %d KiB (bound %d KiB)"):format(peak - rss0, bound))
      assert.are.equal(200, (a:call("Probe", on_a, "Hit", {})))
    end)
    for _, c in ipairs(clients) do c:close() end
    stop_all()
    assert(ok, err)
  end)
end)
