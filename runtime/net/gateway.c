/* gateway.c - maps HTTP requests to entity calls and replies to status codes:
 * 200 value, 422 declared failure, 400 schema, 404 unknown, 500 defect,
 * 503 unavailable or mailbox full (with Retry-After), 504 timeout,
 * 202 accepted (?discard=1). Answers to persisted RPCs carry X-Request-Id;
 * GET /requests/{id} answers a stored message's reply from any runner (202
 * while it is pending). */
#include "net/gateway.h"

#include <errno.h>
#include <stddef.h>
#include <http_parser.h>
#include <stdlib.h>
#include <string.h>

#include "loop/log.h"
#include "cluster/durable.h"
#include "cluster/router.h"
#include "core/url.h"
#include "entity/entity.h"
#include "host/host.h"
#include "storage/storage.h"
#include "cluster/cluster.h"

static gateway_info_t gw;

#define GW_MAX_TIMEOUT_MS 86400000ull

void gateway_init(const gateway_info_t *info) { gw = *info; }

static void gw__json(http_req_t *r, int status, const char *extra, const char *body, size_t len) {
  http_respond(r, status, "application/json", extra, body, len);
}

static void gw__error(http_req_t *r, int status, const char *kind, const char *path, const char *msg) {
  buf_t b;
  buf_init(&b);
  buf_adds(&b, "{\"error\":{\"kind\":\"");
  buf_adds(&b, kind);
  buf_adds(&b, "\",\"message\":");
  buf_add_json_str(&b, msg, strlen(msg));
  if (path || strcmp(kind, "schema") == 0) {
    buf_adds(&b, ",\"path\":");
    buf_add_json_str(&b, path ? path : "", path ? strlen(path) : 0);
  }
  buf_adds(&b, "}}");
  gw__json(r, status, status == 405 ? "Allow: POST\r\n" : NULL, b.data, b.len);
  buf_free(&b);
}

static int gw__status(reply_kind_t k) {
  switch (k) {
  case REPLY_OK: return 200;
  case REPLY_ACCEPTED: return 202;
  case REPLY_FAILURE: return 422;
  case REPLY_SCHEMA: return 400;
  case REPLY_NOT_FOUND: return 404;
  case REPLY_CONFLICT: return 409;
  case REPLY_TIMEOUT: return 504;
  case REPLY_UNAVAILABLE:
  case REPLY_MAILBOX_FULL: return 503;
  default: return 500;
  }
}

static void gw__abort(http_req_t *r);

static void gw__answer(call_t *c, reply_kind_t kind, const char *body, size_t len, int lookup) {
  http_req_t *r = c->ud;
  int status = gw__status(kind);
  buf_t b;
  buf_init(&b);
  buf_reserve(&b, len + 64);
  switch (kind) {
  case REPLY_OK: buf_adds(&b, "{\"value\":"); buf_add(&b, body, len); buf_addc(&b, '}'); break;
  case REPLY_FAILURE: buf_adds(&b, "{\"failure\":"); buf_add(&b, body, len); buf_addc(&b, '}'); break;
  case REPLY_ACCEPTED:
    if (c->request_id)
      buf_printf(&b, "{\"%s\":true,\"request_id\":\"%llu\"}", lookup ? "pending" : "accepted",
                 (unsigned long long)c->request_id);
    else
      buf_adds(&b, "{\"accepted\":true}");
    break;
  default: buf_adds(&b, "{\"error\":"); buf_add(&b, body, len); buf_addc(&b, '}'); break;
  }
  char extra[96];
  size_t n = 0;
  if (status == 503) n += (size_t)snprintf(extra + n, sizeof extra - n, "Retry-After: 1\r\n");
  if (c->request_id)
    snprintf(extra + n, sizeof extra - n, "X-Request-Id: %llu\r\n", (unsigned long long)c->request_id);
  gw__json(r, status, n || c->request_id ? extra : NULL, b.data, b.len);
  buf_free(&b);
}

static void gw__reply(call_t *c, reply_kind_t kind, const char *body, size_t len) {
  gw__answer(c, kind, body, len, 0);
}

static void gw__looked_up(call_t *c, reply_kind_t kind, const char *body, size_t len) {
  gw__answer(c, kind, body, len, 1);
}

