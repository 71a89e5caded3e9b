/* http.c - HTTP/1.1 server.
 *
 * Requests on one connection are queued in arrival order and answered in
 * that order, however their replies arrive (pipelining). Reading pauses when
 * too many requests are in flight or too much output is unsent, so neither a
 * fast sender nor a slow reader can make the runner buffer without bound.
 * One timer per connection covers both slow requests (slowloris) and idle
 * keep-alive connections. */
#include "net/http.h"

#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/prom.h"
#include "loop/log.h"
#include "net/sock.h"

/* Everything mutable of the HTTP layer lives here, one per server: two
 * runtimes in one process (one loop and thread each) share nothing. */
struct http_server_s {
  uv_tcp_t tcp;
  uv_loop_t *loop;
  http_limits_t lim;
  http_request_cb on_request;
  void *ud; /* on_request's first argument */
  http_conn_t *conns;
  int nconns;
  int stopping;
  int port; /* as bound */
  http_stats_t st;
  /* One read buffer for all of this server's connections: a read is parsed
   * (or its rest copied to the connection's `pending`) before the loop
   * reads again, so nothing points into it between callbacks. */
  char readbuf[65536];
};

struct http_conn_s {
  uv_tcp_t tcp;
  uv_timer_t timer;
  http_parser parser;
  http_server_t *srv;
  http_conn_t *prev, *next;
  http_req_t *head, *tail; /* in arrival order */
  http_req_t *cur;         /* being parsed */
  int inflight;
  int closing;
  int handles;
  int reading;
  int reject_status;
  const char *reject_msg;
  int rejected;  /* answered an unparseable request: read no more */
  buf_t hvalue;  /* the header value being received, which may span reads */
  buf_t pending; /* bytes read but not parsed: parsing paused at a limit */
  int parsing;   /* inside http__parse: requests are being handed out */
};

#define HTTP_WRITE_MAX_BUFS 32
#define HTTP_MAX_UNSENT (1u << 20)

typedef struct http_write_s {
  uv_write_t w;
  int n;
  char *bufs[HTTP_WRITE_MAX_BUFS];
} http_write_t;

const http_stats_t *http_stats(const http_server_t *s) {
  static const http_stats_t none; /* no server (--http none): all zero */
  return s ? &s->st : &none;
}

const char *http_method_name(int method) { return http_method_str((enum http_method)method); }

static const char *http__reason(int status) {
  switch (status) {
  case 100: return "Continue";
  case 200: return "OK";
  case 202: return "Accepted";
  case 400: return "Bad Request";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 413: return "Payload Too Large";
  case 414: return "URI Too Long";
  case 422: return "Unprocessable Entity";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  default: return "Status";
  }
}

static void http__conn_close(http_conn_t *c);
static void http__read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b);
static void http__alloc_cb(uv_handle_t *h, size_t sz, uv_buf_t *b);

static void http__req_free(http_req_t *r) {
  buf_free(&r->url);
  buf_free(&r->body);
  buf_free(&r->headers);
  buf_free(&r->hname);
  buf_free(&r->resp);
  free(r);
}

static void http__reject(http_conn_t *c, int status, const char *msg);

static void http__timeout_cb(uv_timer_t *t) {
  http_conn_t *c = t->data;
  if (c->closing || uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > 0) {
    if (!uv_is_closing((uv_handle_t *)&c->tcp) && sock_writable(&c->tcp)) {
      /* The client did read; this loop was too busy to write since. */
      uv_timer_start(t, http__timeout_cb, c->srv->lim.request_timeout_ms, 0);
      return;
    }
    /* No progress on our answers for --request-timeout (or on the last
     * answer of a connection that is shutting down): the client stopped
     * reading. A 408 or a graceful shutdown would only queue behind the
     * answers that never drain, so drop them and the connection, with a
     * reset: the kernel would otherwise keep the unread answers while it
     * waits for a window the client never opens. */
    sock_reset_on_close(&c->tcp);
    http__conn_close(c);
    return;
  }
  if (c->cur && !c->rejected) {
    /* A request started and did not finish in time (slowloris): say so,
     * then close. An idle keep-alive connection just closes. */
    http__reject(c, 408, "the request was not received completely within --request-timeout");
    return;
  }
  http__conn_close(c);
}

/* The timer watches whichever wait is the client's: a request being received,
 * or an idle keep-alive connection. Requests waiting on entities are bounded
 * by their call deadlines instead. */
