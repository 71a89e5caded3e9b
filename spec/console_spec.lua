-- The console page (admin/console.html) as build/luster carries it:
-- tools/embed_file.sh's array in build/gen/console_html.c.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"

describe("the console page", function()
  local page = assert(H.read_file("runtime/admin/console.html"))

  it("is compiled into the binary byte for byte", function()
    local path = (os.getenv("BUILD") or "build") .. "/gen/console_html.c" -- beside the binary under test
    local gen = assert(H.read_file(path), path .. ": run make all")
    local array = assert(gen:match("const char console_html%[%] = {(.-)}"))
    local bytes = {}
    for hex in array:gmatch("0x(%x%x)") do bytes[#bytes + 1] = string.char(tonumber(hex, 16)) end
    assert.matches(",\n0$", array) -- and a NUL after the page
    assert.are.equal(page, table.concat(bytes))
    assert.matches("console_html_len = sizeof console_html %- 1", gen)
    local nm = io.popen("nm " .. H.sh_quote(H.bin) .. " 2>/dev/null")
    local symbols = nm:read("*a")
    nm:close()
    assert.matches(" T console_page\n", symbols)
    assert.matches(" R console_html\n", symbols)
  end)

  it("fetches nothing but its own runner's /cluster and /metrics", function()
    assert.is_nil(page:find("https?://"))
    assert.is_nil(page:find("src=", 1, true))
    assert.is_nil(page:find("href=", 1, true))
    local fetched = {}
    for what in page:gmatch('fetch%("([^"]*)"%)') do fetched[#fetched + 1] = what end
    assert.are.same({ "/cluster", "/metrics" }, fetched)
  end)
end)
