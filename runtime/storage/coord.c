/* coord.c - the runners table, shard locks and notices in PostgreSQL (see
 * coord.h for why advisory locks on a dedicated session make leases). */
#include "storage/coord.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loop/log.h"
#include "core/buf.h"
#include "core/hash.h"
#include "storage/pgconn.h"

/* Migrations, in order; each runs once per database and prefix. "%1$s" is
 * the table prefix. Never edit a released migration: add one. */
static const char *const coord_migrations[] = {
    "CREATE TABLE IF NOT EXISTS %1$srunners ("
    " id bigserial PRIMARY KEY,"
    " address text NOT NULL,"
    " http text NOT NULL DEFAULT '',"
    " weight integer NOT NULL,"
    " shards integer NOT NULL,"
    " stopping boolean NOT NULL DEFAULT false,"
    " held integer NOT NULL DEFAULT 0,"
    " started_at timestamptz NOT NULL DEFAULT now(),"
    " heartbeat_at timestamptz NOT NULL DEFAULT now())",
    /* 2: the script versions each runner serves ("file\tversion" lines). */
    "ALTER TABLE %1$srunners ADD COLUMN IF NOT EXISTS scripts text NOT NULL DEFAULT ''",
    /* 3: the lease each runner's lock session runs with (it must agree). */
    "ALTER TABLE %1$srunners ADD COLUMN IF NOT EXISTS lease_ms bigint NOT NULL DEFAULT 0",
    /* 4: persisted messages and their replies (see pgstore.c). `dedupe` is
     * the hash of (type, id, rpc, primary key) for keyed messages; `ref` is
     * the row's place in the insert batch that wrote it. Times are epoch ms;
     * `done_at` is set with the reply. */
    "CREATE TABLE IF NOT EXISTS %1$smessages ("
    " seq bigserial PRIMARY KEY,"
    " shard integer NOT NULL,"
    " type text NOT NULL,"
    " entity_id text NOT NULL,"
    " rpc text NOT NULL,"
    " dedupe text,"
    " ref integer NOT NULL DEFAULT 0,"
    " payload text NOT NULL,"
    " headers text,"
    " deliver_at bigint NOT NULL DEFAULT 0,"
    " created_at bigint NOT NULL,"
    " done_at bigint,"
    " reply_kind smallint,"
    " reply text)",
    /* 5-7: dedupe, the owner's scan of pending messages, retention. */
    "CREATE UNIQUE INDEX IF NOT EXISTS %1$smessages_dedupe ON %1$smessages (dedupe) WHERE dedupe IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS %1$smessages_pending ON %1$smessages (shard, seq) WHERE done_at IS NULL",
    "CREATE INDEX IF NOT EXISTS %1$smessages_done ON %1$smessages (done_at) WHERE done_at IS NOT NULL",
    /* 8: each cron job's last finished instant and the instant it started. */
    "CREATE TABLE IF NOT EXISTS %1$scron (name text PRIMARY KEY, done_ms bigint NOT NULL, claimed_ms bigint NOT NULL)",
    /* 9: each runner's proof that it knows the cluster secret (see
     * cluster/proof.h): '' without a secret, NULL from a luster that
     * predates it. */
    "ALTER TABLE %1$srunners ADD COLUMN IF NOT EXISTS secret_proof text",
    /* 10: durable entity state (storage/estate.h): the encoded snapshot of
     * each (type, id), written with the reply of the message that made it
     * (pgstore.c); updated_at is epoch ms. */
    "CREATE TABLE IF NOT EXISTS %1$sentity_state (type text NOT NULL, entity_id text NOT NULL,"
    " state text NOT NULL, updated_at bigint NOT NULL, PRIMARY KEY (type, entity_id))",
    /* 11: each persisted message's trace context (a traceparent; NULL for
     * none), so a redelivery continues its trace. */
    "ALTER TABLE %1$smessages ADD COLUMN IF NOT EXISTS trace text",
};
#define COORD_NMIGRATIONS (int)(sizeof coord_migrations / sizeof coord_migrations[0])

