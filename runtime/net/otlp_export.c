/* otlp_export.c - the OTLP/HTTP span exporter (see otlp_export.h).
 *
 * A span is encoded when it is queued (core/otlp.c's request items), into
 * one growing buffer with the end offset of each item beside it: no copy
 * of the span is kept and nothing is allocated per span once the buffers
 * have grown. A batch is a run of items at the buffer's start, sent with
 * the request's head and tail in one writev.
 *
 * One request at a time, each on a connection of its own ("Connection:
 * close"): at one batch a second a kept-alive connection saves nothing that
 * matters, and a fresh one never meets a connection the receiver closed
 * while idle. A failed batch is not retried: its spans are counted failed,
 * so memory stays bounded by the queue while a collector is down (OTLP asks
 * clients to retry 429/502/503/504; spans are telemetry, and the next batch
 * is a second away). */
#include "net/otlp_export.h"

#include <errno.h>
#include <http_parser.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"

#define OTLP_RESPONSE_MAX (1 << 20) /* an answer longer than this is a broken receiver */
#define OTLP_DEFAULT_PATH "/v1/traces"

struct otlp_exporter_s {
  uv_loop_t *loop;
  char *host; /* for the lookup: an IPv6 address without its brackets */
  char port[6];
  struct sockaddr_storage addr; /* the host when it is an IP address: no lookup per batch */
  int numeric;
  char *authority; /* the Host header: host[:port] as the URL gave it */
  char *path;
  char *runner;
  otlp_protocol_t proto;
  size_t batch;
  uint64_t interval_ms, timeout_ms;

  buf_t items;  /* the queued spans, encoded (otlp_encode_item) */
  size_t *ends; /* ends[i]: where item i ends in items; cap of them */
  size_t cap, len;

  uv_timer_t tick;     /* sends a batch every interval; started at 0 to send now */
  uv_timer_t deadline; /* of the request under way */

  /* The request under way. */
  int busy;    /* its lookup or socket is not released yet */
  int settled; /* its outcome is counted */
  int gai_pending, gai_cancelled, tcp_open;
  uv_getaddrinfo_t gai;
  uv_tcp_t tcp;
  uv_connect_t conn;
  uv_write_t wr;
  buf_t head_buf, body, tail; /* the request: HTTP head and the envelope's start, items, envelope's end */
  size_t skip;                 /* leading bytes of body not sent */
  http_parser parser;
  int complete;
  size_t got;
  char rbuf[4096];

  int flushing, closing, finishing, handles;
  otlp_exporter_stats_t st;
  otlp_exporter_state_cb state_cb;
  void *state_ud;
  otlp_exporter_close_cb close_cb;
  void *close_ud;
};

static void ex__kick(otlp_exporter_t *ex);
static void ex__release(otlp_exporter_t *ex);

static char *ex__strndup(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (!d) return NULL;
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

static char *ex__errf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *ex__errf(const char *fmt, ...) {
  buf_t b;
  buf_init(&b);
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  buf_reserve(&b, (size_t)n);
  va_start(ap, fmt);
  vsnprintf(b.data, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b.len = (size_t)n;
  return buf_steal(&b, NULL);
}

static int ex__bad_char(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] <= 0x20 || s[i] == 0x7f) return 1;
  return 0;
}

