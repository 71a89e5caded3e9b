/* test_cmd.c - `luster test [DIR] [busted options and spec paths]`: runs
 * busted in a Lua state of this process, whose `luster.test` module drives
 * an in-process runtime over DIR (admin/testrt.h), a fresh one per `it`. */
#include "cli/test_cmd.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "admin/testrt.h"
#include "host/host.h"
#include "loop/log.h"


/* What the spec's Lua state knows of its runtime: the directory under test,
 * the current runtime (made on first use in a test, dropped at its end), and
 * the storage the next one starts on. */
typedef struct test_ctx_s {
  const char *dir;
  testrt_t *rt;
  int durable;    /* the next runtime on sqlite (T.durable) */
  int subscribed; /* the busted hooks are in place */
} test_ctx_t;

static test_ctx_t *test__ctx(lua_State *L) { return lua_touserdata(L, lua_upvalueindex(1)); }

/* The current runtime, made now when the test has none. */
static testrt_t *test__rt(lua_State *L) {
  test_ctx_t *c = test__ctx(L);
  if (c->rt) return c->rt;
  char err[1024];
  c->rt = testrt_new(c->dir, c->durable, err, sizeof err);
  if (!c->rt) luaL_error(L, "luster test: cannot start a runtime over %s: %s", c->dir, err);
  return c->rt;
}

static int test_reset(lua_State *L) {
  test_ctx_t *c = test__ctx(L);
  testrt_free(c->rt);
  c->rt = NULL;
  c->durable = 0;
  return 0;
}

static int test_durable(lua_State *L) {
  test_ctx_t *c = test__ctx(L);
  if (c->rt && !testrt_durable(c->rt)) return luaL_error(L, "T.durable() must come before any other T call in a test");
  c->durable = 1;
  return 0;
}

static int test_subscribed(lua_State *L) {
  test_ctx_t *c = test__ctx(L);
  lua_pushboolean(L, c->subscribed);
  c->subscribed = 1;
  return 1;
}

/* call(type, id, rpc, payload_json, timeout_ms, discard) -> kind, body */
static int test_call(lua_State *L) {
  testrt_t *rt = test__rt(L);
  size_t plen;
  const char *payload = luaL_checklstring(L, 4, &plen);
  lua_Integer timeout = luaL_optinteger(L, 5, 0);
  testrt_reply_t r;
  testrt_call(rt, luaL_checkstring(L, 1), luaL_checkstring(L, 2), luaL_checkstring(L, 3), payload, plen,
              timeout > 0 ? (uint64_t)timeout : 0, lua_toboolean(L, 6), &r);
  lua_pushstring(L, r.done ? reply_kind_name(r.kind) : "unavailable");
  lua_pushlstring(L, r.body.data ? r.body.data : "", r.body.len);
  buf_free(&r.body);
  return 2;
}

/* http(method, path, body, headers_json) -> answer text, or nil, why */
static int test_http(lua_State *L) {
  testrt_t *rt = test__rt(L);
  size_t blen = 0, hlen = 0;
  const char *body = luaL_optlstring(L, 3, "", &blen);
  const char *headers = luaL_optlstring(L, 4, NULL, &hlen);
  buf_t resp;
  buf_init(&resp);
  int rc = testrt_http(rt, luaL_checkstring(L, 1), luaL_checkstring(L, 2), body, blen, headers, hlen, &resp);
  if (rc != 0) lua_pushnil(L);
  lua_pushlstring(L, resp.data ? resp.data : "", resp.len);
  buf_free(&resp);
  return rc != 0 ? 2 : 1;
}

static int test_now(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)testrt_now(test__rt(L)));
  return 1;
}

static int test_advance(lua_State *L) {
  testrt_t *rt = test__rt(L);
  testrt_advance(rt, (uint64_t)luaL_checkinteger(L, 1));
  return 0;
}

static int test_active(lua_State *L) {
  testrt_t *rt = test__rt(L);
  lua_pushinteger(L, testrt_active(rt, luaL_checkstring(L, 1), luaL_optstring(L, 2, NULL)));
  return 1;
}

static int test_passivate(lua_State *L) {
  testrt_t *rt = test__rt(L);
  lua_pushinteger(L, testrt_passivate(rt, luaL_checkstring(L, 1), luaL_checkstring(L, 2)));
  return 1;
}

/* write(file, source) -> report_json, or nil, why */
static int test_write(lua_State *L) {
  testrt_t *rt = test__rt(L);
  size_t len;
  const char *src = luaL_checklstring(L, 2, &len);
  char err[512];
  buf_t rep;
  buf_init(&rep);
  if (testrt_write(rt, luaL_checkstring(L, 1), src, len, &rep, err, sizeof err) != 0) {
    buf_free(&rep);
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushlstring(L, rep.data ? rep.data : "{}", rep.data ? rep.len : 2);
  buf_free(&rep);
  return 1;
}

static int test_logs(lua_State *L) {
  const buf_t *b = testrt_logs(test__rt(L));
  lua_pushlstring(L, b->data ? b->data : "", b->len);
  return 1;
}

static int test_restart(lua_State *L) {
  testrt_t *rt = test__rt(L);
  if (!testrt_durable(rt)) return luaL_error(L, "T.restart needs durable storage: call T.durable() first in this test");
  char err[1024];
  if (testrt_restart(rt, err, sizeof err) != 0) {
    testrt_free(rt);
    test__ctx(L)->rt = NULL;
    return luaL_error(L, "T.restart: the runtime did not start again: %s", err);
  }
  return 0;
}

/* require "luster.test.core": the functions above, sharing the context. */
static int test_core_open(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"reset", test_reset}, {"durable", test_durable}, {"subscribed", test_subscribed},
      {"call", test_call},   {"http", test_http},       {"now", test_now},
      {"advance", test_advance}, {"active", test_active}, {"passivate", test_passivate},
      {"write", test_write}, {"logs", test_logs},       {"restart", test_restart},
      {NULL, NULL},
  };
  luaL_newlibtable(L, fns);
  lua_pushvalue(L, lua_upvalueindex(1));
  luaL_setfuncs(L, fns, 1);
  return 1;
}

