/* sqlite.c - one runner's durable storage in a SQLite file, on a writer
 * thread with group commits (see sqlite.h).
 *
 * Loop side: each operation becomes a job (its strings copied), kept on a
 * loop-local list during the loop turn; a prepare handle hands the list to
 * the writer thread just before the loop would wait for I/O, so what one
 * turn queued starts together. Writer side: it takes every job waiting,
 * runs them in order in one transaction and commits; while it commits, new
 * jobs wait, and all of them form the next transaction. Results go back on
 * a done list, and a uv_async runs their callbacks on the loop. */
#include "storage/sqlite.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

typedef enum { SJ_PUT, SJ_STATE, SJ_REPLY, SJ_SCAN, SJ_DUE, SJ_PRUNE, SJ_CRON, SJ_LOAD, SJ_SAVE } sj_op_t;

/* One queued operation: its inputs (strings in `data`), then its results. */
typedef struct sjob_s {
  struct sjob_s *next;
  sj_op_t op;
  void (*cb)(void); /* the operation's callback type, by op */
  void *ud;
  ms_msg_t m;                  /* PUT */
  uint64_t seq, at, after;     /* seq: STATE, REPLY; at: now, cutoff or instant; after: SCAN */
  int kind, limit, cron_op;    /* REPLY, SCAN and PRUNE, CRON */
  const char *body;            /* REPLY */
  size_t body_len;
  estate_write_t w;            /* SAVE, LOAD (type, id), REPLY when has_w */
  int has_w;
  char *data;
  /* results */
  int ok, found, done, rkind;
  ms_put_status_t status;
  char *err;
  uint64_t rseq, count;
  int64_t a, b;
  char *out;
  size_t out_len;
  ms_row_t *rows;
  int nrows;
} sjob_t;

enum {
  Q_BEGIN, Q_COMMIT, Q_ROLLBACK,
  Q_FIND, Q_INSERT, Q_STATE, Q_REPLY, Q_SCAN, Q_DUE, Q_PRUNE,
  Q_CRON_INSERT, Q_CRON_READ, Q_CRON_CLAIM, Q_CRON_DONE,
  Q_LOAD, Q_SAVE, Q_FORGET, Q_COUNT
};

static const char *const sq_sql[Q_COUNT] = {
    [Q_BEGIN] = "BEGIN IMMEDIATE",
    [Q_COMMIT] = "COMMIT",
    [Q_ROLLBACK] = "ROLLBACK",
    [Q_FIND] = "SELECT seq, payload, done_at IS NOT NULL, reply_kind, reply FROM messages WHERE dedupe = ?1",
    [Q_INSERT] = "INSERT INTO messages (shard, type, entity_id, rpc, dedupe, payload, headers, deliver_at,"
                 " created_at, trace) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    [Q_STATE] = "SELECT done_at IS NOT NULL, reply_kind, reply FROM messages WHERE seq = ?1",
    [Q_REPLY] = "UPDATE messages SET done_at = ?2, reply_kind = ?3, reply = ?4 WHERE seq = ?1 AND done_at IS NULL",
    [Q_SCAN] = "SELECT seq, shard, type, entity_id, rpc, payload, headers, deliver_at, trace FROM messages"
               " WHERE done_at IS NULL AND deliver_at <= ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    [Q_DUE] = "SELECT min(deliver_at) FROM messages WHERE done_at IS NULL AND deliver_at > ?1",
    [Q_PRUNE] = "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages WHERE done_at < ?1 LIMIT ?2)",
    [Q_CRON_INSERT] = "INSERT INTO cron (name, done_ms, claimed_ms) VALUES (?1, ?2, ?2) ON CONFLICT (name) DO NOTHING",
    [Q_CRON_READ] = "SELECT done_ms, claimed_ms FROM cron WHERE name = ?1",
    [Q_CRON_CLAIM] = "UPDATE cron SET claimed_ms = ?2 WHERE name = ?1 AND done_ms < ?2",
    [Q_CRON_DONE] = "UPDATE cron SET done_ms = ?2, claimed_ms = max(claimed_ms, ?2) WHERE name = ?1 AND done_ms < ?2",
    [Q_LOAD] = "SELECT state FROM entity_state WHERE type = ?1 AND entity_id = ?2",
    [Q_SAVE] = "INSERT INTO entity_state (type, entity_id, state, saved_at) VALUES (?1, ?2, ?3, ?4)"
               " ON CONFLICT (type, entity_id) DO UPDATE SET state = excluded.state, saved_at = excluded.saved_at",
    [Q_FORGET] = "DELETE FROM entity_state WHERE type = ?1 AND entity_id = ?2",
};

