/* gateway.c - maps HTTP requests to entity calls and replies to status codes:
 * 200 value, 422 declared failure, 400 schema, 404 unknown, 500 defect,
 * 503 unavailable or mailbox full (with Retry-After), 504 timeout,
 * 202 accepted (?discard=1). Answers to persisted RPCs carry X-Request-Id;
 * GET /requests/{id} answers a stored message's reply from any runner (202
 * while it is pending). */
#include "admin/gateway.h"

#include <errno.h>
#include <stddef.h>
#include <http_parser.h>
#include <stdlib.h>
#include <string.h>

#include "admin/console.h"
#include "cluster/cluster.h"
#include "cluster/durable.h"
#include "cluster/router.h"
#include "cluster/where.h"
#include "core/otlp.h"
#include "core/trace.h"
#include "core/url.h"
#include "entity/entity.h"
#include "host/host.h"
#include "loop/log.h"
#include "net/otlp_export.h"
#include "storage/storage.h"

#define GW_MAX_TIMEOUT_MS 86400000ull

gateway_t *gateway_new(const gateway_info_t *info) {
  gateway_t *gw = calloc(1, sizeof *gw);
  if (gw) gw->info = *info;
  return gw;
}

void gateway_free(gateway_t *gw) { free(gw); }

void gateway_set_http(gateway_t *gw, http_server_t *http) { gw->http = http; }

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

/* The request span, while spans are exported: the call's span record with
 * what the span's attributes name (freed with the call). */
typedef struct {
  call_span_t base;
  otlp_exporter_t *ex;
  char type[64], rpc[64];
} gw_span_t;

/* s into dst, cut to fit (a span's strings are bounded anyway); no printf,
 * as this runs for every traced request. Returns the bytes copied. */
static size_t gw__cut(char *dst, size_t cap, const slice_t *s) {
  size_t n = s->len < cap ? s->len : cap - 1;
  memcpy(dst, s->ptr, n);
  dst[n] = '\0';
  return n;
}

/* The trace an entity call belongs to: the caller's `traceparent` when it
 * is one (an invalid one is ignored: a new trace, never an error), else a
 * new one; either way the gateway's request gets a span id of its own,
 * which the answer's `traceparent` names. */
static void gw__trace_start(const gateway_t *gw, http_req_t *r, call_t *c, const slice_t *seg) {
  static const char key[] = "\"traceparent\":\"";
  const char *h = r->headers.data, *end = h + r->headers.len;
  const char *at = r->headers.len ? memmem(h, r->headers.len, key, sizeof key - 1) : NULL;
  trace_ctx_t in;
  int have = 0;
  if (at && at > h && (at[-1] == '{' || at[-1] == ',')) {
    const char *v = at + sizeof key - 1, *q = memchr(v, '"', (size_t)(end - v));
    have = q && trace_parse(v, (size_t)(q - v), &in) == 0;
  }
  if (have) {
    c->trace = in;
    host_span_id(gw->info.host, c->trace.span_id);
  } else {
    host_trace_new(gw->info.host, &c->trace);
  }
  if (!host_otlp(gw->info.host) || !(c->trace.flags & TRACE_FLAG_SAMPLED) || otlp_exporter_refuses(host_otlp(gw->info.host)))
    return; /* no spans, or a queue that would drop this one (counted) */
  gw_span_t *sp = calloc(1, sizeof *sp);
  if (!sp) return;
  if (have) memcpy(sp->base.parent, in.span_id, TRACE_SPAN_LEN);
  sp->base.start_ns = host_wall_ns();
  sp->ex = host_otlp(gw->info.host);
  size_t tl = gw__cut(sp->type, sizeof sp->type, &seg[1]);
  size_t rl = gw__cut(sp->rpc, sizeof sp->rpc, &seg[3]);
  /* "POST /entities/Type/{id}/Rpc": 15 + 63 + 6 + 63 + 1 <= sizeof name (160) */
  _Static_assert(sizeof sp->base.name >= 15 + sizeof sp->type + 6 + sizeof sp->rpc - 1, "span name too short");
  char *n = sp->base.name;
  memcpy(n, "POST /entities/", 15);
  memcpy(n + 15, sp->type, tl);
  memcpy(n + 15 + tl, "/{id}/", 6);
  memcpy(n + 21 + tl, sp->rpc, rl);
  n[21 + tl + rl] = '\0';
  c->span = &sp->base;
}

