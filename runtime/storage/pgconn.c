/* pgconn.c - one PostgreSQL connection that never blocks the loop.
 *
 * States: WAIT (no connection; the backoff timer will start an attempt),
 * CONNECTING (PQconnectPoll steps), INIT (connected, on_connect statements
 * running), UP. `ctimer` is the backoff delay in WAIT and the attempt's
 * deadline in CONNECTING and INIT.
 *
 * An entry (pgc_q_t) is one pgc_query call and lives on exactly one list:
 *
 *   pending  queued, not yet handed to libpq (UP sends them; a connect
 *            attempt in progress keeps them until it ends)
 *   sent     handed to libpq, in pipeline order. Each is sent as
 *            [Parse] Bind/Execute Sync, so its results end with its own
 *            PGRES_PIPELINE_SYNC: one failing statement aborts only itself,
 *            and the sync result is what moves the list forward.
 *   failq    answered without the server (down, lost, closed, bad
 *            arguments): delivered from the `tick` idle handle, so no
 *            callback runs inside pgc_query or pgc_reset.
 *
 * Deadlines sit in a min-heap behind one timer. An expired entry gets
 * PGC_TIMEOUT at once; if it was already sent it stays on `sent` with no
 * callback, as the placeholder its late result is matched against.
 *
 * Re-entrancy: any user callback may call pgc_query, pgc_reset or pgc_close.
 * Entries are unlinked before their callback runs, and every loop that runs
 * callbacks re-checks `gen` (bumped whenever the connection is dropped) and
 * `closing` after each one. `c` itself is freed only from the close
 * callbacks of its handles, never inside one of our own callbacks.
 *
 * One blocking step remains: libpq 15 resolves a host name inside
 * PQconnectStart. Give an IP address (or a name the hosts file answers) for
 * a loop that must never stall. */
#include "storage/pgconn.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loop/log.h"
#include "core/hash.h"
#include "core/heap.h"
#include "core/htab.h"

/* Sent but unanswered entries per connection: bounds libpq's buffers and how
 * much a lost connection fails at once; deep enough that a round trip per
 * batch does not limit throughput. */
#define PGC_MAX_PIPELINE 1024
/* Entries waiting on one connection (all lists): beyond this a caller that
 * outruns the database gets PGC_UNAVAILABLE instead of growing memory. */
#define PGC_MAX_WAITING 262144
/* An oldest entry unanswered for max(2 x its timeout, this) means the
 * connection is wedged (a server that stopped answering, a half-open TCP
 * connection): only a reset gets the queries behind it moving again. */
#define PGC_WEDGE_MIN_MS 5000
#define PGC_DEFAULT_CONNECT_TIMEOUT_MS 10000
#define PGC_DEFAULT_BACKOFF_MIN_MS 100
#define PGC_DEFAULT_BACKOFF_MAX_MS 5000
/* Longer deadlines are clamped (34 years): deadline arithmetic cannot wrap. */
#define PGC_MAX_TIMEOUT_MS (1ull << 40)
/* PostgreSQL's limit on parameters of one statement (a 16-bit count). */
#define PGC_MAX_PARAMS 65535

enum { PGC_WAIT, PGC_CONNECTING, PGC_INIT, PGC_UP };
enum { PGC_ON_NONE, PGC_ON_PENDING, PGC_ON_SENT, PGC_ON_FAILQ };

typedef struct pgc_stmt_s {
  htab_node_t node;
  const char *sql;
  size_t len;
  char name[24];
} pgc_stmt_t;

typedef struct pgc_q_s {
  struct pgc_q_s *prev, *next;
  heap_node_t hn; /* the deadline, while the entry can still time out */
  const char *sql;
  pgc_result_cb cb; /* NULL once answered (timed out) or for fire-and-forget */
  void *ud;
  uint64_t queued_ms, timeout_ms;
  int nparams;
  int on;          /* PGC_ON_*: which list holds it */
  int internal;    /* an on_connect statement: answered to pgconn itself */
  int answered;    /* the caller got its callback (a timeout); drop the result */
  pgc_stmt_t *stmt; /* the statement it executes, while on `sent` */
  int prepare;     /* sent the Parse for `stmt` ahead of it */
  PGresult *res;   /* the result that decides its outcome (first error wins) */
  pgc_status_t fail_st; /* on failq: what to deliver */
  char *fail_err;  /* on failq, or on `sent`: the error of a Parse it relied on */
  char fail_state[6];
  char **values;   /* copies, in the same allocation */
} pgc_q_t;

typedef struct {
  pgc_q_t *head, *tail;
  size_t n;
} pgc_list_t;

struct pgc_s {
  uv_loop_t *loop;
  uv_timer_t timer;  /* earliest query deadline, or the wedge check */
  uv_timer_t ctimer; /* backoff delay, or connect attempt deadline */
  uv_idle_t tick;    /* deferred callbacks and batched sends */
  uv_poll_t *poll;   /* on PQsocket; replaced when libpq changes sockets */
  int poll_fd;
  ino_t poll_ino;
  int poll_events;
  int handles;       /* embedded handles not yet closed */
  int closing;
  unsigned gen;

