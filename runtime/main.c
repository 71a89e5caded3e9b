/* main.c - the luster command: run, check, call, status. */
#include <execinfo.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "admin/gateway.h"
#include "admin/wiring.h"
#include "cli/client.h"
#include "cli/config.h"
#include "loop/log.h"
#include "cluster/cluster.h"
#include "cluster/durable.h"
#include "cluster/router.h"
#include "core/parse.h"
#include "entity/durable_state.h"
#include "entity/entity.h"
#include "loop/sched.h"
#include "host/host.h"
#include "host/watch.h"
#include "net/http.h"
#include "storage/coord.h"
#include "storage/estate_mem.h"
#include "storage/pgstore.h"
#include "storage/sqlite.h"
#include "storage/storage.h"

/* A runner that crashes says so, with the stack, on stderr (its log), before
 * the signal's default action ends it. Sanitizer builds keep their own
 * reports. */
#if !defined(__SANITIZE_ADDRESS__)
/* The runner's scheduler (one runtime per process until runtime_new). */
static sched_t main_sched;
static mem_store_t *main_mem; /* the embedded store of `luster run` */
static void main__fatal(int sig) {
  char head[96];
  int n = snprintf(head, sizeof head, "luster: fatal signal %d (%s); stack:\n", sig, strsignal(sig));
  if (n > 0 && write(STDERR_FILENO, head, (size_t)n) < 0) n = 0;
  void *frames[64];
  int depth = backtrace(frames, 64);
  backtrace_symbols_fd(frames, depth, STDERR_FILENO);
  signal(sig, SIG_DFL);
  raise(sig);
}
#endif

static void main__fatal_handlers(void) {
#if !defined(__SANITIZE_ADDRESS__)
  void *warm[1];
  backtrace(warm, 1); /* loads what backtrace needs now, not inside a crash */
  static const int sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = main__fatal;
    sa.sa_flags = SA_RESETHAND | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(sigs[i], &sa, NULL);
  }
#endif
}

static http_server_t *main_http;
static gateway_t *main_gw;
static uv_signal_t main_sigterm, main_sigint;
static uv_timer_t main_stop_timer;
static uint64_t main_stop_deadline;
static int main_stopping;

static void main__stop_check(uv_timer_t *t) {
  uint64_t busy = 0;
  for (etype_t *ty = host_types(); ty; ty = ty->next) busy += ty->running + ty->queued;
  busy += (uint64_t)durable_busy(); /* stores and replies not committed yet */
  int handed_over = !cluster_on || cluster_left();
  if ((busy == 0 && handed_over && http_stats(main_http)->connections_open == 0) || uv_now(t->loop) >= main_stop_deadline) {
    if (!handed_over) log_warn("shutdown: shards were still being handed over after the shutdown timeout");
    if (busy)
      log_warn("shutdown: %llu messages still running or queued after the shutdown timeout", (unsigned long long)busy);
    uv_stop(t->loop);
  }
}

static void main__signal(uv_signal_t *s, int signum) {
  if (main_stopping) {
    log_warn("second %s: exiting now", signum == SIGINT ? "SIGINT" : "SIGTERM");
    exit(1);
  }
  main_stopping = 1;
  const config_t *cfg = s->data;
  log_info("%s: finishing in-flight messages (at most %llu ms), then exiting",
           signum == SIGINT ? "SIGINT" : "SIGTERM", (unsigned long long)cfg->shutdown_timeout_ms);
  if (main_http) http_server_stop(main_http);
  watch_stop();
  if (cluster_on) cluster_leave();
  main_stop_deadline = uv_now(s->loop) + cfg->shutdown_timeout_ms;
  uv_timer_start(&main_stop_timer, main__stop_check, 0, 20);
}

static void main__close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void main__host_config(const config_t *cfg, host_config_t *hc) {
  memset(hc, 0, sizeof *hc);
  hc->dir = cfg->dir;
  hc->memory_limit = cfg->memory_limit;
  hc->instruction_budget = cfg->instruction_budget;
  hc->call_timeout_ms = cfg->call_timeout_ms;
  hc->max_idle_ms = cfg->max_idle_ms;
  hc->runner_name = cfg->advertise ? cfg->advertise : cfg->listen ? cfg->listen : "local";
  hc->shards = (uint32_t)cfg->shards;
  hc->cron_catch_up_ms = cfg->cron_catch_up_ms;
  wiring_host(hc);
}

