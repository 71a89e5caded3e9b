/* pgconn.h - one PostgreSQL connection that never blocks the loop.
 *
 * libpq in non-blocking mode, driven by uv_poll on PQsocket, in pipeline
 * mode: queries queued during one loop turn go out together and their
 * results come back in order. Every query is parameterized and prepared on
 * first use on that connection (statements are named by the caller's SQL
 * text, so the same SQL is parsed once per connection). Every query has a
 * deadline. A lost connection fails what is waiting and reconnects with
 * backoff; after each (re)connect the `on_connect` statements run before
 * anything else. Callbacks never run from inside pgc_query. */
#ifndef LUSTER_PGCONN_H
#define LUSTER_PGCONN_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct pgc_s pgc_t;

typedef enum {
  PGC_OK = 0,       /* res holds the result (tuples or command status) */
  PGC_ERROR,        /* the statement failed: err says why (SQLSTATE in sqlstate) */
  PGC_TIMEOUT,      /* no result before the deadline; a late result is dropped */
  PGC_UNAVAILABLE,  /* not connected, or the connection was lost before the result */
} pgc_status_t;

/* res is valid only during the callback (pgconn clears it afterwards); err
 * is NULL for PGC_OK; sqlstate is "" unless PGC_ERROR. */
typedef void (*pgc_result_cb)(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate);

typedef struct {
  const char *conninfo;         /* a postgres:// URL or key=value string */
  const char *name;             /* for log lines: "lock", "main", ... */
  const char *const *on_connect; /* NULL-terminated; run in order after each connect (no parameters) */
  /* up: connected and on_connect done (called from the socket's callback).
   * down: once per lost connection, deferred to the next loop turn, before
   * the failures of what was waiting; not for failed attempts while already
   * down. The initial state is down without a call. */
  void (*on_state)(void *ud, int up, const char *why);
  void (*on_notify)(void *ud, const char *channel, const char *payload);
  void *ud;
  uint64_t connect_timeout_ms;  /* a connect attempt (including on_connect) that takes longer is abandoned; 0 = 10 s */
  uint64_t backoff_min_ms, backoff_max_ms; /* 0 = 100 ms, 5 s */
} pgc_opts_t;

typedef struct {
  uint64_t queries, errors, timeouts; /* pgc_query calls; PGC_ERROR and PGC_TIMEOUT answers */
  uint64_t reconnects;                /* connect attempts after the first */
  uint64_t in_flight;                 /* queries whose callback has not run yet */
} pgc_stats_t;

pgc_t *pgc_open(uv_loop_t *loop, const pgc_opts_t *o);
int pgc_up(const pgc_t *c);
/* Queues one statement. values[i] are text-format parameters (NULL = SQL
 * NULL), lengths may be NULL (NUL-terminated values). The SQL string must
 * stay valid for the connection's life (use literals). timeout_ms 0 = none.
 * When the connection is down, cb gets PGC_UNAVAILABLE (soon, not now);
 * while a connect attempt is in progress (also right after pgc_open) the
 * query waits for it. */
void pgc_query(pgc_t *c, const char *sql, int nparams, const char *const *values, const int *lengths,
               uint64_t timeout_ms, pgc_result_cb cb, void *ud);
/* Drops the connection now (waiting queries get PGC_UNAVAILABLE) and
 * reconnects after the minimum backoff. */
void pgc_reset(pgc_t *c, const char *why);
/* Fails everything waiting with PGC_UNAVAILABLE and frees the connection
 * (its handles close on the next loop turns). Unlike everywhere else, those
 * callbacks run now, inside pgc_close (a query a callback adds is failed in
 * the same pass), so shutdown has nothing left owed when it returns. No
 * on_state or on_notify after pgc_close; `c` must not be used after it
 * returns. Safe to call from inside any pgconn callback. */
void pgc_close(pgc_t *c);
const pgc_stats_t *pgc_stats(const pgc_t *c);

#endif
