-- A bounded smoke of the soak (tools/soak.lua, `make soak`): 45 seconds of
-- three runners under mixed load with one churn event, its CSV, its plot
-- and its history check.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"

describe("the soak", function()
  it("runs three runners under load and churn for 45 s: samples every second, plots them, and passes its checks", function()
    local out = H.tmpdir()
    local ok, err = pcall(function()
      local log = out .. "/soak.log"
      local passed = os.execute(string.format("LUSTER_BIN=%s lua5.4 tools/soak.lua --minutes 0.75 --seed 20261205 --out %s >%s 2>&1",
        H.sh_quote(H.bin), H.sh_quote(out), H.sh_quote(log)))
      local text = H.read_file(log) or ""
      assert(passed, "the soak failed:\n" .. text)
      assert.truthy(text:match("soak summary: .* history: %d+ runs, %d+ ids, %d+ handovers, 0 problems"), text)
      assert.truthy(text:match("runner %d: %a+"), "no churn event in:\n" .. text)
      local rows = {}
      for line in (H.read_file(out .. "/samples.csv") or ""):gmatch("[^\n]+") do rows[#rows + 1] = line end
      assert.are.equal("t_s,runner,pid,rss_kb,fds,latency_ms", rows[1])
      assert(#rows > 3 * 30, "only " .. #rows .. " sample rows in 45 s")
      assert.truthy(rows[2]:match("^[%d%.]+,%d,%d+,%d+,%d+,%-?[%d%.]+$"), rows[2])
      local png = H.read_file(out .. "/soak.png") or ""
      assert(png:sub(1, 8) == "\137PNG\r\n\26\n" and #png > 10000, "no PNG plot (" .. #png .. " bytes)")
    end)
    H.rmdir(out)
    if not ok then error(err, 0) end
  end)
end)
