-- spec/support/helpers.lua: start real luster runners on loopback, talk to
-- them over HTTP and raw sockets, wait for conditions, stop what we started.
local socket = require "socket"
local cjson = require "cjson"

local M = {}

M.root = (function()
  local p = io.popen("pwd")
  local d = p:read("*l")
  p:close()
  return d
end)()
M.bin = os.getenv("LUSTER_BIN") or (M.root .. "/build/luster")
-- Sanitizer builds run several times slower: deadlines scale with them.
M.slow = os.getenv("LUSTER_ASAN") and 4 or 1

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.sh_quote = sh_quote

function M.sleep(s) socket.sleep(s) end
function M.now() return socket.gettime() end

-- Polls fn until it returns a truthy value; fails the spec after `timeout`
-- seconds naming `what`.
function M.wait_for(what, timeout, fn, interval)
  local deadline = socket.gettime() + timeout * M.slow
  local last_err
  while true do
    local ok, v = pcall(fn)
    if ok and v then return v end
    if not ok then last_err = v end
    if socket.gettime() > deadline then
      error(string.format("timed out after %.1fs waiting for %s%s", timeout * M.slow, what,
        last_err and (" (last error: " .. tostring(last_err) .. ")") or ""), 2)
    end
    socket.sleep(interval or 0.02)
  end
end

function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

function M.write_file(path, content)
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
end

-- tools/run-specs.sh gives the suite a directory of its own for temporary
-- files (LUSTER_SPEC_TMP) and fails naming whatever is left in it at the end,
-- so a spec that forgets to clean up is caught even while other suites run.
M.tmp_base = os.getenv("LUSTER_SPEC_TMP")
local tmp_count = 0

-- A new empty file for a spec's temporary output ("what" names it in the
-- leftover report); the spec removes it.
function M.tmpname(what)
  if not M.tmp_base then return os.tmpname() end
  tmp_count = tmp_count + 1
  local path = string.format("%s/%s-%d", M.tmp_base, what or "file", tmp_count)
  assert(io.open(path, "wb")):close()
  return path
end

function M.tmpdir()
  local p = io.popen("mktemp -d " .. sh_quote((M.tmp_base or "/tmp") .. "/luster-spec.XXXXXX"))
  local d = p:read("*l")
  p:close()
  return d
end

function M.rmdir(d)
  if not d then return end
  local base = (d:match("^(.*)/luster%-spec%.[%w]+$"))
  if base == "/tmp" or (base and base == M.tmp_base) then os.execute("rm -rf " .. sh_quote(d)) end
end

-- Makes a script directory from {["name.lua"] = source, ["lib/x.lua"] = ...}.
function M.script_dir(files)
  local d = M.tmpdir()
  for name, src in pairs(files) do
    local dir = (d .. "/" .. name):match("^(.*)/[^/]*$")
    os.execute("mkdir -p " .. sh_quote(dir))
    M.write_file(d .. "/" .. name, src)
  end
  return d
end

-- A loopback TCP port that was free a moment ago. It is picked below the
-- kernel's ephemeral range, which outgoing connections (HTTP clients,
-- runners dialling each other, PostgreSQL clients) draw their local ports
-- from: a port from that range could be taken by one of them before the
-- runner it was picked for binds it.
local ephemeral_low = 32768
do
  local f = io.open("/proc/sys/net/ipv4/ip_local_port_range")
  if f then
    ephemeral_low = tonumber(f:read("*n")) or ephemeral_low
    f:close()
  end
