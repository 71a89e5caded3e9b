-- spec/support/pg.lua: a throwaway PostgreSQL 15 server for specs, on a free
-- loopback port, in its own directory under /tmp, stopped and removed by the
-- spec that started it.
--
--   package.path = "spec/?.lua;" .. package.path
--   local PG = require "support.pg"
--   local pg = PG.start()              -- opts.settings = { work_mem = "8MB" }
--   PG.start { netns = "ns", host = "10.0.0.1" }  -- inside a network namespace
--   pg.url                             -- postgres://postgres@127.0.0.1:PORT/postgres
--   local url = pg:create_db("t1")     -- a fresh database, its URL
--   pg:psql("select 1", "t1")          -- "1\n" (psql -At), errors carry psql's stderr
--   pg:restart() pg:kill() pg:stop() pg:freeze() pg:thaw()
--   pg:destroy()                       -- always, in teardown
--
-- PostgreSQL refuses to run as root. When the specs run as root (CI), the
-- directory belongs to the `postgres` OS user and the server runs as that
-- user through runuser; otherwise it runs as the current user. Either way
-- the database superuser is "postgres" and every connection is trusted.
local socket = require "socket"

local H = (function()
  for _, name in ipairs { "support.helpers", "spec.support.helpers" } do
    local ok, m = pcall(require, name)
    if ok then return m end
  end
  error("spec/support/pg.lua needs spec/support/helpers.lua on package.path")
end)()

local sh_quote = H.sh_quote
local M = {}

-- Seconds; scaled by H.slow under sanitizer builds, like every spec deadline.
local START_TIMEOUT = 30
local STOP_TIMEOUT = 15

local function capture(cmd)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return out
end

-- Runs a shell command; returns ok, stdout, stderr.
local function run(cmd)
  local out, err = H.tmpname(), H.tmpname()
  local ok = os.execute(string.format("%s >%s 2>%s", cmd, out, err))
  local o, e = H.read_file(out) or "", H.read_file(err) or ""
  os.remove(out)
  os.remove(err)
  return ok == true, o, e
end

local function bindir()
  local d = "/usr/lib/postgresql/15/bin"
  if H.read_file(d .. "/postgres") == nil then
    d = (capture("pg_config --bindir 2>/dev/null"):gsub("%s+$", ""))
  end
  if d == "" or not os.execute("test -x " .. sh_quote(d .. "/postgres")) then
    error("no PostgreSQL server binaries in /usr/lib/postgresql/15/bin or `pg_config --bindir` (make deps installs postgresql)")
  end
  return d
end

local as_root = capture("id -u"):match("^0%s") ~= nil

-- A shell command line that runs `script` (sh) as the server's OS user.
local function as_pg(script)
  if as_root then return "runuser -u postgres -- sh -c " .. sh_quote(script) end
  return "sh -c " .. sh_quote(script)
end

local free_port = H.free_port

local function port_free(port)
  local s = socket.bind("127.0.0.1", port)
  if not s then return false end
  s:close()
  return true
end

local Server = {}

-- pg:url(db) is a method; pg.url alone stands for the default database's URL
-- wherever a string is turned into text (.., tostring, string.format "%s",
-- H.sh_quote). Where a real string is needed (type(), :match), use pg:url().
local Url = {
  __call = function(u, _, db) return Server.url(u.server, db) end,
  __tostring = function(u) return Server.url(u.server) end,
  __concat = function(a, b) return tostring(a) .. tostring(b) end,
  __eq = function(a, b) return tostring(a) == tostring(b) end,
}
Server.__index = function(t, k)
  if k == "url" then return setmetatable({ server = t }, Url) end
  return Server[k]
end

