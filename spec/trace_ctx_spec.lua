-- Trace context across the cluster (issue 16, part 3): the gateway's
-- traceparent, req.trace_id, ctx.log lines, the context in the envelope, the
-- transport and stored messages, and spans at a test OTLP receiver
-- (spec/support/otlp_receiver.lua: Debian packages no OpenTelemetry
-- Collector), which reads protobuf (the default) and JSON into one shape.
package.path = "spec/?.lua;" .. package.path
package.cpath = "build/?.so;" .. package.cpath
local H = require "support.helpers"
local PG = require "support.pg"
local cjson = require "cjson"

local HEAD = [[
local luster = require "luster"
local S = luster.schema
]]
local SCRIPTS = {
  ["leaf.lua"] = HEAD .. [[
local Echo = luster.rpc("Echo", { payload = S.any, success = S.any })
return luster.entity("Leaf", { Echo }):handlers(function(ctx)
  return { Echo = function(req)
    ctx.log("leaf echo")
    return { trace_id = req.trace_id, runner = ctx.runner }
  end }
end)
]],
  ["front.lua"] = HEAD .. [[
local Relay = luster.rpc("Relay", { payload = { to = S.string }, success = S.any })
return luster.entity("Front", { Relay }):handlers(function(ctx)
  return { Relay = function(req)
    local v, err = luster.client("Leaf", req.payload.to):Echo({})
    if not v then error(tostring(err)) end
    return { trace_id = req.trace_id, leaf = v, runner = ctx.runner }
  end }
end)
]],
  ["box.lua"] = HEAD .. [[
local Store = luster.rpc("Store", { payload = { n = S.number }, success = S.any, persisted = true })
local Later = luster.rpc("Later", { payload = { at = S.number }, success = S.any, persisted = true,
  deliver_at = function(p) return p.at end })
local tries = {}
return luster.entity("Box", { Store, Later }):handlers(function(ctx)
  return { Later = function(req)
    ctx.log("later ran")
    return true
  end, Store = function(req)
    tries[ctx.id] = (tries[ctx.id] or 0) + 1
    ctx.log("store try " .. tries[ctx.id])
    if tries[ctx.id] == 1 then error("first try fails") end
    return { trace_id = req.trace_id }
  end }
end)
]],
}

local TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
local PARENT = "00f067aa0ba902b7"