/* On memory storage, what the scripts ask to keep lasts only as long as
 * this process: said once at start, one reason per kind of thing kept. */
static void main__memory_warning(void) {
  const char *reasons[4];
  int n = 0;
  int persisted = 0;
  for (etype_t *t = host_types(); t; t = t->next)
    for (int i = 0; t->kind == DEF_ENTITY && i < t->nrpcs; i++) persisted |= t->rpcs[i].persisted;
  int durable = 0;
  for (etype_t *t = host_types(); t; t = t->next) durable |= t->kind == DEF_ENTITY && t->durable;
  if (persisted) reasons[n++] = "persisted RPCs (their stored messages and replies)";
  if (durable) reasons[n++] = "durable entities (their saved state)";
  if (n == 0) return;
  char what[512];
  size_t len = 0;
  what[0] = '\0';
  for (int i = 0; i < n; i++)
    len += (size_t)snprintf(what + len, sizeof what - len, "%s%s", i == 0 ? "" : i == n - 1 ? " and " : ", ",
                            reasons[i]);
  log_warn("storage is memory: %s last only as long as this process; to keep them on disk run with "
           "--storage sqlite:PATH (one runner) or --storage postgres://... (a cluster)", what);
}

/* Opens sqlite:PATH for persisted messages and durable state (*out); 0, or
 * -1 after saying why. */
static int main__open_sqlite(uv_loop_t *loop, const config_t *cfg, uint32_t shards, sqls_t **out) {
  char err[1024];
  sqls_t *s = sqls_open(loop, cfg->storage + 7, strcmp(cfg->sqlite_sync, "full") == 0, err, sizeof err);
  if (!s) {
    fprintf(stderr, "luster run: %s\n", err);
    return -1;
  }
  *out = s;
  durable_init(&main_sched, sqls_ops(s), shards, cfg->retention_ms);
  durable_acquired(); /* one runner serves every shard: deliver what an earlier run left pending */
  log_info("storage: SQLite file %s (synchronous %s)", cfg->storage + 7, cfg->sqlite_sync);
  return 0;
}

/* The HTTP gateway on --http (unless "none"); bound gets the address as
 * bound. Returns 0, or 1 after printing why it cannot listen. */
static int main__start_http(uv_loop_t *loop, const config_t *cfg, gateway_t *gw, char *bound, size_t bound_cap) {
  if (strcmp(cfg->http, "none") != 0) {
    char host[256];
    int port;
    parse_hostport(cfg->http, host, sizeof host, &port); /* checked by config_check_run */
    http_limits_t lim = {
        .max_body = cfg->max_body,
        .max_url = 8192,
        .max_header_bytes = 16384,
        .max_headers = 100,
        .request_timeout_ms = cfg->request_timeout_ms,
        .idle_timeout_ms = cfg->idle_timeout_ms,
        .max_pipelined = 128,
        .max_connections = 10000,
    };
    int rc = http_server_start(&main_http, loop, host, port, &lim, gateway_on_request, gw, bound, bound_cap);
    if (rc != 0) {
      fprintf(stderr, "luster run: cannot listen for HTTP on %s: %s\n", cfg->http, uv_strerror(rc));
      return 1;
    }
    gateway_set_http(gw, main_http);
  }
  return 0;
}

/* Joins the cluster on PostgreSQL: the router, the membership and leases,
 * and the store of persisted messages. Returns 0, or 1 after printing why. */
