-- runtimes_spec.lua - runtimes as values (admin/runtime.h): build/two_runtimes
-- (spec/support/two_runtimes.c) runs one or two runtimes in one process, each
-- on a thread and loop of its own, on memory storage and a free loopback
-- port, and stops them from its main thread when its stdin says "stop".
-- Two runtimes serve the same type name ("Counter", spec/fixtures/two_runtimes
-- a and b) with different scripts: each must answer with its own scripts and
-- its own state, count only its own calls, and stop cleanly.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"
local socket = require "socket"
local cjson = require "cjson"

local q = H.sh_quote
local BIN = H.root .. "/" .. (os.getenv("BUILD") or "build") .. "/two_runtimes"
local FIX = H.root .. "/spec/fixtures/two_runtimes"

-- Starts two_runtimes on the given fixture names ("a", "b"); returns a
-- handle with .pid, .port[name], :request, :stop. Its stdin is a FIFO this
-- spec holds open: writing "stop" (or closing it) stops the process.
local function start(names)
  local dir = H.tmpdir()
  local p = { dir = dir, fifo = dir .. "/stdin", out = dir .. "/out", log = dir .. "/log", rc = dir .. "/rc", port = {} }
  assert(os.execute("mkfifo " .. q(p.fifo)))
  local args = {}
  for _, n in ipairs(names) do args[#args + 1] = q(FIX .. "/" .. n) end
  -- The subshell opens the FIFO for reading (and so lets the open below
  -- return) even when the program cannot start; it records the exit status.
  assert(os.execute(string.format("(%s %s <%s >%s 2>%s; echo $? >%s) >/dev/null 2>&1 &", q(BIN),
    table.concat(args, " "), q(p.fifo), q(p.out), q(p.log), q(p.rc))))
  p.stdin = assert(io.open(p.fifo, "w"))
  local ok, err = pcall(H.wait_for, "two_runtimes to run (log: " .. p.log .. ")", 15, function()
    local out = H.read_file(p.out) or ""
    if H.read_file(p.rc) then error("two_runtimes exited: " .. out .. (H.read_file(p.log) or "")) end
    p.pid = p.pid or tonumber(out:match("pid (%d+)"))
    return out:match("\nrunning\n")
  end)
  if not ok then
    p.stdin:close()
    H.rmdir(dir)
    error(err, 2)
  end
  local out = H.read_file(p.out)
  for n, port in out:gmatch("runtime (%a) port (%d+)") do p.port[n] = tonumber(port) end

  -- One HTTP request to runtime `name` on a fresh connection: status, JSON.
  function p.request(name, method, path, body)
    local c = assert(socket.tcp())
    c:settimeout(10 * H.slow)
    assert(c:connect("127.0.0.1", p.port[name]))
    body = body or ""
    assert(c:send(string.format("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
      method, path, #body, body)))
    local status, _, raw = H.read_response(c)
    c:close()
    assert(status, "no HTTP response from runtime " .. name .. ": " .. tostring(_))
    local okj, doc = pcall(cjson.decode, raw)
    return status, okj and doc or raw
  end

  -- One sample of runtime `name`'s /metrics.
  function p.metric(name, sample)
    local status, text = p.request(name, "GET", "/metrics")
    assert.are.equal(200, status)
    for line in text:gmatch("[^\n]+") do
      local k, v = line:match("^(%S+) (%S+)$")
      if k == sample then return tonumber(v) end
    end
  end

  -- Says "stop", waits for the exit; returns its status, stdout and log.
  -- A process that does not exit in time is killed (its pid, started here).
  function p.stop()
    if p.stdin then
      p.stdin:write("stop\n")
      p.stdin:close()
      p.stdin = nil
    end
    local exited = pcall(H.wait_for, "two_runtimes to exit", 20, function() return H.read_file(p.rc) end)
    if not exited and p.pid then
      os.execute("kill -KILL " .. p.pid .. " 2>/dev/null")
      H.wait_for("two_runtimes to die", 5, function() return H.read_file(p.rc) end)
    end
    local rc, out, log = tonumber(H.read_file(p.rc)), H.read_file(p.out) or "", H.read_file(p.log) or ""
    H.rmdir(dir)
    return rc, out, log, exited
  end
  return p
end

-- Sends `n` Increment calls (amount 1) on id to each runtime named in
-- `names`, all connections open at once and written before any is read, so
-- the runtimes serve them at the same time; returns name -> list of answers.
local function increments(p, names, n, id)
  local conns = {}
  local body = cjson.encode({ amount = 1 })
  for i = 1, n do
    for _, name in ipairs(names) do
      local c = assert(socket.tcp())
      c:settimeout(10 * H.slow)
      assert(c:connect("127.0.0.1", p.port[name]))
      assert(c:send(string.format("POST /entities/Counter/%s/Increment HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        .. "Connection: close\r\nContent-Length: %d\r\n\r\n%s", id, #body, body)))
      conns[#conns + 1] = { name = name, c = c, i = i }
    end
  end
  local answers = {}
  for _, name in ipairs(names) do answers[name] = {} end
  for _, e in ipairs(conns) do
    local status, _, raw = H.read_response(e.c)
    e.c:close()
    local okj, doc = pcall(cjson.decode, raw or "")
    table.insert(answers[e.name], { status = status, doc = okj and doc or raw })
  end
  return answers
end

-- The counts answered, sorted, after checking each answer came from `side`.
local function counts_of(list, side)
  local counts = {}
  for _, a in ipairs(list) do
    assert.are.equal(200, a.status, "an answer of runtime " .. side .. ": " .. cjson.encode(a.doc))
    assert.are.equal(side, a.doc.value.side)
    counts[#counts + 1] = a.doc.value.count
  end
  table.sort(counts)
  return counts
end

local function steps(n, by)
  local t = {}
  for i = 1, n do t[i] = i * by end
  return t
end

describe("one runtime in the two_runtimes harness", function()
  it("answers, counts its calls and stops with exit 0", function()
    local p = start({ "a" })
    local ok, err = pcall(function()
      local answers = increments(p, { "a" }, 5, "same")
      assert.are.same(steps(5, 1), counts_of(answers.a, "a"))
      assert.are.equal(5, p.metric("a", 'luster_messages_total{type="Counter",outcome="ok"}'))
      assert.are.equal(7, p.metric("a", "luster_http_requests_total")) -- five calls, the metric above, this one
    end)
    local rc, out, log, exited = p.stop()
    assert(ok, err)
    assert.is_true(exited, "two_runtimes did not exit after stop:\n" .. log)
    assert.are.equal(0, rc, "exit status; log:\n" .. log)
    assert.truthy(out:match("\nstopped\n"), out)
    assert.truthy(log:match("INFO  stopped\n"), log)
    if os.getenv("LUSTER_TSAN") then assert.falsy(log:match("WARNING: ThreadSanitizer"), log) end
  end)
end)

describe("two runtimes in one process", function()
  local p
  before_each(function() p = start({ "a", "b" }) end)
  after_each(function() if p then p.stop() end end)

  it("listen on ports of their own", function()
    assert.is_number(p.port.a)
    assert.is_number(p.port.b)
    assert.are_not.equal(p.port.a, p.port.b)
  end)

  it("answer each with its own scripts and its own state for the same id, called at once", function()
    local answers = increments(p, { "a", "b" }, 6, "same")
    -- a adds 1 per call, b adds 10: neither sees the other's type or count.
    assert.are.same(steps(6, 1), counts_of(answers.a, "a"))
    assert.are.same(steps(6, 10), counts_of(answers.b, "b"))
    local more = increments(p, { "b" }, 2, "same")
    assert.are.same({ 70, 80 }, counts_of(more.b, "b"))
  end)

  it("count in /metrics only their own calls", function()
    increments(p, { "a", "b" }, 3, "m") -- three calls each
    increments(p, { "b" }, 4, "m")      -- and four more to b
    assert.are.equal(3, p.metric("a", 'luster_messages_total{type="Counter",outcome="ok"}'))
    assert.are.equal(7, p.metric("b", 'luster_messages_total{type="Counter",outcome="ok"}'))
    assert.are.equal(5, p.metric("a", "luster_http_requests_total")) -- its calls, its metric above, this one
    assert.are.equal(9, p.metric("b", "luster_http_requests_total")) -- its calls, its metric above, this one
  end)

  it("stop both cleanly: exit 0, each runtime logs that it stopped", function()
    increments(p, { "a", "b" }, 2, "s")
    local rc, out, log, exited = p.stop()
    p = nil
    assert.is_true(exited, "two_runtimes did not exit after stop:\n" .. log)
    assert.are.equal(0, rc, "exit status; log:\n" .. log)
    assert.truthy(out:match("\nstopped\n"), out)
    local stopped = 0
    for _ in log:gmatch("INFO  stopped\n") do stopped = stopped + 1 end
    assert.are.equal(2, stopped, log)
    if os.getenv("LUSTER_TSAN") then assert.falsy(log:match("WARNING: ThreadSanitizer"), log) end
  end)
end)
