-- --max-active: a runner holds at most that many entity instances, whatever
-- the traffic (runtime/entity/entity.c, "The active-entity limit"). Past it
-- the least recently used idle instance is passivated; when every instance
-- is busy, a message that needs a new one waits for a slot until shortly
-- before its deadline, then fails unavailable (503 with Retry-After).
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"
local cjson = require "cjson"

local BUMP = [[
local luster = require "luster"
local S = luster.schema
local Hit = luster.rpc("Hit", { success = S.integer })
return luster.entity("Bump", { Hit }):handlers(function(ctx)
  local n = 0
  return { Hit = function() n = n + 1 return n end }
end)]]

local SLEEPER = [[
local luster = require "luster"
local S = luster.schema
local Sleep = luster.rpc("Sleep", { payload = { ms = S.integer:min(0) }, success = S.string })
return luster.entity("Sleeper", { Sleep }):handlers(function(ctx)
  return { Sleep = function(req) luster.sleep(req.payload.ms) return ctx.id end }
end)]]

local TALLY = [[
local luster = require "luster"
local S = luster.schema
local Add = luster.rpc("Add", { payload = { n = S.integer }, success = S.integer })
return luster.entity("Tally", { Add }, { durable = true }):handlers(function(ctx, snapshot)
  local total = snapshot and snapshot.total or 0
  return {
    Add = function(req) total = total + req.payload.n return total end,
    snapshot = function() return { total = total } end,
  }
end)]]

-- Mark: a persisted RPC delivered at p.at (epoch ms); each run appends
-- its id to $MARK_RECORD after a short sleep.
local MARK = [[
local luster = require "luster"
local S = luster.schema
local Mark = luster.rpc("Mark", {
  payload = { at = S.integer }, success = S.string, persisted = true,
  deliver_at = function(p) return p.at end,
})
return luster.entity("Note", { Mark }):handlers(function(ctx)
  return { Mark = function(req)
    luster.sleep(2)
    local f = assert(io.open(os.getenv("MARK_RECORD"), "a"))
    f:write(ctx.id, "\n")
    f:close()
    return ctx.id
  end }
end)]]

local MB = 1024 -- in KiB, as VmRSS counts