/* Reads "http://host[:port][/path]" into ex. Returns NULL, or the error. */
static char *ex__parse_url(otlp_exporter_t *ex, const char *url) {
  if (!url || !*url) return ex__errf("the OTLP endpoint is empty: give http://host:port/path, e.g. http://127.0.0.1:4318/v1/traces");
  if (strncasecmp(url, "https://", 8) == 0)
    return ex__errf("OTLP endpoint %s: https is not supported; use http:// (e.g. a collector on the same host)", url);
  if (strncasecmp(url, "http://", 7) != 0)
    return ex__errf("OTLP endpoint %s: expected http://host:port/path (OTLP over HTTP with JSON)", url);
  const char *a = url + 7;
  size_t alen = strcspn(a, "/?#");
  const char *rest = a + alen;
  if (strpbrk(rest, "?#")) return ex__errf("OTLP endpoint %s: a query or fragment is not supported", url);
  if (ex__bad_char(url, strlen(url))) return ex__errf("OTLP endpoint %s: spaces or control characters in the URL", url);
  if (memchr(a, '@', alen)) return ex__errf("OTLP endpoint %s: user names in the URL are not supported", url);
  const char *h = a, *colon;
  size_t hlen;
  if (alen && a[0] == '[') {
    const char *close = memchr(a, ']', alen);
    if (!close) return ex__errf("OTLP endpoint %s: an IPv6 address without its closing ']'", url);
    h = a + 1;
    hlen = (size_t)(close - h);
    colon = close + 1 < a + alen ? close + 1 : NULL;
    if (colon && *colon != ':') return ex__errf("OTLP endpoint %s: expected ':port' after the IPv6 address", url);
  } else {
    colon = memchr(a, ':', alen);
    hlen = colon ? (size_t)(colon - a) : alen;
  }
  if (hlen == 0) return ex__errf("OTLP endpoint %s: no host", url);
  long port = 80;
  if (colon) {
    size_t plen = (size_t)(a + alen - colon - 1);
    char digits[8] = {0};
    if (plen == 0 || plen > 5 || strspn(colon + 1, "0123456789") < plen)
      return ex__errf("OTLP endpoint %s: the port is not a number from 1 to 65535", url);
    memcpy(digits, colon + 1, plen);
    port = strtol(digits, NULL, 10);
    if (port < 1 || port > 65535) return ex__errf("OTLP endpoint %s: the port is not a number from 1 to 65535", url);
  }
  snprintf(ex->port, sizeof ex->port, "%ld", port);
  ex->host = ex__strndup(h, hlen);
  ex->authority = ex__strndup(a, alen);
  /* A bare endpoint gets the traces path, as OTEL_EXPORTER_OTLP_ENDPOINT does. */
  ex->path = strdup(*rest && strcmp(rest, "/") ? rest : OTLP_DEFAULT_PATH);
  if (!ex->host || !ex->authority || !ex->path) return ex__errf("out of memory reading the OTLP endpoint");
  return NULL;
}

static void ex__free(otlp_exporter_t *ex) {
  buf_free(&ex->items);
  free(ex->ends);
  free(ex->host);
  free(ex->authority);
  free(ex->path);
  free(ex->runner);
  buf_free(&ex->head_buf);
  buf_free(&ex->body);
  buf_free(&ex->tail);
  free(ex);
}

static void ex__on_tick(uv_timer_t *t);

char *otlp_endpoint_check(const char *url) {
  otlp_exporter_t *ex = calloc(1, sizeof *ex);
  if (!ex) return ex__errf("out of memory reading the OTLP endpoint");
  buf_init(&ex->head_buf);
  buf_init(&ex->body);
  buf_init(&ex->tail);
  buf_init(&ex->items);
  char *err = ex__parse_url(ex, url);
  ex__free(ex);
  return err;
}

otlp_exporter_t *otlp_exporter_new(uv_loop_t *loop, const char *url, size_t cap, char **err) {
  *err = NULL;
  otlp_exporter_t *ex = calloc(1, sizeof *ex);
  if (!ex) {
    *err = ex__errf("out of memory creating the OTLP exporter");
    return NULL;
  }
  ex->loop = loop;
  ex->cap = cap ? cap : OTLP_EXPORT_CAP;
  ex->batch = OTLP_EXPORT_BATCH < ex->cap ? OTLP_EXPORT_BATCH : ex->cap;
  ex->interval_ms = OTLP_EXPORT_INTERVAL_MS;
  ex->timeout_ms = OTLP_EXPORT_TIMEOUT_MS;
  buf_init(&ex->head_buf);
  buf_init(&ex->body);
  buf_init(&ex->tail);
  buf_init(&ex->items);
  if ((*err = ex__parse_url(ex, url)) != NULL) {
    ex__free(ex);
    return NULL;
  }
  int port = atoi(ex->port);
  if (uv_ip4_addr(ex->host, port, (struct sockaddr_in *)&ex->addr) == 0 ||
      uv_ip6_addr(ex->host, port, (struct sockaddr_in6 *)&ex->addr) == 0)
    ex->numeric = 1;
  ex->ends = calloc(ex->cap, sizeof *ex->ends);
  if (!ex->ends) {
    *err = ex__errf("out of memory for an OTLP queue of %zu spans", ex->cap);
    ex__free(ex);
    return NULL;
  }
  uv_timer_init(loop, &ex->tick);
  uv_timer_init(loop, &ex->deadline);
  ex->tick.data = ex->deadline.data = ex;
  ex->handles = 2;
  uv_timer_start(&ex->tick, ex__on_tick, ex->interval_ms, ex->interval_ms);
  return ex;
}

void otlp_exporter_set_runner(otlp_exporter_t *ex, const char *runner) {
  free(ex->runner);
  ex->runner = runner ? strdup(runner) : NULL;
}

