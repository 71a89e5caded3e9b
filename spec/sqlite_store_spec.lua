package.cpath = "build/?.so;" .. package.cpath
-- sqlite_store_spec.lua - storage/sqlite.c without a runner, through the
-- luster_sqlite Lua module (spec/support/luster_sqlite.c, `make
-- build/luster_sqlite.so`): the durable entity state operations (estate.h),
-- their grouping into one transaction, the state write that goes with a
-- persisted message's reply, and the lock on the file.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"
local sqlite = require "luster_sqlite"

-- Runs fn(path) with a database path in a fresh directory, removed after.
local function with_path(fn)
  local dir = H.tmpdir()
  local ok, err = pcall(fn, dir .. "/state.db")
  H.rmdir(dir)
  if not ok then error(err, 0) end
end

describe("sqlite store", function()
  it("saves a snapshot (any bytes), loads it back, replaces it, and forgets it when saved as nil", function()
    with_path(function(path)
      local st = assert(sqlite.open(path))
      local bytes = "\0\1snap\255\0" .. string.rep("x", 5000)
      st:save("Cart", "c1", bytes)
      st:load("Cart", "c1")
      st:load("Cart", "c2")
      assert.same({}, st:results(), "a callback ran from inside the call that queued it")
      local r = st:run()
      assert.equal(3, #r)
      assert.same({ op = "save", ok = true }, r[1])
      assert.same({ op = "load", ok = true, found = true, bytes = bytes }, r[2])
      assert.same({ op = "load", ok = true, found = false }, r[3])
      st:save("Cart", "c1", "v2")
      st:save("Cart", "c1", "")
      st:load("Cart", "c1")
      r = st:run()
      assert.same({ op = "load", ok = true, found = true, bytes = "" }, r[3])
      st:save("Cart", "c1", nil)
      st:load("Cart", "c1")
      r = st:run()
      assert.same({ op = "load", ok = true, found = false }, r[2])
      -- Types and ids are told apart, and a NUL inside one counts.
      st:save("A", "x\0y", "1")
      st:save("A\0x", "y", "2")
      st:load("A", "x\0y")
      st:load("A\0x", "y")
      r = st:run()
      assert.equal("1", r[3].bytes)
      assert.equal("2", r[4].bytes)
      st:close()
    end)
  end)

  it("commits the writes queued in one loop turn as one transaction, in order", function()
    with_path(function(path)
      local st = assert(sqlite.open(path))
      local before = st:commits()
      for i = 1, 200 do st:save("Counter", "n" .. (i % 10), tostring(i)) end
      st:load("Counter", "n3")
      local r = st:run()
      assert.equal(201, #r)
      assert.equal(1, st:commits() - before)
      assert.equal("193", r[201].bytes) -- the last of the saves to n3
      st:close()
    end)
  end)

  it("writes the state with a persisted message's reply in one transaction, and never for a message that had its reply", function()
    with_path(function(path)
      local st = assert(sqlite.open(path))
      st:put("Cart", "c1", "Add", '{"item":"a"}', "k1")
      local r = st:run()
      local seq = r[1].seq
      assert.truthy(seq > 0)
      st:reply(seq, '{"value":1}', "Cart", "c1", "state-after-k1")
      st:state(seq)
      st:load("Cart", "c1")
      r = st:run()
      assert.same({ op = "reply", ok = true }, r[1])
      assert.same({ op = "state", ok = true, found = true, done = true, reply = '{"value":1}' }, r[2])
      assert.equal("state-after-k1", r[3].bytes)
      -- The same message replied again (a run repeated after a crash): its
      -- reply and the state stay as they were.
      st:reply(seq, '{"value":2}', "Cart", "c1", "state-applied-twice")
      st:state(seq)
      st:load("Cart", "c1")
      r = st:run()
      assert.equal('{"value":1}', r[2].reply)
      assert.equal("state-after-k1", r[3].bytes)
      -- A reply that forgets the state.
      st:put("Cart", "c1", "Clear", "{}", "k2")
      seq = st:run()[1].seq
      st:reply(seq, '{"value":0}', "Cart", "c1", false)
      st:load("Cart", "c1")
      r = st:run()
      assert.same({ op = "load", ok = true, found = false }, r[2])
      st:close()
    end)
  end)

  it("keeps the state across a close and a reopen of the file, and refuses a second store on an open file", function()
    with_path(function(path)
      local st = assert(sqlite.open(path))
      st:save("Cart", "kept", "bytes")
      st:run()
      local other, err = sqlite.open(path)
      assert.is_nil(other)
      assert.truthy(err:find(path .. "-lock", 1, true) and err:find("in use by another luster runner", 1, true), err)
      st:save("Cart", "queued-at-close", "q")
      st:close() -- what was queued commits first
      st = assert(sqlite.open(path))
      st:load("Cart", "kept")
      st:load("Cart", "queued-at-close")
      local r = st:run()
      assert.equal("bytes", r[1].bytes)
      assert.equal("q", r[2].bytes)
      st:close()
    end)
  end)
end)
