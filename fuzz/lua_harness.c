/* lua_harness.c - one Lua state per fuzz process running a harness file
 * against lua/luster (see lua_harness.h). */
#include "lua_harness.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>

#include "host/json.h"

#ifndef LUSTER_SRC_DIR
#error "build with -DLUSTER_SRC_DIR=\"/path/to/the/checkout\""
#endif

/* libFuzzer reads this section as extra coverage counters: one per hash of
 * (previous line, this line) executed in Lua, an edge in the Lua code. */
#define LUA_EDGES 65536
__attribute__((used, section("__libfuzzer_extra_counters"))) static uint8_t lua_edges[LUA_EDGES];
static uintptr_t lua_prev;

static void line_hook(lua_State *L, lua_Debug *ar) {
  if (!lua_getinfo(L, "S", ar)) return;
  uintptr_t here = ((uintptr_t)ar->source >> 4) * 2654435761u ^ (uintptr_t)ar->currentline * 40503u;
  lua_edges[(here ^ (lua_prev >> 1)) % LUA_EDGES]++;
  lua_prev = here;
}

static int open_core(lua_State *L) {
  lua_newtable(L);
  json_push_new(L); /* the codec's scratch, their upvalue */
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, json_lua_decode, 1);
  lua_setfield(L, -3, "json_decode");
  lua_pushcclosure(L, json_lua_encode, 1);
  lua_setfield(L, -2, "json_encode");
  return 1;
}

static lua_State *open_state(const char *name) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_pushstring(L, LUSTER_SRC_DIR "/lua/?.lua;" LUSTER_SRC_DIR "/lua/?/init.lua");
  lua_setfield(L, -2, "path");
  /* luster.json picks the runtime's own codec when luster.core has it. */
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, open_core);
  lua_setfield(L, -2, "luster.core");
  lua_pop(L, 2);
  char path[4096];
  snprintf(path, sizeof path, "%s/fuzz/%s_harness.lua", LUSTER_SRC_DIR, name);
  if (luaL_dofile(L, path) != LUA_OK || !lua_isfunction(L, -1)) {
    fprintf(stderr, "fuzz: cannot load %s: %s\n", path, lua_tostring(L, -1));
    exit(2);
  }
  lua_setfield(L, LUA_REGISTRYINDEX, "fuzz_harness");
  lua_sethook(L, line_hook, LUA_MASKLINE, 0);
  return L;
}

void fuzz_lua_run(const char *name, const uint8_t *data, size_t size) {
  static lua_State *L;
  if (!L) L = open_state(name);
  lua_prev = 0;
  lua_settop(L, 0);
  lua_getfield(L, LUA_REGISTRYINDEX, "fuzz_harness");
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    fprintf(stderr, "fuzz %s: invariant broken: %s\n", name, lua_tostring(L, -1));
    abort();
  }
  lua_gc(L, LUA_GCSTEP, 0);
}
