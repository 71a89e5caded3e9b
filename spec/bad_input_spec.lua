-- Bad input never crashes a runner (SPEC §1): for each kind of bad input —
-- on the wire, in a payload, in a script directory, in a handler — the exact
-- answer it gets, and then proof that Counter on the same runner still serves.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"
local cjson = require "cjson"

local HANDLERS = H.root .. "/spec/fixtures/bad/handlers"
local COUNTER_SRC = H.read_file(H.counter_dir .. "/counter.lua")

-- Counter on runner r still answers, on a fresh instance each time.
local survivor = 0
local function still_serves(r)
  assert.is_true(H.alive(r.pid), "the runner exited:\n" .. r:log_text())
  survivor = survivor + 1
  local status, doc = r:call("Counter", "survivor-" .. survivor, "Increment", { amount = survivor })
  assert.are.equal(200, status, "Counter no longer serves: " .. cjson.encode(doc))
  assert.are.same({ value = survivor }, doc)
end

-- Status and decoded body of a call, to compare both at once.
local function answer(status, doc) return { status, doc } end

local function post(path, body)
  return ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s"):format(path, #body, body)
end

-- A describe block over a fresh script directory of these files for each
-- spec; body(ctx) defines the specs, which find the directory in ctx.dir and
-- put the runner they start in ctx.r (stopped after each).
local function with_scripts(title, files, body)
  describe(title, function()
    local ctx = {}
    before_each(function() ctx.dir = H.script_dir(files) end)
    after_each(function()
      if ctx.r then ctx.r:stop() end
      ctx.r = nil
      H.rmdir(ctx.dir)
    end)
    body(ctx)
  end)
end

-- `luster check DIR` exits non-zero and marks file as failing; returns what
-- it printed.
local function check_fails(dir, file)
  local code, out, err = H.cli("check " .. H.sh_quote(dir))
  assert.are_not.equal(0, code)
  local text = out .. err
  assert.matches("FAIL " .. file:gsub("%.", "%%."), text)
  return text
end

