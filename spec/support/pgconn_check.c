/* pgconn_check.c - runs one scenario of storage/pgconn.c against a real
 * server and prints one line per check ("ok ..." or "FAIL ..."), then
 * "done: N ok, M failed". Exit status 0 when nothing failed. Driven by
 * spec/pgconn_spec.lua; by hand:
 *
 *   build/pgconn_check postgres://postgres@127.0.0.1:5432/postgres basic
 *
 * Scenarios: basic, pipeline, timeout, wedge, notify, down, badinit,
 * restart (waits for the server to go away and come back: the spec restarts
 * it after the first "up" line). PGC_DEBUG=1 logs at debug level. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loop/log.h"
#include "storage/pgconn.h"

static uv_loop_t *loop;
static pgc_t *conn;
static uv_timer_t watchdog, ticker;
static int nok, nfail;
static int in_call;          /* inside a pgconn call: callbacks must not run now */
static int ups, downs;
static const char *scenario;
static int finished;

static void check(int cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int cond, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("%s ", cond ? "ok" : "FAIL");
  vprintf(fmt, ap);
  printf("\n");
  va_end(ap);
  if (cond) nok++;
  else nfail++;
}

static double now_ms(void) { return (double)uv_hrtime() / 1e6; }

static void finish(void) {
  if (finished) return;
  finished = 1;
  uv_timer_stop(&watchdog);
  uv_timer_stop(&ticker);
  uv_close((uv_handle_t *)&watchdog, NULL);
  uv_close((uv_handle_t *)&ticker, NULL);
  pgc_close(conn); /* what is still waiting is answered now, by design */
}

static void watchdog_cb(uv_timer_t *t) {
  check(0, "%s: scenario did not finish in time", scenario);
  finish();
}

/* One query: pgc_query with the "never synchronous" guard. */
static void query(const char *sql, int n, const char *const *v, const int *len, uint64_t tmo, pgc_result_cb cb,
                  void *ud) {
  in_call = 1;
  pgc_query(conn, sql, n, v, len, tmo, cb, ud);
  in_call = 0;
}

static const char *st_name(pgc_status_t st) {
  switch (st) {
  case PGC_OK: return "OK";
  case PGC_ERROR: return "ERROR";
  case PGC_TIMEOUT: return "TIMEOUT";
  default: return "UNAVAILABLE";
  }
}

static void not_synchronous(const char *what) {
  if (in_call) check(0, "%s: callback ran inside a pgconn call", what);
}

/* ---- basic ------------------------------------------------------------ */

typedef struct {
  int seq;
  pgc_status_t want;
  const char *want_value; /* row 0 col 0, or sqlstate for errors */
  const char *what;
} expect_t;

static int basic_next, basic_total;

static void basic_cb(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  expect_t *x = ud;
  not_synchronous(x->what);
  check(x->seq == basic_next, "%s: answered in order (#%d, expected #%d)", x->what, x->seq, basic_next);
  basic_next = x->seq + 1;
  if (x->want == PGC_OK) {
    const char *v = st == PGC_OK && res && PQntuples(res) > 0 ? PQgetvalue(res, 0, 0) : NULL;
    if (st == PGC_OK && x->want_value && x->want_value[0] == '#')
      v = PQcmdTuples(res); /* "#1": rows affected */
    const char *want = x->want_value && x->want_value[0] == '#' ? x->want_value + 1 : x->want_value;
    check(st == PGC_OK && err == NULL && strcmp(sqlstate, "") == 0 && (!want || (v && strcmp(v, want) == 0)),
          "%s: %s %s (%s)", x->what, st_name(st), v ? v : "-", err ? err : "");
  } else {
    check(st == x->want && err && *err && (!x->want_value || strcmp(sqlstate, x->want_value) == 0),
          "%s: %s sqlstate=%s err=%s", x->what, st_name(st), sqlstate, err ? err : "");
  }
  if (basic_next == basic_total) {
    const pgc_stats_t *s = pgc_stats(conn);
    check(s->queries == (uint64_t)basic_total && s->errors == 4 && s->in_flight == 0 && s->timeouts == 0,
          "basic: stats queries=%llu errors=%llu in_flight=%llu", (unsigned long long)s->queries,
          (unsigned long long)s->errors, (unsigned long long)s->in_flight);
    finish();
  }
}

