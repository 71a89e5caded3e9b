package.cpath = "build/?.so;" .. package.cpath
-- core_spec.lua - specs of the pure C core (runtime/core) through the
-- luster_core Lua module (spec/support/luster_core.c, `make build/luster_core.so`).

local core = require("luster_core")

local function hex(h) return ("%016x"):format(h) end

local function counts(owners)
  local c = {}
  for _, o in ipairs(owners) do c[o] = (c[o] or 0) + 1 end
  return c
end

local function moved(a, b)
  local k = 0
  for i = 1, #a do if a[i] ~= b[i] then k = k + 1 end end
  return k
end

local function members(ids)
  local m = {}
  for i, id in ipairs(ids) do m[i] = { id = id, weight = 1 } end
  return m
end

describe("hash", function()
  it("pins hash_bytes to FNV-1a 64 + fmix64, so a change of algorithm is caught", function()
    -- Changing any of these moves every entity in every cluster to another
    -- shard. The values were computed by an independent implementation of
    -- the algorithm documented in runtime/core/hash.c.
    assert.equal("efd01f60ba992926", hex(core.hash("")))
    assert.equal("82a2a958a9bece5b", hex(core.hash("a")))
    assert.equal("29700993c35127d1", hex(core.hash("counter-123")))
    assert.equal("ce841b235a4d0572", hex(core.hash("Counter:counter-123")))
    assert.equal("acb64f88d28b68b8", hex(core.hash("\0\255")))
  end)

  it("pins the shard of a few ids", function()
    assert.equal(243, core.shard("", 300))
    assert.equal(216, core.shard("a", 300))
    assert.equal(174, core.shard("counter-123", 300))
    assert.equal(27, core.shard("Counter:counter-123", 300))
  end)

  it("hashes every byte, including NULs and bytes past them", function()
    assert.are_not.equal(core.hash("a\0b"), core.hash("a\0c"))
    assert.are_not.equal(core.hash("a"), core.hash("a\0"))
  end)

  it("returns shards in 1..n, and 0 for zero shards", function()
    assert.equal(1, core.shard("anything", 1))
    assert.equal(0, core.shard("anything", 0))
    for i = 1, 2000 do
      local s = core.shard("id-" .. i, 7)
      assert.is_true(s >= 1 and s <= 7)
    end
    local big = core.shard("x", 4294967295)
    assert.is_true(big >= 1 and big <= 4294967295)
  end)

  it("spreads 100k sequential ids over 300 shards within 25% of the mean", function()
    local n, ids = 300, 100000
    local c = {}
    for s = 1, n do c[s] = 0 end
    for i = 1, ids do
      local s = core.shard("counter-" .. i, n)
      c[s] = c[s] + 1
    end
    local mean = ids / n
    for s = 1, n do
      assert.is_true(math.abs(c[s] - mean) <= 0.25 * mean,
        ("shard %d has %d ids, mean %.1f"):format(s, c[s], mean))
    end
  end)
end)

describe("parse_duration", function()
  local accept = {
    ["0"] = 0, ["250"] = 250, ["007"] = 7,
    ["250ms"] = 250, ["0ms"] = 0, ["60s"] = 60000, ["1.5s"] = 1500, ["0.001s"] = 1,
    ["1.50s"] = 1500, ["1.500000000000000000000s"] = 1500, ["5m"] = 300000,
    ["1h"] = 3600000, ["0.25h"] = 900000, ["2d"] = 172800000, ["1.5d"] = 129600000,
    ["2.0ms"] = 2,
    ["9223372036854775807"] = math.maxinteger,
  }
  for s, ms in pairs(accept) do
    it(("accepts %q as %d ms"):format(s, ms), function()
      assert.equal(ms, core.parse_duration(s))
    end)
  end

  local reject = {
    "", " 5s", "5s ", "-5s", "+5s", " 5", "5 s", "5S", "5sec", "5x", "s", "ms", ".5s", "5.s",
    "1.5", "1.5ms", "0.0001s", "1e3", "0x10", "5s5", "1,5s", "5ms\0", "NaN",
    "18446744073709551616",      -- 2^64 bare
    "18446744073709551615s",     -- overflows once scaled
    "213503982334601d",          -- ~2^64 ms plus a bit
    "0.0000000000000000001d",    -- more fraction digits than kept
  }
  for _, s in ipairs(reject) do
    it(("rejects %q"):format(s), function()
      local v, err = core.parse_duration(s)
      assert.is_nil(v)
      assert.matches("invalid duration", err)
    end)
  end

  it("parses up to 2^64-1 ms in C, beyond what a Lua integer holds", function()
    local v, err = core.parse_duration("18446744073709551615")
    assert.is_nil(v)
    assert.matches("too large for a Lua integer", err)
  end)
end)

