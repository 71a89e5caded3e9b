-- Spans in OTLP/HTTP protobuf and JSON (core/otlp.c) and their exporter
-- (net/otlp_export.c), through build/luster_otlp.so, against a test receiver
-- process. Protobuf is read back with spec/support/pb_decode.lua, a decoder
-- written for the specs that knows the OTLP field numbers and refuses any
-- other.
package.path = "spec/?.lua;" .. package.path
package.cpath = "build/?.so;" .. package.cpath
local otlp = require "luster_otlp"
local cjson = require "cjson"
local H = require "support.helpers"
local pb = require "support.pb_decode"

local TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
local ROOT, CHILD = "00f067aa0ba902b7", "b7ad6b7169203331"
local T0 = 1733400000123456789 -- unix ns, beyond 2^53: must survive as a string

local function span(over)
  local s = { trace_id = TRACE, span_id = ROOT, name = "POST /entities/Counter/c1/Increment", kind = 2,
    start_ns = T0, end_ns = T0 + 1500, flags = 1 }
  for k, v in pairs(over or {}) do s[k] = v end
  return s
end

-- n spans of one trace, each a child of the first.
local function spans(n)
  local list = {}
  for i = 1, n do
    list[i] = span({ span_id = string.format("%016x", i), parent_id = i > 1 and string.format("%016x", 1) or nil,
      name = "span " .. i })
  end
  return list
end

local function decode_spans(json)
  local doc = cjson.decode(json)
  return doc.resourceSpans[1].scopeSpans[1].spans, doc
end

local function json_encode(list, runner) return otlp.encode(list, runner, "http/json") end

-- The spans of a request as the test receiver decoded them (either encoding).
local function req_spans(req)
  assert(req.doc, req.error)
  return req.doc.resourceSpans[1].scopeSpans[1].spans, req.doc
end

local function attrs(list)
  local m = {}
  for _, kv in ipairs(list or {}) do m[kv.key] = kv.value end
  return m
end

