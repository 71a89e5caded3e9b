-- `luster new DIR` writes the starter project of runtime/cli/starter/, whose
-- specs pass under `luster test` straight away, and refuses a DIR it would
-- have to overwrite.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"

local STARTER = { "README.md", "greeter.lua", "spec/greeter_spec.lua" }

local shown = H.shown
local summary = H.busted_summary

describe("luster new", function()
  local base
  before_each(function() base = H.tmpdir() end)
  after_each(function() H.rmdir(base) end)

  it("writes the starter project into a new directory (parents included) and names its files", function()
    local dir = base .. "/shop/greeter"
    local code, out, err = H.cli("new " .. H.sh_quote(dir))
    assert.are.equal(0, code, err)
    assert.matches("created " .. dir, out, 1, true)
    for _, rel in ipairs(STARTER) do
      assert.matches("  " .. rel, out, 1, true)
      -- The binary carries runtime/cli/starter/ as it is in the source tree.
      assert.are.equal(H.read_file(H.root .. "/runtime/cli/starter/" .. rel), H.read_file(dir .. "/" .. rel))
    end
    assert.matches("luster test " .. dir, out, 1, true)
    local ccode, cout = H.cli("check " .. H.sh_quote(dir))
    assert.are.equal(0, ccode)
    assert.matches("ok   greeter.lua  (entity Greeter)", cout, 1, true)
  end)

  it("writes into an existing empty directory, and `luster test` passes on the result", function()
    local code, _, err = H.cli("new " .. H.sh_quote(base))
    assert.are.equal(0, code, err)
    local tcode, out, terr = H.cli("test " .. H.sh_quote(base))
    assert.are.equal(0, tcode, shown(out .. terr))
    local s, f, e = summary(out)
    assert.are.same({ 3, 0, 0 }, { s, f, e })
  end)

  it("refuses a directory that is not empty, naming it, and writes nothing", function()
    H.write_file(base .. "/mine.lua", "return {}\n")
    local code, out, err = H.cli("new " .. H.sh_quote(base))
    assert.are.equal(1, code)
    assert.are.equal("", out)
    assert.matches("luster new: '" .. base .. "' exists and is not empty", err, 1, true)
    assert.is_nil(H.read_file(base .. "/greeter.lua"))
    assert.are.equal("return {}\n", H.read_file(base .. "/mine.lua"))
  end)

  it("refuses a path that is a file", function()
    local file = base .. "/notes.txt"
    H.write_file(file, "x")
    local code, _, err = H.cli("new " .. H.sh_quote(file))
    assert.are.equal(1, code)
    assert.matches("luster new: '" .. file .. "' exists and is not a directory", err, 1, true)
  end)

  it("prints its usage when DIR is missing or there is more than one", function()
    local code, out, err = H.cli("new")
    assert.are.equal(2, code)
    assert.are.equal("", out)
    assert.matches("usage: luster new DIR", err, 1, true)
    code, _, err = H.cli("new a b")
    assert.are.equal(2, code)
    assert.matches("luster new: expected one directory, got 2 arguments", err, 1, true)
    code, _, err = H.cli("new --force")
    assert.are.equal(2, code)
    assert.matches("'--force' is not a directory name", err, 1, true)
    code, out = H.cli("new --help")
    assert.are.equal(0, code)
    assert.matches("usage: luster new DIR", out, 1, true)
    code, out = H.cli("help")
    assert.are.equal(0, code)
    assert.matches("luster new DIR", out, 1, true)
  end)
end)
