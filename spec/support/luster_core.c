/* luster_core.c - Lua 5.4 module exposing runtime/core to the busted specs
 * (spec/core_spec.lua). A thin adapter: argument checking, conversion, and
 * error strings; every decision is made by the core itself. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "core/hash.h"
#include "core/parse.h"
#include "core/ring.h"
#include "core/url.h"

/* Keeps the owner array and the member copy of ring_assign bounded: the
 * specs never need more, and a typo should not allocate gigabytes. */
#define CORE_MAX_SHARDS (1 << 24)
#define CORE_DEFAULT_MAXSEGS 32

static int core_fail(lua_State *L, const char *fmt, const char *value) {
  lua_pushnil(L);
  lua_pushfstring(L, fmt, value);
  return 2;
}

/* hash(s) -> integer: the 64-bit hash_bytes as a Lua integer (two's
 * complement, so string.format("%016x", h) shows the unsigned value). */
static int core_hash(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_pushinteger(L, (lua_Integer)hash_bytes(s, n));
  return 1;
}

/* shard(id, nshards) -> 1..nshards (0 when nshards is 0). */
static int core_shard(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_Integer ns = luaL_checkinteger(L, 2);
  luaL_argcheck(L, ns >= 0 && ns <= (lua_Integer)UINT32_MAX, 2, "shard count out of range");
  lua_pushinteger(L, (lua_Integer)hash_shard(s, n, (uint32_t)ns));
  return 1;
}

static int core_push_u64(lua_State *L, uint64_t v, const char *what, const char *s) {
  if (v > (uint64_t)LUA_MAXINTEGER) return core_fail(L, what, s);
  lua_pushinteger(L, (lua_Integer)v);
  return 1;
}

/* The parsers take C strings (flags and env vars cannot hold a NUL); a Lua
 * string with one inside becomes "", which every parser refuses, rather
 * than being cut short into something valid. */
static const char *core_cstring(lua_State *L, int arg) {
  size_t n;
  const char *s = luaL_checklstring(L, arg, &n);
  return strlen(s) == n ? s : "";
}

/* parse_duration(s) -> ms | nil, errmsg */
static int core_parse_duration(lua_State *L) {
  const char *s = core_cstring(L, 1);
  uint64_t ms;
  if (parse_duration_ms(s, &ms) != 0)
    return core_fail(L, "invalid duration \"%s\": use e.g. 250ms, 60s, 1.5s, 5m, 1h, 2d", s);
  return core_push_u64(L, ms, "duration \"%s\" is too large for a Lua integer", s);
}

/* parse_size(s) -> bytes | nil, errmsg */
static int core_parse_size(lua_State *L) {
  const char *s = core_cstring(L, 1);
  uint64_t b;
  if (parse_size(s, &b) != 0)
    return core_fail(L, "invalid size \"%s\": use e.g. 1024, 512K, 256M, 1G", s);
  return core_push_u64(L, b, "size \"%s\" is too large for a Lua integer", s);
}

/* parse_hostport(s) -> host, port | nil, errmsg */
static int core_parse_hostport(lua_State *L) {
  const char *s = core_cstring(L, 1);
  char host[256];
  int port;
  if (parse_hostport(s, host, sizeof host, &port) != 0)
    return core_fail(L, "invalid address \"%s\": use HOST:PORT, [IPv6]:PORT or :PORT", s);
  lua_pushstring(L, host);
  lua_pushinteger(L, port);
  return 2;
}

/* url_split(url) -> path, query ("" when there is none) */
static int core_url_split(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  slice_t path, query;
  if (url_split(s, n, &path, &query) != 0) return core_fail(L, "invalid url \"%s\"", s);
  lua_pushlstring(L, path.ptr, path.len);
  lua_pushlstring(L, query.ptr, query.len);
  return 2;
}

