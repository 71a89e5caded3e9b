/* pgstore.h - persisted messages, their replies and cron instants in
 * PostgreSQL (the cluster's database; tables from coord.c's migrations).
 *
 * One connection of its own ("messages"), never blocking the loop. The
 * statements that run per message are batched: every store, state read and
 * reply queued during one pass of the ready queue goes out as one statement
 * (array parameters), and at most two of a kind are in flight, so under
 * load many messages share each round trip and each commit's fsync. All
 * statements go over the one connection in order, so a read sees every
 * write whose result came back before it was sent. Callbacks never run from
 * inside the call that queued them. */
#ifndef LUSTER_PGSTORE_H
#define LUSTER_PGSTORE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "storage/estate.h"
#include "storage/msgstore.h"

/* One store: its connection, statements and batch queues. */
typedef struct pgstore_s pgstore_t;

/* NULL when the connection cannot be set up. */
pgstore_t *pgs_open(sched_t *s, uv_loop_t *loop, const char *conninfo, const char *prefix);
/* Fails everything waiting (callbacks run now), closes the connection and
 * frees the store. */
void pgs_close(pgstore_t *ps);
int pgs_up(pgstore_t *ps);

/* Stores m (copied) or finds the message stored under its dedupe key,
 * comparing that message's payload with m's (MS_CONFLICT when they differ). */
void pgs_put(pgstore_t *ps, const ms_msg_t *m, ms_put_cb cb, void *ud);
/* Reads whether message seq is pending or done (and its reply). */
void pgs_state(pgstore_t *ps, uint64_t seq, ms_state_cb cb, void *ud);
/* Stores message seq's reply and marks it done; cb after the commit. w
 * (copied; NULL: none) is a durable entity's new state, written in the
 * same statement only if this reply is the one that marks the message done
 * (a message that already has its reply never changes the state again). */
void pgs_reply(pgstore_t *ps, uint64_t seq, int kind, const char *body, size_t len, const estate_write_t *w, ms_done_cb cb,
               void *ud);
/* Durable entity state in the entity_state table (see estate.h): loads and
 * saves batched like the statements above. */
estate_ops_t pgs_estate_ops(pgstore_t *ps);
/* Pending messages of these shards due by now_ms with seq > after, oldest
 * first, at most limit; rows are valid during the callback. */
void pgs_scan(pgstore_t *ps, const uint32_t *shards, int n, uint64_t now_ms, uint64_t after, int limit,
              void (*cb)(void *ud, int ok, const ms_row_t *rows, int nrows), void *ud);
/* The earliest deliver_at after now_ms among pending messages of these
 * shards (0 when none). */
void pgs_next_due(pgstore_t *ps, const uint32_t *shards, int n, uint64_t now_ms, void (*cb)(void *ud, int ok, uint64_t due),
                  void *ud);
/* Deletes at most limit messages of these shards done before cutoff_ms. */
void pgs_prune(pgstore_t *ps, const uint32_t *shards, int n, uint64_t cutoff_ms, int limit,
               void (*cb)(void *ud, int ok, uint64_t deleted), void *ud);

void pgs_cron(pgstore_t *ps, ms_cron_op_t op, const char *name, uint64_t at,
              void (*cb)(void *ud, int ok, int64_t a, int64_t b, const char *err), void *ud);

const ms_stats_t *pgs_stats(pgstore_t *ps);
/* These operations as durable.c's table (pgs_open first). The state write
 * of a reply (estate.h) is not taken here yet: w must be NULL. */
const ms_ops_t *pgs_ops(pgstore_t *ps);
/* Batched statements queued or in flight (shutdown waits for them). */
int pgs_busy(pgstore_t *ps);

#endif
