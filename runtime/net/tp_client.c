/* tp_client.c - the dialing side of the runner transport: the per-peer
 * state, connecting (name resolution, the client half of the handshake),
 * backoff between attempts, sending requests and matching their replies,
 * and the deferred failure and peer-down callbacks. */
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loop/log.h"
#include "core/hash.h"
#include "core/parse.h"
#include "net/transport_int.h"

/* --- waiting requests ----------------------------------------------------- */

static uint64_t tp__corr_hash(uint64_t corr) { return hash_mix64(corr); }

static int tp__req_eq(const htab_node_t *n, const void *key, size_t len) {
  (void)len;
  return TP_CONTAINER(n, tp_req_t, node)->corr == *(const uint64_t *)key;
}

static tp_req_t *tp__req_find(tp_peer_t *p, uint64_t corr) {
  htab_node_t *n = htab_find(&p->pending, tp__corr_hash(corr), tp__req_eq, &corr, sizeof corr);
  return n ? TP_CONTAINER(n, tp_req_t, node) : NULL;
}

static void tp__defer_unlink(transport_t *t, tp_req_t *r) {
  r->prev->next = r->next;
  r->next->prev = r->prev;
  r->prev = r->next = NULL;
  t->ndeferred--;
}

/* The request's callback will run from the deferred queue with `st`. */
static void tp__req_fail(tp_req_t *r, tp_status_t st, tp_why_t *why) {
  if (r->why) return; /* already failed */
  transport_t *t = r->peer->tp;
  r->st = st;
  r->why = tp__why_ref(why);
  r->prev = t->deferred.prev;
  r->next = &t->deferred;
  t->deferred.prev->next = r;
  t->deferred.prev = r;
  t->ndeferred++;
  tp__kick(t);
}

void tp__run_one_deferred(transport_t *t) {
  tp_req_t *r = t->deferred.next;
  tp__defer_unlink(t, r);
  htab_remove(&r->peer->pending, &r->node);
  tp_why_t *why = r->why;
  r->cb(r->ud, r->st, 0, why->s, why->len);
  tp__why_unref(why);
  free(r);
}

/* Only the requests failed before this turn's drain started: a callback
 * that re-sends into a failing peer gets its answer next turn instead of
 * spinning here. A callback may shut t down (and free it): the kick, which
 * outlives t, tells, so t is not read again. */
void tp__run_deferred(transport_t *t) {
  tp_kick_t *k = t->kick;
  size_t n = t->ndeferred;
  while (n-- && k->tp == t && t->ndeferred) tp__run_one_deferred(t);
}

static void tp__peer_down(tp_peer_t *p, tp_why_t *why) {
  transport_t *t = p->tp;
  tp__why_unref(p->down_why);
  p->down_why = tp__why_ref(why);
  if (p->down_queued) return;
  p->down_queued = 1;
  p->down_next = NULL;
  if (t->downs_tail) t->downs_tail->down_next = p; else t->downs = p;
  t->downs_tail = p;
  tp__kick(t);
}

/* Stops when a callback shuts t down (and maybe frees it): see above. */
void tp__run_downs(transport_t *t) {
  tp_kick_t *k = t->kick;
  while (k->tp == t && t->downs) {
    tp_peer_t *p = t->downs;
    t->downs = p->down_next;
    if (!t->downs) t->downs_tail = NULL;
    p->down_queued = 0;
    tp_why_t *why = p->down_why;
    p->down_why = NULL;
    if (t->on_peer_down) t->on_peer_down(t->ud, p->addr, why->s);
    tp__why_unref(why);
  }
}

/* --- losing a connection -------------------------------------------------- */

/* Failed attempts double the wait before the next one; a connection that
 * worked resets it, but attempts stay TP_BACKOFF_MIN_MS apart so a peer
 * that accepts and drops at once is not hammered either. */
static void tp__backoff(tp_peer_t *p, int was_ready) {
  if (was_ready) p->backoff_ms = 0;
  else p->backoff_ms = p->backoff_ms ? p->backoff_ms * 2 : TP_BACKOFF_MIN_MS;
  if (p->backoff_ms > TP_BACKOFF_MAX_MS) p->backoff_ms = TP_BACKOFF_MAX_MS;
  p->retry_at = p->last_attempt + (p->backoff_ms ? p->backoff_ms : TP_BACKOFF_MIN_MS);
}

/* A failure is logged as a warning when it differs from the previous one, so
 * a peer that stays down costs one line, not one per attempt. */
static void tp__log_out_failure(tp_peer_t *p, tp_why_t *why) {
  if (!p->last_why || strcmp(p->last_why->s, why->s) != 0) log_warn("transport: %s", why->s);
  else log_debug("transport: %s", why->s);
  tp__why_unref(p->last_why);
  p->last_why = tp__why_ref(why);
}