static int main__start_cluster(uv_loop_t *loop, const config_t *cfg, uint32_t shards, const char *bound) {
  const char *secret = getenv("LUSTER_CLUSTER_SECRET");
  cluster_config_t cc = {
      .conninfo = cfg->storage,
      .prefix = cfg->table_prefix,
      .listen = cfg->listen,
      .advertise = cfg->advertise,
      .http = bound,
      .secret = secret && *secret ? secret : NULL,
      .shards = shards,
      .weight = (uint32_t)cfg->weight,
      .lease_ms = cfg->lease_ms,
      .handoff_timeout_ms = cfg->shutdown_timeout_ms * 6 / 10,
      .max_frame = (cfg->max_body > (16u << 20) ? cfg->max_body : (16u << 20)) + (1u << 20),
  };
  router_init(shards, cc.max_frame);
  char err[1024];
  if (cluster_start(&main_sched, loop, &cc, err, sizeof err) != 0) {
    fprintf(stderr, "luster run: %s\n", err);
    return 1;
  }
  if (pgs_open(&main_sched, loop, cfg->storage, cfg->table_prefix) != 0 || durable_init(&main_sched, pgs_ops(), shards, cfg->retention_ms)) {
    fprintf(stderr, "luster run: cannot open the PostgreSQL connection for persisted messages\n");
    return 1;
  }
  return 0;
}

/* SIGTERM and SIGINT stop the runner gracefully (main__signal); the loop
 * does not wait for them. */
static void main__signals(uv_loop_t *loop, config_t *cfg) {
  uv_signal_init(loop, &main_sigterm);
  uv_signal_init(loop, &main_sigint);
  main_sigterm.data = main_sigint.data = cfg;
  uv_signal_start(&main_sigterm, main__signal, SIGTERM);
  uv_signal_start(&main_sigint, main__signal, SIGINT);
  uv_timer_init(loop, &main_stop_timer);
  uv_unref((uv_handle_t *)&main_sigterm);
  uv_unref((uv_handle_t *)&main_sigint);
}

/* After the loop ends: mailboxes first (their callers learn the runner is
 * leaving), then the running tasks, then whatever that queued, then the now
 * idle instances, then each module's own resources. */