/* "Is the member lock of runner r.id held?" as a join condition on pg_locks
 * m; $1 is the member namespace. */
#define COORD_MEMBER_LOCK                                                                                        \
  "m.locktype = 'advisory' AND m.classid = $1::oid AND m.objid = r.id::oid AND m.objsubid = 2 AND m.granted"  \
  " AND m.database = (SELECT oid FROM pg_database WHERE datname = current_database())"

struct coord_s {
  pgc_t *lock, *main;
  coord_config_t cfg;
  char prefix[48];
  char ns_shard[16], ns_member[16], self[24];
  char set_timeout[96];
  const char *on_connect_lock[3];
  const char *on_connect_main[2];
  char listen_sql[96];
  char channel[64];
  /* Statements naming tables are built once: pgconn prepares them by pointer. */
  char *sql_members, *sql_heartbeat, *sql_unregister, *sql_cleanup;
  unsigned beats;
};

int coord_valid_prefix(const char *p) {
  size_t n = strlen(p);
  if (n == 0 || n > 40) return -1;
  if (!((p[0] >= 'a' && p[0] <= 'z') || p[0] == '_')) return -1;
  for (size_t i = 0; i < n; i++)
    if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= '0' && p[i] <= '9') || p[i] == '_')) return -1;
  return 0;
}

static int32_t coord__namespace(const char *prefix) {
  /* Positive and below 2^30, so ns + 1 is too, and both read back from
   * pg_locks' oid columns as the same numbers. */
  return (int32_t)(hash_bytes(prefix, strlen(prefix)) & 0x3fffffff) + 1;
}

char *coord_sql(const char *fmt, const char *prefix) {
  buf_t b;
  buf_init(&b);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
  buf_printf(&b, fmt, prefix);
#pragma GCC diagnostic pop
  return buf_steal(&b, NULL);
}

static void coord__names(coord_t *co, const coord_config_t *cfg) {
  snprintf(co->prefix, sizeof co->prefix, "%s", cfg->prefix);
  int32_t ns = coord__namespace(cfg->prefix);
  snprintf(co->ns_shard, sizeof co->ns_shard, "%" PRId32, ns);
  snprintf(co->ns_member, sizeof co->ns_member, "%" PRId32, ns + 1);
  snprintf(co->channel, sizeof co->channel, "%scluster", cfg->prefix);
}

/* ---------------------------------------------------------------------------
 * Bootstrap (blocking, before the loop serves anything)
 * ------------------------------------------------------------------------- */

static int coord__exec(PGconn *c, const char *sql, int n, const char *const *vals, PGresult **out, char *err,
                       size_t errlen) {
  PGresult *r = PQexecParams(c, sql, n, NULL, vals, NULL, NULL, 0);
  ExecStatusType st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    snprintf(err, errlen, "%s", PQresultErrorMessage(r));
    size_t l = strlen(err);
    while (l && (err[l - 1] == '\n' || err[l - 1] == ' ')) err[--l] = '\0';
    PQclear(r);
    return -1;
  }
  if (out) *out = r;
  else PQclear(r);
  return 0;
}

