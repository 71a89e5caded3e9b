/* pgstore.c - persisted messages in PostgreSQL: batched stores, state reads
 * and replies over one pipelined connection (see pgstore.h). */
#include "storage/pgstore.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loop/log.h"
#include "core/buf.h"
#include "loop/sched.h"
#include "storage/coord.h"
#include "storage/pgconn.h"

#define PGS_TIMEOUT_MS 5000
#define PGS_MAX_INFLIGHT 2   /* statements of one kind in flight; the rest wait and batch */
#define PGS_MAX_BATCH 1024   /* rows per statement */
#define PGS_PUT_RETRIES 5    /* a key whose first store was not yet visible */

/* One batched kind of statement. */
typedef struct pgs_entry_s {
  struct pgs_entry_s *next;
  void *cb, *ud;
  uint64_t seq;
  int kind, retries;
  int sop; /* REPLY and SAVE: 0 no state, 1 write the state, 2 forget it */
  ms_msg_t m; /* PUT: the message, its strings in `data`; REPLY, SAVE and LOAD: the state's type and id, and
               * its bytes as `headers` */
  char *data;
} pgs_entry_t;

typedef struct {
  pgs_entry_t *head, *tail;
  int n, inflight;
} pgs_queue_t;

typedef struct pgstore_s pgstore_t;
typedef struct {
  pgstore_t *ps;
  pgs_entry_t **e;
  int n;
} pgs_batch_t;

struct pgstore_s {
  pgc_t *c;
  char *sql_put, *sql_state, *sql_reply, *sql_scan, *sql_due, *sql_prune, *sql_cron[3];
  char *sql_reply_plain, *sql_esave, *sql_eload;
  pgs_queue_t put, state, reply, esave, eload;
  sched_item_t flush;
  sched_t *sched; /* the owner's, from pgs_open */
  int open;
  int free_at_flush; /* closed while its flush item was queued: the flush frees it */
  ms_stats_t st;
  ms_ops_t ops; /* pgs_ops' table, ctx = this store */
};

int pgs_up(pgstore_t *ps) { return ps->open && pgc_up(ps->c); }
const ms_stats_t *pgs_stats(pgstore_t *ps) { return &ps->st; }

int pgs_busy(pgstore_t *ps) {
  if (!ps->open) return 0;
  return ps->put.n + ps->put.inflight + ps->state.n + ps->state.inflight + ps->reply.n + ps->reply.inflight + ps->esave.n +
         ps->esave.inflight + ps->eload.n + ps->eload.inflight;
}

static void pgs__state(void *ud, int up, const char *why) {
  if (!up) log_warn("storage: the messages connection is down (%s)", why ? why : "?");
  else log_debug("storage: messages connection up");
}

static void pgs__free(pgstore_t *ps) {
  free(ps->sql_put);
  free(ps->sql_state);
  free(ps->sql_reply);
  free(ps->sql_scan);
  free(ps->sql_due);
  free(ps->sql_prune);
  free(ps->sql_reply_plain);
  free(ps->sql_esave);
  free(ps->sql_eload);
  for (int i = 0; i < 3; i++) free(ps->sql_cron[i]);
  free(ps);
}

static int pgs__op_up(void *ctx);
static void pgs__op_put(void *ctx, const ms_msg_t *m, ms_put_cb cb, void *ud);
static void pgs__op_state(void *ctx, uint64_t seq, ms_state_cb cb, void *ud);
static void pgs__op_reply(void *ctx, uint64_t seq, int kind, const char *body, size_t len, const estate_write_t *w,
                          ms_done_cb cb, void *ud);
static void pgs__op_scan(void *ctx, const uint32_t *shards, int n, uint64_t now_ms, uint64_t after, int limit,
                         ms_scan_cb cb, void *ud);
static void pgs__op_next_due(void *ctx, const uint32_t *shards, int n, uint64_t now_ms, ms_due_cb cb, void *ud);
static void pgs__op_prune(void *ctx, const uint32_t *shards, int n, uint64_t cutoff_ms, int limit, ms_prune_cb cb,
                          void *ud);
static void pgs__op_cron(void *ctx, ms_cron_op_t op, const char *name, uint64_t at, ms_cron_cb cb, void *ud);
static int pgs__op_busy(void *ctx);
static const ms_stats_t *pgs__op_stats(void *ctx);
static void pgs__op_close(void *ctx);