void otlp_exporter_set_protocol(otlp_exporter_t *ex, otlp_protocol_t proto) {
  if (proto == ex->proto) return;
  ex->proto = proto;
  /* what is queued was encoded for the other protocol: it cannot go */
  ex->st.dropped += ex->len;
  ex->len = 0;
  buf_reset(&ex->items);
}

void otlp_exporter_set_timing(otlp_exporter_t *ex, size_t batch, uint64_t interval_ms, uint64_t timeout_ms) {
  if (batch) ex->batch = batch < ex->cap ? batch : ex->cap;
  if (timeout_ms) ex->timeout_ms = timeout_ms;
  if (interval_ms && interval_ms != ex->interval_ms) {
    ex->interval_ms = interval_ms;
    if (!ex->closing) uv_timer_start(&ex->tick, ex__on_tick, interval_ms, interval_ms);
  }
}

void otlp_exporter_on_state(otlp_exporter_t *ex, otlp_exporter_state_cb cb, void *ud) {
  ex->state_cb = cb;
  ex->state_ud = ud;
}

int otlp_exporter_add(otlp_exporter_t *ex, const otlp_span_t *span) {
  if (ex->closing || ex->len >= ex->cap) {
    ex->st.dropped++;
    return -ENOBUFS;
  }
  otlp_encode_item(&ex->items, ex->proto, span);
  ex->ends[ex->len++] = ex->items.len;
  /* A full batch goes now, but from the loop: the caller only queues. */
  if (ex->len == ex->batch && !ex->busy) ex__kick(ex);
  return 0;
}

int otlp_exporter_refuses(otlp_exporter_t *ex) {
  if (!ex->closing && ex->len < ex->cap) return 0;
  ex->st.dropped++;
  return 1;
}

void otlp_exporter_flush(otlp_exporter_t *ex) {
  if (ex->closing || ex->len == 0) return;
  ex->flushing = 1;
  if (!ex->busy) ex__kick(ex);
}

int otlp_exporter_idle(const otlp_exporter_t *ex) { return ex->len == 0 && !ex->busy; }

void otlp_exporter_stats(const otlp_exporter_t *ex, otlp_exporter_stats_t *out) {
  *out = ex->st;
  out->queued = ex->len;
}

/* Runs the tick timer's callback on the next loop turn. */
static void ex__kick(otlp_exporter_t *ex) {
  if (!ex->finishing) uv_timer_start(&ex->tick, ex__on_tick, 0, ex->interval_ms);
}

/* Counts the request's outcome once; the first failure while closing gives
 * up on what is still queued. */
static void ex__settle(otlp_exporter_t *ex, int ok, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void ex__settle(otlp_exporter_t *ex, int ok, const char *fmt, ...) {
  if (ex->settled) return;
  ex->settled = 1;
  uv_timer_stop(&ex->deadline);
  size_t n = ex->st.in_flight;
  ex->st.in_flight = 0;
  ex->st.requests++;
  if (ok) {
    ex->st.sent += n;
    if (ex->st.failing) {
      ex->st.failing = 0;
      if (ex->state_cb) ex->state_cb(ex->state_ud, 0, "");
    }
    return;
  }
  ex->st.failed += n;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ex->st.last_error, sizeof ex->st.last_error, fmt, ap);
  va_end(ap);
  if (!ex->st.failing) {
    ex->st.failing = 1;
    if (ex->state_cb) ex->state_cb(ex->state_ud, 1, ex->st.last_error);
  }
  if (ex->closing) {
    ex->st.failed += ex->len;
    ex->len = 0;
    buf_reset(&ex->items);
  }
}

static void ex__on_handle_closed(uv_handle_t *h) {
  otlp_exporter_t *ex = h->data;
  if (--ex->handles > 0) return;
  otlp_exporter_stats_t final;
  otlp_exporter_stats(ex, &final);
  otlp_exporter_close_cb cb = ex->close_cb;
  void *ud = ex->close_ud;
  ex__free(ex);
  if (cb) cb(ud, &final);
}

static void ex__finish_close(otlp_exporter_t *ex) {
  if (ex->finishing) return;
  ex->finishing = 1;
  uv_close((uv_handle_t *)&ex->tick, ex__on_handle_closed);
  uv_close((uv_handle_t *)&ex->deadline, ex__on_handle_closed);
}

static void ex__on_tcp_closed(uv_handle_t *h) {
  otlp_exporter_t *ex = h->data;
  ex->tcp_open = 0;
  ex__release(ex);
}