static int coord__migrate(coord_t *co, PGconn *c, char *err, size_t errlen) {
  char *sql = NULL;
  PGresult *r = NULL;
  int rc = -1;
  if (coord__exec(c, "BEGIN", 0, NULL, NULL, err, errlen)) return -1;
  const char *k[1] = {co->ns_shard};
  if (coord__exec(c, "SELECT pg_advisory_xact_lock($1::int, 0)", 1, k, NULL, err, errlen)) goto out;
  sql = coord_sql("CREATE TABLE IF NOT EXISTS %1$sschema_version (version integer PRIMARY KEY,"
                   " applied_at timestamptz NOT NULL DEFAULT now())", co->prefix);
  if (coord__exec(c, sql, 0, NULL, NULL, err, errlen)) goto out;
  free(sql);
  sql = coord_sql("SELECT coalesce(max(version), 0) FROM %1$sschema_version", co->prefix);
  if (coord__exec(c, sql, 0, NULL, &r, err, errlen)) goto out;
  int have = atoi(PQgetvalue(r, 0, 0));
  PQclear(r);
  r = NULL;
  if (have > COORD_NMIGRATIONS) {
    snprintf(err, errlen, "the database's luster tables (prefix '%s') are at schema version %d, newer than this "
             "build knows (%d): upgrade this runner", co->prefix, have, COORD_NMIGRATIONS);
    goto out;
  }
  for (int v = have + 1; v <= COORD_NMIGRATIONS; v++) {
    free(sql);
    sql = coord_sql(coord_migrations[v - 1], co->prefix);
    if (coord__exec(c, sql, 0, NULL, NULL, err, errlen)) goto out;
    free(sql);
    sql = coord_sql("INSERT INTO %1$sschema_version (version) VALUES ($1::int)", co->prefix);
    char vs[16];
    snprintf(vs, sizeof vs, "%d", v);
    const char *p[1] = {vs};
    if (coord__exec(c, sql, 1, p, NULL, err, errlen)) goto out;
    log_info("storage: applied migration %d to tables with prefix '%s'", v, co->prefix);
  }
  rc = coord__exec(c, "COMMIT", 0, NULL, NULL, err, errlen);
out:
  if (rc != 0) PQclear(PQexec(c, "ROLLBACK"));
  free(sql);
  return rc;
}

static void coord__quiet(void *arg, const char *message) {
  (void)arg;
  log_debug("storage: %s", message);
}

/* Every live runner's secret proof must pass cfg->check_proof: a runner
 * with another secret would take shards whose calls its peers refuse. */
static int coord__check_proofs(coord_t *co, PGconn *c, const coord_config_t *cfg, char *err, size_t errlen) {
  if (!cfg->check_proof) return 0;
  char *sql = coord_sql("SELECT r.address, r.secret_proof FROM %1$srunners r JOIN pg_locks m ON " COORD_MEMBER_LOCK
                        " ORDER BY r.id", co->prefix);
  PGresult *r = NULL;
  const char *p1[1] = {co->ns_member};
  int rc = coord__exec(c, sql, 1, p1, &r, err, errlen);
  free(sql);
  for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
    const char *proof = PQgetisnull(r, i, 1) ? NULL : PQgetvalue(r, i, 1);
    if (cfg->check_proof(cfg->ud, PQgetvalue(r, i, 0), proof, err, errlen) != 0) rc = -1;
  }
  PQclear(r);
  return rc;
}

