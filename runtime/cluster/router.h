/* router.h - where a message goes: resolves type and RPC, stores persisted
 * messages first, and hands the message to the instance's owner (this runner,
 * when it runs alone). */
#ifndef LUSTER_ROUTER_H
#define LUSTER_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "loop/msg.h"
#include "net/transport.h"

/* Upper bound on entity id length, in bytes. */
#define ROUTER_MAX_ID 1024

#define ROUTER_NOT_OWNER 100   /* reply kind on the wire: "not mine, ask again" */
#define ROUTER_F_HANDOFF 0x100 /* request flag: payload is an instance snapshot */
#define ROUTER_F_WHERE 0x200   /* request flag: where does (type, id) live (cluster/where.c) */

/* Sends one message; the reply (or REPLY_ACCEPTED with MSG_DISCARD) reaches
 * `call`, which must not be NULL. */
void router_send(const char *type, size_t type_len, const char *id, size_t id_len, const char *tag, size_t tag_len,
                 const char *payload, size_t payload_len, const char *headers, size_t headers_len, unsigned flags,
                 call_t *call);

/* GET /requests/{id}: the stored message's reply (REPLY_ACCEPTED while it
 * is pending, REPLY_NOT_FOUND when unknown). */
void router_lookup(uint64_t request_id, call_t *c);
/* For durable.c: a stored message to this runner's entity manager, or
 * wherever its shard is served. */
void router_deliver_stored(msg_t *m);
void router_route_stored(msg_t *m);

/* Refuses a persisted send whose primary key pk was stored before with a
 * different payload: `conflict` (HTTP 409), naming the key. */
void router_conflict(call_t *c, const msg_t *m, const char *pk);

/* Drops messages waiting for their deliver_at or for an owner (shutdown). */
void router_shutdown(void);

/* Every mode, before the first message: the scheduler the router's timers,
 * persisted jobs and calls run on, the embedded store persisted messages
 * go to when no durable store is configured, and the host whose types it
 * routes to. */
struct mem_store_s;
struct host_s;
void router_use(sched_t *s, struct mem_store_s *mem, struct host_s *h);
/* Records the embedded store holds (GET /metrics). */
size_t router_stored_count(void);
/* Cluster mode: per-shard hold queues and the transport's request hooks. */
void router_init(uint32_t shards, size_t max_frame);
/* A message whose shard is not served here any more goes back to routing
 * (the placement table's reroute, admin/wiring.c). */
void router_reroute(msg_t *m);
/* Graceful hand-off: an instance's snapshot (owned from here) goes to its
 * shard's new owner (the placement table's handoff). */
void router_handoff(const char *type, size_t type_len, const char *id, size_t id_len, char *snap, size_t len);
/* The assignment or the locks changed: held messages are routed again. */
void router_wake(void);
void router_inbound(tp_inbound_t *in, const frame_request_t *req);
void router_inbound_abandoned(tp_inbound_t *in);
/* Hand-off snapshots of a shard sent to its new owner and not yet
 * confirmed: the shard stays locked here until they are. */
uint32_t router_handoffs_pending(uint32_t shard);
/* Stops waiting for them (the hand-off ran out of time). */
void router_handoffs_forget(const uint8_t *mask);

typedef struct {
  uint64_t forwarded, inbound, reroutes, not_owner, expired, held, handoffs, handoffs_lost;
} router_stats_t;
const router_stats_t *router_stats(void);

#endif
