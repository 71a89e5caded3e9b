-- spec/support/netns.lua: a throwaway network of Linux network namespaces for
-- partition specs: every party (runner, PostgreSQL, caller) in a namespace of
-- its own, linked by veth pairs to two bridges that live in a "switch"
-- namespace of their own, so nothing is added to the root namespace.
--
--   local Net = require "support.netns"
--   local ok, why = Net.available()          -- false where namespaces cannot be made
--   local net = Net.new()
--   net:add("r1", 1)                         -- namespace with peers0 = 10.231.1.1/24
--                                            -- and store0 = 10.231.2.1/24
--   net:cut("r1", "peers") net:heal("r1")   -- link down / up ("peers", "store", or both)
--   net.wrap("r1")                           -- "ip netns exec <ns>", to run a command there
--   net:http("cli", "GET", url)              -- curl from inside a namespace: status, doc
--   net:destroy()                            -- always: deletes every namespace
--
-- Two bridges, so a link can be cut selectively: "peers" carries the runner
-- transport, the gateways and the callers; "store" carries PostgreSQL. A cut
-- sets the switch's end of the party's veth down: the party's packets are
-- dropped, its TCP connections hang (no reset), as on a real partition.
local H = require "support.helpers"
local cjson = require "cjson"

local M = {}
M.__index = M

local NETS = { peers = "10.231.1.", store = "10.231.2." }

-- Runs a command; returns ok and its output (stdout and stderr).
local function sh(cmd)
  local out = os.tmpname()
  local ok = os.execute(cmd .. " >" .. out .. " 2>&1")
  local text = H.read_file(out) or ""
  os.remove(out)
  return ok == true, text
end

local function must(cmd)
  local ok, text = sh(cmd)
  if not ok then error("netns: `" .. cmd .. "` failed: " .. text, 2) end
end

-- Whether namespaces, veth pairs and bridges can be created here (root, and
-- a kernel that allows them); false and the reason otherwise.
function M.available()
  local probe = string.format("luster-probe-%d", math.random(1e6))
  local ok, text = sh("ip netns add " .. probe)
  if not ok then return false, "cannot create a network namespace (`ip netns add`): " .. text:gsub("%s+$", "") end
  local ok2, text2 = sh("ip -n " .. probe .. " link add lbr type bridge")
  sh("ip netns del " .. probe)
  if not ok2 then return false, "cannot create a bridge in a namespace: " .. text2:gsub("%s+$", "") end
  return true
end

-- Six hex digits from the kernel's random source: a spec that seeds
-- math.random (to replay a flapping pattern) must not make the next run's
-- namespaces collide with ones another run still holds.
local function fresh_tag()
  local f = assert(io.open("/dev/urandom", "rb"))
  local b = f:read(3)
  f:close()
  return string.format("%02x%02x%02x", b:byte(1, 3))
end

function M.new()
  local tag = fresh_tag()
  local net = setmetatable({ tag = tag, sw = "luster-" .. tag .. "-sw", parties = {} }, M)
  net.namespaces = { net.sw }
  must("ip netns add " .. net.sw)
  must("ip -n " .. net.sw .. " link set lo up")
  for name in pairs(NETS) do
    must(string.format("ip -n %s link add %s type bridge", net.sw, name))
    must(string.format("ip -n %s link set %s up", net.sw, name))
  end
  return net
end

function M:ns(name) return "luster-" .. self.tag .. "-" .. name end

-- The command prefix that runs a command inside party `name`'s namespace.
function M:wrap(name) return "ip netns exec " .. self:ns(name) end

-- The party's address on a bridge ("peers" or "store").
function M:addr(name, bridge) return NETS[bridge or "peers"] .. self.parties[name] end

-- A namespace for party `name`, host number n (1..250) on both bridges.
function M:add(name, n)
  local ns = self:ns(name)
  must("ip netns add " .. ns)
  self.namespaces[#self.namespaces + 1] = ns
  self.parties[name] = n
  must("ip -n " .. ns .. " link set lo up")
  for bridge, prefix in pairs(NETS) do
    local sw_end = name .. "-" .. bridge:sub(1, 1) -- the switch's end, e.g. r1-p
    must(string.format("ip -n %s link add %s type veth peer name %s0 netns %s", self.sw, sw_end, bridge, ns))
    must(string.format("ip -n %s link set %s master %s up", self.sw, sw_end, bridge))
    must(string.format("ip -n %s addr add %s%d/24 dev %s0", ns, prefix, n, bridge))
    must(string.format("ip -n %s link set %s0 up", ns, bridge))
  end
  return ns
end

local function each_bridge(which, fn)
  if which then fn(which) else for b in pairs(NETS) do fn(b) end end
end

-- Cuts party `name` off a bridge (both when which is nil).
function M:cut(name, which)
  each_bridge(which, function(b) must(string.format("ip -n %s link set %s-%s down", self.sw, name, b:sub(1, 1))) end)
end

function M:heal(name, which)
  each_bridge(which, function(b) must(string.format("ip -n %s link set %s-%s up", self.sw, name, b:sub(1, 1))) end)
end

-- One HTTP request with curl from inside party `from`'s namespace. Returns
-- the status (0 when no answer within `timeout` seconds) and the decoded
-- body (or the raw text).
function M:http(from, method, url, body, timeout)
  local out = os.tmpname()
  local p = io.popen(string.format("%s curl -s -m %g -o %s -w '%%{http_code}' -X %s %s %s 2>/dev/null",
    self:wrap(from), timeout or 5, H.sh_quote(out), method, body and ("--data-binary " .. H.sh_quote(body)) or "",
    H.sh_quote(url)))
  local status = tonumber(p:read("*a")) or 0
  p:close()
  local raw = H.read_file(out) or ""
  os.remove(out)
  local ok, doc = pcall(cjson.decode, raw)
  return status, ok and doc or raw
end

-- Deletes every namespace this network made (their veths go with them).
-- The processes in them must be stopped first.
function M:destroy()
  for i = #self.namespaces, 1, -1 do sh("ip netns del " .. self.namespaces[i]) end
  self.namespaces = {}
end

return M
