/* fuzz_json.c - libFuzzer target: host/json.c's decoder on arbitrary text,
 * and its encoder on whatever the decoder returns.
 *
 * Decoding either gives a value or raises an error that says where
 * ("... at character N"). A decoded value encodes (the one exception, as in
 * lua-cjson: a number too large for a double decodes to infinity, which JSON
 * cannot write), and the text it encodes to decodes to an equal value. */
#include <lauxlib.h>
#include <lua.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/json.h"

static void check(int ok, const char *what) {
  if (!ok) {
    fprintf(stderr, "fuzz_json: invariant broken: %s\n", what);
    abort();
  }
}

/* Deep equality of the values at a and b (absolute indices). */
static int same(lua_State *L, int a, int b) {
  int t = lua_type(L, a);
  if (t != lua_type(L, b)) return 0;
  if (t == LUA_TNUMBER) return lua_isinteger(L, a) == lua_isinteger(L, b) && lua_rawequal(L, a, b);
  if (t != LUA_TTABLE) return lua_rawequal(L, a, b);
  luaL_checkstack(L, 4, "deep");
  size_t na = 0, nb = 0;
  lua_pushnil(L);
  while (lua_next(L, a)) {
    na++;
    lua_pushvalue(L, -2);
    lua_rawget(L, b);
    int ok = same(L, lua_gettop(L) - 1, lua_gettop(L));
    lua_pop(L, 2);
    if (!ok) {
      lua_pop(L, 1);
      return 0;
    }
  }
  lua_pushnil(L);
  while (lua_next(L, b)) {
    nb++;
    lua_pop(L, 1);
  }
  return na == nb;
}

static json_t *fz_json; /* the codec's scratch, kept like L across inputs */

static int decode(lua_State *L, const char *s, size_t n) {
  lua_pushlightuserdata(L, fz_json);
  lua_pushcclosure(L, json_lua_decode, 1);
  lua_pushlstring(L, s, n);
  if (lua_pcall(L, 1, 1, 0) == LUA_OK) return 1;
  const char *err = lua_tostring(L, -1);
  check(err != NULL, "a decode error that is not a string");
  check(strstr(err, " at character ") != NULL || strstr(err, "memory") != NULL, "a decode error that says not where");
  lua_pop(L, 1);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static lua_State *L;
  if (!L) {
    L = luaL_newstate();
    fz_json = json_new();
  }
  lua_settop(L, 0);
  if (decode(L, (const char *)data, size)) {
    size_t len = 0;
    const char *err = NULL;
    const char *text = json_encode_value(fz_json, L, 1, &len, &err);
    if (!text) {
      check(err && strstr(err, "NaN or Inf"), "a decoded value that does not encode");
    } else {
      char *copy = malloc(len ? len : 1);
      check(copy != NULL, "malloc");
      memcpy(copy, text, len);
      check(decode(L, copy, len), "encoded text that does not decode");
      free(copy);
      check(same(L, 1, 2), "a value that changes in an encode/decode round trip");
    }
  }
  lua_settop(L, 0);
  lua_gc(L, LUA_GCSTEP, 0);
  return 0;
}