  char *conninfo, *name;
  char **on_connect;
  int non_connect;
  void (*on_state)(void *ud, int up, const char *why);
  void (*on_notify)(void *ud, const char *channel, const char *payload);
  void *ud;
  uint64_t connect_timeout_ms, backoff_min_ms, backoff_max_ms, backoff_ms;

  PGconn *conn;
  int state;
  int flushing;      /* PQflush left output unsent: wait for writable */
  int init_left;     /* on_connect statements not yet answered */
  int attempts;      /* connect attempts started, ever */
  int reported_down; /* "cannot connect" / "lost" logged since the last up */
  int down_pending;  /* on_state(0) owed (deferred) */
  char down_why[256];
  char last_err[256];

  htab_t stmts;
  unsigned nstmts;
  pgc_list_t pending, sent, failq;
  heap_t deadlines;
  uint64_t timer_due;
  pgc_stats_t st;
};

static void pgc__connect(pgc_t *c);
static void pgc__lost(pgc_t *c, const char *why);
static void pgc__send(pgc_t *c);
static void pgc__arm(pgc_t *c);

static void *pgc__alloc(size_t n) {
  void *p = calloc(1, n);
  if (!p) { fprintf(stderr, "luster: out of memory allocating %zu bytes for a PostgreSQL query\n", n); abort(); }
  return p;
}

static char *pgc__strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = pgc__alloc(n);
  memcpy(p, s, n);
  return p;
}

/* libpq messages end in newlines and continue on tab-indented lines: one log
 * line wants them joined. */
static void pgc__oneline(char *dst, size_t cap, const char *src) {
  size_t n = 0;
  int space = 0;
  for (const char *p = src ? src : ""; *p && n + 1 < cap; p++) {
    if (*p == '\n' || *p == '\r' || *p == '\t') { space = 1; continue; }
    if (space && n > 0 && n + 2 < cap) dst[n++] = ' ';
    space = 0;
    dst[n++] = *p;
  }
  dst[n] = 0;
}

/* ---- lists ------------------------------------------------------------ */

static void pgc__push(pgc_list_t *l, pgc_q_t *e, int on) {
  e->prev = l->tail;
  e->next = NULL;
  if (l->tail) l->tail->next = e;
  else l->head = e;
  l->tail = e;
  l->n++;
  e->on = on;
}

static void pgc__unlink(pgc_list_t *l, pgc_q_t *e) {
  if (e->prev) e->prev->next = e->next;
  else l->head = e->next;
  if (e->next) e->next->prev = e->prev;
  else l->tail = e->prev;
  e->prev = e->next = NULL;
  l->n--;
  e->on = PGC_ON_NONE;
}

static pgc_list_t *pgc__list(pgc_t *c, int on) {
  return on == PGC_ON_PENDING ? &c->pending : on == PGC_ON_SENT ? &c->sent : on == PGC_ON_FAILQ ? &c->failq : NULL;
}

static void pgc__free_q(pgc_q_t *e) {
  PQclear(e->res);
  free(e->fail_err);
  free(e);
}

/* ---- prepared statements ------------------------------------------------ */

static int pgc__stmt_eq(const htab_node_t *n, const void *key, size_t len) {
  const pgc_stmt_t *s = (const pgc_stmt_t *)n;
  return s->len == len && memcmp(s->sql, key, len) == 0;
}

static void pgc__stmts_reset(pgc_t *c) {
  size_t i;
  htab_node_t *n = htab_first(&c->stmts, &i);
  while (n) {
    htab_node_t *next = htab_next(&c->stmts, n, &i);
    free(n);
    n = next;
  }
  htab_free(&c->stmts);
  c->nstmts = 0;
}

/* ---- deferred work -------------------------------------------------------- */

static void pgc__tick_cb(uv_idle_t *h);

static void pgc__kick(pgc_t *c) {
  if (!c->closing && !uv_is_active((uv_handle_t *)&c->tick)) uv_idle_start(&c->tick, pgc__tick_cb);
}

/* Moves an entry (already unlinked) to failq with what to tell its caller. */
static void pgc__fail_later(pgc_t *c, pgc_q_t *e, pgc_status_t st, const char *err) {
  heap_remove(&c->deadlines, &e->hn);
  e->stmt = NULL;
  e->fail_st = st;
  free(e->fail_err);
  e->fail_err = pgc__strdup(err);
  pgc__push(&c->failq, e, PGC_ON_FAILQ);
  pgc__kick(c);
}

/* Runs an entry's callback and frees it. The entry is already off every list
 * and out of the heap. */
static void pgc__finish(pgc_t *c, pgc_q_t *e, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  pgc_result_cb cb = e->answered ? NULL : e->cb;
  if (!e->answered) {
    c->st.in_flight--;
    if (st == PGC_ERROR) c->st.errors++;
    else if (st == PGC_TIMEOUT) c->st.timeouts++;
  }
  if (cb) cb(e->ud, st, res, err, sqlstate ? sqlstate : "");
  pgc__free_q(e);
}

