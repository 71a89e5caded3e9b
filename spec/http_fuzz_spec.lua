-- Random and mutated bytes on the HTTP port: every connection gets an answer
-- or a close, and the runner keeps serving. Seeded, bounded in count.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"

local VALID = "POST /entities/Counter/fuzz/Increment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
  .. "Content-Length: 12\r\n\r\n{\"amount\":1}"

local function mutate(s, rnd)
  local bytes = { s:byte(1, -1) }
  for _ = 1, rnd(1, 8) do
    local op, at = rnd(1, 4), rnd(1, #bytes)
    if op == 1 then bytes[at] = rnd(0, 255)
    elseif op == 2 then table.remove(bytes, at)
    elseif op == 3 then table.insert(bytes, at, rnd(0, 255))
    else for _ = 1, rnd(1, 64) do table.insert(bytes, at, bytes[at] or 65) end end
    if #bytes == 0 then bytes = { 65 } end
  end
  local parts = {}
  for i = 1, #bytes, 4000 do parts[#parts + 1] = string.char(table.unpack(bytes, i, math.min(i + 3999, #bytes))) end
  return table.concat(parts)
end

describe("the HTTP port under fuzzed input", function()
  local r
  setup(function() r = H.start(H.counter_dir, { args = "--request-timeout 300ms" }) end)
  teardown(function() r:stop() end)

  it("answers or closes every fuzzed connection and keeps serving", function()
    math.randomseed(20261124)
    local rnd = math.random
    local answered, closed = 0, 0
    for case = 1, 150 do
      local input
      if case % 3 == 0 then
        local t = {}
        for i = 1, rnd(1, 2000) do t[i] = string.char(rnd(0, 255)) end
        input = table.concat(t)
      else
        input = mutate(VALID, rnd)
      end
      local c = r:connect()
      c:settimeout(2 * H.slow)
      c:send(input)
      -- Either a status line, or the runner closes/ends the connection after
      -- the request timeout.
      local line, err = c:receive("*l")
      if line then
        assert.matches("^HTTP/1%.1 %d%d%d ", line, 1, false)
        answered = answered + 1
      else
        assert.are_not.equal("timeout", err, "case " .. case .. ": no answer and no close")
        closed = closed + 1
      end
      c:close()
      if case % 25 == 0 then
        local status = r:call("Counter", "alive", "Increment", { amount = 1 })
        assert.are.equal(200, status)
      end
    end
    assert.is_true(answered > 0)
    print(string.format("\n  fuzz: %d answered, %d closed", answered, closed))
    assert.are.equal(200, (r:call("Counter", "alive", "Increment", { amount = 1 })))
  end)
end)