void tp__out_closed(tp_conn_t *c, tp_why_t *why, int notify) {
  transport_t *t = c->tp;
  tp_peer_t *p = c->peer;
  int was_ready = c->state == TP_S_READY;
  c->peer = NULL;
  if (c->counted) t->st.conns_out--;
  if (!p) return;
  p->conn = NULL;
  if (!was_ready) t->st.connect_failures++;
  tp__backoff(p, was_ready);
  if (notify) tp__log_out_failure(p, why);
  size_t i;
  for (htab_node_t *n = htab_first(&p->pending, &i); n; n = htab_next(&p->pending, n, &i)) {
    tp_req_t *r = TP_CONTAINER(n, tp_req_t, node);
    tp__req_fail(r, r->corr <= c->written_corr ? TP_LOST : TP_NOT_SENT, why);
  }
  if (notify) tp__peer_down(p, why);
}

/* --- the handshake and replies ------------------------------------------- */

static int tp__hello_problem(tp_conn_t *c, const frame_hello_t *h) {
  transport_t *t = c->tp;
  if (h->version != FRAME_VERSION) {
    tp__fail(c, &t->st.protocol_errors, "peer speaks frame version %u, this runner %u", h->version, FRAME_VERSION);
    return 1;
  }
  if (h->cluster.n != strlen(t->cluster) || memcmp(h->cluster.p, t->cluster, h->cluster.n) != 0) {
    char theirs[64];
    tp__printable(theirs, sizeof theirs, h->cluster.p, h->cluster.n);
    tp__fail(c, &t->st.auth_failures, "cluster mismatch: peer is in cluster \"%s\", this runner in \"%s\"", theirs,
             t->cluster);
    return 1;
  }
  int wants = h->flags & FRAME_HELLO_AUTH;
  if (wants && !t->secret_len) {
    tp__fail(c, &t->st.auth_failures, "peer requires a cluster secret (give this runner the same secret)");
    return 1;
  }
  if (!wants && t->secret_len) {
    tp__fail(c, &t->st.auth_failures, "peer has no cluster secret (give it the same secret as this runner)");
    return 1;
  }
  return 0;
}

static void tp__out_hello(tp_conn_t *c, const frame_hello_t *h) {
  transport_t *t = c->tp;
  if (tp__hello_problem(c, h)) return;
  memcpy(c->peer_nonce, h->nonce, FRAME_NONCE);
  frame_auth_t a;
  if (tp__random(c->nonce, FRAME_NONCE) != 0 ||
      tp__proof(t, "luster-client", c->peer_nonce, c->nonce, a.proof) != 0) {
    tp__fail(c, &t->st.auth_failures, "could not compute the handshake nonce or proof");
    return;
  }
  memcpy(a.nonce, c->nonce, FRAME_NONCE);
  a.runner = (frame_str_t){t->self, (uint32_t)strlen(t->self)};
  size_t cap = FRAME_HEADER + FRAME_NONCE + FRAME_PROOF + 4 + a.runner.n;
  tp__out_commit(c, frame_encode_auth(tp__out_reserve(c, cap), cap, &a));
  c->state = TP_S_AUTH;
}

/* Authenticated both ways: the held requests leave together. */
static void tp__out_ready(tp_conn_t *c) {
  tp_peer_t *p = c->peer;
  c->state = TP_S_READY;
  uv_timer_stop(&c->timer);
  p->backoff_ms = 0;
  if (p->last_why) log_info("transport: connected to %s", p->addr);
  else log_debug("transport: connected to %s", p->addr);
  tp__why_unref(p->last_why);
  p->last_why = NULL;
  if (c->hold.len == 0) return;
  if (c->out.len == 0) {
    buf_t tmp = c->out;
    c->out = c->hold;
    c->hold = tmp;
  } else {
    buf_add(&c->out, c->hold.data, c->hold.len);
    tp__buf_done(&c->hold);
  }
  c->appended_corr = c->hold_corr;
  tp__mark_dirty(c);
}

static void tp__out_auth_ok(tp_conn_t *c, const frame_auth_ok_t *ok) {
  uint8_t want[FRAME_PROOF];
  if (tp__proof(c->tp, "luster-server", c->nonce, c->peer_nonce, want) != 0 ||
      CRYPTO_memcmp(want, ok->proof, FRAME_PROOF) != 0) {
    tp__fail(c, &c->tp->st.auth_failures, "peer failed the cluster secret check (its secret differs)");
    return;
  }
  tp__out_ready(c);
}

static void tp__out_reply(tp_conn_t *c, const frame_reply_t *rep) {
  tp_req_t *r = tp__req_find(c->peer, rep->corr);
  if (!r || r->why) return; /* forgotten by its caller */
  htab_remove(&c->peer->pending, &r->node);
  c->tp->st.replies_in++;
  r->cb(r->ud, TP_REPLY, rep->kind, rep->body.p, rep->body.n);
  free(r);
}