/* Delivers what is owed from outside any pgconn call: on_state(0) for a lost
 * connection, then the failq entries present now (ones that callbacks add
 * wait for the next turn, so a caller retrying on failure cannot spin here). */
static void pgc__drain(pgc_t *c) {
  if (c->down_pending) {
    char why[sizeof c->down_why];
    memcpy(why, c->down_why, sizeof why);
    c->down_pending = 0;
    if (c->on_state) c->on_state(c->ud, 0, why);
    if (c->closing) return;
  }
  size_t n = c->failq.n;
  while (n-- > 0 && c->failq.head && !c->closing) {
    pgc_q_t *e = c->failq.head;
    pgc__unlink(&c->failq, e);
    pgc__finish(c, e, e->fail_st, NULL, e->fail_err, "");
  }
}

static void pgc__tick_cb(uv_idle_t *h) {
  pgc_t *c = h->data;
  uv_idle_stop(h);
  pgc__drain(c);
  if (c->closing) return;
  if (c->state == PGC_UP) pgc__send(c);
  if (!c->closing && (c->failq.head || c->down_pending)) pgc__kick(c);
}

/* ---- deadlines -------------------------------------------------------- */

static uint64_t pgc__wedge_due(const pgc_q_t *e) {
  uint64_t w = 2 * e->timeout_ms;
  return e->queued_ms + (w > PGC_WEDGE_MIN_MS ? w : PGC_WEDGE_MIN_MS);
}

static void pgc__timer_cb(uv_timer_t *t) {
  pgc_t *c = t->data;
  c->timer_due = 0;
  uint64_t now = uv_now(c->loop);
  char err[96];
  heap_node_t *n;
  while (!c->closing && (n = heap_top(&c->deadlines)) && n->due <= now) {
    heap_pop(&c->deadlines);
    pgc_q_t *e = (pgc_q_t *)((char *)n - offsetof(pgc_q_t, hn));
    snprintf(err, sizeof err, "no result within %llu ms", (unsigned long long)e->timeout_ms);
    if (e->on == PGC_ON_SENT) {
      /* Stays in the pipeline to absorb its late result. */
      pgc_result_cb cb = e->cb;
      e->answered = 1;
      c->st.in_flight--;
      c->st.timeouts++;
      if (cb) cb(e->ud, PGC_TIMEOUT, NULL, err, "");
    } else {
      pgc__unlink(pgc__list(c, e->on), e);
      pgc__finish(c, e, PGC_TIMEOUT, NULL, err, "");
    }
  }
  if (c->closing) return;
  pgc_q_t *h = c->sent.head;
  if (h && h->timeout_ms && !h->internal && pgc__wedge_due(h) <= now) {
    char why[160];
    snprintf(why, sizeof why, "no result for %llu ms (query timeout %llu ms): the connection looks wedged",
             (unsigned long long)(now - h->queued_ms), (unsigned long long)h->timeout_ms);
    pgc_reset(c, why);
    return;
  }
  pgc__arm(c);
}

/* Keeps the timer at or before the earliest deadline. It may fire early
 * (after the earliest entry was answered); it then re-arms. */
static void pgc__arm(pgc_t *c) {
  if (c->closing) return;
  uint64_t due = UINT64_MAX;
  heap_node_t *n = heap_top(&c->deadlines);
  if (n) due = n->due;
  pgc_q_t *h = c->sent.head;
  if (h && h->timeout_ms && !h->internal && pgc__wedge_due(h) < due) due = pgc__wedge_due(h);
  if (due == UINT64_MAX) {
    if (c->timer_due) uv_timer_stop(&c->timer);
    c->timer_due = 0;
    return;
  }
  if (c->timer_due && c->timer_due <= due) return;
  uint64_t now = uv_now(c->loop);
  uv_timer_start(&c->timer, pgc__timer_cb, due > now ? due - now : 0, 0);
  c->timer_due = due;
}

/* ---- the socket ------------------------------------------------------- */

static void pgc__poll_closed(uv_handle_t *h) { free(h); }

static void pgc__poll_stop(pgc_t *c) {
  if (!c->poll) return;
  uv_close((uv_handle_t *)c->poll, pgc__poll_closed);
  c->poll = NULL;
  c->poll_fd = -1;
  c->poll_events = 0;
}

static void pgc__poll_cb(uv_poll_t *p, int status, int events);

/* Watches libpq's socket for `events`. libpq may close its socket and open
 * another during a connect attempt (next address, SSL or GSS fallback), and
 * the new one can get the same number: a poll handle on the old one would
 * never fire. So the handle is tied to the socket's inode, and replaced
 * (the old one closed first, so libuv forgets the fd) when it differs. */