/* GET /requests/{id}: a persisted message's reply, from any runner. */
static void gw__request(http_req_t *r, const slice_t *id) {
  if (r->method != HTTP_GET && r->method != HTTP_HEAD) {
    static const char msg[] = "{\"error\":{\"kind\":\"method_not_allowed\",\"message\":\"use GET\"}}";
    http_respond(r, 405, "application/json", "Allow: GET\r\n", msg, sizeof msg - 1);
    return;
  }
  uint64_t rid = 0;
  int ok = id->len > 0 && id->len <= 19;
  for (size_t i = 0; ok && i < id->len; i++) {
    if (id->ptr[i] < '0' || id->ptr[i] > '9') ok = 0;
    else rid = rid * 10 + (uint64_t)(id->ptr[i] - '0');
  }
  if (!ok || rid == 0) {
    gw__error(r, 400, "schema", "id", "a request id is the decimal number from X-Request-Id");
    return;
  }
  call_t *c = call_new(gw__looked_up, r, gw.call_timeout_ms);
  r->ud = c;
  r->on_abort = gw__abort;
  router_lookup(rid, c);
}

static void gw__abort(http_req_t *r) {
  call_t *c = r->ud;
  if (c) call_cancel(c);
  r->ud = NULL;
}

static int gw__flag(const slice_t *q, const char *key) {
  char v[16];
  int n = url_query_get(q->ptr, q->len, key, v, sizeof v);
  if (n < 0) return 0;
  return n == 0 || strcmp(v, "1") == 0 || strcmp(v, "true") == 0;
}

static void gw__entity(http_req_t *r, const slice_t *seg, const slice_t *query) {
  const slice_t *type = &seg[1], *id = &seg[2], *rpc = &seg[3];
  if (r->method != HTTP_POST) {
    gw__error(r, 405, "method_not_allowed", NULL, "entity calls use POST");
    return;
  }
  uint64_t timeout = gw.call_timeout_ms;
  char tv[32];
  if (url_query_get(query->ptr, query->len, "timeout", tv, sizeof tv) >= 0) {
    char *end;
    errno = 0;
    unsigned long long ms = strtoull(tv, &end, 10);
    if (*tv < '0' || *tv > '9' || *end != '\0' || ms == 0) {
      gw__error(r, 400, "schema", "timeout", "timeout must be a positive number of milliseconds");
      return;
    }
    /* Deadlines are now + timeout on a 64-bit clock: a huge value would wrap
     * around and expire at once. A day is longer than any sane call. */
    if (errno == ERANGE || ms > GW_MAX_TIMEOUT_MS) {
      gw__error(r, 400, "schema", "timeout", "timeout must be at most 86400000 milliseconds (one day)");
      return;
    }
    timeout = ms;
  }
  unsigned flags = gw__flag(query, "discard") ? MSG_DISCARD : 0;
  call_t *c = call_new(gw__reply, r, timeout);
  r->ud = c;
  r->on_abort = gw__abort;
  router_send(type->ptr, type->len, id->ptr, id->len, rpc->ptr, rpc->len, r->body.data, r->body.len,
              r->headers.data, r->headers.len, flags, c);
}

/* POST /admin/reload: rescans the script directory now (also without
 * watching, --no-reload) and answers what it did. */
static void gw__admin_reload(http_req_t *r) {
  if (strcmp(gw.admin, "none") == 0 || (strcmp(gw.admin, "any") != 0 && !http_req_from_loopback(r))) {
    gw__error(r, 403, "forbidden", NULL,
              strcmp(gw.admin, "none") == 0 ? "admin endpoints are turned off (--admin none)"
                                            : "admin endpoints answer loopback clients only (--admin any to allow others)");
    return;
  }
  if (r->method != HTTP_POST) {
    gw__error(r, 405, "method_not_allowed", NULL, "use POST /admin/reload");
    return;
  }
  host_reload_report_t rep;
  buf_t b;
  buf_init(&b);
  host_rescan(&rep, &b);
  gw__json(r, rep.failed ? 422 : 200, NULL, b.data, b.len);
  buf_free(&b);
}

