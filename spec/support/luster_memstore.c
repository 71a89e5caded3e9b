/* luster_memstore.c - Lua 5.4 module driving the embedded message store
 * (storage/memory.c) alone, on its own scheduler and a virtual clock, for
 * spec/memstore_spec.lua: no host, entity or router above it. */
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>

#include "loop/clock.h"
#include "loop/msg.h"
#include "loop/sched.h"
#include "storage/storage.h"

typedef struct {
  uv_loop_t loop;
  sched_t sched;
  vclock_t clock;
  mem_store_t *ms;
} mstate_t;

static mstate_t *ms_state(lua_State *L) { return luaL_checkudata(L, 1, "luster.memstore"); }

/* new(retention_ms) -> a store on a fresh loop and virtual clock. */
static int lm_new(lua_State *L) {
  uint64_t keep = (uint64_t)luaL_checkinteger(L, 1);
  mstate_t *st = lua_newuserdatauv(L, sizeof *st, 0);
  memset(st, 0, sizeof *st);
  uv_loop_init(&st->loop);
  sched_init(&st->sched, &st->loop);
  clock_virtual_init(&st->clock, 1000000);
  sched_set_clock(&st->sched, &st->clock.clock);
  st->ms = storage_new(&st->sched, NULL, keep); /* no durable state here */
  luaL_setmetatable(L, "luster.memstore");
  return 1;
}

static const char *const status_names[] = {"new", "pending", "done", "conflict"};

/* st:put(rid, id, payload, pk) -> status; st:reply(...) follows. */
static int lm_put(lua_State *L) {
  mstate_t *st = ms_state(L);
  size_t il, pl;
  const char *id = luaL_checklstring(L, 3, &il), *payload = luaL_checklstring(L, 4, &pl);
  const char *pk = luaL_optstring(L, 5, NULL);
  /* storage_put reads only these fields: no type is needed. */
  msg_t msg, *m = &msg;
  memset(m, 0, sizeof *m);
  m->id = (char *)id;
  m->id_len = il;
  m->payload = (char *)payload;
  m->payload_len = pl;
  m->request_id = (uint64_t)luaL_checkinteger(L, 2);
  storage_names_t names = {"T", "rpc", 1, 3};
  store_status_t status;
  pmsg_t *p = storage_put(st->ms, m, &names, pk, &status);
  if (p && status == STORE_NEW) {
    /* Answer at once: the store keeps the reply for the retention period. */
    p->base.reply(&p->base, REPLY_OK, "42", 2, NULL, NULL, NULL, NULL);
  }
  lua_pushstring(L, p ? status_names[status] : "oom");
  return 1;
}

static void lm__got(call_t *c, reply_kind_t kind, const char *body, size_t len) {
  lua_State *L = c->ud;
  lua_pushstring(L, reply_kind_name(kind));
  lua_pushlstring(L, body, len);
}

/* st:get(rid) -> kind, body (after the ready queue runs). */
static int lm_get(lua_State *L) {
  mstate_t *st = ms_state(L);
  int top = lua_gettop(L);
  call_t *c = call_new(&st->sched, lm__got, L, 0);
  storage_get(st->ms, (uint64_t)luaL_checkinteger(L, 2), c);
  sched_drain(&st->sched);
  return lua_gettop(L) - top;
}

static int lm_count(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)storage_count(ms_state(L)->ms));
  return 1;
}

static int lm_advance(lua_State *L) {
  mstate_t *st = ms_state(L);
  clock_advance(&st->clock, &st->sched, (uint64_t)luaL_checkinteger(L, 2));
  sched_drain(&st->sched);
  return 0;
}

static int lm_gc(lua_State *L) {
  mstate_t *st = ms_state(L);
  if (!st->ms) return 0;
  storage_free(st->ms);
  st->ms = NULL;
  sched_drain(&st->sched);
  sched_close(&st->sched);
  uv_run(&st->loop, UV_RUN_DEFAULT);
  uv_loop_close(&st->loop);
  return 0;
}

int luaopen_luster_memstore(lua_State *L) {
  static const luaL_Reg methods[] = {{"put", lm_put}, {"get", lm_get}, {"count", lm_count},
                                     {"advance", lm_advance}, {"close", lm_gc}, {NULL, NULL}};
  luaL_newmetatable(L, "luster.memstore");
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, lm_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushcfunction(L, lm_new);
  lua_setfield(L, -2, "new");
  return 1;
}