end
local port_rng = math.random
function M.free_port()
  local lo, hi = 10000, math.max(10100, ephemeral_low - 1)
  for _ = 1, 200 do
    local port = port_rng(lo, hi)
    local s = socket.tcp()
    s:setoption("reuseaddr", false)
    local ok = s:bind("127.0.0.1", port)
    s:close()
    if ok then return port end
  end
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- Runners of one cluster on the database at url. Returns start(extra), which
-- starts one more (extra.dir, .args, .shards, .lease, .env, .wait override
-- the defaults given here; without shards or lease the runner's own
-- defaults hold), stop_all(), which stops every runner start started
-- (waking frozen ones first), and the list of them.
function M.cluster_runners(url, defaults)
  local started = {}
  local function start(extra)
    extra = extra or {}
    local port = M.free_port()
    local shards, lease = extra.shards or defaults.shards, extra.lease or defaults.lease
    local args = string.format("--storage %s --listen 127.0.0.1:%d%s%s %s %s", url, port,
      shards and " --shards " .. shards or "", lease and " --lease " .. lease or "", defaults.args or "",
      extra.args or "")
    local r = M.start(extra.dir or defaults.dir, { args = args, env = extra.env or defaults.env, wait = extra.wait })
    r.address = "127.0.0.1:" .. port
    started[#started + 1] = r
    return r
  end
  local function stop_all()
    for _, r in ipairs(started) do
      if r.pid and M.alive(r.pid) then r:kill("CONT") end
      r:stop(5) -- also a runner a spec killed: its log goes
    end
  end
  return start, stop_all, started
end

-- Waits until runner r sees n live runners, each holding exactly the shards
-- assigned to it and all of them together every shard; returns r's /cluster.
function M.wait_cluster(r, n, timeout)
  return M.wait_for(n .. " runners holding every shard", timeout or 20, function()
    local doc = r:cluster()
    if #doc.runners ~= n then return false end
    local held = 0
    for _, m in ipairs(doc.runners) do
      if m.shards ~= m.shards_assigned then return false end
      held = held + m.shards
    end
    return held == doc.shards.count and doc
  end, 0.05)
end

-- Starts the load generator (spec/support/load.lua) on the gateways at urls,
-- under opts.wrap if given (a command prefix, e.g. "ip netns exec NS");
-- returns a handle with :count() and :finish() -> records, once some calls
-- are done.
function M.load(urls, conc, nids, opts)
  opts = opts or {}
  local dir = M.tmpdir()
  local out, stop = dir .. "/out", dir .. "/stop"
  local cmd = string.format("%s lua5.4 %s %s %s %d %d %s >%s 2>&1 & echo $!", opts.wrap or "",
    sh_quote(M.root .. "/spec/support/load.lua"), sh_quote(out), sh_quote(stop), conc, nids, table.concat(urls, " "),
    sh_quote(dir .. "/log"))
  local p = io.popen(cmd)
  local pid = tonumber(p:read("*l"))
  p:close()
  local L = { pid = pid, out = out, dir = dir }
  function L.count()
    local n = 0
    for _ in (M.read_file(out) or ""):gmatch("[^\n]+") do n = n + 1 end
    return n
  end
  function L.finish()
    M.write_file(stop, "")
    M.wait_for("the load generator to stop", 20, function() return not M.alive(pid) end)
    local recs = {}
    for line in (M.read_file(out) or ""):gmatch("[^\n]+") do
      local sent, recv, status, id, runner, instance, at = line:match("^(%d+) (%d+) (%d+) (%S+) (%S+) (%S+) (%d+)$")
      assert(sent, "bad load line: " .. line)
      recs[#recs + 1] = { sent = tonumber(sent), recv = tonumber(recv), status = tonumber(status), id = id,
                          runner = runner, instance = instance, at = tonumber(at) }
    end
    M.rmdir(dir)
    return recs
  end
  -- Some calls done before the spec acts.
  M.wait_for("load to start (log: " .. dir .. "/log)", 10, function() return L.count() > 50 end)
  return L
end

function M.alive(pid)
  local stat = M.read_file("/proc/" .. pid .. "/stat")
  if not stat then return false end
  local state = stat:match("^%d+ %b() (%a)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end

-- The resident memory of process pid in KiB (VmRSS), or nil once it is gone.
function M.rss_kb(pid)
  local status = M.read_file("/proc/" .. pid .. "/status") or ""
  return tonumber(status:match("VmRSS:%s*(%d+)"))
end

local Runner = {}
Runner.__index = Runner

-- Starts `luster run dir` on a free loopback port; returns a runner once its
-- gateway listens. opts.args: extra flags (string); opts.env: {NAME=value};
-- opts.wrap: a command the runner runs under (e.g. "ip netns exec NS"), with
-- opts.http an address there (r.url is then nil: reach it from inside).
function M.start(dir, opts)
  opts = opts or {}
  local log = M.tmpname("runner-log")
  local env = {}
  for k, v in pairs(opts.env or {}) do env[#env + 1] = k .. "=" .. sh_quote(v) end
  local http = opts.http or "127.0.0.1:0"
  local cmd = string.format("%s exec %s%s run %s --http %s %s >%s 2>&1 & echo $!", table.concat(env, " "),
    opts.wrap and (opts.wrap .. " ") or "", sh_quote(M.bin), sh_quote(dir), http, opts.args or "", sh_quote(log))
  local p = io.popen("sh -c " .. sh_quote(cmd))
  local pid = tonumber(p:read("*l"))
  p:close()
  local r = setmetatable({ pid = pid, log = log, dir = dir }, Runner)
  if opts.wait == false then return r end
  local ok, err = pcall(M.wait_for, "the runner to listen (log: " .. log .. ")", 10, function()
    if not M.alive(pid) then error("runner exited: " .. (M.read_file(log) or "")) end
    local text = M.read_file(log) or ""
    local host, port = text:match("http gateway listening on http://([%d%.]+):(%d+)")
    if port and (opts.wrap or host == "127.0.0.1") then r.port = tonumber(port) return true end
  end)
  if not ok then
    local text = r:log_text()
    r:stop()
    error(err .. "\n" .. text, 2)
  end
  if not opts.wrap then r.url = "http://127.0.0.1:" .. r.port end
  return r
end

-- The runner's output; after stop, what it was when the runner exited (the
-- file itself is removed then).
function Runner:log_text() return self.final_log or M.read_file(self.log) or "" end

-- Once the runner has exited: keeps its output and removes the log file.
function Runner:remove_log()
  if self.final_log then return end
  self.final_log = M.read_file(self.log) or ""
  os.remove(self.log)
end

-- Stops the runner (SIGTERM, then SIGKILL after `grace` seconds); returns
-- true when it exited on SIGTERM.
-- Under the sanitizer build, a runner whose log shows a sanitizer report
-- fails the spec that stopped it.
function Runner:check_sanitizers()
  if not os.getenv("LUSTER_ASAN") then return end
  local text = self:log_text()
  local report = text:match("(==%d+==ERROR: %a+Sanitizer.-)\n\n") or text:match("([^\n]*runtime error:[^\n]*)")
    or text:match("(==%d+==ERROR: %a+Sanitizer[^\n]*)")
  if report then error("sanitizer report in " .. self.log .. ":\n" .. report, 0) end
end

function Runner:stop(grace)
  if not self.pid or not M.alive(self.pid) then
    self:remove_log()
    self:check_sanitizers()
    return true
  end
  os.execute("kill -TERM " .. self.pid .. " 2>/dev/null")
  local deadline = socket.gettime() + (grace or 10) * M.slow
  while M.alive(self.pid) and socket.gettime() < deadline do socket.sleep(0.02) end
  if M.alive(self.pid) then
    os.execute("kill -KILL " .. self.pid .. " 2>/dev/null")
    while M.alive(self.pid) do socket.sleep(0.02) end
    self:remove_log()
    return false
  end
  -- LeakSanitizer reports after the last log line; give it the exit.
  self:remove_log()
  self:check_sanitizers()
  return true
end

function Runner:kill(sig)
  os.execute("kill -" .. (sig or "KILL") .. " " .. self.pid .. " 2>/dev/null")
end

function Runner:connect()
  local c = assert(socket.tcp())
  c:settimeout(10 * M.slow)
  assert(c:connect("127.0.0.1", self.port))
  return c
end

-- Reads one HTTP response from a socket: status, headers (lower-cased), body.
function M.read_response(c)
  local line, err = c:receive("*l")
  if not line then return nil, err end
  local status = tonumber(line:match("^HTTP/1%.%d (%d%d%d)"))
  if not status then return nil, "not an HTTP status line: " .. line end
  local headers = {}
  while true do
    local h = assert(c:receive("*l"))
    if h == "" then break end
    local k, v = h:match("^([^:]+):%s*(.*)$")
    headers[k:lower()] = v
  end
  local len = tonumber(headers["content-length"] or "0")
  local body = len > 0 and assert(c:receive(len)) or ""
  return status, headers, body
end

-- One HTTP request on a fresh connection. Returns status, decoded JSON body
-- (or raw text), headers, raw body.
function Runner:request(method, path, body, headers)
  local c = self:connect()
  local lines = { string.format("%s %s HTTP/1.1", method, path), "Host: 127.0.0.1", "Connection: close" }
  for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  body = body or ""
  lines[#lines + 1] = "Content-Length: " .. #body
  assert(c:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. body))
  local status, h, raw = M.read_response(c)
  c:close()
  if not status then error("no HTTP response: " .. tostring(h)) end
  local ok, doc = pcall(cjson.decode, raw)
  return status, ok and doc or raw, h, raw
end

-- POST /entities/type/id/rpc with a Lua payload (encoded) or a raw string.
function Runner:call(type_name, id, rpc, payload, query)
  local body = type(payload) == "string" and payload or cjson.encode(payload == nil and cjson.null or payload)
  return self:request("POST", "/entities/" .. type_name .. "/" .. id .. "/" .. rpc .. (query or ""), body)
end

function Runner:cluster()
  local status, doc = self:request("GET", "/cluster")
  assert(status == 200, "GET /cluster answered " .. tostring(status))
  return doc
end

function Runner:metrics()
  local status, _, _, raw = self:request("GET", "/metrics")
  assert(status == 200)
  return raw
end

-- The value of one Prometheus sample, e.g. metric(r, 'luster_active_instances{type="Counter"}').
function Runner:metric(sample)
  local text = self:metrics()
  for line in text:gmatch("[^\n]+") do
    local name, value = line:match("^(%S+) (%S+)$")
    if name == sample then return tonumber(value) end
  end
  return nil
end

-- Runs the CLI; returns exit code, stdout, stderr.
function M.cli(args)
  local out, err = M.tmpname(), M.tmpname()
  local ok, how, code = os.execute(string.format("%s %s >%s 2>%s", sh_quote(M.bin), args, out, err))
  local o, e = M.read_file(out), M.read_file(err)
  os.remove(out)
  os.remove(err)
  if how == "signal" then code = 128 + code end
  return code, o, e
end

M.counter_dir = M.root .. "/examples/counter"

-- Output of a `luster test` run quoted in a failure message, each line
-- indented: tools/run-specs.sh reads the suite's counts from the last line
-- that starts with them, which must not be one of the quoted run's.
function M.shown(text) return "\n  | " .. tostring(text):gsub("\n", "\n  | ") end

-- busted's summary line in out, colours stripped: successes, failures, errors.
function M.busted_summary(out)
  out = out:gsub("\27%[[%d;]*m", "")
  local s, f, e = out:match("(%d+) successes? / (%d+) failures? / (%d+) errors?")
  return tonumber(s), tonumber(f), tonumber(e)
end

return M
