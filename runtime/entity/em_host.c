/* em_host.c - the real host (host/) as the entity manager's em_host_t: the
 * only file of the manager that calls host functions, so entity.c and
 * durable_state.c link without host/ (spec/support/luster_em.c). */
#include <stdlib.h>

#include "entity/entity.h"
#include "host/host.h"
#include "loop/log.h"

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
/* A hand-off or a reload: a snapshot that fails leaves the next instance
 * to start fresh, which is worth a warning, not a failure. */
static char *emh__snapshot(void *ud, host_inst_t *i, size_t *len) {
  char *err = NULL;
  char *out = host_snapshot(i, len, &err);
  if (err) {
    log_warn("%s/%.*s: snapshot failed, the new version starts it fresh: %s", i->type->name, (int)i->id_len, i->id, err);
    free(err);
  }
  return out;
}
static void emh__type_released(void *ud, etype_t *t) { host_type_released(t); }
static void emh__cancel_shard_tasks(void *ud, const uint8_t *mask) { host_cancel_shard_tasks(ud, mask); }

/* A durable type's saved state: the same call, its failure reported. */
static char *emh__state_snapshot(void *ud, host_inst_t *i, size_t *len, char **err) {
  return host_snapshot(i, len, err);
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