int coord_bootstrap(const coord_config_t *cfg, int64_t *self_id, char *err, size_t errlen) {
  coord_t names = {0}, *co = &names; /* only the names derived from the prefix */
  coord__names(co, cfg);
  const char *keys[] = {"dbname", "connect_timeout", "application_name", NULL};
  const char *vals[] = {cfg->conninfo, "5", "luster", NULL};
  PGconn *c = PQconnectdbParams(keys, vals, 1);
  if (!c || PQstatus(c) != CONNECTION_OK) {
    snprintf(err, errlen, "cannot connect to PostgreSQL: %s", c ? PQerrorMessage(c) : "out of memory");
    size_t l = strlen(err);
    while (l && (err[l - 1] == '\n' || err[l - 1] == ' ')) err[--l] = '\0';
    PQfinish(c);
    return -1;
  }
  PQsetNoticeProcessor(c, coord__quiet, NULL); /* "already exists, skipping" and the like */
  int rc = -1;
  char *sql = NULL;
  PGresult *r = NULL;
  if (coord__exec(c, "SET statement_timeout = 10000", 0, NULL, NULL, err, errlen)) goto out;
  if (coord__migrate(co, c, err, errlen)) goto out;
  /* Every live runner must agree on the shard count: it decides where every
   * id lives. */
  /* Every live runner must agree on the shard count (it decides where every
   * id lives) and on the lease (a runner waits one lease for locks a
   * restarted server may have dropped). */
  sql = coord_sql("SELECT r.address, r.shards, r.lease_ms FROM %1$srunners r JOIN pg_locks m ON " COORD_MEMBER_LOCK
                   " WHERE r.shards <> $2::int OR r.lease_ms <> $3::bigint ORDER BY r.id LIMIT 1", co->prefix);
  char shards[16], weight[16], lease[24];
  snprintf(shards, sizeof shards, "%u", cfg->shards);
  snprintf(weight, sizeof weight, "%u", cfg->weight);
  snprintf(lease, sizeof lease, "%llu", (unsigned long long)cfg->lease_ms);
  const char *p3[3] = {co->ns_member, shards, lease};
  if (coord__exec(c, sql, 3, p3, &r, err, errlen)) goto out;
  if (PQntuples(r) > 0) {
    if (strtoul(PQgetvalue(r, 0, 1), NULL, 10) != cfg->shards)
      snprintf(err, errlen, "the cluster in this database runs with --shards %s (runner %s); this runner was started "
               "with --shards %u. Every runner of one cluster must use the same shard count",
               PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 0), cfg->shards);
    else
      snprintf(err, errlen, "the cluster in this database runs with a lease of %s ms (runner %s); this runner was "
               "started with --lease %llums. Every runner of one cluster must use the same lease",
               PQgetvalue(r, 0, 2), PQgetvalue(r, 0, 0), (unsigned long long)cfg->lease_ms);
    goto out;
  }
  PQclear(r);
  r = NULL;
  free(sql);
  sql = NULL;
  if (coord__check_proofs(co, c, cfg, err, errlen)) goto out;
  /* Rows of runners that died long ago (no lock, no heartbeat). */
  sql = coord_sql("DELETE FROM %1$srunners r WHERE r.heartbeat_at < now() - interval '10 minutes'"
                   " AND NOT EXISTS (SELECT 1 FROM pg_locks m WHERE " COORD_MEMBER_LOCK ")", co->prefix);
  const char *p1[1] = {co->ns_member};
  if (coord__exec(c, sql, 1, p1, NULL, err, errlen)) goto out;
  free(sql);
  sql = coord_sql("INSERT INTO %1$srunners (address, http, weight, shards, lease_ms, secret_proof)"
                   " VALUES ($1, $2, $3::int, $4::int, $5::bigint, $6) RETURNING id", co->prefix);
  const char *p6[6] = {cfg->address, cfg->http ? cfg->http : "", weight, shards, lease,
                       cfg->proof ? cfg->proof : ""};
  if (coord__exec(c, sql, 6, p6, &r, err, errlen)) goto out;
  *self_id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
  rc = 0;
out:
  PQclear(r);
  free(sql);
  PQfinish(c);
  return rc;
}

/* ---------------------------------------------------------------------------
 * Connections on the loop
 * ------------------------------------------------------------------------- */

static void coord__lock_state(void *ud, int up, const char *why) {
  coord_t *co = ud;
  if (co->cfg.on_lock_state) co->cfg.on_lock_state(co->cfg.ud, up, why);
}

static void coord__main_state(void *ud, int up, const char *why) {
  coord_t *co = ud;
  if (co->cfg.on_main_state) co->cfg.on_main_state(co->cfg.ud, up, why);
}

static void coord__notify(void *ud, const char *channel, const char *payload) {
  coord_t *co = ud;
  if (strcmp(channel, co->channel) == 0 && co->cfg.on_notice) co->cfg.on_notice(co->cfg.ud, payload);
}

