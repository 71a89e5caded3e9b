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

/* Takes the opened backend ops (closed by durable_close). Without a
 * cluster every shard is served here: call durable_acquired() to deliver
 * what an earlier run left pending. */
struct host_s;
int durable_init(sched_t *s, struct host_s *h, const ms_ops_t *ops, uint32_t shards, uint64_t retention_ms);
void durable_close(void);

/* A persisted message checked by its script (primary key pk or NULL, due at
 * deliver_at or 0). m is not attached to call. */
void durable_send(msg_t *m, call_t *call, const char *pk, uint64_t deliver_at);
/* A stored message (MSG_PERSISTED, request_id set) whose shard is served
 * here: deliver it unless it runs here already or is done. */
void durable_deliver(msg_t *m);
/* GET /requests/{id}. */
void durable_lookup(uint64_t request_id, call_t *c);
/* Shards were taken: look for their pending messages. */
void durable_acquired(void);
/* Cron bookkeeping for a job running here (see pgstore.h); c completes with
 * REPLY_OK and body "a b". */
void durable_cron(int op, const char *name, uint64_t at, call_t *c);
int durable_up(void);
/* Persisted messages go through here (PostgreSQL or SQLite), not through
 * the in-process storage of storage.h. */
int durable_on(void);
/* Backend operations queued or in flight (shutdown waits for them). */
int durable_busy(void);
const ms_stats_t *durable_store_stats(void);

typedef struct {
  uint64_t delivered, forwarded_checks, duplicates_skipped, scans, retries_polled, running;
} durable_stats_t;
const durable_stats_t *durable_stats(void);
/* GET /metrics: persisted messages (memory storage: how many are held). */
void durable_metrics(buf_t *b);

#endif
