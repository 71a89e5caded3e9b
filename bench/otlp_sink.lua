-- bench/otlp_sink.lua: an OTLP/HTTP receiver that accepts every request and
-- discards it, for scenario 16 (tracing cost):
--   lua5.4 bench/otlp_sink.lua PORTFILE
-- listens on a free loopback port, writes it to PORTFILE and answers each
-- POST 200: an empty ExportTraceServiceResponse, "{}" for JSON, nothing for
-- protobuf (application/x-protobuf, OTLP/HTTP's default). Exits after 60 s without a
-- connection (a bench that dies leaves nothing running for long).
local socket = require "socket"

local server = assert(socket.bind("127.0.0.1", 0))
local _, port = server:getsockname()
local f = assert(io.open(arg[1], "w"))
f:write(port, "\n")
f:close()

local function serve(c)
  c:settimeout(10)
  while true do
    local line = c:receive("*l")
    if not line then break end
    local len, pb = 0, false
    while true do
      local h = c:receive("*l")
      if not h or h == "" then break end
      local n = h:match("^[Cc]ontent%-[Ll]ength:%s*(%d+)")
      if n then len = tonumber(n) end
      if h:lower():match("^content%-type:%s*application/x%-protobuf") then pb = true end
    end
    if len > 0 and not c:receive(len) then break end
    if pb then
      c:send("HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")
    else
      c:send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
    end
  end
  c:close()
end

server:settimeout(60)
while true do
  local c = server:accept()
  if not c then break end
  serve(c)
end
