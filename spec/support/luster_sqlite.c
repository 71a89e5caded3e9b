/* luster_sqlite.c - Lua 5.4 module driving storage/sqlite.c on a libuv loop
 * of its own, for spec/sqlite_store_spec.lua: the durable entity state
 * operations (estate.h) and the message operations they share transactions
 * with, without a runner. Operations only queue; st:run() runs the loop
 * until every queued callback has run and returns their results in the
 * order they ran. */
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "storage/sqlite.h"

typedef struct {
  uv_loop_t loop;
  sqls_t *s;
  const ms_ops_t *ops;
  estate_ops_t es;
  lua_State *L; /* during run() */
  int results;  /* registry ref of the results table */
  int pending;
} store_t;

typedef struct {
  store_t *st;
  const char *op;
} pend_t;

static store_t *st__check(lua_State *L) {
  store_t *st = luaL_checkudata(L, 1, "luster_sqlite.store");
  if (!st->s) luaL_error(L, "the store is closed");
  return st;
}

static pend_t *st__pend(store_t *st, const char *op) {
  pend_t *p = malloc(sizeof *p);
  p->st = st;
  p->op = op;
  st->pending++;
  return p;
}

/* Appends a new result table (op, ok, err) and leaves it on the stack. */
static lua_State *st__result(pend_t *p, int ok, const char *err) {
  store_t *st = p->st;
  lua_State *L = st->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, st->results);
  lua_newtable(L);
  lua_pushstring(L, p->op);
  lua_setfield(L, -2, "op");
  lua_pushboolean(L, ok);
  lua_setfield(L, -2, "ok");
  if (err) {
    lua_pushstring(L, err);
    lua_setfield(L, -2, "err");
  }
  lua_pushvalue(L, -1);
  lua_rawseti(L, -3, (lua_Integer)lua_rawlen(L, -3) + 1);
  lua_remove(L, -2);
  st->pending--;
  free(p);
  return L;
}

static void st__done(void *ud, int ok, const char *err) { lua_pop(st__result(ud, ok, err), 1); }

static void st__loaded(void *ud, int ok, int found, const char *bytes, size_t len, const char *err) {
  lua_State *L = st__result(ud, ok, err);
  lua_pushboolean(L, found);
  lua_setfield(L, -2, "found");
  if (found) {
    lua_pushlstring(L, bytes, len);
    lua_setfield(L, -2, "bytes");
  }
  lua_pop(L, 1);
}

static void st__put_done(void *ud, ms_put_status_t status, uint64_t seq, int kind, const char *reply, size_t len,
                         const char *err) {
  lua_State *L = st__result(ud, status != MS_FAILED, err);
  lua_pushinteger(L, (lua_Integer)seq);
  lua_setfield(L, -2, "seq");
  lua_pushinteger(L, (lua_Integer)status);
  lua_setfield(L, -2, "status");
  lua_pop(L, 1);
}

static void st__state_done(void *ud, int ok, uint64_t seq, int found, int done, int kind, const char *reply,
                           size_t len, const char *err) {
  lua_State *L = st__result(ud, ok, err);
  lua_pushboolean(L, found);
  lua_setfield(L, -2, "found");
  lua_pushboolean(L, done);
  lua_setfield(L, -2, "done");
  if (done) {
    lua_pushlstring(L, reply, len);
    lua_setfield(L, -2, "reply");
  }
  lua_pop(L, 1);
}

