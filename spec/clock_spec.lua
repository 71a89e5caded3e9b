package.cpath = "build/?.so;" .. package.cpath
-- clock_spec.lua - the scheduler (loop/sched.c) on the virtual clock of
-- loop/clock.h, through the luster_loop Lua module (spec/support/luster_loop.c,
-- `make build/luster_loop.so`): timers fire only when the clock is advanced,
-- in order of due time, each with the clock at its own due instant, and no
-- real time passes.

local lp = require("luster_loop")

local function ids(fired)
  local out = {}
  for i, f in ipairs(fired) do out[i] = f[1] end
  return out
end

describe("the virtual clock", function()
  before_each(function() lp.start(1700000000000) end)
  after_each(function() lp.stop() end)

  it("starts at monotonic 0 and the given wall time, and moves only on advance", function()
    local mono, wall = lp.now()
    assert.are.equal(0, mono)
    assert.are.equal(1700000000000, wall)
    lp.advance(250)
    mono, wall = lp.now()
    assert.are.equal(250, mono)
    assert.are.equal(1700000000250, wall)
  end)

  it("fires nothing before its time and every due timer in order of due time, at its instant", function()
    lp.timer(3, 300)
    lp.timer(1, 100)
    lp.timer(2, 200)
    lp.timer(4, 10000)
    assert.are.same({}, lp.advance(99))
    local fired = lp.advance(201) -- to 300
    assert.are.same({ 1, 2, 3 }, ids(fired))
    assert.are.same({ 100, 200, 300 }, { fired[1][2], fired[2][2], fired[3][2] })
    assert.are.same({}, lp.advance(9699)) -- to 9999
    assert.are.same({ 4 }, ids(lp.advance(1)))
  end)

  it("fires a timer that re-arms itself within one advance at each of its instants", function()
    lp.timer(7, 100, 100)
    local fired = lp.advance(450)
    assert.are.same({ 7, 7, 7, 7 }, ids(fired))
    assert.are.same({ 100, 200, 300, 400 }, { fired[1][2], fired[2][2], fired[3][2], fired[4][2] })
    local mono = lp.now()
    assert.are.equal(450, mono)
  end)

  it("runs an hour of timers at once, with no real time passing", function()
    for i = 1, 60 do lp.timer(i, i * 60000) end
    local t0 = os.clock()
    local fired = lp.advance(3600000)
    assert.are.equal(60, #fired)
    assert.are.equal(3600000, fired[60][2])
    assert.is_true(os.clock() - t0 < 1)
  end)
end)
