-- luster.schema: the DSL that describes, validates and JSON-encodes entity messages.
--
-- Every schema value is an immutable proxy table; its compiled record (a
-- validity test `ok`, a failure explainer `explain`, a description, flags)
-- lives in the weak table `recs`. Validation runs in two phases: `ok(v)` is a
-- closure tree that only answers true/false and never allocates, so a valid
-- message costs no garbage; only when it says false does `explain(v)` walk
-- the value again to build the path and the message. Paths are built while
-- unwinding: each container prepends its own segment (".name", "[2]").

local cjson = require "cjson"

local type, next, rawget, rawlen, select, tostring, tonumber, error, ipairs =
      type, next, rawget, rawlen, select, tostring, tonumber, error, ipairs
local getmetatable, setmetatable = getmetatable, setmetatable
local math_type, huge, tointeger = math.type, math.huge, math.tointeger
local format, find, sub, gsub, byte = string.format, string.find, string.sub, string.gsub, string.byte
local concat, sort = table.concat, table.sort
local ulen, uoffset = utf8.len, utf8.offset
local json_encode = require("luster.json").encode -- JSON text of a value
local null = cjson.null

local S = {}

-- The value cjson.decode gives for JSON null.
S.null_value = null

-- Why 200: schemas cannot be recursive (they are built bottom-up and are
-- immutable), so validation and encoding recurse at most as deep as the
-- schema is. Capping the schema at 200 levels, far above any real message,
-- keeps those walks bounded and turns a runaway generated or cyclic plain
-- table into a clear error at definition time instead of a stack overflow.
local MAX_DEPTH = 200

-- Why 40: enough of a string to recognise it in an error message without
-- copying a whole oversized field into logs and HTTP replies.
local MAX_SHOWN = 40

local recs = setmetatable({}, { __mode = "k" })  -- schema value -> record
local Schema = {}                                  -- metatable of every schema value
local methods = {}                                 -- constraint methods

---------------------------------------------------------------------------
-- Formatting helpers (failure path and definition time only)

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function quote(s)
  local body = gsub(s, '[%c"\\]', function(c)
    return ESCAPES[c] or format("\\u%04x", byte(c))
  end)
  return '"' .. body .. '"'
end

local function is_ident(k)
  return find(k, "^[%a_][%w_]*$") ~= nil
end

-- One path segment for a table key: ".name", "[2]" or '["two words"]'.
local function seg(k)
  if type(k) == "string" then
    if is_ident(k) then return "." .. k end
    return "[" .. quote(k) .. "]"
  end
  return "[" .. tostring(k) .. "]"
end

local function fmt_num(v)
  if math_type(v) == "integer" then return tostring(v) end
  if v ~= v then return "NaN" end
  if v == huge then return "inf" end
  if v == -huge then return "-inf" end
  local s = format("%.14g", v)
  if tonumber(s) ~= v then s = format("%.17g", v) end
  return s
end

-- The JSON type name of a value: an empty table is an object, a table
-- with exactly the keys 1..n (n > 0) is an array.
local function jtype(v)
  local t = type(v)
  if t == "table" then
    local n = rawlen(v)
    if n == 0 then return "object" end
    local count = 0
    for k in next, v do
      if math_type(k) ~= "integer" or k < 1 or k > n then return "object" end
      count = count + 1
    end
    return count == n and "array" or "object"
  end
  if v == null then return "null" end
  return t
end

-- A value as shown after "got": scalars by value, everything else by type.
local function show(v)
  local t = type(v)
  if t == "string" then
    if #v > MAX_SHOWN then
      local cut = (ulen(v) and uoffset(v, MAX_SHOWN + 1)) or MAX_SHOWN + 1
      if cut <= #v then return quote(sub(v, 1, cut - 1)) .. "..." end
    end
    return quote(v)
  elseif t == "number" then
    return fmt_num(v)
  elseif t == "boolean" then
    return tostring(v)
  end
  return jtype(v)
end

local function plural(n, word)
  if n == 1 then return "1 " .. word end
  return tostring(n) .. " " .. word .. "s"
end

