-- Durable entity state (`luster.entity(..., { durable = true })`) on every
-- storage: the Tally fixture (spec/fixtures/durable_state/) keeps a total
-- that must come back after passivation, restarts, hand-offs and kill -9,
-- and that each persisted key changes exactly once.
--
-- Each storage below gets the same specs; those that need the state to
-- outlive the process (restart, kill -9) run where `lasting` is set. Another
-- storage joins with one line in STORAGES and one entry in BACKENDS.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"
local PG = require "support.pg"
local cjson = require "cjson"

local FIXTURE = H.root .. "/spec/fixtures/durable_state"
local STORAGES = { "memory", "sqlite", "pg" }

local pg
local dbs = 0

-- kind -> how to make a fresh store of it: new() returns { args() (the
-- runner's flags, and its --listen port if any), url, close() to remove
-- its files }; `lasting`: the
-- state outlives the process; `cluster`: runners form a cluster on it.
local BACKENDS = {
  memory = { new = function() return { args = function() return "" end } end },
  sqlite = {
    lasting = true,
    new = function()
      local dir = H.tmpdir()
      return {
        args = function() return "--storage sqlite:" .. dir .. "/state.db" end,
        close = function() H.rmdir(dir) end,
      }
    end,
  },
  pg = {
    lasting = true,
    cluster = true,
    new = function()
      dbs = dbs + 1
      local url = pg:create_db("state" .. dbs)
      return {
        url = url,
        db = "state" .. dbs,
        args = function()
          local port = H.free_port()
          return string.format("--storage %s --listen 127.0.0.1:%d --shards 16 --lease 2s", url, port), port
        end,
      }
    end,
  },
}

local function encode(v) return type(v) == "table" and cjson.encode(v) or tostring(v) end

-- A fresh store of `kind` and a record file; start(extra_args) starts a
-- runner on them (waiting until it serves every shard it should), and
-- stop_all() stops every runner started.
local function world(kind)
  local store = BACKENDS[kind].new()
  local dir = H.tmpdir()
  local w = { store = store, record = dir .. "/record", runners = {} }
  function w.start(extra, opts)
    opts = opts or {}
    local args, port = store.args()
    local r = H.start(FIXTURE, { args = args .. " " .. (extra or "--max-idle 60s"), env = { DURABLE_RECORD = w.record } })
    if port then r.address = "127.0.0.1:" .. port end
    w.runners[#w.runners + 1] = r
    if BACKENDS[kind].cluster then
      H.wait_cluster(r, opts.members or 1)
      -- Its connection for persisted messages and state is up once a
      -- lookup of a request id never used answers "no such request"
      -- rather than "unavailable".
      H.wait_for("the runner's storage connection", 10, function()
        return (r:request("GET", "/requests/9223372036854775000")) == 404
      end, 0.05)
    end
    return r
  end
  function w.stop_all()
    for _, r in ipairs(w.runners) do r:stop(5) end
    H.rmdir(dir)
    if store.close then store.close() end
  end
  -- Apply runs recorded for key: { before = total the run started from }.
  function w.runs(key)
    local out = {}
    for line in (H.read_file(w.record) or ""):gmatch("[^\n]+") do
      local k, before, runner = line:match("^apply (%S+) (%-?%d+) (%S+)$")
      if k == key then out[#out + 1] = { before = tonumber(before), runner = runner } end
    end
    return out
  end
  return w
end

-- Runs fn(w) in a fresh world of `kind`, stopping its runners whatever fn does.
local function with_world(kind, fn)
  local w = world(kind)
  local ok, err = pcall(fn, w)
  local logs = {}
  for _, r in ipairs(w.runners) do logs[#logs + 1] = r:log_text() end
  w.stop_all()
  if not ok then error(tostring(err) .. "\n--- runner logs:\n" .. table.concat(logs, "\n---\n"), 0) end
end

local function value(r, id, rpc, payload, query)
  local status, doc = r:call("Tally", id, rpc, payload or {}, query)
  assert(status == 200, string.format("%s %s answered %s %s", rpc, id, tostring(status), encode(doc)))
  return doc.value
end

local function writes(r) return r:metric('luster_state_writes_total{type="Tally"}') or 0 end

-- Asks r which runner serves ids prefix..i until one is served by `address`.
local function id_on(r, prefix, address)
  for i = 1, 500 do
    local id = prefix .. i
    if value(r, id, "Where", {}, "?timeout=5000") == address then return id end
  end
  error("no id served by " .. address)
end

describe("durable entity state", function()
  -- PostgreSQL only when a storage needs it.
  local need_pg = false
  for _, kind in ipairs(STORAGES) do if kind == "pg" then need_pg = true end end
  if need_pg then
    setup(function() pg = PG.start() end)
    teardown(function() if pg then pg:destroy() end end)
  end

  describe("declaring", function()
    local function check(src)
      local dir = H.script_dir { ["t.lua"] = src }
      local code, out = H.cli("check " .. H.sh_quote(dir))
      H.rmdir(dir)
      return code, out
    end

    it("refuses a durable option that is not a boolean, and concurrency with durable, naming the type", function()
      local code, out = check([[
        local luster = require "luster"
        return luster.entity("Cart", {}, { durable = "yes" }):handlers(function() return {} end)]])
      assert.are.equal(1, code)
      assert.matches("luster.entity(Cart): durable must be a boolean, got string", out, 1, true)
      code, out = check([[
        local luster = require "luster"
        return luster.entity("Cart", {}, { durable = true, concurrency = 4 }):handlers(function() return {} end)]])
      assert.are.equal(1, code)
      assert.matches("luster.entity(Cart): a durable entity handles one message at a time; remove concurrency = 4",
        out, 1, true)
    end)

    it("answers a defect naming the type when a durable type's handlers have no snapshot", function()
      local dir = H.script_dir { ["t.lua"] = [[
        local luster = require "luster"
        local Get = luster.rpc("Get", { success = luster.schema.integer })
        return luster.entity("NoSnap", { Get }, { durable = true }):handlers(function()
          return { Get = function() return 1 end }
        end)]] }
      local r = H.start(dir)
      local ok, err = pcall(function()
        local status, doc = r:call("NoSnap", "x", "Get", {})
        assert.are.equal(500, status)
        assert.are.equal("defect", doc.error.kind)
        assert.matches("NoSnap is durable: activate must return a snapshot function", doc.error.message, 1, true)
      end)
      r:stop()
      H.rmdir(dir)
      assert(ok, err)
    end)

    it("calls ctx:forget() on a type that is not durable a defect that says how to declare it", function()
      local dir = H.script_dir { ["t.lua"] = [[
        local luster = require "luster"
        local Drop = luster.rpc("Drop", {})
        return luster.entity("Plain", { Drop }):handlers(function(ctx)
          return { Drop = function() ctx:forget() end }
        end)]] }
      local r = H.start(dir)
      local ok, err = pcall(function()
        local status, doc = r:call("Plain", "x", "Drop", {})
        assert.are.equal(500, status)
        assert.matches('ctx:forget() is for durable entities: Plain is not declared with luster.entity("Plain", rpcs, ' ..
          '{ durable = true })', doc.error.message, 1, true)
      end)
      r:stop()
      H.rmdir(dir)
      assert(ok, err)
    end)

    it("keeps the state across a reload of the script", function()
      local dir = H.script_dir { ["tally.lua"] = H.read_file(FIXTURE .. "/tally.lua"),
        ["lib/record.lua"] = H.read_file(FIXTURE .. "/lib/record.lua") }
      local r = H.start(dir)
      local ok, err = pcall(function()
        assert.are.equal(12, value(r, "rl", "Add", { n = 12 }))
        H.write_file(dir .. "/tally.lua", H.read_file(FIXTURE .. "/tally.lua") .. "\n-- v2\n")
        H.wait_for("the reload", 5, function() return r:log_text():find("reloaded tally.lua", 1, true) end)
        assert.are.equal(12, value(r, "rl", "Get"))
        assert.are.equal(13, value(r, "rl", "Add", { n = 1 }))
      end)
      r:stop()
      H.rmdir(dir)
      assert(ok, err)
    end)
  end)

  for _, kind in ipairs(STORAGES) do
    describe("on " .. kind, function()
      it("keeps the state across passivation", function()
        with_world(kind, function(w)
          local r = w.start("--max-idle 200ms")
          assert.are.equal(5, value(r, "p", "Add", { n = 5 }))
          assert.are.equal(7, value(r, "p", "Add", { n = 2 }))
          H.wait_for("the instance to passivate", 10, function()
            return (r:metric('luster_passivations_total{type="Tally"}') or 0) >= 1
              and r:metric('luster_active_instances{type="Tally"}') == 0
          end)
          assert.are.equal(7, value(r, "p", "Get"))
          assert.is_true(r:metric('luster_activations_total{type="Tally"}') >= 2)
        end)
      end)

      it("does not write a snapshot that did not change", function()
        with_world(kind, function(w)
          local r = w.start()
          assert.are.equal(0, value(r, "fresh", "Get"))
          assert.are.equal(0, writes(r), "an untouched instance wrote its state")
          assert.are.equal(4, value(r, "u", "Add", { n = 4 }))
          assert.are.equal(1, writes(r))
          for _ = 1, 3 do assert.are.equal(4, value(r, "u", "Get")) end
          assert.are.equal(4, value(r, "u", "Add", { n = 0 }))
          assert.are.equal(1, writes(r), "unchanged snapshots were written again")
          assert.are.equal(5, value(r, "u", "Add", { n = 1 }))
          assert.are.equal(2, writes(r))
        end)
      end)

      it("forgets the saved state with ctx:forget(), and the instance ends after that message", function()
        with_world(kind, function(w)
          local r = w.start()
          assert.are.equal(5, value(r, "f", "Add", { n = 5 }))
          local activations = r:metric('luster_activations_total{type="Tally"}')
          assert.are.equal(5, value(r, "f", "Forget"))
          assert.are.equal(0, value(r, "f", "Get"))
          assert.are.equal(activations + 1, r:metric('luster_activations_total{type="Tally"}'))
          if kind == "pg" then
            assert.are.equal("0", pg:psql("SELECT count(*) FROM luster_entity_state WHERE entity_id = 'f'",
              w.store.db):match("%d+"))
          end
        end)
      end)

      it("applies each persisted key once: re-sending every key changes nothing", function()
        with_world(kind, function(w)
          local r = w.start()
          local first, sum = {}, 0
          for i = 1, 20 do
            sum = sum + i
            first[i] = value(r, "once", "Apply", { key = "k" .. i, n = i })
            assert.are.equal(sum, first[i])
          end
          local before = writes(r)
          for i = 1, 20 do
            assert.are.equal(first[i], value(r, "once", "Apply", { key = "k" .. i, n = i }), "k" .. i .. "'s reply")
          end
          assert.are.equal(sum, value(r, "once", "Get"))
          assert.are.equal(before, writes(r))
          for i = 1, 20 do assert.are.equal(1, #w.runs("k" .. i), "k" .. i .. " ran again") end
        end)
      end)

      it("re-activates from the saved state before it retries a persisted handler that raised", function()
        with_world(kind, function(w)
          local r = w.start()
          assert.are.equal(10, value(r, "rr", "Add", { n = 10 }))
          assert.are.equal(11, value(r, "rr", "Apply", { key = "raise", n = 1, raise_first = true }))
          assert.are.equal(11, value(r, "rr", "Get"))
          local runs = w.runs("raise")
          assert.are.equal(2, #runs)
          assert.are.equal(10, runs[1].before)
          assert.are.equal(10, runs[2].before, "the retry saw the raised run's change")
        end)
      end)

      it("re-activates from the saved state after a volatile handler raised", function()
        with_world(kind, function(w)
          local r = w.start()
          assert.are.equal(2, value(r, "vf", "Add", { n = 2 }))
          local status, doc = r:call("Tally", "vf", "Fail", {})
          assert.are.equal(500, status, encode(doc))
          assert.matches("Fail raises after changing the total", doc.error.message, 1, true)
          assert.are.equal(2, value(r, "vf", "Get"), "the raised run's change stayed")
          assert.are.equal(3, value(r, "vf", "Add", { n = 1 }))
        end)
      end)

      it("answers a snapshot that cannot be encoded with a defect and keeps the state as it was", function()
        with_world(kind, function(w)
          local r = w.start()
          assert.are.equal(3, value(r, "bad", "Add", { n = 3 }))
          local before = writes(r)
          local status, doc = r:call("Tally", "bad", "Poison", {})
          assert.are.equal(500, status, encode(doc))
          assert.are.equal("defect", doc.error.kind)
          assert.are.equal("the state of Tally/bad could not be saved: Tally: snapshot() returned a value that cannot " ..
            "be encoded as JSON: Cannot serialise function: type not supported", doc.error.message)
          assert.are.equal(3, value(r, "bad", "Get"))
          status, doc = r:call("Tally", "bad", "Poison", { bytes = true })
          assert.are.equal(500, status, encode(doc))
          assert.are.equal("the state of Tally/bad could not be saved: its snapshot is stored as text: it must be " ..
            "valid UTF-8", doc.error.message)
          assert.are.equal(3, value(r, "bad", "Get"))
          assert.are.equal(before, writes(r))
          assert.are.equal(4, value(r, "bad", "Add", { n = 1 }))
        end)
      end)

      if BACKENDS[kind].lasting then
        it("keeps the state across a graceful restart and a kill -9", function()
          with_world(kind, function(w)
            local r = w.start()
            assert.are.equal(6, value(r, "rs", "Add", { n = 6 }))
            assert.are.equal(9, value(r, "rs", "Apply", { key = "rs1", n = 3 }))
            assert.is_true(r:stop(10))
            r = w.start()
            assert.are.equal(9, value(r, "rs", "Get"))
            assert.are.equal(10, value(r, "rs", "Add", { n = 1 }))
            r:kill("KILL")
            H.wait_for("the runner to exit", 10, function() return not H.alive(r.pid) end)
            r = w.start()
            assert.are.equal(10, value(r, "rs", "Get"))
          end)
        end)

        it("redelivers a persisted message cut off by kill -9 against the state before it", function()
          with_world(kind, function(w)
            local r = w.start()
            assert.are.equal(10, value(r, "cut", "Add", { n = 10 }))
            local status, doc = r:call("Tally", "cut", "Apply", { key = "cut1", n = 5, sleep = 30000 }, "?discard=1")
            assert.are.equal(202, status, encode(doc))
            H.wait_for("the run to start", 10, function() return #w.runs("cut1") == 1 end)
            r:kill("KILL")
            H.wait_for("the runner to exit", 10, function() return not H.alive(r.pid) end)
            -- Started again, its message runs again, this time to the end
            -- (the fixture sleeps only in a key's first recorded run).
            r = w.start()
            H.wait_for("the message to run again", 20, function() return #w.runs("cut1") >= 2 end)
            local runs = w.runs("cut1")
            assert.are.equal(10, runs[1].before)
            assert.are.equal(10, runs[2].before, "the redelivered run did not start from the state before it")
            assert.are.equal(15, value(r, "cut", "Apply", { key = "cut1", n = 5, sleep = 30000 }, "?timeout=40000"))
            assert.are.equal(15, value(r, "cut", "Get"))
            assert.are.equal(2, #w.runs("cut1"))
          end)
        end)
      end

      if BACKENDS[kind].cluster then
        for _, how in ipairs({ "graceful hand-off", "kill -9 failover" }) do
          it("keeps the state across a " .. how .. " to another runner", function()
            with_world(kind, function(w)
              local r1 = w.start()
              local r2 = w.start(nil, { members = 2 })
              H.wait_cluster(r1, 2)
              local id = id_on(r1, "h", r2.address)
              assert.are.equal(8, value(r1, id, "Add", { n = 8 }))
              assert.are.equal(10, value(r1, id, "Apply", { key = id .. "-a", n = 2 }))
              if how == "graceful hand-off" then
                assert.is_true(r2:stop(10))
              else
                r2:kill("KILL")
              end
              H.wait_for(id .. " to be served by the survivor", 30, function()
                local status, doc = r1:call("Tally", id, "Where", {}, "?timeout=1000")
                return status == 200 and doc.value == r1.address
              end, 0.1)
              assert.are.equal(10, value(r1, id, "Get"))
            end)
          end)
        end
      end
    end)
  end
end)