describe("parse_size", function()
  local K, M, G = 1024, 1024 * 1024, 1024 * 1024 * 1024
  local accept = {
    ["0"] = 0, ["1024"] = 1024, ["512K"] = 512 * K, ["512k"] = 512 * K, ["512KB"] = 512 * K,
    ["512kib"] = 512 * K, ["512KiB"] = 512 * K, ["256M"] = 256 * M, ["256mb"] = 256 * M,
    ["256MiB"] = 256 * M, ["1G"] = G, ["1gb"] = G, ["1GiB"] = G, ["2T"] = 2 * 1024 * G,
    ["10B"] = 10, ["1.5G"] = 3 * G // 2, ["0.5K"] = 512, ["1.25k"] = 1280,
  }
  for s, b in pairs(accept) do
    it(("accepts %q as %d bytes"):format(s, b), function()
      assert.equal(b, core.parse_size(s))
    end)
  end

  local reject = {
    "", " 1K", "1K ", "-1K", "+1K", "K", "1 K", "1KK", "1Kb5", "1Q", "1.5", "1.1K", "0.1b",
    "1e3", "1,024", ".5K", "1.K", "1iB", "1kibb", "1K\0",
    "18446744073709551616",  -- 2^64
    "16777216T",             -- 2^64 bytes
    "17179869184G",          -- 2^64 bytes
  }
  for _, s in ipairs(reject) do
    it(("rejects %q"):format(s), function()
      local v, err = core.parse_size(s)
      assert.is_nil(v)
      assert.matches("invalid size", err)
    end)
  end
end)

describe("parse_hostport", function()
  local accept = {
    { "127.0.0.1:8080", "127.0.0.1", 8080 },
    { "localhost:80", "localhost", 80 },
    { "my-host_1.example.com:443", "my-host_1.example.com", 443 },
    { "[::1]:8080", "::1", 8080 },
    { "[::]:0", "::", 0 },
    { "[2001:db8::ff00:42:8329]:65535", "2001:db8::ff00:42:8329", 65535 },
    { "[::ffff:192.0.2.1]:1", "::ffff:192.0.2.1", 1 },
    { ":8080", "0.0.0.0", 8080 },
    { "0.0.0.0:0", "0.0.0.0", 0 },
    { "h:00080", "h", 80 },
  }
  for _, c in ipairs(accept) do
    it(("accepts %q"):format(c[1]), function()
      local host, port = core.parse_hostport(c[1])
      assert.equal(c[2], host)
      assert.equal(c[3], port)
    end)
  end

  local reject = {
    "", "8080", "localhost", "localhost:", ":", "host:65536", "host:99999", "host:-1",
    "host:+80", "host:80x", "host:8 0", " host:80", "host:80 ", "host:008080", "::1:8080",
    "[::1]", "[::1]8080", "[::1]:", "[]:80", "[:]:80", "[::1:80", "[127.0.0.1]:80",
    "[::g]:80", "[fe80::1%eth0]:80", "ho st:80", "host/x:80", "a:b:80", "h:80\0",
    ("h"):rep(300) .. ":80", -- does not fit the host buffer
  }
  for _, s in ipairs(reject) do
    it(("rejects %q"):format(s), function()
      local host, err = core.parse_hostport(s)
      assert.is_nil(host)
      assert.matches("invalid address", err)
    end)
  end
end)