/* The schema, one step per version (PRAGMA user_version counts the steps
 * done). Steps are only ever appended. Times are epoch ms; a message is
 * pending while done_at is NULL; AUTOINCREMENT keeps a pruned message's seq
 * (its request id) from ever naming another message. */
static const char *const sq_migrations[] = {
    /* 1: persisted messages and their replies, cron instants, entity state. */
    "CREATE TABLE messages ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " shard INTEGER NOT NULL,"
    " type TEXT NOT NULL,"
    " entity_id TEXT NOT NULL,"
    " rpc TEXT NOT NULL,"
    " dedupe TEXT,"
    " payload TEXT NOT NULL,"
    " headers TEXT,"
    " deliver_at INTEGER NOT NULL DEFAULT 0,"
    " created_at INTEGER NOT NULL,"
    " done_at INTEGER,"
    " reply_kind INTEGER,"
    " reply BLOB);"
    "CREATE UNIQUE INDEX messages_dedupe ON messages (dedupe) WHERE dedupe IS NOT NULL;"
    /* pending ones in seq order first (the scan), then done ones by age (retention) */
    "CREATE INDEX messages_done ON messages (done_at, seq);"
    "CREATE TABLE cron (name TEXT PRIMARY KEY, done_ms INTEGER NOT NULL, claimed_ms INTEGER NOT NULL);"
    "CREATE TABLE entity_state ("
    " type TEXT NOT NULL,"
    " entity_id TEXT NOT NULL,"
    " state BLOB NOT NULL,"
    " saved_at INTEGER NOT NULL,"
    " PRIMARY KEY (type, entity_id)) WITHOUT ROWID;",
    /* 2: each message's trace context (a traceparent; NULL for none), so a
     * redelivery continues its trace. */
    "ALTER TABLE messages ADD COLUMN trace TEXT;",
};
#define SQ_VERSION (int)(sizeof sq_migrations / sizeof sq_migrations[0])

struct sqls_s {
  ms_ops_t ops;
  char *path;
  sqlite3 *db;
  sqlite3_stmt *q[Q_COUNT];
  int lock_fd;
  uv_loop_t *loop;
  uv_thread_t thread;
  uv_mutex_t mu;
  uv_cond_t cv;
  uv_async_t async;
  uv_prepare_t prepare;
  sjob_t *turn_head, *turn_tail; /* loop side: queued this loop turn */
  sjob_t *in_head, *in_tail;     /* for the writer (mu) */
  sjob_t *out_head, *out_tail;   /* done, for the loop (mu) */
  int stopping;                  /* (mu) */
  int closed;                    /* loop side */
  int busy;                      /* loop side: jobs queued and not answered */
  int handles_closed;
  uint64_t commits, put_commits, reply_commits; /* (mu) */
  ms_stats_t st;
};

static uint64_t sq__wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static char *sq__dup(const void *p, size_t n) {
  char *d = malloc(n + 1);
  if (n) memcpy(d, p, n);
  d[n] = '\0';
  return d;
}

/* ---------------------------------------------------------------------------
 * The writer thread: one job
 * ------------------------------------------------------------------------- */