static int pgc__watch(pgc_t *c, int events) {
  int fd = PQsocket(c->conn);
  if (fd < 0) return UV_EBADF;
  struct stat sb;
  if (!c->poll || c->state == PGC_CONNECTING) {
    /* Once connected the socket stays: no fstat per flush. */
    if (fstat(fd, &sb) != 0) return UV_EBADF;
    if (c->poll && (c->poll_fd != fd || c->poll_ino != sb.st_ino)) pgc__poll_stop(c);
  }
  if (!c->poll) {
    c->poll = pgc__alloc(sizeof *c->poll);
    int rc = uv_poll_init_socket(c->loop, c->poll, fd);
    if (rc < 0) {
      free(c->poll);
      c->poll = NULL;
      return rc;
    }
    c->poll->data = c;
    c->poll_fd = fd;
    c->poll_ino = sb.st_ino;
    c->poll_events = 0;
  }
  if (events == c->poll_events) return 0;
  int rc = uv_poll_start(c->poll, events, pgc__poll_cb);
  if (rc == 0) c->poll_events = events;
  return rc;
}

/* Closes the libpq connection (poll handle first: libuv must stop watching
 * the fd before libpq closes it). */
static void pgc__disconnect(pgc_t *c) {
  pgc__poll_stop(c);
  if (c->conn) PQfinish(c->conn);
  c->conn = NULL;
  c->flushing = 0;
  c->init_left = 0;
  pgc__stmts_reset(c);
}

/* ---- connection lifecycle ------------------------------------------------ */

static void pgc__ctimer_cb(uv_timer_t *t) {
  pgc_t *c = t->data;
  if (c->state == PGC_WAIT) pgc__connect(c);
  else if (c->state != PGC_UP) {
    char why[96];
    snprintf(why, sizeof why, "no connection within %llu ms", (unsigned long long)c->connect_timeout_ms);
    pgc__lost(c, why);
  }
}

/* Drops the connection (or the attempt): everything waiting fails with
 * PGC_UNAVAILABLE (deferred), on_state(0) is owed if it was up, and the next
 * attempt starts after the current backoff, which then doubles. */

/* Queries already sent get `why` (those answered or internal just go). */
static void pgc__fail_sent(pgc_t *c, const char *why) {
  while (c->sent.head) {
    pgc_q_t *e = c->sent.head;
    pgc__unlink(&c->sent, e);
    if (e->internal || e->answered) {
      heap_remove(&c->deadlines, &e->hn);
      pgc__free_q(e);
    } else pgc__fail_later(c, e, PGC_UNAVAILABLE, why);
  }
}

static void pgc__lost(pgc_t *c, const char *reason) {
  char why[256];
  pgc__oneline(why, sizeof why, reason && *reason ? reason : "connection lost");
  int was = c->state;
  c->gen++;
  pgc__disconnect(c);
  c->state = PGC_WAIT;
  snprintf(c->last_err, sizeof c->last_err, "%s", why);

  char err[300];
  snprintf(err, sizeof err, "%s: %s", was == PGC_UP ? "connection lost" : "not connected", why);
  pgc__fail_sent(c, err);
  while (c->pending.head) {
    pgc_q_t *e = c->pending.head;
    pgc__unlink(&c->pending, e);
    pgc__fail_later(c, e, PGC_UNAVAILABLE, err);
  }

  if (was == PGC_UP) {
    log_warn("pg %s: connection lost: %s", c->name, why);
    c->down_pending = 1;
    snprintf(c->down_why, sizeof c->down_why, "%s", why);
    pgc__kick(c);
  } else if (!c->reported_down) {
    log_warn("pg %s: cannot connect: %s (retrying with backoff up to %llu ms)", c->name, why,
             (unsigned long long)c->backoff_max_ms);
  } else {
    log_debug("pg %s: connect attempt failed: %s", c->name, why);
  }
  c->reported_down = 1;
  uv_timer_start(&c->ctimer, pgc__ctimer_cb, c->backoff_ms, 0);
  c->backoff_ms = c->backoff_ms * 2 > c->backoff_max_ms ? c->backoff_max_ms : c->backoff_ms * 2;
  pgc__arm(c);
}

static void pgc__notice(void *arg, const char *msg) {
  pgc_t *c = arg;
  char line[512];
  pgc__oneline(line, sizeof line, msg);
  log_debug("pg %s: server notice: %s", c->name, line);
}

static void pgc__up(pgc_t *c) {
  uv_timer_stop(&c->ctimer);
  c->state = PGC_UP;
  c->backoff_ms = c->backoff_min_ms;
  if (c->reported_down) log_info("pg %s: connection restored (%s:%s)", c->name, PQhost(c->conn), PQport(c->conn));
  else log_info("pg %s: connected (%s:%s)", c->name, PQhost(c->conn), PQport(c->conn));
  c->reported_down = 0;
  unsigned gen = c->gen;
  /* A previous loss's on_state(0) and failures come first, so callers see
   * down, then up. */
  pgc__drain(c);
  if (c->closing || gen != c->gen) return;
  if (c->on_state) c->on_state(c->ud, 1, NULL);
  if (c->closing || gen != c->gen) return;
  pgc__send(c);
}