static void gw__trace_end(const call_t *c, int status) {
  const gw_span_t *sp = (const gw_span_t *)(const void *)c->span;
  if (otlp_exporter_refuses(sp->ex)) return;
  otlp_span_t s;
  otlp_span_init(&s);
  memcpy(s.trace_id, c->trace.trace_id, TRACE_ID_LEN);
  memcpy(s.span_id, c->trace.span_id, TRACE_SPAN_LEN);
  memcpy(s.parent_id, sp->base.parent, TRACE_SPAN_LEN);
  s.flags = c->trace.flags;
  s.name = sp->base.name;
  s.kind = OTLP_KIND_SERVER;
  s.start_ns = sp->base.start_ns;
  s.end_ns = host_wall_ns();
  s.status = status >= 500 ? OTLP_STATUS_ERROR : OTLP_STATUS_UNSET;
  otlp_span_attr_str(&s, "http.request.method", "POST");
  otlp_span_attr_str(&s, "http.route", "/entities/{type}/{id}/{rpc}");
  otlp_span_attr_int(&s, "http.response.status_code", status);
  /* The type and RPC are in the name; the id, with them, on the handler's
   * span: every byte of a span is paid again in its encoding. */
  otlp_exporter_add(sp->ex, &s);
}

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
  char extra[192];
  size_t n = 0;
  if (status == 503) n += (size_t)snprintf(extra + n, sizeof extra - n, "Retry-After: 1\r\n");
  if (c->request_id)
    n += (size_t)snprintf(extra + n, sizeof extra - n, "X-Request-Id: %llu\r\n", (unsigned long long)c->request_id);
  if (!trace_id_zero(c->trace.trace_id, TRACE_ID_LEN)) {
    char tp[TRACE_HEADER_LEN + 1];
    trace_format(&c->trace, tp);
    n += (size_t)snprintf(extra + n, sizeof extra - n, "traceparent: %s\r\n", tp);
    if (c->span) gw__trace_end(c, status);
  }
  gw__json(r, status, n ? extra : NULL, b.data, b.len);
  buf_free(&b);
}

static void gw__reply(call_t *c, reply_kind_t kind, const char *body, size_t len) {
  gw__answer(c, kind, body, len, 0);
}

static void gw__looked_up(call_t *c, reply_kind_t kind, const char *body, size_t len) {
  gw__answer(c, kind, body, len, 1);
}