void gateway_on_request(http_req_t *r) {
  slice_t path, query;
  url_split(r->url.data, r->url.len, &path, &query);
  char store[8192 + 16];
  slice_t seg[8];
  int n = url_segments(path.ptr, path.len, store, sizeof store, seg, 8);
  if (n < 0) {
    gw__error(r, 400, "schema", NULL, "malformed request path (bad percent-encoding, NUL byte, or too many segments)");
    return;
  }
#define SEG_IS(i, s) (seg[i].len == sizeof(s) - 1 && memcmp(seg[i].ptr, s, sizeof(s) - 1) == 0)
  if (n == 4 && SEG_IS(0, "entities")) {
    gw__entity(r, seg, &query);
    return;
  }
  if (n == 2 && SEG_IS(0, "requests")) {
    gw__request(r, &seg[1]);
    return;
  }
  if (n == 2 && SEG_IS(0, "admin") && SEG_IS(1, "reload")) {
    gw__admin_reload(r);
    return;
  }
  if (n == 1 && SEG_IS(0, "health")) {
    if (cluster_on && !cluster_healthy()) {
      static const char no[] = "{\"status\":\"not serving: not (or no longer) a live member of the cluster\"}";
      gw__json(r, 503, NULL, no, sizeof no - 1);
      return;
    }
    static const char ok[] = "{\"status\":\"serving\"}";
    gw__json(r, 200, NULL, ok, sizeof ok - 1);
    return;
  }
  if (n == 1 && (SEG_IS(0, "cluster") || SEG_IS(0, "metrics"))) {
    if (r->method != HTTP_GET && r->method != HTTP_HEAD) {
      static const char msg[] = "{\"error\":{\"kind\":\"method_not_allowed\",\"message\":\"use GET\"}}";
      http_respond(r, 405, "application/json", "Allow: GET\r\n", msg, sizeof msg - 1);
      return;
    }
    buf_t b;
    buf_init(&b);
    if (SEG_IS(0, "cluster")) {
      gateway_cluster_json(&b);
      gw__json(r, 200, NULL, b.data, b.len);
    } else {
      gateway_metrics(&b);
      http_respond(r, 200, "text/plain; version=0.0.4", NULL, b.data, b.len);
    }
    buf_free(&b);
    return;
  }
  if (n >= 1 && SEG_IS(0, "entities")) {
    gw__error(r, 404, "not_found", NULL, "entity calls are POST /entities/{type}/{id}/{rpc}");
    return;
  }
  gw__error(r, 404, "not_found", NULL, "no such route; try POST /entities/{type}/{id}/{rpc}, "
                                       "GET /requests/{id}, GET /cluster, GET /metrics or GET /health");
#undef SEG_IS
}

static const char *gw__kind_name(def_kind_t k) {
  return k == DEF_SINGLETON ? "singleton" : k == DEF_CRON ? "cron" : "entity";
}

static void gw__ms_or_null(buf_t *b, const char *key, uint64_t ms) {
  if (ms) buf_printf(b, ",\"%s\":%llu", key, (unsigned long long)ms);
  else buf_printf(b, ",\"%s\":null", key);
}

/* Where a singleton or cron job runs: the runner serving the shard of its
 * name (null while no runner does), since when it runs here, and a cron
 * job's last and next instants. Since, last and next are known only on the
 * runner that runs it: null elsewhere (ask that runner). */
static void gw__background_json(buf_t *b, const etype_t *t) {
  const char *where = NULL;
  if (!cluster_on) {
    where = gw.runner;
  } else {
    tp_peer_t *peer = NULL;
    route_t rt = cluster_route(cluster_shard_of(t->name, t->name_len), &peer);
    if (rt == ROUTE_LOCAL) where = cluster_self();
    else if (rt == ROUTE_REMOTE && peer) where = tp_peer_addr(peer);
  }
  const task_t *task = where && (!cluster_on || where == cluster_self()) ? t->runner_task : NULL;
  buf_adds(b, ",\"runner\":");
  if (where) buf_add_json_str(b, where, strlen(where));
  else buf_adds(b, "null");
  buf_printf(b, ",\"running\":%s", task ? "true" : "false");
  gw__ms_or_null(b, "since", task ? task->started_ms : 0);
  if (t->kind == DEF_CRON) {
    gw__ms_or_null(b, "last", task ? task->cron_last_ms : 0);
    gw__ms_or_null(b, "next", task ? task->cron_next_ms : 0);
  }
}

