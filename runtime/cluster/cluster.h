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
  struct host_s *host; /* the scripts it publishes, the singletons and cron jobs it places */
} cluster_config_t;

/* A shard's state on this runner (see cluster.c). */
enum { SHARD_NONE = 0, SHARD_ACQUIRING, SHARD_HELD, SHARD_RELEASING, SHARD_UNLOCKING };

/* Read by the inline check below; written only by cluster.c. */
extern int cluster_on;
extern uint8_t *cluster_shard_state; /* [shard], 1..shards */
extern uint64_t cluster_safe_until;
uint64_t cluster_mono_ms(void);

static inline int cluster_serving(uint32_t shard) {
  return !cluster_on || (cluster_shard_state[shard] == SHARD_HELD && cluster_mono_ms() < cluster_safe_until);
}

typedef enum {
  ROUTE_LOCAL = 0, /* this runner serves the shard now */
  ROUTE_REMOTE,    /* forward to *peer */
  ROUTE_HOLD_MINE, /* this runner is the owner and is acquiring the lock: wait here */
  ROUTE_HOLD,      /* no reachable owner yet: wait for the assignment to change */
} route_t;

route_t cluster_route(uint32_t shard, tp_peer_t **peer);
/* Some runner (maybe this one) is assigned the shard: 0 when no runner takes
 * shards (the last one is leaving). */
int cluster_has_owner(uint32_t shard);
uint32_t cluster_shard_of(const char *id, size_t len);

/* Blocking registration (before the loop), then connections, transport and
 * timers on the loop. Returns 0, or -1 with a message in err. */
int cluster_start(sched_t *s, uv_loop_t *loop, const cluster_config_t *cfg, char *err, size_t errlen);
/* Graceful leave: hand every shard off, unregister; then cluster_left() is 1. */
void cluster_leave(void);
int cluster_left(void);
/* Registered, lock session up, not leaving: GET /health answers 200. */
int cluster_healthy(void);
/* Final teardown (after the loop stopped). */
void cluster_close(void);
/* Something suggests the membership changed (a peer not answering, "not
 * owner"): read it again soon. */
void cluster_suspect(void);
/* The entity manager emptied a shard that is being released. */
void cluster_shard_drained(uint32_t shard);

/* Parts of GET /cluster: this runner's lease and sessions, every live
 * runner, and the shard map (assignment, and states here). */
void cluster_json_info(buf_t *b);
void cluster_json_runners(buf_t *b);
void cluster_json_shards(buf_t *b);
void cluster_metrics(buf_t *b);  /* Prometheus lines */
const char *cluster_self(void);  /* advertised address */

#endif