local function request_text(path, body)
  return string.format("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s", path, #body, body)
end

-- Sends a request on a fresh connection without reading the answer.
local function send(r, path, body)
  local c = r:connect()
  assert(c:send(request_text(path, body)))
  return c
end

local function answer(c)
  local status, headers, raw = H.read_response(c)
  c:close()
  assert(status, "no answer: " .. tostring(headers))
  local ok, doc = pcall(cjson.decode, raw)
  return status, headers, ok and doc or raw
end

-- Calls Bump.Hit on every id of ids over conns keep-alive connections,
-- pipelined `depth` deep each, and calls Bump.Hit on `hot` once per round;
-- sample() runs between rounds. Returns the hot id's answers in order.
local function sweep(r, ids, conns, depth, hot, sample)
  local cs = {}
  for k = 1, conns do cs[k] = r:connect() end
  local hot_values, next_id, round = {}, 1, 0
  while next_id <= #ids do
    round = round + 1
    local sent = {}
    for k = 1, conns do
      local batch = {}
      if k == 1 then batch[1] = request_text("/entities/Bump/" .. hot .. "/Hit", "{}") end
      while #batch < depth and next_id <= #ids do
        batch[#batch + 1] = request_text("/entities/Bump/" .. ids[next_id] .. "/Hit", "{}")
        next_id = next_id + 1
      end
      assert(cs[k]:send(table.concat(batch)))
      sent[k] = #batch
    end
    for k = 1, conns do
      for j = 1, sent[k] do
        local status, _, raw = H.read_response(cs[k])
        assert(status == 200, ("call answered %s: %s"):format(tostring(status), tostring(raw)))
        if k == 1 and j == 1 then hot_values[#hot_values + 1] = cjson.decode(raw).value end
      end
    end
    if round % 20 == 0 then sample() end
  end
  for k = 1, conns do cs[k]:close() end
  return hot_values
end

-- The RSS growth (KiB) of a runner over a sweep of n distinct ids, the
-- highest resident count sampled meanwhile, and the hot id's answers.
local function run_sweep(args, n)
  local dir = H.script_dir { ["bump.lua"] = BUMP }
  local r = H.start(dir, { args = args })
  local ok, res = pcall(function()
    local ids = {}
    for i = 1, n do ids[i] = "id-" .. i end
    sweep(r, { "warm-1", "warm-2" }, 1, 2, "hot", function() end) -- the script's state, before measuring
    local before = H.rss_kb(r.pid)
    local most = 0
    local hot = sweep(r, ids, 4, 40, "hot", function()
      most = math.max(most, r:metric("luster_resident_instances"))
    end)
    most = math.max(most, r:metric("luster_resident_instances"))
    return { grew = H.rss_kb(r.pid) - before, most = most, hot = hot,
             passivated = r:metric("luster_limit_passivations_total") }
  end)
  r:stop()
  H.rmdir(dir)
  assert(ok, res)
  return res
end

describe("--max-active", function()
  it("holds at most the limit while 50 000 distinct ids are called, keeping a busy instance's state", function()
    local t0 = H.now()
    local res = run_sweep("--max-active 1000 --max-idle 10m", 50000)
    assert.is_true(res.most <= 1000, ("sampled %d instances, above the limit of 1000"):format(res.most))
    assert.is_true(res.most >= 900, ("sampled at most %d instances: the sweep never reached the limit"):format(res.most))
    assert.is_true(res.passivated >= 49000, ("only %d instances passivated for the limit"):format(res.passivated))
    -- The hot id is called once per round, so it is never the least recently
    -- used: it keeps counting from 2 (one call before the sweep).
    assert.are.equal(3, res.hot[1]) -- two calls before the sweep
    for k, v in ipairs(res.hot) do assert.are.equal(k + 2, v) end
    -- Without a limit, 50 000 instances take about 36 MB here (the next
    -- case); with it, memory stays near what the 1 000 held take (2 MB).
    -- (Under AddressSanitizer, freed memory waits in its quarantine: RSS
    -- says nothing of what the runner holds there.)
    if H.slow == 1 then
      assert.is_true(res.grew < 8 * MB, ("RSS grew by %d KiB over the sweep"):format(res.grew))
    end
    assert.is_true(H.now() - t0 < 60 * H.slow, "the sweep took too long")
  end)

  it("lets memory grow with the ids called when the limit is high (what the bound above is against)", function()
    local res = run_sweep("--max-idle 10m", 50000)
    assert.is_true(res.most >= 49000, ("only %d instances held without a limit"):format(res.most))
    assert.are.equal(0, res.passivated)
    assert.is_true(res.grew > 25 * MB, ("RSS grew only %d KiB with 50 000 instances"):format(res.grew))
  end)

  it("makes a call for a new id wait while every instance is busy, and answers 503 at its deadline", function()
    local dir = H.script_dir { ["sleeper.lua"] = SLEEPER }
    local r = H.start(dir, { args = "--max-active 2" })
    local ok, err = pcall(function()
      local t0 = H.now()
      local a = send(r, "/entities/Sleeper/a/Sleep", '{"ms":1500}')
      local b = send(r, "/entities/Sleeper/b/Sleep", '{"ms":1500}')
      H.wait_for("both sleepers to run", 5, function()
        return r:metric('luster_running_messages{type="Sleeper"}') == 2
      end)
      local c = send(r, "/entities/Sleeper/c/Sleep", '{"ms":0}')
      H.wait_for("the third call to wait for a slot", 5, function()
        return r:metric("luster_slot_waiting_messages") == 1
      end)
      local status, headers, doc = answer(send(r, "/entities/Sleeper/d/Sleep?timeout=300", '{"ms":0}'))
      assert.are.equal(503, status)
      assert.are.equal("1", headers["retry-after"])
      assert.are.equal("unavailable", doc.error.kind)
      assert.matches("--max-active", doc.error.message, 1, true)
      assert.is_true(H.now() - t0 < 1.4, "the short call was answered only after a sleeper ended")
      status, _, doc = answer(c)
      assert.are.equal(200, status)
      assert.are.equal("c", doc.value)
      assert.is_true(H.now() - t0 >= 1.4, "the waiting call was served before a sleeper ended")
      for _, s in ipairs { a, b } do assert.are.equal(200, (answer(s))) end
      assert.is_true(r:metric("luster_resident_instances") <= 2)
      assert.are.equal(2, r:metric("luster_slot_waits_total"))
      assert.are.equal(1, r:metric("luster_slot_wait_timeouts_total"))
      assert.are.equal(2, r:metric("luster_max_active"))
    end)
    r:stop()
    H.rmdir(dir)
    assert(ok, err)
  end)

  it("saves a durable instance passivated for the limit, which comes back with its state", function()
    local dir = H.script_dir { ["tally.lua"] = TALLY }
    local r = H.start(dir, { args = "--max-active 2" })
    local ok, err = pcall(function()
      local function add(id, n)
        local status, doc = r:call("Tally", id, "Add", { n = n })
        assert.are.equal(200, status, cjson.encode(doc))
        return doc.value
      end
      assert.are.equal(5, add("keep", 5))
      assert.are.equal(1, add("other-1", 1))
      assert.are.equal(1, add("other-2", 1)) -- "keep" is the least recently used: it goes
      assert.are.equal(1, r:metric("luster_limit_passivations_total"))
      assert.are.equal(7, add("keep", 2))
      assert.are.equal(2, r:metric("luster_limit_passivations_total"))
      assert.are.equal(2, r:metric("luster_resident_instances"))
    end)
    r:stop()
    H.rmdir(dir)
    assert(ok, err)
  end)

  it("wakes a persisted backlog a limit's worth of instances at a time, and runs all of it", function()
    local N = 2000
    local dir = H.script_dir { ["note.lua"] = MARK }
    local db, record = H.tmpname("max-active-db"), H.tmpname("max-active-record")
    local r = H.start(dir, { args = "--max-active 5 --storage sqlite:" .. db, env = { MARK_RECORD = record } })
    local ok, err = pcall(function()
      local at = math.floor(H.now() * 1000) + 3000 * H.slow
      local c = r:connect()
      for base = 0, N - 1, 100 do
        local batch = {}
        for i = base + 1, base + 100 do
          batch[#batch + 1] = request_text("/entities/Note/n" .. i .. "/Mark?discard=1", cjson.encode { at = at })
        end
        assert(c:send(table.concat(batch)))
        for _ = 1, 100 do assert.are.equal(202, (H.read_response(c))) end
      end
      c:close()
      assert.is_true(H.now() * 1000 < at, "storing the backlog took longer than its delay")
      local most = 0
      H.wait_for("the backlog to run", 60 * H.slow, function()
        most = math.max(most, r:metric("luster_resident_instances"))
        local n = 0
        for _ in (H.read_file(record) or ""):gmatch("[^\n]+") do n = n + 1 end
        return n == N
      end, 0.02)
      assert.is_true(most <= 5, ("sampled %d instances, above the limit of 5"):format(most))
      assert.is_true(r:metric("luster_persisted_scan_pauses_total") > 0, "the scan never waited for the instances")
      local seen = {}
      for id in H.read_file(record):gmatch("[^\n]+") do seen[id] = (seen[id] or 0) + 1 end
      for i = 1, N do assert.are.equal(1, seen["n" .. i], "n" .. i .. " ran " .. tostring(seen["n" .. i]) .. " times") end
    end)
    r:stop()
    H.rmdir(dir)
    os.remove(db)
    os.remove(db .. "-wal")
    os.remove(db .. "-shm")
    os.remove(db .. "-lock")
    os.remove(record)
    assert(ok, err)
  end)

  it("refuses a limit that is not a positive whole number, naming the flag", function()
    local dir = H.script_dir { ["bump.lua"] = BUMP }
    local code, _, err = H.cli("run " .. dir .. " --http 127.0.0.1:0 --max-active 0")
    assert.are.equal(2, code)
    assert.matches("--max-active must be a whole number between 1 and 1000000000", err, 1, true)
    code, _, err = H.cli("run " .. dir .. " --http 127.0.0.1:0 --max-active lots")
    assert.are_not.equal(0, code)
    assert.matches("invalid value 'lots' for max-active", err, 1, true)
    code, _, err = H.cli("check " .. dir .. " --max-active 0")
    assert.are.equal(2, code)
    assert.matches("--max-active", err, 1, true)
    H.rmdir(dir)
  end)

  it("reads the limit from LUSTER_MAX_ACTIVE", function()
    local dir = H.script_dir { ["bump.lua"] = BUMP }
    local r = H.start(dir, { env = { LUSTER_MAX_ACTIVE = "7" } })
    local ok, err = pcall(function() assert.are.equal(7, r:metric("luster_max_active")) end)
    r:stop()
    H.rmdir(dir)
    assert(ok, err)
  end)
end)