/* open(path [, full]) -> store | nil, err */
static int l_open(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int full = lua_toboolean(L, 2);
  store_t *st = lua_newuserdatauv(L, sizeof *st, 0);
  memset(st, 0, sizeof *st);
  uv_loop_init(&st->loop);
  char err[1024];
  st->s = sqls_open(&st->loop, path, full, err, sizeof err);
  if (!st->s) {
    uv_loop_close(&st->loop);
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  st->ops = sqls_ops(st->s);
  st->es = sqls_estate_ops(st->s);
  lua_newtable(L);
  st->results = luaL_ref(L, LUA_REGISTRYINDEX);
  luaL_setmetatable(L, "luster_sqlite.store");
  return 1;
}

/* st:save(type, id, bytes | nil) */
static int l_save(lua_State *L) {
  store_t *st = st__check(L);
  estate_write_t w;
  w.type = luaL_checklstring(L, 2, &w.type_len);
  w.id = luaL_checklstring(L, 3, &w.id_len);
  w.bytes = lua_isnoneornil(L, 4) ? NULL : luaL_checklstring(L, 4, &w.len);
  if (!w.bytes) w.len = 0;
  st->es.save(st->es.ctx, &w, st__done, st__pend(st, "save"));
  return 0;
}

/* st:load(type, id) */
static int l_load(lua_State *L) {
  store_t *st = st__check(L);
  size_t tl, il;
  const char *t = luaL_checklstring(L, 2, &tl), *id = luaL_checklstring(L, 3, &il);
  st->es.load(st->es.ctx, t, tl, id, il, st__loaded, st__pend(st, "load"));
  return 0;
}

/* st:put(type, id, rpc, payload [, dedupe]); type false stores a NULL type,
 * which the table refuses: the specs' way to make one job of a batch fail. */
static int l_put(lua_State *L) {
  store_t *st = st__check(L);
  ms_msg_t m;
  memset(&m, 0, sizeof m);
  m.shard = 1;
  m.type = lua_toboolean(L, 2) ? luaL_checklstring(L, 2, &m.type_len) : NULL;
  m.id = luaL_checklstring(L, 3, &m.id_len);
  m.rpc = luaL_checklstring(L, 4, &m.rpc_len);
  m.payload = luaL_checklstring(L, 5, &m.payload_len);
  m.dedupe = luaL_optstring(L, 6, NULL);
  st->ops->put(st->ops->ctx, &m, st__put_done, st__pend(st, "put"));
  return 0;
}

/* st:reply(seq, body [, type, id, bytes | false]): with type and id, the
 * state write (bytes false: forget) goes with the reply. */
static int l_reply(lua_State *L) {
  store_t *st = st__check(L);
  uint64_t seq = (uint64_t)luaL_checkinteger(L, 2);
  size_t len;
  const char *body = luaL_checklstring(L, 3, &len);
  estate_write_t w, *wp = NULL;
  if (!lua_isnoneornil(L, 4)) {
    w.type = luaL_checklstring(L, 4, &w.type_len);
    w.id = luaL_checklstring(L, 5, &w.id_len);
    w.bytes = lua_toboolean(L, 6) ? luaL_checklstring(L, 6, &w.len) : NULL;
    if (!w.bytes) w.len = 0;
    wp = &w;
  }
  st->ops->reply(st->ops->ctx, seq, 0, body, len, wp, st__done, st__pend(st, "reply"));
  return 0;
}

/* st:state(seq) */
static int l_state(lua_State *L) {
  store_t *st = st__check(L);
  st->ops->state(st->ops->ctx, (uint64_t)luaL_checkinteger(L, 2), st__state_done, st__pend(st, "state"));
  return 0;
}

/* st:run() -> results (in callback order); st:results() peeks without running. */
static int l_run(lua_State *L) {
  store_t *st = st__check(L);
  st->L = L;
  while (st->pending > 0) uv_run(&st->loop, UV_RUN_ONCE);
  st->L = NULL;
  lua_rawgeti(L, LUA_REGISTRYINDEX, st->results);
  luaL_unref(L, LUA_REGISTRYINDEX, st->results);
  lua_newtable(L);
  st->results = luaL_ref(L, LUA_REGISTRYINDEX);
  return 1;
}

static int l_results(lua_State *L) {
  store_t *st = st__check(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, st->results);
  return 1;
}

/* st:commits() -> transactions committed so far */
static int l_commits(lua_State *L) {
  store_t *st = st__check(L);
  lua_pushinteger(L, (lua_Integer)st->ops->stats(st->ops->ctx)->read_batches);
  return 1;
}

/* st:close(): queued operations run (their results are dropped). */
static int l_close(lua_State *L) {
  store_t *st = luaL_checkudata(L, 1, "luster_sqlite.store");
  if (!st->s) return 0;
  st->L = L;
  st->ops->close(st->ops->ctx);
  st->s = NULL;
  st->L = NULL;
  uv_run(&st->loop, UV_RUN_DEFAULT);
  uv_loop_close(&st->loop);
  luaL_unref(L, LUA_REGISTRYINDEX, st->results);
  return 0;
}

int luaopen_luster_sqlite(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"save", l_save},   {"load", l_load},       {"put", l_put},         {"reply", l_reply}, {"state", l_state},
      {"run", l_run},     {"results", l_results}, {"commits", l_commits}, {"close", l_close}, {"__gc", l_close},
      {NULL, NULL},
  };
  luaL_newmetatable(L, "luster_sqlite.store");
  luaL_setfuncs(L, methods, 0);
  lua_pushvalue(L, -1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushcfunction(L, l_open);
  lua_setfield(L, -2, "open");
  return 1;
}