/* busted's exit (os.exit) ends the run, not the process: it raises this
 * table, and the exit code is read from it. */
static int test_exit(lua_State *L) {
  lua_Integer code = lua_isboolean(L, 1) ? !lua_toboolean(L, 1) : luaL_optinteger(L, 1, 0);
  lua_newtable(L);
  lua_pushinteger(L, code);
  lua_setfield(L, -2, "luster_test_exit");
  return lua_error(L);
}

static void test__preload(lua_State *L, test_ctx_t *c) {
  host_preload_library(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushlightuserdata(L, c);
  lua_pushcclosure(L, test_core_open, 1);
  lua_setfield(L, -2, "luster.test.core");
  lua_pop(L, 1);
  lua_getglobal(L, "os");
  lua_pushcfunction(L, test_exit);
  lua_setfield(L, -2, "exit");
  lua_pop(L, 1);
}

/* Busted options that take a value in the next argument. */
static int test__takes_value(const char *a) {
  static const char *const opts[] = {"-o", "--output", "-t", "--tags", "--exclude-tags", "--filter", "--filter-out",
                                     "--name", "-p", "--pattern", "--exclude-pattern", "-m", "--lpath", "--cpath",
                                     "-r", "--run", "-e", "-f", "--config-file", "--loaders", "--helper", "--lang",
                                     "--seed", "--repeat", "-C", "--directory", "-Xoutput", "-Xhelper",
                                     "--coverage-config-file", "--exclude-names-file", NULL};
  for (int i = 0; opts[i]; i++)
    if (strcmp(a, opts[i]) == 0) return 1;
  return 0;
}

static int test__has_paths(int argc, char **argv) {
  for (int i = 0; i < argc; i++) {
    if (argv[i][0] != '-') return 1;
    if (test__takes_value(argv[i])) i++;
  }
  return 0;
}

/* arg: busted's command line, with DIR/spec when no spec path was given. */
static void test__args(lua_State *L, const char *dir, int argc, char **argv) {
  lua_createtable(L, argc + 1, 1);
  lua_pushstring(L, "luster test");
  lua_rawseti(L, -2, 0);
  int n = 0;
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, ++n);
  }
  if (!test__has_paths(argc, argv)) {
    lua_pushfstring(L, "%s/spec", dir);
    lua_rawseti(L, -2, ++n);
  }
  lua_setglobal(L, "arg");
}

static const char test__boot[] = "require 'busted.runner'({ standalone = false })";

/* Specs may require DIR's lib/ modules, as its scripts do. */
static void test__lib_path(lua_State *L, const char *dir) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/lib/?.lua;%s/lib/?/init.lua;%s", dir, dir, lua_tostring(L, -1));
  lua_setfield(L, -3, "path");
  lua_pop(L, 2);
}

/* Runs busted; its exit status (0 when it did not exit). */
static int test__run(lua_State *L) {
  if (luaL_loadbufferx(L, test__boot, sizeof test__boot - 1, "@luster test", "t") != LUA_OK) {
    fprintf(stderr, "luster test: %s\n", lua_tostring(L, -1));
    return 1;
  }
  if (lua_pcall(L, 0, 0, 0) == LUA_OK) return 0;
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "luster_test_exit");
    if (lua_isinteger(L, -1)) return (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  fprintf(stderr, "luster test: %s\n", luaL_tolstring(L, -1, NULL));
  return 1;
}

/* Log lines go to T.logs, not the terminal, unless LUSTER_LOG_LEVEL asks. */
static void test__log_level(void) {
  const char *v = getenv("LUSTER_LOG_LEVEL");
  log_level_t lvl = LOG_OFF;
  if (v && *v && log_parse_level(v, &lvl) != 0) lvl = LOG_OFF;
  log_set_level(lvl);
}

int test_main(int argc, char **argv) {
  const char *dir = ".";
  struct stat st;
  if (argc > 0 && argv[0][0] != '-' && stat(argv[0], &st) != 0) {
    fprintf(stderr, "luster test: '%s' does not exist (usage: luster test [DIR] [busted options and spec files])\n",
            argv[0]);
    return 2;
  }
  if (argc > 0 && argv[0][0] != '-' && S_ISDIR(st.st_mode)) {
    dir = argv[0];
    argc--;
    argv++;
  }
  if (!test__has_paths(argc, argv)) {
    char spec[4096];
    snprintf(spec, sizeof spec, "%s/spec", dir);
    if (stat(spec, &st) != 0 || !S_ISDIR(st.st_mode)) {
      fprintf(stderr, "luster test: no specs: %s has no spec/ directory (write DIR/spec/*_spec.lua, or name spec "
                      "files after DIR)\n", dir);
      return 2;
    }
  }
  signal(SIGPIPE, SIG_IGN);
  test__log_level();
  test_ctx_t ctx = {.dir = dir};
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  test__preload(L, &ctx);
  test__args(L, dir, argc, argv);
  test__lib_path(L, dir);
  int rc = test__run(L);
  testrt_free(ctx.rt);
  ctx.rt = NULL;
  lua_close(L);
  return rc;
}
