-- The HTTP gateway (SPEC §3.1): every status code it answers with and the
-- body that goes with it, keep-alive, pipelining, Expect: 100-continue, HEAD,
-- timeouts, /health, /cluster, /metrics, and the `luster call` and `luster
-- status` commands that talk to it.
package.path = "spec/?.lua;" .. package.path
local H = require "support.helpers"
local cjson = require "cjson"
local socket = require "socket"

local FIXTURES = H.root .. "/spec/fixtures/gateway"

-- One POST request as bytes, for raw sockets.
local function post(path, body, extra)
  return ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sContent-Length: %d\r\n\r\n%s")
    :format(path, extra or "", #body, body)
end

local function decode(raw) return cjson.decode(raw) end

-- Whether the server closed the socket (after everything it sent was read),
-- and what it sent first. A close with unread client bytes is a reset.
local function closed_by_server(c, timeout)
  c:settimeout(timeout or 5)
  local data, err, partial = c:receive("*a")
  return err == nil or err == "closed" or err == "connection reset by peer", (data or partial or "")
end

describe("the HTTP gateway", function()
  local r
  lazy_setup(function() r = H.start(FIXTURES) end)
  lazy_teardown(function() if r then r:stop() end end)

  describe("entity calls", function()
    it("answers 200 {value} with the handler's result", function()
      local status, doc, headers = r:call("Counter", "ok-1", "Increment", { amount = 2 })
      assert.are.equal(200, status)
      assert.are.same({ value = 2 }, doc)
      assert.are.equal("application/json", headers["content-type"])
      status, doc = r:call("Counter", "ok-1", "Increment", { amount = 3 })
      assert.are.equal(200, status)
      assert.are.same({ value = 5 }, doc)
    end)

    it("answers 202 {accepted} for ?discard=1 and still runs the message", function()
      local status, doc = r:call("Counter", "discard-1", "Increment", { amount = 7 }, "?discard=1")
      assert.are.equal(202, status)
      assert.are.same({ accepted = true }, doc)
      -- The next message to the same instance runs after the discarded one.
      status, doc = r:call("Counter", "discard-1", "Increment", { amount = 0 })
      assert.are.equal(200, status)
      assert.are.same({ value = 7 }, doc)
    end)

    it("answers 422 {failure} with a declared failure value", function()
      local status, doc = r:call("Account", "acct-1", "Withdraw", { amount = 100 })
      assert.are.equal(422, status)
      assert.are.same({ failure = { reason = "insufficient_funds", balance = 10 } }, doc)
      status, doc = r:call("Account", "acct-1", "Withdraw", { amount = 4 })
      assert.are.equal(200, status)
      assert.are.same({ value = 6 }, doc)
    end)

    it("answers 400 schema naming the path and both sides for a payload of the wrong type", function()
      local status, doc = r:call("Counter", "schema-1", "Increment", { amount = "ten" })
      assert.are.equal(400, status)
      assert.are.same({ error = { kind = "schema", path = "amount",
                                  message = "amount: expected number, got string" } }, doc)
    end)

    it("answers 400 schema for a body that is not JSON", function()
      local status, doc = r:call("Counter", "schema-2", "Increment", '{"amount": 1')
      assert.are.equal(400, status)
      assert.are.equal("schema", doc.error.kind)
      assert.matches("^invalid JSON: ", doc.error.message)
    end)

    it("answers 400 schema with path \"id\" for an empty entity id", function()
      local status, doc = r:call("Counter", "", "Increment", { amount = 1 })
      assert.are.equal(400, status)
      assert.are.same({ error = { kind = "schema", path = "id", message = "entity id must not be empty" } }, doc)
    end)

    it("answers 400 schema with path \"timeout\" for a ?timeout that is not a usable number of ms", function()
      for _, q in ipairs { "?timeout=abc", "?timeout=0", "?timeout=-5", "?timeout=" } do
        local status, doc = r:call("Counter", "timeout-q", "Increment", { amount = 1 }, q)
        assert.are.equal(400, status, q)
        assert.are.same({ kind = "schema", path = "timeout",
                          message = "timeout must be a positive number of milliseconds" }, doc.error, q)
      end
      -- So large that now + timeout would wrap around and expire at once.
      for _, q in ipairs { "?timeout=18446744073709551615", "?timeout=99999999999999999999999" } do
        local status, doc = r:call("Counter", "timeout-q", "Increment", { amount = 1 }, q)
        assert.are.equal(400, status, q)
        assert.are.equal("timeout", doc.error.path)
        assert.matches("at most", doc.error.message)
      end
      local status, doc = r:call("Counter", "timeout-q", "Increment", { amount = 1 }, "?timeout=86400000")
      assert.are.equal(200, status)
      assert.are.same({ value = 1 }, doc)
    end)

    it("answers 404 not_found for an unknown entity type", function()
      local status, doc = r:call("Nope", "x", "Increment", { amount = 1 })
      assert.are.equal(404, status)
      assert.are.same({ error = { kind = "not_found", message = "unknown entity type 'Nope'" } }, doc)
    end)

    it("answers 404 not_found for an unknown RPC, naming the type's RPCs", function()
      local status, doc = r:call("Counter", "x", "Decrement", { amount = 1 })
      assert.are.equal(404, status)
      assert.are.same({ error = { kind = "not_found",
                                  message = "unknown rpc 'Decrement' on Counter; its rpcs are: Increment" } }, doc)
    end)

    it("answers 404 not_found for a path that is no route", function()
      local status, doc = r:request("GET", "/nope")
      assert.are.equal(404, status)
      assert.are.equal("not_found", doc.error.kind)
      assert.matches("no such route", doc.error.message)
      status, doc = r:request("POST", "/entities/Counter", "{}")
      assert.are.equal(404, status)
      assert.are.equal("not_found", doc.error.kind)
      assert.matches("POST /entities/{type}/{id}/{rpc}", doc.error.message, 1, true)
    end)

    it("answers 405 with Allow for a method the route does not take", function()
      local status, doc, headers = r:request("GET", "/entities/Counter/x/Increment")
      assert.are.equal(405, status)
      assert.are.equal("method_not_allowed", doc.error.kind)
      assert.are.equal("POST", headers["allow"])
      assert.matches("POST", doc.error.message)
      status, doc, headers = r:request("POST", "/metrics", "")
      assert.are.equal(405, status)
      assert.are.equal("GET", headers["allow"])
      assert.matches("GET", doc.error.message)
    end)

    it("answers 500 defect when a handler fails without an error schema to fail with", function()
      local status, doc = r:call("Account", "acct-2", "Close")
      assert.are.equal(500, status)
      assert.are.same({ error = { kind = "defect",
        message = "Account.Close returned a failure, but the RPC declares no error schema" } }, doc)
    end)

    it("answers 503 mailbox_full with Retry-After when the instance's mailbox is full", function()
      -- Narrow has mailbox = 1: one message runs, one waits, the next is refused.
      assert.are.equal(200, (r:call("Narrow", "n-1", "Hold", { ms = 0 })))
      local running = r:connect()
      running:send(post("/entities/Narrow/n-1/Hold", '{"ms":400}'))
      H.wait_for("the first Hold to run", 5, function()
        return r:metric('luster_running_messages{type="Narrow"}') == 1
      end)
      local waiting = r:connect()
      waiting:send(post("/entities/Narrow/n-1/Hold", '{"ms":0}'))
      H.wait_for("the second Hold to wait in the mailbox", 5, function()
        return r:metric('luster_queued_messages{type="Narrow"}') == 1
      end)
      local status, doc, headers = r:call("Narrow", "n-1", "Hold", { ms = 0 })
      assert.are.equal(503, status)
      assert.are.equal("1", headers["retry-after"])
      assert.are.equal("mailbox_full", doc.error.kind)
      assert.matches("mailbox of Narrow/n%-1 is full", doc.error.message)
      local s1, _, b1 = H.read_response(running)
      local s2, _, b2 = H.read_response(waiting)
      running:close()
      waiting:close()
      assert.are.same({ 200, { value = 400 } }, { s1, decode(b1) })
      assert.are.same({ 200, { value = 0 } }, { s2, decode(b2) })
    end)

    it("answers 504 timeout when ?timeout passes before the reply", function()
      local t0 = H.now()
      local status, doc = r:call("Sleeper", "slow-1", "Sleep", { ms = 2000, tag = "late" }, "?timeout=50")
      local took = H.now() - t0
      assert.are.equal(504, status)
      assert.are.same({ error = { kind = "timeout", message = "no reply within 50 ms" } }, doc)
      assert.is_true(took < 1.5 * H.slow, ("the 504 took %.2fs"):format(took))
    end)
  end)

  describe("the HTTP layer", function()
    it("answers 413 too_large for a body over --max-body and then closes the connection", function()
      local c = r:connect()
      local body = string.rep("a", 1024 * 1024 + 1)
      c:send(post("/entities/Counter/big/Increment", body)) -- may stop short: the server stops reading
      local status, headers, raw = H.read_response(c)
      assert.are.equal(413, status)
      assert.are.equal("close", headers["connection"])
      assert.are.same({ error = { kind = "too_large", message = "request body too large" } }, decode(raw))
      assert.is_true(closed_by_server(c))
      c:close()
    end)

    it("answers 413 for a chunked body that grows over --max-body", function()
      local c = r:connect()
      local chunk = string.rep("b", 65536)
      local parts = { "POST /entities/Counter/big/Increment HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" }
      for _ = 1, 20 do parts[#parts + 1] = ("%x\r\n%s\r\n"):format(#chunk, chunk) end
      parts[#parts + 1] = "0\r\n\r\n"
      c:send(table.concat(parts))
      local status, _, raw = H.read_response(c)
      c:close()
      assert.are.equal(413, status)
      assert.are.equal("too_large", decode(raw).error.kind)
    end)

    it("answers 414 for a URL over the limit", function()
      local long = "/entities/Counter/" .. string.rep("u", 9000) .. "/Increment"
      local status, doc, headers = r:request("POST", long, "{}")
      assert.are.equal(414, status)
      assert.are.equal("close", headers["connection"])
      assert.are.same({ error = { kind = "bad_request", message = "request URL too long" } }, doc)
    end)

    it("answers 431 for too many headers and for headers too large", function()
      local many = {}
      for i = 1, 150 do many["X-Many-" .. i] = "v" end
      local status, doc = r:request("POST", "/entities/Counter/h/Increment", '{"amount":1}', many)
      assert.are.equal(431, status)
      assert.are.same({ error = { kind = "bad_request", message = "request headers too large" } }, doc)
      status, doc = r:request("POST", "/entities/Counter/h/Increment", '{"amount":1}',
        { ["X-Huge"] = string.rep("h", 20000) })
      assert.are.equal(431, status)
      assert.are.equal("request headers too large", doc.error.message)
    end)

    it("answers 400 bad_request to bytes that are not HTTP and closes the connection", function()
      local c = r:connect()
      c:send("\022\003\001\000\165\001\000\000\161\003\003 not http at all\r\n\r\n")
      local status, headers, raw = H.read_response(c)
      assert.are.equal(400, status)
      assert.are.equal("close", headers["connection"])
      local doc = decode(raw)
      assert.are.equal("bad_request", doc.error.kind)
      assert.matches("^malformed HTTP request: ", doc.error.message)
      assert.is_true(closed_by_server(c))
      c:close()
    end)

    it("answers a request pipelined before garbage first, then 400, then closes", function()
      local c = r:connect()
      c:send(post("/entities/Sleeper/before-garbage/Sleep", '{"ms":200,"tag":"first"}') .. "\0\0 garbage \0\0\r\n\r\n")
      for _ = 1, 20 do c:send(string.rep("\0", 1000)) end -- more garbage while the first is pending
      local s1, _, raw1 = H.read_response(c)
      local s2, h2, raw2 = H.read_response(c)
      assert.are.same({ 200, { value = "first" } }, { s1, decode(raw1) })
      assert.are.equal(400, s2)
      assert.are.equal("close", h2["connection"])
      assert.are.equal("bad_request", decode(raw2).error.kind)
      local closed, rest = closed_by_server(c)
      c:close()
      assert.is_true(closed)
      assert.are.equal("", rest)
    end)

    it("keeps a connection alive across several requests", function()
      local c = r:connect()
      for i = 1, 5 do
        c:send(post("/entities/Counter/keep-1/Increment", '{"amount":1}'))
        local status, headers, raw = H.read_response(c)
        assert.are.equal(200, status)
        assert.is_nil(headers["connection"])
        assert.are.same({ value = i }, decode(raw))
      end
      c:send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.are.equal(200, (H.read_response(c)))
      c:close()
    end)

    it("answers pipelined requests in request order though their replies complete in reverse", function()
      local c = r:connect()
      local reqs = {}
      -- Ten instances (they run at once); the first sleeps longest.
      for i = 1, 10 do
        reqs[i] = post("/entities/Sleeper/pipe-" .. i .. "/Sleep", cjson.encode { ms = (11 - i) * 40, tag = "t" .. i })
      end
      local t0 = H.now()
      assert(c:send(table.concat(reqs)))
      for i = 1, 10 do
        local status, _, raw = H.read_response(c)
        assert.are.equal(200, status, "response " .. i)
        assert.are.same({ value = "t" .. i }, decode(raw), "response " .. i)
      end
      local took = H.now() - t0
      c:close()
      -- Run one after the other they would take 2.2 s; together, 0.4 s.
      assert.is_true(took >= 0.39, ("took %.2fs"):format(took))
      assert.is_true(took < 1.5 * H.slow, ("took %.2fs: the requests did not run concurrently"):format(took))
    end)

    it("sends 100 Continue for Expect: 100-continue before the client sends the body", function()
      local c = r:connect()
      c:send("POST /entities/Counter/expect-1/Increment HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        .. "Content-Length: 12\r\n\r\n")
      local status, _, raw = H.read_response(c)
      assert.are.equal(100, status)
      assert.are.equal("", raw)
      c:send('{"amount":7}')
      local status2, _, raw2 = H.read_response(c)
      c:close()
      assert.are.equal(200, status2)
      assert.are.same({ value = 7 }, decode(raw2))
    end)

    it("sends 100 Continue to a pipelined request only after answering the requests before it", function()
      local c = r:connect()
      c:send(post("/entities/Sleeper/expect-3/Sleep", '{"ms":300,"tag":"earlier"}')
        .. "POST /entities/Counter/expect-3/Increment HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        .. "Content-Length: 12\r\n\r\n")
      local s1, _, raw1 = H.read_response(c)
      assert.are.same({ 200, { value = "earlier" } }, { s1, raw1 ~= "" and decode(raw1) or raw1 })
      assert.are.equal(100, (H.read_response(c)))
      c:send('{"amount":3}')
      local s3, _, raw3 = H.read_response(c)
      c:close()
      assert.are.same({ 200, { value = 3 } }, { s3, decode(raw3) })
    end)

    it("answers 413 instead of 100 Continue when the announced body is too large", function()
      local c = r:connect()
      c:send("POST /entities/Counter/expect-2/Increment HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        .. "Content-Length: 10485760\r\n\r\n")
      local status = H.read_response(c)
      c:close()
      assert.are.equal(413, status)
    end)

    it("answers HEAD with headers only, so the next response on the connection is not garbled", function()
      local c = r:connect()
      c:send("HEAD /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      local _, all = closed_by_server(c)
      c:close()
      local first, rest = all:match("^(HTTP/1%.1 200 [^\r]*\r\n.-\r\n\r\n)(.*)$")
      assert.is_not_nil(first, all)
      assert.matches("Content%-Length: 20\r\n", first)
      assert.matches("^HTTP/1%.1 200 ", rest)
      assert.matches('{"status":"serving"}$', rest)
    end)

    it("keeps each connection's header values apart when they arrive in pieces", function()
      local a = r:connect()
      a:send("POST /entities/Echo/hdr-1/Headers HTTP/1.1\r\nHost: x\r\nX-Trace: first-half")
      -- Nothing shows that the first piece was parsed: give it a moment.
      H.sleep(0.05)
      local b = r:connect()
      b:send(post("/entities/Echo/hdr-2/Headers", "", "X-Other: other-conn\r\n"))
      local sb, _, rb = H.read_response(b)
      b:close()
      assert.are.equal(200, sb)
      assert.are.equal("other-conn", decode(rb).value["x-other"])
      a:send("-second-half\r\nContent-Length: 0\r\n\r\n")
      local sa, _, ra = H.read_response(a)
      a:close()
      assert.are.equal(200, sa)
      assert.are.equal("first-half-second-half", decode(ra).value["x-trace"])
    end)
  end)

  describe("/health, /cluster and /metrics", function()
    it("answers GET /health with 200 while serving", function()
      local status, doc = r:request("GET", "/health")
      assert.are.equal(200, status)
      assert.are.same({ status = "serving" }, doc)
    end)

    it("describes this runner, shard ownership, entity types and their active instances in /cluster", function()
      local before = r:cluster()
      local function counter(doc)
        for _, t in ipairs(doc.types) do if t.name == "Counter" then return t end end
      end
      assert.are.equal("local", before.runner.address)
      assert.are.equal("127.0.0.1:" .. r.port, before.runner.http)
      assert.are.equal("memory", before.runner.storage)
      assert.are.equal(1, #before.runners)
      assert.are.equal("local", before.runners[1].address)
      assert.is_true(before.runners[1].healthy)
      assert.are.equal(300, before.shards.count)
      assert.are.same({ { runner = "local", ranges = { { 1, 300 } } } }, before.shards.owners)
      local names = {}
      for _, t in ipairs(before.types) do names[#names + 1] = t.name end
      table.sort(names)
      assert.are.same({ "Account", "Big", "Counter", "Echo", "Narrow", "Sleeper" }, names)
      local c0 = counter(before)
      assert.are.equal("entity", c0.kind)
      assert.are.equal("counter.lua", c0.file)
      assert.matches("^%x+$", c0.version)
      assert.are.equal("table", type(before.errors))
      assert.are.equal(0, #before.errors)

      for i = 1, 3 do r:call("Counter", "cluster-" .. i, "Increment", { amount = 1 }) end
      local after = r:cluster()
      assert.are.equal(c0.active + 3, counter(after).active)
      assert.are.equal(before.runner.active + 3, after.runner.active)
    end)

    it("serves Prometheus text in /metrics, with active-instance gauges that go up", function()
      local status, _, headers, text = r:request("GET", "/metrics")
      assert.are.equal(200, status)
      assert.matches("^text/plain", headers["content-type"])
      assert.matches("# TYPE luster_active_instances gauge\n", text, 1, true)
      assert.matches("# TYPE luster_http_requests_total counter\n", text, 1, true)
      -- Every sample line is `name{labels} value` or `name value`.
      for line in text:gmatch("[^\n]+") do
        if line:sub(1, 1) ~= "#" then
          local value = line:match('^[%a_:][%w_:]*%b{} (%S+)$') or line:match("^[%a_:][%w_:]* (%S+)$")
          assert.is_number(tonumber(value), "not a sample line: " .. line)
        end
      end
      local active = r:metric('luster_active_instances{type="Counter"}')
      local ok = r:metric('luster_messages_total{type="Counter",outcome="ok"}') or 0
      assert.is_number(active)
      for i = 1, 4 do r:call("Counter", "metrics-" .. i, "Increment", { amount = 1 }) end
      assert.are.equal(active + 4, r:metric('luster_active_instances{type="Counter"}'))
      assert.are.equal(ok + 4, r:metric('luster_messages_total{type="Counter",outcome="ok"}'))
    end)

    -- The samples of one histogram family, as { [labels] = { buckets = {le -> n}, count = n } }.
    local function histograms(text, name)
      local out = {}
      for line in text:gmatch("[^\n]+") do
        local suffix, labels, value = line:match("^" .. name .. "_(%a+){(.-)} (%S+)$")
        if suffix then
          local le = labels:match(',?le="([^"]*)"')
          local key = labels:gsub(',?le="[^"]*"', "")
          out[key] = out[key] or { buckets = {}, order = {} }
          if suffix == "bucket" then
            out[key].buckets[le] = tonumber(value)
            out[key].order[#out[key].order + 1] = tonumber(value)
          elseif suffix == "count" then
            out[key].count = tonumber(value)
          end
        end
      end
      return out
    end

    it("times handlers per type and RPC and requests per status code, in histograms promtool accepts", function()
      local function counts(text)
        local rpc, http = histograms(text, "luster_rpc_duration_seconds"),
          histograms(text, "luster_http_request_duration_seconds")
        local function n(h, k) return h[k] and h[k].count or 0 end
        return {
          inc = n(rpc, 'type="Counter",rpc="Increment"'), hdr = n(rpc, 'type="Echo",rpc="Headers"'),
          c200 = n(http, 'code="200"'), c404 = n(http, 'code="404"'), c405 = n(http, 'code="405"'),
          c400 = n(http, 'code="400"'),
        }
      end
      local before = counts(r:metrics())
      for i = 1, 3 do assert.are.equal(200, (r:call("Counter", "histo-" .. i, "Increment", { amount = 1 }))) end
      for _ = 1, 2 do assert.are.equal(200, (r:call("Echo", "histo", "Headers"))) end
      for _ = 1, 2 do assert.are.equal(404, (r:call("Nope", "histo", "Increment", {}))) end
      assert.are.equal(405, (r:request("GET", "/entities/Counter/histo-1/Increment")))
      assert.are.equal(400, (r:call("Counter", "histo-1", "Increment", "{not json")))
      local text = r:metrics()
      local after = counts(text)
      -- The payload that is not JSON is refused by the handler task's schema
      -- check (400), so that run is timed too.
      assert.are.equal(before.inc + 3 + 1, after.inc)
      assert.are.equal(before.hdr + 2, after.hdr)
      -- The first GET /metrics was answered (200) before this one was written.
      assert.are.equal(before.c200 + 5 + 1, after.c200)
      assert.are.equal(before.c404 + 2, after.c404)
      assert.are.equal(before.c405 + 1, after.c405)
      assert.are.equal(before.c400 + 1, after.c400)
      -- Buckets are cumulative: never decreasing, and +Inf is the count.
      for _, family in ipairs({ "luster_rpc_duration_seconds", "luster_http_request_duration_seconds" }) do
        for labels, h in pairs(histograms(text, family)) do
          for i = 2, #h.order do assert.is_true(h.order[i] >= h.order[i - 1], family .. "{" .. labels .. "}") end
          assert.are.equal(h.count, h.buckets["+Inf"], family .. "{" .. labels .. "}")
        end
      end
      local file = H.tmpname()
      H.write_file(file, text)
      local p = io.popen("promtool check metrics < " .. H.sh_quote(file) .. " 2>&1; echo rc=$?")
      local out = p:read("a")
      p:close()
      os.remove(file)
      assert.matches("rc=0\n$", out, 1, false)
    end)
  end)

  describe("GET /entities/{type}/{id}", function()
    it("says where an id lives: inactive before a call, active after, without activating it", function()
      local status, doc = r:request("GET", "/entities/Counter/where-1")
      assert.are.equal(200, status)
      assert.are.same({ type = "Counter", id = "where-1", shard = doc.shard, runner = r:cluster().runner.address,
        active = false, mailbox = 0 }, doc)
      assert.is_true(doc.shard == math.floor(doc.shard) and doc.shard >= 1)
      -- Asking did not activate it.
      assert.is_false((select(2, r:request("GET", "/entities/Counter/where-1"))).active)
      assert.are.equal(200, (r:call("Counter", "where-1", "Increment", { amount = 1 })))
      local _, after = r:request("GET", "/entities/Counter/where-1")
      assert.is_true(after.active)
      assert.are.equal(doc.shard, after.shard)
    end)

    it("counts the messages queued for an id while its handler sleeps", function()
      local conns = {}
      for i = 1, 3 do
        local c = r:connect()
        -- Long enough that a loaded machine still sees it running (the
        -- answers below wait for it, so it costs its length once).
        c:send(post("/entities/Sleeper/where-q/Sleep", cjson.encode({ ms = i == 1 and 3000 or 0, tag = "t" .. i })))
        conns[i] = c
        -- The first one must start first: wait until it runs (or is queued) before sending the next.
        if i == 1 then
          H.wait_for("the first Sleep to run", 5, function()
            return r:metric('luster_running_messages{type="Sleeper"}') == 1
          end)
        end
      end
      local doc = H.wait_for("two messages queued behind the sleeping one", 5, function()
        local _, d = r:request("GET", "/entities/Sleeper/where-q")
        return d.mailbox == 2 and d
      end)
      assert.is_true(doc.active)
      for _, c in ipairs(conns) do
        assert.are.equal(200, (H.read_response(c)))
        c:close()
      end
      assert.are.equal(0, (select(2, r:request("GET", "/entities/Sleeper/where-q"))).mailbox)
    end)

    it("answers 404 naming an unknown type, 400 for an empty id, 405 for other methods", function()
      local status, doc = r:request("GET", "/entities/Nope/x")
      assert.are.equal(404, status)
      assert.are.same({ kind = "not_found", message = "unknown entity type 'Nope'" }, doc.error)
      status = r:request("GET", "/entities/Counter/")
      assert.are.equal(400, status)
      status = r:request("POST", "/entities/Counter/x", "{}")
      assert.are.equal(405, status)
    end)

    it("`luster where` prints it as lines, and exits 1 with the error for an unknown type", function()
      r:call("Counter", "where-cli", "Increment", { amount = 1 })
      local code, out, err = H.cli(("where --url %s Counter where-cli"):format(r.url))
      assert.are.equal(0, code, err)
      local shard = (select(2, r:request("GET", "/entities/Counter/where-cli"))).shard
      assert.are.equal(("type     Counter\nid       where-cli\nshard    %d\nrunner   %s\nactive   true\nmailbox  0\n")
        :format(shard, r:cluster().runner.address), out)
      code, out, err = H.cli(("where --url %s Nope x"):format(r.url))
      assert.are.equal(1, code)
      assert.are.equal("", out)
      assert.matches("not_found (HTTP 404): unknown entity type 'Nope'", err, 1, true)
    end)
  end)

  describe("the CLI", function()
    it("`luster call` prints the value and exits 0", function()
      local code, out, err = H.cli(("call --url %s Counter cli-1 Increment %s"):format(r.url,
        H.sh_quote('{"amount":5}')))
      assert.are.equal(0, code, err)
      assert.are.equal("5\n", out)
    end)

    it("`luster call` exits non-zero with the error kind, status and message", function()
      local code, out, err = H.cli(("call --url %s Nope cli-2 Increment %s"):format(r.url, H.sh_quote("{}")))
      assert.are_not.equal(0, code)
      assert.are.equal("", out)
      assert.matches("not_found (HTTP 404): unknown entity type 'Nope'", err, 1, true)

      code, _, err = H.cli(("call --url %s Counter cli-2 Increment %s"):format(r.url, H.sh_quote('{"amount":"x"}')))
      assert.are_not.equal(0, code)
      assert.matches("schema (HTTP 400): amount: expected number, got string", err, 1, true)

      code, _, err = H.cli(("call --url %s Account cli-2 Withdraw %s"):format(r.url, H.sh_quote('{"amount":50}')))
      assert.are_not.equal(0, code)
      assert.matches("failure:", err, 1, true)
      assert.matches('"insufficient_funds"', err, 1, true)
    end)

    it("`luster call` exits non-zero naming the URL when no runner listens there", function()
      local code, _, err = H.cli("call --url http://127.0.0.1:1 Counter x Increment '{}'")
      assert.are_not.equal(0, code)
      assert.matches("cannot connect to http://127.0.0.1:1", err, 1, true)
    end)

    it("`luster status` prints runners and types as a table naming Counter", function()
      r:call("Counter", "status-1", "Increment", { amount = 1 })
      local code, out, err = H.cli("status --url " .. r.url)
      assert.are.equal(0, code, err)
      assert.matches("RUNNER%s+HEALTHY%s+SHARDS", out)
      assert.matches("\nlocal%s+yes%s+300%s+1%-300", out)
      assert.matches("TYPE%s+KIND%s+FILE%s+VERSION%s+ACTIVE", out)
      assert.matches("\nCounter%s+entity%s+counter%.lua%s+%x+%s+%d+%s+Increment", out)
    end)
  end)
end)

describe("the HTTP gateway's connection timers", function()
  local r
  after_each(function() if r then r:stop() end r = nil end)

  it("closes an idle keep-alive connection after --idle-timeout, but not one waiting for its reply", function()
    r = H.start(FIXTURES, { args = "--idle-timeout 300ms" })
    local idle = r:connect()
    idle:send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.are.equal(200, (H.read_response(idle)))
    local t0 = H.now()
    assert.is_true(closed_by_server(idle, 5))
    local took = H.now() - t0
    idle:close()
    assert.is_true(took > 0.2 and took < 2 * H.slow, ("closed after %.2fs"):format(took))

    -- A reply that takes longer than the idle timeout still arrives.
    local busy = r:connect()
    busy:send(post("/entities/Sleeper/idle-1/Sleep", '{"ms":700,"tag":"done"}'))
    local status, _, raw = H.read_response(busy)
    busy:close()
    assert.are.equal(200, status)
    assert.are.same({ value = "done" }, decode(raw))
  end)

  it("closes a connection whose client stops reading its answers, releasing them", function()
    r = H.start(FIXTURES, { args = "--request-timeout 500ms" })
    local baseline = r:metric("luster_http_connections")
    local deaf = r:connect()
    -- 40 MB of answers requested, none read: more than the socket buffers hold.
    local req = post("/entities/Big/b/Blob", '{"kb":900}')
    deaf:send(string.rep(req, 45))
    H.wait_for("the runner to drop the deaf connection", 10, function()
      return r:metric("luster_http_connections") == baseline
    end)
    deaf:close()
    assert.are.equal(200, (r:call("Counter", "after-deaf", "Increment", { amount = 1 })))
  end)

  -- 50 clients each pipeline 600 calls for 8 KiB answers (5 MB each, more
  -- than the socket buffers of a client reading into 4 KiB hold) and end
  -- with half a request, then never read. The runner parses at most 128
  -- requests ahead and stops reading above 1 MiB unsent, so it holds at most
  -- about 2 MiB per client; after --request-timeout without progress it
  -- drops the unsent answers and resets the socket rather than waiting for a
  -- graceful shutdown that never completes.
  it("drops 50 pipelining clients that never read, with their unsent answers, and keeps its memory bounded", function()
    -- The sanitizer build keeps freed memory in a quarantine (256 MiB by
    -- default) that RSS would count: a small one keeps the bound meaningful.
    local asan = os.getenv("LUSTER_ASAN") and { ASAN_OPTIONS = (os.getenv("ASAN_OPTIONS") or "")
      .. ":quarantine_size_mb=8:thread_local_quarantine_size_kb=64" }
    r = H.start(FIXTURES, { args = "--request-timeout 500ms", env = asan })
    local baseline = r:metric("luster_http_connections")
    local rss0 = H.rss_kb(r.pid)
    local body = '{"kb":8}'
    local clients = {}
    for i = 1, 50 do
      local c = socket.tcp4()
      assert(c:setoption("recv-buffer-size", 4096))
      assert(c:connect("127.0.0.1", r.port))
      c:settimeout(0)
      local bytes = string.rep(post("/entities/Big/deaf-" .. i .. "/Blob", body), 600)
        .. "POST /entities/Big/deaf/Blob HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      clients[i] = { c = c, bytes = bytes, sent = 0 }
    end
    local peak = rss0
    H.wait_for("the runner to drop every client that does not read", 20, function()
      peak = math.max(peak, H.rss_kb(r.pid) or 0)
      for _, x in ipairs(clients) do
        if x.sent < #x.bytes then
          local n, _, partial = x.c:send(x.bytes, x.sent + 1)
          x.sent = n or partial or x.sent
        end
      end
      return r:metric("luster_http_connections") == baseline
    end, 0.05)
    for i, x in ipairs(clients) do
      x.c:settimeout(5 * H.slow)
      local _, err = x.c:receive("*a")
      x.c:close()
      assert.is_true(err == "closed" or err == "connection reset by peer",
        ("client %d: the runner did not close its socket (%s)"):format(i, tostring(err)))
    end
    -- 50 x (1 MiB unsent + 128 answers of 8 KiB) is about 100 MiB, plus the
    -- Lua garbage of the 8 KiB strings until it is collected (measured: 120
    -- to 180 MiB in all); without the limits the runner held over 340 MiB.
    -- The sanitizer build's redzones and shadow memory add about half.
    local bound = (os.getenv("LUSTER_ASAN") and 400 or 256) * 1024
    assert.is_true(peak - rss0 < bound, ("RSS grew by %d KiB (bound %d KiB)"):format(peak - rss0, bound))
    assert.are.equal(200, (r:call("Counter", "after-deaf-50", "Increment", { amount = 1 })))
  end)
end)

describe("the HTTP gateway at shutdown", function()
  local r
  after_each(function() if r then r:stop() end r = nil end)

  -- A message still queued, and one still running, when the shutdown timeout
  -- passes: the client learns it may retry (503 unavailable), not a bare close.
  local function start_and_stop()
    r = H.start(FIXTURES, { args = "--shutdown-timeout 300ms" })
    local running = r:connect()
    running:send(post("/entities/Sleeper/down-1/Sleep", '{"ms":3000,"tag":"a"}'))
    H.wait_for("the first Sleep to run", 5, function()
      return r:metric('luster_running_messages{type="Sleeper"}') == 1
    end)
    local queued = r:connect()
    queued:send(post("/entities/Sleeper/down-1/Sleep", '{"ms":0,"tag":"b"}'))
    H.wait_for("the second Sleep to be queued", 5, function()
      return r:metric('luster_queued_messages{type="Sleeper"}') == 1
    end)
    r:kill("TERM")
    return running, queued
  end

  it("answers a call still queued when the shutdown timeout passes with 503 unavailable and Retry-After", function()
    local running, queued = start_and_stop()
    local status, headers, raw = H.read_response(queued)
    queued:close()
    running:close()
    assert.are.equal(503, status)
    assert.are.equal("1", headers["retry-after"])
    assert.are.same({ error = { kind = "unavailable", message = "the message was dropped before it ran" } },
      decode(raw))
  end)

  it("answers a call still running when the shutdown timeout passes with 503 unavailable, not a bare close", function()
    local running, queued = start_and_stop()
    local status, headers, raw = H.read_response(running)
    queued:close()
    running:close()
    assert.are.equal(503, status, "no HTTP response: " .. tostring(headers))
    assert.are.equal("1", headers["retry-after"])
    assert.are.equal("unavailable", decode(raw).error.kind)
  end)
end)

describe("/metrics with an odd script file name", function()
  local r, dir
  after_each(function()
    if r then r:stop() end
    H.rmdir(dir)
  end)

  it("escapes label values so one file name cannot break the exposition", function()
    dir = H.script_dir { ['we"ird\\name.lua'] = H.read_file(H.counter_dir .. "/counter.lua") }
    r = H.start(dir)
    local text = r:metrics()
    assert.matches('\nluster_script_memory_bytes{file="we\\"ird\\\\name.lua"} %d+\n', text)
  end)
end)
