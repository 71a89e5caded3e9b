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

#define PGS_DEDUPE_LEN 64 /* hex SHA-256 of (type, id, rpc, primary key) */

typedef struct {
  uint32_t shard;
  const char *type, *id, *rpc, *payload, *headers; /* headers NULL = none */
  size_t type_len, id_len, rpc_len, payload_len, headers_len;
  const char *dedupe; /* NUL-terminated, NULL when the RPC has no primary key */
  uint64_t deliver_at; /* epoch ms, 0 = now */
} pgs_msg_t;

typedef enum {
  PGS_STORED,  /* new: stored under seq */
  PGS_PENDING, /* the key was stored before (seq), no reply yet */
  PGS_DONE,    /* the key was stored before and has its reply */
  PGS_CONFLICT, /* the key was stored before (seq) with a different payload */
  PGS_FAILED,  /* not stored: err says why */
} pgs_put_status_t;

typedef void (*pgs_put_cb)(void *ud, pgs_put_status_t st, uint64_t seq, int kind, const char *reply,
                           size_t len, const char *err);
/* What a stored message is now. ok 0: the read failed (err). found 0: no
 * such message (never stored, or pruned). */
typedef void (*pgs_state_cb)(void *ud, int ok, uint64_t seq, int found, int done, int kind, const char *reply,
                             size_t len, const char *err);
typedef void (*pgs_done_cb)(void *ud, int ok, const char *err);

typedef struct {
  uint64_t seq, deliver_at;
  uint32_t shard;
  const char *type, *id, *rpc, *payload, *headers; /* headers NULL = none */
  size_t type_len, id_len, rpc_len, payload_len, headers_len;
} pgs_row_t;

typedef struct {
  uint64_t stored, duplicates, replies, reads, scanned, pruned, failures;
  uint64_t put_batches, reply_batches, read_batches;
  uint64_t state_saves, state_loads; /* durable entity state rows written (or deleted), and read */
} pgs_stats_t;

int pgs_open(uv_loop_t *loop, const char *conninfo, const char *prefix);
/* Fails everything waiting (callbacks run now) and closes the connection. */
void pgs_close(void);
int pgs_up(void);

/* Stores m (copied) or finds the message stored under its dedupe key,
 * comparing that message's payload with m's (PGS_CONFLICT when they differ). */
void pgs_put(const pgs_msg_t *m, pgs_put_cb cb, void *ud);
/* Reads whether message seq is pending or done (and its reply). */
void pgs_state(uint64_t seq, pgs_state_cb cb, void *ud);
/* Stores message seq's reply and marks it done; cb after the commit. w
 * (copied; NULL: none) is a durable entity's new state, written in the
 * same statement only if this reply is the one that marks the message done
 * (a message that already has its reply never changes the state again). */
void pgs_reply(uint64_t seq, int kind, const char *body, size_t len, const estate_write_t *w, pgs_done_cb cb,
               void *ud);
/* Durable entity state in the entity_state table (see estate.h): loads and
 * saves batched like the statements above. */
const estate_ops_t *pgs_estate_ops(void);
/* Pending messages of these shards due by now_ms with seq > after, oldest
 * first, at most limit; rows are valid during the callback. */
void pgs_scan(const uint32_t *shards, int n, uint64_t now_ms, uint64_t after, int limit,
              void (*cb)(void *ud, int ok, const pgs_row_t *rows, int nrows), void *ud);
/* The earliest deliver_at after now_ms among pending messages of these
 * shards (0 when none). */
void pgs_next_due(const uint32_t *shards, int n, uint64_t now_ms, void (*cb)(void *ud, int ok, uint64_t due),
                  void *ud);
/* Deletes at most limit messages of these shards done before cutoff_ms. */
void pgs_prune(const uint32_t *shards, int n, uint64_t cutoff_ms, int limit,
               void (*cb)(void *ud, int ok, uint64_t deleted), void *ud);

/* Cron bookkeeping: BEGIN creates the job's row (done = claimed = at) when
 * missing and reads (done, claimed); CLAIM records that instant `at` starts
 * (a = 1 when it was not done yet); DONE records that it finished. */
typedef enum { PGS_CRON_BEGIN, PGS_CRON_CLAIM, PGS_CRON_DONE } pgs_cron_op_t;
void pgs_cron(pgs_cron_op_t op, const char *name, uint64_t at,
              void (*cb)(void *ud, int ok, int64_t a, int64_t b, const char *err), void *ud);

const pgs_stats_t *pgs_stats(void);
/* Batched statements queued or in flight (shutdown waits for them). */
int pgs_busy(void);

#endif