/* Connected: pipeline mode, then the on_connect statements (each its own
 * sync, answered to pgconn), then up. */
static void pgc__connected(pgc_t *c) {
  if (PQsetnonblocking(c->conn, 1) != 0 || PQenterPipelineMode(c->conn) != 1) {
    pgc__lost(c, PQerrorMessage(c->conn));
    return;
  }
  c->state = PGC_INIT;
  c->init_left = c->non_connect;
  for (int i = 0; i < c->non_connect; i++) {
    if (!PQsendQueryParams(c->conn, c->on_connect[i], 0, NULL, NULL, NULL, NULL, 0) || !PQpipelineSync(c->conn)) {
      pgc__lost(c, PQerrorMessage(c->conn));
      return;
    }
    pgc_q_t *e = pgc__alloc(sizeof *e);
    e->hn.idx = HEAP_NONE;
    e->internal = 1;
    e->sql = c->on_connect[i];
    e->queued_ms = uv_now(c->loop);
    pgc__push(&c->sent, e, PGC_ON_SENT);
  }
  if (c->non_connect == 0) {
    if (pgc__watch(c, UV_READABLE) < 0) pgc__lost(c, "cannot watch the connection's socket");
    else pgc__up(c);
    return;
  }
  int r = PQflush(c->conn);
  if (r < 0) { pgc__lost(c, PQerrorMessage(c->conn)); return; }
  c->flushing = r == 1;
  if (pgc__watch(c, UV_READABLE | (c->flushing ? UV_WRITABLE : 0)) < 0)
    pgc__lost(c, "cannot watch the connection's socket");
}

/* One PQconnectPoll step; then wait for what libpq asked for. */
static void pgc__connect_step(pgc_t *c) {
  PostgresPollingStatusType ps = PQconnectPoll(c->conn);
  switch (ps) {
  case PGRES_POLLING_OK: pgc__connected(c); return;
  case PGRES_POLLING_READING:
  case PGRES_POLLING_WRITING:
    if (pgc__watch(c, ps == PGRES_POLLING_READING ? UV_READABLE : UV_WRITABLE) < 0)
      pgc__lost(c, "cannot watch the connection's socket");
    return;
  default: pgc__lost(c, PQerrorMessage(c->conn)); return;
  }
}

static void pgc__connect(pgc_t *c) {
  if (c->attempts++ > 0) c->st.reconnects++;
  c->state = PGC_CONNECTING;
  c->conn = PQconnectStart(c->conninfo);
  if (!c->conn) { pgc__lost(c, "out of memory starting a connection"); return; }
  if (PQstatus(c->conn) == CONNECTION_BAD) { pgc__lost(c, PQerrorMessage(c->conn)); return; }
  /* Server notices (and a FATAL that arrives while idle) would go to stderr. */
  PQsetNoticeProcessor(c->conn, pgc__notice, c);
  uv_timer_start(&c->ctimer, pgc__ctimer_cb, c->connect_timeout_ms, 0);
  /* After PQconnectStart, libpq wants the socket writable (as if
   * PQconnectPoll had answered PGRES_POLLING_WRITING). */
  if (pgc__watch(c, UV_WRITABLE) < 0) pgc__lost(c, "cannot watch the connection's socket");
}

/* ---- results ---------------------------------------------------------- */

/* A result that means the session is gone rather than the statement wrong:
 * connection exceptions (08) and operator intervention (57P: shutdown,
 * crash, dropped database). 57014 (query cancelled) is the statement's. */
static int pgc__session_gone(const PGresult *r) {
  const char *s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  return s && (strncmp(s, "08", 2) == 0 || strncmp(s, "57P", 3) == 0);
}

static void pgc__answer(pgc_t *c, pgc_q_t *e) {
  pgc__unlink(&c->sent, e);
  heap_remove(&c->deadlines, &e->hn);
  PGresult *r = e->res;
  ExecStatusType rs = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (e->internal) {
    if (rs != PGRES_COMMAND_OK && rs != PGRES_TUPLES_OK) {
      char msg[300], why[400];
      const char *primary = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
      pgc__oneline(msg, sizeof msg, primary ? primary : r ? PQresultErrorMessage(r) : "no result");
      log_error("pg %s: on_connect statement failed: %s: %s", c->name, e->sql, msg);
      snprintf(why, sizeof why, "on_connect statement failed: %s", msg);
      pgc__free_q(e);
      pgc__lost(c, why);
      return;
    }
    pgc__free_q(e);
    if (--c->init_left == 0) pgc__up(c);
    return;
  }
  if (e->fail_err) {
    pgc__finish(c, e, PGC_ERROR, NULL, e->fail_err, e->fail_state);
    return;
  }
  if (rs == PGRES_COMMAND_OK || rs == PGRES_TUPLES_OK || rs == PGRES_EMPTY_QUERY) {
    pgc__finish(c, e, PGC_OK, r, NULL, "");
    return;
  }
  char msg[512];
  const char *primary = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
  if (primary) snprintf(msg, sizeof msg, "%s", primary);
  else pgc__oneline(msg, sizeof msg, r ? PQresultErrorMessage(r) : "no result from the server");
  if (!*msg) snprintf(msg, sizeof msg, "unexpected result status %s", PQresStatus(rs));
  const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
  pgc__finish(c, e, PGC_ERROR, r, msg, state ? state : "");
}

