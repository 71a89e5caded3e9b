/* core_api.c - luster.core: the C functions scripts reach through the luster
 * library (calls, sleeps, keep-alive, the clock, logging). Calls and sleeps
 * yield the running task's coroutine; the ready queue resumes it. */
#include "host/host_int.h"

#include <errno.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "loop/log.h"
#include "host/json.h"


static task_t *core__task(lua_State *L, const char *what) {
  script_t *s = host__script(L);
  task_t *t = s->current;
  if (!t || t->co != L || !lua_isyieldable(L))
    luaL_error(L, "%s can only be used while a handler, activate, singleton or cron job runs "
                  "(not while the script loads, and not inside a coroutine of your own)", what);
  return t;
}

/* Where a task's yield for a call_t (host__task_call_cb) goes on: it was
 * handed the reply's kind, body pointer and length, valid during this
 * resume. Returns (kind, body). */
static int core__reply_k(lua_State *L, int status, lua_KContext kctx) {
  (void)status;
  (void)kctx;
  int top = lua_gettop(L);
  lua_pushstring(L, reply_kind_name((reply_kind_t)lua_tointeger(L, top - 2)));
  lua_pushlstring(L, lua_touserdata(L, top - 1), (size_t)lua_tointeger(L, top));
  return 2;
}

/* Where core.call goes on when its reply comes. An "ok" reply is decoded
 * here, straight from the reply's bytes: (nil, value). Any other: (kind,
 * body). */
static int core__call_k(lua_State *L, int status, lua_KContext kctx) {
  (void)status;
  (void)kctx;
  int top = lua_gettop(L);
  reply_kind_t kind = (reply_kind_t)lua_tointeger(L, top - 2);
  const char *body = lua_touserdata(L, top - 1);
  size_t len = (size_t)lua_tointeger(L, top);
  if (kind == REPLY_OK) {
    lua_pushnil(L);
    json_push_decoded(host__script(L)->host->json, L, body, len);
    if (lua_islightuserdata(L, -1) && !lua_touserdata(L, -1)) { /* null */
      lua_pop(L, 1);
      lua_pushnil(L);
    }
    return 2;
  }
  return core__reply_k(L, status, kctx);
}

/* core.call(type, id, tag, payload, timeout_ms, discard): the payload is any
 * value, encoded here; returns as core__call_k does, or ("encode", why)
 * when the payload cannot be encoded. */
static int core_call(lua_State *L) {
  size_t tl, il, gl, pl;
  const char *type = luaL_checklstring(L, 1, &tl);
  const char *id = luaL_checklstring(L, 2, &il);
  const char *tag = luaL_checklstring(L, 3, &gl);
  lua_Integer timeout = luaL_optinteger(L, 5, 0);
  int discard = lua_toboolean(L, 6);
  task_t *t = core__task(L, "calling an entity");
  host_inst_t *self = t->inst;
  if (!discard && self && self->type->concurrency == 1 && self->type->name_len == tl &&
      memcmp(self->type->name, type, tl) == 0 && self->id_len == il && memcmp(self->id, id, il) == 0) {
    char msg[512];
    snprintf(msg, sizeof msg,
             "%.*s/%.*s called itself (%.*s) while handling a message; with concurrency 1 that call could "
             "never run. Call the logic as a local function, send it with { discard = true }, or raise the "
             "entity's concurrency",
             (int)tl, type, (int)(il > 64 ? 64 : il), id, (int)gl, tag);
    size_t len;
    char *body = reply_error_body(REPLY_DEFECT, NULL, msg, &len);
    lua_pushstring(L, "defect");
    lua_pushlstring(L, body, len);
    free(body);
    return 2;
  }
  const char *why = NULL;
  const char *payload = json_encode_value(t->script->host->json, L, 4, &pl, &why);
  if (!payload) {
    lua_pushliteral(L, "encode");
    lua_pushstring(L, why);
    return 2;
  }
  host_t *h = t->script->host;
  uint64_t tmo = timeout > 0 ? (uint64_t)timeout : h->cfg.call_timeout_ms;
  call_t *c = call_new(h->cfg.sched, host__task_call_cb, t, tmo);
  t->call = c;
  host__span_call_start(t, c, type, tl, tag, gl);
  const placement_ops_t *pl_ops = h->cfg.placement;
  pl_ops->send(pl_ops->ctx, type, tl, id, il, tag, gl, payload, pl, NULL, 0, discard ? MSG_DISCARD : 0, c);
  t->waiting = 1;
  return lua_yieldk(L, 0, 0, core__call_k);
}

static int core_sleep(lua_State *L) {
  lua_Integer ms = luaL_checkinteger(L, 1);
  task_t *t = core__task(L, "luster.sleep");
  timer_add(&t->sleep, sched_now(t->script->host->cfg.sched) + (ms > 0 ? (uint64_t)ms : 0));
  t->waiting = 1;
  return lua_yield(L, 0);
}

static int core_keep_alive(lua_State *L) {
  size_t tl, il;
  const char *type = luaL_checklstring(L, 1, &tl);
  const char *id = luaL_checklstring(L, 2, &il);
  int on = lua_toboolean(L, 3);
  host_t *h = host__script(L)->host;
  etype_t *ty = host_find_type(h, type, tl);
  if (ty) h->cfg.em->keep_alive(ty, id, il, on);
  return 0;
}

