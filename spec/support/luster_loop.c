/* luster_loop.c - Lua 5.4 module driving loop/sched.c on a virtual clock
 * (loop/clock.h), for spec/clock_spec.lua: timers are added at due times,
 * the clock is advanced, and the module reports which timers fired, in
 * which order and at which clock time, without a runner and without
 * waiting for real time. */
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "loop/clock.h"
#include "loop/sched.h"

typedef struct {
  timer_entry_t t;
  int id;
  uint64_t rearm_every; /* > 0: adds itself again this much later */
} vtimer_t;

/* The spec drives one scheduler at a time, so one state for the module. */
typedef struct {
  uv_loop_t loop;
  sched_t sched;
  vclock_t clock;
  lua_State *L;
  int fired; /* registry ref of the list of {id, at} */
} lstate_t;

static lstate_t *ls;

static void lp__fire(timer_entry_t *te) {
  vtimer_t *v = (vtimer_t *)te;
  lua_State *L = ls->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, ls->fired);
  lua_createtable(L, 2, 0);
  lua_pushinteger(L, v->id);
  lua_rawseti(L, -2, 1);
  lua_pushinteger(L, (lua_Integer)sched_now(&ls->sched));
  lua_rawseti(L, -2, 2);
  lua_rawseti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
  lua_pop(L, 1);
  if (v->rearm_every) timer_add(&v->t, sched_now(&ls->sched) + v->rearm_every);
  else free(v);
}

/* start(wall_ms): a scheduler on a fresh loop and a virtual clock. */
static int lp_start(lua_State *L) {
  if (ls) return luaL_error(L, "already started");
  ls = calloc(1, sizeof *ls);
  uv_loop_init(&ls->loop);
  sched_init(&ls->sched, &ls->loop);
  clock_virtual_init(&ls->clock, (uint64_t)luaL_checkinteger(L, 1));
  sched_set_clock(&ls->sched, &ls->clock.clock);
  lua_newtable(L);
  ls->fired = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

/* timer(id, due_ms[, every_ms]) */
static int lp_timer(lua_State *L) {
  vtimer_t *v = calloc(1, sizeof *v);
  v->id = (int)luaL_checkinteger(L, 1);
  v->rearm_every = (uint64_t)luaL_optinteger(L, 3, 0);
  timer_entry_init(&v->t, &ls->sched, lp__fire);
  timer_add(&v->t, (uint64_t)luaL_checkinteger(L, 2));
  return 0;
}

/* advance(ms) -> the timers that fired, as a list of {id, at}. */
static int lp_advance(lua_State *L) {
  ls->L = L;
  lua_newtable(L);
  lua_rawseti(L, LUA_REGISTRYINDEX, ls->fired);
  clock_advance(&ls->clock, &ls->sched, (uint64_t)luaL_checkinteger(L, 1));
  /* The real loop has nothing to wake for: its timer stays stopped. */
  uv_run(&ls->loop, UV_RUN_NOWAIT);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ls->fired);
  return 1;
}

static int lp_now(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)sched_now(&ls->sched));
  lua_pushinteger(L, (lua_Integer)sched_wall_ms(&ls->sched));
  return 2;
}

/* stop(): frees the scheduler; pending timers are dropped. */
static int lp_stop(lua_State *L) {
  if (!ls) return 0;
  sched_close(&ls->sched);
  uv_run(&ls->loop, UV_RUN_DEFAULT);
  uv_loop_close(&ls->loop);
  luaL_unref(L, LUA_REGISTRYINDEX, ls->fired);
  free(ls);
  ls = NULL;
  return 0;
}

int luaopen_luster_loop(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"start", lp_start}, {"timer", lp_timer}, {"advance", lp_advance},
      {"now", lp_now},     {"stop", lp_stop},   {NULL, NULL},
  };
  luaL_newlib(L, fns);
  return 1;
}
