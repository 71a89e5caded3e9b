-- luster.cli: how `luster call` and `luster status` print a runner's answers.
local cjson = require "cjson"

local M = {}

local function is_array(t)
  local n = 0
  for k in pairs(t) do
    if math.type(k) ~= "integer" or k < 1 then return false end
    n = n + 1
  end
  for i = 1, n do if t[i] == nil then return false end end
  return true, n
end

-- JSON with sorted keys and two-space indentation.
function M.pretty(v, indent)
  indent = indent or ""
  if type(v) ~= "table" then return cjson.encode(v) end
  local arr, n = is_array(v)
  local inner = indent .. "  "
  local parts = {}
  if arr and n > 0 then
    for i = 1, n do parts[i] = inner .. M.pretty(v[i], inner) end
    return "[\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = tostring(k) end
  if #keys == 0 then return "{}" end
  table.sort(keys)
  for i, k in ipairs(keys) do
    local val = v[k]
    if val == nil then val = v[tonumber(k)] end
    parts[i] = inner .. cjson.encode(k) .. ": " .. M.pretty(val, inner)
  end
  return "{\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "}"
end

-- Returns stdout text, stderr text, exit code.
function M.format_call(status, body)
  local ok, doc = pcall(cjson.decode, body)
  if not ok or type(doc) ~= "table" then
    return nil, string.format("unexpected answer (HTTP %d): %s", status, body), 1
  end
  if status == 200 then return M.pretty(doc.value), nil, 0 end
  if status == 202 then return "accepted", nil, 0 end
  if status == 422 then return nil, "failure: " .. M.pretty(doc.failure), 1 end
  local e = type(doc.error) == "table" and doc.error or {}
  local msg = tostring(e.message or body)
  return nil, string.format("%s (HTTP %d): %s", tostring(e.kind or "error"), status, msg), 1
end