static void basic_start(void) {
  static const char *const add = "SELECT $1::int + $2::int";
  static const char *const nulls = "SELECT ($1::text IS NULL)::text || ',' || $2::text";
  static const char *const echo = "SELECT $1::text";
  static const char *const bad_table = "SELECT x FROM no_such_table_here";
  static const char *const syntax = "SELEC 1";
  static expect_t xs[] = {
      {0, PGC_OK, "5", "parameters 2+3"},
      {0, PGC_OK, "true,x", "a NULL parameter"},
      {0, PGC_OK, "hello", "a parameter with an explicit length"},
      {0, PGC_OK, "a", "the statement before a failing one"},
      {0, PGC_ERROR, "22012", "division by zero"},
      {0, PGC_OK, "c", "the statement after a failing one"},
      {0, PGC_ERROR, "42P01", "a missing table (fails at prepare)"},
      {0, PGC_OK, "42", "the same prepared statement, new parameters"},
      {0, PGC_ERROR, "42601", "a syntax error"},
      {0, PGC_ERROR, "42601", "the same syntax error again (prepared again)"},
      {0, PGC_OK, NULL, "CREATE TEMP TABLE"},
      {0, PGC_OK, "#1", "INSERT with a parameter"},
      {0, PGC_OK, "7", "SELECT from the table"},
      {0, PGC_OK, "é ü ✓", "UTF-8 text round trip"},
  };
  basic_total = (int)(sizeof xs / sizeof xs[0]);
  for (int i = 0; i < basic_total; i++) xs[i].seq = i;
  {
    const char *v[] = {"2", "3"};
    query(add, 2, v, NULL, 5000, basic_cb, &xs[0]);
  }
  {
    const char *v[] = {NULL, "x"};
    query(nulls, 2, v, NULL, 5000, basic_cb, &xs[1]);
  }
  {
    char buf[] = "hello world";
    const char *v[] = {buf};
    int len[] = {5};
    query(echo, 1, v, len, 5000, basic_cb, &xs[2]);
    memset(buf, 'X', sizeof buf - 1); /* pgconn copied it */
  }
  query("SELECT 'a'", 0, NULL, NULL, 5000, basic_cb, &xs[3]);
  query("SELECT 1/0", 0, NULL, NULL, 5000, basic_cb, &xs[4]);
  query("SELECT 'c'", 0, NULL, NULL, 5000, basic_cb, &xs[5]);
  query(bad_table, 0, NULL, NULL, 5000, basic_cb, &xs[6]);
  {
    const char *v[] = {"40", "2"};
    query(add, 2, v, NULL, 5000, basic_cb, &xs[7]);
  }
  query(syntax, 0, NULL, NULL, 5000, basic_cb, &xs[8]);
  query(syntax, 0, NULL, NULL, 5000, basic_cb, &xs[9]);
  query("CREATE TEMP TABLE pgc_t (x int)", 0, NULL, NULL, 5000, basic_cb, &xs[10]);
  {
    const char *v[] = {"7"};
    query("INSERT INTO pgc_t VALUES ($1)", 1, v, NULL, 5000, basic_cb, &xs[11]);
  }
  query("SELECT x FROM pgc_t", 0, NULL, NULL, 5000, basic_cb, &xs[12]);
  {
    const char *v[] = {"é ü ✓"};
    query(echo, 1, v, NULL, 5000, basic_cb, &xs[13]);
  }
}

/* ---- pipeline --------------------------------------------------------- */

