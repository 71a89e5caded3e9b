/* durable.h - persisted messages on durable storage: a cluster's
 * PostgreSQL (storage/pgstore.h) or one runner's SQLite file
 * (storage/sqlite.h), both through the operations of storage/msgstore.h.
 *
 * Sender: the runner a call reaches stores the message (batched with the
 * others of the moment), and only then acknowledges it and routes it to the
 * shard's owner with its request id. Owner: delivers stored messages, in
 * id order per entity, from three sources: messages it stored itself, ones
 * forwarded by other runners (checked against storage first, so a late or
 * repeated forward never runs a message twice), and scans of its shards'
 * pending messages (on taking shards, at the earliest deliver_at, and every
 * few seconds). A message's reply is stored before anyone sees it. */
#ifndef LUSTER_DURABLE_H
#define LUSTER_DURABLE_H

#include <stdint.h>
#include <uv.h>

#include "core/buf.h"
#include "loop/msg.h"
#include "storage/msgstore.h"

/* One runner's durable delivery: its backend, the messages it delivers now,
 * the callers waiting for replies stored elsewhere, its scan and prune timers. */
typedef struct durable_s durable_t;
struct router_s;

/* Off (durable_on 0: memory storage) until durable_init; hands stored
 * messages to rt, and reads a backlog no faster than em has instance slots
 * for it (--max-active). Freed by durable_free (after durable_close). */
struct host_s;
struct em_s;
durable_t *durable_new(sched_t *s, struct router_s *rt, struct em_s *em, struct host_s *h);
void durable_free(durable_t *du);
/* Takes the opened backend ops (closed by durable_close). Without a
 * cluster every shard is served here: call durable_acquired() to deliver
 * what an earlier run left pending. */
int durable_init(durable_t *du, const ms_ops_t *ops, uint32_t shards, uint64_t retention_ms);
void durable_close(durable_t *du);
/* For cluster_new: the cluster whose leases say which shards are served here. */
struct cluster_s;
void durable__set_cluster(durable_t *du, struct cluster_s *cl);

/* A persisted message checked by its script (primary key pk or NULL, due at
 * deliver_at or 0). m is not attached to call. */
void durable_send(durable_t *du, msg_t *m, call_t *call, const char *pk, uint64_t deliver_at);
/* A stored message (MSG_PERSISTED, request_id set) whose shard is served
 * here: deliver it unless it runs here already or is done. */
void durable_deliver(durable_t *du, msg_t *m);
/* GET /requests/{id}. */
void durable_lookup(durable_t *du, uint64_t request_id, call_t *c);
/* Shards were taken: look for their pending messages. */
void durable_acquired(durable_t *du);
/* Cron bookkeeping for a job running here (see pgstore.h); c completes with
 * REPLY_OK and body "a b". */
void durable_cron(durable_t *du, int op, const char *name, uint64_t at, call_t *c);
int durable_up(durable_t *du);
/* Persisted messages go through here (PostgreSQL or SQLite), not through
 * the in-process storage of storage.h. */
int durable_on(durable_t *du);
/* Backend operations queued or in flight (shutdown waits for them). */
int durable_busy(durable_t *du);
const ms_stats_t *durable_store_stats(durable_t *du);

typedef struct {
  uint64_t delivered, forwarded_checks, duplicates_skipped, scans, retries_polled, running;
} durable_stats_t;
const durable_stats_t *durable_stats(durable_t *du);
/* GET /metrics: persisted messages (memory storage: how many are held). */
void durable_metrics(durable_t *du, buf_t *b);

#endif
