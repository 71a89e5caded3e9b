-- SQLite storage for one runner (--storage sqlite:PATH): persisted messages,
-- replies, dedupe, deliver_at, cron instants and retention on a file that
-- outlives the runner (SIGTERM and kill -9, then a restart on the same
-- file); the lock that keeps a second runner off the file; the errors of
-- bad paths and flags; the warning of memory storage.
--
-- Runs are counted outside the runner's memory: the fixtures under
-- spec/fixtures/durable/ append one line per run to $DURABLE_RECORD.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"
local cjson = require "cjson"

local FIXTURES = H.root .. "/spec/fixtures/durable"
local CRON = FIXTURES .. "/cron"

local function now_ms() return math.floor(H.now() * 1000) end

local function encode(v)
  local ok, s = pcall(cjson.encode, v)
  if not ok then s = tostring(v) end
  if #s > 300 then s = s:sub(1, 300) .. "...(" .. #s .. " bytes)" end
  return s
end

-- key -> runs of `kind` in the record file.
local function counts(path, kind)
  local c = {}
  for line in (H.read_file(path) or ""):gmatch("[^\n]+") do
    local k, key = line:match("^(%S+) (%S+)")
    if k == kind then c[key] = (c[key] or 0) + 1 end
  end
  return c
end

-- The records of `kind`, each a list of its fields.
local function records(path, kind)
  local out = {}
  for line in (H.read_file(path) or ""):gmatch("[^\n]+") do
    local f = {}
    for w in line:gmatch("%S+") do f[#f + 1] = w end
    if f[1] == kind then out[#out + 1] = f end
  end
  return out
end

-- A fresh directory holding the database file and the record file; fn(ctx)
-- runs with ctx.start(extra_args, dir) starting a runner on the file (stopped
-- at the end, whatever fn does). The directory goes at the end.
local function with_file(fn, opts)
  opts = opts or {}
  local dir = H.tmpdir()
  local ctx = { dir = dir, db = dir .. "/luster.db", record = dir .. "/record", runners = {} }
  function ctx.start(args, scripts)
    local r = H.start(scripts or FIXTURES, { args = "--no-reload --storage sqlite:" .. ctx.db .. " " .. (args or ""),
      env = { DURABLE_RECORD = ctx.record, LUSTER_CRON_CATCH_UP = opts.catch_up } })
    ctx.runners[#ctx.runners + 1] = r
    return r
  end
  local ok, err = pcall(fn, ctx)
  local logs = {}
  for _, r in ipairs(ctx.runners) do
    r:stop(5)
    logs[#logs + 1] = r:log_text()
  end
  H.rmdir(dir)
  if not ok then error(tostring(err) .. "\n  runner logs:\n" .. table.concat(logs, "\n----\n"), 0) end
end

-- Raw HTTP: a request on a fresh connection, answered later by receive().
local function send(r, path, payload)
  local c = r:connect()
  local body = cjson.encode(payload)
  assert(c:send(string.format("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
    path, #body, body)))
  return c
end

-- status (0 when the connection broke), decoded body, headers.
local function receive(c)
  local ok, status, headers, raw = pcall(H.read_response, c)
  c:close()
  if not ok or not status then return 0, tostring(status or headers), {} end
  local dok, doc = pcall(cjson.decode, raw)
  return status, dok and doc or raw, headers
end

local function append(r, id, key, extra)
  local p = { key = key }
  for k, v in pairs(extra or {}) do p[k] = v end
  return r:call("Journal", id, "Append", p)
end

describe("sqlite storage", function()
  it("stores persisted messages, answers a retry with the stored reply, refuses a reused key with another payload (409), answers GET /requests/{id}, and keeps all of it across a restart", function()
    with_file(function(ctx)
      local r = ctx.start()
      local status, doc, headers = append(r, "a", "k1")
      assert.equal(200, status, encode(doc))
      local rid = headers["x-request-id"]
      assert.equal(rid, doc.value.request_id)
      local st2, doc2, h2 = append(r, "a", "k1")
      assert.equal(200, st2)
      assert.equal(rid, h2["x-request-id"])
      assert.same(doc.value, doc2.value)
      local st3, doc3 = append(r, "a", "k1", { sleep = 1 })
      assert.equal(409, st3, encode(doc3))
      assert.equal("conflict", doc3.error.kind)
      assert.truthy(doc3.error.message:find("primary key 'k1'", 1, true), doc3.error.message)
      local st4, doc4 = r:request("GET", "/requests/" .. rid)
      assert.equal(200, st4)
      assert.same(doc.value, doc4.value)
      assert.equal(1, counts(ctx.record, "append").k1)
      assert.truthy(r:stop(10), "the runner did not stop on SIGTERM")

      r = ctx.start()
      local st5, doc5, h5 = append(r, "a", "k1")
      assert.equal(200, st5, encode(doc5))
      assert.equal(rid, h5["x-request-id"])
      assert.same(doc.value, doc5.value)
      local st6 = append(r, "a", "k1", { sleep = 1 })
      assert.equal(409, st6)
      local st7, doc7 = r:request("GET", "/requests/" .. rid)
      assert.equal(200, st7)
      assert.same(doc.value, doc7.value)
      assert.equal(404, (r:request("GET", "/requests/999999")))
      assert.equal(1, counts(ctx.record, "append").k1, "the handler ran again after the restart")
      -- New messages get new request ids, never an earlier one's.
      local _, _, h8 = append(r, "a", "k2")
      assert.truthy(tonumber(h8["x-request-id"]) > tonumber(rid))
    end)
  end)

  it("delivers deliver_at messages on time by a timer, and one that was not due when the runner was killed after the restart, once", function()
    with_file(function(ctx)
      local r = ctx.start()
      local at = now_ms() + 700
      local c = send(r, "/entities/Alarm/x/Ring", { key = "soon", at = at })
      local status, doc = receive(c)
      assert.equal(200, status, encode(doc))
      assert.equal("soon", doc.value.key)
      assert.truthy(doc.value.delivered >= at and doc.value.delivered <= at + 100 * H.slow,
        "delivered at " .. doc.value.delivered .. " for " .. at)

      local later = now_ms() + 2500
      local st2, doc2 = r:call("Alarm", "y", "Ring", { key = "later", at = later }, "?discard=1")
      assert.equal(202, st2, encode(doc2))
      r:kill("KILL")
      H.wait_for("the killed runner to exit", 10, function() return not H.alive(r.pid) end)
      r = ctx.start()
      H.wait_for("the alarm due after the restart to ring", 10, function()
        return counts(ctx.record, "ring").later
      end)
      local ring = records(ctx.record, "ring")
      local last = ring[#ring]
      assert.equal("later", last[2])
      assert.truthy(tonumber(last[5]) >= later and tonumber(last[5]) <= later + 150 * H.slow,
        "rang at " .. last[5] .. " for " .. later)
      local st3, doc3 = r:request("GET", "/requests/" .. doc2.request_id)
      assert.equal(200, st3, encode(doc3))
      assert.equal("later", doc3.value.key)
      assert.same({ soon = 1, later = 1 }, counts(ctx.record, "ring"))
    end)
  end)

  it("runs a 1-second cron job once per instant across a restart, catching up the instants missed while it was down", function()
    with_file(function(ctx)
      local r = ctx.start(nil, CRON)
      local first = now_ms()
      H.wait_for("3 ticks", 10, function() return #records(ctx.record, "tick") >= 3 end, 0.05)
      r:kill("KILL")
      H.wait_for("the killed runner to exit", 10, function() return not H.alive(r.pid) end)
      H.sleep(1.5) -- instants pass while no runner runs the job
      local back = now_ms()
      r = ctx.start(nil, CRON)
      H.wait_for("ticks 3 s after the restart", 15, function()
        for _, t in ipairs(records(ctx.record, "tick")) do
          if tonumber(t[2]) >= back + 3000 then return true end
        end
      end, 0.05)
      local seen, list = {}, {}
      for _, t in ipairs(records(ctx.record, "tick")) do
        local s = tonumber(t[2])
        list[#list + 1] = s
        seen[s] = (seen[s] or 0) + 1
      end
      table.sort(list)
      local text = table.concat(list, " ")
      local dups = 0
      for s, n in pairs(seen) do
        -- Only the instant cut off by the kill may have run twice.
        if n > 1 then dups = dups + 1 end
        assert.truthy(n <= 2, s .. " ran " .. n .. " times: " .. text)
      end
      assert.truthy(dups <= 1, dups .. " instants ran twice: " .. text)
      for i = 2, #list do
        local gap = list[i] - list[i - 1]
        assert.truthy(gap == 1000 or gap == 0, "a gap of " .. gap .. " ms before " .. list[i] .. ": " .. text)
      end
      assert.truthy(list[1] <= first + 1000, text)
    end, { catch_up = "30s" })
  end)

  it("loses nothing acknowledged on kill -9 mid-stream of concurrent callers: after the restart every acknowledged key answers its stored reply without running again, and every other key runs", function()
    with_file(function(ctx)
      local r = ctx.start("--call-timeout 20s")
      local N, K = 400, 32
      local answers, t_kill = {}, nil
      local sent = 0
      while sent < N do
        local batch = {}
        for _ = 1, K do
          if sent == N then break end
          sent = sent + 1
          local key = string.format("k%03d", sent)
          -- Each run takes 30 ms: at the kill, some of the batch run, some
          -- wait in their mailboxes (stored), some are not stored yet.
          batch[#batch + 1] = { key = key, c = send(r, "/entities/Journal/j" .. (sent % 8) .. "/Append",
            { key = key, sleep = 30 }) }
        end
        if not t_kill and sent >= 200 then
          H.wait_for("a message of the last batch to run", 5, function()
            for _, f in ipairs(records(ctx.record, "append")) do
              if tonumber(f[2]:sub(2)) > sent - K then return true end
            end
          end, 0.002)
          t_kill = H.now()
          r:kill("KILL")
        end
        for _, b in ipairs(batch) do
          local status, doc, headers = receive(b.c)
          answers[b.key] = { status = status, doc = doc, rid = headers["x-request-id"] }
        end
        if t_kill then break end
      end
      H.wait_for("the killed runner to exit", 10, function() return not H.alive(r.pid) end)
      local acked = {}
      for key, a in pairs(answers) do
        if a.status == 200 then
          assert.equal(key, a.doc.value.key)
          acked[key] = a
        end
      end
      local ran_before = counts(ctx.record, "append")
      local n_acked = 0
      for key in pairs(acked) do
        n_acked = n_acked + 1
        assert.equal(1, ran_before[key], key .. " was acknowledged but ran " .. tostring(ran_before[key]) .. " times")
      end
      assert.truthy(n_acked >= 100, "only " .. n_acked .. " calls were acknowledged before the kill")
      assert.truthy(n_acked < sent, "every call was answered before the kill: it was not mid-stream")

      r = ctx.start()
      for key, a in pairs(acked) do
        local status, doc, headers = append(r, "j" .. tonumber(key:sub(2)) % 8, key, { sleep = 30 })
        assert.equal(200, status, key .. ": " .. encode(doc))
        assert.equal(a.rid, headers["x-request-id"], key .. ": another request id after the restart")
        assert.same(a.doc.value, doc.value)
      end
      -- Keys that were in flight: stored ones run after the restart (once
      -- more at most, if their run was cut off), the others run now.
      for key, a in pairs(answers) do
        if not acked[key] then
          local status, doc = append(r, "j" .. tonumber(key:sub(2)) % 8, key, { sleep = 30 })
          assert.equal(200, status, key .. ": " .. encode(doc))
        end
      end
      local ran = counts(ctx.record, "append")
      for key in pairs(acked) do assert.equal(1, ran[key], key .. " ran again after the restart") end
      for key in pairs(answers) do
        assert.truthy(ran[key] and ran[key] <= 2, key .. " ran " .. tostring(ran[key]) .. " times")
      end
      print(string.format("\n  sqlite kill -9: %d acknowledged of %d sent before the kill", n_acked, sent))
    end)
  end)

  it("runs a persisted message that was accepted (202) but not yet run when the runner was killed, after the restart", function()
    with_file(function(ctx)
      local r = ctx.start()
      local slow = send(r, "/entities/Journal/busy/Append", { key = "slow", sleep = 5000 })
      H.wait_for("the slow message to run", 10, function() return counts(ctx.record, "append").slow end)
      local status, doc = r:call("Journal", "busy", "Append", { key = "queued" }, "?discard=1")
      assert.equal(202, status, encode(doc))
      assert.is_nil(counts(ctx.record, "append").queued)
      r:kill("KILL")
      receive(slow)
      H.wait_for("the killed runner to exit", 10, function() return not H.alive(r.pid) end)
      r = ctx.start()
      H.wait_for("the queued message to run after the restart", 15, function()
        return counts(ctx.record, "append").queued
      end)
      local doc2 = H.wait_for("the queued message's reply", 15, function()
        local s, d = r:request("GET", "/requests/" .. doc.request_id)
        return s == 200 and d
      end)
      assert.equal("queued", doc2.value.key)
      assert.equal(1, counts(ctx.record, "append").queued)
    end)
  end)

  it("retries a persisted handler that raises 5 times, stores the defect as its reply, and answers it to a duplicate after a restart without running it again", function()
    with_file(function(ctx)
      local r = ctx.start("--call-timeout 20s")
      local status, doc, headers = r:call("Flaky", "f1", "Fail", { key = "boom" }, "?timeout=20000")
      assert.equal(500, status, encode(doc))
      assert.equal("defect", doc.error.kind)
      assert.equal("failed 5 times", doc.error.message:sub(1, #"failed 5 times"))
      assert.equal(5, counts(ctx.record, "fail").boom)
      local rid = headers["x-request-id"]
      assert.truthy(r:stop(10))
      r = ctx.start()
      local s2, d2, h2 = r:call("Flaky", "f1", "Fail", { key = "boom" })
      assert.equal(500, s2)
      assert.same(doc, d2)
      assert.equal(rid, h2["x-request-id"])
      assert.equal(5, counts(ctx.record, "fail").boom, "a duplicate ran the handler again")
      local s3, d3 = r:call("Flaky", "f1", "Note", { key = "after" })
      assert.equal(200, s3, encode(d3))
    end)
  end)

  it("prunes done messages after --retention: their replies are gone and their keys are new again", function()
    with_file(function(ctx)
      local r = ctx.start("--retention 1s")
      local status, doc, headers = append(r, "kept", "once")
      assert.equal(200, status, encode(doc))
      local rid = headers["x-request-id"]
      H.wait_for("the done message to be pruned", 20, function()
        return r:request("GET", "/requests/" .. rid) == 404
      end, 0.2)
      local st2, _, h2 = append(r, "kept", "once")
      assert.equal(200, st2)
      assert.are_not.equal(rid, h2["x-request-id"])
      assert.equal(2, counts(ctx.record, "append").once)
    end)
  end)

  it("keeps a stored message small on disk (prints bytes per message)", function()
    with_file(function(ctx)
      local r = ctx.start()
      local N = 1000
      for i = 1, N, 50 do
        local cs = {}
        for j = i, i + 49 do cs[#cs + 1] = send(r, "/entities/Journal/d" .. (j % 16) .. "/Append", { key = "m" .. j }) end
        for _, c in ipairs(cs) do assert.equal(200, (receive(c))) end
      end
      assert.truthy(r:stop(10))
      local f = assert(io.open(ctx.db, "rb"))
      local size = f:seek("end")
      f:close()
      assert.is_nil(io.open(ctx.db .. "-wal", "rb"), "the WAL was not checkpointed into the file at exit")
      local per = size / N
      print(string.format("\n  sqlite: %.0f bytes on disk per stored message with its reply (%d messages, %d bytes)",
        per, N, size))
      assert.truthy(per < 600, per .. " bytes per message")
    end)
  end)

  it("refuses a file whose schema is newer than this luster's, and leaves it as it was", function()
    with_file(function(ctx)
      local r = ctx.start()
      assert.equal(200, (append(r, "v", "kept")))
      assert.truthy(r:stop(10))
      -- The schema version is PRAGMA user_version: bytes 60-63 of the header.
      local f = assert(io.open(ctx.db, "r+b"))
      f:seek("set", 60)
      f:write(string.char(0, 0, 0, 99))
      f:close()
      local code, _, err = H.cli("run " .. H.sh_quote(FIXTURES) .. " --http 127.0.0.1:0 --no-reload --storage sqlite:" ..
        ctx.db)
      assert.equal(1, code, err)
      assert.truthy(err:find("'" .. ctx.db .. "' has schema version 99, newer than this luster's", 1, true), err)
      f = assert(io.open(ctx.db, "rb"))
      f:seek("set", 60)
      assert.equal(string.char(0, 0, 0, 99), f:read(4))
      f:close()
    end)
  end)

  it("refuses a second runner on the same file, naming the file and its lock", function()
    with_file(function(ctx)
      ctx.start()
      local code, _, err = H.cli("run " .. H.sh_quote(FIXTURES) .. " --http 127.0.0.1:0 --storage sqlite:" .. ctx.db)
      assert.equal(1, code, err)
      assert.truthy(err:find(ctx.db .. "-lock", 1, true), err)
      assert.truthy(err:find("in use by another luster runner", 1, true), err)
    end)
  end)

  it("exits with a clear error for a missing directory, a file that is not SQLite, a directory as the file, an empty path and a bad --sqlite-sync", function()
    local dir = H.tmpdir()
    local function run(args)
      return H.cli("run " .. H.sh_quote(FIXTURES) .. " --http 127.0.0.1:0 --no-reload " .. args)
    end
    local ok, e = pcall(function()
      local code, _, err = run("--storage sqlite:" .. dir .. "/missing/x.db")
      assert.equal(1, code, err)
      assert.truthy(err:find(dir .. "/missing/x.db-lock", 1, true) and err:find("does its directory exist", 1, true), err)

      H.write_file(dir .. "/text.db", string.rep("this is not a database\n", 100))
      code, _, err = run("--storage sqlite:" .. dir .. "/text.db")
      assert.equal(1, code, err)
      assert.truthy(err:find(dir .. "/text.db", 1, true) and err:find("not a SQLite database", 1, true), err)

      os.execute("mkdir " .. H.sh_quote(dir .. "/adir"))
      code, _, err = run("--storage sqlite:" .. dir .. "/adir")
      assert.equal(1, code, err)
      assert.truthy(err:find("cannot open '" .. dir .. "/adir' as SQLite storage", 1, true), err)

      code, _, err = run("--storage sqlite:")
      assert.equal(2, code, err)
      assert.truthy(err:find("sqlite:PATH needs the path", 1, true), err)

      code, _, err = run("--storage sqlite:" .. dir .. "/ok.db --sqlite-sync always")
      assert.equal(2, code, err)
      assert.truthy(err:find("--sqlite-sync must be 'normal' or 'full', got 'always'", 1, true), err)
      assert.is_nil(io.open(dir .. "/ok.db", "rb"))
    end)
    H.rmdir(dir)
    assert(ok, e)
  end)

  it("takes the file from LUSTER_STORAGE and synchronous FULL from LUSTER_SQLITE_SYNC (--sqlite-sync full), and says so", function()
    with_file(function(ctx)
      local r = H.start(FIXTURES, { args = "--no-reload",
        env = { DURABLE_RECORD = ctx.record, LUSTER_STORAGE = "sqlite:" .. ctx.db, LUSTER_SQLITE_SYNC = "full" } })
      ctx.runners[#ctx.runners + 1] = r
      assert.equal(200, (append(r, "f", "full1")))
      assert.truthy(r:log_text():find("storage: SQLite file " .. ctx.db .. " (synchronous full)", 1, true),
        r:log_text())
      local f = io.open(ctx.db, "rb")
      assert.truthy(f, "no database file at " .. ctx.db)
      f:close()
    end)
  end)

  it("warns once at start on memory storage that persisted RPCs last only as long as the process, naming --storage sqlite:PATH", function()
    local r = H.start(FIXTURES, { args = "--no-reload" })
    local text = r:log_text()
    r:stop()
    local n = 0
    for _ in text:gmatch("storage is memory: persisted RPCs") do n = n + 1 end
    assert.equal(1, n, text)
    assert.truthy(text:find("last only as long as this process", 1, true), text)
    assert.truthy(text:find("--storage sqlite:PATH", 1, true), text)
    -- Scripts without persisted RPCs: nothing to warn about.
    local quiet = H.start(H.counter_dir, { args = "--no-reload" })
    local qtext = quiet:log_text()
    quiet:stop()
    assert.is_nil(qtext:find("storage is memory", 1, true), qtext)
  end)
end)