/* The statements of the store, on the tables named with prefix. */
static void pgs__sql_init(pgstore_t *ps, const char *prefix) {
  ps->sql_put = coord_sql(
      "WITH ins AS (INSERT INTO %1$smessages"
      " (shard, type, entity_id, rpc, dedupe, ref, payload, headers, deliver_at, trace, created_at)"
      " SELECT u.*, $10::bigint FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],"
      " $7::text[], $8::text[], $9::bigint[], $11::text[]) AS u"
      " ON CONFLICT (dedupe) WHERE dedupe IS NOT NULL DO NOTHING RETURNING seq, ref)"
      " SELECT seq, ref, false, NULL::text, NULL::bigint, NULL::smallint, NULL::text FROM ins"
      " UNION ALL SELECT m.seq, u.ref, true, m.payload, m.done_at, m.reply_kind, m.reply"
      " FROM unnest($5::text[], $6::int[], $7::text[]) AS u(dedupe, ref, payload)"
      " JOIN %1$smessages m ON m.dedupe = u.dedupe AND m.dedupe IS NOT NULL", prefix);
  ps->sql_state =
      coord_sql("SELECT seq, done_at, reply_kind, reply FROM %1$smessages WHERE seq = ANY($1::bigint[])", prefix);
  /* The reply and a durable entity's new state in one statement (one
   * transaction): the state is written only for rows this statement marks
   * done, so a redelivered message that already has its reply changes
   * nothing. DISTINCT ON keeps the last write per (type, id) of a batch. */
  ps->sql_reply = coord_sql(
      "WITH u AS (SELECT * FROM unnest($1::bigint[], $2::smallint[], $3::text[], $5::text[], $6::text[],"
      " $7::text[], $8::smallint[]) WITH ORDINALITY AS u(seq, k, r, st, si, sb, sop, ord)),"
      " r AS (UPDATE %1$smessages m SET done_at = $4::bigint, reply_kind = u.k, reply = u.r FROM u"
      " WHERE m.seq = u.seq AND m.done_at IS NULL RETURNING u.st, u.si, u.sb, u.sop, u.ord),"
      " s AS (SELECT DISTINCT ON (st, si) st, si, sb, sop FROM r WHERE sop > 0 ORDER BY st, si, ord DESC),"
      " d AS (DELETE FROM %1$sentity_state e USING s WHERE s.sop = 2 AND e.type = s.st AND e.entity_id = s.si)"
      " INSERT INTO %1$sentity_state (type, entity_id, state, updated_at) SELECT st, si, sb, $4::bigint FROM s"
      " WHERE sop = 1 ON CONFLICT (type, entity_id) DO UPDATE SET state = excluded.state,"
      " updated_at = excluded.updated_at", prefix);
  /* A batch without state (no durable entity's message in it) keeps the
   * plain statement, so persisted messages pay nothing for the feature. */
  ps->sql_reply_plain = coord_sql(
      "UPDATE %1$smessages m SET done_at = $4::bigint, reply_kind = u.k, reply = u.r"
      " FROM unnest($1::bigint[], $2::smallint[], $3::text[]) AS u(seq, k, r)"
      " WHERE m.seq = u.seq AND m.done_at IS NULL", prefix);
  ps->sql_esave = coord_sql(
      "WITH u AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::smallint[])"
      " WITH ORDINALITY AS u(st, si, sb, sop, ord)),"
      " s AS (SELECT DISTINCT ON (st, si) st, si, sb, sop FROM u ORDER BY st, si, ord DESC),"
      " d AS (DELETE FROM %1$sentity_state e USING s WHERE s.sop = 2 AND e.type = s.st AND e.entity_id = s.si)"
      " INSERT INTO %1$sentity_state (type, entity_id, state, updated_at) SELECT st, si, sb, $5::bigint FROM s"
      " WHERE sop = 1 ON CONFLICT (type, entity_id) DO UPDATE SET state = excluded.state,"
      " updated_at = excluded.updated_at", prefix);
  ps->sql_eload = coord_sql(
      "SELECT u.ord, e.state FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(st, si, ord)"
      " JOIN %1$sentity_state e ON e.type = u.st AND e.entity_id = u.si", prefix);
  ps->sql_scan = coord_sql(
      "SELECT seq, shard, type, entity_id, rpc, payload, headers, deliver_at, trace FROM %1$smessages"
      " WHERE shard = ANY($1::int[]) AND done_at IS NULL AND deliver_at <= $2::bigint AND seq > $3::bigint"
      " ORDER BY seq LIMIT $4::int", prefix);
  ps->sql_due = coord_sql(
      "SELECT min(deliver_at) FROM %1$smessages"
      " WHERE shard = ANY($1::int[]) AND done_at IS NULL AND deliver_at > $2::bigint", prefix);
  ps->sql_prune = coord_sql(
      "DELETE FROM %1$smessages WHERE seq IN (SELECT seq FROM %1$smessages"
      " WHERE done_at < $1::bigint AND shard = ANY($2::int[]) LIMIT $3::int)", prefix);
  ps->sql_cron[MS_CRON_BEGIN] = coord_sql(
      "INSERT INTO %1$scron (name, done_ms, claimed_ms) VALUES ($1, $2::bigint, $2::bigint)"
      " ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING done_ms, claimed_ms", prefix);
  ps->sql_cron[MS_CRON_CLAIM] = coord_sql(
      "UPDATE %1$scron SET claimed_ms = $2::bigint WHERE name = $1 AND done_ms < $2::bigint RETURNING 1, 0", prefix);
  ps->sql_cron[MS_CRON_DONE] = coord_sql(
      "UPDATE %1$scron SET done_ms = $2::bigint, claimed_ms = greatest(claimed_ms, $2::bigint)"
      " WHERE name = $1 AND done_ms < $2::bigint RETURNING 1, 0", prefix);
}

