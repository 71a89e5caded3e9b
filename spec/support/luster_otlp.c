/* luster_otlp.c - Lua 5.4 module for spec/otlp_spec.lua: core/otlp.c's
 * protobuf and JSON encodings of spans, and net/otlp_export.c run on a libuv loop of its own
 * until it has sent (or given up on) what it was handed. */
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/otlp.h"
#include "net/otlp_export.h"

static int ot__hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Reads field `key` of the table at idx, n bytes as 2n hex digits; absent
 * leaves out zero. */
static void ot__hexfield(lua_State *L, int idx, const char *key, uint8_t *out, size_t n) {
  memset(out, 0, n);
  lua_getfield(L, idx, key);
  if (!lua_isnil(L, -1)) {
    size_t len;
    const char *s = luaL_checklstring(L, -1, &len);
    if (len != 2 * n) luaL_error(L, "span field %s: expected %d hex digits, got %q", key, (int)(2 * n), s);
    for (size_t i = 0; i < n; i++) {
      int hi = ot__hexval(s[2 * i]), lo = ot__hexval(s[2 * i + 1]);
      if (hi < 0 || lo < 0) luaL_error(L, "span field %s: not hex: %s", key, s);
      out[i] = (uint8_t)(hi * 16 + lo);
    }
  }
  lua_pop(L, 1);
}

static lua_Integer ot__intfield(lua_State *L, int idx, const char *key) {
  lua_getfield(L, idx, key);
  lua_Integer v = luaL_optinteger(L, -1, 0);
  lua_pop(L, 1);
  return v;
}

/* A string field of the table at idx; the table keeps it alive. */
static const char *ot__strfield(lua_State *L, int idx, const char *key) {
  lua_getfield(L, idx, key);
  const char *s = luaL_optstring(L, -1, NULL);
  lua_pop(L, 1);
  return s;
}

/* Reads the span table at idx into s (strings borrowed from the table). */
static void ot__span(lua_State *L, int idx, otlp_span_t *s) {
  idx = lua_absindex(L, idx);
  luaL_checktype(L, idx, LUA_TTABLE);
  otlp_span_init(s);
  ot__hexfield(L, idx, "trace_id", s->trace_id, TRACE_ID_LEN);
  ot__hexfield(L, idx, "span_id", s->span_id, TRACE_SPAN_LEN);
  ot__hexfield(L, idx, "parent_id", s->parent_id, TRACE_SPAN_LEN);
  s->flags = (uint8_t)ot__intfield(L, idx, "flags");
  s->name = ot__strfield(L, idx, "name");
  s->kind = (otlp_kind_t)ot__intfield(L, idx, "kind");
  s->start_ns = (uint64_t)ot__intfield(L, idx, "start_ns");
  s->end_ns = (uint64_t)ot__intfield(L, idx, "end_ns");
  s->status = (otlp_status_t)ot__intfield(L, idx, "status");
  s->status_msg = ot__strfield(L, idx, "status_message");
  lua_getfield(L, idx, "attrs"); /* an array of {key, value}, kept in order */
  if (lua_istable(L, -1)) {
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, -1, i);
      lua_rawgeti(L, -1, 1);
      lua_rawgeti(L, -2, 2);
      const char *key = lua_tostring(L, -2);
      int r = lua_isinteger(L, -1) ? otlp_span_attr_int(s, key, lua_tointeger(L, -1))
                                   : otlp_span_attr_str(s, key, lua_tostring(L, -1));
      if (r < 0) luaL_error(L, "attribute %d (%s) refused: %s", (int)i, key ? key : "no key", strerror(-r));
      lua_pop(L, 3);
    }
  }
  lua_pop(L, 1);
}

/* The protocol named by the string at idx ("http/protobuf" when absent). */
static otlp_protocol_t ot__protocol(lua_State *L, int idx) {
  const char *name = luaL_optstring(L, idx, "http/protobuf");
  otlp_protocol_t p;
  if (otlp_protocol_parse(name, &p) != 0) luaL_error(L, "unknown OTLP protocol %s", name);
  return p;
}

/* encode(spans [, runner [, protocol]]) -> the ExportTraceServiceRequest,
 * protobuf unless protocol is "http/json" */
static int ot_encode(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const char *runner = luaL_optstring(L, 2, NULL);
  otlp_protocol_t proto = ot__protocol(L, 3);
  lua_Integer n = luaL_len(L, 1);
  otlp_span_t *spans = lua_newuserdatauv(L, sizeof *spans * (size_t)(n ? n : 1), 0);
  const otlp_span_t **v = lua_newuserdatauv(L, sizeof *v * (size_t)(n ? n : 1), 0);
  for (lua_Integer i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    ot__span(L, -1, &spans[i]);
    lua_pop(L, 1);
    v[i] = &spans[i];
  }
  buf_t b;
  buf_init(&b);
  otlp_encode(&b, proto, runner, v, (size_t)n);
  lua_pushlstring(L, b.data, b.len);
  buf_free(&b);
  return 1;
}

typedef struct {
  otlp_exporter_stats_t final;
  int closed;
  char states[8][200]; /* the state callbacks, "failing: why" or "ok" */
  int nstates;
  uv_timer_t stop;  /* ends the run_ms phase at the latest */
  uv_timer_t check; /* ends it as soon as the exporter is idle */
  otlp_exporter_t *ex;
} run_t;

static void ot__on_state(void *ud, int failing, const char *why) {
  run_t *r = ud;
  if (r->nstates < 8) snprintf(r->states[r->nstates++], sizeof r->states[0], "%s%s", failing ? "failing: " : "ok", why);
}

