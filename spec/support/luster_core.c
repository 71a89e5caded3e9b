/* luster_core.c - Lua 5.4 module exposing runtime/core to the busted specs
 * (spec/core_spec.lua). A thin adapter: argument checking, conversion, and
 * error strings; every decision is made by the core itself. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "core/frame.h"
#include "core/hash.h"
#include "core/histo.h"
#include "core/jsoncanon.h"
#include "core/parse.h"
#include "core/ring.h"
#include "core/trace.h"
#include "core/url.h"
#include "host/json.h"

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

/* --- frames --------------------------------------------------------------- */

/* Field helpers for the frame_encode_* tables: a missing field is 0 or "". */
static uint64_t core_field_int(lua_State *L, const char *name, uint64_t max) {
  lua_getfield(L, 1, name);
  lua_Integer v = lua_isnil(L, -1) ? 0 : luaL_checkinteger(L, -1);
  lua_pop(L, 1);
  /* corr is a full u64: negative integers stand for the values past 2^63. */
  if (max != UINT64_MAX && (v < 0 || (uint64_t)v > max)) luaL_error(L, "frame field %s out of range", name);
  return (uint64_t)v;
}

/* The string stays referenced by the table at argument 1, so the pointer
 * outlives the call. */
static frame_str_t core_field_str(lua_State *L, const char *name) {
  size_t n = 0;
  lua_getfield(L, 1, name);
  const char *s = lua_isnil(L, -1) ? "" : luaL_checklstring(L, -1, &n);
  lua_pop(L, 1);
  if (n > UINT32_MAX) luaL_error(L, "frame field %s too long", name);
  return (frame_str_t){s, (uint32_t)n};
}

static void core_field_fixed(lua_State *L, const char *name, uint8_t *out, size_t n) {
  size_t len = 0;
  lua_getfield(L, 1, name);
  const char *s = lua_isnil(L, -1) ? NULL : luaL_checklstring(L, -1, &len);
  if (s && len != n) luaL_error(L, "frame field %s must be %d bytes", name, (int)n);
  if (s) memcpy(out, s, n); else memset(out, 0, n);
  lua_pop(L, 1);
}

/* frame_encode_request{corr=, flags=, timeout_ms=, stored=, deliver_at=, trace_id= (16 bytes),
 * span_id= (8 bytes), trace_flags=, type=, id=, tag=, payload=, headers=} -> string */
static int core_frame_encode_request(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  frame_request_t r;
  memset(&r, 0, sizeof r);
  core_field_fixed(L, "trace_id", r.trace.trace_id, TRACE_ID_LEN);
  core_field_fixed(L, "span_id", r.trace.span_id, TRACE_SPAN_LEN);
  r.trace.flags = (uint8_t)core_field_int(L, "trace_flags", UINT8_MAX);
  r.corr = core_field_int(L, "corr", UINT64_MAX);
  r.flags = (uint32_t)core_field_int(L, "flags", UINT32_MAX);
  r.timeout_ms = (uint32_t)core_field_int(L, "timeout_ms", UINT32_MAX);
  r.stored = core_field_int(L, "stored", UINT64_MAX);
  r.deliver_at = core_field_int(L, "deliver_at", UINT64_MAX);
  r.type = core_field_str(L, "type");
  r.id = core_field_str(L, "id");
  r.tag = core_field_str(L, "tag");
  r.payload = core_field_str(L, "payload");
  r.headers = core_field_str(L, "headers");
  size_t size = frame_request_size(&r);
  uint8_t *out = lua_newuserdatauv(L, size, 0);
  size_t n = frame_encode_request(out, &r);
  if (n == 0) return luaL_error(L, "request frame too large to encode");
  lua_pushlstring(L, (const char *)out, n);
  return 1;
}

/* frame_encode_reply{corr=, kind=, body=} -> string */
static int core_frame_encode_reply(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  frame_reply_t r;
  r.corr = core_field_int(L, "corr", UINT64_MAX);
  r.kind = (uint8_t)core_field_int(L, "kind", UINT8_MAX);
  r.body = core_field_str(L, "body");
  size_t size = frame_reply_size(&r);
  uint8_t *out = lua_newuserdatauv(L, size, 0);
  size_t n = frame_encode_reply(out, &r);
  if (n == 0) return luaL_error(L, "reply frame too large to encode");
  lua_pushlstring(L, (const char *)out, n);
  return 1;
}

/* The handshake encoders take an optional capacity (default 512) so the
 * specs can see them refuse a buffer that is too small: nil then. */
static int core_push_encoded(lua_State *L, const uint8_t *out, size_t n) {
  if (n == 0) lua_pushnil(L); else lua_pushlstring(L, (const char *)out, n);
  return 1;
}