describe("a runner given bad input", function()
  local r
  lazy_setup(function()
    r = H.start(HANDLERS, { args = "--request-timeout 500ms --instruction-budget 1000000 --memory-limit 32M "
      .. "--shutdown-timeout 1s" })
  end)
  lazy_teardown(function() if r then r:stop() end end)

  describe("in a request", function()
    it("answers malformed JSON with 400 schema, then serves", function()
      local status, doc = r:call("Counter", "c", "Increment", '{"amount": 1,')
      assert.are.equal(400, status)
      assert.are.equal("schema", doc.error.kind)
      assert.are.equal("", doc.error.path) -- the payload as a whole
      assert.matches("^invalid JSON: ", doc.error.message)
      for _, body in ipairs { '{"amount":1} trailing', "\255\254{", string.rep("[", 200000) } do
        status, doc = r:call("Counter", "c", "Increment", body)
        assert.are.equal(400, status)
        assert.are.equal("schema", doc.error.kind)
        assert.matches("^invalid JSON: ", doc.error.message)
      end
      still_serves(r)
    end)

    it("decodes a string that starts with an escape, before and after a string over 64 KiB, then serves", function()
      -- The decoder's scratch buffer is unallocated at first and given back
      -- after a string over 64 KiB: adding the empty run before the escape
      -- must not touch it (make asan aborts the runner if it does).
      local big = '{"amount":"\\n' .. string.rep("x", 70 * 1024) .. '"}'
      for _, body in ipairs { '{"amount":"\\n"}', big, '{"amount":"\\n"}', '{"amount":"\\u00e9"}' } do
        local status, doc = r:call("Counter", "c", "Increment", body)
        assert.are.equal(400, status, r:log_text())
        assert.are.same({ error = { kind = "schema", path = "amount",
                                    message = "amount: expected number, got string" } }, doc)
      end
      still_serves(r)
    end)

    it("answers a payload field of the wrong type with 400 schema naming the path, then serves", function()
      local status, doc = r:call("Counter", "c", "Increment", { amount = { 1, 2 } })
      assert.are.equal(400, status)
      assert.are.same({ error = { kind = "schema", path = "amount",
                                  message = "amount: expected number, got array" } }, doc)
      status, doc = r:call("Counter", "c", "Increment", "[1,2,3]")
      assert.are.equal(400, status)
      assert.are.equal("schema", doc.error.kind)
      assert.matches("expected .*object", doc.error.message)
      still_serves(r)
    end)

    it("answers a missing field with 400 schema naming it, then serves", function()
      local status, doc = r:call("Counter", "c", "Increment", "{}")
      assert.are.equal(400, status)
      assert.are.same({ error = { kind = "schema", path = "amount",
                                  message = "amount: missing required field (expected number)" } }, doc)
      status, doc = r:call("Counter", "c", "Increment", "")
      assert.are.equal(400, status)
      assert.are.equal("schema", doc.error.kind)
      still_serves(r)
    end)

    it("answers an extra field with 400 schema naming it, then serves", function()
      local status, doc = r:call("Counter", "c", "Increment", { amount = 1, bogus = true })
      assert.are.equal(400, status)
      assert.are.same({ error = { kind = "schema", path = "bogus", message = "bogus: unexpected field" } }, doc)
      still_serves(r)
    end)

    it("answers an unknown type with 404 not_found, then serves", function()
      local status, doc = r:call("Ghost", "c", "Increment", { amount = 1 })
      assert.are.equal(404, status)
      assert.are.same({ error = { kind = "not_found", message = "unknown entity type 'Ghost'" } }, doc)
      still_serves(r)
    end)

    it("answers an unknown RPC with 404 not_found, then serves", function()
      local status, doc = r:call("Counter", "c", "Explode", {})
      assert.are.equal(404, status)
      assert.are.same({ error = { kind = "not_found", message = "unknown rpc 'Explode' on Counter; its rpcs are: Increment" } }, doc)
      still_serves(r)
    end)

    it("answers an empty id with 400 schema at path id, then serves", function()
      local status, doc = r:call("Counter", "", "Increment", { amount = 1 })
      assert.are.equal(400, status)
      assert.are.same({ error = { kind = "schema", path = "id", message = "entity id must not be empty" } }, doc)
      still_serves(r)
    end)

    it("answers a 10 MB body with 413 and closes that connection, then serves", function()
      local c = r:connect()
      local body = string.rep("x", 10 * 1024 * 1024)
      c:send(post("/entities/Counter/c/Increment", body)) -- stops short once the runner closes
      local status, headers, raw = H.read_response(c)
      assert.are.equal(413, status)
      assert.are.equal("close", headers["connection"])
      assert.are.same({ error = { kind = "too_large", message = "request body too large" } }, cjson.decode(raw))
      c:settimeout(5)
      local _, err = c:receive("*a")
      assert.is_true(err == nil or err == "closed" or err == "connection reset by peer", tostring(err))
      c:close()
      still_serves(r)
    end)

    it("answers garbage bytes on the HTTP port with 400 and closes that connection, then serves", function()
      local garbage = { "\0\1\2\3\255\254\r\n\r\n", "GET\r\n\r\n", "HELLO / WORLD/9\r\n\r\n",
                        "POST /entities/Counter/c/Increment HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                        "POST /entities/Counter/c/Increment HTTP/1.1\r\nBad Header\r\n\r\n" }
      for _, g in ipairs(garbage) do
        local c = r:connect()
        c:send(g)
        local status, headers, raw = H.read_response(c)
        assert.are.equal(400, status, ("for %q"):format(g))
        assert.are.equal("close", headers["connection"])
        local doc = cjson.decode(raw)
        assert.are.equal("bad_request", doc.error.kind)
        assert.matches("^malformed HTTP request: ", doc.error.message)
        c:settimeout(5)
        local _, err = c:receive("*a")
        assert.is_true(err == nil or err == "closed", tostring(err))
        c:close()
      end
      -- A connection that sends garbage and hangs up at once.
      local c = r:connect()
      c:send(string.rep("\255", 100000))
      c:close()
      still_serves(r)
    end)

    it("closes a connection that sends a request slowly after --request-timeout, serving others meanwhile", function()
      local slow = r:connect()
      local t0 = H.now()
      assert(slow:send("POST /entities/Counter/slow/Increment HTTP/1.1\r\nHost: 127.0.0.1\r\n"))
      slow:settimeout(0.1)
      local served, closed_after, answer_line = 0, nil, nil
      while H.now() - t0 < 5 * H.slow do
        -- One more header byte every ~100 ms: never a complete request.
        local ok = slow:send("X")
        local line, err = slow:receive("*l")
        if line then
          answer_line = line
          slow:settimeout(5)
          while slow:receive("*l") do end -- the rest, until the runner closes
          closed_after = H.now() - t0
          break
        end
        if not ok or err == "closed" then closed_after = H.now() - t0 break end
        still_serves(r)
        served = served + 1
      end
      slow:close()
      assert.is_not_nil(closed_after, "the slow connection was never closed")
      assert.are.equal("HTTP/1.1 408 Request Timeout", answer_line)
      assert.is_true(closed_after >= 0.45, ("closed after %.2fs, before --request-timeout"):format(closed_after))
      assert.is_true(closed_after < 1.5 * H.slow, ("closed only after %.2fs"):format(closed_after))
      assert.is_true(served >= 3, "other clients were served " .. served .. " times meanwhile")
      still_serves(r)
    end)
  end)

  describe("in a handler", function()
    it("answers a handler that raises with 500 defect carrying the error, logs it, then serves", function()
      local status, doc = r:call("Misbehave", "m", "Raise")
      assert.are.equal(500, status)
      assert.are.equal("defect", doc.error.kind)
      assert.matches("^misbehave%.lua:%d+: the ledger is on fire$", doc.error.message)
      H.wait_for("the defect in the log", 5, function() return r:log_text():find("the ledger is on fire", 1, true) end)
      assert.are.same({ 200, { value = "pong" } }, answer(r:call("Misbehave", "m", "Ping")))
      still_serves(r)
    end)

    it("logs a defect naming type/id, RPC, request id and the user's line first, without luster's frames", function()
      -- The log entry of the defect whose first line matches `first`: that
      -- line and its traceback, up to the next log line.
      local function entry(first)
        return H.wait_for("a log line matching " .. first, 5, function()
          local text = r:log_text()
          local s = text:find(first)
          if not s then return nil end
          local e = text:find("\n%d%d%d%d%-", s) or #text + 1
          return text:sub(s, e - 1)
        end)
      end
      local status, doc = r:call("Misbehave", "logged", "IndexNil")
      assert.are.equal(500, status)
      assert.matches("^misbehave%.lua:%d+: attempt to index a nil value %(local 'order'%)$", doc.error.message)
      local e = entry("defect Misbehave/logged IndexNil request=%d+: misbehave%.lua:%d+: attempt to index a nil value")
      assert.matches("\n\tmisbehave%.lua:%d+: in function <misbehave%.lua:%d+>", e)
      assert.is_nil(e:find("luster/", 1, true), e)
      assert.is_nil(e:find("'?'", 1, true), e)

      status, doc = r:call("Misbehave", "logged", "Spin")
      assert.are.equal(500, status)
      assert.matches("^misbehave%.lua:%d+: instruction budget exceeded: the handler ran more", doc.error.message)
      e = entry("defect Misbehave/logged Spin request=%d+: misbehave%.lua:%d+: instruction budget exceeded")
      assert.is_nil(e:find("luster/", 1, true), e)

      status, doc = r:call("Misbehave", "logged", "RaiseTable")
      assert.are.equal(500, status)
      assert.matches('^misbehave%.lua:%d+: {"code":42}$', doc.error.message)
      entry('defect Misbehave/logged RaiseTable request=%d+: misbehave%.lua:%d+: {"code":42}\n')

      status, doc = r:call("Misbehave", "logged", "RaiseNull", { gone = cjson.null })
      assert.are.equal(500, status)
      assert.matches("^misbehave%.lua:%d+: null$", doc.error.message)
      entry("defect Misbehave/logged RaiseNull request=%d+: misbehave%.lua:%d+: null\n")
      entry("%[Misbehave/logged%] gone is null\n") -- ctx.log's tostring, too

      status, doc = r:call("Misbehave", "logged", "RaiseBare")
      assert.are.equal(500, status)
      assert.matches("^misbehave%.lua:%d+: no position of its own$", doc.error.message)
      still_serves(r)
    end)

    it("stops a handler that loops forever with 500 defect naming the instruction budget, then serves", function()
      local t0 = H.now()
      local status, doc = r:call("Misbehave", "m", "Spin")
      assert.is_true(H.now() - t0 < 5 * H.slow, "the loop ran for " .. (H.now() - t0) .. "s")
      assert.are.equal(500, status)
      assert.are.equal("defect", doc.error.kind)
      assert.matches("instruction budget exceeded", doc.error.message, 1, true)
      assert.matches("--instruction-budget", doc.error.message, 1, true)
      assert.matches("1000000", doc.error.message, 1, true)
      assert.are.same({ 200, { value = "pong" } }, answer(r:call("Misbehave", "m", "Ping")))
      still_serves(r)
    end)

    it("stops a handler that loops forever between waits, counting its whole invocation", function()
      local status, doc = r:call("Misbehave", "m", "SpinWaiting", nil, "?timeout=20000")
      assert.are.equal(500, status)
      assert.are.equal("defect", doc.error.kind)
      assert.matches("instruction budget exceeded: the handler ran more than 1000000", doc.error.message, 1, true)
      assert.are.same({ 200, { value = "pong" } }, answer(r:call("Misbehave", "m", "Ping")))
    end)

    it("stops a handler that loops forever inside a coroutine it created, with create and with wrap", function()
      for _, wrap in ipairs { false, true } do
        local t0 = H.now()
        local status, doc = r:call("Misbehave", "m", "SpinNested", { wrap = wrap })
        assert.is_true(H.now() - t0 < 5 * H.slow, "the loop ran for " .. (H.now() - t0) .. "s")
        assert.are.equal(500, status)
        assert.are.equal("defect", doc.error.kind)
        assert.matches("instruction budget exceeded", doc.error.message, 1, true)
      end
      assert.are.same({ 200, { value = "pong" } }, answer(r:call("Misbehave", "m", "Ping")))
    end)

    it("stops a handler that allocates without bound with 500 defect naming the memory limit, then serves", function()
      local status, doc = r:call("Misbehave", "m", "Hog")
      assert.are.equal(500, status)
      assert.are.same({ error = { kind = "defect", message = "memory limit exceeded: the Lua state of misbehave.lua "
        .. "is capped at 33554432 bytes (--memory-limit)" } }, doc)
      -- The same script state recovers its memory and serves its next message.
      assert.are.same({ 200, { value = "pong" } }, answer(r:call("Misbehave", "m", "Ping")))
      status, doc = r:call("Misbehave", "m", "Hog")
      assert.are.equal(500, status)
      assert.matches("memory limit exceeded", doc.error.message, 1, true)
      still_serves(r)
    end)

    it("answers a handler returning a value its success schema does not allow with 500 defect, then serves", function()
      local status, doc = r:call("Misbehave", "m", "Lie")
      assert.are.equal(500, status)
      assert.are.same({ error = { kind = "defect", message = "Misbehave.Lie returned a value that does not match "
        .. "its success schema: expected number, got string" } }, doc)
      still_serves(r)
    end)

    it("answers a handler that yields with coroutine.yield with 500 defect and keeps its instance serving", function()
      local status, doc = r:call("Misbehave", "yielder", "Yield", nil, "?timeout=1000")
      assert.are.equal(500, status, "a bare yield left the call hanging: " .. cjson.encode(doc))
      assert.are.equal("defect", doc.error.kind)
      assert.matches("yield", doc.error.message, 1, true)
      assert.are.same({ 200, { value = "pong" } }, answer(r:call("Misbehave", "yielder", "Ping", nil, "?timeout=1000")))
      still_serves(r)
    end)
  end)
end)

describe("a runner whose handler catches the budget error and loops again", function()
  local r
  after_each(function() if r then r:stop(1) end r = nil end)

  it("still stops it with 500 defect and keeps serving", function()
    r = H.start(HANDLERS, { args = "--instruction-budget 1000000" })
    local c = r:connect()
    c:settimeout(5 * H.slow)
    c:send(post("/entities/Misbehave/m/SpinCaught", ""))
    local status, _, raw = H.read_response(c)
    c:close()
    assert.are.equal(500, status, "no answer within 5 s: the runner is stuck in the loop")
    local doc = cjson.decode(raw)
    assert.are.equal("defect", doc.error.kind)
    assert.matches("instruction budget", doc.error.message, 1, true)
    still_serves(r)
  end)
end)

with_scripts("a script directory with a script that does not compile", {
  ["counter.lua"] = COUNTER_SRC,
  ["broken.lua"] = 'local luster = require "luster"\n\nlocal x = = 1\nreturn x\n',
}, function(ctx)
  it("starts anyway, names the file and line in /cluster and the log, and serves the other types", function()
    ctx.r = H.start(ctx.dir)
    local r = ctx.r
    local doc = r:cluster()
    assert.are.equal(1, #doc.errors)
    assert.are.equal("broken.lua", doc.errors[1].file)
    assert.matches("^broken%.lua:3: ", doc.errors[1].message)
    assert.matches("broken%.lua:3: unexpected symbol near '='", r:log_text())
    assert.are.equal(1, r:metric("luster_script_errors"))
    local names = {}
    for _, t in ipairs(doc.types) do names[#names + 1] = t.name end
    assert.are.same({ "Counter" }, names)
    still_serves(r)
  end)

  it("makes `luster check DIR` exit non-zero naming the file and line", function()
    local text = check_fails(ctx.dir, "broken.lua")
    assert.matches("broken%.lua:3: unexpected symbol near '='", text)
    assert.matches("ok   counter%.lua", text)
  end)
end)

with_scripts("a script directory with a typo in a schema name", {
  ["counter.lua"] = COUNTER_SRC,
  ["typo.lua"] = 'local luster = require "luster"\nlocal S = luster.schema\n'
    .. 'local Set = luster.rpc("Set", {\n  payload = { n = S.integr },\n  success = S.integer,\n})\n'
    .. 'return luster.entity("Typo", { Set }):handlers(function() return { Set = function() return 1 end } end)\n',
}, function(ctx)
  it("refuses that script at load naming the name, the file and line, and serves the others", function()
    ctx.r = H.start(ctx.dir)
    local r = ctx.r
    local doc = r:cluster()
    assert.are.equal(1, #doc.errors)
    assert.are.equal("typo.lua", doc.errors[1].file)
    assert.matches("^typo%.lua:4: unknown schema type 'integr' %(did you mean 'integer'%?%)", doc.errors[1].message)
    assert.matches("typo%.lua:4: unknown schema type 'integr' %(did you mean 'integer'%?%)", r:log_text())
    still_serves(r)
  end)

  it("makes `luster check DIR` exit non-zero naming the file and line", function()
    local text = check_fails(ctx.dir, "typo.lua")
    assert.matches("typo%.lua:4: unknown schema type 'integr' %(did you mean 'integer'%?%)", text)
    assert.matches("ok   counter%.lua", text)
  end)
end)

local function twin(answer)
  return ([[
local luster = require "luster"
local Which = luster.rpc("Which", { success = luster.schema.string })
return luster.entity("Twin", { Which }):handlers(function()
  return { Which = function() return %q end }
end)
]]):format(answer)
end

with_scripts("a script directory where two scripts define the same type",
  { ["counter.lua"] = COUNTER_SRC, ["twin_a.lua"] = twin("a"), ["twin_b.lua"] = twin("b") }, function(ctx)
  it("refuses the second with an error naming both files, and serves the first and the others", function()
    ctx.r = H.start(ctx.dir)
    local r = ctx.r
    local doc = r:cluster()
    assert.are.equal(1, #doc.errors)
    local e = doc.errors[1]
    assert.are.equal("twin_b.lua", e.file)
    assert.matches("'Twin'", e.message, 1, true)
    assert.matches("twin_a.lua", e.message, 1, true)
    assert.matches("twin_b.lua", e.message, 1, true)
    assert.matches("twin_b%.lua.*Twin.*twin_a%.lua", r:log_text())
    assert.are.same({ 200, { value = "a" } }, answer(r:call("Twin", "t", "Which")))
    still_serves(r)
  end)

  it("makes `luster check DIR` exit non-zero naming both files", function()
    assert.matches("already defined by twin_a%.lua", check_fails(ctx.dir, "twin_b.lua"))
  end)
end)

describe("a runner that crashes", function()
  it("names the signal and prints its stack in its log", function()
    local r = H.start(HANDLERS)
    r:kill("SEGV")
    H.wait_for("the runner to exit", 10, function() return not H.alive(r.pid) end)
    local text = r:log_text()
    r:remove_log() -- not stop: its sanitizer report is the point here
    if os.getenv("LUSTER_ASAN") then
      -- The sanitizer build keeps the sanitizer's own report.
      assert.matches("AddressSanitizer", text, 1, true)
    else
      assert.matches("luster: fatal signal 11 (Segmentation fault); stack:", text, 1, true)
      assert.matches("uv_run", text, 1, true)
    end
  end)
end)

describe("a runner given bad settings", function()
  -- Checked once, before anything starts (cli/config.c config_check_run):
  -- no port is bound, no database dialled, no script loaded.
  local cases = {
    { "--storage postgres://nobody@127.0.0.1:1/none --listen nonsense", "--listen 'nonsense' is not HOST:PORT" },
    { "--storage postgres://nobody@127.0.0.1:1/none --listen 127.0.0.1:7000 --advertise x",
      "--advertise 'x' is not HOST:PORT" },
    { "--http nonsense", "--http 'nonsense' is not HOST:PORT (or 'none')" },
    { "--admin everyone", "--admin must be loopback, any or none, got 'everyone'" },
  }
  for _, c in ipairs(cases) do
    it("exits 2 naming the setting: " .. c[1], function()
      local code, _, err = H.cli("run " .. H.sh_quote(H.counter_dir) .. " " .. c[1])
      assert.are.equal(2, code, err)
      assert.truthy(err:find(c[2], 1, true), err)
      assert.falsy(err:find("loaded", 1, true), err)
    end)
  end
end)
