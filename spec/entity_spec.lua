-- Entity runtime on one runner: ordering, concurrency, mailboxes, calls
-- between entities, timeouts, self-calls, passivation, keep-alive, ctx and
-- req, declared failures, persisted dedupe and deliver_at.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"
local socket = require "socket"

local FIXTURES = H.root .. "/spec/fixtures/runtime"

describe("the entity runtime", function()
  local r
  setup(function() r = H.start(FIXTURES, { args = "--max-idle 300ms" }) end)
  teardown(function() if r then r:stop() end end)

  it("processes the messages of one instance in the order they were sent", function()
    local s = r:call("Caller", "seq-sender", "SendSeq", { id = "order-1", count = 200 })
    assert.are.equal(200, s)
    local status, doc = r:call("Seq", "order-1", "List", {})
    assert.are.equal(200, status)
    assert.are.equal(200, #doc.value)
    for i = 1, 200 do assert.are.equal(i, doc.value[i]) end
  end)

  it("runs one message at a time by default", function()
    r:call("Caller", "w1", "SendWork", { type = "Serial", id = "s", count = 4, ms = 30 })
    local _, doc = r:call("Serial", "s", "Max", {})
    -- Max is queued behind the four Work messages, so it sees them all done.
    assert.are.equal(1, doc.value)
  end)

  it("runs up to `concurrency` messages of one instance at once", function()
    r:call("Caller", "w2", "SendWork", { type = "Parallel", id = "p", count = 6, ms = 150 })
    local max = H.wait_for("three Work messages to overlap", 5, function()
      local _, doc = r:call("Parallel", "p", "Max", {})
      return doc.value >= 3 and doc.value
    end)
    assert.are.equal(3, max)
  end)

  it("answers mailbox_full (503, Retry-After) when an instance's mailbox is at capacity", function()
    -- Tiny has mailbox = 2: one message runs, two wait, the rest are refused.
    local socks = {}
    local function send(i)
      socks[i] = r:connect()
      local body = '{"ms":400}'
      socks[i]:send("POST /entities/Tiny/t1/Sleep HTTP/1.1\r\nHost: x\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body)
    end
    send(1)
    H.wait_for("the first message to run", 5, function()
      return r:metric('luster_running_messages{type="Tiny"}') == 1
    end)
    for i = 2, 8 do send(i) end
    local ok, full = 0, 0
    for i = 1, 8 do
      local status, headers, body = H.read_response(socks[i])
      socks[i]:close()
      if status == 200 then ok = ok + 1
      else
        assert.are.equal(503, status)
        assert.are.equal("1", headers["retry-after"])
        assert.matches('"kind":"mailbox_full"', body, 1, true)
        full = full + 1
      end
    end
    assert.are.equal(3, ok)
    assert.are.equal(5, full)
  end)

  it("lets one entity call another and get its reply", function()
    local _, doc = r:call("Caller", "c1", "CallCounter", { id = "shared", amount = 5 })
    assert.are.equal(5, doc.value.value)
    _, doc = r:call("Caller", "c2", "CallCounter", { id = "shared", amount = 2 })
    assert.are.equal(7, doc.value.value)
    local _, direct = r:call("Counter", "shared", "Get", {})
    assert.are.equal(7, direct.value)
  end)

  it("sends fire-and-forget calls with discard = true", function()
    local _, doc = r:call("Caller", "c3", "CallCounter", { id = "ff", amount = 3, discard = true })
    assert.is_true(doc.value.value)
    local v = H.wait_for("the discarded increment to land", 5, function()
      local _, d = r:call("Counter", "ff", "Get", {})
      return d.value == 3 and d.value
    end)
    assert.are.equal(3, v)
  end)

  it("returns not_found errors for unknown types and RPCs (naming the type's RPCs) to a calling entity", function()
    local _, doc = r:call("Caller", "c4", "CallMissing", {})
    assert.are.equal("not_found", doc.value.type.kind)
    assert.matches("unknown entity type 'NoSuchType'", doc.value.type.message, 1, true)
    assert.are.equal("not_found", doc.value.rpc.kind)
    assert.are.equal("unknown rpc 'NoSuchRpc' on Counter; its rpcs are: Increment, Get", doc.value.rpc.message)
    assert.matches("^not_found: ", doc.value.rpc.text)
  end)

  it("validates payloads between entities as it does over HTTP", function()
    local _, doc = r:call("Caller", "c5", "CallBadPayload", {})
    assert.are.equal("schema", doc.value.kind)
    assert.matches("amount: expected number, got string", doc.value.message, 1, true)
  end)

  it("raises at the call site when a payload cannot be encoded as JSON", function()
    local status, doc = r:call("Caller", "c5u", "CallUnencodable", {})
    assert.are.equal(200, status)
    assert.is_false(doc.value.ok)
    assert.matches("probe.lua:%d+: client:Increment: payload cannot be encoded as JSON: "
      .. "Cannot serialise function: type not supported$", doc.value.err)
    assert.is_true(doc.value.appended)
    assert.are.equal("table", doc.value.info_type)
  end)

  it("fails a call with timeout when the callee does not answer in time", function()
    local t0 = H.now()
    local _, doc = r:call("Caller", "c6", "CallSleeper", { ms = 2000, timeout = 100 })
    assert.are.equal("timeout", doc.value.kind)
    assert.is_true(H.now() - t0 < 1.5 * H.slow)
    local _, ok = r:call("Caller", "c7", "CallSleeper", { ms = 10, timeout = 1000 })
    assert.are.equal("slept", ok.value.value)
  end)

  it("answers 504 to an HTTP call whose deadline passes", function()
    local status, doc = r:call("Sleeper", "s2", "Sleep", { ms = 2000 }, "?timeout=100")
    assert.are.equal(504, status)
    assert.are.equal("timeout", doc.error.kind)
  end)

  it("fails a self-call with concurrency 1 at once instead of hanging", function()
    local t0 = H.now()
    local status, doc = r:call("Caller", "me", "CallSelf", {})
    assert.are.equal(200, status)
    assert.are.equal("defect", doc.value.kind)
    assert.matches("Caller/me called itself", doc.value.message, 1, true)
    assert.is_true(H.now() - t0 < 1 * H.slow)
  end)

  it("gives handlers ctx (type, id, shard, runner) and req (tag, request_id, headers)", function()
    local status, doc = r:request("POST", "/entities/Introspect/alice/Info", "{}", { ["X-Probe"] = "yes" })
    assert.are.equal(200, status)
    local v = doc.value
    assert.are.equal("Introspect", v.type)
    assert.are.equal("alice", v.id)
    assert.is_true(v.shard >= 1 and v.shard <= 300)
    assert.are.equal("local", v.runner)
    assert.are.equal("Info", v.tag)
    assert.matches("^%d+$", v.request_id)
    assert.are.equal("yes", v.header)
    assert.are.equal("hello, alice", v.greeting) -- from DIR/lib/util.lua
  end)

  it("hands handlers whole JSON numbers as Lua integers", function()
    local _, doc = r:call("Introspect", "num", "Info", { n = 7 })
    assert.are.equal("7", doc.value.n_text)
  end)

  it("answers a declared failure with 422 and the failure value", function()
    local status, doc = r:call("Wallet", "w", "Withdraw", { amount = 4 })
    assert.are.equal(200, status)
    assert.are.equal(6, doc.value)
    status, doc = r:call("Wallet", "w", "Withdraw", { amount = 40 })
    assert.are.equal(422, status)
    assert.are.same({ reason = "insufficient_funds", balance = 6 }, doc.failure)
  end)

  it("answers every message that arrived while a failing activate waited, and tries again after", function()
    local socks = {}
    for i = 1, 3 do
      socks[i] = r:connect()
      socks[i]:send("POST /entities/SlowBrokenActivate/sb/Bump HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    end
    for i = 1, 3 do
      local status, _, raw = H.read_response(socks[i])
      socks[i]:close()
      assert.are.equal(500, status)
      assert.matches("cannot start sb either", raw, 1, true)
    end
    local status = r:call("SlowBrokenActivate", "sb", "Bump", {})
    assert.are.equal(500, status)
  end)

  it("reports a failing activate as a defect and tries again on the next message", function()
    for _ = 1, 2 do
      local status, doc = r:call("BrokenActivate", "b1", "Bump", {})
      assert.are.equal(500, status)
      assert.are.equal("defect", doc.error.kind)
      assert.matches("activating BrokenActivate/b1 failed: .*cannot start b1", doc.error.message)
    end
  end)
end)

describe("passivation", function()
  local r
  before_each(function() r = H.start(FIXTURES, { args = "--max-idle 200ms" }) end)
  after_each(function() r:stop() end)

  it("stops idle instances after max_idle and re-creates them on the next message", function()
    assert.are.equal(1, select(2, r:call("Counter", "p1", "Increment", { amount = 1 })).value)
    assert.are.equal(2, select(2, r:call("Counter", "p1", "Increment", { amount = 1 })).value)
    assert.are.equal(1, r:metric('luster_active_instances{type="Counter"}'))
    H.wait_for("Counter p1 to be passivated", 5, function()
      return r:metric('luster_active_instances{type="Counter"}') == 0
    end)
    assert.are.equal(1, r:metric('luster_passivations_total{type="Counter"}'))
    -- A fresh instance: the count starts over.
    assert.are.equal(1, select(2, r:call("Counter", "p1", "Increment", { amount = 1 })).value)
    assert.are.equal(2, r:metric('luster_activations_total{type="Counter"}'))
  end)

  it("honours a per-entity max_idle shorter than the runner's", function()
    local slow = H.start(FIXTURES, { args = "--max-idle 60s" })
    local ok, err = pcall(function()
      slow:call("Quick", "q", "Bump", {})
      slow:call("Counter", "c", "Increment", { amount = 1 })
      H.wait_for("Quick (max_idle = 100 ms) to be passivated", 5, function()
        return slow:metric('luster_active_instances{type="Quick"}') == 0
      end)
      assert.are.equal(1, slow:metric('luster_active_instances{type="Counter"}'))
    end)
    slow:stop()
    assert(ok, err)
  end)

  it("keeps an instance pinned with ctx:keep_alive(true) and lets it go when unpinned", function()
    r:call("Introspect", "pinned", "Pin", { on = true })
    r:call("Introspect", "pinned", "Bump", {})
    r:call("Introspect", "loose", "Bump", {})
    H.wait_for("the unpinned instance to be passivated", 5, function()
      return r:metric('luster_passivations_total{type="Introspect"}') == 1
    end)
    -- The pinned one kept its state through the idle period.
    assert.are.equal(2, select(2, r:call("Introspect", "pinned", "Bump", {})).value)
    r:call("Introspect", "pinned", "Pin", { on = false })
    H.wait_for("the unpinned instance to be passivated too", 5, function()
      return r:metric('luster_active_instances{type="Introspect"}') == 0
    end)
  end)
end)

describe("persisted RPCs on embedded storage", function()
  local r
  setup(function() r = H.start(FIXTURES) end)
  teardown(function() if r then r:stop() end end)

  it("runs a handler once per primary key and returns the first reply to duplicates", function()
    local s1, d1 = r:call("Ledger", "acct", "Deposit", { key = "k1", amount = 10 })
    assert.are.equal(200, s1)
    assert.are.same({ balance = 10, runs = 1 }, d1.value)
    local s2, d2 = r:call("Ledger", "acct", "Deposit", { key = "k1", amount = 10 })
    assert.are.equal(200, s2)
    assert.are.same(d1.value, d2.value)
    local _, runs = r:call("Ledger", "acct", "Runs", {})
    assert.are.equal(1, runs.value)
  end)

  it("gives concurrent duplicates the one reply of the single run", function()
    local socks = {}
    local body = '{"key":"k2","amount":5}'
    for i = 1, 5 do
      socks[i] = r:connect()
      socks[i]:send("POST /entities/Ledger/acct2/Deposit HTTP/1.1\r\nHost: x\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body)
    end
    local replies = {}
    for i = 1, 5 do
      local status, _, raw = H.read_response(socks[i])
      socks[i]:close()
      assert.are.equal(200, status)
      replies[raw] = true
    end
    local distinct = 0
    for _ in pairs(replies) do distinct = distinct + 1 end
    assert.are.equal(1, distinct)
    assert.are.equal(1, select(2, r:call("Ledger", "acct2", "Runs", {})).value)
  end)

  it("accepts ?discard=1 with 202 and still runs the message once", function()
    local status, doc = r:call("Ledger", "acct3", "Deposit", { key = "d1", amount = 1 }, "?discard=1")
    assert.are.equal(202, status)
    assert.is_true(doc.accepted)
    H.wait_for("the discarded deposit to run", 5, function()
      return select(2, r:call("Ledger", "acct3", "Runs", {})).value == 1
    end)
    local _, again = r:call("Ledger", "acct3", "Deposit", { key = "d1", amount = 1 })
    assert.are.same({ balance = 1, runs = 1 }, again.value)
  end)

  it("refuses a primary key reused with a different payload: 409 conflict naming the key, nothing runs", function()
    local s1, d1, h1 = r:call("Ledger", "acct10", "Deposit", '{"key":"order-7","amount":10}')
    assert.are.equal(200, s1)
    assert.are.same({ balance = 10, runs = 1 }, d1.value)
    -- Another user's order under the same key: refused, not the first reply.
    local s2, d2, h2 = r:call("Ledger", "acct10", "Deposit", '{"key":"order-7","amount":99}')
    assert.are.equal(409, s2)
    assert.are.same({ error = { kind = "conflict", message = "primary key 'order-7' of Ledger.Deposit was sent " ..
      "before with a different payload; a retry must send the same payload, another message needs another key" } }, d2)
    assert.is_nil(h2["x-request-id"])
    -- So is a discarded send.
    assert.are.equal(409, (r:call("Ledger", "acct10", "Deposit", '{"key":"order-7","amount":99}', "?discard=1")))
    -- The same payload is a retry, whatever its formatting and member order:
    -- the stored reply and request id, as before.
    for _, body in ipairs { '{"key":"order-7","amount":10}', ' { "amount" : 10, "key": "order\\u002d7" }\n' } do
      local s3, d3, h3 = r:call("Ledger", "acct10", "Deposit", body)
      assert.are.equal(200, s3, body)
      assert.are.same(d1.value, d3.value)
      assert.are.equal(h1["x-request-id"], h3["x-request-id"])
    end
    assert.are.equal(1, select(2, r:call("Ledger", "acct10", "Runs", {})).value)
  end)

  it("gives an entity that reuses a primary key with a different payload err.kind conflict", function()
    local status, doc = r:call("Caller", "c8", "CallDeposits", { id = "acct9", key = "k9", amounts = { 5, 5, 6 } })
    assert.are.equal(200, status)
    assert.are.same({ balance = 5, runs = 1 }, doc.value[1].value)
    assert.are.same(doc.value[1], doc.value[2])
    local e = doc.value[3]
    assert.are.equal("conflict", e.kind)
    assert.matches("primary key 'k9' of Ledger.Deposit was sent before with a different payload", e.message, 1, true)
    assert.matches("^conflict: ", e.text)
  end)

  it("delivers a deliver_at message on time, by timer", function()
    local now_ms = math.floor(socket.gettime() * 1000)
    local at = now_ms + 300
    local status, doc = r:call("Ledger", "acct4", "Remind", { at = at })
    assert.are.equal(200, status)
    assert.are.equal(at, doc.value.at)
    local late = doc.value.delivered - at
    assert.is_true(late >= 0, "delivered " .. -late .. " ms early")
    assert.is_true(late <= 50 * H.slow, "delivered " .. late .. " ms late")
  end)

  it("answers callers of stored messages with unavailable when the runner stops, and frees them", function()
    local r2 = H.start(FIXTURES, { args = "--shutdown-timeout 200ms" })
    local at = math.floor(socket.gettime() * 1000) + 60000
    local waiting = r2:connect()
    local body = string.format('{"at":%d}', at)
    waiting:send("POST /entities/Ledger/later/Remind HTTP/1.1\r\nHost: x\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body)
    assert.are.equal(202, (r2:call("Ledger", "later2", "Remind", { at = at }, "?discard=1")))
    H.wait_for("both messages to be stored", 5, function() return r2:metric("luster_persisted_messages") == 2 end)
    -- stop() also fails the spec on a sanitizer report (a leaked record, say).
    assert.is_true(r2:stop())
    local status, headers = H.read_response(waiting)
    waiting:close()
    assert.are.equal(503, status)
    assert.are.equal("1", headers["retry-after"])
  end)

  it("answers with X-Request-Id, and GET /requests/{id} returns the stored reply", function()
    local status, doc, headers = r:call("Ledger", "acct6", "Deposit", { key = "r1", amount = 3 })
    assert.are.equal(200, status)
    local rid = headers["x-request-id"]
    assert.is_truthy(rid and rid:match("^%d+$"), "X-Request-Id: " .. tostring(rid))
    local s2, d2 = r:request("GET", "/requests/" .. rid)
    assert.are.equal(200, s2)
    assert.are.same(doc.value, d2.value)
    local s3, d3, h3 = r:call("Ledger", "acct6", "Deposit", { key = "r2", amount = 1 }, "?discard=1")
    assert.are.equal(202, s3)
    assert.are.equal(h3["x-request-id"], d3.request_id)
    assert.are.equal(404, (r:request("GET", "/requests/1")))
    assert.are.equal(400, (r:request("GET", "/requests/abc")))
  end)

  it("retries a persisted handler that raises, with backoff, before the entity's later messages", function()
    -- Pipelined on one connection: the Flaky message arrives first.
    local c = r:connect()
    local b1, b2 = '{"key":"f1","fail":2}', '{"key":"after","amount":1}'
    c:send("POST /entities/Ledger/acct7/Flaky HTTP/1.1\r\nHost: x\r\nContent-Length: " .. #b1 .. "\r\n\r\n" .. b1 ..
      "POST /entities/Ledger/acct7/Deposit HTTP/1.1\r\nHost: x\r\nContent-Length: " .. #b2 .. "\r\n\r\n" .. b2)
    local status, _, raw = H.read_response(c)
    assert.are.equal(200, status, raw)
    local v = require("cjson").decode(raw).value
    assert.are.equal(3, v.tries)
    -- 100 ms, then 200 ms between the runs.
    assert.is_true(v.at[2] - v.at[1] >= 95 and v.at[3] - v.at[2] >= 195, "runs at " .. table.concat(v.at, ", "))
    local s2, _, raw2 = H.read_response(c)
    c:close()
    assert.are.equal(200, s2, raw2)
    -- The later message waited for the retries: it ran after the third run.
    local _, ev = r:call("Ledger", "acct7", "Events", {})
    assert.are.same({ "Flaky", "Flaky", "Flaky", "Deposit" }, ev.value)
  end)

  it("stores a defect after the fifth failed run of a persisted handler", function()
    local t0 = socket.gettime()
    local status, doc = r:call("Ledger", "acct8", "Flaky", '{"key":"f2","fail":100}')
    assert.are.equal(500, status)
    assert.is_truthy(doc.error.message:match("^failed 5 times"), doc.error.message)
    assert.is_true(socket.gettime() - t0 >= 1.45, "answered after " .. (socket.gettime() - t0) .. " s")
    local again = select(2, r:call("Ledger", "acct8", "Flaky", '{"key":"f2","fail":100}'))
    assert.are.same(doc, again) -- the stored reply: the handler does not run again
  end)

  it("rejects a persisted message with a bad payload before storing it", function()
    local status, doc = r:call("Ledger", "acct5", "Deposit", { key = 1, amount = 1 })
    assert.are.equal(400, status)
    assert.are.equal("key", doc.error.path)
    assert.are.equal(0, select(2, r:call("Ledger", "acct5", "Runs", {})).value)
  end)
end)