-- A test receiver writing every request to a file; returns it and its URL.
local function receiver(status)
  local out = H.tmpname("otlp-out")
  local cmd = string.format("lua5.4 %s %s %d answer >/dev/null 2>&1 & echo $!",
    H.sh_quote(H.root .. "/spec/support/otlp_receiver.lua"), H.sh_quote(out), status or 200)
  local p = io.popen("sh -c " .. H.sh_quote(cmd))
  local pid = tonumber(p:read("*l"))
  p:close()
  local port = H.wait_for("the receiver's port", 10, function()
    local first = (H.read_file(out) or ""):match("^([^\n]+)\n")
    return first and math.tointeger(cjson.decode(first).port)
  end)
  local rec = { pid = pid, out = out, url = "http://127.0.0.1:" .. port .. "/v1/traces" }
  -- The Content-Type of every request so far.
  function rec.types()
    local types = {}
    local n = 0
    for line in (H.read_file(out) or ""):gmatch("[^\n]+") do
      n = n + 1
      if n > 1 then types[#types + 1] = cjson.decode(line).headers["content-type"] end
    end
    return types
  end
  function rec.spans()
    local spans = {}
    local n = 0
    for line in (H.read_file(out) or ""):gmatch("[^\n]+") do
      n = n + 1
      if n > 1 then
        local req = cjson.decode(line)
        local doc = assert(req.doc, req.error)
        for _, rs in ipairs(doc.resourceSpans) do
          local runner
          for _, a in ipairs(rs.resource.attributes) do
            if a.key == "service.instance.id" then runner = a.value.stringValue end
          end
          for _, ss in ipairs(rs.scopeSpans) do
            for _, s in ipairs(ss.spans) do
              s.runner = runner
              s.attr = {}
              for _, a in ipairs(s.attributes or {}) do s.attr[a.key] = a.value.stringValue or a.value.intValue end
              spans[#spans + 1] = s
            end
          end
        end
      end
    end
    return spans
  end
  function rec.stop()
    os.execute("kill " .. pid .. " 2>/dev/null")
    os.remove(out)
  end
  return rec
end

local function of_trace(spans, trace)
  local out = {}
  for _, s in ipairs(spans) do if s.traceId == trace then out[#out + 1] = s end end
  return out
end

local function tp_trace(tp) return tp and tp:match("^00%-(%x+)%-%x+%-%x%x$") end

describe("trace context", function()
  local dir
  setup(function() dir = H.script_dir(SCRIPTS) end)
  teardown(function() H.rmdir(dir) end)

  describe("on one runner", function()
    local r
    setup(function() r = H.start(dir, { args = "--no-reload" }) end)
    teardown(function() r:stop() end)

    it("continues a given traceparent: the answer, req.trace_id and ctx.log carry its trace id", function()
      local status, doc, h = r:request("POST", "/entities/Leaf/a/Echo", "{}",
        { traceparent = "00-" .. TRACE .. "-" .. PARENT .. "-01" })
      assert.equal(200, status)
      assert.equal(TRACE, doc.value.trace_id)
      assert.equal(TRACE, tp_trace(h.traceparent))
      assert.not_equal(PARENT, h.traceparent:match("^00%-%x+%-(%x+)")) -- the gateway's own span
      H.wait_for("the log line", 5, function() return r:log_text():find("trace=" .. TRACE .. " [Leaf/a] leaf echo", 1, true) end)
    end)

    it("starts a fresh trace without one, and for an invalid one (never an error)", function()
      local seen = {}
      for _, tp in ipairs({ false, "00-" .. TRACE .. "-0000000000000000-01", "garbage", "ff-" .. TRACE .. "-" .. PARENT .. "-01" }) do
        local status, doc, h = r:request("POST", "/entities/Leaf/b/Echo", "{}", tp and { traceparent = tp } or nil)
        assert.equal(200, status)
        local t = tp_trace(h.traceparent)
        assert.is_truthy(t and #t == 32, h.traceparent)
        assert.not_equal(TRACE, t)
        assert.equal(t, doc.value.trace_id)
        assert.is_nil(seen[t])
        seen[t] = true
      end
    end)

    it("counts no spans when no endpoint is set", function()
      assert.equal(0, r:metric('luster_otlp_spans_total{result="sent"}'))
      assert.equal(0, r:metric('luster_otlp_spans_total{result="dropped"}'))
    end)
  end)

  it("refuses a bad --otlp-endpoint with a clear error", function()
    local out = H.tmpname("bad-otlp")
    os.execute(string.format("%s run %s --http 127.0.0.1:0 --otlp-endpoint ftp://x >%s 2>&1", H.sh_quote(H.bin),
      H.sh_quote(dir), H.sh_quote(out)))
    local text = H.read_file(out) or ""
    os.remove(out)
    assert.truthy(text:find("--otlp-endpoint", 1, true), text)
    assert.truthy(text:find("http://host:port/path", 1, true), text)
  end)

  it("refuses a bad --otlp-protocol, naming the flag and the accepted values", function()
    local out = H.tmpname("bad-otlp-proto")
    local rc = os.execute(string.format("LUSTER_OTLP_PROTOCOL=grpc %s run %s --http 127.0.0.1:0 >%s 2>&1",
      H.sh_quote(H.bin), H.sh_quote(dir), H.sh_quote(out)))
    local text = H.read_file(out) or ""
    os.remove(out)
    assert.is_not_true(rc)
    assert.truthy(text:find("--otlp-protocol (LUSTER_OTLP_PROTOCOL): 'grpc'", 1, true), text)
    assert.truthy(text:find("http/protobuf or http/json", 1, true), text)
  end)

  it("continues the trace of a persisted message across its retry, with spans exported as JSON (sqlite)", function()
    local rec = receiver(200)
    local db = H.tmpname("trace-sqlite")
    local r
    local ok, err = pcall(function()
      r = H.start(dir, { args = "--no-reload --storage sqlite:" .. db .. " --otlp-endpoint " .. rec.url ..
        " --otlp-protocol http/json" })
      local status, doc, h = r:request("POST", "/entities/Box/p1/Store", '{"n":1}',
        { traceparent = "00-" .. TRACE .. "-" .. PARENT .. "-01" })
      assert.equal(200, status, cjson.encode(doc))
      assert.equal(TRACE, doc.value.trace_id)
      assert.equal(TRACE, tp_trace(h.traceparent))
      local text = r:log_text()
      assert.truthy(text:find("trace=" .. TRACE .. " [Box/p1] store try 1", 1, true), text)
      assert.truthy(text:find("trace=" .. TRACE .. " [Box/p1] store try 2", 1, true), text)
      -- both runs are spans of the trace, under the gateway's span
      local gw_span = h.traceparent:match("^00%-%x+%-(%x+)")
      local runs = H.wait_for("two handler spans", 10, function()
        local hs = {}
        for _, s in ipairs(of_trace(rec.spans(), TRACE)) do
          if s.name == "Box.Store" then hs[#hs + 1] = s end
        end
        return #hs == 2 and hs
      end)
      for _, s in ipairs(runs) do assert.equal(gw_span, s.parentSpanId) end
      for _, t in ipairs(rec.types()) do assert.equal("application/json", t) end
    end)
    if r then r:stop() end
    rec.stop()
    for _, sfx in ipairs({ "", "-wal", "-shm", "-lock" }) do os.remove(db .. sfx) end
    if not ok then error(err, 0) end
  end)

  it("continues the trace of a persisted message delivered after a restart (sqlite)", function()
    local db = H.tmpname("trace-restart")
    local r1, r2
    local ok, err = pcall(function()
      r1 = H.start(dir, { args = "--no-reload --storage sqlite:" .. db })
      local at = math.floor(H.now() * 1000) + 3000
      local status, doc, h = r1:request("POST", "/entities/Box/later1/Later?discard=1", cjson.encode({ at = at }),
        { traceparent = "00-" .. TRACE .. "-" .. PARENT .. "-01" })
      assert.equal(202, status, cjson.encode(doc))
      assert.equal(TRACE, tp_trace(h.traceparent))
      r1:stop()
      assert.falsy(r1:log_text():find("later ran", 1, true)) -- not due yet: the next run reads it back
      r2 = H.start(dir, { args = "--no-reload --storage sqlite:" .. db })
      H.wait_for("the stored message to run with its trace", 10, function()
        return r2:log_text():find("trace=" .. TRACE .. " [Box/later1] later ran", 1, true)
      end)
    end)
    if r1 then r1:stop() end
    if r2 then r2:stop() end
    for _, sfx in ipairs({ "", "-wal", "-shm", "-lock" }) do os.remove(db .. sfx) end
    if not ok then error(err, 0) end
  end)

  it("keeps answering when the collector is down, and counts the spans it drops", function()
    local port = H.free_port() -- nobody listens
    local r = H.start(dir, { args = "--no-reload --otlp-endpoint http://127.0.0.1:" .. port .. "/v1/traces" })
    local ok, err = pcall(function()
      for i = 1, 6000 do
        local status = r:call("Leaf", "d" .. (i % 50), "Echo", {})
        if status ~= 200 then error("call " .. i .. " answered " .. status) end
        if i % 1000 == 0 and (r:metric('luster_otlp_spans_total{result="dropped"}') or 0) > 0 then break end
      end
      H.wait_for("spans counted failed or dropped", 15, function()
        local failed = r:metric('luster_otlp_spans_total{result="failed"}') or 0
        local dropped = r:metric('luster_otlp_spans_total{result="dropped"}') or 0
        return failed + dropped > 0
      end)
      assert.truthy(r:log_text():find("spans to http://127.0.0.1:" .. port .. "/v1/traces fail", 1, true))
      -- the counters are well-formed Prometheus text
      local file = H.tmpname("trace-metrics")
      H.write_file(file, r:metrics())
      local p = io.popen("promtool check metrics < " .. H.sh_quote(file) .. " 2>&1; echo rc=$?")
      local out = p:read("a")
      p:close()
      os.remove(file)
      assert.matches("rc=0\n$", out)
    end)
    r:stop()
    if not ok then error(err, 0) end
  end)

  describe("across two runners (PostgreSQL)", function()
    local pg
    setup(function() pg = PG.start() end)
    teardown(function() if pg then pg:destroy() end end)

    it("makes one trace: gateway span, handler on A, call span, handler on B", function()
      local rec = receiver(200)
      local url = pg:create_db("trace2")
      local start, stop_all = H.cluster_runners(url, { dir = dir, shards = 16, lease = "2s",
        args = "--no-reload --otlp-endpoint " .. rec.url })
      local ok, err = pcall(function()
        local a, b = start(), start()
        local doc = H.wait_cluster(a, 2)
        H.wait_cluster(b, 2)
        -- an id of Front served by A, and one of Leaf served by B
        local function id_on(runner, prefix)
          for i = 1, 500 do
            local id = prefix .. i
            local st, w = a:request("GET", "/entities/Leaf/" .. id)
            if st == 200 and w.runner == runner.address then return id end
          end
          error("no id served by " .. runner.address)
        end
        local front_id, leaf_id = id_on(a, "f"), id_on(b, "l")
        local status, res, h = a:request("POST", "/entities/Front/" .. front_id .. "/Relay",
          cjson.encode({ to = leaf_id }), { traceparent = "00-" .. TRACE .. "-" .. PARENT .. "-01" })
        assert.equal(200, status, cjson.encode(res))
        assert.equal(TRACE, res.value.trace_id)
        assert.equal(TRACE, res.value.leaf.trace_id)
        assert.equal(a.address, res.value.runner)
        assert.equal(b.address, res.value.leaf.runner)
        local spans = H.wait_for("four spans of the trace", 15, function()
          local s = of_trace(rec.spans(), TRACE)
          return #s >= 4 and s
        end)
        assert.equal(4, #spans)
        local by = {}
        for _, s in ipairs(spans) do by[s.name] = s end
        local gw = by["POST /entities/Front/{id}/Relay"]
        local ha, call, hb = by["Front.Relay"], by["call Leaf.Echo"], by["Leaf.Echo"]
        assert.truthy(gw and ha and call and hb, cjson.encode(spans))
        assert.equal(PARENT, gw.parentSpanId)
        assert.equal(h.traceparent:match("^00%-%x+%-(%x+)"), gw.spanId)
        assert.equal(gw.spanId, ha.parentSpanId)
        assert.equal(ha.spanId, call.parentSpanId)
        assert.equal(call.spanId, hb.parentSpanId)
        assert.equal(a.address, gw.runner)
        assert.equal(a.address, ha.runner)
        assert.equal(a.address, call.runner)
        assert.equal(b.address, hb.runner)
        assert.equal(b.address, call.attr["luster.peer_runner"])
        assert.equal("200", tostring(gw.attr["http.response.status_code"]))
        assert.equal("ok", ha.attr["luster.outcome"])
        assert.equal(leaf_id, hb.attr["luster.id"])
        assert.equal(2, gw.kind) -- SERVER
        assert.equal(3, call.kind) -- CLIENT
        for _, t in ipairs(rec.types()) do assert.equal("application/x-protobuf", t) end -- the default
        -- a persisted message stored in PostgreSQL runs later with its trace
        local T2 = "0af7651916cd43dd8448eb211c80319c"
        local st2 = a:request("POST", "/entities/Box/" .. leaf_id .. "/Later?discard=1",
          cjson.encode({ at = math.floor(H.now() * 1000) + 1000 }), { traceparent = "00-" .. T2 .. "-" .. PARENT .. "-01" })
        assert.equal(202, st2)
        H.wait_for("the stored message to run with its trace", 15, function()
          return (a:log_text() .. b:log_text()):find("trace=" .. T2 .. " [Box/", 1, true)
        end)
        _ = doc
      end)
      stop_all()
      rec.stop()
      if not ok then error(err, 0) end
    end)
  end)
end)