static size_t core_cap(lua_State *L, int arg) {
  lua_Integer cap = luaL_optinteger(L, arg, 512);
  luaL_argcheck(L, cap >= 0 && cap <= (1 << 20), arg, "capacity out of range");
  return (size_t)cap;
}

/* frame_encode_hello({version=, flags=, nonce=, cluster=} [, cap]) -> string | nil */
static int core_frame_encode_hello(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  size_t cap = core_cap(L, 2);
  frame_hello_t h;
  h.version = (uint8_t)core_field_int(L, "version", UINT8_MAX);
  h.flags = (uint8_t)core_field_int(L, "flags", UINT8_MAX);
  core_field_fixed(L, "nonce", h.nonce, FRAME_NONCE);
  h.cluster = core_field_str(L, "cluster");
  uint8_t *out = lua_newuserdatauv(L, cap ? cap : 1, 0);
  return core_push_encoded(L, out, frame_encode_hello(out, cap, &h));
}

/* frame_encode_auth({nonce=, proof=, runner=} [, cap]) -> string | nil */
static int core_frame_encode_auth(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  size_t cap = core_cap(L, 2);
  frame_auth_t a;
  core_field_fixed(L, "nonce", a.nonce, FRAME_NONCE);
  core_field_fixed(L, "proof", a.proof, FRAME_PROOF);
  a.runner = core_field_str(L, "runner");
  uint8_t *out = lua_newuserdatauv(L, cap ? cap : 1, 0);
  return core_push_encoded(L, out, frame_encode_auth(out, cap, &a));
}

/* frame_encode_auth_ok({proof=} [, cap]) -> string | nil */
static int core_frame_encode_auth_ok(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  size_t cap = core_cap(L, 2);
  frame_auth_ok_t a;
  core_field_fixed(L, "proof", a.proof, FRAME_PROOF);
  uint8_t *out = lua_newuserdatauv(L, cap ? cap : 1, 0);
  return core_push_encoded(L, out, frame_encode_auth_ok(out, cap, &a));
}

static void core_set_str(lua_State *L, const char *name, frame_str_t s) {
  lua_pushlstring(L, s.p, s.n);
  lua_setfield(L, -2, name);
}

static void core_set_int(lua_State *L, const char *name, uint64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, name);
}

static void core_set_bytes(lua_State *L, const char *name, const uint8_t *p, size_t n) {
  lua_pushlstring(L, (const char *)p, n);
  lua_setfield(L, -2, name);
}

static void core_push_frame(lua_State *L, const frame_t *f) {
  static const char *const names[] = {"?", "hello", "auth", "auth_ok", "request", "reply"};
  lua_createtable(L, 0, 10);
  lua_pushstring(L, names[f->type <= FRAME_REPLY ? f->type : 0]);
  lua_setfield(L, -2, "type_name");
  switch (f->type) {
  case FRAME_HELLO:
    core_set_int(L, "version", f->u.hello.version);
    core_set_int(L, "flags", f->u.hello.flags);
    core_set_bytes(L, "nonce", f->u.hello.nonce, FRAME_NONCE);
    core_set_str(L, "cluster", f->u.hello.cluster);
    break;
  case FRAME_AUTH:
    core_set_bytes(L, "nonce", f->u.auth.nonce, FRAME_NONCE);
    core_set_bytes(L, "proof", f->u.auth.proof, FRAME_PROOF);
    core_set_str(L, "runner", f->u.auth.runner);
    break;
  case FRAME_AUTH_OK: core_set_bytes(L, "proof", f->u.auth_ok.proof, FRAME_PROOF); break;
  case FRAME_REQUEST:
    core_set_int(L, "corr", f->u.request.corr);
    core_set_int(L, "flags", f->u.request.flags);
    core_set_int(L, "timeout_ms", f->u.request.timeout_ms);
    core_set_int(L, "stored", f->u.request.stored);
    core_set_int(L, "deliver_at", f->u.request.deliver_at);
    core_set_bytes(L, "trace_id", f->u.request.trace.trace_id, TRACE_ID_LEN);
    core_set_bytes(L, "span_id", f->u.request.trace.span_id, TRACE_SPAN_LEN);
    core_set_int(L, "trace_flags", f->u.request.trace.flags);
    core_set_str(L, "type", f->u.request.type);
    core_set_str(L, "id", f->u.request.id);
    core_set_str(L, "tag", f->u.request.tag);
    core_set_str(L, "payload", f->u.request.payload);
    core_set_str(L, "headers", f->u.request.headers);
    break;
  case FRAME_REPLY:
    core_set_int(L, "corr", f->u.reply.corr);
    core_set_int(L, "kind", f->u.reply.kind);
    core_set_str(L, "body", f->u.reply.body);
    break;
  }
}

