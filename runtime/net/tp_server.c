/* tp_server.c - the listening side of the runner transport: accepting
 * connections, the server half of the handshake, requests in and their
 * replies, and the back-pressure that pauses a connection's reading. */
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loop/log.h"
#include "net/transport_int.h"

/* --- requests in and replies out ----------------------------------------- */

/* Reading (and decoding) pauses while the peer's replies pile up unwritten
 * or too many of its requests wait for replies, and resumes at half, so a
 * fast sender or a slow reader cannot grow the runner's memory without
 * bound. Frames already read wait in rbuf; the check handler decodes them
 * (not this function: it runs inside tp_reply, maybe inside a decode). */
void tp__in_pressure(tp_conn_t *c) {
  if (c->closing || c->state != TP_S_READY) return;
  size_t unsent = c->out.len + c->wbuf.len, high = c->tp->high_water;
  if (unsent > high || c->nin >= TP_MAX_INBOUND) {
    c->paused = 1;
    tp__stop_reading(c);
  } else if (c->paused && unsent <= high / 2 && c->nin <= TP_MAX_INBOUND / 2) {
    c->paused = 0;
    tp__start_reading(c);
    if (c->rbuf.len) {
      c->reprocess = 1;
      tp__mark_dirty(c);
    }
  }
}

static void tp__inbound_unlink(tp_inbound_t *in) {
  tp_conn_t *c = in->conn;
  if (in->prev) in->prev->next = in->next; else c->in_head = in->next;
  if (in->next) in->next->prev = in->prev; else c->in_tail = in->prev;
  in->prev = in->next = NULL;
  in->conn = NULL;
  c->nin--;
}

void tp__in_closed(tp_conn_t *c) {
  transport_t *t = c->tp;
  if (c->linked) {
    if (c->prev) c->prev->next = c->next; else t->conns_in = c->next;
    if (c->next) c->next->prev = c->prev;
    t->nconns_in--;
    t->st.conns_in--;
    c->linked = 0;
  }
  t->pending_out -= c->out.len + c->wbuf.len;
  /* Popped one at a time: on_abandoned may reply to (or be told about) any
   * other request of this connection. */
  while (c->in_head) {
    tp_inbound_t *in = c->in_head;
    tp__inbound_unlink(in);
    in->abandoning = 1;
    if (t->on_abandoned) t->on_abandoned(t->ud, in);
    free(in);
  }
}

void tp_inbound_set_ud(tp_inbound_t *in, void *ud) { in->ud = ud; }

void *tp_inbound_ud(const tp_inbound_t *in) { return in->ud; }

/* A reply that would break the peer's frame limit becomes a short one the
 * peer can read, so its caller learns why instead of losing the connection. */
void tp_reply(tp_inbound_t *in, uint8_t kind, const char *body, size_t len) {
  if (!in) return;
  tp_conn_t *c = in->conn;
  if (!c) {
    if (!in->abandoning) free(in); /* detached: its connection is gone */
    return;
  }
  tp__inbound_unlink(in);
  char note[160];
  frame_reply_t r = {in->corr, kind, {body, (uint32_t)len}};
  free(in);
  if (c->closing) return;
  transport_t *t = c->tp;
  if (len > UINT32_MAX || frame_reply_size(&r) - 4 > t->max_frame) {
    snprintf(note, sizeof note, "the reply (%zu bytes) exceeds the transport's max_frame (%zu bytes)", len,
             t->max_frame);
    log_warn("transport: to %s: %s; sent kind %d instead", c->remote, note, TP_KIND_TOO_LARGE);
    r.kind = TP_KIND_TOO_LARGE;
    r.body = (frame_str_t){note, (uint32_t)strlen(note)};
  }
  size_t size = frame_reply_size(&r);
  tp__out_commit(c, frame_encode_reply(tp__out_reserve(c, size), &r));
  t->st.replies_out++;
  tp__in_pressure(c);
}

/* --- the handshake and dispatch ------------------------------------------ */

static void tp__in_auth(tp_conn_t *c, const frame_auth_t *a) {
  transport_t *t = c->tp;
  char runner[64];
  tp__printable(runner, sizeof runner, a->runner.p, a->runner.n);
  uint8_t want[FRAME_PROOF];
  if (tp__proof(t, "luster-client", c->nonce, a->nonce, want) != 0) {
    tp__fail(c, &t->st.auth_failures, "could not compute the HMAC proof");
    return;
  }
  if (CRYPTO_memcmp(want, a->proof, FRAME_PROOF) != 0) {
    tp__fail(c, &t->st.auth_failures, "runner \"%s\" failed authentication: %s", runner,
             t->secret_len ? "wrong cluster secret" : "it has a cluster secret, this runner has none");
    return;
  }
  frame_auth_ok_t ok;
  if (tp__proof(t, "luster-server", a->nonce, c->nonce, ok.proof) != 0) {
    tp__fail(c, &t->st.auth_failures, "could not compute the HMAC proof");
    return;
  }
  size_t cap = FRAME_HEADER + FRAME_PROOF;
  tp__out_commit(c, frame_encode_auth_ok(tp__out_reserve(c, cap), cap, &ok));
  c->state = TP_S_READY;
  uv_timer_stop(&c->timer);
  log_debug("transport: runner \"%s\" connected from %s", runner, c->remote);
}