static void main__shutdown(uv_loop_t *loop) {
  watch_stop();
  em_stop_all();
  host_cancel_tasks();
  sched_drain(&main_sched);
  em_stop_all();
  cluster_close(); /* transport and PostgreSQL sessions: their waiting callers learn now */
  sched_drain(&main_sched);
  router_shutdown();
  durable_close(); /* after every message is gone: replies not yet stored leave their messages pending */
  storage_free(main_mem); /* callers still waiting for stored messages: unavailable */
  sched_drain(&main_sched);
  estate_mem_close();
  if (main_http) http_server_free(main_http);
  gateway_free(main_gw);
  host_shutdown();
  em_close();
  sched_close(&main_sched);
  uv_walk(loop, main__close_walk, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_loop_close(loop);
  log_info("stopped");
}

static int cmd_run(config_t *cfg) {
  if (cfg->nargs != 1) {
    fprintf(stderr, "luster run: expected one script directory, e.g. 'luster run examples/counter'\n");
    return 2;
  }
  cfg->dir = cfg->args[0];
  config_storage_t kind;
  if (config_check_run(cfg, &kind) != 0) return 2;
  int clustered = kind == CONFIG_POSTGRES, sqlite = kind == CONFIG_SQLITE;
  host_config_t hc;
  main__host_config(cfg, &hc);
  uv_loop_t *loop = uv_default_loop();
  signal(SIGPIPE, SIG_IGN);
  main__fatal_handlers();
  sched_init(&main_sched, loop);
  hc.sched = &main_sched;
  em_init(&main_sched, hc.shards);
  main_mem = storage_new(&main_sched, cfg->retention_ms);
  if (!main_mem) return 1;
  router_use(&main_sched, main_mem);
  sqls_t *sq = NULL;
  if (sqlite && main__open_sqlite(loop, cfg, hc.shards, &sq) != 0) return 1;
  int failed = host_load_dir(&hc);
  if (failed < 0) {
    fprintf(stderr, "luster run: cannot read script directory '%s': %s\n", cfg->dir, strerror(-failed));
    return 1;
  }
  int ntypes = 0;
  for (etype_t *t = host_types(); t; t = t->next) ntypes++;
  /* Lives as long as this function, which runs the loop to its end. */
  estate_ops_t sq_state;
  if (sq) sq_state = sqls_estate_ops(sq);
  dstate_set_ops(clustered ? pgs_estate_ops() : sq ? &sq_state : estate_mem_ops(&main_sched));
  if (!host_scripts()) log_warn("no *.lua scripts in %s: nothing to serve yet", cfg->dir);
  if (!clustered && !sqlite) main__memory_warning();

  char bound[128] = "none";
  gateway_info_t gi = {
      .runner = hc.runner_name,
      .http_addr = bound,
      .storage = cfg->storage,
      .dir = cfg->dir,
      .shards = hc.shards,
      .started_ms = sched_wall_ms(&main_sched),
      .call_timeout_ms = cfg->call_timeout_ms,
      .admin = cfg->admin,
      .sched = &main_sched,
  };
  main_gw = gateway_new(&gi);
  if (!main_gw || main__start_http(loop, cfg, main_gw, bound, sizeof bound) != 0) return 1;
  if (clustered && main__start_cluster(loop, cfg, hc.shards, bound) != 0) return 1;
  host_start_background();
  if (!cfg->no_reload) watch_start(loop);

  main__signals(loop, cfg);
  log_info("luster runner serving %d definition%s from %s (%d script%s failed to load; %s); http %s", ntypes,
           ntypes == 1 ? "" : "s", cfg->dir, failed, failed == 1 ? "" : "s",
           cfg->no_reload ? "not watching for changes" : "reloading changed scripts", bound);
  if (strcmp(bound, "none") != 0) log_info("http gateway listening on http://%s", bound);

  uv_run(loop, UV_RUN_DEFAULT);

  main__shutdown(loop);
  return 0;
}

static int cmd_check(config_t *cfg) {
  if (cfg->nargs != 1) {
    fprintf(stderr, "luster check: expected one script directory\n");
    return 2;
  }
  cfg->dir = cfg->args[0];
  if (config_check_common(cfg) != 0) return 2;
  host_config_t hc;
  main__host_config(cfg, &hc);
  log_set_level(LOG_OFF); /* every problem is printed below, once */
  sched_init(&main_sched, uv_default_loop());
  hc.sched = &main_sched;
  em_init(&main_sched, hc.shards);
  int failed = host_load_dir(&hc);
  if (failed < 0) {
    fprintf(stderr, "luster check: cannot read script directory '%s': %s\n", cfg->dir, strerror(-failed));
    return 1;
  }
  int n = 0;
  for (script_t *s = host_scripts(); s; s = s->next) {
    n++;
    if (s->error) {
      printf("FAIL %s\n     %s\n", s->file, s->error);
      continue;
    }
    printf("ok   %s", s->file);
    const char *sep = "  (";
    for (etype_t *t = s->types; t; t = t->snext) {
      printf("%s%s %s", sep, t->kind == DEF_ENTITY ? "entity" : t->kind == DEF_SINGLETON ? "singleton" : "cron",
             t->name);
      sep = ", ";
    }
    printf("%s\n", s->types ? ")" : "");
  }
  printf("%d script%s, %d failed\n", n, n == 1 ? "" : "s", failed);
  host_shutdown();
  em_close();
  sched_close(&main_sched);
  uv_run(uv_default_loop(), UV_RUN_DEFAULT);
  return failed ? 1 : (n == 0 ? 1 : 0);
}

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    config_usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const char *cmd = argv[1];
  config_t cfg;
  if (config_parse(&cfg, cmd, argc, argv) != 0) return 2;
  log_level_t lvl;
  if (log_parse_level(cfg.log_level, &lvl) != 0) {
    fprintf(stderr, "luster: --log-level must be debug, info, warn or error, got '%s'\n", cfg.log_level);
    return 2;
  }
  log_set_level(lvl);
  if (strcmp(cmd, "run") == 0) return cmd_run(&cfg);
  if (strcmp(cmd, "check") == 0) return cmd_check(&cfg);
  if (strcmp(cmd, "call") == 0) return client_call(&cfg);
  if (strcmp(cmd, "status") == 0) return client_status(&cfg);
  if (strcmp(cmd, "where") == 0) return client_where(&cfg);
  fprintf(stderr, "luster: unknown command '%s'\n", cmd);
  config_usage(stderr);
  return 2;
}
