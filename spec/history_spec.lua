-- The history checker (spec/support/history.lua) catches every kind of
-- violation it claims to, and passes consistent histories.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"
local History = require "support.history"
local cjson = require "cjson"

local function run(type_name, id, instance, start, stop, key)
  return { ev = "run", type = type_name, id = id, runner = instance:match("^[^#]*"), instance = instance,
           start = start, ["end"] = stop, key = key }
end

local function problems(events, opts)
  local p = History.check(events, opts)
  return p
end

local function has(list, pattern)
  for _, p in ipairs(list) do if p:match(pattern) then return true end end
  return false
end

describe("the history checker", function()
  it("passes a consistent history: handovers, acknowledged keys run once, counters in bounds", function()
    local events = {
      run("Probe", "p1", "a#1", 100, 110), run("Probe", "p1", "a#1", 120, 130),
      run("Probe", "p1", "b#1", 140, 150), -- handed over after a's last run ended
      run("Probe", "p2", "a#1", 100, 200), run("Probe", "p2", "a#1", 150, 160), -- concurrent runs of one instance
      run("Journal", "j1", "a#2", 10, 20, "k1"), { ev = "ack", type = "Journal", id = "j1", key = "k1" },
      run("Journal", "j1", "b#2", 30, nil, "k2"), -- cut off, never acknowledged
      { ev = "add", counter = "c", amount = 2, start = 1, ["end"] = 2, acked = true },
      { ev = "add", counter = "c", amount = 5, start = 3, ["end"] = 9, acked = false },
      { ev = "read", counter = "c", value = 2, start = 4, ["end"] = 5 },
      { ev = "read", counter = "c", value = 7, start = 10, ["end"] = 11 },
    }
    local p, stats = History.check(events, { dedupe = true })
    assert.are.same({}, p)
    assert.are.equal(3, stats.entities) -- Probe/p1, Probe/p2, Journal/j1
    assert.are.equal(2, stats.handovers) -- p1 from a#1 to b#1, j1 from a#2 to b#2
    assert.are.equal(2, stats.reads)
  end)

  it("reports two instances of one id whose spans overlap, naming both", function()
    local p = problems { run("Probe", "p1", "a#1", 100, 110), run("Probe", "p1", "a#1", 200, 210),
                         run("Probe", "p1", "b#1", 150, 160) }
    assert.are.equal(1, #p)
    assert.truthy(p[1]:match("^Probe/p1: instances a#1 on a %(100%.%.210%) and b#1 on b %(150%.%.160%) overlap"), p[1])
  end)

  it("counts a run that never ended at its start only, and still catches an overlap at that start", function()
    assert.are.same({}, problems { run("Probe", "p1", "a#1", 100, nil), run("Probe", "p1", "b#1", 101, 120) })
    assert.are.equal(1, #problems { run("Probe", "p1", "a#1", 100, nil), run("Probe", "p1", "b#1", 90, 120) })
  end)

  it("joins begin and end halves, and reports an end without a begin", function()
    local events = {
      { ev = "begin", run = "r1", type = "T", id = "x", runner = "a", instance = "a#1", start = 10 },
      { ev = "begin", run = "r2", type = "T", id = "x", runner = "b", instance = "b#1", start = 15 },
      { ev = "end", run = "r1", ["end"] = 20 },
      { ev = "end", run = "r9", ["end"] = 30 },
    }
    local p = problems(events)
    assert.is_true(has(p, "^T/x: instances a#1 on a %(10%.%.20%) and b#1"), table.concat(p, "\n"))
    assert.is_true(has(p, "an end without a begin: run r9"), table.concat(p, "\n"))
  end)

  it("reports an acknowledged key that never ran to completion", function()
    local p = problems { run("Journal", "j1", "a#1", 10, nil, "k1"), { ev = "ack", type = "Journal", id = "j1", key = "k1" },
                         { ev = "ack", type = "Journal", id = "j2", key = "k2" } }
    assert.are.equal(2, #p)
    assert.is_true(has(p, "^Journal/j1: key k1 was acknowledged but never ran to completion$"))
    assert.is_true(has(p, "^Journal/j2: key k2 was acknowledged"))
  end)

  it("reports a deduplicated key that ran to completion twice, only when dedupe is on", function()
    local events = { run("Journal", "j1", "a#1", 10, 20, "k1"), run("Journal", "j1", "b#1", 30, 40, "k1"),
                     run("Journal", "j1", "b#1", 50, nil, "k2"), run("Journal", "j1", "b#1", 60, 70, "k2") }
    assert.are.same({}, problems(events))
    local p = problems(events, { dedupe = true })
    assert.are.equal(1, #p)
    assert.truthy(p[1]:match("^key Journal/k1 ran to completion 2 times %(a#1@10, b#1@30%)$"), p[1])
  end)

  it("reports a counter read below the acknowledged sum and one above the attempted sum", function()
    local adds = {
      { ev = "add", counter = "c", amount = 3, start = 1, ["end"] = 2, acked = true },
      { ev = "add", counter = "c", amount = 4, start = 5, ["end"] = 6, acked = false },
    }
    local low = { adds[1], adds[2], { ev = "read", counter = "c", value = 2, start = 3, ["end"] = 4 } }
    local p = problems(low)
    assert.are.equal(1, #p)
    assert.truthy(p[1]:match("^counter c read 2 at 3, below the 3 acknowledged before it$"), p[1])
    -- The unacknowledged 4 had not been attempted when this read ended.
    local high = { adds[1], adds[2], { ev = "read", counter = "c", value = 7, start = 3, ["end"] = 4 } }
    p = problems(high)
    assert.are.equal(1, #p)
    assert.truthy(p[1]:match("^counter c read 7 at 3, above the 3 attempted before it$"), p[1])
    -- Overlapping the unacknowledged add, either outcome is consistent.
    for _, v in ipairs { 3, 7 } do
      assert.are.same({}, problems { adds[1], adds[2], { ev = "read", counter = "c", value = v, start = 5.5, ["end"] = 8 } })
    end
  end)

  it("reads JSON lines, tolerating only a torn last line, and fails from the command line with the problems", function()
    local dir = H.tmpdir()
    local good, bad = dir .. "/good.jsonl", dir .. "/bad.jsonl"
    H.write_file(good, cjson.encode(run("P", "1", "a#1", 1, 2)) .. "\n" .. cjson.encode(run("P", "1", "b#1", 3, 4)) ..
      "\n{\"ev\":\"run\",\"ty")
    H.write_file(bad, cjson.encode(run("P", "1", "a#1", 1, 5)) .. "\nnot json\n" .. cjson.encode(run("P", "1", "b#1", 3, 4)) .. "\n")
    local ok, err = pcall(function()
      assert.are.same({}, problems(History.read(good)))
      local p = problems(History.read(bad))
      assert.is_true(has(p, "bad%.jsonl line 2 is not a JSON object: not json"), table.concat(p, "\n"))
      assert.is_true(has(p, "^P/1: instances a#1"), table.concat(p, "\n"))
      local function cli(file)
        local out = os.tmpname()
        local okx, _, code = os.execute("lua5.4 spec/support/history.lua " .. H.sh_quote(file) .. " >" .. out .. " 2>&1")
        local text = H.read_file(out)
        os.remove(out)
        return okx and 0 or code, text
      end
      local code, text = cli(good)
      assert.are.equal(0, code, text)
      assert.truthy(text:match("history: 2 events, 2 runs, 1 entities, 1 handovers, 0 reads: ok"), text)
      code, text = cli(bad)
      assert.are.equal(1, code, text)
      assert.truthy(text:match("P/1: instances a#1 on a %(1%.%.5%) and b#1 on b %(3%.%.4%) overlap"), text)
      local e = select(2, pcall(History.assert, History.read(bad)))
      assert.truthy(tostring(e):match("history check failed %(2 problems%)"), tostring(e))
    end)
    H.rmdir(dir)
    if not ok then error(err, 0) end
  end)
end)