/* Frees what the settled request still holds; once nothing is left, the
 * next batch may go. */
static void ex__release(otlp_exporter_t *ex) {
  if (ex->gai_pending && !ex->gai_cancelled) {
    ex->gai_cancelled = 1;
    uv_cancel((uv_req_t *)&ex->gai); /* the lookup may be running: its callback comes either way */
  }
  if (ex->tcp_open && !uv_is_closing((uv_handle_t *)&ex->tcp)) uv_close((uv_handle_t *)&ex->tcp, ex__on_tcp_closed);
  if (ex->gai_pending || ex->tcp_open) return;
  ex->busy = 0;
  if (ex->len >= ex->batch || (ex->len && (ex->flushing || ex->closing))) ex__kick(ex);
  else if (ex->closing) ex__finish_close(ex);
}

static void ex__fail(otlp_exporter_t *ex, const char *what, int status) {
  ex__settle(ex, 0, "%s %s:%s: %s", what, ex->host, ex->port, uv_strerror(status));
  ex__release(ex);
}

static void ex__on_deadline(uv_timer_t *t) {
  otlp_exporter_t *ex = t->data;
  ex__settle(ex, 0, "no answer from %s within %llu ms", ex->authority, (unsigned long long)ex->timeout_ms);
  ex__release(ex);
}

static int ex__on_message_complete(http_parser *p) {
  otlp_exporter_t *ex = p->data;
  if (p->status_code < 200) return 0; /* an interim 1xx: the answer follows */
  ex->complete = 1;
  http_parser_pause(p, 1); /* whatever follows the answer is not read */
  return 0;
}

static const http_parser_settings ex__settings = {.on_message_complete = ex__on_message_complete};

static void ex__answered(otlp_exporter_t *ex) {
  unsigned code = ex->parser.status_code;
  if (code >= 200 && code < 300) ex__settle(ex, 1, "%s", "");
  else ex__settle(ex, 0, "%s answered HTTP %u to POST %s", ex->authority, code, ex->path);
  ex__release(ex);
}

static void ex__alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  otlp_exporter_t *ex = h->data;
  *b = uv_buf_init(ex->rbuf, sizeof ex->rbuf);
}

static void ex__on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
  otlp_exporter_t *ex = s->data;
  if (ex->settled || nread == 0) return;
  if (nread > 0) {
    ex->got += (size_t)nread;
    http_parser_execute(&ex->parser, &ex__settings, b->base, (size_t)nread);
  } else if (nread == UV_EOF) {
    http_parser_execute(&ex->parser, &ex__settings, NULL, 0); /* ends a body that runs to the close */
  } else {
    ex__fail(ex, "reading the answer of", (int)nread);
    return;
  }
  if (ex->complete) {
    ex__answered(ex);
  } else if (HTTP_PARSER_ERRNO(&ex->parser) != HPE_OK) {
    ex__settle(ex, 0, "%s sent a malformed HTTP answer (%s)", ex->authority,
               http_errno_description(HTTP_PARSER_ERRNO(&ex->parser)));
    ex__release(ex);
  } else if (nread == UV_EOF) {
    ex__settle(ex, 0, "%s closed the connection before answering", ex->authority);
    ex__release(ex);
  } else if (ex->got > OTLP_RESPONSE_MAX) {
    ex__settle(ex, 0, "%s sent an answer over %d bytes", ex->authority, OTLP_RESPONSE_MAX);
    ex__release(ex);
  }
}

static void ex__on_write(uv_write_t *w, int status) {
  otlp_exporter_t *ex = w->data;
  if (status < 0 && !ex->settled) ex__fail(ex, "sending spans to", status);
}

static void ex__on_connect(uv_connect_t *c, int status) {
  otlp_exporter_t *ex = c->data;
  if (ex->settled) return;
  if (status < 0) {
    ex__fail(ex, "cannot connect to", status);
    return;
  }
  http_parser_init(&ex->parser, HTTP_RESPONSE);
  ex->parser.data = ex;
  uv_buf_t bufs[3] = {uv_buf_init(ex->head_buf.data, (unsigned)ex->head_buf.len),
                      uv_buf_init(ex->body.data + ex->skip, (unsigned)(ex->body.len - ex->skip)),
                      uv_buf_init(ex->tail.data, (unsigned)ex->tail.len)};
  ex->wr.data = ex;
  int r = uv_write(&ex->wr, (uv_stream_t *)&ex->tcp, bufs, ex->tail.len ? 3 : 2, ex__on_write);
  if (r == 0) r = uv_read_start((uv_stream_t *)&ex->tcp, ex__alloc, ex__on_read);
  if (r < 0) ex__fail(ex, "sending spans to", r);
}