static int core_forget(lua_State *L) {
  size_t tl, il;
  const char *type = luaL_checklstring(L, 1, &tl);
  const char *id = luaL_checklstring(L, 2, &il);
  host_t *h = host__script(L)->host;
  etype_t *ty = host_find_type(h, type, tl);
  if (!ty || h->cfg.em->forget(ty, id, il) == -EINVAL)
    return luaL_error(L, "ctx:forget() is for durable entities: %s is not declared with luster.entity(\"%s\", rpcs, "
                         "{ durable = true })", type, type);
  return 0;
}

static int core_runner(lua_State *L) {
  const char *name = host__script(L)->host->cfg.runner_name;
  lua_pushstring(L, name ? name : "local");
  return 1;
}

static int core_wall(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)sched_wall_ms(host__script(L)->host->cfg.sched));
  return 1;
}

static int core_clock(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e9);
  return 1;
}

static int core_log(lua_State *L) {
  const char *level = luaL_checkstring(L, 1);
  const char *msg = luaL_checkstring(L, 2);
  log_level_t lvl = LOG_INFO;
  log_parse_level(level, &lvl);
  const task_t *t = host__script(L)->current;
  if (t && !trace_id_zero(t->trace.trace_id, TRACE_ID_LEN)) {
    /* The line names its trace before the script's text, so the text still
     * ends the line (specs and log parsers read it to the end). */
    char hex[2 * TRACE_ID_LEN + 1];
    trace_hex(t->trace.trace_id, TRACE_ID_LEN, hex);
    log_msg(lvl, "%s: trace=%s %s", host__script(L)->file, hex, msg);
  } else {
    log_msg(lvl, "%s: %s", host__script(L)->file, msg);
  }
  return 0;
}

/* core.trace_id(): the running task's trace id as 32 hex digits (req.trace_id),
 * nil when it has none. */
static int core_trace_id(lua_State *L) {
  const task_t *t = host__script(L)->current;
  if (!t || trace_id_zero(t->trace.trace_id, TRACE_ID_LEN)) return 0;
  char hex[2 * TRACE_ID_LEN + 1];
  trace_hex(t->trace.trace_id, TRACE_ID_LEN, hex);
  lua_pushlstring(L, hex, 2 * TRACE_ID_LEN);
  return 1;
}

/* core.trace_new(): the running task (a cron job, before each run) starts a
 * new trace. */
static int core_trace_new(lua_State *L) {
  task_t *t = core__task(L, "luster.trace_new");
  host_trace_new(t->script->host, &t->trace);
  return 0;
}

/* core.cron(op, name, at): a cron job's bookkeeping in the cluster's
 * database or SQLite file (see msgstore.h); yields, then returns the kind
 * and "a b". On memory storage there is none: returns nothing. */
static int core_cron(lua_State *L) {
  lua_Integer op = luaL_checkinteger(L, 1);
  const char *name = luaL_checkstring(L, 2);
  lua_Integer at = luaL_checkinteger(L, 3);
  host_t *h = host__script(L)->host;
  const placement_ops_t *p = h->cfg.placement;
  if (!p || !p->cron_on(p->ctx)) return 0;
  if (op < 0 || op > 2) return luaL_error(L, "bad cron operation");
  task_t *t = core__task(L, "cron bookkeeping");
  call_t *c = call_new(h->cfg.sched, host__task_call_cb, t, 10000);
  t->call = c;
  p->cron(p->ctx, (int)op, name, at > 0 ? (uint64_t)at : 0, c);
  t->waiting = 1;
  return lua_yieldk(L, 0, 0, core__reply_k);
}

/* core.cron_progress(last, next): a cron job's last instant run and the one
 * it waits for (epoch ms, 0 for none), shown by GET /cluster. */
static int core_cron_progress(lua_State *L) {
  lua_Integer last = luaL_checkinteger(L, 1), next = luaL_checkinteger(L, 2);
  task_t *t = core__task(L, "cron progress");
  t->cron_last_ms = last > 0 ? (uint64_t)last : 0;
  t->cron_next_ms = next > 0 ? (uint64_t)next : 0;
  return 0;
}

static int core_cron_catch_up(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)host__script(L)->host->cfg.cron_catch_up_ms);
  return 1;
}

int host__open_core(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"call", core_call}, {"sleep", core_sleep}, {"keep_alive", core_keep_alive}, {"forget", core_forget}, {"runner", core_runner},
      {"wall", core_wall}, {"now", core_wall}, {"clock", core_clock}, {"log", core_log},
      {"trace_id", core_trace_id}, {"trace_new", core_trace_new},
      {"cron", core_cron}, {"cron_catch_up", core_cron_catch_up},
      {"cron_progress", core_cron_progress}, {NULL, NULL},
  };
  luaL_newlib(L, fns);
  /* The codec's scratch is the host's (host_t.json): their upvalue. */
  json_t *j = host__script(L)->host->json;
  lua_pushlightuserdata(L, j);
  lua_pushcclosure(L, json_lua_encode, 1);
  lua_setfield(L, -2, "json_encode");
  lua_pushlightuserdata(L, j);
  lua_pushcclosure(L, json_lua_decode, 1);
  lua_setfield(L, -2, "json_decode");
  return 1;
}

