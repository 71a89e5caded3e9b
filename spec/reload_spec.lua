-- Hot reload: scripts edited while the runner serves take effect without a
-- restart and without a failed call.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"
local cjson = require "cjson"
local socket = require "socket"

local function counter_src(opts)
  opts = opts or {}
  return string.format([[
local luster = require "luster"
local S = luster.schema
local Increment = luster.rpc("Increment", { payload = { amount = %s }, success = S.number })
local Get = luster.rpc("Get", { success = S.number })
local rpcs = { Increment%s }
return luster.entity("Counter", rpcs):handlers(function(ctx, snapshot)
  local count = snapshot and snapshot.count or 0
  return {
    Increment = function(req) count = count + req.payload.amount return count * %d end,
    Get = function() return count end,
    %s
  }
end)
]], opts.amount or "S.number", opts.no_get and "" or ", Get", opts.factor or 1,
    opts.no_snapshot and "" or "snapshot = function() return { count = count } end,")
end

-- An entity whose Work sleeps, then answers "<version>:<messages done>",
-- carrying the count across reloads.
local slow = [[
local luster = require "luster"
local S = luster.schema
local Work = luster.rpc("Work", { payload = { ms = S.integer }, success = S.string })
return luster.entity("Slow", { Work }):handlers(function(ctx, snap)
  local done = snap and snap.done or 0
  return {
    Work = function(req)
      luster.sleep(req.payload.ms)
      done = done + 1
      return "%s:" .. done
    end,
    snapshot = function() return { done = done } end,
  }
end)]]

