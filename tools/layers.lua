-- layers.lua - checks that runtime/ imports downward only (docs/internals.md,
-- "Layers"). Usage: lua5.4 tools/layers.lua [ROOT] (ROOT defaults to ".").
--
-- Every file under ROOT/runtime/ belongs to one layer, from the bottom:
--   0 core   1 loop   2 net   3 storage   4 host   5 entity   6 cluster
--   7 top: runtime/main.c, runtime/cli/, runtime/admin/
-- A file may include ("...") files of its own layer or of a lower one. The
-- tool exits 1 naming file, line and include for any include of a higher
-- layer, of a file that is in no layer, or of a file that does not exist,
-- and for any cycle of includes among files (a.h includes b.h includes a.h).
-- There is deliberately no list of exceptions.

local root = arg[1] or "."
local RANKS = { core = 0, loop = 1, net = 2, storage = 3, host = 4, entity = 5, cluster = 6, cli = 7, admin = 7 }
local NAMES = { [0] = "core", "loop", "net", "storage", "host", "entity", "cluster", "top" }

-- rel is a path below runtime/, e.g. "host/host.c"; nil when in no layer.
local function rank_of(rel)
  if rel == "main.c" then return 7 end
  local dir = rel:match("^([^/]+)/[^/]+$")
  return dir and RANKS[dir]
end

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() return true end
  return false
end

local function list_files()
  local files = {}
  local p = assert(io.popen("cd '" .. root .. "/runtime' && find . -type f \\( -name '*.c' -o -name '*.h' \\) | sort"))
  for line in p:lines() do files[#files + 1] = line:gsub("^%./", "") end
  p:close()
  return files
end

-- An include resolves next to the including file first, then under runtime/
-- (the compiler's -Iruntime).
local function resolve(rel, inc)
  local dir = rel:match("^(.*)/[^/]+$")
  if dir and exists(root .. "/runtime/" .. dir .. "/" .. inc) then return dir .. "/" .. inc end
  if exists(root .. "/runtime/" .. inc) then return inc end
  return nil
end

local problems = {}
local function problem(fmt, ...) problems[#problems + 1] = string.format(fmt, ...) end

local files = list_files()
local edges = {} -- rel -> { {to=, line=} }
for _, rel in ipairs(files) do
  local r = rank_of(rel)
  if not r then problem("runtime/%s: in no layer (put it in one of the layer folders)", rel) end
  edges[rel] = {}
  local n = 0
  for line in io.lines(root .. "/runtime/" .. rel) do
    n = n + 1
    local inc = line:match('^%s*#%s*include%s*"([^"]+)"')
    if inc then
      local to = resolve(rel, inc)
      if not to then
        problem('runtime/%s:%d: #include "%s" names no file under runtime/', rel, n, inc)
      else
        table.insert(edges[rel], { to = to, line = n })
        local tr = rank_of(to)
        if r and tr and tr > r then
          problem('runtime/%s:%d: #include "%s" reaches up from %s to %s', rel, n, inc, NAMES[r], NAMES[tr])
        elseif r and not tr then
          problem('runtime/%s:%d: #include "%s" names a file in no layer', rel, n, inc)
        end
      end
    end
  end
end

-- Cycles: a depth-first walk; a file met again while still on the path
-- closes a cycle, reported once with every file on it.
local state, stack, seen_cycle = {}, {}, {}
local function walk(f)
  state[f] = "open"
  stack[#stack + 1] = f
  for _, e in ipairs(edges[f] or {}) do
    if state[e.to] == "open" then
      local i = #stack
      while stack[i] ~= e.to do i = i - 1 end
      local cyc = {}
      for k = i, #stack do cyc[#cyc + 1] = "runtime/" .. stack[k] end
      local key = table.concat(cyc, " ")
      if not seen_cycle[key] then
        seen_cycle[key] = true
        problem("include cycle: %s -> runtime/%s", table.concat(cyc, " -> "), e.to)
      end
    elseif not state[e.to] then
      walk(e.to)
    end
  end
  stack[#stack] = nil
  state[f] = "done"
end
for _, rel in ipairs(files) do
  if not state[rel] then walk(rel) end
end

if #problems > 0 then
  for _, p in ipairs(problems) do io.stderr:write(p, "\n") end
  io.stderr:write(string.format("layers: %d problem(s) in %d files\n", #problems, #files))
  os.exit(1)
end
print(string.format("layers: %d files, every include goes downward, no cycles", #files))
