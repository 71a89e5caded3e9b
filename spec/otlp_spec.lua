-- Spans in OTLP/HTTP JSON (core/otlp.c) and their exporter (net/otlp_export.c),
-- through build/luster_otlp.so, against a test receiver process.
package.path = "spec/?.lua;" .. package.path
package.cpath = "build/?.so;" .. package.cpath
local otlp = require "luster_otlp"
local cjson = require "cjson"
local H = require "support.helpers"

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

local function attrs(list)
  local m = {}
  for _, kv in ipairs(list or {}) do m[kv.key] = kv.value end
  return m
end

describe("OTLP JSON encoding", function()
  it("writes an ExportTraceServiceRequest: resource, scope, and spans with hex ids and parent links", function()
    local json = otlp.encode({
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
    local list = decode_spans(otlp.encode({ span({ name = name .. "\255\192\128x",
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
      local got = decode_spans(otlp.encode({ span({ name = name }) }))[1].name
      assert.is_truthy(utf8.len(got), "not UTF-8 for " .. ("%q"):format(name))
      if utf8.len(name) then assert.are.equal(name, got) end
    end
  end)

  it("omits service.instance.id without a runner and writes an empty batch as valid JSON", function()
    local list, doc = decode_spans(otlp.encode({}))
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

  it("POSTs a batch as application/json to the URL's path and counts the spans sent", function()
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
    assert.are.equal("application/json", reqs[1].headers["content-type"])
    assert.are.equal("127.0.0.1:" .. rx.port, reqs[1].headers.host)
    local list, doc = decode_spans(reqs[1].body)
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

  it("splits a queue into batches of the size it was given, one request at a time", function()
    local rx = receiver(200)
    local st = otlp.export_to(rx.url, spans(10), { batch = 4 })
    assert.are.equal(10, st.sent)
    assert.are.equal(3, st.requests)
    local sizes = {}
    for _, r in ipairs(rx.requests()) do sizes[#sizes + 1] = #decode_spans(r.body) end
    assert.are.same({ 4, 4, 2 }, sizes)
  end)

  it("drops and counts the spans that find the queue full", function()
    local rx = receiver(200)
    local st = otlp.export_to(rx.url, spans(25), { cap = 10 })
    assert.are.equal(15, st.refused)
    assert.are.equal(15, st.dropped)
    assert.are.equal(10, st.sent)
    local list = decode_spans(rx.requests()[1].body)
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
    local got = decode_spans(rx.requests()[1].body)[1]
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