void tp__dispatch_out(tp_conn_t *c, const frame_t *f) {
  if (c->state == TP_S_HELLO && f->type == FRAME_HELLO) tp__out_hello(c, &f->u.hello);
  else if (c->state == TP_S_AUTH && f->type == FRAME_AUTH_OK) tp__out_auth_ok(c, &f->u.auth_ok);
  else if (c->state == TP_S_READY && f->type == FRAME_REPLY) tp__out_reply(c, &f->u.reply);
  else tp__fail(c, &c->tp->st.protocol_errors, "unexpected %s frame", tp__frame_names[f->type]);
}

/* --- dialing -------------------------------------------------------------- */

static void tp__connect_cb(uv_connect_t *req, int status) {
  tp_conn_t *c = req->data;
  if (c->closing) return;
  if (status < 0) {
    tp__close(c, tp__why("cannot connect to %s: %s", c->remote, uv_strerror(status)), 1);
    return;
  }
  c->counted = 1;
  c->tp->st.conns_out++;
  uv_tcp_nodelay(&c->tcp, 1);
  uv_tcp_keepalive(&c->tcp, 1, TP_KEEPALIVE_S);
  c->state = TP_S_HELLO;
  tp__start_reading(c);
  if (!c->reading) tp__close(c, tp__why("cannot read from %s", c->remote), 1);
}

static void tp__out_connect(tp_conn_t *c, const struct sockaddr *sa) {
  int rc = uv_tcp_connect(&c->creq, &c->tcp, sa, tp__connect_cb);
  if (rc != 0) tp__close(c, tp__why("cannot connect to %s: %s", c->remote, uv_strerror(rc)), 1);
}

static void tp__gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  tp_conn_t *c = req->data;
  c->resolving = 0;
  if (!c->closing) {
    if (status < 0 || !res) {
      tp__close(c, tp__why("cannot resolve %s: %s", c->remote, uv_strerror(status < 0 ? status : UV_EAI_NONAME)), 1);
    } else {
      struct sockaddr_storage ss;
      memset(&ss, 0, sizeof ss);
      memcpy(&ss, res->ai_addr, res->ai_addrlen < sizeof ss ? res->ai_addrlen : sizeof ss);
      if (ss.ss_family == AF_INET6) ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)c->port);
      else ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)c->port);
      tp__out_connect(c, (struct sockaddr *)&ss);
    }
  }
  if (res) uv_freeaddrinfo(res);
  tp__conn_unref(c);
}

/* Starts a connection attempt. Failures close it at once (p->conn back to
 * NULL), and the caller's request, already pending, fails with the rest. */
static void tp__connect(tp_peer_t *p) {
  transport_t *t = p->tp;
  tp_conn_t *c = tp__conn_new(t, TP_OUT);
  if (!c) abort();
  c->peer = p;
  p->conn = c;
  p->last_attempt = uv_now(t->loop);
  snprintf(c->remote, sizeof c->remote, "%s", p->addr);
  uv_timer_start(&c->timer, tp__timeout_cb, t->handshake_ms, 0);
  char host[256];
  if (parse_hostport(p->addr, host, sizeof host, &c->port) != 0 || c->port == 0) {
    tp__close(c, tp__why("invalid peer address \"%s\": use HOST:PORT or [IPv6]:PORT", c->remote), 1);
    return;
  }
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (uv_ip4_addr(host, c->port, (struct sockaddr_in *)&ss) == 0 ||
      uv_ip6_addr(host, c->port, (struct sockaddr_in6 *)&ss) == 0) {
    tp__out_connect(c, (struct sockaddr *)&ss);
    return;
  }
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int rc = uv_getaddrinfo(t->loop, &c->gai, tp__gai_cb, host, NULL, &hints);
  if (rc != 0) {
    tp__close(c, tp__why("cannot resolve %s: %s", c->remote, uv_strerror(rc)), 1);
    return;
  }
  c->refs++;
  c->resolving = 1;
}

/* --- peers ---------------------------------------------------------------- */

static int tp__peer_eq(const htab_node_t *n, const void *key, size_t len) {
  const tp_peer_t *p = TP_CONTAINER(n, tp_peer_t, node);
  return strlen(p->addr) == len && memcmp(p->addr, key, len) == 0;
}

static tp_peer_t *tp__peer_find(transport_t *t, const char *addr) {
  size_t n = strlen(addr);
  htab_node_t *h = htab_find(&t->peers, hash_bytes(addr, n), tp__peer_eq, addr, n);
  return h ? TP_CONTAINER(h, tp_peer_t, node) : NULL;
}

