/* msgstore.h - the operations on stored persisted messages, their replies
 * and cron instants that cluster/durable.c drives, as one table of function
 * pointers filled by a backend: PostgreSQL (pgstore.c, a cluster) or SQLite
 * (sqlite.c, one runner). durable.c keeps the logic (delivery, scans,
 * deliver_at timers, retention, cron claims); a backend only stores and
 * reads. Every callback runs on the loop thread, never from inside the call
 * that queued it, and operations take effect in the order they were queued:
 * a read sees every write whose callback ran before the read was queued. */
#ifndef LUSTER_MSGSTORE_H
#define LUSTER_MSGSTORE_H

#include <stddef.h>
#include <stdint.h>

#include "storage/estate.h"

#define MS_DEDUPE_LEN 64 /* hex SHA-256 of (type, id, rpc, primary key) */
#define MS_TRACE_LEN 55  /* a version 00 traceparent (core/trace.h's TRACE_HEADER_LEN) */

typedef struct {
  uint32_t shard;
  const char *type, *id, *rpc, *payload, *headers; /* headers NULL = none */
  size_t type_len, id_len, rpc_len, payload_len, headers_len;
  const char *dedupe; /* NUL-terminated, NULL when the RPC has no primary key */
  uint64_t deliver_at; /* epoch ms, 0 = now */
  char trace[MS_TRACE_LEN + 1]; /* its trace context as a traceparent, "" for none */
} ms_msg_t;

typedef enum {
  MS_STORED,   /* new: stored under seq */
  MS_PENDING,  /* the key was stored before (seq), no reply yet */
  MS_DONE,     /* the key was stored before and has its reply */
  MS_CONFLICT, /* the key was stored before (seq) with a different payload */
  MS_FAILED,   /* not stored: err says why */
} ms_put_status_t;

typedef void (*ms_put_cb)(void *ud, ms_put_status_t st, uint64_t seq, int kind, const char *reply, size_t len,
                          const char *err);
/* What a stored message is now. ok 0: the read failed (err). found 0: no
 * such message (never stored, or pruned). */
typedef void (*ms_state_cb)(void *ud, int ok, uint64_t seq, int found, int done, int kind, const char *reply,
                            size_t len, const char *err);
typedef void (*ms_done_cb)(void *ud, int ok, const char *err);

typedef struct {
  uint64_t seq, deliver_at;
  uint32_t shard;
  const char *type, *id, *rpc, *payload, *headers; /* headers NULL = none */
  size_t type_len, id_len, rpc_len, payload_len, headers_len;
  char trace[MS_TRACE_LEN + 1]; /* as stored with the message, "" for none */
} ms_row_t;

typedef void (*ms_scan_cb)(void *ud, int ok, const ms_row_t *rows, int nrows);
typedef void (*ms_due_cb)(void *ud, int ok, uint64_t due);
typedef void (*ms_prune_cb)(void *ud, int ok, uint64_t deleted);

/* Cron bookkeeping: BEGIN creates the job's row (done = claimed = at) when
 * missing and reads (done, claimed); CLAIM records that instant `at` starts
 * (a = 1 when it was not done yet); DONE records that it finished. */
typedef enum { MS_CRON_BEGIN, MS_CRON_CLAIM, MS_CRON_DONE } ms_cron_op_t;
typedef void (*ms_cron_cb)(void *ud, int ok, int64_t a, int64_t b, const char *err);

typedef struct {
  uint64_t stored, duplicates, replies, reads, scanned, pruned, failures;
  uint64_t put_batches, reply_batches, read_batches;
  uint64_t state_saves, state_loads; /* durable entity state rows written (or deleted), and read */
} ms_stats_t;

/* One backend; ctx is its own value, passed back to every operation. */
typedef struct {
  const char *name; /* "PostgreSQL", "SQLite": named in errors callers see */
  void *ctx;
  int (*up)(void *ctx);
  /* Stores m (copied) or finds the message stored under its dedupe key,
   * comparing that message's payload with m's (MS_CONFLICT when they
   * differ, see ms_same_payload). */
  void (*put)(void *ctx, const ms_msg_t *m, ms_put_cb cb, void *ud);
  /* Reads whether message seq is pending or done (and its reply). */
  void (*state)(void *ctx, uint64_t seq, ms_state_cb cb, void *ud);
  /* Stores message seq's reply and marks it done, and w (NULL: none, see
   * estate.h) in the same transaction; cb after the commit. A message that
   * is done already keeps its reply, and w is not written. */
  void (*reply)(void *ctx, uint64_t seq, int kind, const char *body, size_t len, const estate_write_t *w,
                ms_done_cb cb, void *ud);
  /* Pending messages of these shards due by now_ms with seq > after, oldest
   * first, at most limit; rows are valid during the callback. */
  void (*scan)(void *ctx, const uint32_t *shards, int n, uint64_t now_ms, uint64_t after, int limit, ms_scan_cb cb,
               void *ud);
  /* The earliest deliver_at after now_ms among pending messages of these
   * shards (0 when none). */
  void (*next_due)(void *ctx, const uint32_t *shards, int n, uint64_t now_ms, ms_due_cb cb, void *ud);
  /* Deletes at most limit messages of these shards done before cutoff_ms. */
  void (*prune)(void *ctx, const uint32_t *shards, int n, uint64_t cutoff_ms, int limit, ms_prune_cb cb, void *ud);
  void (*cron)(void *ctx, ms_cron_op_t op, const char *name, uint64_t at, ms_cron_cb cb, void *ud);
  /* Operations queued or in flight (shutdown waits for them). */
  int (*busy)(void *ctx);
  const ms_stats_t *(*stats)(void *ctx);
  /* Ends the backend: operations still queued answer now (committed, or
   * failed), then ctx is gone. */
  void (*close)(void *ctx);
} ms_ops_t;

/* Whether a send's payload is the one stored under its key: the same bytes,
 * or the same canonical JSON (a retry encoded elsewhere, members reordered).
 * Every backend compares in C, so that all of them agree. */
int ms_same_payload(const char *sent, size_t sent_len, const char *stored, size_t stored_len);

#endif