/* The first IPv4 address if there is one: "localhost" often lists ::1
 * first, and collectors are often told to listen on 0.0.0.0. */
static const struct addrinfo *ex__pick(const struct addrinfo *res) {
  for (const struct addrinfo *a = res; a; a = a->ai_next)
    if (a->ai_family == AF_INET) return a;
  return res;
}

static void ex__connect(otlp_exporter_t *ex, const struct sockaddr *addr) {
  uv_tcp_init(ex->loop, &ex->tcp);
  ex->tcp.data = ex;
  ex->tcp_open = 1;
  ex->conn.data = ex;
  int r = uv_tcp_connect(&ex->conn, &ex->tcp, addr, ex__on_connect);
  if (r < 0) ex__fail(ex, "cannot connect to", r);
}

static void ex__on_resolved(uv_getaddrinfo_t *g, int status, struct addrinfo *res) {
  otlp_exporter_t *ex = g->data;
  ex->gai_pending = 0;
  if (ex->settled || status < 0) {
    if (!ex->settled) ex__fail(ex, "cannot resolve", status);
    else ex__release(ex);
    uv_freeaddrinfo(res);
    return;
  }
  ex__connect(ex, ex__pick(res)->ai_addr);
  uv_freeaddrinfo(res);
}

/* Moves the first n queued items into body: the whole queue by swapping
 * the buffers (the usual case: a full batch goes as soon as it fills), a
 * part of it by a copy and a move of the rest to the front. */
static void ex__take(otlp_exporter_t *ex, size_t n) {
  size_t bytes = ex->ends[n - 1];
  buf_reset(&ex->body);
  if (n == ex->len) {
    buf_t t = ex->body;
    ex->body = ex->items;
    ex->items = t;
  } else {
    buf_add(&ex->body, ex->items.data, bytes);
    memmove(ex->items.data, ex->items.data + bytes, ex->items.len - bytes);
    ex->items.len -= bytes;
    for (size_t i = n; i < ex->len; i++) ex->ends[i - n] = ex->ends[i] - bytes;
  }
  ex->len -= n;
}

/* Takes up to a batch of spans off the queue and starts the request:
 * lookup, connect, write, read the answer, all under one deadline. */
static void ex__send(otlp_exporter_t *ex) {
  size_t n = ex->len < ex->batch ? ex->len : ex->batch;
  ex__take(ex, n);
  buf_reset(&ex->head_buf);
  buf_reset(&ex->tail);
  buf_t env; /* the envelope's start, measured before the HTTP head is written */
  buf_init(&env);
  ex->skip = otlp_encode_wrap(&env, &ex->tail, ex->proto, ex->runner, ex->body.len);
  buf_printf(&ex->head_buf,
             "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: luster\r\nContent-Type: %s\r\n"
             "Content-Length: %zu\r\nConnection: close\r\n\r\n",
             ex->path, ex->authority, otlp_content_type(ex->proto), env.len + ex->body.len - ex->skip + ex->tail.len);
  buf_add(&ex->head_buf, env.data, env.len);
  buf_free(&env);
  ex->busy = 1;
  ex->settled = ex->complete = 0;
  ex->got = 0;
  ex->gai_cancelled = 0;
  ex->st.in_flight = n;
  uv_timer_start(&ex->deadline, ex__on_deadline, ex->timeout_ms, 0);
  if (ex->numeric) {
    ex__connect(ex, (const struct sockaddr *)&ex->addr);
    return;
  }
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  ex->gai.data = ex;
  int r = uv_getaddrinfo(ex->loop, &ex->gai, ex__on_resolved, ex->host, ex->port, &hints);
  if (r < 0) ex__fail(ex, "cannot resolve", r);
  else ex->gai_pending = 1;
}

static void ex__on_tick(uv_timer_t *t) {
  otlp_exporter_t *ex = t->data;
  if (ex->busy) return;
  if (ex->len > 0) ex__send(ex);
  else if (ex->closing) ex__finish_close(ex);
  else ex->flushing = 0;
}

void otlp_exporter_close(otlp_exporter_t *ex, otlp_exporter_close_cb cb, void *ud) {
  if (ex->closing) return;
  ex->closing = 1;
  ex->close_cb = cb;
  ex->close_ud = ud;
  if (!ex->busy) ex__kick(ex);
}