/* frame_decode(s [, max_frame]) -> status, fields | nil, used | nil.
 * status is frame_status_name's word; fields and used only for "ok".
 * max_frame defaults to 16 MiB. */
static int core_frame_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_Integer max = luaL_optinteger(L, 2, 16 << 20);
  luaL_argcheck(L, max >= 0, 2, "max_frame must not be negative");
  frame_t f;
  size_t used = 0;
  frame_status_t st = frame_decode((const uint8_t *)s, n, (size_t)max, &f, &used);
  lua_pushstring(L, frame_status_name(st));
  if (st != FRAME_OK) return 1;
  core_push_frame(L, &f);
  lua_pushinteger(L, (lua_Integer)used);
  return 3;
}

/* json_canonical(s) -> canonical text, true | s itself, false (not JSON,
 * or nested too deep). */
static int core_json_canonical(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  buf_t out;
  buf_init(&out);
  int rc = json_canonical(s, n, &out);
  lua_pushlstring(L, out.data ? out.data : "", out.len);
  lua_pushboolean(L, rc == 0);
  buf_free(&out);
  return 2;
}

/* traceparent(s) -> {trace_id=, span_id=, flags=} (hex strings, integer),
 * or nil, "invalid traceparent". */
static int core_traceparent(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  trace_ctx_t t;
  if (trace_parse(s, n, &t) != 0) return core_fail(L, "invalid traceparent: %s", s);
  char hex[2 * TRACE_ID_LEN + 1];
  lua_createtable(L, 0, 3);
  trace_hex(t.trace_id, TRACE_ID_LEN, hex);
  lua_pushstring(L, hex);
  lua_setfield(L, -2, "trace_id");
  trace_hex(t.span_id, TRACE_SPAN_LEN, hex);
  lua_pushstring(L, hex);
  lua_setfield(L, -2, "span_id");
  lua_pushinteger(L, t.flags);
  lua_setfield(L, -2, "flags");
  return 1;
}

/* traceparent_format(s) -> the version 00 header of a parsed traceparent
 * (so a spec can see what a later version reads as), or nil, error. */
static int core_traceparent_format(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  trace_ctx_t t;
  if (trace_parse(s, n, &t) != 0) return core_fail(L, "invalid traceparent: %s", s);
  char out[TRACE_HEADER_LEN + 1];
  trace_format(&t, out);
  lua_pushstring(L, out);
  return 1;
}

/* histogram(name, labels, {ns, ...}) -> the Prometheus sample lines of a
 * histogram that observed these nanosecond durations. */
static int core_histogram(lua_State *L) {
  const char *name = luaL_checkstring(L, 1), *labels = luaL_checkstring(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  histo_t h = {0};
  lua_Integer n = luaL_len(L, 3);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 3, i);
    lua_Integer ns = luaL_checkinteger(L, -1);
    luaL_argcheck(L, ns >= 0, 3, "durations are nanoseconds, not negative");
    histo_observe(&h, (uint64_t)ns);
    lua_pop(L, 1);
  }
  buf_t b;
  buf_init(&b);
  histo_write(&b, name, labels, &h);
  lua_pushlstring(L, b.data ? b.data : "", b.len);
  buf_free(&b);
  return 1;
}

static const luaL_Reg core_funcs[] = {
  {"json_canonical", core_json_canonical},
  {"hash", core_hash},
  {"shard", core_shard},
  {"parse_duration", core_parse_duration},
  {"parse_size", core_parse_size},
  {"parse_hostport", core_parse_hostport},
  {"url_split", core_url_split},
  {"url_segments", core_url_segments},
  {"query_get", core_query_get},
  {"ring_assign", core_ring_assign},
  {"frame_encode_request", core_frame_encode_request},
  {"frame_encode_reply", core_frame_encode_reply},
  {"frame_encode_hello", core_frame_encode_hello},
  {"frame_encode_auth", core_frame_encode_auth},
  {"frame_encode_auth_ok", core_frame_encode_auth_ok},
  {"frame_decode", core_frame_decode},
  {"json_encode", json_lua_encode},
  {"json_decode", json_lua_decode},
  {"traceparent", core_traceparent},
  {"traceparent_format", core_traceparent_format},
  {"histogram", core_histogram},
  {NULL, NULL},
};

int luaopen_luster_core(lua_State *L);

int luaopen_luster_core(lua_State *L) {
  luaL_newlibtable(L, core_funcs);
  json_push_new(L); /* the codec's scratch: every function's upvalue, json_* use it */
  luaL_setfuncs(L, core_funcs, 1);
  return 1;
}
