-- fuzz/seeds.lua - writes the seed inputs of the frame and transport targets
-- (binary frames are easier to build than to type): lua5.4 fuzz/seeds.lua
local function str(s) return string.pack(">s4", s) end
local function frame(ty, body) return string.pack(">I4B", #body + 1, ty) .. body end
local zero32 = string.rep("\0", 32)
local function hello(cluster) return frame(1, string.pack("BB", 2, 0) .. string.rep("\7", 32) .. str(cluster)) end
local function auth(runner) return frame(2, zero32 .. zero32 .. str(runner)) end
local function auth_ok() return frame(3, zero32) end
local function request(corr, payload)
  return frame(4, string.pack(">I8I4I4I8I8", corr, 0, 1000, 0, 0) .. str("Counter") .. str("c-1") .. str("Increment")
    .. str(payload) .. str("{}"))
end
local function reply(corr, kind, body) return frame(5, string.pack(">I8B", corr, kind, 0) .. str(body)) end

local function write(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end

os.execute("mkdir -p fuzz/corpus/transport fuzz/corpus/frame")
-- transport: byte 0 is the mode (bit 0 outbound, bit 2 answer later, bits 3-7 read size)
write("fuzz/corpus/transport/in_auth_requests", "\0" .. auth("127.0.0.1:7002") .. request(1, '{"amount":1}')
  .. request(2, string.rep("x", 300)))
write("fuzz/corpus/transport/in_later_split", string.char(4 | (3 << 3)) .. auth("r") .. request(1, "{}")
  .. request(2, "[1,2]") .. request(3, "null"))
write("fuzz/corpus/transport/in_request_first", "\0" .. request(1, "{}"))
write("fuzz/corpus/transport/out_hello_ok_replies", "\1" .. hello("fuzz") .. auth_ok() .. reply(1, 0, "{}")
  .. reply(3, 2, '{"error":1}') .. reply(2, 0, "7"))
write("fuzz/corpus/transport/out_wrong_cluster", "\1" .. hello("other"))
write("fuzz/corpus/transport/out_partial", string.char(1 | (2 << 3)) .. hello("fuzz") .. auth_ok() .. reply(1, 0, "{}"):sub(1, 9))
-- frame: byte 0 picks max_frame (see fuzz_frame.c)
write("fuzz/corpus/frame/hello", "\0" .. hello("luster_/300"))
write("fuzz/corpus/frame/auth", "\0" .. auth("10.0.0.1:7946"))
write("fuzz/corpus/frame/auth_ok", "\0" .. auth_ok())
write("fuzz/corpus/frame/request", "\0" .. request(42, '{"amount":1}'))
write("fuzz/corpus/frame/reply", "\0" .. reply(42, 0, '{"value":1}'))
write("fuzz/corpus/frame/two", "\1" .. request(1, "{}") .. reply(1, 0, "{}"))
