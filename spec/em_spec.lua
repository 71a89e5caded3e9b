package.cpath = "build/?.so;" .. package.cpath
-- em_spec.lua - the entity manager (entity/entity.c) alone, through the
-- luster_em Lua module (spec/support/luster_em.c, `make build/luster_em.so`):
-- a fake host behind em_host_t (handlers that finish after a chosen virtual
-- time, that raise, activations counted) and the scheduler on a virtual
-- clock; no scripts, storage or cluster. Each case reads what the fake host
-- saw (activations, handler starts and ends, releases) and what each caller
-- was answered, with the virtual time of each.

local em = require("luster_em")

-- "label@at" for each event of kind (and id, when given), in order.
local function seen(m, kind, id)
  local out = {}
  for _, e in ipairs(m:events()) do
    if e.kind == kind and (id == nil or e.id == id) then out[#out + 1] = e.label .. "@" .. e.at end
  end
  return out
end

-- "label:kind" for every answer a caller received, in order.
local REPLY = { ok = true, defect = true, unavailable = true, not_found = true, failure = true, timeout = true }
local function answers(m)
  local out = {}
  for _, e in ipairs(m:events()) do
    if REPLY[e.kind] then out[#out + 1] = e.label .. ":" .. e.kind end
  end
  return out
end

describe("the entity manager on a fake host and a virtual clock", function()
  it("runs one instance's messages in order, one at a time, while other instances run beside it", function()
    local m = em.new(16)
    m:type("T", { concurrency = 1 })
    assert.equal("ok", m:send("T", "x", "a", { work = 30 }))
    assert.equal("ok", m:send("T", "x", "b", { work = 10 }))
    assert.equal("ok", m:send("T", "x", "c"))
    assert.equal("ok", m:send("T", "y", "d", { work = 5 }))
    assert.same({ "@0", "@0" }, seen(m, "activate"))
    assert.same({ "a@0" }, seen(m, "start", "x"))
    assert.same({ "d@0" }, seen(m, "start", "y")) -- not behind x's queue
    assert.equal(2, m:instance("T", "x").mailbox)
    m:advance(100)
    assert.same({ "a@0", "b@30", "c@40" }, seen(m, "start", "x"))
    assert.same({ "a@30", "b@40", "c@40" }, seen(m, "end", "x"))
    assert.same({ "d:ok", "a:ok", "b:ok", "c:ok" }, answers(m))
    assert.equal(2, m:stats("T").activations) -- once per instance, not per message
    m:close()
  end)

  it("runs up to `concurrency` messages of one instance at once, the rest in mailbox order", function()
    local m = em.new(4)
    m:type("T", { concurrency = 2 })
    for i, w in ipairs({ 50, 20, 10, 0 }) do
      assert.equal("ok", m:send("T", "x", "m" .. i, { work = w }))
    end
    assert.same({ "m1@0", "m2@0" }, seen(m, "start"))
    assert.equal(2, m:stats("T").running)
    m:advance(100)
    assert.same({ "m1@0", "m2@0", "m3@20", "m4@30" }, seen(m, "start"))
    assert.same({ "m2@20", "m3@30", "m4@30", "m1@50" }, seen(m, "end"))
    assert.same({ "m2:ok", "m3:ok", "m4:ok", "m1:ok" }, answers(m))
    m:close()
  end)

  it("refuses a volatile message when the mailbox is full, never a persisted one", function()
    local m = em.new(4)
    m:type("T", { concurrency = 1, mailbox = 2 })
    assert.equal("ok", m:send("T", "x", "run", { work = 100 })) -- running: not in the mailbox
    assert.equal("ok", m:send("T", "x", "q1"))
    assert.equal("ok", m:send("T", "x", "q2"))
    assert.equal("busy", m:send("T", "x", "full"))
    assert.equal("ok", m:send("T", "x", "stored", { persisted = true }))
    local i = m:instance("T", "x")
    assert.equal(3, i.mailbox)
    assert.equal(1, i.running)
    assert.equal(3, m:stats("T").queued)
    m:advance(100)
    assert.same({ "run:ok", "q1:ok", "q2:ok", "stored:ok" }, answers(m))
    assert.same({ "run@0", "q1@100", "q2@100", "stored@100" }, seen(m, "start"))
    assert.equal(0, m:stats("T").queued)
    -- room again: a volatile message is taken
    assert.equal("ok", m:send("T", "x", "later"))
    m:close()
  end)

  it("passivates an idle instance after max_idle of virtual time, counted from its last message", function()
    local m = em.new(4)
    m:type("T", { max_idle = 1000 })
    assert.equal("ok", m:send("T", "x", "a", { work = 10 }))
    m:advance(10)
    assert.equal("ready", m:instance("T", "x").state)
    m:advance(500) -- t = 510: a message makes it busy, then idle again from 510
    assert.equal("ok", m:send("T", "x", "b"))
    m:advance(999)
    assert.equal("ready", m:instance("T", "x").state)
    assert.equal(1, m:stats("T").active)
    m:advance(1)
    assert.is_nil(m:instance("T", "x"))
    assert.same({ "@1510" }, seen(m, "release", "x"))
    local st = m:stats("T")
    assert.equal(1, st.passivations)
    assert.equal(0, st.active)
    assert.equal(0, st.instances)
    -- the next message activates it again
    assert.equal("ok", m:send("T", "x", "c"))
    assert.equal(2, m:stats("T").activations)
    m:close()
  end)

  it("keeps an instance with keep_alive on, and passivates it max_idle after it is turned off", function()
    local m = em.new(4)
    m:type("T", { max_idle = 1000 })
    assert.equal("ok", m:send("T", "k", "a"))
    assert.equal("ok", m:send("T", "other", "b"))
    m:keep_alive("T", "k", true)
    m:advance(2000)
    assert.equal("ok", m:send("T", "k", "c")) -- a message does not make it idle again
    m:advance(3000)
    assert.equal("ready", m:instance("T", "k").state)
    assert.is_nil(m:instance("T", "other")) -- the same type, without keep_alive
    assert.equal(1, m:stats("T").passivations)
    m:keep_alive("T", "k", false) -- t = 5000: idle from now
    m:advance(999)
    assert.equal("ready", m:instance("T", "k").state)
    m:advance(1)
    assert.is_nil(m:instance("T", "k"))
    assert.same({ "@6000" }, seen(m, "release", "k"))
    m:close()
  end)

  it("runs a persisted message that raised again after the delay, first, with later messages waiting", function()
    local m = em.new(4)
    m:type("T", { concurrency = 1 })
    assert.equal("ok", m:send("T", "x", "p", { work = 10, raises = 1, persisted = true }))
    assert.equal("ok", m:send("T", "x", "q"))
    m:advance(10)
    assert.same({ "p@10" }, seen(m, "raise"))
    assert.equal(2, m:instance("T", "x").mailbox) -- p back at the head, q behind it
    m:advance(99) -- t = 109: the backoff (100 ms after the raise) has not ended
    assert.same({ "p@0" }, seen(m, "start"))
    m:advance(1)
    assert.same({ "p@0", "p@110" }, seen(m, "start"))
    m:advance(10)
    assert.same({ "p@0", "p@110", "q@120" }, seen(m, "start"))
    assert.same({ "p:ok", "q:ok" }, answers(m))
    m:close()
  end)

  it("doubles the delay between runs of a raising persisted message, and answers defect after the last", function()
    local m = em.new(4)
    m:type("T", {})
    assert.equal("ok", m:send("T", "x", "p", { raises = 99, persisted = true }))
    m:advance(10000)
    assert.same({ "p@0", "p@100", "p@300", "p@700", "p@1500" }, seen(m, "start"))
    assert.same({ "p:defect" }, answers(m))
    m:close()
  end)

  it("does not run a volatile message that raised again", function()
    local m = em.new(4)
    m:type("T", {})
    assert.equal("ok", m:send("T", "x", "v", { raises = 1 }))
    assert.equal("ok", m:send("T", "x", "w"))
    m:advance(1000)
    assert.same({ "v@0", "w@0" }, seen(m, "start"))
    assert.same({ "v:defect", "w:ok" }, answers(m))
    m:close()
  end)

  it("answers every waiting message defect when activation raises, and tries again on the next", function()
    local m = em.new(4)
    m:type("Bad", { fail_activate = true, activate_ms = 20 })
    assert.equal("ok", m:send("Bad", "x", "a"))
    assert.equal("ok", m:send("Bad", "x", "b"))
    m:advance(20)
    assert.same({ "a:defect", "b:defect" }, answers(m))
    assert.is_nil(m:instance("Bad", "x"))
    assert.same({}, seen(m, "start"))
    assert.equal("ok", m:send("Bad", "x", "c"))
    m:advance(20)
    assert.equal(2, m:stats("Bad").activations)
    assert.same({ "a:defect", "b:defect", "c:defect" }, answers(m))
    m:close()
  end)

  it("keeps two managers apart: counts, shards and clocks", function()
    local a, b = em.new(8), em.new(8)
    a:type("T", { max_idle = 1000 })
    b:type("T", { max_idle = 1000 })
    for _, id in ipairs({ "x", "y", "z" }) do
      assert.equal("ok", a:send("T", id, "m"))
    end
    assert.equal("ok", b:send("T", "x", "m"))
    assert.equal(3, a:active_total())
    assert.equal(1, b:active_total())
    local function on_shards(m)
      local n = 0
      for s = 1, 8 do n = n + m:shard_instances(s) end
      return n
    end
    assert.equal(3, on_shards(a))
    assert.equal(1, on_shards(b))
    -- the same id lands on the same shard in both, each counting its own
    local shard = b:instance("T", "x").shard
    assert.equal(a:instance("T", "x").shard, shard)
    assert.equal(1, b:shard_instances(shard))
    a:advance(1000) -- only a's clock moves
    assert.equal(0, a:active_total())
    assert.equal(3, a:stats("T").passivations)
    assert.equal(1, b:active_total())
    assert.equal(0, b:stats("T").passivations)
    assert.equal(0, b:now())
    b:advance(1000)
    assert.equal(0, b:active_total())
    a:close()
    b:close()
  end)

  -- The active-entity limit (em_set_max_active): one sample of em_metrics.
  local function metric(m, name)
    return tonumber(m:metrics():match("\n" .. name .. " (%d+)"))
  end

  it("passivates the least recently used idle instance past the limit, across types", function()
    local m = em.new(4)
    m:max_active(3)
    m:type("T", {})
    m:type("U", {})
    assert.equal("ok", m:send("T", "x", "a"))
    m:advance(1)
    assert.equal("ok", m:send("U", "y", "b"))
    m:advance(1)
    assert.equal("ok", m:send("T", "z", "c"))
    m:advance(1)
    assert.equal("ok", m:send("T", "x", "d")) -- x is the most recent now: y is the least
    m:advance(1)
    assert.equal("ok", m:send("T", "w", "e"))
    assert.same({ "@4" }, seen(m, "release", "y"))
    assert.is_nil(m:instance("U", "y"))
    assert.equal("ready", m:instance("T", "x").state)
    m:advance(1)
    assert.equal("ok", m:send("U", "v", "f")) -- then z
    assert.same({ "@5" }, seen(m, "release", "z"))
    assert.equal(3, metric(m, "luster_resident_instances"))
    assert.equal(2, metric(m, "luster_limit_passivations_total"))
    assert.equal(0, metric(m, "luster_slot_waits_total"))
    assert.equal(2, m:stats("T").passivations + m:stats("U").passivations)
    m:close()
  end)

  it("never passivates a busy or keep_alive instance: a new id waits for a slot, then fails before its deadline", function()
    local m = em.new(4)
    m:max_active(2)
    m:type("T", {})
    assert.equal("ok", m:send("T", "busy", "a", { work = 100 }))
    assert.equal("ok", m:send("T", "kept", "k"))
    m:keep_alive("T", "kept", true)
    m:advance(1)
    assert.equal("ok", m:send("T", "new", "b", { timeout = 50 }))
    assert.equal("ok", m:send("T", "new", "c", { timeout = 1000 })) -- same id: behind b, in order
    assert.equal("ok", m:send("T", "other", "d", { timeout = 1000 }))
    assert.is_nil(m:instance("T", "new"))
    assert.equal(3, metric(m, "luster_slot_waiting_messages"))
    m:advance(39) -- t = 40
    assert.same({ "k:ok" }, answers(m))
    m:advance(1) -- t = 41: b's deadline (51) less the margin (10)
    assert.same({ "k:ok", "b:unavailable" }, answers(m))
    m:advance(59) -- t = 100: "busy" ends, idle: it goes for "new"
    assert.same({ "@100" }, seen(m, "release", "busy"))
    assert.same({ "c@100" }, seen(m, "start", "new"))
    assert.equal("ready", m:instance("T", "kept").state)
    -- then d: "new" went idle at once, the least recently used of the two
    assert.same({ "d@100" }, seen(m, "start", "other"))
    assert.same({ "@100" }, seen(m, "release", "new"))
    assert.same({ "k:ok", "b:unavailable", "a:ok", "c:ok", "d:ok" }, answers(m))
    assert.equal(2, metric(m, "luster_resident_instances"))
    assert.equal(3, metric(m, "luster_slot_waits_total"))
    assert.equal(1, metric(m, "luster_slot_wait_timeouts_total"))
    m:close()
  end)

  it("keeps a persisted message waiting for a slot past any deadline, and runs it", function()
    local m = em.new(4)
    m:max_active(1, 50) -- a message without a deadline of its own would wait 50 ms
    m:type("T", {})
    assert.equal("ok", m:send("T", "x", "a", { work = 5000 }))
    assert.equal("ok", m:send("T", "y", "p", { persisted = true }))
    m:advance(4999)
    assert.same({}, answers(m))
    m:advance(1)
    assert.same({ "p@5000" }, seen(m, "start", "y"))
    assert.same({ "a:ok", "p:ok" }, answers(m))
    m:close()
  end)

  it("answers unavailable for work still queued or running when it closes", function()
    local m = em.new(4)
    m:type("T", {})
    assert.equal("ok", m:send("T", "x", "running", { work = 100 }))
    assert.equal("ok", m:send("T", "x", "queued"))
    m:close()
    assert.same({ "queued:unavailable", "running:unavailable" }, answers(m))
    assert.same({ "running@0" }, seen(m, "start"))
    assert.has_error(function() m:send("T", "x", "late") end, "this manager is closed")
  end)
end)