void gateway_cluster_json(buf_t *b) {
  buf_adds(b, "{\"runner\":{\"address\":");
  buf_add_json_str(b, gw.runner, strlen(gw.runner));
  buf_adds(b, ",\"http\":");
  buf_add_json_str(b, gw.http_addr, strlen(gw.http_addr));
  buf_adds(b, ",\"storage\":");
  buf_add_json_str(b, gw.storage, strlen(gw.storage));
  buf_adds(b, ",\"scripts\":");
  buf_add_json_str(b, gw.dir, strlen(gw.dir));
  buf_printf(b, ",\"started_at\":%llu,\"healthy\":true,\"active\":%llu}", (unsigned long long)gw.started_ms,
             (unsigned long long)em_active_total());
  if (cluster_on) {
    buf_adds(b, ",\"cluster\":");
    cluster_json_info(b);
    buf_adds(b, ",\"runners\":");
    cluster_json_runners(b);
    buf_adds(b, ",\"shards\":");
    cluster_json_shards(b);
  } else {
    buf_adds(b, ",\"runners\":[{\"address\":");
    buf_add_json_str(b, gw.runner, strlen(gw.runner));
    buf_printf(b, ",\"healthy\":true,\"shards\":%u,\"active\":%llu}]", gw.shards,
               (unsigned long long)em_active_total());
    buf_printf(b, ",\"shards\":{\"count\":%u,\"owners\":[{\"runner\":", gw.shards);
    buf_add_json_str(b, gw.runner, strlen(gw.runner));
    buf_printf(b, ",\"ranges\":[[1,%u]]}]}", gw.shards);
  }
  buf_adds(b, ",\"types\":[");
  int first = 1;
  for (etype_t *t = host_types(); t; t = t->next) {
    if (!first) buf_addc(b, ',');
    first = 0;
    buf_adds(b, "{\"name\":");
    buf_add_json_str(b, t->name, t->name_len);
    buf_printf(b, ",\"kind\":\"%s\",\"file\":", gw__kind_name(t->kind));
    buf_add_json_str(b, t->script->file, strlen(t->script->file));
    /* A singleton or cron job is one instance, active while it runs here. */
    uint64_t active = t->kind == DEF_ENTITY ? t->active : t->runner_task != NULL;
    buf_printf(b, ",\"version\":\"%s\",\"active\":%llu,\"activations\":%llu,\"passivations\":%llu",
               t->script->version, (unsigned long long)active, (unsigned long long)t->counters->activations,
               (unsigned long long)t->counters->passivations);
    if (t->kind == DEF_ENTITY) {
      buf_printf(b, ",\"max_idle_ms\":%llu,\"concurrency\":%u,\"mailbox\":%u,\"rpcs\":[",
                 (unsigned long long)t->max_idle_ms, t->concurrency, t->mailbox);
      for (int i = 0; i < t->nrpcs; i++) {
        if (i) buf_addc(b, ',');
        buf_adds(b, "{\"tag\":");
        buf_add_json_str(b, t->rpcs[i].tag, t->rpcs[i].tag_len);
        buf_printf(b, ",\"persisted\":%s}", t->rpcs[i].persisted ? "true" : "false");
      }
      buf_addc(b, ']');
    } else {
      if (t->cron_expr) {
        buf_adds(b, ",\"schedule\":");
        buf_add_json_str(b, t->cron_expr, strlen(t->cron_expr));
      }
      gw__background_json(b, t);
    }
    buf_addc(b, '}');
  }
  buf_adds(b, "],\"scripts_loaded\":[");
  first = 1;
  for (script_t *s = host_scripts(); s; s = s->next) {
    if (!first) buf_addc(b, ',');
    first = 0;
    buf_adds(b, "{\"file\":");
    buf_add_json_str(b, s->file, strlen(s->file));
    buf_printf(b, ",\"version\":\"%s\",\"ok\":%s,\"memory_bytes\":%zu", s->version, s->error ? "false" : "true",
               s->mem);
    if (s->error) {
      buf_adds(b, ",\"error\":");
      buf_add_json_str(b, s->error, strlen(s->error));
    }
    if (s->reload_error) {
      buf_adds(b, ",\"reload_error\":");
      buf_add_json_str(b, s->reload_error, strlen(s->reload_error));
    }
    buf_addc(b, '}');
  }
  buf_adds(b, "],\"errors\":[");
  first = 1;
  for (script_t *s = host_scripts(); s; s = s->next) {
    const char *err = s->error ? s->error : s->reload_error;
    if (!err) continue;
    if (!first) buf_addc(b, ',');
    first = 0;
    buf_adds(b, "{\"file\":");
    buf_add_json_str(b, s->file, strlen(s->file));
    buf_adds(b, ",\"message\":");
    buf_add_json_str(b, err, strlen(err));
    /* serving: an older version of the file still serves its definitions */
    buf_printf(b, ",\"serving\":%s", s->error ? "false" : "true");
    if (!s->error) buf_printf(b, ",\"serving_version\":\"%s\"", s->version);
    buf_addc(b, '}');
  }
  buf_adds(b, "]}");
}