coord_t *coord_open(uv_loop_t *loop, const coord_config_t *cfg, int64_t self_id) {
  coord_t *co = calloc(1, sizeof *co);
  if (!co) abort();
  co->cfg = *cfg;
  coord__names(co, cfg);
  snprintf(co->self, sizeof co->self, "%" PRId64, self_id);
  /* The server ends this session (and so frees its locks) after one lease
   * without a round trip: the bound every lease decision relies on. */
  snprintf(co->set_timeout, sizeof co->set_timeout, "SET idle_session_timeout = %llu",
           (unsigned long long)cfg->session_timeout_ms);
  co->on_connect_lock[0] = co->set_timeout;
  co->on_connect_lock[1] = "SET application_name = 'luster lock'";
  co->on_connect_lock[2] = NULL;
  snprintf(co->listen_sql, sizeof co->listen_sql, "LISTEN %s", co->channel);
  co->on_connect_main[0] = co->listen_sql;
  co->on_connect_main[1] = NULL;
  co->sql_members = coord_sql(
      "SELECT r.id, r.address, r.http, r.weight, r.shards, r.stopping,"
      " (extract(epoch from (now() - r.heartbeat_at)) * 1000)::bigint,"
      " (SELECT count(*) FROM pg_locks s WHERE s.locktype = 'advisory' AND s.classid = $2::oid"
      "   AND s.objsubid = 2 AND s.granted AND s.pid = m.pid), r.scripts, r.secret_proof"
      " FROM %1$srunners r JOIN pg_locks m ON " COORD_MEMBER_LOCK " ORDER BY r.id",
      co->prefix);
  /* An upsert: a runner frozen long enough for its row to be cleaned away
   * comes back with the same id. */
  co->sql_heartbeat = coord_sql(
      "INSERT INTO %1$srunners (id, address, http, weight, shards, stopping, held, scripts, lease_ms, secret_proof)"
      " VALUES ($1::bigint, $2, $3, $4::int, $5::int, $6::boolean, $7::int, $8, $9::bigint, $10)"
      " ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), stopping = EXCLUDED.stopping, held = EXCLUDED.held,"
      " scripts = EXCLUDED.scripts",
      co->prefix);
  co->sql_unregister = coord_sql("DELETE FROM %1$srunners WHERE id = $1::bigint", co->prefix);
  co->sql_cleanup = coord_sql("DELETE FROM %1$srunners r WHERE r.heartbeat_at < now() - interval '10 minutes'"
                              " AND NOT EXISTS (SELECT 1 FROM pg_locks m WHERE " COORD_MEMBER_LOCK ")",
                              co->prefix);
  pgc_opts_t lo = {
      .conninfo = cfg->conninfo,
      .name = "lock",
      .on_connect = co->on_connect_lock,
      .on_state = coord__lock_state,
      .connect_timeout_ms = cfg->lease_ms / 2 > 1000 ? cfg->lease_ms / 2 : 1000,
      .backoff_min_ms = 50,
      .backoff_max_ms = 1000,
      .ud = co,
  };
  pgc_opts_t mo = lo;
  mo.name = "main";
  mo.on_connect = co->on_connect_main;
  mo.on_state = coord__main_state;
  mo.on_notify = coord__notify;
  co->lock = pgc_open(loop, &lo);
  co->main = pgc_open(loop, &mo);
  if (co->lock && co->main) return co;
  coord_close(co);
  return NULL;
}

void coord_close(coord_t *co) {
  if (!co) return;
  if (co->lock) pgc_close(co->lock);
  if (co->main) pgc_close(co->main);
  co->lock = co->main = NULL;
  free(co->sql_members);
  free(co->sql_heartbeat);
  free(co->sql_unregister);
  free(co->sql_cleanup);
  free(co);
}

int coord_lock_up(coord_t *co) { return co && co->lock && pgc_up(co->lock); }
int coord_main_up(coord_t *co) { return co && co->main && pgc_up(co->main); }

void coord_reset_lock(coord_t *co, const char *why) {
  if (co && co->lock) pgc_reset(co->lock, why);
}

/* One pending request: the caller's callback and pointer. */
typedef struct {
  void (*fn)(void);
  void *ud;
} coord_req_t;

static coord_req_t *coord__req(void (*fn)(void), void *ud) {
  coord_req_t *r = malloc(sizeof *r);
  if (!r) abort();
  r->fn = fn;
  r->ud = ud;
  return r;
}

static void coord__done(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  coord_req_t *r = ud;
  (void)res;
  (void)sqlstate;
  ((coord_done_cb)r->fn)(r->ud, st == PGC_OK, st == PGC_OK ? NULL : err ? err : "no answer in time");
  free(r);
}

static void coord__lock_self_done(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  coord_req_t *r = ud;
  (void)err;
  (void)sqlstate;
  int got = st == PGC_OK && PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
  ((void (*)(void *, int, int))r->fn)(r->ud, st == PGC_OK, got);
  free(r);
}