static void ot__on_closed(void *ud, const otlp_exporter_stats_t *final) {
  run_t *r = ud;
  r->final = *final;
  r->closed = 1;
}

static void ot__on_stop(uv_timer_t *t) { uv_stop(t->loop); }

static void ot__on_check(uv_timer_t *t) {
  run_t *r = t->data;
  if (otlp_exporter_idle(r->ex)) uv_stop(t->loop);
}

static void ot__push_stats(lua_State *L, const otlp_exporter_stats_t *st) {
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, (lua_Integer)st->sent);
  lua_setfield(L, -2, "sent");
  lua_pushinteger(L, (lua_Integer)st->dropped);
  lua_setfield(L, -2, "dropped");
  lua_pushinteger(L, (lua_Integer)st->failed);
  lua_setfield(L, -2, "failed");
  lua_pushinteger(L, (lua_Integer)st->requests);
  lua_setfield(L, -2, "requests");
  lua_pushinteger(L, (lua_Integer)st->queued);
  lua_setfield(L, -2, "queued");
  lua_pushinteger(L, (lua_Integer)st->in_flight);
  lua_setfield(L, -2, "in_flight");
  lua_pushboolean(L, st->failing);
  lua_setfield(L, -2, "failing");
  lua_pushstring(L, st->last_error);
  lua_setfield(L, -2, "last_error");
}

/* The loop runs until the exporter closed. With opts.run_ms, it first runs
 * until nothing is queued or in flight, for run_ms at most, without a
 * flush: the batches then go by the exporter's timer alone. */
static void ot__drive(lua_State *L, uv_loop_t *loop, otlp_exporter_t *ex, run_t *r, lua_Integer run_ms, int flush) {
  if (run_ms > 0) {
    r->ex = ex;
    uv_timer_init(loop, &r->stop);
    uv_timer_init(loop, &r->check);
    r->check.data = r;
    uv_timer_start(&r->stop, ot__on_stop, (uint64_t)run_ms, 0);
    uv_timer_start(&r->check, ot__on_check, 5, 5);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&r->stop, NULL);
    uv_close((uv_handle_t *)&r->check, NULL);
    otlp_exporter_stats_t st;
    otlp_exporter_stats(ex, &st);
    ot__push_stats(L, &st);
    lua_setfield(L, -2, "before_close");
  }
  if (flush) otlp_exporter_flush(ex);
  otlp_exporter_close(ex, ot__on_closed, r);
  while (!r->closed) uv_run(loop, UV_RUN_ONCE);
  uv_run(loop, UV_RUN_NOWAIT); /* the closes of the run_ms timers */
}

/* export_to(url, spans, opts) -> counts (sent, dropped, failed, requests,
 * states, before_close), or nil and the exporter's error. opts: cap,
 * batch, interval_ms, timeout_ms, runner, run_ms, flush (default true),
 * protocol ("http/protobuf" or "http/json"; the exporter's default when
 * absent). */
static int ot_export_to(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  if (lua_isnoneornil(L, 3)) lua_newtable(L);
  else luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  uv_loop_t loop;
  uv_loop_init(&loop);
  char *err = NULL;
  otlp_exporter_t *ex = otlp_exporter_new(&loop, url, (size_t)ot__intfield(L, 3, "cap"), &err);
  if (!ex) {
    uv_loop_close(&loop);
    lua_pushnil(L);
    lua_pushstring(L, err);
    free(err);
    return 2;
  }
  run_t *r = lua_newuserdatauv(L, sizeof *r, 0); /* index 4 */
  memset(r, 0, sizeof *r);
  otlp_exporter_on_state(ex, ot__on_state, r);
  lua_getfield(L, 3, "protocol");
  if (!lua_isnil(L, -1)) otlp_exporter_set_protocol(ex, ot__protocol(L, -1));
  lua_pop(L, 1);
  otlp_exporter_set_runner(ex, ot__strfield(L, 3, "runner"));
  otlp_exporter_set_timing(ex, (size_t)ot__intfield(L, 3, "batch"), (uint64_t)ot__intfield(L, 3, "interval_ms"),
                           (uint64_t)ot__intfield(L, 3, "timeout_ms"));
  lua_getfield(L, 3, "flush");
  int flush = lua_isnil(L, -1) || lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_newtable(L); /* the result, index 5 */
  lua_Integer n = luaL_len(L, 2), refused = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    otlp_span_t s;
    lua_rawgeti(L, 2, i);
    ot__span(L, -1, &s);
    if (otlp_exporter_add(ex, &s) < 0) refused++;
    lua_pop(L, 1);
  }
  lua_pushinteger(L, refused);
  lua_setfield(L, 5, "refused");
  ot__drive(L, &loop, ex, r, ot__intfield(L, 3, "run_ms"), flush);
  int rc = uv_loop_close(&loop);
  ot__push_stats(L, &r->final);
  lua_pushboolean(L, rc == 0);
  lua_setfield(L, -2, "loop_closed");
  lua_createtable(L, r->nstates, 0);
  for (int i = 0; i < r->nstates; i++) {
    lua_pushstring(L, r->states[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "states");
  /* copy refused and before_close over */
  lua_getfield(L, 5, "refused");
  lua_setfield(L, -2, "refused");
  lua_getfield(L, 5, "before_close");
  lua_setfield(L, -2, "before_close");
  return 1;
}

int luaopen_luster_otlp(lua_State *L) {
  static const luaL_Reg fns[] = {{"encode", ot_encode}, {"export_to", ot_export_to}, {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}
