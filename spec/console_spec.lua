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

-- GET / on a running runner, rendered by headless Chromium (Debian's
-- chromium, installed by `make test`): the page must show the runner and
-- the types with their instances, and log nothing to the browser console
-- (an uncaught error or a failed fetch would). The screenshot is kept in
-- the build directory; docs/console.png in the README is one of them.
describe("the console at GET /", function()
  local chromium = os.getenv("CHROMIUM") or "chromium"
  local page = assert(H.read_file("runtime/admin/console.html"))

  -- Runs headless Chromium on url with `what` (--dump-dom or
  -- --screenshot=...) after 2.5 s of page time; returns stdout and the
  -- browser's console lines.
  local function browse(url, what)
    local profile = H.tmpdir()
    local errlog = H.tmpname("chromium-log")
    local cmd = string.format("timeout 60 %s --headless --no-sandbox --disable-gpu --no-first-run " ..
      "--user-data-dir=%s --enable-logging=stderr --v=0 --virtual-time-budget=2500 --window-size=1280,900 %s %s 2>%s",
      chromium, H.sh_quote(profile), what, H.sh_quote(url), H.sh_quote(errlog))
    local p = assert(io.popen(cmd))
    local out = p:read("*a")
    local ok = p:close()
    local log = H.read_file(errlog) or ""
    os.remove(errlog)
    H.rmdir(profile)
    assert(ok, "chromium failed (is Debian's chromium installed? make test-deps): " .. log:sub(-2000))
    local console = {}
    for line in log:gmatch("[^\n]*CONSOLE[^\n]*") do console[#console + 1] = line end
    return out, console
  end

  it("renders the runner, the shard map and every type, with no console errors", function()
    local r = H.start(H.root .. "/examples/orders")
    local ok, err = pcall(function()
      for i = 1, 3 do
        local status = r:call("Order", "o" .. i, "Place", { customer = "ada", items = { "book" }, total = 12 })
        assert.are.equal(200, status)
      end
      local status, _, headers, raw = r:request("GET", "/")
      assert.are.equal(200, status)
      assert.matches("^text/html", headers["content-type"])
      assert.are.equal(page, raw)
      local dom, console = browse(r.url .. "/", "--dump-dom")
      assert.are.same({}, console)
      local live = assert(dom:match('<[^>]*id="live"[^>]*>([^<]*)<'), "no live marker in:\n" .. dom)
      assert.matches("^live ·", live)
      for _, want in ipairs { "local", "Order", "Board", "Dispatcher", "order.lua", "memory storage" } do
        assert(dom:find(want, 1, true), "the page does not show " .. want .. ":\n" .. dom)
      end
      -- The Order row counts its three instances.
      assert.matches("<td[^>]*>Order</td>.-<td[^>]*>3</td>", dom)
      local png = (os.getenv("BUILD") or "build") .. "/console.png"
      os.remove(png)
      local _, shot_console = browse(r.url .. "/", "--screenshot=" .. H.sh_quote(png))
      assert.are.same({}, shot_console)
      local f = assert(io.open(png, "rb"), "no screenshot at " .. png)
      assert.are.equal("\137PNG", f:read(4))
      f:close()
    end)
    r:stop()
    assert(ok, err)
  end)
end)
