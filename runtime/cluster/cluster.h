/* cluster.h - membership, shard assignment and shard leases of one runner
 * in a PostgreSQL cluster. Ownership safety lives here and only here:
 * cluster_serving(shard) is true only while this runner holds the shard's
 * lock *and* its last confirmed round trip on the lock session is recent
 * enough that the server cannot yet have ended the session (see coord.h).
 * The entity manager and the host check it before running anything. */
#ifndef LUSTER_CLUSTER_H
#define LUSTER_CLUSTER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/buf.h"
#include "loop/sched.h"
#include "net/transport.h"

typedef struct {
  const char *conninfo;
  const char *prefix;
  const char *listen;    /* host:port for runner-to-runner traffic */
  const char *advertise; /* what peers dial; defaults to listen */
  const char *http;      /* HTTP gateway address, for the runners table */
  const char *secret;    /* LUSTER_CLUSTER_SECRET, or NULL */
  uint32_t shards, weight;
  uint64_t lease_ms;
  uint64_t handoff_timeout_ms; /* in-flight work on a shard being handed over gets this long */
  size_t max_frame;
  struct em_s *em; /* this runner's entity manager (entity/entity.h) */
  struct host_s *host; /* the scripts it publishes, the singletons and cron jobs it places */
} cluster_config_t;

/* A shard's state on this runner (see cluster.c). */
enum { SHARD_NONE = 0, SHARD_ACQUIRING, SHARD_HELD, SHARD_RELEASING, SHARD_UNLOCKING };

/* One runner's membership, assignment and leases: its sessions, shard
 * states, members and timers. Off (cluster_on 0: one runner, every shard
 * served here) until cluster_start, and again after cluster_close. */
typedef struct cluster_s cluster_t;
struct router_s;
struct durable_s;

/* The router and durable delivery learn the cluster here (it reads their
 * state and they its leases). Freed by cluster_free (after the loop ended). */
cluster_t *cluster_new(sched_t *s, struct router_s *rt, struct durable_s *du);
void cluster_free(cluster_t *cl);
/* Started and not closed (0 for NULL). */
int cluster_on(const cluster_t *cl);
uint64_t cluster_mono_ms(const cluster_t *cl);
/* This runner holds the shard's lock and its lease is fresh (always 1 when
 * the cluster is off). */
int cluster_serving(const cluster_t *cl, uint32_t shard);

typedef enum {
  ROUTE_LOCAL = 0, /* this runner serves the shard now */
  ROUTE_REMOTE,    /* forward to *peer */
  ROUTE_HOLD_MINE, /* this runner is the owner and is acquiring the lock: wait here */
  ROUTE_HOLD,      /* no reachable owner yet: wait for the assignment to change */
} route_t;

route_t cluster_route(cluster_t *cl, uint32_t shard, tp_peer_t **peer);
/* Some runner (maybe this one) is assigned the shard: 0 when no runner takes
 * shards (the last one is leaving). */
int cluster_has_owner(const cluster_t *cl, uint32_t shard);
uint32_t cluster_shard_of(const cluster_t *cl, const char *id, size_t len);

/* Blocking registration (before the loop), then connections, transport and
 * timers on the loop. Returns 0, or -1 with a message in err. */
int cluster_start(cluster_t *cl, uv_loop_t *loop, const cluster_config_t *cfg, char *err, size_t errlen);
/* Graceful leave: hand every shard off, unregister; then cluster_left() is 1. */
void cluster_leave(cluster_t *cl);
int cluster_left(const cluster_t *cl);
/* Registered, lock session up, not leaving: GET /health answers 200. */
int cluster_healthy(const cluster_t *cl);
/* Final teardown (after the loop stopped). */
void cluster_close(cluster_t *cl);
/* Something suggests the membership changed (a peer not answering, "not
 * owner"): read it again soon. */
void cluster_suspect(cluster_t *cl);
/* The entity manager emptied a shard that is being released. */
void cluster_shard_drained(cluster_t *cl, uint32_t shard);

/* Parts of GET /cluster: this runner's lease and sessions, every live
 * runner, and the shard map (assignment, and states here). */
void cluster_json_info(cluster_t *cl, buf_t *b);
void cluster_json_runners(cluster_t *cl, buf_t *b);
void cluster_json_shards(cluster_t *cl, buf_t *b);
void cluster_metrics(cluster_t *cl, buf_t *b);  /* Prometheus lines */
const char *cluster_self(const cluster_t *cl);  /* advertised address */

#endif