describe("OTLP JSON encoding", function()
  it("writes an ExportTraceServiceRequest: resource, scope, and spans with hex ids and parent links", function()
    local json = json_encode({
      span({ attrs = { { "luster.type", "Counter" }, { "luster.id", "c1" }, { "luster.rpc", "Increment" } } }),
      span({ span_id = CHILD:upper(), parent_id = ROOT, name = "Counter.Increment", kind = 3,
        start_ns = T0 + 100, end_ns = T0 + 900, status = 2, status_message = "boom",
        attrs = { { "luster.outcome", "error" }, { "luster.peer_runner", "127.0.0.1:7001" }, { "attempt", 3 } } }),
    }, "127.0.0.1:7000")
    local list, doc = decode_spans(json)
    local res = attrs(doc.resourceSpans[1].resource.attributes)
    assert.are.same({ stringValue = "luster" }, res["service.name"])
    assert.are.same({ stringValue = "127.0.0.1:7000" }, res["service.instance.id"])
    assert.are.equal("luster", doc.resourceSpans[1].scopeSpans[1].scope.name)
    assert.are.equal(2, #list)

    local root, child = list[1], list[2]
    assert.are.equal(TRACE, root.traceId)
    assert.are.equal(ROOT, root.spanId)
    assert.is_nil(root.parentSpanId) -- a root span has none
    assert.are.equal(CHILD, child.spanId) -- lowercase whatever the input's case
    assert.are.equal(root.spanId, child.parentSpanId)
    assert.are.equal(root.traceId, child.traceId)
    -- fixed64 times are decimal strings, exact beyond a double's precision
    assert.are.equal(tostring(T0), root.startTimeUnixNano)
    assert.are.equal(tostring(T0 + 1500), root.endTimeUnixNano)
    assert.are.equal(tostring(T0 + 100), child.startTimeUnixNano)
    -- enums are integers
    assert.are.equal(2, root.kind)
    assert.are.equal(3, child.kind)
    assert.are.same({ code = 0 }, root.status)
    assert.are.same({ code = 2, message = "boom" }, child.status)
    assert.are.equal(1, root.flags)
    local a = attrs(child.attributes)
    assert.are.same({ stringValue = "error" }, a["luster.outcome"])
    assert.are.same({ stringValue = "127.0.0.1:7001" }, a["luster.peer_runner"])
    assert.are.same({ intValue = "3" }, a.attempt) -- int64 as a string too
    assert.are.equal("Counter", attrs(root.attributes)["luster.type"].stringValue)
    -- the keys are the lowerCamelCase ones, never the proto field names
    assert.is_nil(json:find('"%w+_[%w_]*":'))
  end)

  it("escapes strings and turns bytes that are not UTF-8 into U+FFFD, so the JSON stays valid", function()
    local name = 'a "quoted" \\ back\nslash\t\1 é € 😀'
    local list = decode_spans(json_encode({ span({ name = name .. "\255\192\128x",
      attrs = { { "k\"ey", "v\0al" } } }) }))
    assert.are.equal(name .. "\239\191\189\239\191\189\239\191\189x", list[1].name)
    assert.are.same({ stringValue = "v" }, attrs(list[1].attributes)['k"ey']) -- a C string ends at NUL
  end)

  it("keeps valid UTF-8 as it is and makes any bytes valid UTF-8 (random strings)", function()
    math.randomseed(16)
    local pieces = { "a", "\"", "\\", "\n", "\1", "\127", "é", "€", "😀", "\237\160\128" --[[a surrogate]],
      "\192\175" --[[overlong /]], "\244\144\128\128" --[[above U+10FFFF]], "\226\130" --[[cut short]], "\128", "\255" }
    for _ = 1, 500 do
      local parts = {}
      for i = 1, math.random(0, 12) do parts[i] = pieces[math.random(#pieces)] end
      local name = table.concat(parts)
      local got = decode_spans(json_encode({ span({ name = name }) }))[1].name
      assert.is_truthy(utf8.len(got), "not UTF-8 for " .. ("%q"):format(name))
      if utf8.len(name) then assert.are.equal(name, got) end
    end
  end)

  it("omits service.instance.id without a runner and writes an empty batch as valid JSON", function()
    local list, doc = decode_spans(json_encode({}))
    assert.are.equal(0, #list)
    local res = attrs(doc.resourceSpans[1].resource.attributes)
    assert.is_nil(res["service.instance.id"])
    assert.are.same({ stringValue = "luster" }, res["service.name"])
  end)

  it("refuses a ninth attribute", function()
    local many = {}
    for i = 1, 9 do many[i] = { "k" .. i, i } end
    local ok, err = pcall(otlp.encode, { span({ attrs = many }) })
    assert.is_false(ok)
    assert.matches("attribute 9", err)
  end)
end)

local function unhex(h) return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end)) end

-- The fields of message bytes b as { [field] = {values...} }, each checked
-- to have the wire type expected for it.
local function by_field(b, wires)
  local m = {}
  for _, f in ipairs(pb.fields(b)) do
    assert.are.equal(wires[f.field], f.wire, "wire type of field " .. f.field)
    m[f.field] = m[f.field] or {}
    table.insert(m[f.field], f.value)
  end
  return m
end

describe("OTLP protobuf encoding", function()
  local LEN, VARINT, I64, I32 = 2, 0, 1, 5

  it("writes the OTLP field numbers: request, resource, scope, span, key-values, status", function()
    local b = otlp.encode({
      span({ span_id = CHILD, parent_id = ROOT, name = "Counter.Increment", kind = 3, status = 2,
        status_message = "boom", attrs = { { "luster.outcome", "error" }, { "attempt", -3 } } }),
    }, "127.0.0.1:7000")
    local req = by_field(b, { [1] = LEN })
    assert.are.equal(1, #req[1])
    local rs = by_field(req[1][1], { [1] = LEN, [2] = LEN })
    local res = by_field(rs[1][1], { [1] = LEN })
    local kv = {}
    for _, a in ipairs(res[1]) do
      local f = by_field(a, { [1] = LEN, [2] = LEN })
      kv[f[1][1]] = by_field(f[2][1], { [1] = LEN })[1][1]
    end
    assert.are.same({ ["service.name"] = "luster", ["service.instance.id"] = "127.0.0.1:7000" }, kv)
    local ss = by_field(rs[2][1], { [1] = LEN, [2] = LEN })
    assert.are.equal("luster", by_field(ss[1][1], { [1] = LEN })[1][1])
    assert.are.equal(1, #ss[2])
    local sp = by_field(ss[2][1], { [1] = LEN, [2] = LEN, [4] = LEN, [5] = LEN, [6] = VARINT, [7] = I64, [8] = I64,
      [9] = LEN, [15] = LEN, [16] = I32 })
    assert.are.equal(unhex(TRACE), sp[1][1]) -- ids as raw bytes, 16 and 8 of them
    assert.are.equal(unhex(CHILD), sp[2][1])
    assert.are.equal(unhex(ROOT), sp[4][1])
    assert.are.equal("Counter.Increment", sp[5][1])
    assert.are.equal(3, sp[6][1])
    assert.are.equal(T0, sp[7][1]) -- fixed64, exact
    assert.are.equal(T0 + 1500, sp[8][1])
    assert.are.equal(1, sp[16][1]) -- fixed32 flags
    assert.are.equal(2, #sp[9])
    local a1 = by_field(sp[9][1], { [1] = LEN, [2] = LEN })
    assert.are.equal("luster.outcome", a1[1][1])
    assert.are.equal("error", by_field(a1[2][1], { [1] = LEN })[1][1])
    local a2 = by_field(sp[9][2], { [1] = LEN, [2] = LEN })
    assert.are.equal(-3, by_field(a2[2][1], { [3] = VARINT })[3][1]) -- int64: two's complement varint
    local st = by_field(sp[15][1], { [2] = LEN, [3] = VARINT })
    assert.are.equal("boom", st[2][1])
    assert.are.equal(2, st[3][1])
  end)

  it("leaves out what a root span and a zero value do not have", function()
    local b = otlp.encode({ span({ flags = 0, kind = 0, status = 0 }) })
    local rs = pb.fields(pb.fields(b)[1].value)
    assert.are.same({ 1, 2 }, { rs[1].field, rs[2].field }) -- resource, scope_spans
    assert.are.equal(1, #pb.fields(rs[1].value)) -- no runner: the resource is service.name alone
    local list = pb.trace_request(b).resourceSpans[1].scopeSpans[1].spans
    assert.is_nil(list[1].parentSpanId)
    assert.is_nil(list[1].flags)
    assert.are.same({ code = 0 }, list[1].status)
    local empty = pb.trace_request(otlp.encode({}))
    assert.are.same({}, empty.resourceSpans[1].scopeSpans[1].spans)
  end)

  it("decodes to exactly what the JSON encoding says, for random spans", function()
    math.randomseed(1616)
    local pieces = { "a", "Counter", "\"", "é", "😀", "\255", "\192\175", "\226\130", ("x"):rep(700) }
    local function str()
      local parts = {}
      for i = 1, math.random(0, 4) do parts[i] = pieces[math.random(#pieces)] end
      return table.concat(parts)
    end
    local function id(n)
      local t = {}
      for i = 1, n do t[i] = string.format("%02x", math.random(0, 255)) end
      return table.concat(t)
    end
    for _ = 1, 100 do
      local list = {}
      for i = 1, math.random(0, 6) do
        local attrs = {}
        for k = 1, math.random(0, 8) do
          attrs[k] = { "k" .. k .. str(), math.random(2) == 1 and str() or math.random(math.mininteger, math.maxinteger) }
        end
        list[i] = { trace_id = id(16), span_id = id(8), parent_id = math.random(2) == 1 and id(8) or nil,
          name = str(), kind = math.random(0, 5), flags = math.random(0, 1), status = math.random(0, 2),
          status_message = math.random(2) == 1 and str() or nil, attrs = attrs,
          start_ns = math.random(0, math.maxinteger), end_ns = math.random(0, math.maxinteger) }
      end
      local runner = math.random(2) == 1 and str() or nil
      local want = cjson.decode(otlp.encode(list, runner, "http/json"))
      local got = pb.trace_request(otlp.encode(list, runner))
      -- JSON leaves out an empty status message; so does protobuf
      assert.are.same(want, got)
    end
  end)

  it("makes any bytes valid UTF-8 and cuts long strings at a character boundary", function()
    local long = "a" .. ("é"):rep(1500)
    local list = pb.trace_request(otlp.encode({ span({ name = "x\255\192\128y" .. "é",
      attrs = { { "luster.id", long } } }) })).resourceSpans[1].scopeSpans[1].spans
    assert.are.equal("x\239\191\189\239\191\189\239\191\189yé", list[1].name)
    assert.are.equal(long:sub(1, 1023), attrs(list[1].attributes)["luster.id"].stringValue)
  end)

  it("refuses an unknown protocol name", function()
    local ok, err = pcall(otlp.encode, { span() }, nil, "grpc")
    assert.is_false(ok)
    assert.matches("unknown OTLP protocol grpc", err, 1, true)
  end)
end)

describe("the OTLP exporter", function()
  local started = {}
  local function receiver(status, mode, host)
    local out = H.tmpname("otlp-received")
    local cmd = string.format("exec lua5.4 spec/support/otlp_receiver.lua %s %d %s %s >/dev/null 2>&1 & echo $!",
      H.sh_quote(out), status or 200, mode or "answer", host or "127.0.0.1")
    local p = io.popen("sh -c " .. H.sh_quote(cmd))
    local pid = tonumber(p:read("*l"))
    p:close()
    local r = { pid = pid, out = out }
    started[#started + 1] = r
    r.port = H.wait_for("the test receiver to listen", 10, function()
      local first = (H.read_file(out) or ""):match("^([^\n]+)\n")
      return first and math.tointeger(cjson.decode(first).port)
    end)
    r.url = "http://127.0.0.1:" .. r.port .. "/v1/traces"
    function r.requests()
      local list = {}
      for line in (H.read_file(out) or ""):gmatch("[^\n]+") do
        local rec = cjson.decode(line)
        if rec.method then list[#list + 1] = rec end
      end
      return list
    end
    return r
  end

  after_each(function()
    for _, r in ipairs(started) do
      os.execute("kill " .. r.pid .. " 2>/dev/null")
      os.remove(r.out)
    end
    started = {}
  end)

  it("POSTs a batch as application/x-protobuf to the URL's path and counts the spans sent", function()
    local rx = receiver(200)
    local st = assert(otlp.export_to(rx.url, spans(3), { runner = "127.0.0.1:7000" }))
    assert.are.same({ sent = 3, failed = 0, dropped = 0, requests = 1 },
      { sent = st.sent, failed = st.failed, dropped = st.dropped, requests = st.requests })
    assert.are.same({}, st.states)
    assert.is_true(st.loop_closed) -- the exporter left no handle behind
    local reqs = rx.requests()
    assert.are.equal(1, #reqs)
    assert.are.equal("POST", reqs[1].method)
    assert.are.equal("/v1/traces", reqs[1].path)
    assert.are.equal("application/x-protobuf", reqs[1].headers["content-type"]) -- OTLP/HTTP's default
    assert.are.equal("127.0.0.1:" .. rx.port, reqs[1].headers.host)
    local list, doc = req_spans(reqs[1])
    assert.are.equal(3, #list)
    assert.are.equal("span 1", list[1].name)
    assert.is_nil(list[1].parentSpanId)
    assert.are.equal(list[1].spanId, list[3].parentSpanId)
    assert.are.equal("127.0.0.1:7000", attrs(doc.resourceSpans[1].resource.attributes)["service.instance.id"].stringValue)
  end)

  it("sends to /v1/traces when the URL has no path, and keeps a path it has", function()
    local rx = receiver(200)
    assert.are.equal(1, otlp.export_to("http://127.0.0.1:" .. rx.port, spans(1)).sent)
    assert.are.equal(1, otlp.export_to("http://localhost:" .. rx.port .. "/", spans(1)).sent)
    assert.are.equal(1, otlp.export_to("http://127.0.0.1:" .. rx.port .. "/otlp/v1/traces", spans(1)).sent)
    local paths = {}
    for _, r in ipairs(rx.requests()) do paths[#paths + 1] = r.path end
    assert.are.same({ "/v1/traces", "/v1/traces", "/otlp/v1/traces" }, paths)
  end)

  it("sends a partial batch when its timer fires, without a flush", function()
    local rx = receiver(200)
    local st = otlp.export_to(rx.url, spans(5), { interval_ms = 50, run_ms = 5000, flush = false })
    assert.are.equal(5, st.before_close.sent)
    assert.are.equal(0, st.before_close.queued)
    assert.are.equal(1, #rx.requests())
  end)

  it("POSTs application/json with --otlp-protocol http/json", function()
    local rx = receiver(200)
    local st = assert(otlp.export_to(rx.url, spans(3), { runner = "r1", protocol = "http/json" }))
    assert.are.equal(3, st.sent)
    local req = rx.requests()[1]
    assert.are.equal("application/json", req.headers["content-type"])
    local list, doc = decode_spans(req.body) -- the body as sent, valid JSON
    assert.are.same(req.doc, doc)
    assert.are.same({ "span 1", "span 2", "span 3" }, { list[1].name, list[2].name, list[3].name })
    assert.are.equal(list[1].spanId, list[3].parentSpanId)
  end)

  for _, proto in ipairs({ "http/protobuf", "http/json" }) do
    it("splits a queue into batches of the size it was given, one request at a time (" .. proto .. ")", function()
      local rx = receiver(200)
      local st = otlp.export_to(rx.url, spans(10), { batch = 4, protocol = proto })
      assert.are.equal(10, st.sent)
      assert.are.equal(3, st.requests)
      local names = {}
      for _, r in ipairs(rx.requests()) do
        local batch = {}
        for i, sp in ipairs(req_spans(r)) do batch[i] = sp.name end
        names[#names + 1] = batch
      end
      assert.are.same({ { "span 1", "span 2", "span 3", "span 4" }, { "span 5", "span 6", "span 7", "span 8" },
        { "span 9", "span 10" } }, names)
    end)
  end

  it("drops and counts the spans that find the queue full", function()
    local rx = receiver(200)
    local st = otlp.export_to(rx.url, spans(25), { cap = 10 })
    assert.are.equal(15, st.refused)
    assert.are.equal(15, st.dropped)
    assert.are.equal(10, st.sent)
    local list = req_spans(rx.requests()[1])
    assert.are.equal("span 10", list[10].name) -- the first ten were kept
  end)

  it("counts the spans failed when nothing listens, and returns promptly", function()
    local port = H.free_port()
    local t0 = H.now()
    local st = otlp.export_to("http://127.0.0.1:" .. port .. "/v1/traces", spans(7), { batch = 3, timeout_ms = 5000 })
    assert.is_true(H.now() - t0 < 2, "took " .. (H.now() - t0) .. " s")
    assert.are.equal(0, st.sent)
    assert.are.equal(7, st.failed)
    -- closing gives up after the first failed request: the rest is counted, not tried
    assert.are.equal(1, st.requests)
    assert.is_true(st.failing)
    assert.matches("cannot connect to 127.0.0.1:" .. port .. ": connection refused", st.last_error, 1, true)
    assert.are.equal(1, #st.states) -- told once, not per request
    assert.matches("^failing: cannot connect", st.states[1])
  end)

  it("gives up on a receiver that never answers at its timeout", function()
    local rx = receiver(200, "silent")
    local t0 = H.now()
    local st = otlp.export_to(rx.url, spans(2), { timeout_ms = 300 })
    local took = H.now() - t0
    assert.is_true(took >= 0.25 and took < 2, "took " .. took .. " s")
    assert.are.equal(2, st.failed)
    assert.matches("no answer from 127.0.0.1:" .. rx.port .. " within 300 ms", st.last_error, 1, true)
    assert.is_true(st.loop_closed)
  end)

  it("counts a batch the receiver refuses as failed, with its status", function()
    local rx = receiver(503)
    local st = otlp.export_to(rx.url, spans(4))
    assert.are.equal(4, st.failed)
    assert.are.equal(0, st.sent)
    assert.matches("answered HTTP 503 to POST /v1/traces", st.last_error, 1, true)
    assert.are.equal(1, #rx.requests())
  end)

  it("waits past an interim 100 Continue for the answer", function()
    local rx = receiver(200, "continue")
    local st = otlp.export_to(rx.url, spans(2))
    assert.are.same({ sent = 2, failed = 0 }, { sent = st.sent, failed = st.failed })
    rx = receiver(503, "continue")
    st = otlp.export_to(rx.url, spans(2))
    assert.matches("answered HTTP 503", st.last_error, 1, true)
  end)

  it("tells of failing once, not at every failed request", function()
    local rx = receiver(500)
    local st = otlp.export_to(rx.url, spans(6), { batch = 2, interval_ms = 20, run_ms = 5000, flush = false })
    assert.are.equal(6, st.failed)
    assert.are.equal(3, st.requests)
    assert.are.same({ "failing: 127.0.0.1:" .. rx.port .. " answered HTTP 500 to POST /v1/traces" }, st.states)
  end)

  it("tells of recovery once a request succeeds after a failed one", function()
    local rx = receiver(503, "first")
    local st = otlp.export_to(rx.url, spans(4), { batch = 2, run_ms = 5000, flush = false })
    assert.are.same({ failed = 2, sent = 2, failing = false }, { failed = st.failed, sent = st.sent, failing = st.failing })
    assert.are.same({ "failing: 127.0.0.1:" .. rx.port .. " answered HTTP 503 to POST /v1/traces", "ok" }, st.states)
  end)

  it("cuts long strings at a UTF-8 character boundary", function()
    local rx = receiver(200)
    local long = "a" .. ("é"):rep(1500) -- 3001 bytes; byte 1024 is inside a character
    assert.are.equal(1, otlp.export_to(rx.url, { span({ name = long, attrs = { { "luster.id", long } } }) }).sent)
    local got = req_spans(rx.requests()[1])[1]
    assert.are.equal(1023, #got.name)
    assert.are.equal(long:sub(1, 1023), got.name)
    assert.are.equal(1023, #attrs(got.attributes)["luster.id"].stringValue)
  end)

  it("refuses endpoints it cannot send to, saying why", function()
    local bad = {
      ["https://collector:4318/v1/traces"] = "https is not supported",
      ["grpc://collector:4317"] = "expected http://host:port/path",
      [""] = "empty",
      ["http://:4318/v1/traces"] = "no host",
      ["http://collector:0/v1/traces"] = "port is not a number from 1 to 65535",
      ["http://collector:70000/"] = "port is not a number from 1 to 65535",
      ["http://collector:43x8/"] = "port is not a number from 1 to 65535",
      ["http://collector:4318/v1/traces?x=1"] = "query or fragment",
      ["http://user@collector:4318/"] = "user names",
      ["http://[::1:4318/"] = "closing ']'",
      ["http://collector:4318/a b"] = "spaces or control characters",
    }
    for url, why in pairs(bad) do
      local st, err = otlp.export_to(url, spans(1))
      assert.is_nil(st, url)
      assert.matches(why, err, 1, true)
    end
  end)

  it("reaches a receiver at a bracketed IPv6 address", function()
    local probe = require("socket").tcp6()
    local has_v6 = probe:bind("::1", 0)
    probe:close()
    if not has_v6 then
      -- no IPv6 loopback here: the address still parses, and the failure
      -- names the host without its brackets
      local port = H.free_port()
      local st = assert(otlp.export_to("http://[::1]:" .. port .. "/v1/traces", spans(1)))
      assert.matches("::1:" .. port, st.last_error, 1, true)
      return
    end
    local rx = receiver(200, "answer", "::1")
    local st = assert(otlp.export_to("http://[::1]:" .. rx.port .. "/v1/traces", spans(2)))
    assert.are.equal(2, st.sent)
    assert.are.equal("[::1]:" .. rx.port, rx.requests()[1].headers.host)
  end)
end)