static int sq__text(sqlite3_stmt *st, int i, const char *s, size_t n) {
  return s ? sqlite3_bind_text(st, i, s, (int)n, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

/* Steps a statement that returns no rows, then resets it. */
static int sq__run(sqlite3_stmt *st) {
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

static void sq__end(sqlite3_stmt *st) {
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
}

static int sq__put(sqls_t *s, sjob_t *j) {
  const ms_msg_t *m = &j->m;
  if (m->dedupe) {
    sqlite3_stmt *f = s->q[Q_FIND];
    sq__text(f, 1, m->dedupe, strlen(m->dedupe));
    int rc = sqlite3_step(f);
    if (rc == SQLITE_ROW) {
      j->rseq = (uint64_t)sqlite3_column_int64(f, 0);
      const char *p = (const char *)sqlite3_column_text(f, 1);
      size_t plen = (size_t)sqlite3_column_bytes(f, 1);
      if (!ms_same_payload(m->payload, m->payload_len, p ? p : "", plen)) {
        j->status = MS_CONFLICT;
      } else if (sqlite3_column_int(f, 2)) {
        j->status = MS_DONE;
        j->rkind = sqlite3_column_int(f, 3);
        j->out_len = (size_t)sqlite3_column_bytes(f, 4);
        j->out = sq__dup(sqlite3_column_blob(f, 4), j->out_len);
      } else {
        j->status = MS_PENDING;
      }
      sq__end(f);
      return SQLITE_OK;
    }
    sq__end(f);
    if (rc != SQLITE_DONE) return rc;
  }
  sqlite3_stmt *st = s->q[Q_INSERT];
  sqlite3_bind_int64(st, 1, m->shard);
  sq__text(st, 2, m->type, m->type_len);
  sq__text(st, 3, m->id, m->id_len);
  sq__text(st, 4, m->rpc, m->rpc_len);
  sq__text(st, 5, m->dedupe, m->dedupe ? strlen(m->dedupe) : 0);
  sq__text(st, 6, m->payload, m->payload_len);
  sq__text(st, 7, m->headers, m->headers_len);
  sqlite3_bind_int64(st, 8, (sqlite3_int64)m->deliver_at);
  sqlite3_bind_int64(st, 9, (sqlite3_int64)sq__wall_ms());
  sq__text(st, 10, m->trace[0] ? m->trace : NULL, strlen(m->trace));
  int rc = sq__run(st);
  if (rc != SQLITE_OK) return rc;
  j->rseq = (uint64_t)sqlite3_last_insert_rowid(s->db);
  j->status = MS_STORED;
  return SQLITE_OK;
}

static int sq__state(sqls_t *s, sjob_t *j) {
  sqlite3_stmt *st = s->q[Q_STATE];
  sqlite3_bind_int64(st, 1, (sqlite3_int64)j->seq);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    j->found = 1;
    j->done = sqlite3_column_int(st, 0);
    j->rkind = sqlite3_column_int(st, 1);
    j->out_len = (size_t)sqlite3_column_bytes(st, 2);
    j->out = sq__dup(sqlite3_column_blob(st, 2), j->out_len);
  }
  sq__end(st);
  return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* A state write: the snapshot, or the row's deletion (bytes NULL). */
static int sq__save(sqls_t *s, const estate_write_t *w) {
  sqlite3_stmt *st = s->q[w->bytes ? Q_SAVE : Q_FORGET];
  sq__text(st, 1, w->type, w->type_len);
  sq__text(st, 2, w->id, w->id_len);
  if (w->bytes) {
    sqlite3_bind_blob(st, 3, w->len ? w->bytes : "", (int)w->len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)sq__wall_ms());
  }
  return sq__run(st);
}

static int sq__reply(sqls_t *s, sjob_t *j) {
  sqlite3_stmt *st = s->q[Q_REPLY];
  sqlite3_bind_int64(st, 1, (sqlite3_int64)j->seq);
  sqlite3_bind_int64(st, 2, (sqlite3_int64)sq__wall_ms());
  sqlite3_bind_int(st, 3, j->kind);
  sqlite3_bind_blob(st, 4, j->body_len ? j->body : "", (int)j->body_len, SQLITE_STATIC);
  int rc = sq__run(st);
  /* A message that had its reply already (a run repeated after a crash)
   * changes nothing: neither its reply nor the state. */
  if (rc == SQLITE_OK && j->has_w && sqlite3_changes(s->db) > 0) rc = sq__save(s, &j->w);
  return rc;
}

static const char *sq__col(sqlite3_stmt *st, int i, size_t *len) {
  *len = (size_t)sqlite3_column_bytes(st, i);
  const unsigned char *t = sqlite3_column_text(st, i);
  return t ? sq__dup(t, *len) : NULL;
}

static int sq__scan(sqls_t *s, sjob_t *j) {
  sqlite3_stmt *st = s->q[Q_SCAN];
  sqlite3_bind_int64(st, 1, (sqlite3_int64)j->at);
  sqlite3_bind_int64(st, 2, (sqlite3_int64)j->after);
  sqlite3_bind_int(st, 3, j->limit);
  j->rows = calloc((size_t)j->limit, sizeof *j->rows);
  int rc = SQLITE_DONE;
  while (j->nrows < j->limit && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    ms_row_t *r = &j->rows[j->nrows++];
    r->seq = (uint64_t)sqlite3_column_int64(st, 0);
    r->shard = (uint32_t)sqlite3_column_int64(st, 1);
    r->type = sq__col(st, 2, &r->type_len);
    r->id = sq__col(st, 3, &r->id_len);
    r->rpc = sq__col(st, 4, &r->rpc_len);
    r->payload = sq__col(st, 5, &r->payload_len);
    r->headers = sq__col(st, 6, &r->headers_len);
    r->deliver_at = (uint64_t)sqlite3_column_int64(st, 7);
    const unsigned char *tp = sqlite3_column_text(st, 8);
    if (tp) snprintf(r->trace, sizeof r->trace, "%s", (const char *)tp);
  }
  if (j->nrows == j->limit) rc = SQLITE_DONE;
  sq__end(st);
  return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int sq__due(sqls_t *s, sjob_t *j) {
  sqlite3_stmt *st = s->q[Q_DUE];
  sqlite3_bind_int64(st, 1, (sqlite3_int64)j->at);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) j->count = (uint64_t)sqlite3_column_int64(st, 0); /* NULL reads as 0: none */
  sq__end(st);
  return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int sq__prune(sqls_t *s, sjob_t *j) {
  sqlite3_stmt *st = s->q[Q_PRUNE];
  sqlite3_bind_int64(st, 1, (sqlite3_int64)j->at);
  sqlite3_bind_int(st, 2, j->limit);
  int rc = sq__run(st);
  if (rc == SQLITE_OK) j->count = (uint64_t)sqlite3_changes(s->db);
  return rc;
}

static int sq__cron(sqls_t *s, sjob_t *j) {
  const char *name = j->data;
  size_t n = strlen(name);
  if (j->cron_op == MS_CRON_BEGIN) {
    sqlite3_stmt *ins = s->q[Q_CRON_INSERT], *rd = s->q[Q_CRON_READ];
    sq__text(ins, 1, name, n);
    sqlite3_bind_int64(ins, 2, (sqlite3_int64)j->at);
    int rc = sq__run(ins);
    if (rc != SQLITE_OK) return rc;
    sq__text(rd, 1, name, n);
    rc = sqlite3_step(rd);
    if (rc == SQLITE_ROW) {
      j->a = sqlite3_column_int64(rd, 0);
      j->b = sqlite3_column_int64(rd, 1);
    }
    sq__end(rd);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
  }
  sqlite3_stmt *st = s->q[j->cron_op == MS_CRON_CLAIM ? Q_CRON_CLAIM : Q_CRON_DONE];
  sq__text(st, 1, name, n);
  sqlite3_bind_int64(st, 2, (sqlite3_int64)j->at);
  int rc = sq__run(st);
  if (rc == SQLITE_OK) j->a = sqlite3_changes(s->db) > 0;
  return rc;
}

static int sq__load(sqls_t *s, sjob_t *j) {
  sqlite3_stmt *st = s->q[Q_LOAD];
  sq__text(st, 1, j->w.type, j->w.type_len);
  sq__text(st, 2, j->w.id, j->w.id_len);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    j->found = 1;
    j->out_len = (size_t)sqlite3_column_bytes(st, 0);
    j->out = sq__dup(sqlite3_column_blob(st, 0), j->out_len);
  }
  sq__end(st);
  return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int sq__job(sqls_t *s, sjob_t *j) {
  switch (j->op) {
  case SJ_PUT: return sq__put(s, j);
  case SJ_STATE: return sq__state(s, j);
  case SJ_REPLY: return sq__reply(s, j);
  case SJ_SCAN: return sq__scan(s, j);
  case SJ_DUE: return sq__due(s, j);
  case SJ_PRUNE: return sq__prune(s, j);
  case SJ_CRON: return sq__cron(s, j);
  case SJ_LOAD: return sq__load(s, j);
  case SJ_SAVE: return sq__save(s, &j->w);
  }
  return SQLITE_MISUSE;
}

/* ---------------------------------------------------------------------------
 * The writer thread: transactions
 * ------------------------------------------------------------------------- */

/* Forgets what a run of j produced (its transaction was rolled back). */
static void sq__forget_results(sjob_t *j) {
  for (int i = 0; i < j->nrows; i++) {
    ms_row_t *r = &j->rows[i];
    free((char *)r->type);
    free((char *)r->id);
    free((char *)r->rpc);
    free((char *)r->payload);
    free((char *)r->headers);
  }
  free(j->rows);
  free(j->out);
  free(j->err);
  j->rows = NULL;
  j->nrows = 0;
  j->out = j->err = NULL;
  j->out_len = 0;
  j->ok = j->found = j->done = j->rkind = 0;
  j->rseq = j->count = 0;
  j->a = j->b = 0;
}

/* Runs the jobs from `from` up to (not including) `to` in order as one
 * transaction; 0 when all of them committed. On a failure the transaction
 * is rolled back, *bad is the job that failed (NULL: the commit did) and
 * why says what happened. */
static int sq__txn(sqls_t *s, sjob_t *from, sjob_t *to, sjob_t **bad, char *why, size_t whylen) {
  *bad = NULL;
  if (sq__run(s->q[Q_BEGIN]) != SQLITE_OK) {
    snprintf(why, whylen, "SQLite could not begin a transaction: %s", sqlite3_errmsg(s->db));
    return -1;
  }
  for (sjob_t *j = from; j != to; j = j->next) {
    if (sq__job(s, j) != SQLITE_OK) {
      snprintf(why, whylen, "SQLite: %s", sqlite3_errmsg(s->db));
      *bad = j;
      sq__run(s->q[Q_ROLLBACK]);
      return -1;
    }
  }
  if (sq__run(s->q[Q_COMMIT]) != SQLITE_OK) {
    snprintf(why, whylen, "SQLite could not commit: %s", sqlite3_errmsg(s->db));
    if (!sqlite3_get_autocommit(s->db)) sq__run(s->q[Q_ROLLBACK]);
    return -1;
  }
  for (sjob_t *j = from; j != to; j = j->next) j->ok = 1;
  return 0;
}

/* Runs list (in order) as one transaction. Should one job fail (a full
 * disk, say), the others must not fail with it: they run again, each in a
 * transaction of its own, and only the failing ones answer with an error. */
static void sq__batch(sqls_t *s, sjob_t *list) {
  char why[512];
  sjob_t *bad;
  if (sq__txn(s, list, NULL, &bad, why, sizeof why) == 0) return;
  for (sjob_t *j = list; j; j = j->next) {
    sq__forget_results(j);
    if (sq__txn(s, j, j->next, &bad, why, sizeof why) != 0) {
      sq__forget_results(j);
      j->err = strdup(why);
    }
  }
}

static void sq__thread(void *arg) {
  sqls_t *s = arg;
  uv_mutex_lock(&s->mu);
  for (;;) {
    while (!s->in_head && !s->stopping) uv_cond_wait(&s->cv, &s->mu);
    if (!s->in_head) break; /* stopping, and everything queued is done */
    sjob_t *list = s->in_head, *last = s->in_tail;
    s->in_head = s->in_tail = NULL;
    uv_mutex_unlock(&s->mu);
    int puts = 0, replies = 0;
    for (sjob_t *j = list; j; j = j->next) {
      puts |= j->op == SJ_PUT;
      replies |= j->op == SJ_REPLY;
    }
    sq__batch(s, list);
    uv_mutex_lock(&s->mu);
    s->commits++;
    s->put_commits += (uint64_t)puts;
    s->reply_commits += (uint64_t)replies;
    if (s->out_tail) s->out_tail->next = list; else s->out_head = list;
    s->out_tail = last;
    uv_async_send(&s->async);
  }
  uv_mutex_unlock(&s->mu);
}

/* ---------------------------------------------------------------------------
 * Loop side: queueing and answers
 * ------------------------------------------------------------------------- */

static void sq__free_job(sjob_t *j) {
  sq__forget_results(j);
  free(j->data);
  free(j);
}

/* Hands the jobs queued this turn to the writer. */
static void sq__hand_over(sqls_t *s) {
  if (!s->turn_head) return;
  uv_mutex_lock(&s->mu);
  if (s->in_tail) s->in_tail->next = s->turn_head; else s->in_head = s->turn_head;
  s->in_tail = s->turn_tail;
  uv_cond_signal(&s->cv);
  uv_mutex_unlock(&s->mu);
  s->turn_head = s->turn_tail = NULL;
}

static void sq__prepare(uv_prepare_t *p) {
  sqls_t *s = p->data;
  sq__hand_over(s);
  uv_prepare_stop(p);
}

static sjob_t *sq__job_new(sqls_t *s, sj_op_t op, void (*cb)(void), void *ud) {
  sjob_t *j = calloc(1, sizeof *j);
  j->op = op;
  j->cb = cb;
  j->ud = ud;
  return j;
}

static void sq__submit(sqls_t *s, sjob_t *j) {
  s->busy++;
  if (s->closed) { /* answered (failed) by the close that is running */
    j->err = strdup("the runner is shutting down");
    uv_mutex_lock(&s->mu);
    if (s->out_tail) s->out_tail->next = j; else s->out_head = j;
    s->out_tail = j;
    uv_mutex_unlock(&s->mu);
    return;
  }
  if (s->turn_tail) s->turn_tail->next = j; else s->turn_head = j;
  s->turn_tail = j;
  if (!uv_is_active((uv_handle_t *)&s->prepare)) uv_prepare_start(&s->prepare, sq__prepare);
}

static void sq__answer_msg(sqls_t *s, sjob_t *j) {
  const char *err = j->ok ? NULL : j->err;
  switch (j->op) {
  case SJ_PUT:
    if (j->ok) {
      if (j->status == MS_STORED) s->st.stored++;
      else s->st.duplicates++;
    }
    ((ms_put_cb)j->cb)(j->ud, j->ok ? j->status : MS_FAILED, j->rseq, j->rkind, j->out, j->out_len, err);
    break;
  case SJ_STATE:
    s->st.reads++;
    ((ms_state_cb)j->cb)(j->ud, j->ok, j->seq, j->found, j->done, j->rkind, j->out, j->out_len, err);
    break;
  case SJ_REPLY:
    if (j->ok) s->st.replies++;
    if (j->cb) ((ms_done_cb)j->cb)(j->ud, j->ok, err);
    break;
  case SJ_SCAN:
    s->st.scanned += (uint64_t)j->nrows;
    ((ms_scan_cb)j->cb)(j->ud, j->ok, j->rows, j->ok ? j->nrows : 0);
    break;
  case SJ_DUE: ((ms_due_cb)j->cb)(j->ud, j->ok, j->count); break;
  case SJ_PRUNE:
    s->st.pruned += j->count;
    ((ms_prune_cb)j->cb)(j->ud, j->ok, j->count);
    break;
  case SJ_CRON: ((ms_cron_cb)j->cb)(j->ud, j->ok, j->a, j->b, err); break;
  case SJ_LOAD: ((estate_load_cb)j->cb)(j->ud, j->ok, j->found, j->out, j->out_len, err); break;
  case SJ_SAVE:
    if (j->cb) ((estate_done_cb)j->cb)(j->ud, j->ok, err);
    break;
  }
}

/* Runs the callbacks of every finished job. */
static void sq__async(uv_async_t *a) {
  sqls_t *s = a->data;
  for (;;) {
    uv_mutex_lock(&s->mu);
    sjob_t *list = s->out_head;
    s->out_head = s->out_tail = NULL;
    uv_mutex_unlock(&s->mu);
    if (!list) return;
    while (list) {
      sjob_t *j = list;
      list = j->next;
      if (!j->ok) s->st.failures++;
      sq__answer_msg(s, j);
      s->busy--;
      sq__free_job(j);
    }
  }
}

/* ---------------------------------------------------------------------------
 * The operations (msgstore.h, estate.h)
 * ------------------------------------------------------------------------- */

/* Copies n bytes of src to *at, advancing it; NULL stays NULL. */
static const char *sq__copy(char **at, const char *src, size_t n) {
  if (!src) return NULL;
  char *d = *at;
  if (n) memcpy(d, src, n);
  d[n] = '\0';
  *at += n + 1;
  return d;
}

static int sq__op_up(void *ctx) { return !((sqls_t *)ctx)->closed; }

static void sq__op_put(void *ctx, const ms_msg_t *m, ms_put_cb cb, void *ud) {
  sjob_t *j = sq__job_new(ctx, SJ_PUT, (void (*)(void))cb, ud);
  size_t dl = m->dedupe ? strlen(m->dedupe) : 0;
  char *p = j->data = malloc(m->type_len + m->id_len + m->rpc_len + m->payload_len + m->headers_len + dl + 6);
  j->m = *m;
  j->m.type = sq__copy(&p, m->type, m->type_len);
  j->m.id = sq__copy(&p, m->id, m->id_len);
  j->m.rpc = sq__copy(&p, m->rpc, m->rpc_len);
  j->m.payload = sq__copy(&p, m->payload, m->payload_len);
  j->m.headers = sq__copy(&p, m->headers, m->headers_len);
  j->m.dedupe = sq__copy(&p, m->dedupe, dl);
  sq__submit(ctx, j);
}

static void sq__op_state(void *ctx, uint64_t seq, ms_state_cb cb, void *ud) {
  sjob_t *j = sq__job_new(ctx, SJ_STATE, (void (*)(void))cb, ud);
  j->seq = seq;
  sq__submit(ctx, j);
}

/* Copies a state write into j (its strings into j->data). */
static void sq__take_write(sjob_t *j, const estate_write_t *w, size_t extra) {
  char *p = j->data = malloc(w->type_len + w->id_len + (w->bytes ? w->len : 0) + extra + 3);
  j->w = *w;
  j->has_w = 1;
  j->w.type = sq__copy(&p, w->type, w->type_len);
  j->w.id = sq__copy(&p, w->id, w->id_len);
  j->w.bytes = sq__copy(&p, w->bytes, w->bytes ? w->len : 0);
}

static void sq__op_reply(void *ctx, uint64_t seq, int kind, const char *body, size_t len, const estate_write_t *w,
                         ms_done_cb cb, void *ud) {
  sjob_t *j = sq__job_new(ctx, SJ_REPLY, (void (*)(void))cb, ud);
  j->seq = seq;
  j->kind = kind;
  j->body_len = len;
  if (w) {
    sq__take_write(j, w, len + 1);
    j->body = j->data + w->type_len + w->id_len + (w->bytes ? w->len + 1 : 0) + 2;
    memcpy((char *)j->body, body, len);
  } else {
    j->body = j->data = sq__dup(body, len);
  }
  sq__submit(ctx, j);
}

static void sq__op_scan(void *ctx, const uint32_t *shards, int n, uint64_t now_ms, uint64_t after, int limit,
                        ms_scan_cb cb, void *ud) {
  sjob_t *j = sq__job_new(ctx, SJ_SCAN, (void (*)(void))cb, ud);
  j->at = now_ms;
  j->after = after;
  j->limit = limit > 0 ? limit : 1;
  sq__submit(ctx, j);
}

static void sq__op_next_due(void *ctx, const uint32_t *shards, int n, uint64_t now_ms, ms_due_cb cb, void *ud) {
  sjob_t *j = sq__job_new(ctx, SJ_DUE, (void (*)(void))cb, ud);
  j->at = now_ms;
  sq__submit(ctx, j);
}

static void sq__op_prune(void *ctx, const uint32_t *shards, int n, uint64_t cutoff_ms, int limit, ms_prune_cb cb,
                         void *ud) {
  sjob_t *j = sq__job_new(ctx, SJ_PRUNE, (void (*)(void))cb, ud);
  j->at = cutoff_ms;
  j->limit = limit;
  sq__submit(ctx, j);
}

static void sq__op_cron(void *ctx, ms_cron_op_t op, const char *name, uint64_t at, ms_cron_cb cb, void *ud) {
  sjob_t *j = sq__job_new(ctx, SJ_CRON, (void (*)(void))cb, ud);
  j->cron_op = (int)op;
  j->at = at;
  j->data = strdup(name);
  sq__submit(ctx, j);
}

static int sq__op_busy(void *ctx) { return ((sqls_t *)ctx)->busy; }

static const ms_stats_t *sq__op_stats(void *ctx) {
  sqls_t *s = ctx;
  uv_mutex_lock(&s->mu);
  s->st.put_batches = s->put_commits;
  s->st.reply_batches = s->reply_commits;
  s->st.read_batches = s->commits;
  uv_mutex_unlock(&s->mu);
  return &s->st;
}

static void sq__load_op(void *ctx, const char *type, size_t type_len, const char *id, size_t id_len,
                        estate_load_cb cb, void *ud) {
  sjob_t *j = sq__job_new(ctx, SJ_LOAD, (void (*)(void))cb, ud);
  estate_write_t w = {.type = type, .type_len = type_len, .id = id, .id_len = id_len};
  sq__take_write(j, &w, 0);
  sq__submit(ctx, j);
}

static void sq__save_op(void *ctx, const estate_write_t *w, estate_done_cb cb, void *ud) {
  sjob_t *j = sq__job_new(ctx, SJ_SAVE, (void (*)(void))cb, ud);
  sq__take_write(j, w, 0);
  sq__submit(ctx, j);
}

estate_ops_t sqls_estate_ops(sqls_t *s) {
  estate_ops_t o = {.ctx = s, .load = sq__load_op, .save = sq__save_op};
  return o;
}

const ms_ops_t *sqls_ops(sqls_t *s) { return &s->ops; }

/* ---------------------------------------------------------------------------
 * Opening and closing
 * ------------------------------------------------------------------------- */

/* The prepare and async handles close in either order: the second frees s. */
static void sq__closed(uv_handle_t *h) {
  sqls_t *s = h->data;
  if (++s->handles_closed == 2) free(s);
}

static void sq__release(sqls_t *s) {
  for (int i = 0; i < Q_COUNT; i++) sqlite3_finalize(s->q[i]);
  if (s->db) sqlite3_close(s->db);
  if (s->lock_fd >= 0) close(s->lock_fd); /* and with it the lock */
  free(s->path);
}

/* Everything queued runs (and commits) first; then every callback runs,
 * and the store is gone. */
static void sq__op_close(void *ctx) {
  sqls_t *s = ctx;
  if (s->closed) return;
  sq__hand_over(s);
  s->closed = 1;
  uv_mutex_lock(&s->mu);
  s->stopping = 1;
  uv_cond_signal(&s->cv);
  uv_mutex_unlock(&s->mu);
  uv_thread_join(&s->thread);
  sq__async(&s->async);
  sq__release(s);
  uv_mutex_destroy(&s->mu);
  uv_cond_destroy(&s->cv);
  uv_close((uv_handle_t *)&s->prepare, sq__closed);
  uv_close((uv_handle_t *)&s->async, sq__closed);
}

/* The exclusive lock on PATH-lock: a second runner on the file stops here. */
static int sq__lock(sqls_t *s, char *err, size_t errlen) {
  size_t n = strlen(s->path);
  char *lock = malloc(n + 6);
  memcpy(lock, s->path, n);
  memcpy(lock + n, "-lock", 6);
  s->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (s->lock_fd < 0) {
    int e = errno;
    snprintf(err, errlen, "cannot create the lock file '%s' of SQLite storage: %s%s", lock, strerror(e),
             e == ENOENT ? " (does its directory exist?)" : e == EACCES || e == EROFS ? " (is its directory writable?)"
                                                                                      : "");
    free(lock);
    return -1;
  }
  if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    if (e == EWOULDBLOCK)
      snprintf(err, errlen, "the SQLite file '%s' is in use by another luster runner (its lock '%s' is held); "
                            "one file serves one runner", s->path, lock);
    else snprintf(err, errlen, "cannot lock '%s': %s", lock, strerror(e));
    free(lock);
    return -1;
  }
  free(lock);
  return 0;
}

static int sq__exec(sqls_t *s, const char *sql, char *err, size_t errlen) {
  char *msg = NULL;
  if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) == SQLITE_OK) return 0;
  int code = sqlite3_errcode(s->db);
  snprintf(err, errlen, "cannot use '%s' as SQLite storage: %s%s", s->path, msg ? msg : sqlite3_errmsg(s->db),
           code == SQLITE_NOTADB ? " (it is not a SQLite database)"
           : code == SQLITE_READONLY || code == SQLITE_CANTOPEN ? " (is it, and its directory, writable?)" : "");
  sqlite3_free(msg);
  return -1;
}