void coord_lock_self(coord_t *co, uint64_t timeout_ms, void (*cb)(void *ud, int ok, int got), void *ud) {
  if (!co || !co->lock) return; /* closed: nothing answers any more */
  const char *p[2] = {co->ns_member, co->self};
  pgc_query(co->lock, "SELECT pg_try_advisory_lock($1::int, $2::int)", 2, p, NULL, timeout_ms,
            coord__lock_self_done, coord__req((void (*)(void))cb, ud));
}

void coord_ping(coord_t *co, uint64_t timeout_ms, coord_done_cb cb, void *ud) {
  if (!co || !co->lock) return; /* closed: nothing answers any more */
  pgc_query(co->lock, "SELECT 1", 0, NULL, NULL, timeout_ms, coord__done, coord__req((void (*)(void))cb, ud));
}

static void coord__age_done(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  coord_req_t *r = ud;
  (void)err;
  (void)sqlstate;
  int64_t age = st == PGC_OK && PQntuples(res) == 1 ? strtoll(PQgetvalue(res, 0, 0), NULL, 10) : 0;
  ((void (*)(void *, int, int64_t))r->fn)(r->ud, st == PGC_OK, age);
  free(r);
}

void coord_server_age(coord_t *co, uint64_t timeout_ms, void (*cb)(void *ud, int ok, int64_t age_ms), void *ud) {
  if (!co || !co->lock) return; /* closed: nothing answers any more */
  pgc_query(co->lock, "SELECT (extract(epoch from (now() - pg_postmaster_start_time())) * 1000)::bigint", 0, NULL,
            NULL, timeout_ms, coord__age_done, coord__req((void (*)(void))cb, ud));
}

/* Shards as a PostgreSQL int[] literal. */
static char *coord__array(const uint32_t *s, int n) {
  buf_t b;
  buf_init(&b);
  buf_addc(&b, '{');
  for (int i = 0; i < n; i++) buf_printf(&b, i ? ",%u" : "%u", s[i]);
  buf_addc(&b, '}');
  return buf_steal(&b, NULL);
}

static void coord__try_done(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  coord_req_t *r = ud;
  (void)err;
  (void)sqlstate;
  int n = st == PGC_OK ? PQntuples(res) : 0;
  uint32_t *got = calloc((size_t)n + 1, sizeof *got);
  for (int i = 0; i < n; i++) got[i] = (uint32_t)strtoul(PQgetvalue(res, i, 0), NULL, 10);
  ((void (*)(void *, int, const uint32_t *, int))r->fn)(r->ud, st == PGC_OK, got, n);
  free(got);
  free(r);
}

void coord_try_shards(coord_t *co, const uint32_t *shards, int n, uint64_t timeout_ms,
                      void (*cb)(void *ud, int ok, const uint32_t *got, int ngot), void *ud) {
  if (!co || !co->lock) return; /* closed: nothing answers any more */
  char *arr = coord__array(shards, n);
  const char *p[2] = {co->ns_shard, arr};
  pgc_query(co->lock, "SELECT s FROM unnest($2::int[]) AS s WHERE pg_try_advisory_lock($1::int, s)", 2, p, NULL,
            timeout_ms, coord__try_done, coord__req((void (*)(void))cb, ud));
  free(arr);
}

void coord_unlock_shards(coord_t *co, const uint32_t *shards, int n, uint64_t timeout_ms, coord_done_cb cb, void *ud) {
  if (!co || !co->lock) return; /* closed: nothing answers any more */
  char *arr = coord__array(shards, n);
  const char *p[2] = {co->ns_shard, arr};
  pgc_query(co->lock, "SELECT count(*) FROM unnest($2::int[]) AS s WHERE pg_advisory_unlock($1::int, s)", 2, p,
            NULL, timeout_ms, coord__done, coord__req((void (*)(void))cb, ud));
  free(arr);
}

