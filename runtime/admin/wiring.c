/* wiring.c - the placement table (loop/placement.h) answered by cluster/
 * (leases, router, durable delivery): with the entity manager's table
 * (em_host_ops of the owner's em_t), the only place where the layers below
 * learn what is above them. */
#include "admin/wiring.h"

#include <stdlib.h>

#include "cluster/cluster.h"
#include "cluster/durable.h"
#include "cluster/router.h"

static int wiring__may_run(void *ctx, uint32_t shard) { return cluster_serving(shard); }

static int wiring__may_run_key(void *ctx, const char *key, size_t len) {
  return !cluster_on || cluster_serving(cluster_shard_of(key, len));
}

static void wiring__send(void *ctx, const char *type, size_t type_len, const char *id, size_t id_len, const char *tag,
                         size_t tag_len, const char *payload, size_t payload_len, const char *headers,
                         size_t headers_len, unsigned flags, call_t *c) {
  router_send(type, type_len, id, id_len, tag, tag_len, payload, payload_len, headers, headers_len, flags, c);
}

static int wiring__cron_on(void *ctx) { return durable_on(); }

static void wiring__cron(void *ctx, int op, const char *name, uint64_t at, call_t *c) { durable_cron(op, name, at, c); }

static void wiring__shard_drained(void *ctx, uint32_t shard) {
  if (cluster_on) cluster_shard_drained(shard);
}

/* Without a cluster nothing is ever placed elsewhere: a message that could
 * not stay is dropped (its caller hears `unavailable`), a snapshot freed. */
static void wiring__reroute(void *ctx, msg_t *m) {
  if (cluster_on) router_reroute(m);
  else msg_free(m);
}

static void wiring__handoff(void *ctx, const char *type, size_t type_len, const char *id, size_t id_len, char *snap,
                            size_t len) {
  if (cluster_on) router_handoff(type, type_len, id, id_len, snap, len);
  else free(snap);
}

const placement_ops_t *wiring_placement(void) {
  static const placement_ops_t ops = {
      .ctx = NULL,
      .may_run = wiring__may_run,
      .may_run_key = wiring__may_run_key,
      .send = wiring__send,
      .cron_on = wiring__cron_on,
      .cron = wiring__cron,
      .shard_drained = wiring__shard_drained,
      .reroute = wiring__reroute,
      .handoff = wiring__handoff,
  };
  return &ops;
}

void wiring_host(host_config_t *hc) {
  hc->placement = wiring_placement();
}
