-- otlp_receiver.lua - a test OTLP/HTTP receiver for spec/otlp_spec.lua:
--   lua5.4 otlp_receiver.lua OUT STATUS MODE [HOST]
-- listens on a free loopback port (of HOST, 127.0.0.1 by default), writes {"port":N} as the first line of
-- OUT, then one JSON line per request ({method, path, headers, body}) and
-- answers STATUS; with MODE "silent" it keeps the connection without
-- answering, with MODE "first" it answers STATUS to the first request only
-- and 200 to the others, with MODE "continue" it sends an interim
-- "100 Continue" before its answer. Exits after 60 s without a connection, so a spec that dies
-- leaves nothing running for long.
local socket = require "socket"
local cjson = require "cjson"

local out_path, status, mode, host = arg[1], tonumber(arg[2] or "200"), arg[3] or "answer", arg[4] or "127.0.0.1"
local server = assert(socket.bind(host, 0))
local _, port = server:getsockname()
local out = assert(io.open(out_path, "ab"))
out:write(cjson.encode({ port = tonumber(port) }), "\n")
out:flush()

local held = {}
local served = 0
local function serve(c)
  served = served + 1
  c:settimeout(5)
  local line = c:receive("*l")
  if not line then return c:close() end
  local method, path = line:match("^(%S+) (%S+) HTTP/1%.1$")
  local headers = {}
  while true do
    local h = c:receive("*l")
    if not h or h == "" then break end
    local k, v = h:match("^([^:]+):%s*(.*)$")
    if k then headers[k:lower()] = v end
  end
  local body = c:receive(tonumber(headers["content-length"] or "0")) or ""
  out:write(cjson.encode({ method = method, path = path, headers = headers, body = body }), "\n")
  out:flush()
  if mode == "silent" then
    held[#held + 1] = c
    return
  end
  if mode == "continue" then c:send("HTTP/1.1 100 Continue\r\n\r\n") end
  local code = status
  if mode == "first" and served > 1 then code = 200 end
  local reply = code == 200 and "{}" or '{"message":"test receiver refuses"}'
  c:send(string.format("HTTP/1.1 %d Test\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" ..
    "Connection: close\r\n\r\n%s", code, #reply, reply))
  c:close()
end

server:settimeout(60)
while true do
  local c = server:accept()
  if not c then break end
  serve(c)
end