static void http__timer_update(http_conn_t *c) {
  if (c->closing) return;
  if (c->cur || uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > 0)
    /* Receiving a request, or answers the client has not read yet: either
     * way the client must make progress within the request timeout, so one
     * that stops reading cannot pin the unsent answers in memory. */
    uv_timer_start(&c->timer, http__timeout_cb, c->srv->lim.request_timeout_ms, 0);
  else if (!c->head) uv_timer_start(&c->timer, http__timeout_cb, c->srv->lim.idle_timeout_ms, 0);
  else uv_timer_stop(&c->timer);
}

static int http__want_more(http_conn_t *c) {
  size_t unsent = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
  return c->inflight < c->srv->lim.max_pipelined && unsent < HTTP_MAX_UNSENT;
}

static void http__parse(http_conn_t *c, const char *data, size_t n);

/* Parses the bytes left over when parsing paused, now that there is room. */
static void http__parse_pending(http_conn_t *c) {
  size_t len;
  char *data = buf_steal(&c->pending, &len);
  http_parser_pause(&c->parser, 0);
  http__parse(c, data, len);
  free(data);
}

static void http__reading(http_conn_t *c) {
  if (c->closing || c->rejected) return;
  int want = http__want_more(c);
  while (want && c->pending.len > 0 && !c->parsing) {
    http__parse_pending(c);
    if (c->closing || c->rejected) return;
    want = http__want_more(c);
  }
  if (c->pending.len > 0) want = 0; /* those first */
  if (want && !c->reading) {
    uv_read_start((uv_stream_t *)&c->tcp, http__alloc_cb, http__read_cb);
    c->reading = 1;
  } else if (!want && c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
}

static void http__write_cb(uv_write_t *w, int status) {
  http_write_t *hw = (http_write_t *)w;
  http_conn_t *c = w->data;
  for (int i = 0; i < hw->n; i++) free(hw->bufs[i]);
  free(hw);
  if (status < 0 || c->closing) return;
  http__reading(c);
  http__timer_update(c); /* a completed write is progress */
}

static void http__shutdown_cb(uv_shutdown_t *sr, int status) {
  http_conn_t *c = sr->data;
  free(sr);
  http__conn_close(c);
}

/* Sends "100 Continue" to the request at the head of the queue if it asked
 * for one and is still waiting for its body. Only the head: an interim
 * response sent while an earlier pipelined request is unanswered would be
 * read by the client as belonging to that earlier request. */
static void http__continue(http_conn_t *c) {
  static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
  http_req_t *r = c->head;
  if (c->closing || !r || r != c->cur || r->expect_continue != 1) return;
  r->expect_continue = 2; /* sent */
  http_write_t *hw = malloc(sizeof *hw);
  if (!hw) return; /* the client sends its body after its own wait anyway */
  hw->n = 0;
  hw->w.data = c;
  uv_buf_t b = uv_buf_init((char *)cont, sizeof cont - 1); /* only read by the write */
  if (uv_write(&hw->w, (uv_stream_t *)&c->tcp, &b, 1, http__write_cb) != 0) free(hw);
}

/* Writes every answered request at the head of the queue, in order. */
static void http__flush(http_conn_t *c) {
  if (c->closing) return;
  int close_after = 0;
  while (c->head && c->head->answered && !close_after) {
    http_write_t *hw = malloc(sizeof *hw);
    uv_buf_t bufs[HTTP_WRITE_MAX_BUFS];
    hw->n = 0;
    while (c->head && c->head->answered && hw->n < HTTP_WRITE_MAX_BUFS) {
      http_req_t *r = c->head;
      size_t len;
      char *p = buf_steal(&r->resp, &len);
      hw->bufs[hw->n] = p;
      bufs[hw->n] = uv_buf_init(p, (unsigned)len);
      hw->n++;
      c->head = r->next;
      if (!c->head) c->tail = NULL;
      if (r->complete) c->inflight--;
      close_after = r->close_after;
      if (c->cur == r) c->cur = NULL;
      http__req_free(r);
      if (close_after) break;
    }
    hw->w.data = c;
    if (uv_write(&hw->w, (uv_stream_t *)&c->tcp, bufs, (unsigned)hw->n, http__write_cb) != 0) {
      for (int i = 0; i < hw->n; i++) free(hw->bufs[i]);
      free(hw);
      http__conn_close(c);
      return;
    }
  }
  if (close_after) {
    /* Answered, then done with this client: drop what it pipelined after. */
    while (c->head) {
      http_req_t *r = c->head;
      c->head = r->next;
      if (r->on_abort && !r->answered) r->on_abort(r);
      r->conn = NULL;
      if (c->cur == r) c->cur = NULL;
      http__req_free(r);
    }
    c->tail = NULL;
    c->closing = 1; /* stop reading and answering; close once written */
    if (c->reading) { uv_read_stop((uv_stream_t *)&c->tcp); c->reading = 0; }
    /* The shutdown completes once the client has read everything; one that
     * does not within --request-timeout is dropped (http__timeout_cb). */
    uv_timer_start(&c->timer, http__timeout_cb, c->srv->lim.request_timeout_ms, 0);
    uv_shutdown_t *sr = malloc(sizeof *sr);
    sr->data = c;
    if (uv_shutdown(sr, (uv_stream_t *)&c->tcp, http__shutdown_cb) != 0) {
      free(sr);
      c->closing = 0;
      http__conn_close(c);
    }
    return;
  }
  http__continue(c);
  http__reading(c);
  http__timer_update(c);
}

/* The time from the request parsed in full to its response queued, per
 * status code; a request refused before it was parsed counts as zero. */
static void http__time(http_stats_t *st, const http_req_t *r, int status) {
  uint64_t now = uv_hrtime();
  int i = 0;
  while (i < st->ncodes && st->codes[i] != status) i++;
  if (i == st->ncodes) {
    if (i == HTTP_TIMED_CODES) return;
    st->codes[st->ncodes++] = status;
  }
  histo_observe(&st->durations[i], r->start_ns ? now - r->start_ns : 0);
}

void http_respond(http_req_t *r, int status, const char *content_type, const char *extra, const char *body,
                  size_t len) {
  if (r->answered) return;
  r->answered = 1;
  r->on_abort = NULL;
  if (!r->srv) { /* made without a server or socket (luster test's T.http): the answer stays in resp for its maker */
    buf_printf(&r->resp, "%d\r\nContent-Type: %s\r\n%s\r\n", status, content_type ? content_type : "application/json",
               extra ? extra : "");
    buf_add(&r->resp, body, len);
    return;
  }
  http_stats_t *st = &r->srv->st;
  st->by_status[status / 100 < 6 ? status / 100 : 5]++;
  http__time(st, r, status);
  http_conn_t *c = r->conn;
  if (!c) { /* its connection is gone; the request was only kept for this */
    http__req_free(r);
    return;
  }
  if (!r->keep_alive || c->srv->stopping) r->close_after = 1;
  /* A response to HEAD has the headers of the GET response and no body: a
   * body here would be read by the client as the start of the next response. */
  int head = r->complete && r->method == HTTP_HEAD;
  buf_reserve(&r->resp, (head ? 0 : len) + 160);
  buf_printf(&r->resp, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s\r\n", status,
             http__reason(status), content_type ? content_type : "application/json", len,
             r->close_after ? "Connection: close\r\n" : "", extra ? extra : "");
  if (!head) buf_add(&r->resp, body, len);
  if (c->head == r || (c->head && c->head->answered)) http__flush(c);
}

static void http__reject(http_conn_t *c, int status, const char *msg) {
  http_req_t *r = c->cur;
  if (!r) {
    r = calloc(1, sizeof *r);
    r->conn = c;
    r->srv = c->srv;
    if (c->tail) c->tail->next = r; else c->head = r;
    c->tail = r;
    c->cur = r;
  }
  c->cur = NULL;
  r->keep_alive = 0;
  /* The parser is dead after an error: whatever else the client sends is
   * not read (not even queued as more rejections) while earlier requests on
   * the connection finish; the connection closes after this answer. */
  c->rejected = 1;
  if (c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
  c->srv->st.rejected_total++;
  buf_t b;
  buf_init(&b);
  buf_adds(&b, "{\"error\":{\"kind\":\"");
  buf_adds(&b, status == 413 ? "too_large" : status == 408 ? "timeout" : "bad_request");
  buf_adds(&b, "\",\"message\":");
  buf_add_json_str(&b, msg, strlen(msg));
  buf_adds(&b, "}}");
  http_respond(r, status, NULL, NULL, b.data, b.len);
  buf_free(&b);
}

/* --- parser callbacks --------------------------------------------------- */

static int http__on_begin(http_parser *p) {
  http_conn_t *c = p->data;
  http_req_t *r = calloc(1, sizeof *r);
  if (!r) return -1;
  r->conn = c;
  r->srv = c->srv;
  buf_addc(&r->headers, '{');
  if (c->tail) c->tail->next = r; else c->head = r;
  c->tail = r;
  c->cur = r;
  http__timer_update(c);
  return 0;
}

static int http__on_url(http_parser *p, const char *at, size_t len) {
  http_conn_t *c = p->data;
  if (c->cur->url.len + len > c->srv->lim.max_url) {
    c->reject_status = 414;
    c->reject_msg = "request URL too long";
    return -1;
  }
  buf_add(&c->cur->url, at, len);
  return 0;
}

static void http__header_done(http_req_t *r, const char *value, size_t vlen) {
  if (r->nheaders > 0) buf_addc(&r->headers, ',');
  buf_add_json_str(&r->headers, r->hname.data ? r->hname.data : "", r->hname.len);
  buf_addc(&r->headers, ':');
  buf_add_json_str(&r->headers, value, vlen);
  r->nheaders++;
}

/* Header values arrive in pieces; the value is collected after the JSON
 * name, and the pair is closed when the next name or the end arrives. */
static int http__header_bytes(http_conn_t *c, size_t len) {
  http_req_t *r = c->cur;
  r->header_bytes += len;
  if (r->header_bytes > c->srv->lim.max_header_bytes || r->nheaders >= c->srv->lim.max_headers) {
    c->reject_status = 431;
    c->reject_msg = "request headers too large";
    return -1;
  }
  return 0;
}

/* The value being received lives on the connection, not in a buffer shared
 * by all connections: a value that arrives in two reads must not take in
 * bytes of another connection's headers parsed in between. */
static void http__finish_header(http_conn_t *c, http_req_t *r) {
  if (r->hstate == 2) {
    buf_t *v = &c->hvalue;
    if (r->hname.len == 6 && memcmp(r->hname.data, "expect", 6) == 0 && v->len == 12 &&
        strncasecmp(v->data, "100-continue", 12) == 0)
      r->expect_continue = 1;
    http__header_done(r, v->data ? v->data : "", v->len);
    buf_reset(v);
    buf_reset(&r->hname);
  }
  r->hstate = 0;
}

static int http__on_hfield(http_parser *p, const char *at, size_t len) {
  http_conn_t *c = p->data;
  http_req_t *r = c->cur;
  if (http__header_bytes(c, len)) return -1;
  if (r->hstate == 2) http__finish_header(c, r);
  r->hstate = 1;
  for (size_t i = 0; i < len; i++) {
    char ch = at[i];
    buf_addc(&r->hname, (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch);
  }
  return 0;
}

static int http__on_hvalue(http_parser *p, const char *at, size_t len) {
  http_conn_t *c = p->data;
  http_req_t *r = c->cur;
  if (http__header_bytes(c, len)) return -1;
  if (r->hstate != 2) buf_reset(&c->hvalue);
  r->hstate = 2;
  buf_add(&c->hvalue, at, len);
  return 0;
}

static int http__on_headers_complete(http_parser *p) {
  http_conn_t *c = p->data;
  http_req_t *r = c->cur;
  http__finish_header(c, r);
  buf_addc(&r->headers, '}');
  if ((p->flags & F_CONTENTLENGTH) && p->content_length > c->srv->lim.max_body) {
    c->reject_status = 413;
    c->reject_msg = "request body too large";
    return -1;
  }
  /* Behind unanswered requests, it goes out once they are (http__flush). */
  if (r->expect_continue) http__continue(c);
  return 0;
}

static int http__on_body(http_parser *p, const char *at, size_t len) {
  http_conn_t *c = p->data;
  http_req_t *r = c->cur;
  if (r->body.len + len > c->srv->lim.max_body) {
    c->reject_status = 413;
    c->reject_msg = "request body too large";
    return -1;
  }
  buf_add(&r->body, at, len);
  return 0;
}

static int http__on_complete(http_parser *p) {
  http_conn_t *c = p->data;
  http_req_t *r = c->cur;
  c->cur = NULL;
  r->complete = 1;
  r->start_ns = uv_hrtime();
  r->method = p->method;
  r->keep_alive = http_should_keep_alive(p);
  if (!r->url.data) buf_adds(&r->url, "/");
  if (!r->body.data) buf_reserve(&r->body, 0);
  c->inflight++;
  c->srv->st.requests_total++;
  http__timer_update(c);
  c->srv->on_request(c->srv->ud, r);
  /* Limits hold per request, not per read: one 64 KiB read can hold a
   * thousand small requests, each asking for a large answer. Parsing stops
   * here and the rest of the read waits in `pending` (http__reading). */
  if (!c->closing && !http__want_more(c)) http_parser_pause(p, 1);
  return 0;
}

/* The same callbacks for every parser of every server (read-only). */
static const http_parser_settings http__settings = {
    .on_message_begin = http__on_begin,
    .on_url = http__on_url,
    .on_header_field = http__on_hfield,
    .on_header_value = http__on_hvalue,
    .on_headers_complete = http__on_headers_complete,
    .on_body = http__on_body,
    .on_message_complete = http__on_complete,
};

/* --- connections -------------------------------------------------------- */

static void http__alloc_cb(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  (void)sz;
  http_conn_t *c = h->data;
  *b = uv_buf_init(c->srv->readbuf, sizeof c->srv->readbuf);
}

static void http__read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  http_conn_t *c = s->data;
  if (n < 0) {
    http__conn_close(c); /* EOF or error: answers to this client are moot */
    return;
  }
  if (n == 0 || c->closing) return;
  http__parse(c, b->base, (size_t)n);
  http__reading(c);
}

/* Feeds bytes to the parser; what is left when it pauses at a limit is kept
 * in c->pending. The caller then calls http__reading. */
static void http__parse(http_conn_t *c, const char *data, size_t n) {
  c->parsing = 1;
  size_t done = http_parser_execute(&c->parser, &http__settings, data, n);
  c->parsing = 0;
  if (c->closing) return;
  if (c->parser.http_errno == HPE_PAUSED) {
    buf_add(&c->pending, data + done, n - done);
    return;
  }
  if (c->parser.http_errno != HPE_OK || done != n) {
    if (c->reject_status) {
      http__reject(c, c->reject_status, c->reject_msg);
    } else {
      char msg[256];
      snprintf(msg, sizeof msg, "malformed HTTP request: %s",
               http_errno_description((enum http_errno)c->parser.http_errno));
      http__reject(c, 400, msg);
    }
  }
}

static void http__close_cb(uv_handle_t *h) {
  http_conn_t *c = h->data;
  if (--c->handles == 0) {
    buf_free(&c->hvalue);
    buf_free(&c->pending);
    free(c);
  }
}

static void http__conn_close(http_conn_t *c) {
  if (c->handles == 0) return;
  if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
  c->closing = 1;
  while (c->head) {
    http_req_t *r = c->head;
    c->head = r->next;
    r->conn = NULL;
    r->next = NULL;
    if (r->complete && !r->answered && r->on_abort) {
      /* The gateway learns the client left; it frees the request by
       * answering it or in on_abort. */
      http_abort_cb cb = r->on_abort;
      r->on_abort = NULL;
      cb(r);
      http__req_free(r);
    } else if (r->complete && !r->answered) {
      /* In the gateway's hands with no abort hook: freed when answered. */
    } else {
      http__req_free(r);
    }
  }
  c->tail = NULL;
  c->cur = NULL;
  http_server_t *s = c->srv;
  if (c->prev) c->prev->next = c->next; else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  s->nconns--;
  s->st.connections_open--;
  uv_close((uv_handle_t *)&c->timer, http__close_cb);
  uv_close((uv_handle_t *)&c->tcp, http__close_cb);
}

static void http__accept_cb(uv_stream_t *ls, int status) {
  http_server_t *s = ls->data;
  if (status < 0) return;
  http_conn_t *c = calloc(1, sizeof *c);
  if (!c) return;
  uv_tcp_init(s->loop, &c->tcp);
  if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0 || s->stopping || s->nconns >= s->lim.max_connections) {
    c->handles = 1;
    c->tcp.data = c;
    uv_close((uv_handle_t *)&c->tcp, http__close_cb);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  uv_timer_init(s->loop, &c->timer);
  c->handles = 2;
  c->srv = s;
  c->tcp.data = c;
  c->timer.data = c;
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->nconns++;
  s->st.connections_total++;
  s->st.connections_open++;
  http__reading(c);
  http__timer_update(c);
}

int http_server_start(http_server_t **out, uv_loop_t *loop, const char *host, int port, const http_limits_t *lim,
                      http_request_cb on_request, void *ud, char *bound, size_t boundcap) {
  struct sockaddr_storage ss;
  int rc = strchr(host, ':') ? uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss)
                             : uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
  if (rc) return rc;
  http_server_t *s = calloc(1, sizeof *s);
  if (!s) return UV_ENOMEM;
  s->loop = loop;
  s->lim = *lim;
  s->on_request = on_request;
  s->ud = ud;
  uv_tcp_init(loop, &s->tcp);
  s->tcp.data = s;
  if ((rc = uv_tcp_bind(&s->tcp, (struct sockaddr *)&ss, 0)) != 0 ||
      (rc = uv_listen((uv_stream_t *)&s->tcp, 1024, http__accept_cb)) != 0) {
    uv_close((uv_handle_t *)&s->tcp, (uv_close_cb)free);
    return rc;
  }
  struct sockaddr_storage name;
  int namelen = sizeof name;
  uv_tcp_getsockname(&s->tcp, (struct sockaddr *)&name, &namelen);
  char ip[64] = "?";
  int bport = 0;
  if (name.ss_family == AF_INET6) {
    uv_ip6_name((struct sockaddr_in6 *)&name, ip, sizeof ip);
    bport = ntohs(((struct sockaddr_in6 *)&name)->sin6_port);
    snprintf(bound, boundcap, "[%s]:%d", ip, bport);
  } else {
    uv_ip4_name((struct sockaddr_in *)&name, ip, sizeof ip);
    bport = ntohs(((struct sockaddr_in *)&name)->sin_port);
    snprintf(bound, boundcap, "%s:%d", ip, bport);
  }
  s->port = bport;
  *out = s;
  return 0;
}

int http_server_port(const http_server_t *s) { return s->port; }

void http_server_stop(http_server_t *s) {
  if (s->stopping) return;
  s->stopping = 1;
  uv_close((uv_handle_t *)&s->tcp, NULL);
  /* Idle keep-alive connections close now; busy ones after their answers. */
  http_conn_t *c = s->conns;
  while (c) {
    http_conn_t *next = c->next;
    if (!c->head && !c->cur) http__conn_close(c);
    c = next;
  }
}

void http_server_free(http_server_t *s) {
  while (s->conns) http__conn_close(s->conns);
  free(s);
}

int http_req_from_loopback(const http_req_t *r) {
  if (!r->conn) return 0;
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (uv_tcp_getpeername(&r->conn->tcp, (struct sockaddr *)&ss, &len) != 0) return 0;
  if (ss.ss_family == AF_INET) {
    const unsigned char *a = (const unsigned char *)&((struct sockaddr_in *)&ss)->sin_addr;
    return a[0] == 127;
  }
  if (ss.ss_family == AF_INET6) {
    const struct in6_addr *a = &((struct sockaddr_in6 *)&ss)->sin6_addr;
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a->s6_addr, mapped, 12) == 0) return a->s6_addr[12] == 127;
    return IN6_IS_ADDR_LOOPBACK(a);
  }
  return 0;
}
/* GET /metrics: requests, responses per status class, refusals, connections. */
void http_metrics(buf_t *b, const http_server_t *s) {
  const http_stats_t *hs = http_stats(s);
  prom_head(b, "luster_http_requests_total", "counter", "HTTP requests parsed.");
  buf_printf(b, "luster_http_requests_total %llu\n", (unsigned long long)hs->requests_total);
  prom_head(b, "luster_http_responses_total", "counter", "HTTP responses, per status class.");
  for (int i = 1; i < 6; i++)
    buf_printf(b, "luster_http_responses_total{class=\"%dxx\"} %llu\n", i, (unsigned long long)hs->by_status[i]);
  prom_head(b, "luster_http_request_duration_seconds", "histogram",
            "HTTP request parsed to its response queued, per status code.");
  for (int i = 0; i < hs->ncodes; i++) {
    char labels[32];
    snprintf(labels, sizeof labels, "code=\"%d\"", hs->codes[i]);
    histo_write(b, "luster_http_request_duration_seconds", labels, &hs->durations[i]);
  }
  prom_head(b, "luster_http_rejected_total", "counter",
                  "HTTP requests refused before routing (malformed, too large, too slow).");
  buf_printf(b, "luster_http_rejected_total %llu\n", (unsigned long long)hs->rejected_total);
  prom_head(b, "luster_http_connections", "gauge", "Open HTTP connections.");
  buf_printf(b, "luster_http_connections %llu\n", (unsigned long long)hs->connections_open);
}
