/* wiring.c - the placement table (loop/placement.h) answered by cluster/
 * (leases, router, durable delivery): with the entity manager's table
 * (em_host_ops of the owner's em_t), the only place where the layers below
 * learn what is above them. */
#include "admin/wiring.h"

#include <stdlib.h>

#include "cluster/cluster.h"
#include "cluster/durable.h"
#include "cluster/router.h"

static int wiring__may_run(void *ctx, uint32_t shard) { return cluster_serving(((wiring_t *)ctx)->cluster, shard); }

static int wiring__may_run_key(void *ctx, const char *key, size_t len) {
  wiring_t *w = ctx;
  return !cluster_on(w->cluster) || cluster_serving(w->cluster, cluster_shard_of(w->cluster, key, len));
}

static void wiring__send(void *ctx, const char *type, size_t type_len, const char *id, size_t id_len, const char *tag,
                         size_t tag_len, const char *payload, size_t payload_len, const char *headers,
                         size_t headers_len, unsigned flags, call_t *c) {
  router_send(((wiring_t *)ctx)->router, type, type_len, id, id_len, tag, tag_len, payload, payload_len, headers,
              headers_len, flags, c);
}

static int wiring__cron_on(void *ctx) { return durable_on(((wiring_t *)ctx)->durable); }

static void wiring__cron(void *ctx, int op, const char *name, uint64_t at, call_t *c) {
  durable_cron(((wiring_t *)ctx)->durable, op, name, at, c);
}

static void wiring__shard_drained(void *ctx, uint32_t shard) {
  wiring_t *w = ctx;
  if (cluster_on(w->cluster)) cluster_shard_drained(w->cluster, shard);
}

/* Without a cluster nothing is ever placed elsewhere: a message that could
 * not stay is dropped (its caller hears `unavailable`), a snapshot freed. */
static void wiring__reroute(void *ctx, msg_t *m) {
  wiring_t *w = ctx;
  if (cluster_on(w->cluster)) router_reroute(w->router, m);
  else msg_free(m);
}

static void wiring__handoff(void *ctx, const char *type, size_t type_len, const char *id, size_t id_len, char *snap,
                            size_t len) {
  wiring_t *w = ctx;
  if (cluster_on(w->cluster)) router_handoff(w->router, type, type_len, id, id_len, snap, len);
  else free(snap);
}

const placement_ops_t *wiring_placement(wiring_t *w) {
  w->ops = (placement_ops_t){
      .ctx = w,
      .may_run = wiring__may_run,
      .may_run_key = wiring__may_run_key,
      .send = wiring__send,
      .cron_on = wiring__cron_on,
      .cron = wiring__cron,
      .shard_drained = wiring__shard_drained,
      .reroute = wiring__reroute,
      .handoff = wiring__handoff,
  };
  return &w->ops;
}

void wiring_host(host_config_t *hc, wiring_t *w) {
  hc->placement = wiring_placement(w);
}