-- Sends Slow/s Work{ms} on a connection of its own and returns that
-- connection once the message runs; the reply is read later.
local function start_slow_work(r, ms)
  local c = r:connect()
  local body = '{"ms":' .. ms .. '}'
  c:send("POST /entities/Slow/s/Work HTTP/1.1\r\nHost: x\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body)
  H.wait_for("the slow message to run", 5, function()
    return r:metric('luster_running_messages{type="Slow"}') == 1
  end)
  return c
end

-- A keep-alive client: one request after another on one connection.
local function client(r)
  local c = r:connect()
  return function(path, body)
    body = body or ""
    assert(c:send("POST " .. path .. " HTTP/1.1\r\nHost: x\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body))
    local status, _, raw = H.read_response(c)
    return status, raw and cjson.decode(raw)
  end, c
end

local function count_matches(text, pattern)
  local n = 0
  for _ in text:gmatch(pattern) do n = n + 1 end
  return n
end

describe("hot reload", function()
  local dir, r
  before_each(function()
    dir = H.script_dir { ["counter.lua"] = counter_src() }
  end)
  after_each(function()
    if r then r:stop() end
    r = nil
    H.rmdir(dir)
  end)

  it("switches to a rewritten script under load with zero failed calls and the count kept", function()
    r = H.start(dir)
    local call = client(r)
    local expected, failed, sent = 0, 0, 0
    local wrote_at, switched_at
    local deadline = H.now() + 10 * H.slow
    while H.now() < deadline do
      local status, doc = call("/entities/Counter/live/Increment", '{"amount":1}')
      sent = sent + 1
      expected = expected + 1
      if status ~= 200 then failed = failed + 1
      elseif doc.value == expected * 3 then switched_at = H.now() break
      elseif doc.value ~= expected then error("unexpected reply " .. doc.value .. " for count " .. expected) end
      if sent == 200 then
        H.write_file(dir .. "/counter.lua", counter_src { factor = 3 })
        wrote_at = H.now()
      end
    end
    assert.is_truthy(switched_at, "the new version never answered")
    assert.are.equal(0, failed)
    local ms = (switched_at - wrote_at) * 1000
    print(string.format("\n  reload: new version serving %.1f ms after the write, %d calls, %d failed", ms, sent, failed))
    assert.is_true(ms < 1000 * H.slow, "took " .. ms .. " ms")
    -- The count went on from where the old version was (snapshot).
    local _, doc = call("/entities/Counter/live/Get", "{}")
    assert.are.equal(expected, doc.value)
    H.wait_for("the old state to be closed", 5, function()
      return r:log_text():find("closed the replaced version", 1, true)
    end)
  end)

  it("lets an in-flight message finish on the old version, then hands the instance over", function()
    H.rmdir(dir)
    dir = H.script_dir { ["slow.lua"] = string.format(slow, "v1") }
    r = H.start(dir)
    local c = start_slow_work(r, 400)
    H.write_file(dir .. "/slow.lua", string.format(slow, "v2"))
    H.wait_for("the reload", 5, function() return r:log_text():find("reloaded slow.lua", 1, true) end)
    -- Queued behind the running one: it waits for the hand-over.
    local status, doc = r:call("Slow", "s", "Work", { ms = 0 })
    local status1, _, raw1 = H.read_response(c)
    c:close()
    assert.are.equal(200, status1)
    assert.are.equal('{"value":"v1:1"}', raw1)
    assert.are.equal(200, status)
    assert.are.equal("v2:2", doc.value)
  end)

  it("hands an in-flight instance over to the newest version after two quick reloads", function()
    H.rmdir(dir)
    dir = H.script_dir { ["slow.lua"] = string.format(slow, "v1") }
    r = H.start(dir)
    local c = start_slow_work(r, 600)
    for _, v in ipairs { "v2", "v3" } do
      H.write_file(dir .. "/slow.lua", string.format(slow, v))
      H.wait_for("the reload to " .. v, 5, function()
        local _, n = r:log_text():gsub("reloaded slow%.lua", "")
        return n == (v == "v2" and 1 or 2)
      end)
    end
    local status, doc = r:call("Slow", "s", "Work", { ms = 0 })
    local status1, _, raw1 = H.read_response(c)
    c:close()
    assert.are.equal(200, status1)
    assert.are.equal('{"value":"v1:1"}', raw1)
    assert.are.equal(200, status)
    assert.are.equal("v3:2", doc.value)
  end)

  it("stops cleanly while an old-version instance still runs and its successor waits", function()
    H.rmdir(dir)
    dir = H.script_dir { ["slow.lua"] = string.format(slow, "v1") }
    r = H.start(dir, { args = "--shutdown-timeout 200ms" })
    local c = start_slow_work(r, 5000)
    H.write_file(dir .. "/slow.lua", string.format(slow, "v2"))
    H.wait_for("the reload", 5, function() return r:log_text():find("reloaded slow.lua", 1, true) end)
    -- Under the sanitizer build stop() also fails on a use-after-free report.
    assert.is_true(r:stop())
    local status = H.read_response(c)
    c:close()
    assert.are.equal(503, status)
  end)

  it("restarts a singleton on its new version", function()
    local job = [[
local luster = require "luster"
local S = luster.schema
local Set = luster.rpc("Set", { payload = { v = S.string } })
local Get = luster.rpc("Get", { success = S.any })
return {
  luster.entity("Box", { Set, Get }):handlers(function(ctx)
    ctx:keep_alive(true)
    local v
    return { Set = function(req) v = req.payload.v end, Get = function() return v end }
  end),
  luster.singleton("Writer", function(ctx)
    while true do luster.client("Box", "b"):Set { v = "%s" } luster.sleep(20) end
  end),
}]]
    H.rmdir(dir)
    dir = H.script_dir { ["job.lua"] = string.format(job, "one") }
    r = H.start(dir)
    H.wait_for("the first singleton to write", 5, function()
      return select(2, r:call("Box", "b", "Get", {})).value == "one"
    end)
    H.write_file(dir .. "/job.lua", string.format(job, "two"))
    H.wait_for("the new singleton to write", 5, function()
      return select(2, r:call("Box", "b", "Get", {})).value == "two"
    end)
  end)

  it("survives reloads that stop a busy singleton at any moment", function()
    local job = [[
local luster = require "luster"
local S = luster.schema
local Get = luster.rpc("Get", { success = S.integer })
local Tick = luster.rpc("Tick")
return {
  luster.entity("Ticks", { Tick, Get }):handlers(function(ctx)
    ctx:keep_alive(true)
    local n = 0
    return { Tick = function() n = n + 1 end, Get = function() return n end }
  end),
  luster.singleton("Busy", function(ctx)
    while true do
      luster.client("Ticks", "t"):Tick({}, { discard = true })
      luster.sleep(0)
    end
  end),
}
-- version %d]]
    H.rmdir(dir)
    dir = H.script_dir { ["job.lua"] = string.format(job, 0) }
    r = H.start(dir)
    for v = 1, 25 do
      H.write_file(dir .. "/job.lua", string.format(job, v))
      H.wait_for("reload " .. v, 5, function()
        local _, n = r:log_text():gsub("reloaded job%.lua", "")
        return n == v
      end, 0.005)
    end
    assert.are.equal(200, (r:call("Ticks", "t", "Get", {})))
    assert.is_true(r:stop(), "the runner did not stop cleanly")
  end)

  it("keeps the old version serving while the file has a syntax error, and recovers when fixed", function()
    r = H.start(dir)
    assert.are.equal(1, select(2, r:call("Counter", "a", "Increment", { amount = 1 })).value)
    H.write_file(dir .. "/counter.lua", counter_src { factor = 2 } .. "\nthis is not lua(\n")
    local err = H.wait_for("the error to show in /cluster", 5, function()
      local errors = r:cluster().errors
      return errors[1] and errors[1]
    end)
    assert.are.equal("counter.lua", err.file)
    assert.matches("counter.lua:%d+:", err.message)
    assert.is_true(err.serving)
    assert.matches("reloading counter.lua failed, version %x+ keeps serving: counter.lua:%d+:", r:log_text())
    -- Old behaviour: no factor.
    assert.are.equal(2, select(2, r:call("Counter", "a", "Increment", { amount = 1 })).value)
    H.write_file(dir .. "/counter.lua", counter_src { factor = 2 })
    H.wait_for("the fixed version to serve", 5, function()
      return select(2, r:call("Counter", "a", "Increment", { amount = 0 })).value == 4
    end)
    assert.are.equal(0, #r:cluster().errors)
  end)

  it("answers not_found for an RPC the new version removed, and validates with the new schema", function()
    r = H.start(dir)
    assert.are.equal(200, (r:call("Counter", "a", "Get", {})))
    H.write_file(dir .. "/counter.lua", counter_src { no_get = true, amount = "S.integer:min(1)" })
    H.wait_for("Get to disappear", 5, function() return r:call("Counter", "a", "Get", {}) == 404 end)
    local status, doc = r:call("Counter", "a", "Get", {})
    assert.are.equal("not_found", doc.error.kind)
    status, doc = r:call("Counter", "a", "Increment", { amount = 0.5 })
    assert.are.equal(400, status)
    assert.matches("amount: expected integer", doc.error.message, 1, true)
  end)

  it("starts instances fresh when the entity defines no snapshot", function()
    H.write_file(dir .. "/counter.lua", counter_src { no_snapshot = true })
    r = H.start(dir)
    r:call("Counter", "a", "Increment", { amount = 5 })
    H.write_file(dir .. "/counter.lua", counter_src { no_snapshot = true, factor = 10 })
    local attempt = 0
    H.wait_for("the new version", 5, function()
      attempt = attempt + 1
      return select(2, r:call("Counter", "probe" .. attempt, "Increment", { amount = 1 })).value == 10
    end)
    assert.are.equal(0, select(2, r:call("Counter", "a", "Get", {})).value)
  end)

  it("reloads the scripts that require a changed lib/ module, and only those", function()
    H.rmdir(dir)
    dir = H.script_dir {
      ["lib/greeting.lua"] = 'return { text = "hello" }',
      ["greeter.lua"] = [[
local luster = require "luster"
local greeting = require "greeting"
return luster.entity("Greeter", { luster.rpc("Greet", { success = luster.schema.string }) })
  :handlers(function() return { Greet = function() return greeting.text end } end)]],
      ["counter.lua"] = counter_src(),
    }
    r = H.start(dir)
    assert.are.equal("hello", select(2, r:call("Greeter", "g", "Greet", {})).value)
    H.write_file(dir .. "/lib/greeting.lua", 'return { text = "bonjour" }')
    H.wait_for("the dependent script to reload", 5, function()
      return select(2, r:call("Greeter", "g", "Greet", {})).value == "bonjour"
    end)
    local log = r:log_text()
    assert.are.equal(1, count_matches(log, "reloaded greeter%.lua"))
    assert.are.equal(0, count_matches(log, "reloaded counter%.lua"))
  end)

  it("picks up an editor-style save (temporary file renamed into place) once", function()
    r = H.start(dir)
    local tmp = dir .. "/.counter.lua.swp"
    H.write_file(tmp, counter_src { factor = 7 })
    assert(os.rename(tmp, dir .. "/counter.lua"))
    local attempt = 0
    H.wait_for("the renamed file to serve", 5, function()
      attempt = attempt + 1 -- a fresh instance each time: its first Increment answers 1 * factor
      return select(2, r:call("Counter", "e" .. attempt, "Increment", { amount = 1 })).value == 7
    end)
    -- A later change is a barrier: once it serves, every event of the save
    -- before it has been handled.
    H.write_file(dir .. "/barrier.lua", [[
local luster = require "luster"
return luster.entity("Barrier", { luster.rpc("Ping") }):handlers(function() return { Ping = function() end } end)]])
    H.wait_for("the barrier script to serve", 5, function() return r:call("Barrier", "b", "Ping", {}) == 200 end)
    assert.are.equal(1, count_matches(r:log_text(), "reloaded counter%.lua"))
  end)

  it("refuses a new file that defines a type another script serves, naming both", function()
    r = H.start(dir)
    H.write_file(dir .. "/copycat.lua", counter_src { factor = 100 })
    local err = H.wait_for("the clash to show in /cluster", 5, function()
      for _, e in ipairs(r:cluster().errors) do if e.file == "copycat.lua" then return e end end
    end)
    assert.matches("'Counter' is already defined by counter.lua", err.message, 1, true)
    assert.is_false(err.serving)
    -- The original keeps serving.
    assert.are.equal(1, select(2, r:call("Counter", "cc", "Increment", { amount = 1 })).value)
  end)

  it("loads a new file, and stops serving the types of a deleted one", function()
    r = H.start(dir)
    H.write_file(dir .. "/echo.lua", [[
local luster = require "luster"
return luster.entity("Echo", { luster.rpc("Say", { payload = { s = luster.schema.string }, success = luster.schema.string }) })
  :handlers(function() return { Say = function(req) return req.payload.s end } end)]])
    H.wait_for("Echo to serve", 5, function() return r:call("Echo", "x", "Say", { s = "hi" }) == 200 end)
    os.remove(dir .. "/echo.lua")
    H.wait_for("Echo to be gone", 5, function() return r:call("Echo", "x", "Say", { s = "hi" }) == 404 end)
    assert.are.equal(200, (r:call("Counter", "x", "Increment", { amount = 1 })))
  end)

  it("does not watch with --no-reload, and reloads on POST /admin/reload", function()
    r = H.start(dir, { args = "--no-reload" })
    H.write_file(dir .. "/counter.lua", counter_src { factor = 5 })
    -- Not watching: a probe instance keeps the old behaviour until asked.
    assert.are.equal(1, select(2, r:call("Counter", "n", "Increment", { amount = 1 })).value)
    local status, doc = r:request("POST", "/admin/reload", "")
    assert.are.equal(200, status)
    assert.are.same({ "counter.lua" }, doc.reloaded)
    assert.are.equal(10, select(2, r:call("Counter", "n", "Increment", { amount = 1 })).value)
    -- Nothing changed since: nothing reloads.
    status, doc = r:request("POST", "/admin/reload", "")
    assert.are.equal(0, #doc.reloaded)
    assert.are.equal(1, doc.unchanged)
  end)

  it("keeps the per-type counters of /metrics monotonic across reloads and a removed file", function()
    r = H.start(dir, { args = "--no-reload" })
    for _ = 1, 3 do assert.are.equal(200, (r:call("Counter", "m", "Increment", { amount = 1 }))) end
    assert.are.equal(400, (r:call("Counter", "m", "Increment", { amount = "x" })))
    local ok, schema = 'luster_messages_total{type="Counter",outcome="ok"}',
      'luster_messages_total{type="Counter",outcome="schema"}'
    local activations = 'luster_activations_total{type="Counter"}'
    assert.are.equal(3, r:metric(ok))
    assert.are.equal(1, r:metric(schema))
    assert.are.equal(1, r:metric(activations))
    H.write_file(dir .. "/counter.lua", counter_src { factor = 2 })
    assert.are.equal(200, (r:request("POST", "/admin/reload", "")))
    assert.are.equal(200, (r:call("Counter", "m", "Increment", { amount = 1 })))
    assert.are.equal(4, r:metric(ok))
    assert.are.equal(1, r:metric(schema))
    assert.are.equal(2, r:metric(activations)) -- the new version's instance took over from the old one
    -- A removed type's counters stay, and go on when the name comes back.
    os.remove(dir .. "/counter.lua")
    assert.are.equal(200, (r:request("POST", "/admin/reload", "")))
    assert.are.equal(404, (r:call("Counter", "m", "Increment", { amount = 1 })))
    assert.are.equal(4, r:metric(ok))
    H.write_file(dir .. "/counter.lua", counter_src())
    assert.are.equal(200, (r:request("POST", "/admin/reload", "")))
    assert.are.equal(200, (r:call("Counter", "m", "Increment", { amount = 1 })))
    assert.are.equal(5, r:metric(ok))
    assert.are.equal(3, r:metric(activations))
  end)

  it("answers a stored persisted message that no longer matches the new schema with a defect", function()
    H.rmdir(dir)
    local ledger = [[
local luster = require "luster"
local S = luster.schema
local Note = luster.rpc("Note", {
  payload = { text = %s, at = S.integer }, success = S.string,
  persisted = true, deliver_at = function(p) return p.at end,
})
return luster.entity("Notes", { Note }):handlers(function()
  return { Note = function(req) return "noted" end }
end)]]
    dir = H.script_dir { ["notes.lua"] = string.format(ledger, "S.string") }
    r = H.start(dir)
    local at = math.floor(socket.gettime() * 1000) + 1500 * H.slow
    -- A caller waits for the stored message's reply on its own connection.
    local waiting = r:connect()
    local body = cjson.encode { text = "later", at = at }
    waiting:send("POST /entities/Notes/n/Note HTTP/1.1\r\nHost: x\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body)
    H.wait_for("the message to be stored", 5, function()
      return r:metric("luster_persisted_messages") == 1
    end)
    H.write_file(dir .. "/notes.lua", string.format(ledger, "S.integer"))
    H.wait_for("the new schema to serve", 5, function()
      return r:call("Notes", "n2", "Note", { text = "x", at = 0 }) == 400
    end)
    -- Delivered under the new schema: one defect reply, no redelivery loop.
    local status, _, raw = H.read_response(waiting)
    waiting:close()
    assert.are.equal(500, status)
    local doc = cjson.decode(raw)
    assert.are.equal("defect", doc.error.kind)
    assert.matches("the stored Notes.Note message no longer matches its payload schema: text: expected integer, got string",
      doc.error.message, 1, true)
    assert.are.equal(1, r:metric('luster_messages_total{type="Notes",outcome="defect"}'))
  end)
end)