/* The Parse for e->stmt failed: the statement is not on the server. Forget
 * it, so its next use prepares again; e's Execute comes back
 * PGRES_PIPELINE_ABORTED and this error is e's answer. Entries already sent
 * with the same statement name would get "prepared statement does not
 * exist": they get this error instead. */
static void pgc__prepare_failed(pgc_t *c, pgc_q_t *e, PGresult *r) {
  pgc_stmt_t *s = e->stmt;
  const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
  const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  for (pgc_q_t *o = e->next; o; o = o->next) {
    if (o->stmt != s) continue;
    o->stmt = NULL;
    if (o->fail_err) continue;
    o->fail_err = pgc__strdup(msg ? msg : "preparing the statement failed");
    snprintf(o->fail_state, sizeof o->fail_state, "%s", state ? state : "");
  }
  e->stmt = NULL;
  htab_remove(&c->stmts, &s->node);
  free(s);
  PQclear(e->res);
  e->res = r;
}

/* Takes every result libpq has parsed and matches it to `sent` in order.
 * Returns -1 when the connection was dropped, reset or closed meanwhile. */
static int pgc__results(pgc_t *c) {
  unsigned gen = c->gen;
  int nulls = 0;
  while (c->sent.head && !PQisBusy(c->conn)) {
    PGresult *r = PQgetResult(c->conn);
    if (!r) {
      /* One NULL ends each command's results; two in a row: libpq has
       * nothing queued (it returns no NULL after a sync). */
      if (++nulls >= 2) break;
      continue;
    }
    nulls = 0;
    pgc_q_t *e = c->sent.head;
    ExecStatusType rs = PQresultStatus(r);
    if (rs == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      pgc__answer(c, e);
      if (c->closing || gen != c->gen) return -1;
      continue;
    }
    if (rs == PGRES_FATAL_ERROR && (PQstatus(c->conn) == CONNECTION_BAD || pgc__session_gone(r))) {
      char why[300];
      pgc__oneline(why, sizeof why, PQresultErrorMessage(r));
      PQclear(r);
      pgc__lost(c, why);
      return -1;
    }
    if (rs == PGRES_COPY_IN || rs == PGRES_COPY_OUT || rs == PGRES_COPY_BOTH) {
      PQclear(r);
      pgc__lost(c, "a statement started COPY, which pgconn does not support");
      return -1;
    }
    if (e->prepare) {
      e->prepare = 0;
      if (rs != PGRES_COMMAND_OK) pgc__prepare_failed(c, e, r);
      else PQclear(r);
      continue;
    }
    if (!e->res || (PQresultStatus(e->res) != PGRES_FATAL_ERROR && rs == PGRES_FATAL_ERROR)) {
      PQclear(e->res);
      e->res = r;
    } else PQclear(r);
  }
  if (PQstatus(c->conn) == CONNECTION_BAD) {
    pgc__lost(c, PQerrorMessage(c->conn));
    return -1;
  }
  return 0;
}

static int pgc__notifies(pgc_t *c) {
  unsigned gen = c->gen;
  PGnotify *n;
  while ((n = PQnotifies(c->conn))) {
    if (c->on_notify) c->on_notify(c->ud, n->relname, n->extra ? n->extra : "");
    PQfreemem(n);
    if (c->closing || gen != c->gen) return -1;
  }
  return 0;
}

static int pgc__flush(pgc_t *c) {
  int r = PQflush(c->conn);
  if (r < 0) {
    pgc__lost(c, PQerrorMessage(c->conn));
    return -1;
  }
  c->flushing = r == 1;
  if (pgc__watch(c, UV_READABLE | (c->flushing ? UV_WRITABLE : 0)) < 0) {
    pgc__lost(c, "cannot watch the connection's socket");
    return -1;
  }
  return 0;
}

/* Hands pending entries to libpq, up to the pipeline depth, and flushes.
 * Nothing more is added while earlier output is unsent. */
