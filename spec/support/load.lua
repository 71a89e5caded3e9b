-- spec/support/load.lua: a load generator for cluster specs, run as its own
-- process so the spec can stop, kill or freeze runners meanwhile.
--
--   lua5.4 spec/support/load.lua OUT STOPFILE CONCURRENCY IDS URL...
--
-- CONCURRENCY keep-alive connections spread over the URLs each call
-- Probe.Hit on ids "p1".."pIDS" in turn until STOPFILE exists. Every call
-- is one line in OUT: "sent_us recv_us status id runner instance at_us".
local socket = require "socket"
local cjson = require "cjson"

local out_path, stop_path, conc, nids = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4])
local urls = {}
for i = 5, #arg do urls[#urls + 1] = arg[i] end
local out = assert(io.open(out_path, "w"))
out:setvbuf("line")

local function now_us() return math.floor(socket.gettime() * 1e6) end

local function exists(p)
  local f = io.open(p, "r")
  if f then f:close() return true end
  return false
end

local function connect(url)
  local host, port = url:match("^http://([^:/]+):(%d+)")
  local c = socket.tcp()
  c:settimeout(5)
  local ok = c:connect(host, tonumber(port))
  if not ok then c:close() return nil end
  c:setoption("tcp-nodelay", true)
  return c
end

local function call(c, id)
  local body = "{}"
  local req = "POST /entities/Probe/" .. id .. "/Hit HTTP/1.1\r\nHost: x\r\nContent-Length: " .. #body ..
    "\r\n\r\n" .. body
  if not c:send(req) then return nil end
  local line = c:receive("*l")
  if not line then return nil end
  local status = tonumber(line:match("^HTTP/1%.%d (%d+)"))
  local len = 0
  while true do
    local h = c:receive("*l")
    if not h then return nil end
    if h == "" then break end
    local k, v = h:match("^([^:]+):%s*(.*)$")
    if k and k:lower() == "content-length" then len = tonumber(v) end
  end
  local raw = len > 0 and c:receive(len) or ""
  if not raw then return nil end
  return status, raw
end

-- Workers are coroutines over blocking sockets with short timeouts: simple,
-- and enough concurrency for a spec.
local workers = {}
for w = 1, conc do
  workers[w] = { url = urls[(w - 1) % #urls + 1], next_id = w }
end

while not exists(stop_path) do
  for _, w in ipairs(workers) do
    if not w.c then w.c = connect(w.url) end
    local id = "p" .. ((w.next_id - 1) % nids + 1)
    w.next_id = w.next_id + conc
    local sent = now_us()
    local status, raw
    if w.c then status, raw = call(w.c, id) end
    local recv = now_us()
    if not status then
      if w.c then w.c:close() end
      w.c = nil
      out:write(string.format("%d %d 0 %s - - 0\n", sent, recv, id))
    else
      local ok, doc = pcall(cjson.decode, raw)
      local v = ok and type(doc) == "table" and doc.value or nil
      if status == 200 and type(v) == "table" then
        out:write(string.format("%d %d %d %s %s %s %d\n", sent, recv, status, id, v.runner, v.instance,
          math.floor(v.at)))
      else
        out:write(string.format("%d %d %d %s - - 0\n", sent, recv, status, id))
      end
    end
  end
end
out:close()