/* GET /requests/{id}: a persisted message's reply, from any runner. */
static void gw__request(const gateway_t *gw, http_req_t *r, const slice_t *id) {
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
  call_t *c = call_new(gw->info.sched, gw__looked_up, r, gw->info.call_timeout_ms);
  r->ud = c;
  r->on_abort = gw__abort;
  router_lookup(gw->info.router, rid, c);
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

static void gw__entity(const gateway_t *gw, http_req_t *r, const slice_t *seg, const slice_t *query) {
  const slice_t *type = &seg[1], *id = &seg[2], *rpc = &seg[3];
  if (r->method != HTTP_POST) {
    gw__error(r, 405, "method_not_allowed", NULL, "entity calls use POST");
    return;
  }
  uint64_t timeout = gw->info.call_timeout_ms;
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
  call_t *c = call_new(gw->info.sched, gw__reply, r, timeout);
  r->ud = c;
  r->on_abort = gw__abort;
  gw__trace_start(gw, r, c, seg);
  router_send(gw->info.router, type->ptr, type->len, id->ptr, id->len, rpc->ptr, rpc->len, r->body.data, r->body.len,
              r->headers.data, r->headers.len, flags, c);
}

/* GET /entities/{type}/{id}: the answer object as it is on success. */
static void gw__where_reply(call_t *c, reply_kind_t kind, const char *body, size_t len) {
  if (kind == REPLY_OK) gw__json(c->ud, 200, NULL, body, len);
  else gw__answer(c, kind, body, len, 0);
}

static void gw__where(const gateway_t *gw, http_req_t *r, const slice_t *seg) {
  if (r->method != HTTP_GET && r->method != HTTP_HEAD) {
    static const char msg[] = "{\"error\":{\"kind\":\"method_not_allowed\",\"message\":"
                              "\"use GET /entities/{type}/{id}, or POST /entities/{type}/{id}/{rpc} for a call\"}}";
    http_respond(r, 405, "application/json", "Allow: GET\r\n", msg, sizeof msg - 1);
    return;
  }
  call_t *c = call_new(gw->info.sched, gw__where_reply, r, gw->info.call_timeout_ms);
  r->ud = c;
  r->on_abort = gw__abort;
  where_ask(gw->info.cluster, gw->info.host, seg[1].ptr, seg[1].len, seg[2].ptr, seg[2].len, gw->info.runner, gw->info.shards, c);
}

/* POST /admin/reload: rescans the script directory now (also without
 * watching, --no-reload) and answers what it did. */
static void gw__admin_reload(const gateway_t *gw, http_req_t *r) {
  if (strcmp(gw->info.admin, "none") == 0 || (strcmp(gw->info.admin, "any") != 0 && !http_req_from_loopback(r))) {
    gw__error(r, 403, "forbidden", NULL,
              strcmp(gw->info.admin, "none") == 0 ? "admin endpoints are turned off (--admin none)"
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
  host_rescan(gw->info.host, &rep, &b);
  gw__json(r, rep.failed ? 422 : 200, NULL, b.data, b.len);
  buf_free(&b);
}

/* GET /: the console page, built into the binary; it polls /cluster and
 * /metrics from the browser and fetches nothing else. */
static void gw__console(http_req_t *r) {
  if (r->method != HTTP_GET && r->method != HTTP_HEAD) {
    static const char msg[] = "{\"error\":{\"kind\":\"method_not_allowed\",\"message\":\"use GET\"}}";
    http_respond(r, 405, "application/json", "Allow: GET\r\n", msg, sizeof msg - 1);
    return;
  }
  size_t len;
  const char *page = console_page(&len);
  http_respond(r, 200, "text/html; charset=utf-8",
               "Cache-Control: no-cache\r\n"
               "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "
               "style-src 'unsafe-inline'; connect-src 'self'; img-src data:\r\n",
               page, len);
}

void gateway_on_request(void *ud, http_req_t *r) {
  const gateway_t *gw = ud;
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
    gw__entity(gw, r, seg, &query);
    return;
  }
  if (n == 3 && SEG_IS(0, "entities")) {
    gw__where(gw, r, seg);
    return;
  }
  if (n == 2 && SEG_IS(0, "requests")) {
    gw__request(gw, r, &seg[1]);
    return;
  }
  if (n == 2 && SEG_IS(0, "admin") && SEG_IS(1, "reload")) {
    gw__admin_reload(gw, r);
    return;
  }
  if (n == 1 && seg[0].len == 0) { /* "/" */
    gw__console(r);
    return;
  }
  if (n == 1 && SEG_IS(0, "health")) {
    if (cluster_on(gw->info.cluster) && !cluster_healthy(gw->info.cluster)) {
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
      gateway_cluster_json(&b, gw);
      gw__json(r, 200, NULL, b.data, b.len);
    } else {
      gateway_metrics(&b, gw);
      http_respond(r, 200, "text/plain; version=0.0.4", NULL, b.data, b.len);
    }
    buf_free(&b);
    return;
  }
  if (n >= 1 && SEG_IS(0, "entities")) {
    gw__error(r, 404, "not_found", NULL,
              "entity calls are POST /entities/{type}/{id}/{rpc}; GET /entities/{type}/{id} says where an id lives");
    return;
  }
  gw__error(r, 404, "not_found", NULL, "no such route; try POST /entities/{type}/{id}/{rpc}, "
                                       "GET /requests/{id}, GET /cluster, GET /metrics, GET /health or GET / (the console)");
#undef SEG_IS
}