static int sq__int(void *arg, int n, char **vals, char **names) {
  *(int *)arg = n > 0 && vals[0] ? atoi(vals[0]) : 0;
  return 0;
}

/* Applies the schema steps this file has not seen, each in its own
 * transaction with its version number. */
static int sq__migrate(sqls_t *s, char *err, size_t errlen) {
  int v = 0;
  if (sqlite3_exec(s->db, "PRAGMA user_version", sq__int, &v, NULL) != SQLITE_OK)
    return sq__exec(s, "PRAGMA user_version", err, errlen);
  if (v > SQ_VERSION) {
    snprintf(err, errlen, "the SQLite file '%s' has schema version %d, newer than this luster's (%d): use a newer "
                          "luster", s->path, v, SQ_VERSION);
    return -1;
  }
  for (; v < SQ_VERSION; v++) {
    char set[48];
    snprintf(set, sizeof set, "PRAGMA user_version = %d", v + 1);
    if (sq__exec(s, "BEGIN IMMEDIATE", err, errlen) || sq__exec(s, sq_migrations[v], err, errlen) ||
        sq__exec(s, set, err, errlen) || sq__exec(s, "COMMIT", err, errlen)) {
      sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
      return -1;
    }
  }
  return 0;
}

/* Opens the database: WAL, the sync mode, the schema, the statements. */
static int sq__open_db(sqls_t *s, int sync_full, char *err, size_t errlen) {
  /* No allocation statistics: they take a process-wide mutex on every
   * allocation. Refused (harmlessly) once SQLite is initialized. */
  sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
  if (sqlite3_open_v2(s->path, &s->db, flags, NULL) != SQLITE_OK) {
    snprintf(err, errlen, "cannot open '%s' as SQLite storage: %s (does its directory exist, is it writable, is it "
                          "a file?)", s->path, s->db ? sqlite3_errmsg(s->db) : "out of memory");
    return -1;
  }
  /* One runner owns the file (the flock): exclusive locking keeps SQLite's
   * own locks for the connection's life instead of taking them around every
   * transaction, and keeps the WAL index in memory (no -shm file). */
  if (sq__exec(s, "PRAGMA locking_mode = EXCLUSIVE", err, errlen) ||
      sq__exec(s, "PRAGMA journal_mode = WAL", err, errlen) ||
      sq__exec(s, sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL", err, errlen) ||
      sq__exec(s, "PRAGMA busy_timeout = 5000", err, errlen) || sq__migrate(s, err, errlen))
    return -1;
  for (int i = 0; i < Q_COUNT; i++) {
    if (sqlite3_prepare_v3(s->db, sq_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->q[i], NULL) != SQLITE_OK) {
      snprintf(err, errlen, "the SQLite file '%s' does not have luster's tables as expected: %s", s->path,
               sqlite3_errmsg(s->db));
      return -1;
    }
  }
  return 0;
}

sqls_t *sqls_open(uv_loop_t *loop, const char *path, int sync_full, char *err, size_t errlen) {
  sqls_t *s = calloc(1, sizeof *s);
  s->path = strdup(path);
  s->lock_fd = -1;
  s->loop = loop;
  if (sq__lock(s, err, errlen) != 0 || sq__open_db(s, sync_full, err, errlen) != 0) {
    sq__release(s);
    free(s);
    return NULL;
  }
  s->ops = (ms_ops_t){
      .name = "SQLite",
      .ctx = s,
      .up = sq__op_up,
      .put = sq__op_put,
      .state = sq__op_state,
      .reply = sq__op_reply,
      .scan = sq__op_scan,
      .next_due = sq__op_next_due,
      .prune = sq__op_prune,
      .cron = sq__op_cron,
      .busy = sq__op_busy,
      .stats = sq__op_stats,
      .close = sq__op_close,
  };
  uv_mutex_init(&s->mu);
  uv_cond_init(&s->cv);
  uv_async_init(loop, &s->async, sq__async);
  uv_prepare_init(loop, &s->prepare);
  s->async.data = s->prepare.data = s;
  uv_thread_create(&s->thread, sq__thread, s);
  return s;
}
