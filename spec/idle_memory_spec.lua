-- A script's Lua state gives back the memory of instances that passivated,
-- with no traffic after them to run its collector (host.c, host__gc_fire).
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"

local DIR = H.root .. "/spec/fixtures/idle_memory"
local GAUGE = 'luster_script_memory_bytes{file="hoard.lua"}'
local MB = 1024 * 1024

describe("a runner whose instances passivate", function()
  it("gives their memory back to the script's gauge with no further traffic", function()
    local r = H.start(DIR, { args = "--max-idle " .. (2 * H.slow) .. "s" })
    finally(function() r:stop() end)
    local before = r:metric(GAUGE)
    for i = 1, 400 do
      local status, doc = r:call("Hoard", "hoard-" .. i, "Fill")
      assert.are.equal(200, status)
      assert.is_true(doc.value >= 32 * 1024)
    end
    local full = r:metric(GAUGE)
    assert.is_true(full > before + 10 * MB, ("the gauge grew only from %d to %d bytes"):format(before, full))
    H.wait_for("every Hoard to passivate", 10, function()
      return r:metric('luster_active_instances{type="Hoard"}') == 0
    end)
    H.wait_for("the script's memory to come back", 5, function()
      return r:metric(GAUGE) < before + 2 * MB
    end)
  end)
end)
