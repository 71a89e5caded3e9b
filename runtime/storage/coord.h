/* coord.h - cluster coordination in PostgreSQL: the runners table, the shard
 * locks and change notices. The only place that knows their SQL.
 *
 * Ownership uses session-level advisory locks held by one dedicated "lock"
 * connection per runner, whose server session ends after --lease of
 * silence (idle_session_timeout). So a lock is released:
 *   - at once when the runner's process dies (the server sees its socket
 *     close and ends the session);
 *   - at most one lease after the runner's last round trip on that session
 *     when it is frozen or cut off (the server ends the idle session);
 *   - when the runner unlocks it (graceful hand-off).
 * A runner is live while it holds its own member lock (key: runner id) on
 * that same session; the live set is read from pg_locks, never guessed from
 * heartbeat ages. A second "main" connection reads membership, heartbeats
 * and LISTENs for change notices, so slow reads never delay a lease refresh.
 *
 * Lock keys are two int4s: (namespace, shard) and (namespace + 1, runner id),
 * the namespace derived from the table prefix, so two clusters can share a
 * database. */
#ifndef LUSTER_COORD_H
#define LUSTER_COORD_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct {
  const char *conninfo;
  const char *prefix;   /* table prefix, validated: [a-z_][a-z0-9_]{0,39} */
  const char *address;  /* advertised runner-to-runner address */
  const char *http;     /* HTTP gateway address or "none" */
  uint32_t weight, shards;
  uint64_t lease_ms;           /* --lease, identical on every runner */
  uint64_t session_timeout_ms; /* idle_session_timeout of the lock session (a little under the lease) */
  void *ud; /* passed to the three callbacks below */
  void (*on_lock_state)(void *ud, int up, const char *why);
  void (*on_main_state)(void *ud, int up, const char *why);
  void (*on_notice)(void *ud, const char *payload);
  /* This runner's proof of the cluster secret, published in its row, and the
   * check every live runner's proof (NULL: it published none) must pass at
   * bootstrap: 0, or -1 with a message in err. */
  const char *proof;
  int (*check_proof)(void *ud, const char *address, const char *proof, char *err, size_t errlen);
} coord_config_t;

typedef struct {
  int64_t id;
  char *address;
  char *http;
  uint32_t weight, shards;
  int stopping;
  int64_t heartbeat_age_ms;
  uint32_t held; /* shard locks its session holds */
  char *scripts;  /* "file\tversion\n" per script it serves ("error" when it failed to load) */
  char *proof;    /* its proof of the cluster secret, or NULL when it published none */
} coord_member_t;

/* 0 when prefix is a valid table prefix. */
int coord_valid_prefix(const char *prefix);
/* SQL text with "%1$s" replaced by the table prefix (malloc'd). */
char *coord_sql(const char *fmt, const char *prefix);
/* Blocking, before the loop runs: connects (bounded), applies migrations
 * under a transaction lock, refuses a shard count or lease that differs from
 * a live runner's and a live runner whose secret proof fails
 * cfg->check_proof, and registers this runner. Returns 0 with *self_id, or -1 with a
 * message in err. */
int coord_bootstrap(const coord_config_t *cfg, int64_t *self_id, char *err, size_t errlen);
/* One runner's coordination: its lock and main sessions and statements. */
typedef struct coord_s coord_t;

/* Opens the lock and main connections on the loop (NULL when they cannot be
 * set up). cfg's strings must outlive the value. */
coord_t *coord_open(uv_loop_t *loop, const coord_config_t *cfg, int64_t self_id);
/* Closes both sessions (their waiting callers learn now) and frees co. The
 * operations below do nothing on a NULL co (closed: nothing answers). */
void coord_close(coord_t *co);

/* Lock session. `ok` is 1 only for a confirmed result within the deadline. */
typedef void (*coord_done_cb)(void *ud, int ok, const char *err);
void coord_lock_self(coord_t *co, uint64_t timeout_ms, void (*cb)(void *ud, int ok, int got), void *ud);
void coord_ping(coord_t *co, uint64_t timeout_ms, coord_done_cb cb, void *ud);
/* Milliseconds since the PostgreSQL server started (to wait out leases held
 * on a server that restarted). */
void coord_server_age(coord_t *co, uint64_t timeout_ms, void (*cb)(void *ud, int ok, int64_t age_ms), void *ud);
/* Tries to lock shards; cb gets the ones acquired. */
void coord_try_shards(coord_t *co, const uint32_t *shards, int n, uint64_t timeout_ms,
                      void (*cb)(void *ud, int ok, const uint32_t *got, int ngot), void *ud);
void coord_unlock_shards(coord_t *co, const uint32_t *shards, int n, uint64_t timeout_ms, coord_done_cb cb, void *ud);
/* Drops the lock session now (every lock it held is released by the server
 * as soon as it sees the connection close); it reconnects after backoff. */
void coord_reset_lock(coord_t *co, const char *why);

/* Main session. */
void coord_members(coord_t *co, uint64_t timeout_ms, void (*cb)(void *ud, int ok, coord_member_t *m, int n), void *ud);
void coord_free_members(coord_member_t *m, int n);
void coord_heartbeat(coord_t *co, int stopping, uint32_t held, const char *scripts, uint64_t timeout_ms,
                     coord_done_cb cb, void *ud);
void coord_unregister(coord_t *co, uint64_t timeout_ms, coord_done_cb cb, void *ud);
void coord_notify(coord_t *co, const char *what);
int coord_lock_up(coord_t *co);
int coord_main_up(coord_t *co);

#endif