/* url_segments(path [, maxsegs]) -> { segment, ... } | nil, errmsg */
static int core_url_segments(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_Integer maxsegs = luaL_optinteger(L, 2, CORE_DEFAULT_MAXSEGS);
  luaL_argcheck(L, maxsegs >= 0 && maxsegs <= 4096, 2, "maxsegs out of range");
  /* n bytes always suffice (see url.h); +1 so an empty path still gets a
   * valid buffer. */
  char *out = lua_newuserdatauv(L, n + 1, 0);
  slice_t *segs = lua_newuserdatauv(L, sizeof(slice_t) * (size_t)(maxsegs + 1), 0);
  int k = url_segments(s, n, out, n + 1, segs, (int)maxsegs);
  if (k < 0) return core_fail(L, "invalid path \"%s\"", s);
  lua_createtable(L, k, 0);
  for (int i = 0; i < k; i++) {
    lua_pushlstring(L, segs[i].ptr, segs[i].len);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* query_get(q, key) -> value | nil, "absent" | nil, errmsg */
static int core_query_get(lua_State *L) {
  size_t n;
  const char *q = luaL_checklstring(L, 1, &n);
  const char *key = luaL_checkstring(L, 2);
  char *out = lua_newuserdatauv(L, n + 1, 0); /* a value never decodes longer */
  int len = url_query_get(q, n, key, out, n + 1);
  if (len == -ENOENT) return core_fail(L, "absent: %s", key);
  if (len < 0) return core_fail(L, "invalid query value for %s", key);
  lua_pushlstring(L, out, (size_t)len);
  return 1;
}

/* ring_assign({{id=, weight=}, ...}, nshards [, factor]) -> { id | false, ... }
 * | nil, errmsg. weight defaults to 1, factor to 1.25. */
static int core_ring_assign(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer ns = luaL_checkinteger(L, 2);
  double factor = (double)luaL_optnumber(L, 3, 1.25);
  luaL_argcheck(L, ns >= 0 && ns <= CORE_MAX_SHARDS, 2, "shard count out of range");
  lua_Integer n = luaL_len(L, 1);
  luaL_argcheck(L, n >= 0 && n <= 100000, 1, "too many members");

  ring_member_t *m = lua_newuserdatauv(L, sizeof *m * (size_t)(n + 1), 0);
  for (lua_Integer i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    luaL_argcheck(L, lua_istable(L, -1), 1, "members must be tables {id=, weight=}");
    luaL_argcheck(L, lua_getfield(L, -1, "id") == LUA_TSTRING, 1, "member id must be a string");
    /* The string stays referenced by the member table, itself referenced by
     * argument 1, so the pointer outlives this call. */
    m[i].id = lua_tostring(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, -1, "weight");
    lua_Integer w = lua_isnil(L, -1) ? 1 : luaL_checkinteger(L, -1);
    luaL_argcheck(L, w >= 0 && w <= (lua_Integer)UINT32_MAX, 1, "member weight out of range");
    m[i].weight = (uint32_t)w;
    lua_pop(L, 2);
  }

  int32_t *owner = lua_newuserdatauv(L, sizeof *owner * (size_t)(ns > 0 ? ns : 1), 0);
  int rc = ring_assign(m, (int)n, (uint32_t)ns, factor, owner);
  if (rc == -EINVAL) return core_fail(L, "%s", "invalid ring arguments (no shards, or duplicate ids)");
  if (rc != 0) return core_fail(L, "%s", "ring_assign failed: out of memory");

  lua_createtable(L, (int)ns, 0);
  for (lua_Integer s = 0; s < ns; s++) {
    if (owner[s] < 0) {
      lua_pushboolean(L, 0);
    } else {
      lua_rawgeti(L, 1, owner[s] + 1);
      lua_getfield(L, -1, "id");
      lua_remove(L, -2);
    }
    lua_rawseti(L, -2, s + 1);
  }
  return 1;
}

static const luaL_Reg core_funcs[] = {
  {"hash", core_hash},
  {"shard", core_shard},
  {"parse_duration", core_parse_duration},
  {"parse_size", core_parse_size},
  {"parse_hostport", core_parse_hostport},
  {"url_split", core_url_split},
  {"url_segments", core_url_segments},
  {"query_get", core_query_get},
  {"ring_assign", core_ring_assign},
  {NULL, NULL},
};

int luaopen_luster_core(lua_State *L);

int luaopen_luster_core(lua_State *L) {
  luaL_newlib(L, core_funcs);
  return 1;
}
