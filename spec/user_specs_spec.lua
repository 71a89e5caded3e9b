-- The specs of examples/counter, examples/bank and examples/orders (their
-- spec/ folders) pass under `luster test`, as a user would run them.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"

local shown = H.shown
local summary = H.busted_summary

-- Runs `luster test DIR`, under `timeout` so a hung run fails the spec
-- instead of the suite. Returns exit status, output, real seconds.
local function luster_test(example)
  local out = H.tmpname("luster-test-output")
  local started = H.now()
  local _, how, code = os.execute(string.format("timeout %d %s test %s >%s 2>&1", 120 * H.slow, H.sh_quote(H.bin),
    H.sh_quote(H.root .. "/examples/" .. example), out))
  local elapsed = H.now() - started
  local text = H.read_file(out) or ""
  os.remove(out)
  if how == "signal" then code = 128 + code end
  assert(code ~= 124, string.format("luster test examples/%s did not finish in %d s:", example, 120 * H.slow) .. shown(text))
  return code, text, elapsed
end

-- example -> the number of `it`s in its spec/ folder
local EXAMPLES = { counter = 6, bank = 8, orders = 7 }

describe("luster test on the examples", function()
  for _, example in ipairs { "counter", "bank", "orders" } do
    it("passes every spec of examples/" .. example, function()
      local code, out, elapsed = luster_test(example)
      assert.are.equal(0, code, shown(out))
      local s, f, e = summary(out)
      assert.are.same({ EXAMPLES[example], 0, 0 }, { s, f, e }, shown(out))
      -- Virtual time: minutes of it (orders covers over 20) take well under
      -- a second here; the bound only catches a run that waits on real time.
      assert.is_true(elapsed < 30 * H.slow, string.format("took %.1f s", elapsed))
    end)
  end

  it("leaves the examples' directories as they were (each test runs on a private copy)", function()
    local function listing()
      local p = io.popen("cd " .. H.sh_quote(H.root .. "/examples") .. " && find . | LC_ALL=C sort")
      local s = p:read("*a")
      p:close()
      return s
    end
    local before = listing()
    assert.are.equal(0, (luster_test("orders")))
    assert.are.equal(before, listing())
  end)
end)