static void pgc__send(pgc_t *c) {
  if (c->state != PGC_UP || c->flushing || !c->pending.head) return;
  int any = 0;
  while (c->pending.head && c->sent.n < PGC_MAX_PIPELINE) {
    pgc_q_t *e = c->pending.head;
    pgc__unlink(&c->pending, e);
    pgc__push(&c->sent, e, PGC_ON_SENT);
    any = 1;
    size_t len = strlen(e->sql);
    uint64_t h = hash_bytes(e->sql, len);
    pgc_stmt_t *s = (pgc_stmt_t *)htab_find(&c->stmts, h, pgc__stmt_eq, e->sql, len);
    if (!s) {
      s = pgc__alloc(sizeof *s);
      s->sql = e->sql;
      s->len = len;
      s->node.hash = h;
      snprintf(s->name, sizeof s->name, "s%u", ++c->nstmts);
      if (htab_insert(&c->stmts, &s->node) != 0) {
        free(s);
        pgc__lost(c, "out of memory for the prepared statement table");
        return;
      }
      if (!PQsendPrepare(c->conn, s->name, e->sql, e->nparams, NULL)) {
        pgc__lost(c, PQerrorMessage(c->conn));
        return;
      }
      e->prepare = 1;
    }
    e->stmt = s;
    if (!PQsendQueryPrepared(c->conn, s->name, e->nparams, (const char *const *)e->values, NULL, NULL, 0) ||
        !PQpipelineSync(c->conn)) {
      pgc__lost(c, PQerrorMessage(c->conn));
      return;
    }
  }
  if (!any) return;
  if (pgc__flush(c) < 0) return;
  /* Blocked sends let libpq read ahead: results may be waiting in its
   * buffer with nothing left on the socket to wake us. */
  if (c->flushing) pgc__results(c);
}

static void pgc__poll_cb(uv_poll_t *p, int status, int events) {
  pgc_t *c = p->data;
  if (c->closing || p != c->poll) return;
  if (status < 0) {
    /* libuv reports POLLERR as an error and stops the handle. libpq knows
     * what went wrong (a refused connect, a reset): let it say. */
    c->poll_events = 0;
    if (c->state == PGC_CONNECTING) {
      pgc__connect_step(c);
      return;
    }
    char why[300];
    if (!PQconsumeInput(c->conn) || PQstatus(c->conn) == CONNECTION_BAD) pgc__oneline(why, sizeof why, PQerrorMessage(c->conn));
    else snprintf(why, sizeof why, "socket error: %s", uv_strerror(status));
    pgc__lost(c, why);
    return;
  }
  if (c->state == PGC_CONNECTING) {
    pgc__connect_step(c);
    return;
  }
  if ((events & UV_READABLE) && !PQconsumeInput(c->conn)) {
    pgc__lost(c, PQerrorMessage(c->conn));
    return;
  }
  if (c->flushing && pgc__flush(c) < 0) return;
  if (pgc__results(c) < 0) return;
  if (pgc__notifies(c) < 0) return;
  pgc__send(c);
  /* The oldest entry may have changed: its wedge check may be due sooner. */
  pgc__arm(c);
}

/* ---- API ---------------------------------------------------------------- */

static void pgc__handle_closed(uv_handle_t *h) {
  pgc_t *c = h->data;
  if (--c->handles > 0) return;
  for (int i = 0; i < c->non_connect; i++) free(c->on_connect[i]);
  free(c->on_connect);
  free(c->conninfo);
  free(c->name);
  heap_free(&c->deadlines);
  free(c);
}

pgc_t *pgc_open(uv_loop_t *loop, const pgc_opts_t *o) {
  if (!loop || !o || !o->conninfo) return NULL;
  pgc_t *c = pgc__alloc(sizeof *c);
  c->loop = loop;
  c->poll_fd = -1;
  c->conninfo = pgc__strdup(o->conninfo);
  c->name = pgc__strdup(o->name ? o->name : "pg");
  while (o->on_connect && o->on_connect[c->non_connect]) c->non_connect++;
  c->on_connect = pgc__alloc(((size_t)c->non_connect + 1) * sizeof *c->on_connect);
  for (int i = 0; i < c->non_connect; i++) c->on_connect[i] = pgc__strdup(o->on_connect[i]);
  c->on_state = o->on_state;
  c->on_notify = o->on_notify;
  c->ud = o->ud;
  c->connect_timeout_ms = o->connect_timeout_ms ? o->connect_timeout_ms : PGC_DEFAULT_CONNECT_TIMEOUT_MS;
  c->backoff_min_ms = o->backoff_min_ms ? o->backoff_min_ms : PGC_DEFAULT_BACKOFF_MIN_MS;
  c->backoff_max_ms = o->backoff_max_ms ? o->backoff_max_ms : PGC_DEFAULT_BACKOFF_MAX_MS;
  if (c->backoff_max_ms < c->backoff_min_ms) c->backoff_max_ms = c->backoff_min_ms;
  c->backoff_ms = c->backoff_min_ms;
  htab_init(&c->stmts);
  heap_init(&c->deadlines);
  uv_timer_init(loop, &c->timer);
  uv_timer_init(loop, &c->ctimer);
  uv_idle_init(loop, &c->tick);
  c->timer.data = c->ctimer.data = c->tick.data = c;
  c->handles = 3;
  snprintf(c->last_err, sizeof c->last_err, "not connected yet");
  pgc__connect(c);
  return c;
}

int pgc_up(const pgc_t *c) { return c && !c->closing && c->state == PGC_UP; }

const pgc_stats_t *pgc_stats(const pgc_t *c) { return &c->st; }