pgstore_t *pgs_open(sched_t *s, uv_loop_t *loop, const char *conninfo, const char *prefix) {
  pgstore_t *ps = calloc(1, sizeof *ps);
  if (!ps) return NULL;
  ps->sched = s;
  pgs__sql_init(ps, prefix);
  /* Plans made for each execution: a generic plan fixed while the table was
   * still empty (a fresh database, not analysed yet) reads the whole table
   * for every batch once it has grown; a custom plan sees its real size. */
  static const char *const on_connect[] = {"SET application_name = 'luster messages'",
                                           "SET plan_cache_mode = force_custom_plan", NULL};
  pgc_opts_t o = {
      .conninfo = conninfo,
      .name = "messages",
      .on_connect = on_connect,
      .on_state = pgs__state,
  };
  ps->c = pgc_open(loop, &o);
  if (!ps->c) {
    pgs__free(ps);
    return NULL;
  }
  ps->open = 1;
  ps->ops = (ms_ops_t){
      .name = "PostgreSQL",
      .ctx = ps,
      .up = pgs__op_up,
      .put = pgs__op_put,
      .state = pgs__op_state,
      .reply = pgs__op_reply,
      .scan = pgs__op_scan,
      .next_due = pgs__op_next_due,
      .prune = pgs__op_prune,
      .cron = pgs__op_cron,
      .busy = pgs__op_busy,
      .stats = pgs__op_stats,
      .close = pgs__op_close,
  };
  return ps;
}

/* ---------------------------------------------------------------------------
 * Array parameters
 * ------------------------------------------------------------------------- */

static void pgs__arr_sep(buf_t *b) {
  if (b->len == 0) buf_addc(b, '{');
  else buf_addc(b, ',');
}

static void pgs__arr_text(buf_t *b, const char *s, size_t n) {
  pgs__arr_sep(b);
  if (!s) {
    buf_adds(b, "NULL");
    return;
  }
  buf_reserve(b, n + 8);
  buf_addc(b, '"');
  size_t from = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '"' || s[i] == '\\') {
      buf_add(b, s + from, i - from);
      buf_addc(b, '\\');
      from = i;
    }
  }
  buf_add(b, s + from, n - from);
  buf_addc(b, '"');
}

static void pgs__arr_int(buf_t *b, int64_t v) {
  pgs__arr_sep(b);
  buf_printf(b, "%" PRId64, v);
}

static const char *pgs__arr_end(buf_t *b) {
  if (b->len == 0) buf_addc(b, '{');
  buf_addc(b, '}');
  return b->data;
}

static void pgs__shards(buf_t *b, const uint32_t *shards, int n) {
  for (int i = 0; i < n; i++) pgs__arr_int(b, shards[i]);
  pgs__arr_end(b);
}

/* ---------------------------------------------------------------------------
 * Batches
 * ------------------------------------------------------------------------- */

static void pgs__flush(sched_item_t *it);

static void pgs__enqueue(pgstore_t *ps, pgs_queue_t *q, pgs_entry_t *e) {
  e->next = NULL;
  if (q->tail) q->tail->next = e; else q->head = e;
  q->tail = e;
  q->n++;
  if (!ps->flush.queued) sched_push(ps->sched, &ps->flush, pgs__flush);
}

/* Takes up to PGS_MAX_BATCH entries off q. */
static pgs_batch_t *pgs__take(pgstore_t *ps, pgs_queue_t *q) {
  int n = q->n < PGS_MAX_BATCH ? q->n : PGS_MAX_BATCH;
  pgs_batch_t *b = malloc(sizeof *b + sizeof(pgs_entry_t *) * (size_t)n);
  b->ps = ps;
  b->e = (pgs_entry_t **)(b + 1);
  b->n = n;
  for (int i = 0; i < n; i++) {
    pgs_entry_t *e = q->head;
    q->head = e->next;
    b->e[i] = e;
  }
  if (!q->head) q->tail = NULL;
  q->n -= n;
  q->inflight++;
  return b;
}

static void pgs__batch_done(pgs_queue_t *q, pgs_batch_t *b) {
  pgstore_t *ps = b->ps;
  for (int i = 0; i < b->n; i++) {
    if (b->e[i]) {
      free(b->e[i]->data);
      free(b->e[i]);
    }
  }
  free(b);
  q->inflight--;
  if (q->n && !ps->flush.queued && ps->open) sched_push(ps->sched, &ps->flush, pgs__flush);
}

static const char *pgs__why(pgc_status_t st, const char *err) {
  switch (st) {
  case PGC_TIMEOUT: return "PostgreSQL did not answer in time";
  case PGC_UNAVAILABLE: return "PostgreSQL is unavailable";
  default: return err ? err : "PostgreSQL refused the statement";
  }
}

/* PUT ------------------------------------------------------------------- */

static void pgs__put_done(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate);

static void pgs__send_put(pgstore_t *ps) {
  pgs_batch_t *b = pgs__take(ps, &ps->put);
  buf_t a[10];
  for (int i = 0; i < 10; i++) buf_init(&a[i]);
  for (int i = 0; i < b->n; i++) {
    ms_msg_t *m = &b->e[i]->m;
    pgs__arr_int(&a[0], m->shard);
    pgs__arr_text(&a[1], m->type, m->type_len);
    pgs__arr_text(&a[2], m->id, m->id_len);
    pgs__arr_text(&a[3], m->rpc, m->rpc_len);
    pgs__arr_text(&a[4], m->dedupe, m->dedupe ? strlen(m->dedupe) : 0);
    pgs__arr_int(&a[5], i);
    pgs__arr_text(&a[6], m->payload, m->payload_len);
    pgs__arr_text(&a[7], m->headers, m->headers_len);
    pgs__arr_int(&a[8], (int64_t)m->deliver_at);
    pgs__arr_text(&a[9], m->trace[0] ? m->trace : NULL, strlen(m->trace));
  }
  char now[24];
  snprintf(now, sizeof now, "%" PRIu64, sched_wall_ms(ps->sched));
  const char *v[11];
  for (int i = 0; i < 9; i++) v[i] = pgs__arr_end(&a[i]);
  v[9] = now;
  v[10] = pgs__arr_end(&a[9]);
  ps->st.put_batches++;
  pgc_query(ps->c, ps->sql_put, 11, v, NULL, PGS_TIMEOUT_MS, pgs__put_done, b);
  for (int i = 0; i < 10; i++) buf_free(&a[i]);
}

