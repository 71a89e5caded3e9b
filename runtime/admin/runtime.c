/* runtime.c - one runner as a value (runtime.h): builds its modules in
 * order on a loop of its own, runs it, stops it gracefully on request from
 * any thread (a uv_async), and takes it down in dependency order. */
#include "admin/runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin/gateway.h"
#include "admin/wiring.h"
#include "cluster/cluster.h"
#include "cluster/durable.h"
#include "cluster/router.h"
#include "core/parse.h"
#include "entity/durable_state.h"
#include "entity/entity.h"
#include "host/host.h"
#include "host/watch.h"
#include "loop/log.h"
#include "loop/sched.h"
#include "net/http.h"
#include "net/otlp_export.h"
#include "storage/estate_mem.h"
#include "storage/pgstore.h"
#include "storage/sqlite.h"
#include "storage/storage.h"

struct runtime_s {
  config_t cfg; /* a copy; its strings are the caller's */
  host_config_t hc;
  uv_loop_t loop;
  sched_t sched;
  em_t *em;         /* the entity manager */
  host_t *host;     /* the scripts, their Lua states and tasks */
  estate_mem_t *estate; /* durable state on memory storage */
  mem_store_t *mem; /* the embedded message store */
  router_t *router;
  durable_t *durable;
  cluster_t *cluster; /* off unless --storage postgres://... */
  wiring_t wiring;    /* the placement table's context */
  pgstore_t *pgs;     /* a cluster's persisted messages */
  estate_ops_t pg_state; /* its durable entity state (filled once it is open) */
  sqls_t *sq;       /* sqlite:PATH, or NULL */
  estate_ops_t sq_state; /* sq's durable state operations (dstate keeps a pointer) */
  gateway_t *gw;
  http_server_t *http; /* NULL with --http none */
  char bound[128];     /* the HTTP address as bound, or "none" */
  int http_port;       /* as bound; 0 without HTTP */
  int ntypes, failed;  /* definitions served, scripts that failed to load */
  /* Stopping: runtime_stop sends stop_async (any thread); stop_lock keeps
   * it from sending once the handle is closed. */
  uv_async_t stop_async;
  uv_mutex_t stop_lock;
  int stop_open;
  uv_timer_t stop_timer;
  uint64_t stop_deadline;
  int stopping;
  int down; /* runtime__down done */
  otlp_exporter_t *otlp; /* --otlp-endpoint, or NULL */
  int otlp_closed;
};

void runtime_host_config(const config_t *cfg, sched_t *s, wiring_t *w, host_config_t *hc) {
  memset(hc, 0, sizeof *hc);
  hc->dir = cfg->dir;
  hc->memory_limit = cfg->memory_limit;
  hc->instruction_budget = cfg->instruction_budget;
  hc->call_timeout_ms = cfg->call_timeout_ms;
  hc->max_idle_ms = cfg->max_idle_ms;
  hc->runner_name = cfg->advertise ? cfg->advertise : cfg->listen ? cfg->listen : "local";
  hc->shards = (uint32_t)cfg->shards;
  hc->cron_catch_up_ms = cfg->cron_catch_up_ms;
  hc->sched = s;
  wiring_host(hc, w);
}

/* On memory storage, what the scripts ask to keep lasts only as long as
 * this process: said once at start, one reason per kind of thing kept. */