void pgc_query(pgc_t *c, const char *sql, int nparams, const char *const *values, const int *lengths,
               uint64_t timeout_ms, pgc_result_cb cb, void *ud) {
  int bad = !sql || nparams < 0 || nparams > PGC_MAX_PARAMS || (nparams > 0 && !values);
  size_t size = sizeof(pgc_q_t);
  if (!bad) {
    size += (size_t)nparams * sizeof(char *);
    for (int i = 0; i < nparams; i++)
      if (values[i]) size += (lengths && lengths[i] >= 0 ? (size_t)lengths[i] : strlen(values[i])) + 1;
  }
  pgc_q_t *e = pgc__alloc(size);
  e->hn.idx = HEAP_NONE;
  e->sql = sql;
  e->cb = cb;
  e->ud = ud;
  e->queued_ms = uv_now(c->loop);
  e->timeout_ms = timeout_ms > PGC_MAX_TIMEOUT_MS ? PGC_MAX_TIMEOUT_MS : timeout_ms;
  c->st.queries++;
  c->st.in_flight++;
  if (bad) {
    char err[128];
    snprintf(err, sizeof err, "pgc_query: %s", !sql ? "no SQL" : nparams > 0 && values == NULL && nparams <= PGC_MAX_PARAMS
             ? "parameter values missing" : "the number of parameters must be 0 to 65535");
    pgc__fail_later(c, e, PGC_ERROR, err);
    return;
  }
  /* Text parameters are NUL-terminated copies; libpq ignores lengths for
   * text format. */
  e->nparams = nparams;
  e->values = (char **)(e + 1);
  char *p = (char *)(e->values + nparams);
  for (int i = 0; i < nparams; i++) {
    if (!values[i]) continue;
    size_t n = lengths && lengths[i] >= 0 ? (size_t)lengths[i] : strlen(values[i]);
    memcpy(p, values[i], n);
    p[n] = 0;
    e->values[i] = p;
    p += n + 1;
  }
  if (c->closing) { pgc__fail_later(c, e, PGC_UNAVAILABLE, "the connection is closed"); return; }
  if (c->pending.n + c->sent.n + c->failq.n >= PGC_MAX_WAITING) {
    char err[96];
    snprintf(err, sizeof err, "more than %d queries waiting on this connection", PGC_MAX_WAITING);
    pgc__fail_later(c, e, PGC_UNAVAILABLE, err);
    return;
  }
  if (c->state == PGC_WAIT) {
    char err[300];
    snprintf(err, sizeof err, "not connected: %s", c->last_err);
    pgc__fail_later(c, e, PGC_UNAVAILABLE, err);
    return;
  }
  if (e->timeout_ms) {
    e->hn.due = e->queued_ms + e->timeout_ms;
    if (heap_push(&c->deadlines, &e->hn) != 0) {
      fprintf(stderr, "luster: out of memory growing the PostgreSQL deadline heap\n");
      abort();
    }
    if (!c->timer_due || e->hn.due < c->timer_due) pgc__arm(c);
  }
  pgc__push(&c->pending, e, PGC_ON_PENDING);
  if (c->state == PGC_UP) pgc__kick(c);
}

void pgc_reset(pgc_t *c, const char *why) {
  if (!c || c->closing) return;
  c->backoff_ms = c->backoff_min_ms;
  if (c->state == PGC_WAIT) {
    log_info("pg %s: reset while down (%s): next attempt in %llu ms", c->name, why ? why : "asked to",
             (unsigned long long)c->backoff_ms);
    uv_timer_start(&c->ctimer, pgc__ctimer_cb, c->backoff_ms, 0);
    return;
  }
  char reason[256];
  snprintf(reason, sizeof reason, "reset: %s", why ? why : "asked to");
  pgc__lost(c, reason);
}

void pgc_close(pgc_t *c) {
  if (!c || c->closing) return;
  c->closing = 1;
  c->gen++;
  c->down_pending = 0;
  pgc__disconnect(c);
  uv_timer_stop(&c->timer);
  uv_timer_stop(&c->ctimer);
  uv_idle_stop(&c->tick);
  /* Everything waiting, oldest failures first, is answered now (shutdown
   * wants it settled before the loop ends); callbacks that query again get
   * answered in the same pass. */
  pgc__fail_sent(c, "the connection is closed");
  while (c->pending.head) {
    pgc_q_t *e = c->pending.head;
    pgc__unlink(&c->pending, e);
    pgc__fail_later(c, e, PGC_UNAVAILABLE, "the connection is closed");
  }
  while (c->failq.head) {
    pgc_q_t *e = c->failq.head;
    pgc__unlink(&c->failq, e);
    pgc__finish(c, e, e->fail_st, NULL, e->fail_err, "");
  }
  uv_close((uv_handle_t *)&c->timer, pgc__handle_closed);
  uv_close((uv_handle_t *)&c->ctimer, pgc__handle_closed);
  uv_close((uv_handle_t *)&c->tick, pgc__handle_closed);
}