#define PIPE_N 10000
static int pipe_next, pipe_bad;
static double pipe_t0;

static void pipe_cb(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  int i = (int)(intptr_t)ud;
  not_synchronous("pipeline");
  if (i != pipe_next || st != PGC_OK || atoi(PQgetvalue(res, 0, 0)) != i * 2) {
    if (pipe_bad++ < 5) check(0, "pipeline: #%d (expected #%d): %s %s", i, pipe_next, st_name(st), err ? err : "");
  }
  pipe_next = i + 1;
  if (pipe_next == PIPE_N) {
    double ms = now_ms() - pipe_t0;
    check(pipe_bad == 0, "pipeline: %d queries answered in order, %.0f queries/s (%.0f ms)", PIPE_N,
          PIPE_N / (ms / 1000.0), ms);
    finish();
  }
}

static void pipeline_start(void) {
  pipe_t0 = now_ms();
  for (int i = 0; i < PIPE_N; i++) {
    char a[16];
    snprintf(a, sizeof a, "%d", i);
    const char *v[] = {a, a};
    query("SELECT $1::int + $2::int", 2, v, NULL, 30000, pipe_cb, (void *)(intptr_t)i);
  }
  check(pgc_stats(conn)->in_flight == PIPE_N, "pipeline: %d queued at once", PIPE_N);
}

/* ---- timeout ---------------------------------------------------------- */

static double t_sent;

static void timeout_after_cb(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  not_synchronous("timeout");
  int which = (int)(intptr_t)ud;
  const char *v = st == PGC_OK ? PQgetvalue(res, 0, 0) : "-";
  check(st == PGC_OK && strcmp(v, which == 1 ? "42" : "43") == 0, "timeout: query %s after the timed out one: %s %s",
        which == 1 ? "queued right" : "sent later", st_name(st), err ? err : v);
  if (which == 1) query("SELECT 43", 0, NULL, NULL, 5000, timeout_after_cb, (void *)(intptr_t)2);
  else {
    const pgc_stats_t *s = pgc_stats(conn);
    check(s->timeouts == 1 && s->reconnects == 0 && downs == 0, "timeout: one timeout, no reconnect (timeouts=%llu reconnects=%llu)",
          (unsigned long long)s->timeouts, (unsigned long long)s->reconnects);
    finish();
  }
}

static void timeout_cb(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  not_synchronous("timeout");
  double ms = now_ms() - t_sent;
  check(st == PGC_TIMEOUT && res == NULL && err != NULL && ms >= 150 && ms < 450,
        "timeout: pg_sleep(2) with a 200 ms deadline: %s after %.0f ms (%s)", st_name(st), ms, err ? err : "");
}

static void timeout_start(void) {
  t_sent = now_ms();
  query("SELECT pg_sleep(2)", 0, NULL, NULL, 200, timeout_cb, NULL);
  query("SELECT 42", 0, NULL, NULL, 5000, timeout_after_cb, (void *)(intptr_t)1);
}

/* ---- wedge: a query that never answers gets the connection reset ------ */

static double w_t0;
static int w_phase;

static void wedge_after_cb(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  not_synchronous("wedge");
  double ms = now_ms() - w_t0;
  check(st == PGC_UNAVAILABLE && ms > 4500 && ms < 8000,
        "wedge: the query behind it fails when the connection is reset: %s after %.0f ms (%s)", st_name(st), ms,
        err ? err : "");
}

static void wedge_cb(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  check(st == PGC_TIMEOUT, "wedge: pg_sleep(60) with a 300 ms deadline: %s", st_name(st));
}

static void wedge_final_cb(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  check(st == PGC_OK, "wedge: a query after the reset: %s %s", st_name(st), err ? err : "");
  finish();
}

/* ---- notify ------------------------------------------------------------ */

static int n_got;

static void notify_q_cb(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  check(st == PGC_OK, "notify: %s: %s %s", (const char *)ud, st_name(st), err ? err : "");
}

