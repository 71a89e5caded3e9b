-- The libFuzzer targets of fuzz/ in `make test`: every committed crash
-- reproducer (fuzz/crashes/<target>/*) replays without a crash, and each
-- target fuzzes for a few seconds from its seeds (a smoke; `make fuzz` is the
-- long run). The binaries come from `make fuzz-build` (build/fuzz).
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"

local BIN = H.root .. "/build/fuzz"
local TARGETS = { "parse", "frame", "json", "http", "transport", "schema", "cron", "trace" }
local SMOKE_SECONDS = 3

-- Runs a shell command; returns whether it exited 0, and its output.
local function run(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"exit=$?\"")
  local out = p:read("a")
  p:close()
  return out:match("exit=(%d+)%s*$") == "0", out
end

local function files(dir)
  local list, p = {}, io.popen("ls -1 " .. H.sh_quote(dir) .. " 2>/dev/null")
  for name in p:lines() do list[#list + 1] = name end
  p:close()
  return list
end

-- What a failed run said: its sanitizer or invariant line, else its end.
local function why(out)
  return out:match("[^\n]*invariant broken[^\n]*") or out:match("[^\n]*runtime error[^\n]*")
    or out:match("[^\n]*ERROR: %w+Sanitizer[^\n]*") or out:sub(-2000)
end

local function binary(t)
  local bin = BIN .. "/fuzz_" .. t
  assert(io.open(bin, "rb"), "missing " .. bin .. ": run make fuzz-build"):close()
  return bin
end

describe("the fuzz targets", function()
  for _, t in ipairs(TARGETS) do
    for _, name in ipairs(files(H.root .. "/fuzz/crashes/" .. t)) do
      local input = H.root .. "/fuzz/crashes/" .. t .. "/" .. name
      it("fuzz_" .. t .. " no longer crashes on its reproducer fuzz/crashes/" .. t .. "/" .. name, function()
        local ok, out = run(H.sh_quote(binary(t)) .. " " .. H.sh_quote(input))
        assert(ok, "fuzz_" .. t .. " crashed on " .. input .. ": " .. why(out))
      end)
    end

    it("fuzz_" .. t .. " runs " .. SMOKE_SECONDS .. " s from its seeds without a crash", function()
      local bin = binary(t)
      local work = H.tmpdir()
      local ok, out = run(table.concat({ H.sh_quote(bin), "-max_total_time=" .. SMOKE_SECONDS,
        "-artifact_prefix=" .. H.sh_quote(work .. "/"), H.sh_quote(work), H.sh_quote(H.root .. "/fuzz/corpus/" .. t) }, " "))
      local kept = files(work)
      H.rmdir(work)
      assert(ok, "fuzz_" .. t .. " crashed in its smoke run: " .. why(out))
      assert.is_truthy(out:match("Done %d+ runs"), "fuzz_" .. t .. " did not finish its smoke run: " .. out:sub(-500))
      assert.is_truthy(#kept > 0, "the smoke run kept no corpus")
    end)
  end
end)
