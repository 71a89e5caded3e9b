-- layers_spec.lua - tools/layers.lua, the layering check of `make test`:
-- it passes on the real tree, and on a copy with one upward include or one
-- include cycle injected it fails naming the file, the line and the include.
package.path = "spec/?.lua;" .. package.path
local helpers = require("support.helpers")

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Runs the tool on root; returns its exit status and its output.
local function check(root)
  local p = io.popen("lua5.4 tools/layers.lua " .. sh_quote(root) .. " 2>&1; echo \"exit=$?\"")
  local out = p:read("a")
  p:close()
  return tonumber(out:match("exit=(%d+)")), out
end

-- A copy of runtime/ in a fresh temporary directory.
local function copy_tree()
  local d = helpers.tmpdir()
  assert(os.execute("cp -r runtime " .. sh_quote(d) .. "/runtime"))
  return d
end

local function append(path, text)
  local f = assert(io.open(path, "a"))
  f:write(text)
  f:close()
end

local function count_lines(path)
  local n = 0
  for _ in io.lines(path) do n = n + 1 end
  return n
end

describe("the layering check (tools/layers.lua)", function()
  it("passes on the real tree", function()
    local status, out = check(".")
    assert.are.equal(0, status, out)
    assert.truthy(out:find("every include goes downward", 1, true), out)
  end)

  it("fails on an upward include, naming the file, the line and the include", function()
    local d = copy_tree()
    local file = d .. "/runtime/storage/memory.c"
    local line = count_lines(file) + 1
    append(file, '#include "host/host.h"\n')
    local status, out = check(d)
    helpers.rmdir(d)
    assert.are.equal(1, status, out)
    assert.truthy(out:find('runtime/storage/memory.c:' .. line .. ': #include "host/host.h" reaches up from storage to host',
                           1, true), out)
  end)

  it("fails on a file outside every layer and on an include of a file that does not exist", function()
    local d = copy_tree()
    os.execute("mkdir -p " .. sh_quote(d .. "/runtime/misc"))
    append(d .. "/runtime/misc/x.c", "int x;\n")
    append(d .. "/runtime/core/buf.c", '#include "core/nothere.h"\n')
    local status, out = check(d)
    helpers.rmdir(d)
    assert.are.equal(1, status, out)
    assert.truthy(out:find("runtime/misc/x.c: in no layer", 1, true), out)
    assert.truthy(out:find('#include "core/nothere.h" names no file under runtime/', 1, true), out)
  end)

  it("fails on an include cycle and names every file on it", function()
    local d = copy_tree()
    append(d .. "/runtime/core/buf.h", '#include "core/hash.h"\n')
    append(d .. "/runtime/core/hash.h", '#include "core/buf.h"\n')
    local status, out = check(d)
    helpers.rmdir(d)
    assert.are.equal(1, status, out)
    local cyc = out:match("include cycle: ([^\n]*)")
    assert.truthy(cyc, out)
    assert.truthy(cyc:find("runtime/core/buf.h", 1, true), cyc)
    assert.truthy(cyc:find("runtime/core/hash.h", 1, true), cyc)
  end)
end)