static void coord__members_done(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  coord_req_t *r = ud;
  (void)err;
  (void)sqlstate;
  int n = st == PGC_OK ? PQntuples(res) : 0;
  coord_member_t *m = calloc((size_t)n + 1, sizeof *m);
  for (int i = 0; i < n; i++) {
    m[i].id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
    m[i].address = strdup(PQgetvalue(res, i, 1));
    m[i].http = strdup(PQgetvalue(res, i, 2));
    m[i].weight = (uint32_t)strtoul(PQgetvalue(res, i, 3), NULL, 10);
    m[i].shards = (uint32_t)strtoul(PQgetvalue(res, i, 4), NULL, 10);
    m[i].stopping = PQgetvalue(res, i, 5)[0] == 't';
    m[i].heartbeat_age_ms = strtoll(PQgetvalue(res, i, 6), NULL, 10);
    m[i].held = (uint32_t)strtoul(PQgetvalue(res, i, 7), NULL, 10);
    m[i].scripts = strdup(PQgetvalue(res, i, 8));
    m[i].proof = PQgetisnull(res, i, 9) ? NULL : strdup(PQgetvalue(res, i, 9));
  }
  ((void (*)(void *, int, coord_member_t *, int))r->fn)(r->ud, st == PGC_OK, m, n);
  free(r);
}

void coord_members(coord_t *co, uint64_t timeout_ms, void (*cb)(void *ud, int ok, coord_member_t *m, int n), void *ud) {
  if (!co || !co->main) return; /* closed: nothing answers any more */
  const char *p[2] = {co->ns_member, co->ns_shard};
  pgc_query(co->main, co->sql_members, 2, p, NULL, timeout_ms, coord__members_done,
            coord__req((void (*)(void))cb, ud));
}

void coord_free_members(coord_member_t *m, int n) {
  for (int i = 0; i < n; i++) {
    free(m[i].address);
    free(m[i].http);
    free(m[i].scripts);
    free(m[i].proof);
  }
  free(m);
}

static void coord__ignore(void *ud, int ok, const char *err) {
  (void)ud;
  if (!ok) log_debug("storage: cluster bookkeeping statement failed: %s", err);
}

void coord_heartbeat(coord_t *co, int stopping, uint32_t held, const char *scripts, uint64_t timeout_ms,
                     coord_done_cb cb, void *ud) {
  if (!co || !co->main) return; /* closed: nothing answers any more */
  char weight[16], shards[16], h[16];
  snprintf(weight, sizeof weight, "%u", co->cfg.weight);
  snprintf(shards, sizeof shards, "%u", co->cfg.shards);
  snprintf(h, sizeof h, "%u", held);
  char lease[24];
  snprintf(lease, sizeof lease, "%llu", (unsigned long long)co->cfg.lease_ms);
  const char *p[10] = {co->self, co->cfg.address, co->cfg.http ? co->cfg.http : "", weight, shards,
                       stopping ? "true" : "false", h, scripts ? scripts : "", lease,
                       co->cfg.proof ? co->cfg.proof : ""};
  pgc_query(co->main, co->sql_heartbeat, 10, p, NULL, timeout_ms, coord__done, coord__req((void (*)(void))cb, ud));
  if (++co->beats % 64 == 0) {
    const char *pc[1] = {co->ns_member};
    pgc_query(co->main, co->sql_cleanup, 1, pc, NULL, timeout_ms, coord__done,
              coord__req((void (*)(void))coord__ignore, NULL));
  }
}

void coord_unregister(coord_t *co, uint64_t timeout_ms, coord_done_cb cb, void *ud) {
  if (!co || !co->main) return; /* closed: nothing answers any more */
  const char *p[1] = {co->self};
  pgc_query(co->main, co->sql_unregister, 1, p, NULL, timeout_ms, coord__done, coord__req((void (*)(void))cb, ud));
}

void coord_notify(coord_t *co, const char *what) {
  if (!co || !co->main) return; /* closed: nothing answers any more */
  const char *p[2] = {co->channel, what};
  pgc_query(co->main, "SELECT pg_notify($1, $2)", 2, p, NULL, 2000, coord__done,
            coord__req((void (*)(void))coord__ignore, NULL));
}
