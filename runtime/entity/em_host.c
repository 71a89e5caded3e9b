/* em_host.c - the real host (host/) as the entity manager's em_host_t: the
 * only file of the manager that calls host functions, so entity.c and
 * durable_state.c link without host/ (spec/support/luster_em.c). */
#include <lua.h>
#include <stdlib.h>
#include <string.h>

#include "entity/entity.h"
#include "host/host_int.h"

static etype_t *emh__types(void *ud) { return host_types(ud); }
static etype_t *emh__find_type(void *ud, const char *name, size_t len) { return host_find_type(ud, name, len); }
/* As the wiring gave it to the host (host_config_t.placement). */
static int emh__find_rpc(void *ud, const etype_t *t, const char *tag, size_t len) {
  return etype_find_rpc(t, tag, len);
}
static const placement_ops_t *emh__placement(void *ud) { return host_config(ud)->placement; }
static void emh__activate(void *ud, host_inst_t *i, const char *snap, size_t len) { host_activate(i, snap, len); }
static void emh__handle(void *ud, host_inst_t *i, msg_t *m) { host_handle(i, m); }
static void emh__release(void *ud, host_inst_t *i) { host_release_instance(i); }
static char *emh__snapshot(void *ud, host_inst_t *i, size_t *len) { return host_snapshot(i, len); }
static void emh__type_released(void *ud, etype_t *t) { host_type_released(t); }
static void emh__cancel_shard_tasks(void *ud, const uint8_t *mask) { host_cancel_shard_tasks(ud, mask); }

static char *emh__dup(const char *p, size_t n) {
  char *r = malloc(n + 1);
  if (!r) return NULL;
  if (n) memcpy(r, p, n);
  r[n] = '\0';
  return r;
}

/* Runs the script's snapshot(def, handlers) in its state. */
static char *emh__state_snapshot(void *ud, host_inst_t *i, size_t *len, char **err) {
  static const char oom[] = "memory limit exceeded";
  etype_t *t = i->type;
  script_t *s = t->script;
  lua_State *L = s->L;
  *err = NULL;
  *len = 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref_snapshot);
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->def_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, i->handlers_ref);
  int st = host__pcall(s, L, 2, 1, 0);
  char *out = NULL;
  if (st == LUA_ERRMEM) {
    *err = emh__dup(oom, sizeof oom - 1);
  } else if (st != LUA_OK) {
    *err = host__error_text(L, L);
  } else if (lua_type(L, -1) == LUA_TSTRING) {
    const char *p = lua_tolstring(L, -1, len);
    out = emh__dup(p, *len);
  }
  lua_pop(L, 1);
  return out;
}

em_host_t em_host_default(host_t *h) {
  em_host_t host = {
      .ud = h,
      .types = emh__types,
      .find_type = emh__find_type,
      .find_rpc = emh__find_rpc,
      .placement = emh__placement,
      .activate = emh__activate,
      .handle = emh__handle,
      .release = emh__release,
      .snapshot = emh__snapshot,
      .state_snapshot = emh__state_snapshot,
      .type_released = emh__type_released,
      .cancel_shard_tasks = emh__cancel_shard_tasks,
  };
  return host;
}