static void pgs__put_answer(pgs_entry_t *e, ms_put_status_t st, uint64_t seq, int kind, const char *reply,
                            size_t len, const char *err) {
  ms_put_cb cb = (ms_put_cb)e->cb;
  cb(e->ud, st, seq, kind, reply, len, err);
}

/* Answers an entry of queue q that will not be carried out. */
static void pgs__fail(pgstore_t *ps, pgs_queue_t *q, pgs_entry_t *e, const char *why) {
  if (q == &ps->put) pgs__put_answer(e, MS_FAILED, 0, 0, NULL, 0, why);
  else if (q == &ps->eload) ((estate_load_cb)e->cb)(e->ud, 0, 0, NULL, 0, why);
  else if (q == &ps->state) ((ms_state_cb)e->cb)(e->ud, 0, e->seq, 0, 0, 0, NULL, 0, why);
  else if (e->cb) ((ms_done_cb)e->cb)(e->ud, 0, why);
}

static void pgs__put_done(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  pgs_batch_t *b = ud;
  pgstore_t *ps = b->ps;
  if (st != PGC_OK) {
    const char *why = pgs__why(st, err);
    ps->st.failures++;
    for (int i = 0; i < b->n; i++) pgs__fail(ps, &ps->put, b->e[i], why);
    pgs__batch_done(&ps->put, b);
    return;
  }
  char *answered = calloc((size_t)b->n + 1, 1);
  int rows = PQntuples(res);
  /* Rows: (seq, ref, false, ...) for each entry stored now; (seq, ref, true,
   * stored payload, done_at, kind, reply) for each entry whose key was stored
   * before this statement. */
  for (int r = 0; r < rows; r++) {
    uint64_t seq = strtoull(PQgetvalue(res, r, 0), NULL, 10);
    int ref = atoi(PQgetvalue(res, r, 1));
    if (ref < 0 || ref >= b->n || answered[ref]) continue;
    answered[ref] = 1;
    if (PQgetvalue(res, r, 2)[0] != 't') {
      ps->st.stored++;
      pgs__put_answer(b->e[ref], MS_STORED, seq, 0, NULL, 0, NULL);
      continue;
    }
    ps->st.duplicates++;
    if (!ms_same_payload(b->e[ref]->m.payload, b->e[ref]->m.payload_len, PQgetvalue(res, r, 3),
                         (size_t)PQgetlength(res, r, 3))) {
      pgs__put_answer(b->e[ref], MS_CONFLICT, seq, 0, NULL, 0, NULL);
      continue;
    }
    int done = !PQgetisnull(res, r, 4);
    int kind = done ? atoi(PQgetvalue(res, r, 5)) : 0;
    const char *reply = done ? PQgetvalue(res, r, 6) : NULL;
    size_t len = done ? (size_t)PQgetlength(res, r, 6) : 0;
    pgs__put_answer(b->e[ref], done ? MS_DONE : MS_PENDING, seq, kind, reply, len, NULL);
  }
  /* A key another session was storing at the same moment: its row was not
   * visible to this statement. The next one sees it. */
  for (int i = 0; i < b->n; i++) {
    if (answered[i]) continue;
    pgs_entry_t *e = b->e[i];
    if (e->retries++ < PGS_PUT_RETRIES) {
      b->e[i] = NULL;
      pgs__enqueue(ps, &ps->put, e);
    } else {
      pgs__fail(ps, &ps->put, e, "the message's key could not be stored or found");
    }
  }
  free(answered);
  pgs__batch_done(&ps->put, b);
}