static void tp__in_request(tp_conn_t *c, const frame_request_t *req) {
  tp_inbound_t *in = calloc(1, sizeof *in);
  if (!in) abort();
  in->conn = c;
  in->corr = req->corr;
  in->prev = c->in_tail;
  if (c->in_tail) c->in_tail->next = in; else c->in_head = in;
  c->in_tail = in;
  c->nin++;
  c->tp->st.requests_in++;
  c->tp->on_request(c->tp->ud, in, req);
  tp__in_pressure(c);
}

void tp__dispatch_in(tp_conn_t *c, const frame_t *f) {
  transport_t *t = c->tp;
  if (c->state != TP_S_READY) {
    if (f->type == FRAME_AUTH) tp__in_auth(c, &f->u.auth);
    else tp__fail(c, &t->st.auth_failures, "sent a %s frame before authenticating", tp__frame_names[f->type]);
    return;
  }
  if (f->type == FRAME_REQUEST && t->on_request) tp__in_request(c, &f->u.request);
  else tp__fail(c, &t->st.protocol_errors, "unexpected %s frame", tp__frame_names[f->type]);
}

/* --- accepting ------------------------------------------------------------ */

/* Sends HELLO with our nonce; the peer has handshake_ms to answer with AUTH. */
static void tp__in_hello(tp_conn_t *c) {
  transport_t *t = c->tp;
  frame_hello_t h = {FRAME_VERSION, t->secret_len ? FRAME_HELLO_AUTH : 0, {0}, {t->cluster, (uint32_t)strlen(t->cluster)}};
  if (tp__random(c->nonce, FRAME_NONCE) != 0) {
    log_error("transport: no random bytes for a handshake nonce; closing the connection from %s", c->remote);
    tp__close(c, NULL, 0);
    return;
  }
  memcpy(h.nonce, c->nonce, FRAME_NONCE);
  size_t cap = FRAME_HEADER + 2 + FRAME_NONCE + 4 + h.cluster.n;
  tp__out_commit(c, frame_encode_hello(tp__out_reserve(c, cap), cap, &h));
  c->state = TP_S_AUTH;
  uv_timer_start(&c->timer, tp__timeout_cb, t->handshake_ms, 0);
  tp__start_reading(c);
}

static void tp__accept_cb(uv_stream_t *ls, int status) {
  transport_t *t = ls->data;
  if (status < 0) {
    log_warn("transport: accepting a connection failed: %s", uv_strerror(status));
    return;
  }
  tp_conn_t *c = tp__conn_new(t, TP_IN);
  if (!c) return;
  if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0 || t->stopping || t->nconns_in >= TP_MAX_CONNS_IN) {
    if (!t->stopping && t->nconns_in >= TP_MAX_CONNS_IN)
      log_warn("transport: refusing a connection: %d inbound connections already open", TP_MAX_CONNS_IN);
    tp__close(c, NULL, 0);
    return;
  }
  c->linked = 1;
  c->next = t->conns_in;
  if (t->conns_in) t->conns_in->prev = c;
  t->conns_in = c;
  t->nconns_in++;
  t->st.conns_in++;
  struct sockaddr_storage ss;
  int sslen = sizeof ss;
  memset(&ss, 0, sizeof ss);
  uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sslen);
  tp__sockname(&ss, c->remote, sizeof c->remote);
  uv_tcp_nodelay(&c->tcp, 1);
  uv_tcp_keepalive(&c->tcp, 1, TP_KEEPALIVE_S);
  tp__in_hello(c);
}

/* --- listening ------------------------------------------------------------ */

static int tp__listen_addr(uv_loop_t *loop, const char *host, int port, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof *ss);
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0) return 0;
  if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0) return 0;
  /* A name: resolved synchronously, at start-up, before the loop runs. */
  uv_getaddrinfo_t req;
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  int rc = uv_getaddrinfo(loop, &req, NULL, host, NULL, &hints);
  if (rc != 0) return rc;
  memcpy(ss, req.addrinfo->ai_addr,
         req.addrinfo->ai_addrlen < sizeof *ss ? req.addrinfo->ai_addrlen : sizeof *ss);
  uv_freeaddrinfo(req.addrinfo);
  if (ss->ss_family == AF_INET6) ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
  else ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
  return 0;
}

int tp_listen(transport_t *t, const char *host, int port, char *bound, size_t bound_len) {
  if (!t || t->stopping || t->stopped) return UV_EINVAL;
  if (t->listener) return UV_EALREADY;
  if (!t->on_request || port < 0 || port > 65535 || !host) return UV_EINVAL;
  struct sockaddr_storage ss;
  int rc = tp__listen_addr(t->loop, host, port, &ss);
  if (rc) return rc;
  uv_tcp_t *l = malloc(sizeof *l);
  if (!l) return UV_ENOMEM;
  uv_tcp_init(t->loop, l);
  l->data = t;
  if ((rc = uv_tcp_bind(l, (struct sockaddr *)&ss, 0)) != 0 ||
      (rc = uv_listen((uv_stream_t *)l, 511, tp__accept_cb)) != 0) {
    uv_close((uv_handle_t *)l, (uv_close_cb)free);
    return rc;
  }
  struct sockaddr_storage name;
  int namelen = sizeof name;
  memset(&name, 0, sizeof name);
  uv_tcp_getsockname(l, (struct sockaddr *)&name, &namelen);
  if (bound && bound_len) tp__sockname(&name, bound, bound_len);
  t->listener = l;
  return 0;
}