static void runtime__memory_warning(host_t *h) {
  const char *reasons[4];
  int n = 0;
  int persisted = 0;
  for (etype_t *t = host_types(h); t; t = t->next)
    for (int i = 0; t->kind == DEF_ENTITY && i < t->nrpcs; i++) persisted |= t->rpcs[i].persisted;
  int durable = 0;
  for (etype_t *t = host_types(h); t; t = t->next) durable |= t->kind == DEF_ENTITY && t->durable;
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

/* Opens sqlite:PATH for persisted messages and durable state; 0, or -1
 * with the reason in err. */
static int runtime__open_sqlite(runtime_t *rt, char *err, size_t errlen) {
  const config_t *cfg = &rt->cfg;
  rt->sq = sqls_open(&rt->loop, cfg->storage + 7, strcmp(cfg->sqlite_sync, "full") == 0, err, errlen);
  if (!rt->sq) return -1;
  durable_init(rt->durable, sqls_ops(rt->sq), rt->hc.shards, cfg->retention_ms);
  durable_acquired(rt->durable); /* one runner serves every shard: deliver what an earlier run left pending */
  log_info("storage: SQLite file %s (synchronous %s)", cfg->storage + 7, cfg->sqlite_sync);
  return 0;
}

/* The HTTP gateway on --http (unless "none"), answering through rt->gw.
 * 0, or -1 with the reason in err. */
static int runtime__start_http(runtime_t *rt, char *err, size_t errlen) {
  const config_t *cfg = &rt->cfg;
  if (strcmp(cfg->http, "none") == 0) return 0;
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
  int rc = http_server_start(&rt->http, &rt->loop, host, port, &lim, gateway_on_request, rt->gw, rt->bound,
                             sizeof rt->bound);
  if (rc != 0) {
    rt->http = NULL;
    snprintf(err, errlen, "cannot listen for HTTP on %s: %s", cfg->http, uv_strerror(rc));
    return -1;
  }
  gateway_set_http(rt->gw, rt->http);
  rt->http_port = http_server_port(rt->http);
  return 0;
}

/* Joins the cluster on PostgreSQL: the router, the membership and leases,
 * and the store of persisted messages. 0, or -1 with the reason in err. */
static int runtime__start_cluster(runtime_t *rt, char *err, size_t errlen) {
  const config_t *cfg = &rt->cfg;
  const char *secret = getenv("LUSTER_CLUSTER_SECRET");
  cluster_config_t cc = {
      .conninfo = cfg->storage,
      .prefix = cfg->table_prefix,
      .listen = cfg->listen,
      .advertise = cfg->advertise,
      .http = rt->bound,
      .secret = secret && *secret ? secret : NULL,
      .shards = rt->hc.shards,
      .weight = (uint32_t)cfg->weight,
      .lease_ms = cfg->lease_ms,
      .handoff_timeout_ms = cfg->shutdown_timeout_ms * 6 / 10,
      .em = rt->em,
      .host = rt->host,
      .max_frame = (cfg->max_body > (16u << 20) ? cfg->max_body : (16u << 20)) + (1u << 20),
  };
  router_init(rt->router, rt->hc.shards, cc.max_frame);
  if (cluster_start(rt->cluster, &rt->loop, &cc, err, errlen) != 0) return -1;
  rt->pgs = pgs_open(&rt->sched, &rt->loop, cfg->storage, cfg->table_prefix);
  if (rt->pgs) rt->pg_state = pgs_estate_ops(rt->pgs);
  if (!rt->pgs || durable_init(rt->durable, pgs_ops(rt->pgs), rt->hc.shards, cfg->retention_ms)) {
    snprintf(err, errlen, "cannot open the PostgreSQL connection for persisted messages");
    return -1;
  }
  return 0;
}

/* Every 20 ms once stopping: done when nothing runs or waits, the shards
 * are handed over and the HTTP connections closed, or at the deadline. */
static void runtime__stop_check(uv_timer_t *t) {
  runtime_t *rt = t->data;
  uint64_t busy = 0;
  for (etype_t *ty = host_types(rt->host); ty; ty = ty->next) busy += ty->running + ty->queued;
  busy += (uint64_t)durable_busy(rt->durable); /* stores and replies not committed yet */
  int handed_over = !cluster_on(rt->cluster) || cluster_left(rt->cluster);
  if ((busy == 0 && handed_over && http_stats(rt->http)->connections_open == 0) ||
      uv_now(t->loop) >= rt->stop_deadline) {
    if (!handed_over) log_warn("shutdown: shards were still being handed over after the shutdown timeout");
    if (busy)
      log_warn("shutdown: %llu messages still running or queued after the shutdown timeout", (unsigned long long)busy);
    uv_stop(t->loop);
  }
}

/* On the loop's thread: the graceful stop runtime_stop asked for. */
static void runtime__stop_cb(uv_async_t *a) {
  runtime_t *rt = a->data;
  if (rt->stopping) return;
  rt->stopping = 1;
  if (rt->http) http_server_stop(rt->http);
  watch_stop(rt->host);
  if (cluster_on(rt->cluster)) cluster_leave(rt->cluster);
  rt->stop_deadline = uv_now(&rt->loop) + rt->cfg.shutdown_timeout_ms;
  uv_timer_start(&rt->stop_timer, runtime__stop_check, 0, 20);
}

/* Loads the scripts and picks the durable state store; 0, or -1 with the
 * reason in err. */
static int runtime__load(runtime_t *rt, int clustered, char *err, size_t errlen) {
  rt->failed = host_load_dir(rt->host);
  if (rt->failed < 0) {
    snprintf(err, errlen, "cannot read script directory '%s': %s", rt->cfg.dir, strerror(-rt->failed));
    return -1;
  }
  for (etype_t *t = host_types(rt->host); t; t = t->next) rt->ntypes++;
  if (rt->sq) rt->sq_state = sqls_estate_ops(rt->sq);
  dstate_set_ops(rt->em, clustered ? &rt->pg_state : rt->sq ? &rt->sq_state : estate_mem_ops(rt->estate));
  if (!host_scripts(rt->host)) log_warn("no *.lua scripts in %s: nothing to serve yet", rt->cfg.dir);
  if (!clustered && !rt->sq) runtime__memory_warning(rt->host);
  return 0;
}

/* The modules every runtime has, each handed what it works with (the
 * cluster stays off unless it is started); 0, or -1 when out of memory. */
static int runtime__modules(runtime_t *rt) {
  rt->em = em_new(&rt->sched, rt->hc.shards);
  if (!rt->em) return -1;
  em_set_max_active(rt->em, rt->cfg.max_active, rt->cfg.call_timeout_ms);
  rt->hc.em = em_host_ops(rt->em);
  rt->host = host_new(&rt->hc);
  if (!rt->host) return -1;
  em_host_t eh = em_host_default(rt->host);
  em_set_host(rt->em, &eh);
  rt->estate = estate_mem_new(&rt->sched);
  rt->mem = rt->estate ? storage_new(&rt->sched, rt->estate, rt->cfg.retention_ms) : NULL;
  if (!rt->mem) return -1;
  rt->router = router_new(&rt->sched, rt->mem, rt->em, rt->host);
  rt->durable = durable_new(&rt->sched, rt->router, rt->em, rt->host);
  rt->cluster = cluster_new(&rt->sched, rt->router, rt->durable);
  rt->wiring.cluster = rt->cluster;
  rt->wiring.router = rt->router;
  rt->wiring.durable = rt->durable;
  return 0;
}

/* Told once when span requests start failing and once when they succeed
 * again, not at every batch. */
static void runtime__otlp_state(void *ud, int failing, const char *why) {
  const runtime_t *rt = ud;
  if (failing) log_warn("spans to %s fail: %s (spans are dropped meanwhile)", rt->cfg.otlp_endpoint, why);
  else log_info("spans to %s are delivered again", rt->cfg.otlp_endpoint);
}

/* --otlp-endpoint: the exporter every span goes to; 0, or -1 with the
 * reason in err. */
static int runtime__start_otlp(runtime_t *rt, char *err, size_t errlen) {
  if (!rt->cfg.otlp_endpoint || !*rt->cfg.otlp_endpoint) return 0;
  char *why = NULL;
  rt->otlp = otlp_exporter_new(&rt->loop, rt->cfg.otlp_endpoint, 0, &why);
  if (!rt->otlp) {
    snprintf(err, errlen, "--otlp-endpoint: %s", why ? why : "cannot create the exporter");
    free(why);
    return -1;
  }
  otlp_protocol_t proto = OTLP_PROTOBUF; /* checked by config_check_run */
  otlp_protocol_parse(rt->cfg.otlp_protocol, &proto);
  otlp_exporter_set_protocol(rt->otlp, proto);
  otlp_exporter_set_runner(rt->otlp, rt->hc.runner_name);
  otlp_exporter_on_state(rt->otlp, runtime__otlp_state, rt);
  host_set_otlp(rt->host, rt->otlp);
  log_info("trace spans go to %s (OTLP %s)", rt->cfg.otlp_endpoint, otlp_protocol_name(proto));
  return 0;
}

static void runtime__otlp_closed(void *ud, const otlp_exporter_stats_t *st) {
  runtime_t *rt = ud;
  rt->otlp_closed = 1;
  if (st->dropped || st->failed)
    log_info("spans: %llu sent, %llu dropped, %llu failed", (unsigned long long)st->sent,
             (unsigned long long)st->dropped, (unsigned long long)st->failed);
}

/* Sends the spans still queued (their request limited to a second, so a
 * collector that hangs does not hold the shutdown), then frees the exporter. */
static void runtime__stop_otlp(runtime_t *rt) {
  if (!rt->otlp) return;
  if (rt->host) host_set_otlp(rt->host, NULL);
  otlp_exporter_set_timing(rt->otlp, 0, 0, 1000);
  otlp_exporter_close(rt->otlp, runtime__otlp_closed, rt);
  rt->otlp = NULL;
  while (!rt->otlp_closed) uv_run(&rt->loop, UV_RUN_ONCE);
}

/* Everything after the loop is set up; 0, or -1 with the reason in err. */
static int runtime__start(runtime_t *rt, char *err, size_t errlen) {
  const config_t *cfg = &rt->cfg;
  config_storage_t kind = config_storage_kind(cfg->storage);
  int clustered = kind == CONFIG_POSTGRES, sqlite = kind == CONFIG_SQLITE;
  if (runtime__modules(rt) != 0) {
    snprintf(err, errlen, "out of memory creating the runtime's modules");
    return -1;
  }
  if (sqlite && runtime__open_sqlite(rt, err, errlen) != 0) return -1;
  if (runtime__load(rt, clustered, err, errlen) != 0) return -1;
  if (runtime__start_otlp(rt, err, errlen) != 0) return -1;
  gateway_info_t gi = {
      .runner = rt->hc.runner_name,
      .http_addr = rt->bound,
      .storage = cfg->storage,
      .dir = cfg->dir,
      .shards = rt->hc.shards,
      .started_ms = sched_wall_ms(&rt->sched),
      .call_timeout_ms = cfg->call_timeout_ms,
      .admin = cfg->admin,
      .sched = &rt->sched,
      .em = rt->em,
      .host = rt->host,
      .cluster = rt->cluster,
      .router = rt->router,
      .durable = rt->durable,
  };
  rt->gw = gateway_new(&gi);
  if (!rt->gw) {
    snprintf(err, errlen, "out of memory creating the HTTP gateway");
    return -1;
  }
  if (runtime__start_http(rt, err, errlen) != 0) return -1;
  if (clustered && runtime__start_cluster(rt, err, errlen) != 0) return -1;
  host_start_background(rt->host);
  if (!cfg->no_reload) watch_start(rt->host, &rt->loop);
  return 0;
}

static void runtime__close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* After the loop ends: mailboxes first (their callers learn the runner is
 * leaving), then the running tasks, then whatever that queued, then the now
 * idle instances, then each module's own resources, then every handle left
 * on the loop (the owner's too). */
static void runtime__down(runtime_t *rt) {
  uv_mutex_lock(&rt->stop_lock);
  rt->stop_open = 0;
  uv_mutex_unlock(&rt->stop_lock);
  rt->down = 1;
  if (rt->host) watch_stop(rt->host);
  if (rt->em) em_stop_all(rt->em);
  if (rt->host) host_cancel_tasks(rt->host);
  sched_drain(&rt->sched);
  if (rt->em) em_stop_all(rt->em);
  if (rt->cluster) cluster_close(rt->cluster); /* transport and PostgreSQL sessions: their waiting callers learn now */
  sched_drain(&rt->sched);
  if (rt->router) router_shutdown(rt->router);
  if (rt->durable) durable_close(rt->durable); /* after every message is gone: replies not yet stored leave their messages pending */
  if (rt->mem) storage_free(rt->mem); /* callers still waiting for stored messages: unavailable */
  rt->mem = NULL;
  sched_drain(&rt->sched);
  estate_mem_free(rt->estate);
  rt->estate = NULL;
  if (rt->http) http_server_free(rt->http);
  rt->http = NULL;
  runtime__stop_otlp(rt);
  if (rt->host) host_free(rt->host);
  rt->host = NULL;
  if (rt->em) em_free(rt->em);
  rt->em = NULL;
  sched_close(&rt->sched);
  uv_walk(&rt->loop, runtime__close_walk, NULL);
  uv_run(&rt->loop, UV_RUN_DEFAULT);
  uv_loop_close(&rt->loop);
  if (rt->cluster) cluster_free(rt->cluster);
  if (rt->durable) durable_free(rt->durable);
  if (rt->router) router_free(rt->router);
  rt->cluster = NULL;
  rt->durable = NULL;
  rt->router = NULL;
}

runtime_t *runtime_new(const config_t *cfg, char *err, size_t errlen) { return runtime_new_on(cfg, NULL, err, errlen); }

runtime_t *runtime_new_on(const config_t *cfg, const lclock_t *clk, char *err, size_t errlen) {
  runtime_t *rt = calloc(1, sizeof *rt);
  if (!rt || uv_mutex_init(&rt->stop_lock) != 0) {
    snprintf(err, errlen, "out of memory creating a runtime");
    free(rt);
    return NULL;
  }
  int rc = uv_loop_init(&rt->loop);
  if (rc != 0) {
    snprintf(err, errlen, "cannot create an event loop: %s", uv_strerror(rc));
    uv_mutex_destroy(&rt->stop_lock);
    free(rt);
    return NULL;
  }
  rt->cfg = *cfg;
  snprintf(rt->bound, sizeof rt->bound, "none");
  runtime_host_config(&rt->cfg, &rt->sched, &rt->wiring, &rt->hc);
  sched_init(&rt->sched, &rt->loop);
  if (clk) sched_set_clock(&rt->sched, clk);
  /* Unreferenced, like the CLI's signals: only the runtime's work keeps
   * the loop running, as it did before there was a stop handle. */
  uv_async_init(&rt->loop, &rt->stop_async, runtime__stop_cb);
  rt->stop_async.data = rt;
  uv_unref((uv_handle_t *)&rt->stop_async);
  rt->stop_open = 1;
  uv_timer_init(&rt->loop, &rt->stop_timer);
  rt->stop_timer.data = rt;
  if (runtime__start(rt, err, errlen) != 0) {
    runtime__down(rt);
    runtime_free(rt);
    return NULL;
  }
  return rt;
}

int runtime_run(runtime_t *rt) {
  const config_t *cfg = &rt->cfg;
  log_info("luster runner serving %d definition%s from %s (%d script%s failed to load; %s); http %s", rt->ntypes,
           rt->ntypes == 1 ? "" : "s", cfg->dir, rt->failed, rt->failed == 1 ? "" : "s",
           cfg->no_reload ? "not watching for changes" : "reloading changed scripts", rt->bound);
  if (strcmp(rt->bound, "none") != 0) log_info("http gateway listening on http://%s", rt->bound);
  uv_run(&rt->loop, UV_RUN_DEFAULT);
  runtime__down(rt);
  log_info("stopped");
  return 0;
}

void runtime_stop(runtime_t *rt) {
  uv_mutex_lock(&rt->stop_lock);
  if (rt->stop_open) uv_async_send(&rt->stop_async);
  uv_mutex_unlock(&rt->stop_lock);
}

void runtime_free(runtime_t *rt) {
  if (!rt) return;
  if (!rt->down) runtime__down(rt);
  gateway_free(rt->gw);
  uv_mutex_destroy(&rt->stop_lock);
  free(rt);
}

int runtime_http_port(const runtime_t *rt) { return rt->http_port; }

const char *runtime_http_addr(const runtime_t *rt) { return rt->bound; }

uv_loop_t *runtime_loop(runtime_t *rt) { return &rt->loop; }

sched_t *runtime_sched(runtime_t *rt) { return &rt->sched; }
host_t *runtime_host(runtime_t *rt) { return rt->host; }
em_t *runtime_em(runtime_t *rt) { return rt->em; }
gateway_t *runtime_gateway(runtime_t *rt) { return rt->gw; }
durable_t *runtime_durable(runtime_t *rt) { return rt->durable; }