tp_peer_t *tp_peer(transport_t *t, const char *addr) {
  if (!t || t->stopping || t->stopped || !addr) return NULL;
  tp_peer_t *p = tp__peer_find(t, addr);
  if (p) return p;
  p = calloc(1, sizeof *p);
  if (!p) abort();
  p->tp = t;
  p->addr = tp__strdup(addr);
  htab_init(&p->pending);
  p->node.hash = hash_bytes(addr, strlen(addr));
  if (htab_insert(&t->peers, &p->node) != 0) abort();
  return p;
}

const char *tp_peer_addr(const tp_peer_t *p) { return p->addr; }

int tp_peer_ready(const tp_peer_t *p) { return p && p->conn && p->conn->state == TP_S_READY; }

void tp_peer_drop(transport_t *t, const char *addr) {
  if (!t || t->stopped || !addr) return;
  tp_peer_t *p = tp__peer_find(t, addr);
  if (!p) return;
  if (p->conn) tp__close(p->conn, tp__why("peer %s left the cluster", p->addr), 0);
  p->backoff_ms = 0;
  p->retry_at = 0;
  tp__why_unref(p->last_why);
  p->last_why = NULL;
}

void tp__free_peers(transport_t *t) {
  size_t i;
  htab_node_t *n = htab_first(&t->peers, &i);
  while (n) {
    htab_node_t *next = htab_next(&t->peers, n, &i);
    tp_peer_t *p = TP_CONTAINER(n, tp_peer_t, node);
    htab_free(&p->pending); /* empty: every request was answered above */
    tp__why_unref(p->last_why);
    tp__why_unref(p->down_why);
    free(p->addr);
    free(p);
    n = next;
  }
  htab_free(&t->peers);
}

/* --- sending -------------------------------------------------------------- */

/* Why a request cannot be queued now, or NULL. */
static tp_why_t *tp__send_refusal(tp_peer_t *p, size_t size) {
  transport_t *t = p->tp;
  if (t->stopping) return tp__why("the transport is shutting down");
  if (size - 4 > t->max_frame)
    return tp__why("the request (%zu bytes) exceeds the transport's max_frame (%zu bytes)", size, t->max_frame);
  uint64_t now = uv_now(t->loop);
  if (!p->conn && now < p->retry_at)
    return tp__why("peer %s is unreachable (%s); next attempt in %llu ms", p->addr,
                   p->last_why ? p->last_why->s : "connection failed", (unsigned long long)(p->retry_at - now));
  return NULL;
}

/* Appends the encoded request to the connection: to `out` once it is
 * authenticated, else to `hold` until it is. */
static void tp__queue(tp_conn_t *c, const frame_request_t *fr, size_t size) {
  int ready = c->state == TP_S_READY;
  buf_t *q = ready ? &c->out : &c->hold;
  buf_reserve(q, size);
  q->len += frame_encode_request((uint8_t *)q->data + q->len, fr);
  if (ready) {
    c->appended_corr = fr->corr;
    tp__mark_dirty(c);
  } else {
    c->hold_corr = fr->corr;
  }
}

uint64_t tp_send(tp_peer_t *p, const frame_request_t *req, tp_reply_cb cb, void *ud) {
  if (!p) return 0; /* tp_peer failed (shut down): nothing can be promised */
  transport_t *t = p->tp;
  t->last_send_ns = uv_hrtime();
  tp_req_t *r = calloc(1, sizeof *r);
  if (!r) abort();
  r->peer = p;
  r->corr = ++p->next_corr;
  r->cb = cb;
  r->ud = ud;
  r->node.hash = tp__corr_hash(r->corr);
  if (htab_insert(&p->pending, &r->node) != 0) abort();
  frame_request_t fr = *req;
  fr.corr = r->corr;
  size_t size = frame_request_size(&fr);
  tp_why_t *no = tp__send_refusal(p, size);
  if (!no && !p->conn) tp__connect(p);
  if (!no && !p->conn) return r->corr; /* the attempt failed at once and failed r with it */
  if (!no && p->conn->hold.len + p->conn->out.len + size > TP_MAX_QUEUED)
    no = tp__why("more than %u MiB of requests to %s wait to be written", TP_MAX_QUEUED >> 20, p->addr);
  if (no) {
    tp__req_fail(r, TP_NOT_SENT, no);
    tp__why_unref(no);
    return r->corr;
  }
  tp__queue(p->conn, &fr, size);
  t->st.requests_out++;
  return r->corr;
}

void tp_forget(tp_peer_t *p, uint64_t corr) {
  if (!p) return;
  tp_req_t *r = tp__req_find(p, corr);
  if (!r) return;
  htab_remove(&p->pending, &r->node);
  if (r->why) {
    tp__defer_unlink(p->tp, r);
    tp__why_unref(r->why);
  }
  free(r);
}