function Server:log_tail(lines)
  local text = H.read_file(self.dir .. "/log") or ""
  local all = {}
  for l in text:gmatch("[^\n]*") do all[#all + 1] = l end
  local from = math.max(1, #all - (lines or 30))
  return table.concat(all, "\n", from)
end

function Server:fail(msg)
  error(string.format("PostgreSQL in %s: %s\n--- %s/log (tail) ---\n%s", self.dir, msg, self.dir, self:log_tail()), 0)
end

function Server:url(db)
  return string.format("postgres://postgres@%s:%d/%s", self.host, self.port, db or "postgres")
end

-- Starts the postmaster on self.port and waits until it accepts connections.
function Server:launch()
  local args = { sh_quote(self.bin .. "/postgres"), "-D", sh_quote(self.dir .. "/data"), "-h", self.host,
    "-p", tostring(self.port), "-k", sh_quote(self.dir) }
  for k, v in pairs(self.settings) do
    args[#args + 1] = "-c"
    args[#args + 1] = sh_quote(k .. "=" .. tostring(v))
  end
  -- A shell stays behind as the postmaster's parent to reap it: a zombie
  -- postmaster (where nothing else reaps, as in containers) would still look
  -- alive to the next start's lock file check.
  local pidfile = self.dir .. "/launch.pid"
  os.remove(pidfile)
  local lock = H.read_file(self.dir .. "/data/postmaster.pid")
  local stale = lock and tonumber(lock:match("^(%d+)"))
  if stale and not H.alive(stale) then os.remove(self.dir .. "/data/postmaster.pid") end
  local script = string.format("cd %s && { %s >>%s 2>&1 </dev/null & echo $! >%s; wait; }", sh_quote(self.dir),
    table.concat(args, " "), sh_quote(self.dir .. "/log"), sh_quote(pidfile))
  os.execute(self.prefix .. as_pg(script) .. " >/dev/null 2>&1 </dev/null &")
  local pid
  local ok = pcall(H.wait_for, "the postmaster's pid", 10, function()
    pid = tonumber((H.read_file(pidfile) or ""):match("^(%d+)\n"))
    return pid
  end)
  if not ok then self:fail("could not start postgres (no pid in " .. pidfile .. ")") end
  self.pid = pid
  local deadline = socket.gettime() + START_TIMEOUT * H.slow
  while true do
    if not H.alive(pid) then
      self.pid = nil
      self:fail("postgres exited during startup")
    end
    if os.execute(string.format("%s%s -q -h %s -p %d -U postgres -d postgres -t 1 >/dev/null 2>&1", self.prefix,
        sh_quote(self.bin .. "/pg_isready"), self.host, self.port)) then
      return
    end
    if socket.gettime() > deadline then
      self:stop()
      self:fail(string.format("not accepting connections on port %d after %ds", self.port, START_TIMEOUT * H.slow))
    end
    socket.sleep(0.05)
  end
end

-- opts.settings: extra server settings ({ name = value }, passed as -c).
-- opts.netns, opts.host: run the server (and psql) in that network namespace,
-- listening on host (an address of the namespace) at port 5432.
function M.start(opts)
  opts = opts or {}
  local dir = capture("mktemp -d /tmp/luster-pg.XXXXXX"):gsub("%s+$", "")
  assert(dir:match("^/tmp/luster%-pg%.[%w]+$"), "mktemp failed: " .. dir)
  local self = setmetatable({ dir = dir, bin = bindir(), host = opts.host or "127.0.0.1",
    netns = opts.netns, prefix = opts.netns and ("ip netns exec " .. sh_quote(opts.netns) .. " ") or "" }, Server)
  self.settings = { fsync = "off", synchronous_commit = "off", full_page_writes = "off", max_connections = 200 }
  for k, v in pairs(opts.settings or {}) do self.settings[k] = v end
  if as_root then
    local ok, _, err = run("chown postgres: " .. sh_quote(dir))
    if not ok then self:destroy() error("chown postgres " .. dir .. ": " .. err, 2) end
  end
  local ok, out, err = run(as_pg(string.format("cd %s && %s -U postgres -A trust --no-sync -E UTF8 --locale=C -D %s",
    sh_quote(dir), sh_quote(self.bin .. "/initdb"), sh_quote(dir .. "/data"))))
  if not ok then
    self:destroy()
    error("initdb failed in " .. dir .. ":\n" .. out .. err, 2)
  end
  -- initdb trusts loopback only; in a namespace of its own, the server
  -- trusts the namespaces' addresses too (nothing else can reach it).
  if self.netns then
    local hba = sh_quote(dir .. "/data/pg_hba.conf")
    local okh, _, errh = run(as_pg("echo 'host all all 0.0.0.0/0 trust' >> " .. hba))
    if not okh then self:destroy() error("pg_hba.conf in " .. dir .. ": " .. errh, 2) end
  end
  -- The free port may be taken again before postgres binds it: try another.
  for attempt = 1, 3 do
    self.port = self.netns and 5432 or free_port()
    local started, e = pcall(self.launch, self)
    if started then break end
    local lost_race = (H.read_file(dir .. "/log") or ""):match("could not bind") ~= nil
    if attempt == 3 or not lost_race then
      self:destroy()
      error(e, 2)
    end
  end
  return self
end

-- Runs SQL with psql -At in database db (default "postgres"); returns its
-- stdout, or errors with psql's stderr.
function Server:psql(sql, db)
  local ok, out, err = run(string.format("%s%s -X -At -v ON_ERROR_STOP=1 -h %s -p %d -U postgres -d %s -c %s",
    self.prefix, sh_quote(self.bin .. "/psql"), self.host, self.port, sh_quote(db or "postgres"), sh_quote(sql)))
  if not ok then error(string.format("psql on port %d (%s): %s", self.port, sql, err), 2) end
  return out
end

function Server:create_db(name)
  assert(name:match("^[%w_]+$"), "database name: letters, digits and _ only, not " .. name)
  self:psql('CREATE DATABASE "' .. name .. '"')
  return self:url(name)
end

local function wait_dead(pids, timeout)
  local deadline = socket.gettime() + timeout * H.slow
  while true do
    local any = false
    for _, p in ipairs(pids) do if H.alive(p) then any = true end end
    if not any then return true end
    if socket.gettime() > deadline then return false end
    socket.sleep(0.02)
  end
end

local function children(pid)
  local list = {}
  for p in capture("pgrep -P " .. pid .. " 2>/dev/null"):gmatch("%d+") do list[#list + 1] = tonumber(p) end
  return list
end

-- Fast shutdown (SIGINT) of this server's postmaster, SIGKILL after the
-- deadline. Does nothing when it is not running.
function Server:stop()
  local pid = self.pid
  self.pid = nil
  if not pid or not H.alive(pid) then return end
  local kids = children(pid)
  os.execute("kill -INT " .. pid .. " 2>/dev/null")
  if not wait_dead({ pid }, STOP_TIMEOUT) then
    os.execute("kill -KILL " .. pid .. " 2>/dev/null")
    wait_dead({ pid }, STOP_TIMEOUT)
  end
  wait_dead(kids, STOP_TIMEOUT)
end

-- SIGKILL the postmaster, as a crash would; its backends notice and exit.
-- Returns once they are gone and the port is free.
function Server:kill()
  local pid = self.pid
  self.pid = nil
  if not pid or not H.alive(pid) then return end
  local kids = children(pid)
  os.execute("kill -KILL " .. pid .. " 2>/dev/null")
  if not wait_dead({ pid }, STOP_TIMEOUT) then self:fail("postmaster " .. pid .. " survived SIGKILL") end
  if not wait_dead(kids, STOP_TIMEOUT) then self:fail("backends of the killed postmaster did not exit") end
  if self.netns then return end
  H.wait_for("port " .. self.port .. " to be free", STOP_TIMEOUT, function() return port_free(self.port) end)
end

-- SIGSTOP the postmaster and every backend, as a hung host would: sockets
-- stay open, nothing answers. thaw() sends SIGCONT to the same processes.
function Server:freeze()
  assert(self.pid and H.alive(self.pid), "freeze: PostgreSQL is not running")
  self.frozen = { self.pid }
  for _, k in ipairs(children(self.pid)) do self.frozen[#self.frozen + 1] = k end
  os.execute("kill -STOP " .. table.concat(self.frozen, " ") .. " 2>/dev/null")
end

function Server:thaw()
  if self.frozen then os.execute("kill -CONT " .. table.concat(self.frozen, " ") .. " 2>/dev/null") end
  self.frozen = nil
end

-- Stops (if running) and starts again on the same port and data directory.
function Server:restart()
  self:stop()
  self:launch()
end

function Server:destroy()
  self:thaw()
  self:stop()
  if self.dir and self.dir:match("^/tmp/luster%-pg%.[%w]+$") then
    os.execute("rm -rf " .. sh_quote(self.dir))
  end
end

return M
