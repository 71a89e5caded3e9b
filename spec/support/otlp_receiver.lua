-- otlp_receiver.lua - a test OTLP/HTTP receiver for spec/otlp_spec.lua and
-- spec/trace_ctx_spec.lua:
--   lua5.4 otlp_receiver.lua OUT STATUS MODE [HOST]
-- listens on a free loopback port (of HOST, 127.0.0.1 by default), writes
-- {"port":N} as the first line of OUT, then one JSON line per request
-- ({method, path, headers, doc, body}) and answers STATUS. doc is the
-- ExportTraceServiceRequest decoded the same way whatever the Content-Type:
-- application/json with cjson, application/x-protobuf with
-- spec/support/pb_decode.lua into the JSON mapping's shape (or, when the
-- body does not decode, doc is absent and error says why); body is the JSON
-- text, or the protobuf bytes as hex; with MODE "silent" it keeps the connection without
-- answering, with MODE "first" it answers STATUS to the first request only
-- and 200 to the others, with MODE "continue" it sends an interim
-- "100 Continue" before its answer. Exits after 60 s without a connection, so a spec that dies
-- leaves nothing running for long.
local here = (arg[0]:match("^(.*)/[^/]*$") or ".")
package.path = here .. "/?.lua;" .. package.path
local socket = require "socket"
local cjson = require "cjson"
local pb = require "pb_decode"

-- The request's body as {doc, body} or {error, body}.
local function decode(ctype, body)
  ctype = (ctype or ""):match("^[^;]*")
  if ctype == "application/x-protobuf" then
    local ok, doc = pcall(pb.trace_request, body)
    local hex = body:gsub(".", function(c) return string.format("%02x", c:byte()) end)
    if ok then return { doc = doc, body = hex } end
    return { error = tostring(doc), body = hex }
  elseif ctype == "application/json" then
    local ok, doc = pcall(cjson.decode, body)
    if ok then return { doc = doc, body = body } end
    return { error = tostring(doc), body = body }
  end
  return { error = "unexpected Content-Type " .. ctype }
end

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
  local rec = decode(headers["content-type"], body)
  rec.method, rec.path, rec.headers = method, path, headers
  out:write(cjson.encode(rec), "\n")
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
