-- Durable (PostgreSQL-backed) persisted messages, singletons and cron jobs in
-- a cluster: runners on loopback over one throwaway PostgreSQL, one database
-- (so one cluster) per spec, stopping only the runners each spec started.
--
-- Runs are counted outside the runners' memory: the fixtures under
-- spec/fixtures/durable/ append one line per run to the file named by
-- $DURABLE_RECORD, which each spec gives its runners (a fresh file per spec),
-- so a kill -9 loses no evidence of what ran.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"
local PG = require "support.pg"
local History = require "support.history"
local cjson = require "cjson"

local FIXTURES = H.root .. "/spec/fixtures/durable"
local SINGLETON = FIXTURES .. "/singleton"
local CRON = FIXTURES .. "/cron"
local SHARDS = 64
local LEASE = "2s"

local pg
local dbs = 0

local function now_ms() return math.floor(H.now() * 1000) end

---------------------------------------------------------------------------
-- What the fixtures recorded
---------------------------------------------------------------------------

-- Field names of each kind of record line (see the fixtures' headers).
local FIELDS = {
  append = { "key", "runner", "rid", "at", "id" },
  ring = { "key", "runner", "rid", "at", "due" },
  fail = { "key", "runner", "rid", "at" },
  note = { "key", "runner", "rid", "at" },
  start = { "runner", "at" },
  tick = { "scheduled", "runner", "at" },
}
local NUMERIC = { at = true, due = true, scheduled = true }

-- A long key shown short.
local function short(s)
  s = tostring(s)
  if #s <= 40 then return s end
  return s:sub(1, 12) .. "..." .. s:sub(-12) .. "(" .. #s .. " bytes)"
end

local function recorder(path)
  local R = { path = path }
  -- Every record of `kind` (all when nil), in file order, as tables.
  function R.read(kind)
    local out = {}
    for line in (H.read_file(path) or ""):gmatch("[^\n]+") do
      local f = {}
      for w in line:gmatch("%S+") do f[#f + 1] = w end
      if not kind or f[1] == kind then
        local rec = { kind = f[1], n = #out + 1 }
        for i, name in ipairs(FIELDS[f[1]] or {}) do
          rec[name] = NUMERIC[name] and tonumber(f[i + 1]) or f[i + 1]
        end
        out[#out + 1] = rec
      end
    end
    return out
  end
  -- key -> number of runs of `kind`.
  function R.counts(kind)
    local c = {}
    for _, r in ipairs(R.read(kind)) do c[r.key] = (c[r.key] or 0) + 1 end
    return c
  end
  -- key -> list of its records of `kind`.
  function R.by_key(kind)
    local m = {}
    for _, r in ipairs(R.read(kind)) do
      m[r.key] = m[r.key] or {}
      table.insert(m[r.key], r)
    end
    return m
  end
  return R
end

-- Records as text, for failure messages.
local function show(recs, limit)
  local t = {}
  for i, r in ipairs(recs) do
    if i > (limit or 30) then t[#t + 1] = "  ... " .. (#recs - i + 1) .. " more" break end
    local parts = { r.kind }
    for _, name in ipairs(FIELDS[r.kind] or {}) do parts[#parts + 1] = name .. "=" .. short(r[name]) end
    t[#t + 1] = "  " .. table.concat(parts, " ")
  end
  return table.concat(t, "\n")
end

-- A value as JSON, cut at 300 bytes, for failure messages.
local function encode(v)
  local ok, s = pcall(cjson.encode, v)
  if not ok then s = tostring(v) end
  if #s > 300 then s = s:sub(1, 300) .. "...(" .. #s .. " bytes)" end
  return s
end

---------------------------------------------------------------------------
-- Clusters
---------------------------------------------------------------------------

-- A fresh cluster: a database of its own, and a record file of its own.
-- Returns a function that starts a runner in it, one that stops them all,
-- and the recorder.
local function new_cluster(opts)
  opts = opts or {}
  dbs = dbs + 1
  local url = pg:create_db("d" .. dbs)
  local dir = H.tmpdir()
  local rec = recorder(dir .. "/record")
  local env = { DURABLE_RECORD = rec.path }
  for k, v in pairs(opts.env or {}) do env[k] = v end
  local start, stop_all, started = H.cluster_runners(url, { dir = opts.dir or FIXTURES, shards = SHARDS,
    lease = LEASE, args = "--max-idle 60s " .. (opts.args or ""), env = env })
  local function logs()
    local t = {}
    for _, r in ipairs(started) do t[#t + 1] = (r.address or "?") .. " " .. r.log end
    return table.concat(t, ", ")
  end
  return start, stop_all, rec, dir, logs
end

-- Runs fn(start, rec) in a fresh cluster. Whatever fn does, every runner it
-- started is stopped, then opts.cleanup(ok) runs; fn's error, if any, fails
-- the spec, naming the record file (kept) and the runners' logs.
local function in_cluster(opts, fn)
  opts = opts or {}
  local start, stop_all, rec, dir, logs = new_cluster(opts)
  local ok, err = pcall(fn, start, rec)
  stop_all()
  if opts.cleanup then opts.cleanup(ok) end
  if not ok then
    error(string.format("%s\n  records: %s\n  runner logs: %s", tostring(err), rec.path, logs()), 0)
  end
  H.rmdir(dir)
end

-- Asks runner r, through `Where`, which runner serves each id prefix..i
-- until every address in `want` has `need` ids; returns address -> ids.
local function ids_by_owner(r, type_name, prefix, want, need)
  local by = {}
  for _, a in ipairs(want) do by[a] = {} end
  for i = 1, 1000 do
    local id = prefix .. i
    local status, doc = r:call(type_name, id, "Where", {}, "?timeout=5000")
    assert(status == 200, "Where " .. id .. " answered " .. status .. " " .. encode(doc))
    local list = by[doc.value]
    if list and #list < need then list[#list + 1] = id end
    local done = true
    for _, a in ipairs(want) do if #by[a] < need then done = false end end
    if done then return by end
  end
  error("could not find " .. need .. " ids on each of " .. table.concat(want, ", "))
end

-- The runner serving `id` now, as r sees it; nil when no answer in time.
local function where(r, type_name, id)
  local status, doc = r:call(type_name, id, "Where", {}, "?timeout=500")
  return status == 200 and doc.value or nil
end

---------------------------------------------------------------------------
-- Raw HTTP: many requests in flight from one spec
---------------------------------------------------------------------------

-- Sends a request on a fresh connection and returns the connection.
local function send(r, method, path, body)
  local c = r:connect()
  body = body or ""
  assert(c:send(string.format("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
    method, path, #body, body)))
  return c
end

-- Reads send()'s answer: status (0 when the connection broke), decoded body,
-- headers (lower-cased names), raw body.
local function receive(c)
  local ok, status, headers, raw = pcall(H.read_response, c)
  c:close()
  if not ok then return 0, tostring(status), {}, "" end
  if not status then return 0, tostring(headers), {}, "" end
  local dok, doc = pcall(cjson.decode, raw)
  return status, dok and doc or raw, headers, raw
end

local function post(r, type_name, id, rpc, payload, query)
  return send(r, "POST", "/entities/" .. type_name .. "/" .. id .. "/" .. rpc .. (query or ""), cjson.encode(payload))
end

-- GET /requests/{id} on r: status, decoded body, headers, raw body.
local function request_status(r, rid)
  return r:request("GET", "/requests/" .. rid)
end

-- Checks a 200 answer of Journal.Append for `key` (named `label` in
-- failures): the value, and that the X-Request-Id header is the request id
-- the handler saw. Returns the request id.
local function check_append_answer(key, status, doc, headers, label)
  label = label or short(key)
  assert(status == 200, label .. ": answered " .. tostring(status) .. " " .. encode(doc))
  assert(type(doc) == "table" and type(doc.value) == "table", label .. ": no value in " .. encode(doc))
  assert(doc.value.key == key, label .. ": the reply is for " .. short(doc.value.key))
  local rid = headers["x-request-id"]
  assert(type(rid) == "string" and rid:match("^%d+$"), label .. ": X-Request-Id is " .. tostring(rid))
  assert(rid == doc.value.request_id, label .. ": X-Request-Id " .. rid .. " but the handler saw " ..
    tostring(doc.value.request_id))
  return rid
end

---------------------------------------------------------------------------
describe("durable", function()
  setup(function() pg = PG.start() end)
  teardown(function() if pg then pg:destroy() end end)

  describe("persisted messages", function()
    it("re-delivers after kill -9 of the owner mid-stream: every acknowledged key runs, none answered before the kill runs again", function()
      in_cluster({ args = "--call-timeout 20s" }, function(start, rec)
        local rs = { start(), start(), start() }
        H.wait_cluster(rs[1], 3)
        local victim = rs[3]
        local by = ids_by_owner(rs[1], "Journal", "j", { victim.address, rs[1].address }, 5)
        local vic, surv = by[victim.address], by[rs[1].address]
        -- The stream: mostly to ids the victim serves, one a survivor serves.
        local targets = { vic[1], vic[2], vic[3], vic[4], surv[1] }
        local N, K = 300, 8

        -- Sent through the victim's own gateway (?discard=1: stored, then 202),
        -- slow enough to be pending when it dies: their replies must be
        -- readable from a survivor afterwards.
        local via_victim = {}
        for i = 1, 4 do
          local key, id = "v" .. i, i <= 2 and surv[2] or vic[5]
          local status, doc, headers = victim:call("Journal", id, "Append", { key = key, sleep = 1000 }, "?discard=1")
          assert(status == 202, key .. ": ?discard=1 answered " .. status .. " " .. encode(doc))
          assert(doc.accepted == true and type(doc.request_id) == "string" and doc.request_id:match("^%d+$"),
            key .. ": 202 body " .. encode(doc))
          assert(doc.request_id == headers["x-request-id"], key .. ": X-Request-Id " ..
            tostring(headers["x-request-id"]) .. ", body " .. encode(doc))
          via_victim[i] = { key = key, id = id, rid = doc.request_id }
        end

        local function key_of(i) return string.format("k%03d", i) end
        local function target_of(i) return targets[(i - 1) % #targets + 1] end
        local answers = {} -- key -> { status, doc, headers, raw, before_kill }
        local t_kill
        local sent = 0
        while sent < N do
          -- K calls in flight at once, through the survivors' gateways.
          local batch = {}
          for _ = 1, K do
            if sent == N then break end
            sent = sent + 1
            local key = key_of(sent)
            batch[#batch + 1] = { key = key, c = post(rs[(sent % 2) + 1], "Journal", target_of(sent), "Append",
              { key = key, sleep = 10 }, "?timeout=20000") }
          end
          if not t_kill and sent >= 100 then
            -- Cut the victim off while it runs messages of this batch.
            local keys = {}
            for _, b in ipairs(batch) do keys[b.key] = true end
            H.wait_for("a message of the batch to run on the victim", 5, function()
              for _, r in ipairs(rec.read("append")) do
                if keys[r.key] and r.runner == victim.address then return true end
              end
            end, 0.002)
            t_kill = H.now()
            victim:kill("KILL")
          end
          for _, b in ipairs(batch) do
            local status, doc, headers, raw = receive(b.c)
            answers[b.key] = { status = status, doc = doc, headers = headers, raw = raw, before_kill = t_kill == nil }
          end
        end
        assert(t_kill, "the victim was never killed")
        H.wait_for("the killed runner to exit", 10, function() return not H.alive(victim.pid) end)

        -- Only calls in flight at the kill may have failed (unavailable:
        -- they may or may not have run); later ones waited for the new owner.
        local acked, failed = {}, {}
        for i = 1, N do
          local key = key_of(i)
          local a = answers[key]
          if a.status == 200 then
            check_append_answer(key, a.status, a.doc, a.headers)
            acked[#acked + 1] = key
          else
            failed[#failed + 1] = string.format("%s: %d %s", key, a.status, encode(a.doc))
          end
        end
        assert(#failed <= K, #failed .. " calls failed, more than the " .. K .. " in flight at the kill:\n  " ..
          table.concat(failed, "\n  "))

        -- Every acknowledged key ran (a 200 is answered after the run), and
        -- no id was served by two runners at once: the history checker.
        local events = {}
        for _, r in ipairs(rec.read("append")) do
          events[#events + 1] = { ev = "run", type = "Journal", id = r.id, runner = r.runner, instance = r.runner,
                                  start = r.at, ["end"] = r.at, key = r.key }
        end
        for _, key in ipairs(acked) do events[#events + 1] = { ev = "ack", type = "Journal", key = key } end
        History.assert(events)
        -- The messages sent through the killed runner: stored, so they run,
        -- and their replies are readable from a survivor.
        for _, v in ipairs(via_victim) do
          local doc = H.wait_for("the reply to " .. v.key .. " (request " .. v.rid .. "), read from a survivor", 20, function()
            local status, d = request_status(rs[1], v.rid)
            assert(status == 200 or status == 202, "GET /requests/" .. v.rid .. " answered " .. status .. " " .. encode(d))
            if status == 202 then
              assert(d.pending == true and d.request_id == v.rid, "202 without pending: " .. encode(d))
              return false
            end
            return d
          end, 0.05)
          assert.are.equal(v.key, doc.value.key)
          assert.are.equal(v.rid, doc.value.request_id)
          local status2, doc2 = request_status(rs[2], v.rid)
          assert.are.equal(200, status2)
          assert.are.same(doc, doc2)
        end

        -- Quiet now (nothing more in flight). Send every key again through a
        -- survivor: a key that ran gets its first reply and never runs again;
        -- one that never ran (its call failed before it was stored) runs once.
        local before = rec.counts("append")
        local resend = {}
        -- (the same payloads as the first sends)
        for i = 1, N do resend[#resend + 1] = { key = key_of(i), id = target_of(i), sleep = 10 } end
        for _, v in ipairs(via_victim) do resend[#resend + 1] = { key = v.key, id = v.id, rid = v.rid, sleep = 1000 } end
        for from = 1, #resend, K do
          local batch = {}
          for j = from, math.min(#resend, from + K - 1) do
            local x = resend[j]
            batch[#batch + 1] = { x = x, c = post(rs[2], "Journal", x.id, "Append", { key = x.key, sleep = x.sleep },
              "?timeout=20000") }
          end
          for _, b in ipairs(batch) do
            local status, doc, headers, raw = receive(b.c)
            local rid = check_append_answer(b.x.key, status, doc, headers)
            local first = answers[b.x.key]
            if first and first.status == 200 then
              assert.are.same(first.doc, doc, b.x.key .. ": resend answered " .. raw .. ", first answer was " .. first.raw)
              assert.are.equal(first.headers["x-request-id"], rid)
            end
            if b.x.rid then assert.are.equal(b.x.rid, rid, b.x.key .. ": the request id of the first send") end
          end
        end
        local after = rec.counts("append")
        local all = rec.by_key("append")
        for _, x in ipairs(resend) do
          local b, a = before[x.key] or 0, after[x.key] or 0
          assert(a == math.max(b, 1), string.format("%s ran %d time(s) before the resend and %d after:\n%s", x.key, b, a,
            show(all[x.key] or {})))
        end

        -- Duplicates: only runs cut off by the kill (on the victim, without a
        -- stored reply) run again, so at most the messages unanswered at the kill.
        local dups, answered_before = {}, 0
        for _, x in ipairs(resend) do
          local list = all[x.key] or {}
          local a = answers[x.key]
          if a and a.before_kill and a.status == 200 then
            answered_before = answered_before + 1
            assert(#list == 1, x.key .. " was answered 200 before the kill, yet ran again:\n" .. show(list))
          end
          if #list > 1 then
            dups[#dups + 1] = x.key
            local on_victim = false
            for _, r in ipairs(list) do if r.runner == victim.address then on_victim = true end end
            assert(on_victim, x.key .. " ran twice, neither run on the killed runner:\n" .. show(list))
            assert(#list == 2, x.key .. " ran " .. #list .. " times:\n" .. show(list))
          end
        end
        local bound = K + #via_victim
        assert(#dups <= bound, string.format("%d keys ran twice, more than the %d unanswered at the kill: %s", #dups,
          bound, table.concat(dups, ", ")))
        assert(answered_before >= 90, "only " .. answered_before .. " keys were answered before the kill")
        print(string.format("\n  kill -9 mid-stream: %d keys, %d answered before the kill, %d failed in flight, %d ran twice",
          N, answered_before, #failed, #dups))
      end)
    end)

    it("runs a key sent through two runners at once exactly once, giving both callers its reply and request id", function()
      in_cluster({ args = "--call-timeout 20s" }, function(start, rec)
        local rs = { start(), start() }
        H.wait_cluster(rs[1], 2)
        local KEYS = 20
        local socks = {}
        for k = 1, KEYS do
          local key, id = "dup" .. k, "d" .. (k % 4)
          -- Both sends of a key leave together, in alternating order.
          local first = k % 2 + 1
          for _, j in ipairs { first, 3 - first } do
            socks[#socks + 1] = { key = key, via = j,
              c = post(rs[j], "Journal", id, "Append", { key = key, sleep = 30 }, "?timeout=20000") }
          end
        end
        local got = {}
        for _, s in ipairs(socks) do
          local status, doc, headers, raw = receive(s.c)
          got[s.key] = got[s.key] or {}
          got[s.key][s.via] = { status = status, doc = doc, headers = headers, raw = raw }
        end
        local counts, all = rec.counts("append"), rec.by_key("append")
        local rids = {}
        for k = 1, KEYS do
          local key = "dup" .. k
          local a, b = got[key][1], got[key][2]
          local rid_a = check_append_answer(key, a.status, a.doc, a.headers, key .. " via runner 1")
          local rid_b = check_append_answer(key, b.status, b.doc, b.headers, key .. " via runner 2")
          assert.are.same(a.doc, b.doc, key .. ": the two callers got different replies: " .. a.raw .. " and " .. b.raw)
          assert(rid_a == rid_b, key .. ": two request ids, " .. rid_a .. " and " .. rid_b)
          assert(counts[key] == 1, key .. " ran " .. tostring(counts[key] or 0) .. " times:\n" .. show(all[key] or {}))
          assert(not rids[rid_a], key .. " has the request id of " .. tostring(rids[rid_a]))
          rids[rid_a] = key
        end
      end)
    end)

    it("tells 10 000-byte primary keys apart by their last byte, and deduplicates the same long key", function()
      in_cluster({}, function(start, rec)
        local rs = { start(), start() }
        H.wait_cluster(rs[1], 2)
        local A = string.rep("k", 9999) .. "a"
        local B = string.rep("k", 9999) .. "b"
        local C = string.rep("k", 5000) .. "m" .. string.rep("k", 4998) .. "a" -- A but for a middle byte
        assert(#A == 10000 and #B == 10000 and #C == 10000)
        local function append(r, id, key)
          local status, doc, headers = r:call("Journal", id, "Append", { key = key })
          return check_append_answer(key, status, doc, headers, short(key) .. " to " .. id), doc
        end
        local rid_a, doc_a = append(rs[1], "long", A)
        local rid_b, doc_b = append(rs[2], "long", B)
        assert.are_not.equal(rid_a, rid_b)
        local rid_c = append(rs[1], "long", C)
        assert.are_not.equal(rid_a, rid_c)
        assert.are_not.equal(rid_b, rid_c)
        -- The same long keys again, through the other runner: the first replies.
        local rid_a2, doc_a2 = append(rs[2], "long", A)
        assert.are.equal(rid_a, rid_a2)
        assert.are.same(doc_a, doc_a2)
        local rid_b2, doc_b2 = append(rs[1], "long", B)
        assert.are.equal(rid_b, rid_b2)
        assert.are.same(doc_b, doc_b2)
        -- The same key to another entity is another message.
        local rid_other = append(rs[1], "long2", A)
        assert.are_not.equal(rid_a, rid_other)
        local runs = rec.read("append")
        local n = { [A] = 0, [B] = 0, [C] = 0 }
        for _, r in ipairs(runs) do n[r.key] = (n[r.key] or 0) + 1 end
        local msg = "runs recorded:\n" .. show(runs)
        assert(n[A] == 2, msg) -- once on "long", once on "long2"
        assert(n[B] == 1, msg)
        assert(n[C] == 1, msg)
        assert(#runs == 4, msg)
      end)
    end)

    it("refuses a primary key reused with a different payload through any runner, pending or done (409 conflict naming the key); a reordered same payload is a retry", function()
      in_cluster({ args = "--call-timeout 20s" }, function(start, rec)
        local rs = { start(), start() }
        H.wait_cluster(rs[1], 2)
        local conflict = { error = { kind = "conflict", message = "primary key 'k1' of Journal.Append was sent " ..
          "before with a different payload; a retry must send the same payload, another message needs another key" } }
        local function refused(r, body, query)
          local status, doc, headers = r:call("Journal", "cf", "Append", body, query)
          assert(status == 409, body .. " answered " .. tostring(status) .. " " .. encode(doc))
          assert.are.same(conflict, doc)
          assert.is_nil(headers["x-request-id"])
        end
        local first = send(rs[1], "POST", "/entities/Journal/cf/Append?timeout=20000", '{"key":"k1","sleep":500}')
        H.wait_for("the first send to run", 10, function() return rec.counts("append")["k1"] == 1 end, 0.01)
        refused(rs[2], '{"key":"k1","sleep":1}') -- while the first is pending
        local status, doc, headers = receive(first)
        local rid = check_append_answer("k1", status, doc, headers)
        refused(rs[2], '{"key":"k1"}') -- once it is done
        refused(rs[1], '{"key":"k1","sleep":1}', "?discard=1")
        local s2, d2, h2 = rs[2]:call("Journal", "cf", "Append", ' {"sleep": 500, "key": "k1"}')
        assert.are.equal(rid, check_append_answer("k1", s2, d2, h2, "the reordered retry"))
        assert.are.same(doc, d2)
        assert.equal(1, rec.counts("append")["k1"], "runs:\n" .. show(rec.read("append")))
        -- An unknown RPC is named as on one runner, whichever runner is asked.
        local s3, d3 = rs[2]:call("Journal", "cf", "Apend", {})
        assert.are.equal(404, s3)
        assert.are.equal("unknown rpc 'Apend' on Journal; its rpcs are: Append, Where", d3.error.message)
      end)
    end)

    it("stores persisted messages for a shard no runner serves, and delivers them in order once one does", function()
      in_cluster({ args = "--call-timeout 20s" }, function(start, rec)
        local rs = { start(), start() }
        H.wait_cluster(rs[1], 2)
        local owner, survivor = rs[2], rs[1]
        local x = ids_by_owner(survivor, "Journal", "n", { owner.address }, 1)[owner.address][1]
        -- Frozen owner: it holds the shard's lock but serves nothing. The
        -- survivor stores each message and answers 202 without waiting for it.
        owner:kill("STOP")
        local sent = {}
        local function discard(key)
          local t0 = H.now()
          local status, doc, headers = survivor:call("Journal", x, "Append", { key = key }, "?discard=1")
          local took = H.now() - t0
          assert(status == 202, key .. ": ?discard=1 answered " .. status .. " " .. encode(doc))
          assert(took < 1 * H.slow, string.format("%s: 202 took %.0f ms", key, took * 1000))
          assert.is_true(doc.accepted)
          assert.are.equal(doc.request_id, headers["x-request-id"])
          sent[#sent + 1] = { key = key, rid = doc.request_id }
        end
        for i = 1, 5 do discard("s" .. i) end
        for _, s in ipairs(sent) do
          local status, doc = request_status(survivor, s.rid)
          assert(status == 202, s.key .. ": GET /requests/" .. s.rid .. " while the owner is frozen answered " ..
            status .. " " .. encode(doc))
          assert.is_true(doc.pending)
          assert.are.equal(s.rid, doc.request_id)
        end
        assert.are.equal(0, #rec.read("append"), "nothing ran while the owner was frozen:\n" .. show(rec.read()))
        -- Now it dies, and until the survivor takes its shards over no runner
        -- owns x's shard: messages sent meanwhile are stored too.
        owner:kill("KILL")
        for i = 1, 5 do discard("k" .. i) end
        local runs = H.wait_for("all 10 messages to run", 20, function()
          local r = rec.read("append")
          return #r >= #sent and r
        end)
        H.wait_for("every reply to be stored", 10, function()
          for _, s in ipairs(sent) do
            local status, doc = request_status(survivor, s.rid)
            if status ~= 200 then return false end
            assert(doc.value.key == s.key and doc.value.request_id == s.rid, s.key .. ": stored reply " .. encode(doc))
          end
          return true
        end)
        runs = rec.read("append")
        local msg = "runs recorded:\n" .. show(runs)
        assert(#runs == #sent, msg)
        for i, s in ipairs(sent) do
          assert(runs[i].key == s.key, "not delivered in the order sent; " .. msg)
          assert(runs[i].rid == s.rid, msg)
          assert(runs[i].runner == survivor.address, msg)
        end
      end)
    end)

    it("delivers deliver_at messages within 50 ms of their time", function()
      in_cluster({ args = "--call-timeout 20s" }, function(start, rec)
        local rs = { start(), start() }
        H.wait_cluster(rs[1], 2)
        local base = now_ms() + 1500
        local socks = {}
        for i = 1, 4 do
          local key, at = "on-time" .. i, base + (i - 1) * 100
          -- A persisted call with a future deliver_at waits for its reply.
          socks[i] = { key = key, at = at,
            c = post(rs[(i % 2) + 1], "Alarm", "a" .. i, "Ring", { key = key, at = at }, "?timeout=10000") }
        end
        for _, s in ipairs(socks) do
          local status, doc, headers = receive(s.c)
          assert(status == 200, s.key .. ": answered " .. status .. " " .. encode(doc))
          assert.matches("^%d+$", headers["x-request-id"] or "")
          local late = doc.value.delivered - s.at
          assert(late >= 0, string.format("%s delivered %d ms early (runs: %s)", s.key, -late, show(rec.read("ring"))))
          assert(late <= 50 * H.slow, string.format("%s delivered %d ms late", s.key, late))
        end
        local counts = rec.counts("ring")
        for _, s in ipairs(socks) do
          assert(counts[s.key] == 1, s.key .. " ran " .. tostring(counts[s.key] or 0) .. " times:\n" .. show(rec.read("ring")))
        end
      end)
    end)

    it("delivers a deliver_at message once, on time, after kill -9 of its owner", function()
      in_cluster({ args = "--call-timeout 20s" }, function(start, rec)
        local rs = { start(), start() }
        H.wait_cluster(rs[1], 2)
        local owner, survivor = rs[2], rs[1]
        local id = ids_by_owner(survivor, "Alarm", "a", { owner.address }, 1)[owner.address][1]
        local at = now_ms() + 3000
        local status, doc = survivor:call("Alarm", id, "Ring", { key = "later", at = at }, "?discard=1")
        assert(status == 202, "?discard=1 answered " .. status .. " " .. encode(doc))
        local rid = doc.request_id
        owner:kill("KILL")
        -- When the survivor serves the id again.
        H.wait_for("the survivor to serve " .. id, 15, function() return where(survivor, "Alarm", id) == survivor.address end)
        local took_over = now_ms()
        local runs = H.wait_for("the alarm to ring", 15, function()
          local r = rec.read("ring")
          return #r > 0 and r
        end)
        -- Room for a second, wrong, delivery to show up.
        H.sleep(0.5)
        runs = rec.read("ring")
        assert(#runs == 1, "rang " .. #runs .. " times:\n" .. show(runs))
        local r = runs[1]
        assert.are.equal(survivor.address, r.runner)
        assert.are.equal(rid, r.rid)
        local late = r.at - at
        assert(late >= 0, "delivered " .. -late .. " ms early")
        local allowed = math.max(0, took_over - at) + 50 * H.slow
        assert(late <= allowed, string.format("delivered %d ms late (taken over %d ms after its time)", late, took_over - at))
        print(string.format("\n  deliver_at across kill -9 of its owner: taken over %d ms before its time, delivered %d ms late",
          at - took_over, late))
        local s2, d2 = request_status(survivor, rid)
        assert.are.equal(200, s2)
        assert.are.equal("later", d2.value.key)
      end)
    end)

    it("delivers a deliver_at message once after the only runner is killed and started again", function()
      in_cluster({ args = "--call-timeout 20s" }, function(start, rec)
        local r1 = start()
        H.wait_cluster(r1, 1)
        local at = now_ms() + 3000
        local status, doc = r1:call("Alarm", "restart", "Ring", { key = "restart", at = at }, "?discard=1")
        assert(status == 202, "?discard=1 answered " .. status .. " " .. encode(doc))
        r1:kill("KILL")
        H.wait_for("the runner to exit", 10, function() return not H.alive(r1.pid) end)
        local r2 = start()
        H.wait_cluster(r2, 1)
        local serving = now_ms()
        H.wait_for("the alarm to ring", 15, function() return #rec.read("ring") > 0 end)
        H.sleep(0.5)
        local runs = rec.read("ring")
        assert(#runs == 1, "rang " .. #runs .. " times:\n" .. show(runs))
        assert.are.equal(r2.address, runs[1].runner)
        local late = runs[1].at - at
        assert(late >= 0, "delivered " .. -late .. " ms early")
        local allowed = math.max(0, serving - at) + 100 * H.slow
        assert(late <= allowed, string.format("delivered %d ms late (serving again %d ms after its time)", late, serving - at))
        print(string.format("\n  deliver_at across a restart: serving again %d ms before its time, delivered %d ms late",
          at - serving, late))
      end)
    end)

    it("retries a persisted handler that raises 5 times in all, 100/200/400/800 ms apart, then stores a defect; later messages wait and then run", function()
      in_cluster({ args = "--call-timeout 20s" }, function(start, rec)
        local rs = { start(), start() }
        H.wait_cluster(rs[1], 2)
        local t0 = H.now()
        local fail = post(rs[1], "Flaky", "f1", "Fail", { key = "boom" }, "?timeout=20000")
        -- Once the failing message runs, a later one to the same entity.
        H.wait_for("the failing handler to run", 5, function() return #rec.read("fail") > 0 end, 0.005)
        local note = post(rs[2], "Flaky", "f1", "Note", { key = "after" }, "?timeout=20000")
        local status, doc, headers = receive(fail)
        local took = H.now() - t0
        local fails = rec.read("fail")
        local runs = "runs:\n" .. show(rec.read())
        assert(status == 500, "answered " .. status .. " " .. encode(doc) .. "\n" .. runs)
        assert.are.equal("defect", doc.error.kind)
        assert(type(doc.error.message) == "string" and doc.error.message:sub(1, #"failed 5 times") == "failed 5 times",
          "message: " .. encode(doc.error.message))
        local rid = headers["x-request-id"]
        assert.matches("^%d+$", rid or "")
        assert(#fails == 5, "the handler ran " .. #fails .. " times; " .. runs)
        assert(took >= 1.45 and took <= 4 * H.slow, string.format("answered after %.0f ms", took * 1000))
        for i, wait in ipairs { 100, 200, 400, 800 } do
          local gap = fails[i + 1].at - fails[i].at
          assert(gap >= wait - 5 and gap <= wait + 200 * H.slow,
            string.format("attempt %d came %d ms after attempt %d, not about %d; %s", i + 1, gap, i, wait, runs))
        end
        for _, f in ipairs(fails) do assert.are.equal(rid, f.rid) end
        -- The later message waited for the last attempt, then got its reply.
        local s2, d2 = receive(note)
        assert(s2 == 200, "the later message answered " .. s2 .. " " .. encode(d2))
        local notes = rec.read("note")
        assert(#notes == 1, runs)
        assert(notes[1].at >= fails[5].at, "the later message ran before the last attempt; " .. runs)
        local all = rec.read()
        assert(all[#all].kind == "note", "the later message ran between attempts; " .. runs)
        -- The stored defect is the reply: to a duplicate, and from any runner.
        local s3, d3, h3 = rs[2]:call("Flaky", "f1", "Fail", { key = "boom" })
        assert.are.equal(500, s3)
        assert.are.same(doc, d3)
        assert.are.equal(rid, h3["x-request-id"])
        local s4, d4 = request_status(rs[2], rid)
        assert.are.equal(500, s4)
        assert.are.same(doc, d4)
        assert(#rec.read("fail") == 5, "a duplicate ran the handler again; " .. "runs:\n" .. show(rec.read()))
        -- And the entity goes on answering.
        local t1 = H.now()
        local s5, d5 = rs[1]:call("Flaky", "f1", "Note", { key = "after2" })
        assert(s5 == 200, "answered " .. s5 .. " " .. encode(d5))
        assert.are.equal("after2", d5.value.key)
        assert(H.now() - t1 < 1 * H.slow, "a later message took " .. (H.now() - t1) .. " s")
      end)
    end)

    it("fails persisted sends fast with 503 unavailable while PostgreSQL is down, loses nothing acknowledged, and accepts them again once it returns", function()
      -- If the spec fails half-way, the next specs still need the server.
      local function server_back(ok) if not ok then pcall(pg.restart, pg) end end
      in_cluster({ args = "--call-timeout 10s", cleanup = server_back }, function(start, rec)
        local rs = { start(), start() }
        H.wait_cluster(rs[1], 2)
        local s0, d0, h0 = rs[1]:call("Journal", "pg", "Append", { key = "before" })
        check_append_answer("before", s0, d0, h0)
        -- Acknowledged before the server goes, due while it is down.
        local at = now_ms() + 1500
        local status, doc = rs[2]:call("Alarm", "pg", "Ring", { key = "due-while-down", at = at }, "?discard=1")
        assert(status == 202, "?discard=1 answered " .. status .. " " .. encode(doc))
        local alarm_rid = doc.request_id
        pg:stop()
        for _, q in ipairs { "?timeout=10000", "?discard=1" } do
          for i, r in ipairs(rs) do
            local t0 = H.now()
            local s, d = r:call("Journal", "pg" .. i, "Append", { key = "down" .. i }, q)
            local took = H.now() - t0
            assert(s == 503, string.format("%s through runner %d answered %d %s after %.0f ms", q, i, s, encode(d), took * 1000))
            assert.are.equal("unavailable", d.error.kind)
            assert(took < 2.5 * H.slow, string.format("%s: 503 after %.0f ms, not fast", q, took * 1000))
          end
        end
        pg:restart()
        local restarted = now_ms()
        H.wait_cluster(rs[1], 2, 30)
        -- Persisted sends work again (after the runners' lease wait).
        H.wait_for("a persisted send to succeed again", 20, function()
          return (rs[1]:call("Journal", "pg", "Append", { key = "after" })) == 200
        end, 0.1)
        for i, r in ipairs(rs) do
          local si, di, hi = r:call("Journal", "pg" .. i, "Append", { key = "down" .. i })
          check_append_answer("down" .. i, si, di, hi)
        end
        local counts = rec.counts("append")
        for _, key in ipairs { "before", "after", "down1", "down2" } do
          assert(counts[key] == 1, key .. " ran " .. tostring(counts[key] or 0) .. " times:\n" .. show(rec.read()))
        end
        -- The message acknowledged before the outage was not lost.
        H.wait_for("the alarm acknowledged before the outage to ring", 20, function() return #rec.read("ring") > 0 end)
        -- Its reply is stored (so it will not run again) once GET /requests
        -- says so; it may have run a first time during the outage without
        -- its reply being stored (cut off), hence at most twice.
        H.wait_for("the alarm's reply to be stored", 20, function() return request_status(rs[1], alarm_rid) == 200 end, 0.1)
        local rings = rec.read("ring")
        assert(#rings >= 1 and #rings <= 2, "rang " .. #rings .. " times:\n" .. show(rings))
        for _, r in ipairs(rings) do assert(r.at >= at, "rang early:\n" .. show(rings)) end
        if #rings == 2 then
          assert(rings[1].at < restarted, "rang twice, both after PostgreSQL returned:\n" .. show(rings))
        end
      end)
    end)

    it("prunes done messages after --retention: their replies are gone and their keys are new again", function()
      in_cluster({ args = "--retention 1s" }, function(start, rec)
        local r = start()
        H.wait_cluster(r, 1)
        local status, doc, headers = r:call("Journal", "kept", "Append", { key = "once" })
        local rid = check_append_answer("once", status, doc, headers)
        assert.equal(200, (request_status(r, rid)))
        -- Pruned by the runner's retention pass (every few seconds, in batches).
        H.wait_for("the done message to be pruned", 20, function() return request_status(r, rid) == 404 end, 0.2)
        assert.equal(1, rec.counts("append")["once"])
        -- Its key was forgotten with it: the same send is a new message.
        status, doc, headers = r:call("Journal", "kept", "Append", { key = "once" })
        local rid2 = check_append_answer("once", status, doc, headers)
        assert.are_not.equal(rid, rid2)
        assert.equal(2, rec.counts("append")["once"])
      end)
    end)
  end)

  describe("singletons and cron jobs", function()
    it("runs a singleton on exactly one of three runners, and another takes it over after kill -9", function()
      in_cluster({ dir = SINGLETON, args = "--call-timeout 2s" }, function(start, rec)
        local rs = { start(), start(), start() }
        H.wait_cluster(rs[1], 3)
        -- Runners whose beat is fresher than 300 ms, as seen through r.
        local function beating(r)
          local status, doc = r:call("Tally", "beacon", "Report", {}, "?timeout=1000")
          if status ~= 200 then return nil end
          local who = {}
          for runner, at in pairs(doc.value.beats) do
            if doc.value.now - at < 300000 then who[#who + 1] = runner end
          end
          table.sort(who)
          return who
        end
        local function sample(from, what)
          local seen = 0
          for _ = 1, 10 do
            local who = beating(from)
            -- No fresh beat (a loaded machine can delay one past 300 ms) says
            -- nothing about exclusivity; two at once would break it.
            if who and #who > 0 then
              seen = seen + 1
              assert(#who == 1, what .. ": runners beating at once: " .. table.concat(who, ", ") ..
                "\nstarts:\n" .. show(rec.read("start")))
            end
            H.sleep(0.1)
          end
          assert(seen > 0, what .. ": Tally never answered")
        end
        local owner = H.wait_for("the singleton to beat", 10, function()
          local who = beating(rs[1])
          return who and #who == 1 and who[1]
        end)
        sample(rs[1], "before the kill")
        local victim, observer
        for _, r in ipairs(rs) do
          if r.address == owner then victim = r elseif not observer then observer = r end
        end
        assert(victim, "the singleton runs on " .. owner .. ", not one of this cluster's runners")
        local t_kill = now_ms()
        victim:kill("KILL")
        local successor = H.wait_for("another runner to take the singleton over", 10, function()
          local who = beating(observer)
          return who and #who == 1 and who[1] ~= owner and who[1]
        end)
        sample(observer, "after the kill")
        local starts = rec.read("start")
        local restarted
        for _, s in ipairs(starts) do
          if s.at >= t_kill then
            assert(s.runner == successor, "started after the kill on " .. s.runner .. ":\n" .. show(starts))
            restarted = true
          end
        end
        assert(restarted, "no start recorded after the kill:\n" .. show(starts))
      end)
    end)

    it("runs a 1-second cron job once per instant, with no gap, across kill -9 of the runner running it", function()
      in_cluster({ dir = CRON, env = { LUSTER_CRON_CATCH_UP = "30s" } }, function(start, rec)
        local rs = { start(), start() }
        H.wait_cluster(rs[1], 2)
        local settled = now_ms()
        local last = H.wait_for("4 ticks after the cluster settled", 10, function()
          local ticks, n, latest = rec.read("tick"), 0, nil
          for _, t in ipairs(ticks) do
            if t.scheduled >= settled then
              n = n + 1
              if not latest or t.scheduled > latest.scheduled then latest = t end
            end
          end
          return n >= 4 and latest
        end, 0.05)
        local victim, survivor
        for _, r in ipairs(rs) do
          if r.address == last.runner then victim = r else survivor = r end
        end
        assert(victim and survivor, "the job runs on " .. last.runner)
        local t_kill = now_ms()
        victim:kill("KILL")
        H.wait_for("4 more seconds of ticks after the kill", 20, function()
          for _, t in ipairs(rec.read("tick")) do
            if t.scheduled >= t_kill + 4000 then return true end
          end
        end, 0.05)
        local ticks = rec.read("tick")
        table.sort(ticks, function(a, b) return a.scheduled < b.scheduled or (a.scheduled == b.scheduled and a.n < b.n) end)
        local msg = string.format("killed %s at %d; ticks:\n%s", victim.address, t_kill, show(ticks, 100))
        local dups = {}
        for i = 2, #ticks do
          local gap = ticks[i].scheduled - ticks[i - 1].scheduled
          if gap == 0 then
            dups[#dups + 1] = ticks[i]
            -- Only a run cut off by the kill may run again, by the new owner.
            assert(ticks[i].scheduled >= t_kill - 2000 and ticks[i].scheduled <= t_kill + 1000,
              "instant " .. ticks[i].scheduled .. " ran twice away from the kill; " .. msg)
            assert(ticks[i].runner ~= ticks[i - 1].runner,
              "instant " .. ticks[i].scheduled .. " ran twice on one runner; " .. msg)
          else
            assert(gap == 1000, "a gap of " .. gap .. " ms before " .. ticks[i].scheduled .. "; " .. msg)
          end
          assert(ticks[i].scheduled % 1000 == 0, "not a whole second; " .. msg)
        end
        assert(#dups <= 1, #dups .. " instants ran twice; " .. msg)
        for _, t in ipairs(ticks) do
          if t.at > t_kill + 100 then
            assert(t.runner == survivor.address, "a tick ran after the kill on " .. t.runner .. "; " .. msg)
          end
        end
        print(string.format("\n  cron across kill -9: %d ticks, %d re-run", #ticks, #dups))
      end)
    end)
  end)
end)