static void on_notify(void *ud, const char *channel, const char *payload) {
  not_synchronous("on_notify");
  if (strcmp(scenario, "notify") != 0) return;
  n_got++;
  if (n_got == 1)
    check(strcmp(channel, "chan") == 0 && strcmp(payload, "hello there") == 0,
          "notify: on_notify(%s, %s) from pg_notify with a parameter", channel, payload);
  else {
    check(strcmp(channel, "chan") == 0 && strcmp(payload, "direct") == 0, "notify: on_notify(%s, %s) from NOTIFY",
          channel, payload);
    finish();
  }
}

static void notify_start(void) {
  const char *v[] = {"hello there"};
  query("SELECT pg_notify('chan', $1)", 1, v, NULL, 5000, notify_q_cb, "pg_notify");
  query("NOTIFY chan, 'direct'", 0, NULL, NULL, 5000, notify_q_cb, "NOTIFY");
}

/* ---- down: nothing listens -------------------------------------------- */

static int d_answers, d_unavail;
static double d_t0;

static void down_cb(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  not_synchronous("down");
  double ms = now_ms() - *(double *)ud;
  free(ud);
  if (finished) return;
  d_answers++;
  if (st == PGC_UNAVAILABLE && ms < 500) d_unavail++;
  else check(0, "down: %s after %.0f ms (%s)", st_name(st), ms, err ? err : "");
  if (d_answers == 1) check(err && *err, "down: the failure says why: %s", err ? err : "(none)");
}

static void down_tick(uv_timer_t *t) {
  double *sent = malloc(sizeof *sent);
  *sent = now_ms();
  query("SELECT 1", 0, NULL, NULL, 10000, down_cb, sent);
  if (now_ms() - d_t0 < 1600) return;
  const pgc_stats_t *s = pgc_stats(conn);
  /* backoff 50, 100, 200, 400, 400... ms: about 6 attempts in 1.6 s */
  check(s->reconnects >= 3 && s->reconnects <= 10, "down: reconnect attempts back off (%llu in 1.6 s)",
        (unsigned long long)s->reconnects);
  check(d_answers >= 10 && d_unavail == d_answers && !pgc_up(conn),
        "down: every query failed fast with PGC_UNAVAILABLE (%d of %d)", d_unavail, d_answers);
  check(ups == 0 && downs == 0, "down: no on_state calls while never up");
  finish();
}

/* ---- badinit: an on_connect statement fails ---------------------------- */

static void badinit_cb(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  check(st == PGC_UNAVAILABLE, "badinit: a query waiting for the connection: %s (%s)", st_name(st), err ? err : "");
}

static void badinit_tick(uv_timer_t *t) {
  const pgc_stats_t *s = pgc_stats(conn);
  check(!pgc_up(conn) && ups == 0 && s->reconnects >= 2, "badinit: never up, retried %llu times",
        (unsigned long long)s->reconnects);
  finish();
}

/* ---- restart: the spec restarts the server ----------------------------- */

static int r_phase; /* 0 up, 1 saw down, 2 saw up again */
static int r_ok_before;

static void restart_cb(void *ud, pgc_status_t st, PGresult *res, const char *err, const char *sqlstate) {
  not_synchronous("restart");
  if (finished) return;
  if (st == PGC_OK && r_phase == 0) r_ok_before++;
  if (st == PGC_OK && r_phase == 2) {
    check(r_ok_before > 0, "restart: queries succeeded before the restart (%d)", r_ok_before);
    check(1, "query after reconnect");
    finish();
  }
}

/* A burst per tick keeps queries in flight when the server goes away. */
static void restart_tick(uv_timer_t *t) {
  for (int i = 0; i < 50; i++) query("SELECT 1", 0, NULL, NULL, 1000, restart_cb, NULL);
}

/* ---- driver ------------------------------------------------------------ */