-- " of at least 1 character", " with 2 to 5 items", ...
local function len_text(lo, hi, word)
  if lo == 0 and hi == huge then return "" end
  if hi == huge then return "at least " .. plural(lo, word) end
  if lo == 0 then return "at most " .. plural(hi, word) end
  if lo == hi then return "exactly " .. plural(lo, word) end
  return tostring(lo) .. " to " .. tostring(hi) .. " " .. word .. "s"
end

-- A compound description inside "array of", "map of", "optional".
local function wrapped(r)
  if r.kind == "union" or (r.kind == "literal" and #r.params.values > 1) then
    return "(" .. r.desc .. ")"
  end
  return r.desc
end

local function expected(r, v)
  return "expected " .. r.desc .. ", got " .. jtype(v)
end

-- Deterministic order for unexpected keys: non-string keys first (they are
-- the more fundamental mistake), numbers before other types, strings last.
local KEY_RANK = { number = 1, boolean = 2, string = 4 }

local function key_before(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then
    local ra, rb = KEY_RANK[ta] or 3, KEY_RANK[tb] or 3
    if ra ~= rb then return ra < rb end
    return ta < tb
  end
  if ta == "string" or ta == "number" then return a < b end
  return tostring(a) < tostring(b)
end

---------------------------------------------------------------------------
-- Records and schema values

local function new(r, lvl)
  if r.depth > MAX_DEPTH then
    error(format("luster.schema: schema nested deeper than %d levels (%s)", MAX_DEPTH,
      "recursive or generated schemas that deep are not supported"), lvl)
  end
  r.accepts_nil = r.ok(nil)
  local s = setmetatable({}, Schema)
  recs[s] = r
  return s
end

local builders = {}

local function build(p, lvl)
  local r = builders[p.kind](p)
  r.kind, r.params = p.kind, p
  local s = new(r, lvl + 1)
  return s
end

local function copy(p)
  local c = {}
  for k, v in next, p do c[k] = v end
  return c
end

-- number, integer -----------------------------------------------------------

local function num_desc(kind, lo, hi)
  if lo and hi then return format("%s >= %s and <= %s", kind, fmt_num(lo), fmt_num(hi)) end
  if lo then return format("%s >= %s", kind, fmt_num(lo)) end
  if hi then return format("%s <= %s", kind, fmt_num(hi)) end
  return kind
end

local function build_number(p)
  local lo, hi, integer = p.min or -huge, p.max or huge, p.kind == "integer"
  local desc = num_desc(p.kind, p.min, p.max)
  local ok
  if integer then
    ok = function(v)
      return type(v) == "number" and v >= lo and v <= hi and v > -huge and v < huge
        and (math_type(v) == "integer" or v % 1 == 0)
    end
  else
    ok = function(v)
      return type(v) == "number" and v >= lo and v <= hi and v > -huge and v < huge
    end
  end
  local r = { desc = desc, ok = ok, depth = 1, has_array = false }
  r.fits = function(v) return type(v) == "number" end
  r.explain = function(v)
    if type(v) ~= "number" then return "", expected(r, v) end
    if v ~= v or v == huge or v == -huge then
      return "", "expected finite " .. desc .. ", got " .. fmt_num(v)
    end
    return "", "expected " .. desc .. ", got " .. fmt_num(v)
  end
  return r
end
builders.number = build_number
builders.integer = build_number

-- string --------------------------------------------------------------------

function builders.string(p)
  local lo, hi, pat = p.min_len or 0, p.max_len or huge, p.pattern
  local desc = "string"
  local lt = len_text(lo, hi, "character")
  if lt ~= "" then desc = desc .. " of " .. lt end
  if pat then desc = desc .. " matching pattern " .. quote(pat) end
  local sized = lo > 0 or hi < huge
  local ok
  if not sized and not pat then
    ok = function(v) return type(v) == "string" end
  else
    ok = function(v)
      if type(v) ~= "string" then return false end
      if sized then
        local n = ulen(v) or #v   -- characters; bytes when not valid UTF-8
        if n < lo or n > hi then return false end
      end
      return pat == nil or find(v, pat) ~= nil
    end
  end
  local r = { desc = desc, ok = ok, depth = 1, has_array = false }
  r.fits = function(v) return type(v) == "string" end
  r.explain = function(v)
    if type(v) ~= "string" then return "", expected(r, v) end
    local n = ulen(v) or #v
    if n < lo or n > hi then
      return "", "expected " .. desc .. ", got " .. plural(n, "character")
    end
    return "", "expected " .. desc .. ", got " .. show(v)
  end
  return r
end

-- boolean, null, any ----------------------------------------------------------

function builders.boolean()
  local r = { desc = "boolean", depth = 1, has_array = false }
  r.ok = function(v) return type(v) == "boolean" end
  r.fits = r.ok
  r.explain = function(v) return "", expected(r, v) end
  return r
end

function builders.null()
  local r = { desc = "null", depth = 1, has_array = false }
  r.ok = function(v) return v == nil or v == null end
  r.fits = r.ok
  r.explain = function(v) return "", expected(r, v) end
  return r
end

function builders.any()
  local r = { desc = "any", depth = 1, has_array = false }
  r.ok = function() return true end
  r.fits = r.ok
  r.explain = function() return nil end
  return r
end

-- literal -------------------------------------------------------------------

function builders.literal(p)
  local set, types, shown, has_null = {}, {}, {}, false
  for i, v in ipairs(p.values) do
    set[v] = true
    if v == null then has_null = true else types[type(v)] = true end
    shown[i] = v == null and "null" or show(v)
  end
  local desc = concat(shown, " or ")
  local r = { desc = desc, depth = 1, has_array = false }
  if has_null then
    r.ok = function(v) return v == nil or set[v] == true end
  else
    r.ok = function(v) return set[v] == true end
  end
  r.fits = function(v)
    if v == nil or v == null then return has_null end
    return types[type(v)] == true
  end
  r.explain = function(v)
    if v == nil then return "", "expected " .. desc .. ", got nil" end
    return "", "expected " .. desc .. ", got " .. show(v)
  end
  return r
end

-- optional ------------------------------------------------------------------

function builders.optional(p)
  local inner = p.inner
  local iok = inner.ok
  local r = { desc = "optional " .. wrapped(inner), depth = inner.depth + 1,
              has_array = inner.has_array }
  r.ok = function(v) return v == nil or v == null or iok(v) end
  r.fits = function(v) return v == nil or v == null or inner.fits(v) end
  r.explain = function(v)
    if v == nil or v == null then return nil end
    local path, msg = inner.explain(v)
    return path, msg
  end
  return r
end

-- array ---------------------------------------------------------------------

function builders.array(p)
  local elem, lo, hi = p.elem, p.min_len or 0, p.max_len or huge
  local eok = elem.ok
  local desc = "array of " .. wrapped(elem)
  local lt = len_text(lo, hi, "item")
  if lt ~= "" then desc = desc .. " with " .. lt end
  local r = { desc = desc, depth = elem.depth + 1, has_array = true }
  r.ok = function(v)
    if type(v) ~= "table" then return false end
    local n = rawlen(v)
    if n < lo or n > hi then return false end
    local count = 0
    for k, e in next, v do
      if math_type(k) ~= "integer" or k < 1 or k > n or not eok(e) then return false end
      count = count + 1
    end
    return count == n    -- n distinct keys, all in 1..n: exactly a sequence
  end
  r.fits = function(v) return type(v) == "table" and (next(v) == nil or jtype(v) == "array") end
  r.explain = function(v)
    if type(v) ~= "table" then return "", expected(r, v) end
    if next(v) ~= nil and jtype(v) ~= "array" then return "", expected(r, v) end
    local n = rawlen(v)
    if n < lo or n > hi then return "", "expected " .. desc .. ", got " .. plural(n, "item") end
    for i = 1, n do
      local e = rawget(v, i)
      if not eok(e) then
        local path, msg = elem.explain(e)
        return "[" .. i .. "]" .. path, msg
      end
    end
    return nil
  end
  return r
end

-- struct --------------------------------------------------------------------

function builders.struct(p)
  local fields = p.fields      -- name -> record
  local names = {}
  for name in next, fields do names[#names + 1] = name end
  sort(names)
  local checks, required, nreq, depth, has_array, parts = {}, {}, 0, 0, false, {}
  for i, name in ipairs(names) do
    local f = fields[name]
    checks[name] = f.ok
    if not f.accepts_nil then required[name] = true; nreq = nreq + 1 end
    if f.depth > depth then depth = f.depth end
    has_array = has_array or f.has_array
    parts[i] = (is_ident(name) and name or quote(name)) .. ": " .. f.desc
  end
  local desc = "object {" .. concat(parts, ", ") .. "}"
  local r = { desc = desc, depth = depth + 1, has_array = has_array, names = names }
  r.ok = function(v)
    if type(v) ~= "table" then return false end
    local seen = 0
    for k, e in next, v do
      local check = checks[k]
      if check == nil or not check(e) then return false end
      if required[k] then seen = seen + 1 end
    end
    return seen == nreq
  end
  r.fits = function(v) return type(v) == "table" and jtype(v) ~= "array" end
  -- How many declared fields are present and valid: the union explainer
  -- uses it to pick the branch a failing value was most likely meant for.
  r.score = function(v)
    local score = 0
    for _, name in ipairs(names) do
      local e = rawget(v, name)
      if e ~= nil and checks[name](e) then score = score + 1 end
    end
    return score
  end
  r.explain = function(v)
    if type(v) ~= "table" or jtype(v) == "array" then return "", expected(r, v) end
    for _, name in ipairs(names) do
      local e = rawget(v, name)
      if e == nil then
        if required[name] then
          return seg(name), "missing required field (expected " .. fields[name].desc .. ")"
        end
      elseif not checks[name](e) then
        local path, msg = fields[name].explain(e)
        return seg(name) .. path, msg
      end
    end
    local extra
    for k in next, v do
      if checks[k] == nil then
        extra = extra or {}
        extra[#extra + 1] = k
      end
    end
    if extra then
      sort(extra, key_before)
      local k = extra[1]
      if type(k) == "string" then return seg(k), "unexpected field" end
      return "", "expected " .. desc .. ", got object with non-string key " .. show(k)
    end
    return nil
  end
  return r
end

-- map -----------------------------------------------------------------------

function builders.map(p)
  local elem, lo, hi = p.elem, p.min_len or 0, p.max_len or huge
  local eok = elem.ok
  local desc = "map of " .. wrapped(elem)
  local lt = len_text(lo, hi, "key")
  if lt ~= "" then desc = desc .. " with " .. lt end
  local r = { desc = desc, depth = elem.depth + 1, has_array = elem.has_array }
  r.ok = function(v)
    if type(v) ~= "table" then return false end
    local n = 0
    for k, e in next, v do
      if type(k) ~= "string" or not eok(e) then return false end
      n = n + 1
    end
    return n >= lo and n <= hi
  end
  r.fits = function(v) return type(v) == "table" and jtype(v) ~= "array" end
  r.explain = function(v)
    if type(v) ~= "table" or jtype(v) == "array" then return "", expected(r, v) end
    local keys, bad = {}, nil
    for k in next, v do
      if type(k) == "string" then
        keys[#keys + 1] = k
      elseif bad == nil or key_before(k, bad) then
        bad = k
      end
    end
    if bad ~= nil then
      return "", "expected " .. desc .. ", got object with non-string key " .. show(bad)
    end
    if #keys < lo or #keys > hi then
      return "", "expected " .. desc .. ", got " .. plural(#keys, "key")
    end
    sort(keys)
    for _, k in ipairs(keys) do
      local e = v[k]
      if not eok(e) then
        local path, msg = elem.explain(e)
        return seg(k) .. path, msg
      end
    end
    return nil
  end
  return r
end

-- union ---------------------------------------------------------------------

function builders.union(p)
  local branches = p.branches
  local nb = #branches
  local oks, parts, depth, has_array = {}, {}, 0, false
  for i, b in ipairs(branches) do
    oks[i] = b.ok
    parts[i] = b.desc
    if b.depth > depth then depth = b.depth end
    has_array = has_array or b.has_array
  end
  local desc = concat(parts, " or ")
  local r = { desc = desc, depth = depth + 1, has_array = has_array }
  r.ok = function(v)
    for i = 1, nb do
      if oks[i](v) then return true end
    end
    return false
  end
  r.fits = function(v)
    for i = 1, nb do
      if branches[i].fits(v) then return true end
    end
    return false
  end
  r.explain = function(v)
    -- One branch of the value's JSON type: its own error is the precise one
    -- (a number below a minimum, a bad field). Several object branches: the
    -- one with the most valid fields. Otherwise, list the alternatives.
    local cands = {}
    for i = 1, nb do
      if branches[i].fits(v) then cands[#cands + 1] = branches[i] end
    end
    if #cands == 1 then
      local path, msg = cands[1].explain(v)
      return path, msg
    end
    if #cands > 1 and type(v) == "table" then
      local best, best_score = nil, 0
      for _, b in ipairs(cands) do
        if b.score then
          local sc = b.score(v)
          if sc > best_score then best, best_score = b, sc end
        end
      end
      if best then
        local path, msg = best.explain(v)
        return path, msg
      end
    end
    return "", "expected " .. desc .. ", got " .. (#cands > 0 and show(v) or jtype(v))
  end
  return r
end

---------------------------------------------------------------------------
-- Coercion: schema values pass through, plain tables become structs.

local function given(x)
  local t = type(x)
  if t == "string" then
    local hint = recs[rawget(S, x)] and format(" (did you mean S.%s?)", x) or ""
    return "string " .. quote(x) .. hint
  elseif t == "number" or t == "boolean" then
    return t .. " " .. show(x)
  elseif t == "function" then
    return "function (did you forget to call a constructor, as in S.optional(s)?)"
  elseif x == null then
    return "S.null_value (the schema is S.null)"
  elseif t == "table" then
    return getmetatable(x) ~= nil and "table with a metatable" or "table"
  end
  return t
end

local function where_text(where)
  if where == nil then return "" end
  if #where > 2 * MAX_SHOWN then where = "..." .. sub(where, -2 * MAX_SHOWN) end
  return " for field " .. where
end

-- A field path as users write it: "order.amount", 'tags["two words"]'.
local function join(where, k)
  local sg = seg(k)
  if where then return where .. sg end
  if byte(sg, 1) == 46 then return sub(sg, 2) end
  return sg
end

local coerce

local function struct_of(fields, lvl, where, depth, seen)
  local recs_of = {}
  for k, v in next, fields do
    if type(k) ~= "string" then
      error(format("luster.schema: expected a schema%s, got table with non-string key %s%s",
        where_text(where), show(k), " (fields are named by strings; use S.array(s) for arrays)"), lvl)
    end
    local s = coerce(v, lvl + 1, join(where, k), depth, seen)
    recs_of[k] = recs[s]
  end
  local s = build({ kind = "struct", fields = recs_of }, lvl + 1)
  return s
end

coerce = function(x, lvl, where, depth, seen)
  if recs[x] then return x end
  if type(x) == "table" and getmetatable(x) == nil then
    depth = (depth or 0) + 1
    seen = seen or {}
    if seen[x] then
      error(format("luster.schema: plain table schema%s contains itself; %s",
        where_text(where), "schemas cannot be recursive"), lvl)
    end
    if depth > MAX_DEPTH then
      error(format("luster.schema: schema nested deeper than %d levels%s", MAX_DEPTH,
        where_text(where)), lvl)
    end
    seen[x] = true
    local s = struct_of(x, lvl + 1, where, depth, seen)
    seen[x] = nil
    return s
  end
  error(format("luster.schema: expected a schema%s, got %s", where_text(where), given(x)), lvl)
end

-- Plain tables handed straight to validate/encode/describe are compiled
-- once and remembered, so a caller that keeps `{ amount = S.number }` around
-- does not recompile it per message. Changing such a table after first use
-- is not seen: wrap it with S.of once instead.
local compiled = setmetatable({}, { __mode = "k" })

local function rec_of(x, lvl)
  local r = recs[x] or compiled[x]
  if r then return r end
  local s = coerce(x, lvl + 1)
  r = recs[s]
  if type(x) == "table" then compiled[x] = r end
  return r
end

---------------------------------------------------------------------------
-- Schema values: immutable, constraint methods return new values.

Schema.__name = "luster.schema"
Schema.__metatable = "luster.schema"

Schema.__index = function(s, k)
  local m = methods[k]
  if m then return m end
  if k == "kind" then return recs[s].kind end
  error(format("luster.schema: %s has no field or method %s (methods: %s)",
    recs[s].desc, tostring(k), "min, max, min_len, max_len, pattern"), 2)
end

Schema.__newindex = function()
  error("luster.schema: schema values are immutable; constraint methods return a new schema", 2)
end

Schema.__tostring = function(s)
  return recs[s].desc
end

local function receiver(self, name, kinds, lvl)
  local r = recs[self]
  if not r then
    error(format("luster.schema: %s must be called as a method, as in S.%s:%s(...)",
      name, kinds[1], name), lvl)
  end
  for _, k in ipairs(kinds) do
    if r.kind == k then return r end
  end
  error(format("luster.schema: %s applies to %s schemas, not to %s", name,
    concat(kinds, " and "), r.desc), lvl)
end

local function derive(r, key, value)
  local p = copy(r.params)
  p[key] = value
  return p
end

local function bound(self, name, x, lvl)
  local r = receiver(self, name, { "number", "integer" }, lvl + 1)
  if type(x) ~= "number" or x ~= x or x == huge or x == -huge then
    error(format("luster.schema: %s expects a finite number, got %s", name, given(x)), lvl)
  end
  local p = derive(r, name, x)
  if p.min and p.max and p.min > p.max then
    error(format("luster.schema: min %s is greater than max %s", fmt_num(p.min), fmt_num(p.max)), lvl)
  end
  local s = build(p, lvl + 1)
  return s
end

local function length(self, name, n, lvl)
  local r = receiver(self, name, { "string", "array", "map" }, lvl + 1)
  if type(n) ~= "number" or n < 0 or n ~= n or n == huge or n % 1 ~= 0 then
    error(format("luster.schema: %s expects a non-negative integer, got %s", name, given(n)), lvl)
  end
  local p = derive(r, name, tointeger(n))
  if p.min_len and p.max_len and p.min_len > p.max_len then
    error(format("luster.schema: min_len %d is greater than max_len %d", p.min_len, p.max_len), lvl)
  end
  local s = build(p, lvl + 1)
  return s
end

-- Lua reports a malformed pattern only when matching reaches the bad part,
-- which may be never for the strings a test happens to use. Check the whole
-- pattern here, mirroring lstrlib.c, so the mistake shows at definition.
local function pattern_error(pat)
  local n, i, open, ncap = #pat, 1, {}, 0
  local function class_end(j)          -- j is just past "["
    if sub(pat, j, j) == "^" then j = j + 1 end
    repeat
      if j > n then return nil, "missing ']'" end
      local c = sub(pat, j, j)
      j = j + 1
      if c == "%" then
        if j > n then return nil, "ends with '%'" end
        j = j + 1
      end
    until sub(pat, j, j) == "]"
    return j + 1
  end
  if sub(pat, 1, 1) == "^" then i = 2 end
  while i <= n do
    local c = sub(pat, i, i)
    if c == "(" then
      ncap = ncap + 1
      if ncap > 32 then return "too many captures" end
      if sub(pat, i + 1, i + 1) == ")" then
        i = i + 2
      else
        open[#open + 1] = ncap
        i = i + 1
      end
    elseif c == ")" then
      if #open == 0 then return "invalid pattern capture (unbalanced ')')" end
      open[#open] = nil
      i = i + 1
    elseif c == "%" then
      local d = sub(pat, i + 1, i + 1)
      if d == "" then return "malformed pattern (ends with '%')" end
      if d == "b" then
        if i + 3 > n then return "malformed pattern (missing arguments to '%b')" end
        i = i + 4
      elseif d == "f" then
        if sub(pat, i + 2, i + 2) ~= "[" then return "missing '[' after '%f' in pattern" end
        local j, err = class_end(i + 3)
        if not j then return "malformed pattern (" .. err .. ")" end
        i = j
      elseif find(d, "%d") then
        local l = tonumber(d)
        local still_open = false
        for _, o in ipairs(open) do if o == l then still_open = true end end
        if l == 0 or l > ncap or still_open then return "invalid capture index %" .. d end
        i = i + 2
      else
        i = i + 2
      end
    elseif c == "[" then
      local j, err = class_end(i + 1)
      if not j then return "malformed pattern (" .. err .. ")" end
      i = j
    else
      i = i + 1
    end
  end
  if #open > 0 then return "unfinished capture" end
  return nil
end

-- Each method passes 3 to its helper: helper, method, then the user's line.
function methods.min(self, x) local s = bound(self, "min", x, 3); return s end
function methods.max(self, x) local s = bound(self, "max", x, 3); return s end
function methods.min_len(self, n) local s = length(self, "min_len", n, 3); return s end
function methods.max_len(self, n) local s = length(self, "max_len", n, 3); return s end

function methods.pattern(self, pat)
  local r = receiver(self, "pattern", { "string" }, 3)
  if type(pat) ~= "string" then
    error(format("luster.schema: pattern expects a Lua pattern string, got %s", given(pat)), 2)
  end
  local perr = pattern_error(pat)
  if perr then
    error(format("luster.schema: bad pattern %s: %s", quote(pat), perr), 2)
  end
  local s = build(derive(r, "pattern", pat), 3)
  return s
end

---------------------------------------------------------------------------
-- Constructors

S.number = build({ kind = "number" }, 1)
S.integer = build({ kind = "integer" }, 1)
S.string = build({ kind = "string" }, 1)
S.boolean = build({ kind = "boolean" }, 1)
S.null = build({ kind = "null" }, 1)
S.any = build({ kind = "any" }, 1)

function S.is(x)
  return recs[x] ~= nil
end

function S.of(x)
  local s = coerce(x, 3)
  return s
end

function S.literal(...)
  local n = select("#", ...)
  if n == 0 then error("luster.schema: literal needs at least one value", 2) end
  local values = { ... }
  for i = 1, n do
    local v = values[i]
    local t = type(v)
    if not (t == "string" or t == "boolean" or v == null
            or (t == "number" and v == v and v ~= huge and v ~= -huge)) then
      error(format("luster.schema: literal value #%d must be a string, finite number, %s, got %s",
        i, "boolean or S.null_value", t == "number" and fmt_num(v) or given(v)), 2)
    end
  end
  local s = build({ kind = "literal", values = values }, 3)
  return s
end

function S.optional(x)
  local s = build({ kind = "optional", inner = rec_of(x, 3) }, 3)
  return s
end

function S.array(x)
  local s = build({ kind = "array", elem = rec_of(x, 3) }, 3)
  return s
end

function S.map(x)
  local s = build({ kind = "map", elem = rec_of(x, 3) }, 3)
  return s
end

function S.struct(fields)
  local r = recs[fields]
  if r then
    if r.kind == "struct" then return fields end
    error(format("luster.schema: struct expects a table of field schemas, got the schema %s", r.desc), 2)
  end
  if type(fields) ~= "table" or getmetatable(fields) ~= nil then
    error(format("luster.schema: struct expects a table of field schemas, got %s", given(fields)), 2)
  end
  local s = coerce(fields, 3)
  return s
end

function S.union(...)
  local n = select("#", ...)
  if n == 0 then error("luster.schema: union needs at least one schema", 2) end
  local branches = { ... }
  for i = 1, n do
    local x = branches[i]
    local r = recs[x]
    if not r then
      if type(x) ~= "table" or getmetatable(x) ~= nil then
        error(format("luster.schema: union branch #%d: expected a schema, got %s", i, given(x)), 2)
      end
      r = rec_of(x, 3)
    end
    branches[i] = r
  end
  local s = build({ kind = "union", branches = branches }, 3)
  return s
end

---------------------------------------------------------------------------
-- Using schemas

function S.describe(s)
  return rec_of(s, 3).desc
end

---------------------------------------------------------------------------
-- Unknown names: `S.integr` is a typo, not nil. A nil schema would vanish
-- from a struct (`{ n = nil }` has no field n, so every payload with n is
-- refused) or from an RPC's options (`success = nil` accepts anything), and
-- nothing later could tell it was meant; so it raises where it was written.

-- Edit distance of two short names (the classic two-row table).
local function distance(a, b)
  local prev, cur = {}, {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    cur[0] = i
    for j = 1, #b do
      local cost = byte(a, i) == byte(b, j) and 0 or 1
      local d = prev[j - 1] + cost
      if prev[j] + 1 < d then d = prev[j] + 1 end
      if cur[j - 1] + 1 < d then d = cur[j - 1] + 1 end
      cur[j] = d
    end
    prev, cur = cur, prev
  end
  return prev[#b]
end

-- The closest known name, when it is close enough to be the one meant: at
-- most a third of the name's letters wrong (two for "strnig", one for "nul").
local function closest(name)
  local best, best_d
  for known in next, S do
    local d = distance(name, known)
    if not best_d or d < best_d or (d == best_d and known < best) then best, best_d = known, d end
  end
  if best and best_d <= (#name + 2) // 3 then return best end
end

setmetatable(S, {
  __index = function(_, k)
    local hint = type(k) == "string" and closest(k)
    error(format("unknown schema type %s%s", type(k) == "string" and "'" .. k .. "'" or show(k),
      hint and format(" (did you mean '%s'?)", hint) or ""), 2)
  end,
})

local SchemaError = { __name = "luster.schema.error" }
SchemaError.__tostring = function(e) return "schema error: " .. e.message end

-- Returns true, or nil and { kind = "schema", path, message }.
function S.validate(s, value)
  local r = recs[s] or rec_of(s, 3)
  if r.ok(value) then return true end
  local path, msg = r.explain(value)
  if path == nil then   -- explain disagrees with ok: a bug here, not in the value
    path, msg = "", expected(r, value)
  end
  if byte(path, 1) == 46 then path = sub(path, 2) end   -- drop the leading "."
  return nil, setmetatable({
    kind = "schema",
    path = path,
    message = path == "" and msg or path .. ": " .. msg,
  }, SchemaError)
end

-- The encoder (like cjson 2.1.0) writes every empty table as {}: walk the
-- value alongside the schema, but only through the parts of the schema that
-- contain arrays, and hand every array-free subtree to the encoder whole.
local function encode_into(r, v, buf)
  if not r.has_array then
    buf[#buf + 1] = json_encode(v)
    return
  end
  local kind = r.kind
  if kind == "optional" then
    if v == nil or v == null then buf[#buf + 1] = "null" return end
    encode_into(r.params.inner, v, buf)
  elseif kind == "union" then
    for _, b in ipairs(r.params.branches) do
      if b.ok(v) then encode_into(b, v, buf) return end
    end
    buf[#buf + 1] = json_encode(v)
  elseif type(v) ~= "table" then
    buf[#buf + 1] = json_encode(v)
  elseif kind == "array" then
    local elem, n = r.params.elem, rawlen(v)
    if n == 0 and next(v) == nil then
      buf[#buf + 1] = "[]"
    elseif not elem.has_array then
      buf[#buf + 1] = json_encode(v)
    else
      buf[#buf + 1] = "["
      for i = 1, n do
        if i > 1 then buf[#buf + 1] = "," end
        encode_into(elem, v[i], buf)
      end
      buf[#buf + 1] = "]"
    end
  else  -- struct or map
    local keys, fields, elem
    if kind == "struct" then
      keys, fields = r.names, r.params.fields
    else
      elem, keys = r.params.elem, {}
      for k in next, v do keys[#keys + 1] = k end
      sort(keys, key_before)
    end
    buf[#buf + 1] = "{"
    local first = true
    for _, k in ipairs(keys) do
      local e = rawget(v, k)
      if e ~= nil then
        if not first then buf[#buf + 1] = "," end
        first = false
        buf[#buf + 1] = json_encode(k)
        buf[#buf + 1] = ":"
        encode_into(fields and fields[k] or elem, e, buf)
      end
    end
    buf[#buf + 1] = "}"
  end
end

-- JSON text of a value that validated against s.
function S.encode(s, value)
  local r = recs[s] or rec_of(s, 3)
  if not r.has_array then return json_encode(value) end
  local buf = {}
  encode_into(r, value, buf)
  return concat(buf)
end

return S