describe("url_split", function()
  local cases = {
    { "/a/b", "/a/b", "" },
    { "/a/b?x=1&y=2", "/a/b", "x=1&y=2" },
    { "/a?", "/a", "" },
    { "/a?x=1?y=2", "/a", "x=1?y=2" },
    { "/a#frag", "/a", "" },
    { "/a?x=1#frag?y=2", "/a", "x=1" },
    { "/a#f?x=1", "/a", "" },
    { "", "", "" },
    { "?q", "", "q" },
    { "/a%3Fb?c", "/a%3Fb", "c" },
  }
  for _, c in ipairs(cases) do
    it(("splits %q"):format(c[1]), function()
      local path, query = core.url_split(c[1])
      assert.equal(c[2], path)
      assert.equal(c[3], query)
    end)
  end
end)

describe("url_segments", function()
  it("splits and decodes an entity path", function()
    assert.same({ "entities", "Counter", "counter-123", "Increment" },
      core.url_segments("/entities/Counter/counter-123/Increment"))
  end)

  it("decodes %2F to a slash inside one segment", function()
    assert.same({ "entities", "Counter", "a/b", "Get" }, core.url_segments("/entities/Counter/a%2Fb/Get"))
    assert.same({ "a/b" }, core.url_segments("/a%2fb"))
  end)

  it("decodes escapes of any byte except NUL, in either hex case", function()
    assert.same({ "a b", "é", "\255", "%" }, core.url_segments("/a%20b/%C3%a9/%fF/%25"))
  end)

  it("keeps + as a plus sign in paths", function()
    assert.same({ "a+b" }, core.url_segments("/a+b"))
  end)

  it("keeps empty segments so an empty id can be refused", function()
    assert.same({ "entities", "", "x" }, core.url_segments("/entities//x"))
    assert.same({ "a", "" }, core.url_segments("/a/"))
    assert.same({ "" }, core.url_segments("/"))
    assert.same({ "", "" }, core.url_segments("//"))
  end)

  local reject = {
    "", "a/b", "entities/x", "/a%", "/a%2", "/a%zz", "/a%2g", "/%00", "/a%00b", "/a\0b",
    "/%%41",
  }
  for _, p in ipairs(reject) do
    it(("rejects %q"):format(p), function()
      local segs, err = core.url_segments(p)
      assert.is_nil(segs)
      assert.matches("invalid path", err)
    end)
  end

  it("rejects more segments than allowed", function()
    assert.same({ "a", "b", "c" }, core.url_segments("/a/b/c", 3))
    assert.is_nil(core.url_segments("/a/b/c/d", 3))
    assert.is_nil(core.url_segments("/a/b/c/", 3))
    assert.is_nil(core.url_segments("/", 0))
    assert.is_nil(core.url_segments(("/x"):rep(33)))
    assert.equal(32, #core.url_segments(("/x"):rep(32)))
  end)
end)

describe("query_get", function()
  local q = "a=1&b=hello+world&c=%41%2b%2F&empty=&bare&a=2&sp%20ace=yes&x=a=b"
  local cases = {
    { "a", "1" },           -- first match wins
    { "b", "hello world" }, -- + is a space in queries
    { "c", "A+/" },
    { "empty", "" },
    { "bare", "" },         -- present without '='
    { "sp ace", "yes" },    -- names are compared decoded
    { "x", "a=b" },
  }
  for _, c in ipairs(cases) do
    it(("finds %q"):format(c[1]), function()
      assert.equal(c[2], core.query_get(q, c[1]))
    end)
  end

  it("reports absent keys", function()
    local v, err = core.query_get(q, "missing")
    assert.is_nil(v)
    assert.matches("absent", err)
    assert.is_nil(core.query_get("", "a"))
    assert.is_nil(core.query_get("ab=1", "a"))
    assert.is_nil(core.query_get("a1=1", "a"))
    assert.is_nil(core.query_get("A=1", "a"))
  end)

  it("skips empty pairs", function()
    assert.equal("2", core.query_get("&&a=2&", "a"))
    assert.equal("3", core.query_get("=1&&b=3", "b"))
  end)

  it("rejects a bad escape or NUL in the value asked for", function()
    for _, bad in ipairs({ "a=%", "a=%4", "a=%zz", "a=%00", "a=x%0" }) do
      local v, err = core.query_get(bad, "a")
      assert.is_nil(v)
      assert.matches("invalid query value", err)
    end
  end)

  it("is not blocked by junk in other pairs", function()
    assert.equal("ok", core.query_get("%zz=1&b=%&a=ok", "a"))
  end)
end)

describe("ring_assign", function()
  local three = { "10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000" }
  local four = { "10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000", "10.0.0.4:7000" }
  local N = 300

  it("assigns every shard to a member", function()
    local a = core.ring_assign(members(three), N, 1.25)
    assert.equal(N, #a)
    local set = {}
    for _, id in ipairs(three) do set[id] = true end
    for s = 1, N do assert.is_true(set[a[s]]) end
  end)

  it("does not depend on the order of the members", function()
    local base = core.ring_assign(members(four), N, 1.25)
    local orders = {
      { 4, 3, 2, 1 }, { 2, 4, 1, 3 }, { 3, 1, 4, 2 }, { 1, 3, 2, 4 },
    }
    for _, o in ipairs(orders) do
      local ids = {}
      for i, k in ipairs(o) do ids[i] = four[k] end
      assert.same(base, core.ring_assign(members(ids), N, 1.25))
    end
  end)

  it("gives each member roughly its share, and never more than the bound", function()
    for _, f in ipairs({ 1.0, 1.1, 1.25, 2.0 }) do
      local c = counts(core.ring_assign(members(four), N, f))
      local cap = math.ceil(f * N / 4)
      for _, id in ipairs(four) do
        assert.is_true(c[id] <= cap, ("%s has %d shards, cap %d at f=%s"):format(id, c[id], cap, f))
        assert.is_true(c[id] >= 0.6 * N / 4, ("%s has only %d shards"):format(id, c[id]))
      end
    end
  end)

  it("treats a load factor below 1 (or NaN) as 1: an exact balance", function()
    local exact = core.ring_assign(members(three), N, 1.0)
    assert.same(exact, core.ring_assign(members(three), N, 0.5))
    assert.same(exact, core.ring_assign(members(three), N, 0 / 0))
    local c = counts(exact)
    for _, id in ipairs(three) do assert.equal(100, c[id]) end
  end)

  it("respects weights, and gives weight 0 nothing", function()
    local ms = {
      { id = "a", weight = 1 }, { id = "b", weight = 2 }, { id = "c", weight = 1 },
      { id = "z", weight = 0 },
    }
    local f = 1.25
    local c = counts(core.ring_assign(ms, N, f))
    assert.is_nil(c.z)
    assert.equal(N, (c.a or 0) + (c.b or 0) + (c.c or 0))
    for _, m in ipairs(ms) do
      if m.weight > 0 then
        local share = N * m.weight / 4
        assert.is_true(c[m.id] <= math.ceil(f * share), ("%s: %d"):format(m.id, c[m.id]))
        assert.is_true(c[m.id] >= 0.7 * share, ("%s: %d"):format(m.id, c[m.id]))
      end
    end
    assert.is_true(c.b > c.a and c.b > c.c)
  end)

  it("holds the bound for a very uneven pair of weights", function()
    local c = counts(core.ring_assign({ { id = "big", weight = 9 }, { id = "small", weight = 1 } }, 1000, 1.1))
    assert.is_true(c.small <= 110)
    assert.is_true(c.big <= 990)
    assert.equal(1000, c.big + c.small)
  end)

  it("moves about a quarter of the shards when a fourth member joins", function()
    local a = core.ring_assign(members(three), N, 1.25)
    local b = core.ring_assign(members(four), N, 1.25)
    local frac = moved(a, b) / N
    -- Every moved shard should go to the newcomer; the bound may add a few.
    local to_new = 0
    for s = 1, N do if a[s] ~= b[s] and b[s] == four[4] then to_new = to_new + 1 end end
    print(("\n  join 3 -> 4: moved %.3f of %d shards (%d to the newcomer)"):format(frac, N, to_new))
    assert.is_true(frac > 0.15 and frac < 0.40, ("moved fraction %.3f"):format(frac))
    assert.is_true(to_new >= moved(a, b) - 0.05 * N)
  end)

  it("moves only the leaver's shards plus a few spill-overs when one leaves", function()
    local b = core.ring_assign(members(four), N, 1.25)
    local rest = { four[1], four[3], four[4] }
    local d = core.ring_assign(members(rest), N, 1.25)
    local own, spill = 0, 0
    for s = 1, N do
      if b[s] == four[2] then own = own + 1
      elseif b[s] ~= d[s] then spill = spill + 1 end
      assert.are_not.equal(four[2], d[s])
    end
    print(("\n  leave 4 -> 3: moved %.3f of %d shards (%d of the leaver's, %d spill-overs)")
      :format((own + spill) / N, N, own, spill))
    assert.is_true((own + spill) / N < 0.40)
    assert.is_true(spill <= 0.05 * N, ("%d spill-overs"):format(spill))
  end)

  it("keeps join movement low across many random clusters", function()
    local rng_state = 12345
    local function rnd(k) -- a small LCG so the spec is reproducible anywhere
      rng_state = (rng_state * 1103515245 + 12345) % 2147483648
      return rng_state % k
    end
    local total = 0
    for trial = 1, 50 do
      local ids = {}
      for i = 1, 4 do ids[i] = ("10.%d.%d.%d:%d"):format(rnd(256), rnd(256), rnd(256), 7000 + trial) end
      local a = core.ring_assign(members({ ids[1], ids[2], ids[3] }), N, 1.25)
      local b = core.ring_assign(members(ids), N, 1.25)
      local frac = moved(a, b) / N
      assert.is_true(frac < 0.40, ("trial %d moved %.3f"):format(trial, frac))
      total = total + frac
    end
    local mean = total / 50
    assert.is_true(mean > 0.2 and mean < 0.32, ("mean moved fraction %.3f"):format(mean))
  end)

  it("returns no owner for an empty membership or all-zero weights", function()
    local a = core.ring_assign({}, 5, 1.25)
    assert.same({ false, false, false, false, false }, a)
    assert.same({ false, false, false }, core.ring_assign({ { id = "a", weight = 0 } }, 3, 1.25))
  end)

  it("gives everything to a single member", function()
    local a = core.ring_assign({ { id = "solo" } }, 10, 1.25)
    for s = 1, 10 do assert.equal("solo", a[s]) end
  end)

  it("rejects zero shards and duplicate ids", function()
    local v, err = core.ring_assign(members(three), 0, 1.25)
    assert.is_nil(v)
    assert.matches("invalid ring arguments", err)
    assert.is_nil(core.ring_assign(members({ "a", "b", "a" }), 10, 1.25))
    assert.is_nil(core.ring_assign({ { id = "a", weight = 0 }, { id = "a", weight = 1 } }, 10, 1.25))
  end)

  it("handles more members than shards", function()
    local ids = {}
    for i = 1, 20 do ids[i] = "r" .. i end
    local c = counts(core.ring_assign(members(ids), 8, 1.25))
    local total = 0
    for _, k in pairs(c) do
      assert.is_true(k <= 1) -- ceil(1.25 * 8 / 20) = 1
      total = total + k
    end
    assert.equal(8, total)
  end)
end)

describe("frame", function()
  local MAX = 16 * 1024 * 1024
  local all_bytes = {}
  for i = 0, 255 do all_bytes[#all_bytes + 1] = string.char(i) end
  all_bytes = table.concat(all_bytes)

  local function request(over)
    local r = {
      corr = 42, flags = 3, timeout_ms = 5000, stored = 77, deliver_at = 1700000000000, type = "Counter",
      id = "counter-123", trace_id = ("\75"):rep(16), span_id = ("\7"):rep(8), trace_flags = 1,
      tag = "Increment", payload = '{"amount":1}', headers = '{"x-trace":"t"}',
    }
    for k, v in pairs(over or {}) do r[k] = v end
    return r
  end

  local function u32(n) return string.pack(">I4", n) end

  local function set_u32(s, at, n) return s:sub(1, at - 1) .. u32(n) .. s:sub(at + 4) end

  it("round-trips a request, every field intact", function()
    local r = request()
    local s = core.frame_encode_request(r)
    local st, f, used = core.frame_decode(s)
    assert.equal("ok", st)
    assert.equal(#s, used)
    assert.equal("request", f.type_name)
    for k, v in pairs(r) do assert.equal(v, f[k]) end
  end)

  it("round-trips a reply", function()
    local s = core.frame_encode_reply { corr = 7, kind = 4, body = '{"kind":"not_found"}' }
    local st, f, used = core.frame_decode(s)
    assert.equal("ok", st)
    assert.equal(#s, used)
    assert.same({ type_name = "reply", corr = 7, kind = 4, body = '{"kind":"not_found"}' }, f)
  end)

  it("round-trips the handshake frames", function()
    local nonce, proof = ("n"):rep(32), ("\0\255"):rep(16)
    local st, f = core.frame_decode(core.frame_encode_hello { version = 1, flags = 1, nonce = nonce, cluster = "luster_/300" })
    assert.equal("ok", st)
    assert.same({ type_name = "hello", version = 1, flags = 1, nonce = nonce, cluster = "luster_/300" }, f)
    st, f = core.frame_decode(core.frame_encode_auth { nonce = nonce, proof = proof, runner = "10.0.0.1:7000" })
    assert.equal("ok", st)
    assert.same({ type_name = "auth", nonce = nonce, proof = proof, runner = "10.0.0.1:7000" }, f)
    st, f = core.frame_decode(core.frame_encode_auth_ok { proof = proof })
    assert.equal("ok", st)
    assert.same({ type_name = "auth_ok", proof = proof }, f)
  end)

  it("passes binary, empty and large byte strings through untouched", function()
    local big = ("0123456789abcdef"):rep(65536) .. all_bytes -- 1 MiB + 256
    for _, payload in ipairs({ "", "\0", all_bytes, big }) do
      local r = request { payload = payload, headers = "", id = "\0id\0", tag = all_bytes }
      local st, f = core.frame_decode(core.frame_encode_request(r))
      assert.equal("ok", st)
      assert.equal(payload, f.payload)
      assert.equal("", f.headers)
      assert.equal("\0id\0", f.id)
      assert.equal(all_bytes, f.tag)
    end
    local st, f = core.frame_decode(core.frame_encode_reply { corr = 1, kind = 0, body = big })
    assert.equal("ok", st)
    assert.equal(big, f.body)
  end)

  it("keeps the full 64-bit correlation id and 32-bit fields", function()
    local r = request { corr = -1, flags = 0xffffffff, timeout_ms = 0xffffffff }
    local st, f = core.frame_decode(core.frame_encode_request(r))
    assert.equal("ok", st)
    assert.equal(-1, f.corr) -- 2^64-1 as a Lua integer
    assert.equal(0xffffffff, f.flags)
    assert.equal(0xffffffff, f.timeout_ms)
    assert.equal(("\255"):rep(8), core.frame_encode_request(r):sub(6, 13))
  end)

  it("writes big-endian lengths and integers", function()
    local s = core.frame_encode_reply { corr = 0x0102030405060708, kind = 9, body = "ab" }
    assert.equal(u32(1 + 8 + 1 + 4 + 2) .. "\5" .. "\1\2\3\4\5\6\7\8" .. "\9" .. u32(2) .. "ab", s)
  end)

  it("decodes only the first of two frames and says how many bytes it used", function()
    local a = core.frame_encode_request(request { corr = 1 })
    local b = core.frame_encode_reply { corr = 2, kind = 0, body = "x" }
    local st, f, used = core.frame_decode(a .. b)
    assert.equal("ok", st)
    assert.equal(1, f.corr)
    assert.equal(#a, used)
    st, f = core.frame_decode((a .. b):sub(used + 1))
    assert.equal("ok", st)
    assert.equal(2, f.corr)
  end)

  it("asks for more bytes on every truncation of a valid frame", function()
    local frames = {
      core.frame_encode_request(request()),
      core.frame_encode_reply { corr = 1, kind = 0, body = "" },
      core.frame_encode_hello { version = 1, flags = 0, cluster = "c" },
      core.frame_encode_auth { runner = "" },
      core.frame_encode_auth_ok {},
    }
    for _, s in ipairs(frames) do
      for n = 0, #s - 1 do assert.equal("need_more", core.frame_decode(s:sub(1, n))) end
      assert.equal("ok", core.frame_decode(s))
    end
  end)

  it("refuses a frame whose fields do not fill its length exactly", function()
    local s = core.frame_encode_request(request())
    -- Length one short: the last string runs past the frame.
    assert.equal("bad", core.frame_decode(set_u32(s, 1, #s - 5)))
    -- Length one long, with the byte present: trailing garbage inside the frame.
    assert.equal("bad", core.frame_decode(set_u32(s, 1, #s - 3) .. "x"))
    -- A string length pointing past the frame (the type string's length at
    -- byte 63, after corr, flags, timeout, stored, deliver_at and the 25
    -- bytes of trace context).
    assert.equal("bad", core.frame_decode(set_u32(s, 63, 0xffffffff)))
    assert.equal("bad", core.frame_decode(set_u32(s, 63, #"Counter" + 1)))
    -- A frame too short for its fixed fields.
    assert.equal("bad", core.frame_decode(u32(2) .. "\5\0"))
    assert.equal("bad", core.frame_decode(u32(1) .. "\3"))
    -- No room even for the type byte.
    assert.equal("bad", core.frame_decode(u32(0)))
  end)

  it("refuses a length over max_frame as soon as the length is known", function()
    assert.equal("too_large", core.frame_decode(u32(1025), 1024))
    assert.equal("too_large", core.frame_decode(u32(0xffffffff) .. "\4"))
    local s = core.frame_encode_reply { corr = 1, kind = 0, body = ("x"):rep(100) }
    assert.equal("too_large", core.frame_decode(s, #s - 5))
    assert.equal("ok", core.frame_decode(s, #s - 4)) -- the limit counts what follows the length
  end)

  it("refuses unknown frame types as soon as the type byte arrives", function()
    for _, t in ipairs({ 0, 6, 7, 128, 255 }) do
      assert.equal("bad", core.frame_decode(u32(10) .. string.char(t)))
    end
  end)

  it("refuses to encode handshake frames into a buffer too small", function()
    local h = { version = 1, flags = 0, cluster = ("c"):rep(100) }
    local full = core.frame_encode_hello(h)
    assert.equal(#full, #core.frame_encode_hello(h, #full))
    assert.is_nil(core.frame_encode_hello(h, #full - 1))
    assert.is_nil(core.frame_encode_auth({ runner = "r" }, 10))
    assert.is_nil(core.frame_encode_auth_ok({}, 36))
    assert.equal(37, #core.frame_encode_auth_ok({}, 37))
  end)

  it("survives random bytes and mutated frames with a valid status", function()
    math.randomseed(20261124)
    local valid = {
      core.frame_encode_request(request()),
      core.frame_encode_reply { corr = 5, kind = 1, body = "body" },
      core.frame_encode_hello { version = 1, flags = 1, cluster = "luster" },
      core.frame_encode_auth { runner = "127.0.0.1:1" },
      core.frame_encode_auth_ok {},
    }
    local statuses = { ok = true, need_more = true, too_large = true, bad = true }
    local function check(s, max)
      local st, f, used = core.frame_decode(s, max)
      assert.is_true(statuses[st], st)
      if st == "ok" then
        assert.is_table(f)
        assert.is_true(used >= 5 and used <= #s)
      end
    end
    for _ = 1, 3000 do
      -- Pure noise, biased towards short lengths so some parse further.
      local n = math.random(0, 64)
      local b = {}
      for i = 1, n do b[i] = string.char(math.random(0, 255)) end
      local noise = table.concat(b)
      check(noise, 1024)
      check("\0\0\0" .. noise, 1024)
      -- A valid frame with one to four bytes changed, cut anywhere.
      local s = valid[math.random(#valid)]
      for _ = 1, math.random(4) do
        local at = math.random(#s)
        s = s:sub(1, at - 1) .. string.char(math.random(0, 255)) .. s:sub(at + 1)
      end
      check(s, 1024)
      check(s:sub(1, math.random(0, #s)), 1024)
    end
  end)
end)

describe("json_canonical", function()
  local function canon(s)
    local out, ok = core.json_canonical(s)
    assert.is_true(ok, "not canonicalised: " .. s)
    return out
  end

  it("drops whitespace and sorts object members by key, at every depth", function()
    assert.are.equal('{"a":1,"b":[true,null,{"x":"y","z":2}]}',
      canon(' {\n "b" : [ true , null , { "z":2, "x":"y" } ] ,\t"a": 1 } '))
    assert.are.equal(canon('{"amount":10,"key":"k"}'), canon('{"key":"k","amount":10}'))
    assert.are.equal('{"a":1,"ab":2,"b":3}', canon('{"b":3,"ab":2,"a":1}'))
  end)

  it("keeps array order, members with the same key in their order, and numbers as written", function()
    assert.are.equal("[3,1,2]", canon("[3, 1, 2]"))
    assert.are.equal('{"a":2,"a":1}', canon('{"a":2,"a":1}'))
    assert.are_not.equal(canon("1"), canon("1.0"))
    assert.are.equal("-1.5e+10", canon(" -1.5e+10 "))
    assert.are.equal("{}", canon("{ }"))
    assert.are.equal("[]", canon("[ ]"))
  end)

  it("decodes string escapes and escapes only quotes, backslashes and control characters", function()
    assert.are.equal(canon('"A/é"'), canon('"\\u0041\\/é"'))
    assert.are.equal('"\\"\\\\\\u000a\\u0001"', canon('"\\u0022\\\\\\u000a\\u0001"'))
    assert.are.equal('"😀"', canon('"\\ud83d\\ude00"'))
    -- Keys are compared after unescaping too.
    assert.are.equal(canon('{"b":1,"a":2}'), canon('{"\\u0062":1,"a":2}'))
  end)

  it("gives anything that is not JSON, or nests too deep, back as written", function()
    for _, s in ipairs { "", "{", '{"a":}', '{"a":1', "[1,]x", '"\\x"', '"unterminated', "{} []", "nul" } do
      local out, ok = core.json_canonical(s)
      assert.is_false(ok, s)
      assert.are.equal(s, out)
    end
    local deep = string.rep("[", 65) .. string.rep("]", 65)
    assert.are.same({ deep, false }, { core.json_canonical(deep) })
    local ok_deep = string.rep("[", 64) .. string.rep("]", 64)
    assert.are.same({ ok_deep, true }, { core.json_canonical(ok_deep) })
  end)
end)
