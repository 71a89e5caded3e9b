/* router.h - where a message goes: resolves type and RPC, stores persisted
 * messages first, and hands the message to the instance's owner (this runner,
 * when it runs alone). */
#ifndef LUSTER_ROUTER_H
#define LUSTER_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "loop/msg.h"
#include "net/transport.h"

/* One runner's router: its scheduler and stores, persisted jobs waiting for
 * their deliver_at, per-shard hold queues and counters. */
typedef struct router_s router_t;
struct cluster_s;
struct durable_s;

/* Upper bound on entity id length, in bytes. */
#define ROUTER_MAX_ID 1024

#define ROUTER_NOT_OWNER 100   /* reply kind on the wire: "not mine, ask again" */
#define ROUTER_F_HANDOFF 0x100 /* request flag: payload is an instance snapshot */
#define ROUTER_F_WHERE 0x200   /* request flag: where does (type, id) live (cluster/where.c) */

/* Sends one message; the reply (or REPLY_ACCEPTED with MSG_DISCARD) reaches
 * `call`, which must not be NULL. */
void router_send(router_t *rt, const char *type, size_t type_len, const char *id, size_t id_len, const char *tag,
                 size_t tag_len, const char *payload, size_t payload_len, const char *headers, size_t headers_len,
                 unsigned flags, call_t *call);

/* GET /requests/{id}: the stored message's reply (REPLY_ACCEPTED while it
 * is pending, REPLY_NOT_FOUND when unknown). */
void router_lookup(router_t *rt, uint64_t request_id, call_t *c);
/* For durable.c: a stored message to this runner's entity manager, or
 * wherever its shard is served. */
void router_deliver_stored(router_t *rt, msg_t *m);
void router_route_stored(router_t *rt, msg_t *m);

/* Refuses a persisted send whose primary key pk was stored before with a
 * different payload: `conflict` (HTTP 409), naming the key. */
void router_conflict(call_t *c, const msg_t *m, const char *pk);

/* Drops messages waiting for their deliver_at or for an owner (shutdown). */
void router_shutdown(router_t *rt);

/* Every mode, before the first message: the scheduler the router's timers,
 * persisted jobs and calls run on, the embedded store persisted messages
 * go to when no durable store is configured, and the entity manager that
 * takes handed-over snapshots, and the host whose types it routes to. */
struct mem_store_s;
struct em_s;
struct host_s;
router_t *router_new(sched_t *s, struct mem_store_s *mem, struct em_s *em, struct host_s *h);
/* Drops what router_shutdown drops, then frees rt (after the loop ended). */
void router_free(router_t *rt);
/* For durable_new and cluster_new: the durable store and the cluster this
 * router hands messages to (in the cluster layer only). */
void router__set_durable(router_t *rt, struct durable_s *du);
void router__set_cluster(router_t *rt, struct cluster_s *cl);
/* Records the embedded store holds (GET /metrics). */
size_t router_stored_count(router_t *rt);
/* Cluster mode: per-shard hold queues and the transport's request hooks. */
void router_init(router_t *rt, uint32_t shards, size_t max_frame);
/* A message whose shard is not served here any more goes back to routing
 * (the placement table's reroute, admin/wiring.c). */
void router_reroute(router_t *rt, msg_t *m);
/* Graceful hand-off: an instance's snapshot (owned from here) goes to its
 * shard's new owner (the placement table's handoff). */
void router_handoff(router_t *rt, const char *type, size_t type_len, const char *id, size_t id_len, char *snap,
                    size_t len);
/* The assignment or the locks changed: held messages are routed again. */
void router_wake(router_t *rt);
void router_inbound(router_t *rt, tp_inbound_t *in, const frame_request_t *req);
void router_inbound_abandoned(router_t *rt, tp_inbound_t *in);
/* Hand-off snapshots of a shard sent to its new owner and not yet
 * confirmed: the shard stays locked here until they are. */
uint32_t router_handoffs_pending(router_t *rt, uint32_t shard);
/* Stops waiting for them (the hand-off ran out of time). */
void router_handoffs_forget(router_t *rt, const uint8_t *mask);

typedef struct {
  uint64_t forwarded, inbound, reroutes, not_owner, expired, held, handoffs, handoffs_lost;
} router_stats_t;
const router_stats_t *router_stats(router_t *rt);

#endif
