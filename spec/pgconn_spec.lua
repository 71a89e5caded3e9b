-- storage/pgconn.c against a real PostgreSQL (spec/support/pg.lua): each
-- scenario of build/pgconn_check (spec/support/pgconn_check.c) runs in its
-- own process and prints one "ok"/"FAIL" line per check; restarts and
-- crashes of the server are driven from here.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"
local PG = require "support.pg"
local socket = require "socket"

local BUILD = os.getenv("BUILD") or "build"
local CHECK = BUILD:sub(1, 1) == "/" and BUILD .. "/pgconn_check" or H.root .. "/" .. BUILD .. "/pgconn_check"

-- Runs one scenario to the end (killed after `limit` seconds); returns the
-- exit code and everything it printed.
local function run(url, scenario, limit)
  local out = H.tmpname()
  local _, how, code = os.execute(string.format("timeout -s KILL %d %s %s %s >%s 2>&1",
    math.ceil((limit or 30) * H.slow), H.sh_quote(CHECK), H.sh_quote(url), scenario, out))
  local text = H.read_file(out) or ""
  os.remove(out)
  if how == "signal" then code = 128 + code end
  return code, text
end

local function assert_passed(code, text)
  assert(code == 0 and text:match("\ndone: %d+ ok, 0 failed\n"), "pgconn_check failed (exit " .. tostring(code) .. "):\n" .. text)
end

describe("the non-blocking PostgreSQL connection (pgconn)", function()
  local pg
  setup(function()
    assert(io.open(CHECK), CHECK .. " is missing: run make all")
    pg = PG.start()
  end)
  teardown(function()
    if pg then pg:destroy() end
  end)

  it("runs parameterized queries in order, and a failing statement fails alone", function()
    local code, text = run(pg:url(), "basic")
    assert_passed(code, text)
    assert.matches("ok the statement after a failing one: OK c", text, 1, true)
    assert.matches("ok a NULL parameter: OK true,x", text, 1, true)
  end)

  it("pipelines 10,000 queries queued at once and answers them in order", function()
    local code, text = run(pg:url(), "pipeline")
    assert_passed(code, text)
    local rate = text:match("in order, (%d+) queries/s")
    assert.truthy(rate)
    print(("\n    pgconn pipeline: %s queries/s"):format(rate))
  end)

  it("times out a slow query at its deadline and keeps the connection working", function()
    assert_passed(run(pg:url(), "timeout"))
  end)

  it("resets a connection whose oldest query stays unanswered far past its deadline", function()
    assert_passed(run(pg:url(), "wedge"))
  end)

  it("runs on_connect statements first and delivers notifications", function()
    assert_passed(run(pg:url(), "notify"))
  end)

  it("treats a failing on_connect statement as a failed connection", function()
    assert_passed(run(pg:url(), "badinit"))
  end)

  it("fails queries fast while nothing listens, and backs off between attempts", function()
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    assert_passed(run(("postgres://postgres@127.0.0.1:%d/postgres"):format(port), "down"))
  end)

  -- Starts the restart scenario in the background, waits for it to connect,
  -- lets `disrupt` take the server away and bring it back, then waits for
  -- the program to see down, up, and a query succeed.
  local function across(disrupt)
    local out = H.tmpname()
    local p = io.popen(string.format("sh -c %s", H.sh_quote(string.format("exec %s %s restart >%s 2>&1 & echo $!",
      H.sh_quote(CHECK), H.sh_quote(pg:url()), H.sh_quote(out)))))
    local pid = tonumber(p:read("*l"))
    p:close()
    local function text() return "\n" .. (H.read_file(out) or "") end
    local ok, err = pcall(function()
      H.wait_for("pgconn_check to connect", 15, function() return text():match("\nup\n") end)
      disrupt(text)
      H.wait_for("pgconn_check to see the server go and come back", 40, function()
        return text():match("\ndone: ") and not H.alive(pid)
      end)
    end)
    if H.alive(pid) then os.execute("kill -KILL " .. pid .. " 2>/dev/null") end
    local t = text()
    os.remove(out)
    assert(ok, tostring(err) .. "\n" .. t)
    assert(t:match("\nup\n.*\ndown [^\n]+\n.*\nup\n.*\nok query after reconnect\n"), "expected up, down, up, ok:\n" .. t)
    assert(t:match("\ndone: %d+ ok, 0 failed\n"), t)
    local downs = select(2, t:gsub("\ndown ", ""))
    assert.equals(1, downs)
  end

  it("reports down once and up again across a server restart", function()
    across(function() pg:restart() end)
  end)

  it("reconnects after the server crashes (SIGKILL) and comes back", function()
    across(function(text)
      pg:kill()
      -- Back only once the program saw it gone, so its first attempts fail.
      H.wait_for("pgconn_check to see the crash", 15, function() return text():match("\ndown ") end)
      pg:restart()
    end)
  end)
end)