static void gw__metric_head(buf_t *b, const char *name, const char *type, const char *help) {
  buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A Prometheus label value: backslash, double quote and newline escaped, so
 * an odd script file name cannot break the whole exposition. */
static void gw__label(buf_t *b, const char *s) {
  for (; *s; s++) {
    if (*s == '\\' || *s == '"') { buf_addc(b, '\\'); buf_addc(b, *s); }
    else if (*s == '\n') buf_adds(b, "\\n");
    else buf_addc(b, *s);
  }
}

void gateway_metrics(buf_t *b) {
  /* Gauges describe the types served now; counters every type name served
   * since the start (host/counters.h), so a reload or a removed file never
   * makes them go back. */
  static const struct {
    const char *name, *type, *help;
    size_t off;
  } gauges[] = {
      {"luster_active_instances", "gauge", "Active entity instances on this runner, per type.",
       offsetof(etype_t, active)},
      {"luster_running_messages", "gauge", "Messages being handled now, per type.", offsetof(etype_t, running)},
      {"luster_queued_messages", "gauge", "Messages waiting in mailboxes, per type.", offsetof(etype_t, queued)},
  }, counters[] = {
      {"luster_activations_total", "counter", "Instances activated, per type.",
       offsetof(host_counters_t, activations)},
      {"luster_passivations_total", "counter", "Instances passivated after max_idle, per type.",
       offsetof(host_counters_t, passivations)},
      {"luster_state_writes_total", "counter",
       "Durable entity states written to storage (unchanged snapshots are not), per type.",
       offsetof(host_counters_t, state_writes)},
  };
  for (size_t m = 0; m < sizeof gauges / sizeof gauges[0]; m++) {
    gw__metric_head(b, gauges[m].name, gauges[m].type, gauges[m].help);
    for (etype_t *t = host_types(); t; t = t->next)
      if (t->kind == DEF_ENTITY)
        buf_printf(b, "%s{type=\"%s\"} %llu\n", gauges[m].name, t->name,
                   (unsigned long long)*(const uint64_t *)((const char *)t + gauges[m].off));
  }
  for (size_t m = 0; m < sizeof counters / sizeof counters[0]; m++) {
    gw__metric_head(b, counters[m].name, counters[m].type, counters[m].help);
    for (host_counters_t *c = host_counters(); c; c = c->next)
      if (c->entity)
        buf_printf(b, "%s{type=\"%s\"} %llu\n", counters[m].name, c->name,
                   (unsigned long long)*(const uint64_t *)((const char *)c + counters[m].off));
  }
  gw__metric_head(b, "luster_messages_total", "counter", "Messages handled, per type and outcome.");
  for (host_counters_t *c = host_counters(); c; c = c->next)
    for (int k = 0; k < REPLY__COUNT; k++)
      if (c->outcomes[k])
        buf_printf(b, "luster_messages_total{type=\"%s\",outcome=\"%s\"} %llu\n", c->name,
                   reply_kind_name((reply_kind_t)k), (unsigned long long)c->outcomes[k]);
  gw__metric_head(b, "luster_script_memory_bytes", "gauge", "Bytes held by each script's Lua state.");
  for (script_t *s = host_scripts(); s; s = s->next)
    if (!s->error) {
      buf_adds(b, "luster_script_memory_bytes{file=\"");
      gw__label(b, s->file);
      buf_printf(b, "\"} %zu\n", s->mem);
    }
  gw__metric_head(b, "luster_script_errors", "gauge", "Scripts that failed to load and are not serving.");
  int errors = 0;
  for (script_t *s = host_scripts(); s; s = s->next) errors += s->error != NULL;
  buf_printf(b, "luster_script_errors %d\n", errors);
  if (!durable_on()) {
    gw__metric_head(b, "luster_persisted_messages", "gauge", "Persisted messages and replies held by storage.");
    buf_printf(b, "luster_persisted_messages %zu\n", storage_count());
  } else {
    const ms_stats_t *ps = durable_store_stats();
    const durable_stats_t *ds = durable_stats();
    static const struct {
      const char *name, *type, *help;
      size_t off;
      int durable;
    } rows[] = {
#define PGS_ROW(n, f, h) {"luster_persisted_" n, "counter", h, offsetof(ms_stats_t, f), 0}
#define DUR_ROW(n, t, f, h) {"luster_persisted_" n, t, h, offsetof(durable_stats_t, f), 1}
        PGS_ROW("stored_total", stored, "Persisted messages stored by this runner."),
        PGS_ROW("duplicates_total", duplicates, "Sends whose primary key was stored before (answered with its reply)."),
        PGS_ROW("replies_total", replies, "Replies of persisted messages stored by this runner."),
        PGS_ROW("pruned_total", pruned, "Done messages deleted after the retention."),
        PGS_ROW("storage_failures_total", failures, "Batched storage statements that failed."),
        PGS_ROW("store_batches_total", put_batches, "Statements that stored messages (many messages each)."),
        PGS_ROW("reply_batches_total", reply_batches, "Statements that stored replies."),
        PGS_ROW("state_saves_total", state_saves, "Durable entity states written to (or deleted from) PostgreSQL."),
        PGS_ROW("state_loads_total", state_loads, "Durable entity states read from PostgreSQL."),
        DUR_ROW("delivered_total", "counter", delivered, "Stored messages handed to their instance here."),
        DUR_ROW("redelivery_scans_total", "counter", scans, "Reads of pending messages of this runner's shards."),
        DUR_ROW("duplicates_skipped_total", "counter", duplicates_skipped,
                "Deliveries skipped because the message ran here already or was done."),
        DUR_ROW("running", "gauge", running, "Stored messages this runner delivers now."),
#undef PGS_ROW
#undef DUR_ROW
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
      const char *base = rows[i].durable ? (const char *)ds : (const char *)ps;
      gw__metric_head(b, rows[i].name, rows[i].type, rows[i].help);
      buf_printf(b, "%s %llu\n", rows[i].name, (unsigned long long)*(const uint64_t *)(base + rows[i].off));
    }
  }
  const http_stats_t *hs = http_stats();
  gw__metric_head(b, "luster_http_requests_total", "counter", "HTTP requests parsed.");
  buf_printf(b, "luster_http_requests_total %llu\n", (unsigned long long)hs->requests_total);
  gw__metric_head(b, "luster_http_responses_total", "counter", "HTTP responses, per status class.");
  for (int i = 1; i < 6; i++)
    buf_printf(b, "luster_http_responses_total{class=\"%dxx\"} %llu\n", i, (unsigned long long)hs->by_status[i]);
  gw__metric_head(b, "luster_http_rejected_total", "counter",
                  "HTTP requests refused before routing (malformed, too large, too slow).");
  buf_printf(b, "luster_http_rejected_total %llu\n", (unsigned long long)hs->rejected_total);
  gw__metric_head(b, "luster_http_connections", "gauge", "Open HTTP connections.");
  buf_printf(b, "luster_http_connections %llu\n", (unsigned long long)hs->connections_open);
  if (cluster_on) cluster_metrics(b);
}