-- `luster where TYPE ID`: one line per field, as GET /entities/{type}/{id} answers.
function M.format_where(status, body)
  local ok, doc = pcall(cjson.decode, body)
  if not ok or type(doc) ~= "table" then
    return nil, string.format("unexpected answer (HTTP %d): %s", status, body), 1
  end
  if status ~= 200 then
    local e = type(doc.error) == "table" and doc.error or {}
    return nil, string.format("%s (HTTP %d): %s", tostring(e.kind or "error"), status, tostring(e.message or body)), 1
  end
  local lines = {}
  for _, k in ipairs({ "type", "id", "shard", "runner", "active", "mailbox" }) do
    lines[#lines + 1] = string.format("%-8s %s", k, tostring(math.tointeger(doc[k]) or doc[k]))
  end
  return table.concat(lines, "\n"), nil, 0
end

local function table_text(header, rows)
  local widths = {}
  for i, h in ipairs(header) do widths[i] = #h end
  for _, r in ipairs(rows) do
    for i, c in ipairs(r) do widths[i] = math.max(widths[i], #tostring(c)) end
  end
  local lines = {}
  local function line(cells)
    local out = {}
    for i, c in ipairs(cells) do
      out[i] = i < #cells and (tostring(c) .. string.rep(" ", widths[i] - #tostring(c))) or tostring(c)
    end
    lines[#lines + 1] = (table.concat(out, "  "):gsub("%s+$", ""))
  end
  line(header)
  for _, r in ipairs(rows) do line(r) end
  return table.concat(lines, "\n")
end

-- cjson reads every number as a float; counts print as whole numbers.
local function num(x)
  if type(x) == "number" and x == math.floor(x) then return string.format("%d", x) end
  return tostring(x)
end

-- "1-4,9,12-13", cut to about 48 characters with the count of ranges left
-- out, so a big cluster's table stays readable (GET /cluster has them all).
local function ranges_text(ranges)
  local parts, len = {}, 0
  ranges = ranges or {}
  for i, r in ipairs(ranges) do
    local p = r[1] == r[2] and num(r[1]) or (num(r[1]) .. "-" .. num(r[2]))
    if len + #p > 48 and i < #ranges then
      parts[#parts + 1] = string.format("... (+%d ranges)", #ranges - i + 1)
      break
    end
    parts[#parts + 1] = p
    len = len + #p + 1
  end
  return table.concat(parts, ",")
end

-- An epoch-ms instant as UTC ("2026-12-05 10:20:00"); "-" for none.
local function instant(ms)
  if type(ms) ~= "number" or ms <= 0 then return "-" end
  return os.date("!%Y-%m-%d %H:%M:%S", math.floor(ms / 1000))
end

-- A singleton or cron job running on another runner: only that runner
-- knows since when and its cron instants. Asks it (through `fetch`, GET
-- /cluster on its gateway) and fills them in; leaves them out when it
-- cannot be asked.
local function fill_in_background(doc, fetch)
  if type(fetch) ~= "function" then return end
  local me = (doc.runner or {}).address
  local gateways, answers = {}, {}
  for _, r in ipairs(doc.runners or {}) do gateways[r.address] = r.http end
  for _, t in ipairs(doc.types or {}) do
    local where = t.runner
    if (t.kind == "singleton" or t.kind == "cron") and type(where) == "string" and where ~= me
        and type(t.since) ~= "number" and type(gateways[where]) == "string" then
      if answers[where] == nil then
        local status, body = fetch("http://" .. gateways[where], "/cluster")
        local ok, other = pcall(cjson.decode, body or "")
        answers[where] = status == 200 and ok and type(other) == "table" and other or false
      end
      for _, o in ipairs(answers[where] and answers[where].types or {}) do
        if o.name == t.name then t.since, t.last, t.next = o.since, o.last, o.next end
      end
    end
  end
end

function M.format_status(status, body, fetch)
  local ok, doc = pcall(cjson.decode, body)
  if status ~= 200 or not ok or type(doc) ~= "table" then
    return nil, string.format("unexpected answer from /cluster (HTTP %d): %s", status, body), 1
  end
  fill_in_background(doc, fetch)
  local out = {}
  local me = doc.runner or {}
  out[#out + 1] = string.format("runner %s   http %s   storage %s   scripts %s", tostring(me.address),
    tostring(me.http), tostring(me.storage), tostring(me.scripts))
  out[#out + 1] = ""
  local owned = {}
  for _, o in ipairs((doc.shards or {}).owners or {}) do owned[o.runner] = ranges_text(o.ranges) end
  local rows = {}
  for _, r in ipairs(doc.runners or {}) do
    rows[#rows + 1] = { r.address, r.healthy and "yes" or "NO", num(r.shards), owned[r.address] or "",
                        r.active and num(r.active) or "-" }
  end
  out[#out + 1] = table_text({ "RUNNER", "HEALTHY", "SHARDS", "SHARD RANGES", "ACTIVE" }, rows)
  out[#out + 1] = ""
  rows = {}
  for _, t in ipairs(doc.types or {}) do
    local rpcs = {}
    for _, r in ipairs(t.rpcs or {}) do rpcs[#rpcs + 1] = r.tag .. (r.persisted and "*" or "") end
    rows[#rows + 1] = { t.name, t.kind, t.file, t.version, num(t.active or 0),
                        t.schedule or table.concat(rpcs, " ") }
  end
  out[#out + 1] = table_text({ "TYPE", "KIND", "FILE", "VERSION", "ACTIVE", "RPCS (* persisted) / SCHEDULE" }, rows)
  -- Singletons and cron jobs: where each runs, since when, and a cron job's
  -- last and next instants (known by the runner that runs it; "-" elsewhere).
  rows = {}
  for _, t in ipairs(doc.types or {}) do
    if t.kind == "singleton" or t.kind == "cron" then
      rows[#rows + 1] = { t.name, t.kind, type(t.runner) == "string" and t.runner or "(none)",
                          instant(t.since), t.kind == "cron" and instant(t.last) or "",
                          t.kind == "cron" and instant(t.next) or "" }
    end
  end
  if #rows > 0 then
    out[#out + 1] = ""
    out[#out + 1] = table_text({ "SINGLETON / CRON", "KIND", "RUNNER", "SINCE", "LAST", "NEXT" }, rows)
  end
  if doc.errors and #doc.errors > 0 then
    out[#out + 1] = ""
    out[#out + 1] = "SCRIPT ERRORS"
    for _, e in ipairs(doc.errors) do out[#out + 1] = "  " .. e.file .. ": " .. e.message end
  end
  return table.concat(out, "\n"), nil, 0
end

return M