void pgs_put(pgstore_t *ps, const ms_msg_t *m, ms_put_cb cb, void *ud) {
  pgs_entry_t *e = calloc(1, sizeof *e);
  size_t dl = m->dedupe ? strlen(m->dedupe) + 1 : 0;
  size_t n = m->type_len + m->id_len + m->rpc_len + m->payload_len + (m->headers ? m->headers_len : 0) + dl + 5;
  char *p = e->data = malloc(n);
  e->cb = (void *)cb;
  e->ud = ud;
  e->m = *m;
#define PGS_COPY(f)                     \
  do {                                  \
    memcpy(p, m->f, m->f##_len);        \
    e->m.f = p;                         \
    p += m->f##_len;                    \
    *p++ = '\0';                        \
  } while (0)
  PGS_COPY(type);
  PGS_COPY(id);
  PGS_COPY(rpc);
  PGS_COPY(payload);
  if (m->headers) PGS_COPY(headers);
#undef PGS_COPY
  if (m->dedupe) {
    memcpy(p, m->dedupe, dl);
    e->m.dedupe = p;
  }
  pgs__enqueue(ps, &ps->put, e);
}

/* STATE ----------------------------------------------------------------- */

static void pgs__state_done(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  pgs_batch_t *b = ud;
  pgstore_t *ps = b->ps;
  if (st != PGC_OK) {
    const char *why = pgs__why(st, err);
    ps->st.failures++;
    for (int i = 0; i < b->n; i++) pgs__fail(ps, &ps->state, b->e[i], why);
    pgs__batch_done(&ps->state, b);
    return;
  }
  char *answered = calloc((size_t)b->n + 1, 1);
  int rows = PQntuples(res);
  for (int r = 0; r < rows; r++) {
    uint64_t seq = strtoull(PQgetvalue(res, r, 0), NULL, 10);
    int done = !PQgetisnull(res, r, 1);
    int kind = done ? atoi(PQgetvalue(res, r, 2)) : 0;
    const char *reply = done ? PQgetvalue(res, r, 3) : NULL;
    size_t len = done ? (size_t)PQgetlength(res, r, 3) : 0;
    for (int i = 0; i < b->n; i++) {
      if (answered[i] || b->e[i]->seq != seq) continue;
      answered[i] = 1;
      ((ms_state_cb)b->e[i]->cb)(b->e[i]->ud, 1, seq, 1, done, kind, reply, len, NULL);
    }
  }
  for (int i = 0; i < b->n; i++)
    if (!answered[i]) ((ms_state_cb)b->e[i]->cb)(b->e[i]->ud, 1, b->e[i]->seq, 0, 0, 0, NULL, 0, NULL);
  free(answered);
  pgs__batch_done(&ps->state, b);
}

static void pgs__send_state(pgstore_t *ps) {
  pgs_batch_t *b = pgs__take(ps, &ps->state);
  buf_t a;
  buf_init(&a);
  for (int i = 0; i < b->n; i++) pgs__arr_int(&a, (int64_t)b->e[i]->seq);
  const char *v[1] = {pgs__arr_end(&a)};
  ps->st.read_batches++;
  ps->st.reads += (uint64_t)b->n;
  pgc_query(ps->c, ps->sql_state, 1, v, NULL, PGS_TIMEOUT_MS, pgs__state_done, b);
  buf_free(&a);
}

void pgs_state(pgstore_t *ps, uint64_t seq, ms_state_cb cb, void *ud) {
  pgs_entry_t *e = calloc(1, sizeof *e);
  e->cb = (void *)cb;
  e->ud = ud;
  e->seq = seq;
  pgs__enqueue(ps, &ps->state, e);
}

/* REPLY ----------------------------------------------------------------- */

static void pgs__reply_done(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  pgs_batch_t *b = ud;
  pgstore_t *ps = b->ps;
  const char *why = st == PGC_OK ? NULL : pgs__why(st, err);
  if (st != PGC_OK) ps->st.failures++;
  else ps->st.replies += (uint64_t)b->n;
  for (int i = 0; i < b->n; i++) {
    pgs_entry_t *e = b->e[i];
    if (e->cb) ((ms_done_cb)e->cb)(e->ud, st == PGC_OK, why);
  }
  pgs__batch_done(&ps->reply, b);
}

/* The state columns of one entry: (type, id, bytes, op). */
static void pgs__arr_state(buf_t *a, const pgs_entry_t *e) {
  pgs__arr_text(&a[0], e->sop ? e->m.type : NULL, e->m.type_len);
  pgs__arr_text(&a[1], e->sop ? e->m.id : NULL, e->m.id_len);
  pgs__arr_text(&a[2], e->sop == 1 ? e->m.headers : NULL, e->m.headers_len);
  pgs__arr_int(&a[3], e->sop);
}

static void pgs__send_reply(pgstore_t *ps) {
  pgs_batch_t *b = pgs__take(ps, &ps->reply);
  buf_t a[7];
  int states = 0;
  for (int i = 0; i < 7; i++) buf_init(&a[i]);
  for (int i = 0; i < b->n; i++) states += b->e[i]->sop != 0;
  for (int i = 0; i < b->n; i++) {
    pgs_entry_t *e = b->e[i];
    pgs__arr_int(&a[0], (int64_t)e->seq);
    pgs__arr_int(&a[1], e->kind);
    pgs__arr_text(&a[2], e->data, e->m.payload_len);
    if (states) pgs__arr_state(&a[3], e);
  }
  ps->st.state_saves += (uint64_t)states;
  char now[24];
  snprintf(now, sizeof now, "%" PRIu64, sched_wall_ms(ps->sched));
  const char *v[8] = {pgs__arr_end(&a[0]), pgs__arr_end(&a[1]), pgs__arr_end(&a[2]), now,
                      pgs__arr_end(&a[3]), pgs__arr_end(&a[4]), pgs__arr_end(&a[5]), pgs__arr_end(&a[6])};
  ps->st.reply_batches++;
  pgc_query(ps->c, states ? ps->sql_reply : ps->sql_reply_plain, states ? 8 : 4, v, NULL, PGS_TIMEOUT_MS,
            pgs__reply_done, b);
  for (int i = 0; i < 7; i++) buf_free(&a[i]);
}

/* An entry whose `data` holds prefix (plen bytes) NUL type NUL id NUL
 * [bytes NUL], with m's strings pointing into it. */
static pgs_entry_t *pgs__state_entry(const char *prefix, size_t plen, const estate_write_t *w, const char *type,
                                     size_t tl, const char *id, size_t il) {
  pgs_entry_t *e = calloc(1, sizeof *e);
  size_t bl = w && w->bytes ? w->len : 0;
  char *p = e->data = malloc(plen + tl + il + bl + 4);
  memcpy(p, prefix, plen);
  p += plen;
  *p++ = '\0';
  e->m.payload_len = plen;
  e->m.type = p;
  e->m.type_len = tl;
  memcpy(p, type, tl);
  p += tl;
  *p++ = '\0';
  e->m.id = p;
  e->m.id_len = il;
  memcpy(p, id, il);
  p += il;
  *p++ = '\0';
  if (w) {
    e->sop = w->bytes ? 1 : 2;
    e->m.headers = p;
    e->m.headers_len = bl;
    if (bl) memcpy(p, w->bytes, bl);
    p[bl] = '\0';
  }
  return e;
}

void pgs_reply(pgstore_t *ps, uint64_t seq, int kind, const char *body, size_t len, const estate_write_t *w, ms_done_cb cb,
               void *ud) {
  pgs_entry_t *e = w ? pgs__state_entry(body, len, w, w->type, w->type_len, w->id, w->id_len)
                     : pgs__state_entry(body, len, NULL, "", 0, "", 0);
  e->cb = (void *)cb;
  e->ud = ud;
  e->seq = seq;
  e->kind = kind;
  pgs__enqueue(ps, &ps->reply, e);
}

/* ESTATE ---------------------------------------------------------------- */

static void pgs__esave_done(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  pgs_batch_t *b = ud;
  pgstore_t *ps = b->ps;
  const char *why = st == PGC_OK ? NULL : pgs__why(st, err);
  if (st != PGC_OK) ps->st.failures++;
  for (int i = 0; i < b->n; i++) {
    pgs_entry_t *e = b->e[i];
    if (e->cb) ((estate_done_cb)e->cb)(e->ud, st == PGC_OK, why);
  }
  pgs__batch_done(&ps->esave, b);
}

static void pgs__send_esave(pgstore_t *ps) {
  pgs_batch_t *b = pgs__take(ps, &ps->esave);
  buf_t a[4];
  for (int i = 0; i < 4; i++) buf_init(&a[i]);
  for (int i = 0; i < b->n; i++) pgs__arr_state(a, b->e[i]);
  ps->st.state_saves += (uint64_t)b->n;
  char now[24];
  snprintf(now, sizeof now, "%" PRIu64, sched_wall_ms(ps->sched));
  const char *v[5] = {pgs__arr_end(&a[0]), pgs__arr_end(&a[1]), pgs__arr_end(&a[2]), pgs__arr_end(&a[3]), now};
  pgc_query(ps->c, ps->sql_esave, 5, v, NULL, PGS_TIMEOUT_MS, pgs__esave_done, b);
  for (int i = 0; i < 4; i++) buf_free(&a[i]);
}

static void pgs__eload_done(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  pgs_batch_t *b = ud;
  pgstore_t *ps = b->ps;
  if (st != PGC_OK) {
    const char *why = pgs__why(st, err);
    ps->st.failures++;
    for (int i = 0; i < b->n; i++) ((estate_load_cb)b->e[i]->cb)(b->e[i]->ud, 0, 0, NULL, 0, why);
    pgs__batch_done(&ps->eload, b);
    return;
  }
  char *answered = calloc((size_t)b->n + 1, 1);
  int rows = PQntuples(res);
  for (int r = 0; r < rows; r++) {
    long ord = strtol(PQgetvalue(res, r, 0), NULL, 10) - 1;
    if (ord < 0 || ord >= b->n || answered[ord]) continue;
    answered[ord] = 1;
    pgs_entry_t *e = b->e[ord];
    ((estate_load_cb)e->cb)(e->ud, 1, 1, PQgetvalue(res, r, 1), (size_t)PQgetlength(res, r, 1), NULL);
  }
  for (int i = 0; i < b->n; i++)
    if (!answered[i]) ((estate_load_cb)b->e[i]->cb)(b->e[i]->ud, 1, 0, NULL, 0, NULL);
  free(answered);
  pgs__batch_done(&ps->eload, b);
}

static void pgs__send_eload(pgstore_t *ps) {
  pgs_batch_t *b = pgs__take(ps, &ps->eload);
  buf_t a[2];
  for (int i = 0; i < 2; i++) buf_init(&a[i]);
  for (int i = 0; i < b->n; i++) {
    pgs__arr_text(&a[0], b->e[i]->m.type, b->e[i]->m.type_len);
    pgs__arr_text(&a[1], b->e[i]->m.id, b->e[i]->m.id_len);
  }
  ps->st.state_loads += (uint64_t)b->n;
  const char *v[2] = {pgs__arr_end(&a[0]), pgs__arr_end(&a[1])};
  pgc_query(ps->c, ps->sql_eload, 2, v, NULL, PGS_TIMEOUT_MS, pgs__eload_done, b);
  for (int i = 0; i < 2; i++) buf_free(&a[i]);
}

static void pgs__eload(void *ctx, const char *type, size_t tl, const char *id, size_t il, estate_load_cb cb,
                       void *ud) {
  pgstore_t *ps = ctx;
  pgs_entry_t *e = pgs__state_entry("", 0, NULL, type, tl, id, il);
  e->cb = (void *)cb;
  e->ud = ud;
  pgs__enqueue(ps, &ps->eload, e);
}

static void pgs__esave(void *ctx, const estate_write_t *w, estate_done_cb cb, void *ud) {
  pgstore_t *ps = ctx;
  pgs_entry_t *e = pgs__state_entry("", 0, w, w->type, w->type_len, w->id, w->id_len);
  e->cb = (void *)cb;
  e->ud = ud;
  pgs__enqueue(ps, &ps->esave, e);
}

estate_ops_t pgs_estate_ops(pgstore_t *ps) {
  estate_ops_t o = {.ctx = ps, .load = pgs__eload, .save = pgs__esave};
  return o;
}

static void pgs__flush(sched_item_t *it) {
  pgstore_t *ps = (pgstore_t *)((char *)it - offsetof(pgstore_t, flush));
  if (!ps->open) {
    if (ps->free_at_flush) pgs__free(ps);
    return;
  }
  while (ps->put.n && ps->put.inflight < PGS_MAX_INFLIGHT) pgs__send_put(ps);
  while (ps->state.n && ps->state.inflight < PGS_MAX_INFLIGHT) pgs__send_state(ps);
  while (ps->reply.n && ps->reply.inflight < PGS_MAX_INFLIGHT) pgs__send_reply(ps);
  /* Saves before loads: a load queued after a save reads what it wrote. */
  while (ps->esave.n && ps->esave.inflight < PGS_MAX_INFLIGHT) pgs__send_esave(ps);
  while (ps->eload.n && ps->eload.inflight < PGS_MAX_INFLIGHT) pgs__send_eload(ps);
}

/* ---------------------------------------------------------------------------
 * One-off statements
 * ------------------------------------------------------------------------- */

typedef struct {
  pgstore_t *ps;
  void *cb, *ud;
} pgs_req_t;

static pgs_req_t *pgs__req(pgstore_t *ps, void *cb, void *ud) {
  pgs_req_t *r = malloc(sizeof *r);
  r->ps = ps;
  r->cb = cb;
  r->ud = ud;
  return r;
}

static void pgs__scan_done(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  pgs_req_t *r = ud;
  pgstore_t *ps = r->ps;
  ms_scan_cb cb = (ms_scan_cb)r->cb;
  if (st != PGC_OK) {
    log_warn("storage: reading pending messages failed: %s", pgs__why(st, err));
    cb(r->ud, 0, NULL, 0);
    free(r);
    return;
  }
  int n = PQntuples(res);
  ms_row_t *rows = calloc((size_t)n + 1, sizeof *rows);
  for (int i = 0; i < n; i++) {
    ms_row_t *w = &rows[i];
    w->seq = strtoull(PQgetvalue(res, i, 0), NULL, 10);
    w->shard = (uint32_t)strtoul(PQgetvalue(res, i, 1), NULL, 10);
#define PGS_COL(f, c)                         \
  do {                                        \
    w->f = PQgetvalue(res, i, c);             \
    w->f##_len = (size_t)PQgetlength(res, i, c); \
  } while (0)
    PGS_COL(type, 2);
    PGS_COL(id, 3);
    PGS_COL(rpc, 4);
    PGS_COL(payload, 5);
    if (!PQgetisnull(res, i, 6)) PGS_COL(headers, 6);
#undef PGS_COL
    w->deliver_at = strtoull(PQgetvalue(res, i, 7), NULL, 10);
    if (!PQgetisnull(res, i, 8)) snprintf(w->trace, sizeof w->trace, "%s", PQgetvalue(res, i, 8));
  }
  ps->st.scanned += (uint64_t)n;
  cb(r->ud, 1, rows, n);
  free(rows);
  free(r);
}

void pgs_scan(pgstore_t *ps, const uint32_t *shards, int n, uint64_t now_ms, uint64_t after, int limit, ms_scan_cb cb, void *ud) {
  buf_t a;
  buf_init(&a);
  pgs__shards(&a, shards, n);
  char now[24], aft[24], lim[16];
  snprintf(now, sizeof now, "%" PRIu64, now_ms);
  snprintf(aft, sizeof aft, "%" PRIu64, after);
  snprintf(lim, sizeof lim, "%d", limit);
  const char *v[4] = {a.data, now, aft, lim};
  pgc_query(ps->c, ps->sql_scan, 4, v, NULL, PGS_TIMEOUT_MS, pgs__scan_done, pgs__req(ps, (void *)cb, ud));
  buf_free(&a);
}

static void pgs__due_done(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  pgs_req_t *r = ud;
  uint64_t due = 0;
  int ok = st == PGC_OK && PQntuples(res) == 1;
  if (ok && !PQgetisnull(res, 0, 0)) due = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
  ((ms_due_cb)r->cb)(r->ud, ok, due);
  free(r);
}

void pgs_next_due(pgstore_t *ps, const uint32_t *shards, int n, uint64_t now_ms, ms_due_cb cb, void *ud) {
  buf_t a;
  buf_init(&a);
  pgs__shards(&a, shards, n);
  char now[24];
  snprintf(now, sizeof now, "%" PRIu64, now_ms);
  const char *v[2] = {a.data, now};
  pgc_query(ps->c, ps->sql_due, 2, v, NULL, PGS_TIMEOUT_MS, pgs__due_done, pgs__req(ps, (void *)cb, ud));
  buf_free(&a);
}

static void pgs__prune_done(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  pgs_req_t *r = ud;
  pgstore_t *ps = r->ps;
  uint64_t n = st == PGC_OK ? strtoull(PQcmdTuples(res), NULL, 10) : 0;
  ps->st.pruned += n;
  ((ms_prune_cb)r->cb)(r->ud, st == PGC_OK, n);
  free(r);
}

void pgs_prune(pgstore_t *ps, const uint32_t *shards, int n, uint64_t cutoff_ms, int limit, ms_prune_cb cb, void *ud) {
  buf_t a;
  buf_init(&a);
  pgs__shards(&a, shards, n);
  char cut[24], lim[16];
  snprintf(cut, sizeof cut, "%" PRIu64, cutoff_ms);
  snprintf(lim, sizeof lim, "%d", limit);
  const char *v[3] = {cut, a.data, lim};
  pgc_query(ps->c, ps->sql_prune, 3, v, NULL, PGS_TIMEOUT_MS, pgs__prune_done, pgs__req(ps, (void *)cb, ud));
  buf_free(&a);
}

static void pgs__cron_done(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  pgs_req_t *r = ud;
  ms_cron_cb cb = (ms_cron_cb)r->cb;
  if (st != PGC_OK) {
    cb(r->ud, 0, 0, 0, pgs__why(st, err));
  } else if (PQntuples(res) == 0) {
    cb(r->ud, 1, 0, 0, NULL);
  } else {
    cb(r->ud, 1, strtoll(PQgetvalue(res, 0, 0), NULL, 10), strtoll(PQgetvalue(res, 0, 1), NULL, 10), NULL);
  }
  free(r);
}

void pgs_cron(pgstore_t *ps, ms_cron_op_t op, const char *name, uint64_t at, ms_cron_cb cb, void *ud) {
  char t[24];
  snprintf(t, sizeof t, "%" PRIu64, at);
  const char *v[2] = {name, t};
  pgc_query(ps->c, ps->sql_cron[op], 2, v, NULL, PGS_TIMEOUT_MS, pgs__cron_done, pgs__req(ps, (void *)cb, ud));
}

void pgs_close(pgstore_t *ps) {
  if (!ps->open) return;
  ps->open = 0;
  /* Queued entries never went out: they fail now, like those in flight. */
  pgs_queue_t *qs[5] = {&ps->put, &ps->state, &ps->reply, &ps->esave, &ps->eload};
  for (int k = 0; k < 5; k++) {
    pgs_queue_t *q = qs[k];
    while (q->head) {
      pgs_entry_t *e = q->head;
      q->head = e->next;
      pgs__fail(ps, q, e, "the runner is shutting down");
      free(e->data);
      free(e);
    }
    q->tail = NULL;
    q->n = 0;
  }
  pgc_close(ps->c);
  ps->c = NULL;
  /* A queued flush item still points here: it frees the store when it runs. */
  if (ps->flush.queued) ps->free_at_flush = 1;
  else pgs__free(ps);
}

/* ---------------------------------------------------------------------------
 * The operations table (msgstore.h); ctx is the store.
 * ------------------------------------------------------------------------- */

static int pgs__op_up(void *ctx) { return pgs_up(ctx); }
static void pgs__op_put(void *ctx, const ms_msg_t *m, ms_put_cb cb, void *ud) { pgs_put(ctx, m, cb, ud); }
static void pgs__op_state(void *ctx, uint64_t seq, ms_state_cb cb, void *ud) { pgs_state(ctx, seq, cb, ud); }
static void pgs__op_reply(void *ctx, uint64_t seq, int kind, const char *body, size_t len, const estate_write_t *w,
                          ms_done_cb cb, void *ud) {
  pgs_reply(ctx, seq, kind, body, len, w, cb, ud);
}
static void pgs__op_scan(void *ctx, const uint32_t *shards, int n, uint64_t now_ms, uint64_t after, int limit,
                         ms_scan_cb cb, void *ud) {
  pgs_scan(ctx, shards, n, now_ms, after, limit, cb, ud);
}
static void pgs__op_next_due(void *ctx, const uint32_t *shards, int n, uint64_t now_ms, ms_due_cb cb, void *ud) {
  pgs_next_due(ctx, shards, n, now_ms, cb, ud);
}
static void pgs__op_prune(void *ctx, const uint32_t *shards, int n, uint64_t cutoff_ms, int limit, ms_prune_cb cb,
                          void *ud) {
  pgs_prune(ctx, shards, n, cutoff_ms, limit, cb, ud);
}
static void pgs__op_cron(void *ctx, ms_cron_op_t op, const char *name, uint64_t at, ms_cron_cb cb, void *ud) {
  pgs_cron(ctx, op, name, at, cb, ud);
}
static int pgs__op_busy(void *ctx) { return pgs_busy(ctx); }
static const ms_stats_t *pgs__op_stats(void *ctx) { return pgs_stats(ctx); }
static void pgs__op_close(void *ctx) { pgs_close(ctx); }

const ms_ops_t *pgs_ops(pgstore_t *ps) { return &ps->ops; }
