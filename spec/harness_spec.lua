-- spec/harness_spec.lua: `luster test`, run as a user runs it, over projects
-- made from spec/fixtures/harness (app/: the scripts; checks/: user specs,
-- copied in as spec/NAME_spec.lua so this suite's own busted never runs them).
local H = require "spec.support.helpers"
local cjson = require "cjson"

local FIX = H.root .. "/spec/fixtures/harness"
local q = H.sh_quote

-- A project directory: the app's scripts and the named checks as its specs.
local function project(checks)
  local d = H.tmpdir()
  assert(os.execute(string.format("cp -r %s/app/. %s && mkdir %s/spec", q(FIX), q(d), q(d))))
  for _, c in ipairs(checks) do
    assert(os.execute(string.format("cp %s/checks/%s.lua %s/spec/%s_spec.lua", q(FIX), c, q(d), c)))
  end
  return d
end

local shown = H.shown

-- Runs `luster test` with args (a string) inside dir, TMPDIR in a directory
-- of its own (checked empty afterwards: every runtime's copy removed).
-- Returns exit code, stdout, stderr, seconds taken.
local function luster_test(dir, args)
  local tmp = H.tmpdir()
  local out, err = H.tmpname("out"), H.tmpname("err")
  local t0 = H.now()
  local _, how, code = os.execute(string.format("cd %s && TMPDIR=%s %s test %s >%s 2>%s", q(dir), q(tmp), q(H.bin),
    args or "", out, err))
  local took = H.now() - t0
  local o, e = H.read_file(out), H.read_file(err)
  os.remove(out)
  os.remove(err)
  local p = io.popen("ls -A " .. q(tmp))
  local left = p:read("*a")
  p:close()
  H.rmdir(tmp)
  assert.are.equal("", left, "luster test left temporary files behind")
  if how == "signal" then code = 128 + code end
  return code, o, e, took
end

describe("luster test", function()
  local dir
  after_each(function() H.rmdir(dir); dir = nil end)

  it("runs every spec of DIR/spec and passes: each row of luster.test and each rule", function()
    dir = project({ "basics" })
    local code, out, err = luster_test(dir, ".")
    assert.are.equal(0, code, shown(out .. err))
    assert.truthy(out:find("31 successes / 0 failures / 0 errors / 0 pending", 1, true), shown(out))
  end)

  it("takes DIR as '.' by default, and T.write never touches the user's files", function()
    dir = project({ "basics" })
    local before = H.read_file(dir .. "/sleeper.lua")
    local code, out = luster_test(dir, "")
    assert.are.equal(0, code, shown(out))
    assert.are.equal(before, H.read_file(dir .. "/sleeper.lua"))
    assert.is_nil(H.read_file(dir .. "/greeter.lua"))
  end)

  it("covers ten minutes of virtual time in well under a second", function()
    dir = project({ "minutes" })
    local code, out, _, took = luster_test(dir, ".")
    assert.are.equal(0, code, shown(out))
    assert.truthy(out:find("1 success / 0 failures / 0 errors / 0 pending", 1, true), shown(out))
    assert.is_true(took < 1 * H.slow, string.format("took %.2f s", took))
  end)

  it("exits non-zero on a failing spec and shows the failure and the error", function()
    dir = project({ "failing" })
    local code, out = luster_test(dir, ".")
    assert.are_not.equal(0, code)
    assert.truthy(out:find("1 success / 1 failure / 1 error / 0 pending", 1, true), shown(out))
    assert.truthy(out:find("failing expects the wrong count", 1, true), shown(out))
    assert.truthy(out:find("failing_spec.lua:9", 1, true), shown(out))
    assert.truthy(out:find("(number) 42", 1, true), shown(out))
    assert.truthy(out:find("raised by the spec on purpose", 1, true), shown(out))
  end)

  it("writes TAP with -o TAP", function()
    dir = project({ "failing" })
    local code, out = luster_test(dir, ". -o TAP")
    assert.are_not.equal(0, code)
    assert.truthy(out:find("ok 1 - failing passes", 1, true), shown(out))
    assert.truthy(out:find("not ok 2 - failing expects the wrong count", 1, true), shown(out))
    assert.truthy(out:find("1..3", 1, true), shown(out))
  end)

  it("writes JSON with -o json and JUnit XML with -o junit", function()
    dir = project({ "failing" })
    local _, out = luster_test(dir, "-o json")
    local report = cjson.decode(out)
    assert.are.equal(1, #report.successes)
    assert.are.equal(1, #report.failures)
    assert.are.equal(1, #report.errors)
    local _, xml = luster_test(dir, ". -o junit")
    assert.truthy(xml:find("<testsuite", 1, true), shown(xml))
    assert.truthy(xml:find("failures='1'", 1, true), shown(xml))
  end)

  it("runs only the tests --filter names, and only the spec files given", function()
    dir = project({ "basics", "failing" })
    local code, out = luster_test(dir, ". --filter 'failing passes'")
    assert.are.equal(0, code, shown(out))
    assert.truthy(out:find("1 success / 0 failures / 0 errors / 0 pending", 1, true), shown(out))
    code, out = luster_test(dir, ". spec/basics_spec.lua -o TAP")
    assert.are.equal(0, code, shown(out))
    assert.is_nil(out:find("failing", 1, true), shown(out))
  end)

  it("says when DIR has no spec/ directory, or does not exist", function()
    dir = H.tmpdir()
    local code, _, err = luster_test(dir, ".")
    assert.are.equal(2, code)
    assert.truthy(err:find("no specs: . has no spec/ directory", 1, true), shown(err))
    code, _, err = luster_test(dir, "nowhere")
    assert.are.equal(2, code)
    assert.truthy(err:find("'nowhere' does not exist", 1, true), shown(err))
  end)
end)

describe("luster.test outside luster test", function()
  it("gives a clear error saying to run the spec with luster test", function()
    local dir = project({})
    assert(os.execute(string.format("cp %s/checks/outside.lua %s/spec/outside_spec.lua", q(FIX), q(dir))))
    local out = H.tmpname("out")
    os.execute(string.format("cd %s && lua5.4 /usr/bin/busted --lpath=%s -o TAP spec >%s 2>&1", q(dir),
      q(H.root .. "/lua/?.lua;" .. H.root .. "/lua/?/init.lua"), out))
    local text = H.read_file(out)
    os.remove(out)
    H.rmdir(dir)
    assert.truthy(text:find("not ok 1", 1, true), shown(text))
    assert.truthy(text:find("T.client works only in specs run by `luster test`", 1, true), shown(text))
    assert.truthy(text:find("outside_spec.lua:5", 1, true), shown(text))
  end)
end)
