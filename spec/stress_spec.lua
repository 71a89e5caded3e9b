-- A seeded, time-bounded storm against one runner: bursts of concurrent
-- calls (some abandoned mid-way), timeouts, persisted and delayed messages,
-- tiny max_idle, reloads, broken and deleted scripts, garbage bytes. The
-- runner must keep serving and stop cleanly (under `make asan`, with no
-- sanitizer report).
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"
local socket = require "socket"
local cjson = require "cjson"

describe("a runner under a storm of mixed traffic and script changes", function()
  local r, dir
  after_each(function()
    if r then r:stop() end
    H.rmdir(dir)
  end)

  it("keeps serving, then stops cleanly", function()
    dir = H.tmpdir()
    os.execute(string.format("cp -r %s/spec/fixtures/runtime/. %s/", H.sh_quote(H.root), H.sh_quote(dir)))
    r = H.start(dir, { args = "--max-idle 50ms --call-timeout 300ms --shutdown-timeout 500ms" })
    math.randomseed(20261124)
    local rnd = math.random
    local function now_ms() return math.floor(socket.gettime() * 1000) end
    local reqs = {
      function() return "/entities/Counter/c" .. rnd(50) .. "/Increment", '{"amount":1}' end,
      function() return "/entities/Caller/k" .. rnd(5) .. "/CallCounter",
        cjson.encode { id = "c" .. rnd(50), amount = 1, discard = rnd(2) == 1 } end,
      function() return "/entities/Caller/k" .. rnd(5) .. "/CallSleeper",
        cjson.encode { ms = rnd(0, 400), timeout = rnd(300) } end,
      function() return "/entities/Sleeper/s" .. rnd(3) .. "/Sleep?timeout=" .. rnd(200), cjson.encode { ms = rnd(0, 300) } end,
      function() return "/entities/Ledger/l" .. rnd(5) .. "/Deposit", cjson.encode { key = "k" .. rnd(30), amount = 1 } end,
      function() return "/entities/Ledger/l" .. rnd(5) .. "/Remind?discard=" .. rnd(0, 1),
        cjson.encode { at = now_ms() + rnd(0, 300) } end,
      function() return "/entities/Tiny/t1/Sleep", '{"ms":50}' end,
      function() return "/entities/BrokenActivate/b/Bump", "{}" end,
      function() return "/entities/Introspect/p" .. rnd(3) .. "/Pin", cjson.encode { on = rnd(2) == 1 } end,
    }
    local probe = H.read_file(dir .. "/probe.lua")
    local deadline = H.now() + 8
    local sent, rounds = 0, 0
    while H.now() < deadline and rounds < 2000 do
      rounds = rounds + 1
      local socks = {}
      for _ = 1, rnd(30) do
        local path, body = reqs[rnd(#reqs)]()
        local c = socket.tcp()
        c:settimeout(2 * H.slow)
        if c:connect("127.0.0.1", r.port) then
          c:send("POST " .. path .. " HTTP/1.1\r\nHost: x\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body)
          socks[#socks + 1] = c
          sent = sent + 1
        end
      end
      for _, c in ipairs(socks) do
        if rnd(4) > 1 then H.read_response(c) end -- the others are abandoned
        c:close()
      end
      local roll = rnd(40)
      if roll <= 4 then H.write_file(dir .. "/probe.lua", probe .. "\n-- " .. rounds .. "\n")
      elseif roll == 5 then H.write_file(dir .. "/probe.lua", "this is not lua(")
      elseif roll == 6 then os.remove(dir .. "/probe.lua")
      elseif roll == 7 then H.write_file(dir .. "/ledger.lua", H.read_file(dir .. "/ledger.lua") .. "\n-- " .. rounds .. "\n")
      elseif roll == 8 then
        local c = socket.tcp()
        c:settimeout(1)
        if c:connect("127.0.0.1", r.port) then c:send(string.rep("\0\255garbage", rnd(50))) end
        c:close()
      end
      assert.is_true(H.alive(r.pid), "the runner died")
    end
    assert.is_true(sent > 100, "only " .. sent .. " requests were sent")
    H.write_file(dir .. "/probe.lua", probe)
    assert.are.equal(200, (r:call("Counter", "final", "Increment", { amount = 1 })))
    H.wait_for("the restored probe.lua to serve", 5, function() return r:call("Seq", "final", "List", {}) == 200 end)
    assert.is_true(r:stop(), "the runner did not stop on SIGTERM")
  end)
end)