static void on_state(void *ud, int up, const char *why) {
  not_synchronous("on_state");
  if (up) ups++;
  else downs++;
  if (strcmp(scenario, "restart") == 0) {
    printf("%s%s%s\n", up ? "up" : "down", why ? " " : "", why ? why : "");
    if (!up && r_phase == 0) r_phase = 1;
    if (up && r_phase == 1) r_phase = 2;
    if (up && ups == 1) uv_timer_start(&ticker, restart_tick, 0, 20);
    return;
  }
  if (strcmp(scenario, "wedge") == 0) {
    if (!up) {
      check(strstr(why, "wedged") != NULL, "wedge: on_state(0): %s", why);
      w_phase = 1;
    } else if (w_phase == 1) query("SELECT 1", 0, NULL, NULL, 5000, wedge_final_cb, NULL);
    else {
      w_t0 = now_ms();
      query("SELECT pg_sleep(60)", 0, NULL, NULL, 300, wedge_cb, NULL);
      query("SELECT 2", 0, NULL, NULL, 20000, wedge_after_cb, NULL);
    }
    return;
  }
  if (!up) {
    check(0, "%s: connection lost: %s", scenario, why);
    return;
  }
  if (ups > 1) return;
  if (strcmp(scenario, "basic") == 0) basic_start();
  else if (strcmp(scenario, "pipeline") == 0) pipeline_start();
  else if (strcmp(scenario, "timeout") == 0) timeout_start();
  else if (strcmp(scenario, "notify") == 0) notify_start();
  else if (strcmp(scenario, "badinit") == 0) check(0, "badinit: came up despite a failing on_connect statement");
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s CONNINFO basic|pipeline|timeout|wedge|notify|down|badinit|restart\n", argv[0]);
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (getenv("PGC_DEBUG")) log_set_level(LOG_DEBUG);
  scenario = argv[2];
  loop = uv_default_loop();
  uv_timer_init(loop, &watchdog);
  uv_timer_init(loop, &ticker);
  int limit_s = strcmp(scenario, "restart") == 0 ? 90 : 30;
  uv_timer_start(&watchdog, watchdog_cb, (uint64_t)limit_s * 1000, 0);

  static const char *const listen[] = {"LISTEN chan", NULL};
  static const char *const badinit[] = {"SET application_name = 'pgconn_check'", "SELECT * FROM no_such_table", NULL};
  pgc_opts_t o = {
      .conninfo = argv[1],
      .name = scenario,
      .on_state = on_state,
      .on_notify = on_notify,
      .connect_timeout_ms = 5000,
      .backoff_min_ms = 50,
      .backoff_max_ms = 400,
  };
  if (strcmp(scenario, "notify") == 0) o.on_connect = listen;
  if (strcmp(scenario, "badinit") == 0) o.on_connect = badinit;
  conn = pgc_open(loop, &o);
  if (!conn) {
    check(0, "pgc_open failed");
    return 1;
  }
  if (strcmp(scenario, "down") == 0) {
    d_t0 = now_ms();
    uv_timer_start(&ticker, down_tick, 0, 100);
  } else if (strcmp(scenario, "badinit") == 0) {
    query("SELECT 1", 0, NULL, NULL, 5000, badinit_cb, NULL);
    uv_timer_start(&ticker, badinit_tick, 1000, 0);
  } else {
    static const char *const others[] = {"basic", "pipeline", "timeout", "wedge", "notify", "restart", NULL};
    int known = 0;
    for (int i = 0; others[i]; i++) known |= strcmp(scenario, others[i]) == 0;
    if (!known) {
      fprintf(stderr, "unknown scenario %s\n", scenario);
      return 2;
    }
  }
  uv_run(loop, UV_RUN_DEFAULT);
  check(uv_loop_close(loop) == 0, "%s: every handle closed after pgc_close", scenario);
  printf("done: %d ok, %d failed\n", nok, nfail);
  return nfail == 0 && nok > 0 ? 0 : 1;
}
