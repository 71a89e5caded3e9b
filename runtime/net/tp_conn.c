/* tp_conn.c - one runner-to-runner connection, either direction: framing,
 * read and write buffers, the stall watch and handshake timer, closing; and
 * the transport value itself with its end-of-turn kick (see transport_int.h). */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loop/log.h"
#include "net/sock.h"
#include "net/transport_int.h"

const char *const tp__frame_names[] = {"?", "HELLO", "AUTH", "AUTH_OK", "REQUEST", "REPLY"};

/* --- small helpers ------------------------------------------------------- */

tp_why_t *tp__why_vnew(const char *fmt, va_list ap) {
  char s[512];
  int n = vsnprintf(s, sizeof s, fmt, ap);
  if (n < 0) n = 0;
  if ((size_t)n >= sizeof s) n = (int)sizeof s - 1;
  tp_why_t *w = malloc(sizeof *w + (size_t)n + 1);
  if (!w) abort(); /* as buf.c: no path on without heap */
  w->refs = 1;
  w->len = (size_t)n;
  memcpy(w->s, s, (size_t)n + 1);
  return w;
}

tp_why_t *tp__why(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  tp_why_t *w = tp__why_vnew(fmt, ap);
  va_end(ap);
  return w;
}

tp_why_t *tp__why_ref(tp_why_t *w) {
  w->refs++;
  return w;
}

void tp__why_unref(tp_why_t *w) {
  if (w && --w->refs == 0) free(w);
}

/* So a hostile peer cannot forge or break log lines. */
void tp__printable(char *dst, size_t cap, const char *src, size_t n) {
  size_t k = 0;
  for (size_t i = 0; i < n && k + 1 < cap; i++) {
    unsigned char ch = (unsigned char)src[i];
    dst[k++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
  }
  dst[k] = '\0';
}

void tp__sockname(const struct sockaddr_storage *ss, char *out, size_t cap) {
  char ip[64] = "?";
  if (ss->ss_family == AF_INET6) {
    uv_ip6_name((const struct sockaddr_in6 *)ss, ip, sizeof ip);
    snprintf(out, cap, "[%s]:%d", ip, ntohs(((const struct sockaddr_in6 *)ss)->sin6_port));
  } else if (ss->ss_family == AF_INET) {
    uv_ip4_name((const struct sockaddr_in *)ss, ip, sizeof ip);
    snprintf(out, cap, "%s:%d", ip, ntohs(((const struct sockaddr_in *)ss)->sin_port));
  } else {
    snprintf(out, cap, "?");
  }
}

int tp__random(uint8_t *p, size_t n) {
  if (RAND_bytes(p, (int)n) == 1) return 0;
  return uv_random(NULL, NULL, p, n, 0, NULL);
}

int tp__proof(const transport_t *t, const char *label, const uint8_t *a, const uint8_t *b, uint8_t *out) {
  memset(out, 0, FRAME_PROOF);
  if (!t->secret_len) return 0;
  uint8_t msg[16 + 2 * FRAME_NONCE];
  size_t l = strlen(label);
  memcpy(msg, label, l);
  memcpy(msg + l, a, FRAME_NONCE);
  memcpy(msg + l + FRAME_NONCE, b, FRAME_NONCE);
  unsigned int outlen = 0;
  if (!HMAC(EVP_sha256(), t->secret, (int)t->secret_len, msg, l + 2 * FRAME_NONCE, out, &outlen) ||
      outlen != FRAME_PROOF)
    return -1;
  return 0;
}

void tp__buf_done(buf_t *b) {
  if (b->cap > TP_KEEP_CAP) buf_free(b);
  else buf_reset(b);
}

char *tp__strdup(const char *s) {
  char *d = strdup(s ? s : "");
  if (!d) abort();
  return d;
}

/* --- the kick: flushes and deferred callbacks at the end of the turn ----- */

static int tp__has_work(const transport_t *t) { return t->dirty || t->ndeferred || t->downs; }

static void tp__idle_cb(uv_idle_t *h) { (void)h; /* only keeps the poll from blocking */ }

static void tp__flush(tp_conn_t *c);
static void tp__reprocess(tp_conn_t *c);

/* k->tp changes (to NULL) when a callback shut the transport down: it may
 * be freed by then, so nothing of it is touched after that. */
static void tp__check_cb(uv_check_t *h) {
  tp_kick_t *k = h->data;
  transport_t *t = k->tp;
  if (!t) return;
  /* Peer-down first, so the router knows before it re-routes the failures. */
  tp__run_downs(t);
  if (k->tp != t) return;
  tp__run_deferred(t);
  if (k->tp != t) return;
  while (t->dirty) {
    tp_conn_t *c = t->dirty;
    tp__unmark_dirty(c);
    if (c->reprocess) tp__reprocess(c);
    if (k->tp != t) return; /* on_request shut the transport down */
    tp__flush(c);
  }
  if (!tp__has_work(t)) {
    /* Right after a request went out, keep polling without sleeping: a
     * reply from a peer on the same network usually arrives in ~25 us,
     * and waking a process that slept in epoll_wait costs more than that
     * (measured: sequential cross-runner p50 59 us sleeping, 25 us with
     * this). Bounded, so an idle runner still sleeps. */
    if (uv_hrtime() - t->last_send_ns < TP_SPIN_NS) return;
    uv_idle_stop(&k->idle);
    uv_check_stop(&k->check);
  }
}

void tp__kick(transport_t *t) {
  if (!t->kick || uv_is_active((uv_handle_t *)&t->kick->check)) return;
  uv_idle_start(&t->kick->idle, tp__idle_cb);
  uv_check_start(&t->kick->check, tp__check_cb);
}

void tp__mark_dirty(tp_conn_t *c) {
  if (c->dirty || c->closing) return;
  transport_t *t = c->tp;
  c->dirty = 1;
  c->dprev = NULL;
  c->dnext = t->dirty;
  if (t->dirty) t->dirty->dprev = c;
  t->dirty = c;
  tp__kick(t);
}

void tp__unmark_dirty(tp_conn_t *c) {
  if (!c->dirty) return;
  if (c->dprev) c->dprev->dnext = c->dnext; else c->tp->dirty = c->dnext;
  if (c->dnext) c->dnext->dprev = c->dprev;
  c->dirty = 0;
  c->dprev = c->dnext = NULL;
}

static void tp__kick_close_cb(uv_handle_t *h) {
  tp_kick_t *k = h->data;
  if (--k->refs == 0) free(k);
}

/* --- the transport value ------------------------------------------------- */

transport_t *transport_new(uv_loop_t *loop, const tp_config_t *cfg) {
  if (!loop || !cfg || !cfg->cluster || strlen(cfg->cluster) > TP_MAX_NAME ||
      (cfg->self && strlen(cfg->self) > TP_MAX_NAME))
    return NULL;
  transport_t *t = calloc(1, sizeof *t);
  if (!t) abort();
  t->loop = loop;
  t->secret = tp__strdup(cfg->secret);
  t->secret_len = strlen(t->secret);
  t->cluster = tp__strdup(cfg->cluster);
  t->self = tp__strdup(cfg->self);
  t->max_frame = cfg->max_frame ? cfg->max_frame : TP_DEFAULT_MAX_FRAME;
  if (t->max_frame > UINT32_MAX) t->max_frame = UINT32_MAX;
  t->high_water = cfg->high_water ? cfg->high_water : TP_DEFAULT_HIGH_WATER;
  t->handshake_ms = cfg->handshake_timeout_ms ? cfg->handshake_timeout_ms : TP_DEFAULT_HANDSHAKE_MS;
  t->write_ms = cfg->write_timeout_ms ? cfg->write_timeout_ms : TP_DEFAULT_WRITE_TIMEOUT_MS;
  t->on_request = cfg->on_request;
  t->on_abandoned = cfg->on_abandoned;
  t->on_peer_down = cfg->on_peer_down;
  t->ud = cfg->ud;
  htab_init(&t->peers);
  t->deferred.prev = t->deferred.next = &t->deferred;
  t->kick = calloc(1, sizeof *t->kick);
  if (!t->kick) abort();
  uv_idle_init(loop, &t->kick->idle);
  uv_check_init(loop, &t->kick->check);
  t->kick->idle.data = t->kick->check.data = t->kick;
  t->kick->tp = t;
  t->kick->refs = 2;
  return t;
}

void tp_stop_listening(transport_t *t) {
  if (!t || !t->listener) return;
  uv_close((uv_handle_t *)t->listener, (uv_close_cb)free);
  t->listener = NULL;
}

void tp_shutdown(transport_t *t) {
  if (!t || t->stopping || t->stopped) return;
  t->stopping = 1;
  tp_stop_listening(t);
  while (t->conns_in) tp__close(t->conns_in, NULL, 0);
  size_t i;
  for (htab_node_t *n = htab_first(&t->peers, &i); n; n = htab_next(&t->peers, n, &i)) {
    tp_peer_t *p = TP_CONTAINER(n, tp_peer_t, node);
    /* Every waiting request is in its connection or already failed. */
    if (p->conn) tp__close(p->conn, tp__why("the transport is shutting down"), 0);
  }
  while (t->ndeferred) tp__run_one_deferred(t); /* includes any a callback re-sends */
  t->downs = t->downs_tail = NULL;
  tp__free_peers(t);
  while (t->dirty) tp__unmark_dirty(t->dirty);
  t->kick->tp = NULL;
  uv_close((uv_handle_t *)&t->kick->idle, tp__kick_close_cb);
  uv_close((uv_handle_t *)&t->kick->check, tp__kick_close_cb);
  t->kick = NULL;
  OPENSSL_cleanse(t->secret, t->secret_len);
  free(t->secret);
  free(t->cluster);
  free(t->self);
  t->secret = t->cluster = t->self = NULL;
  t->secret_len = 0;
  t->stopping = 0;
  t->stopped = 1;
}

void transport_free(transport_t *t) {
  if (!t) return;
  tp_shutdown(t);
  free(t->readbuf);
  free(t);
}

size_t tp_pending_output(const transport_t *t) { return t ? t->pending_out : 0; }

const tp_stats_t *tp_stats(const transport_t *t) {
  static const tp_stats_t none; /* read-only: the counts of no transport */
  return t ? &t->st : &none;
}

/* --- connections: lifetime and writing ----------------------------------- */

void tp__conn_unref(tp_conn_t *c) {
  if (--c->refs > 0) return;
  buf_free(&c->rbuf);
  buf_free(&c->out);
  buf_free(&c->wbuf);
  buf_free(&c->hold);
  free(c);
}

static void tp__conn_close_cb(uv_handle_t *h) { tp__conn_unref(h->data); }

tp_conn_t *tp__conn_new(transport_t *t, tp_dir_t dir) {
  tp_conn_t *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->tp = t;
  c->dir = dir;
  uv_tcp_init(t->loop, &c->tcp);
  uv_timer_init(t->loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->gai.data = c;
  c->creq.data = c;
  c->wreq.data = c;
  c->refs = 2;
  return c;
}

uint8_t *tp__out_reserve(tp_conn_t *c, size_t n) {
  buf_reserve(&c->out, n);
  return (uint8_t *)c->out.data + c->out.len;
}

void tp__out_commit(tp_conn_t *c, size_t n) {
  c->out.len += n;
  if (c->dir == TP_IN) c->tp->pending_out += n;
  tp__mark_dirty(c);
}

static void tp__write_cb(uv_write_t *w, int status);

/* A peer that stops reading (frozen, wedged, or hostile) would keep our
 * unwritten frames, up to the limits, for as long as its connection lasts.
 * Once authenticated, the connection's timer watches the write in flight
 * instead of the handshake: when a whole write_ms passes with none of it
 * written, the connection is reset (SO_LINGER 0: what the kernel still
 * holds is dropped too, not kept for a window that never opens). Its
 * requests then fail as on any broken connection (TP_LOST / TP_NOT_SENT). */
static void tp__stall_cb(uv_timer_t *timer) {
  tp_conn_t *c = timer->data;
  if (c->closing || !c->writing) {
    uv_timer_stop(timer);
    return;
  }
  size_t left = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
  if (left == 0) return; /* all with the kernel: the write completes this turn */
  if (left < c->stall_seen || sock_writable(&c->tcp)) {
    /* Some of it left (the peer reads, slowly), or it could leave now (this
     * loop was busy): not stalled. */
    c->stall_seen = left;
    return;
  }
  unsigned long long ms = (unsigned long long)c->tp->write_ms;
  sock_reset_on_close(&c->tcp);
  if (c->dir == TP_IN) {
    log_warn("transport: closing the connection from %s: it read none of our replies for %llu ms "
             "(%zu bytes unwritten)", c->remote, ms, left);
    tp__close(c, NULL, 0);
  } else {
    tp__close(c, tp__why("connection to %s dropped: the peer read none of our requests for %llu ms "
                         "(%zu bytes unwritten)", c->remote, ms, left), 1);
  }
}

static void tp__flush(tp_conn_t *c) {
  if (c->closing || c->writing || c->out.len == 0) return;
  transport_t *t = c->tp;
  buf_t tmp = c->wbuf;
  c->wbuf = c->out;
  c->out = tmp;
  size_t n = c->wbuf.len, nb = (n + TP_WRITE_CHUNK - 1) / TP_WRITE_CHUNK;
  uv_buf_t small[4], *bufs = nb <= 4 ? small : malloc(nb * sizeof *bufs);
  if (!bufs) abort();
  for (size_t i = 0; i < nb; i++) {
    size_t off = i * TP_WRITE_CHUNK, len = n - off < TP_WRITE_CHUNK ? n - off : TP_WRITE_CHUNK;
    bufs[i] = uv_buf_init(c->wbuf.data + off, (unsigned int)len);
  }
  int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs, (unsigned int)nb, tp__write_cb);
  if (bufs != small) free(bufs);
  if (rc != 0) {
    tp__close(c, tp__why("write to %s failed: %s", c->remote, uv_strerror(rc)), 1);
    return;
  }
  c->writing = 1;
  c->written_corr = c->appended_corr;
  t->st.bytes_out += n;
  if (c->state == TP_S_READY) { /* before that the timer watches the handshake */
    c->stall_seen = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
    uv_timer_start(&c->timer, tp__stall_cb, t->write_ms, t->write_ms);
  }
}

static void tp__write_cb(uv_write_t *w, int status) {
  tp_conn_t *c = w->data;
  c->writing = 0;
  if (c->closing) return;
  if (c->state == TP_S_READY) uv_timer_stop(&c->timer); /* the stall watch ends with the write */
  if (status < 0) {
    tp__close(c, tp__why("write to %s failed: %s", c->remote, uv_strerror(status)), 1);
    return;
  }
  if (c->dir == TP_IN) c->tp->pending_out -= c->wbuf.len;
  tp__buf_done(&c->wbuf);
  if (c->out.len) tp__mark_dirty(c);
  if (c->dir == TP_IN) tp__in_pressure(c);
}

static void tp__read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b);
static void tp__alloc_cb(uv_handle_t *h, size_t sz, uv_buf_t *b);

void tp__start_reading(tp_conn_t *c) {
  if (c->reading || c->closing) return;
  if (uv_read_start((uv_stream_t *)&c->tcp, tp__alloc_cb, tp__read_cb) == 0) c->reading = 1;
}

void tp__stop_reading(tp_conn_t *c) {
  if (!c->reading) return;
  uv_read_stop((uv_stream_t *)&c->tcp);
  c->reading = 0;
}

/* --- closing -------------------------------------------------------------- */

void tp__close(tp_conn_t *c, tp_why_t *why, int notify) {
  if (c->closing) {
    tp__why_unref(why);
    return;
  }
  c->closing = 1;
  tp__unmark_dirty(c);
  c->reading = 0;
  if (c->resolving) uv_cancel((uv_req_t *)&c->gai); /* its callback still runs, with the ref */
  uv_close((uv_handle_t *)&c->timer, tp__conn_close_cb);
  uv_close((uv_handle_t *)&c->tcp, tp__conn_close_cb);
  if (c->dir == TP_IN) tp__in_closed(c);
  else tp__out_closed(c, why, notify);
  tp__why_unref(why);
}

void tp__fail(tp_conn_t *c, uint64_t *counter, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  tp_why_t *w = tp__why_vnew(fmt, ap);
  va_end(ap);
  (*counter)++;
  if (c->dir == TP_IN) {
    log_warn("transport: closing the connection from %s: %s", c->remote, w->s);
    tp__close(c, w, 1);
  } else {
    tp__close(c, tp__why("connection to %s failed: %s", c->remote, w->s), 1);
    tp__why_unref(w);
  }
}

void tp__timeout_cb(uv_timer_t *timer) {
  tp_conn_t *c = timer->data;
  transport_t *t = c->tp;
  if (c->dir == TP_IN)
    tp__fail(c, &t->st.auth_failures, "did not authenticate within %llu ms", (unsigned long long)t->handshake_ms);
  else
    tp__close(c, tp__why("connection to %s failed: no handshake within %llu ms", c->remote,
                         (unsigned long long)t->handshake_ms), 1);
}

/* --- reading -------------------------------------------------------------- */

static uint32_t tp__be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void tp__alloc_cb(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  (void)sz;
  tp_conn_t *c = h->data;
  /* The rest of a large announced frame goes straight into its buffer. */
  if (c->rbuf.len && c->want > c->rbuf.len + TP_READ_CHUNK) {
    size_t missing = c->want - c->rbuf.len;
    if (missing > TP_WRITE_CHUNK) missing = TP_WRITE_CHUNK;
    buf_reserve(&c->rbuf, missing);
    *b = uv_buf_init(c->rbuf.data + c->rbuf.len, (unsigned int)missing);
    return;
  }
  transport_t *t = c->tp;
  if (!t->readbuf && !(t->readbuf = malloc(TP_READ_CHUNK))) abort(); /* as buf.c */
  *b = uv_buf_init(t->readbuf, TP_READ_CHUNK);
}

static void tp__dispatch(tp_conn_t *c, const frame_t *f) {
  if (c->dir == TP_IN) tp__dispatch_in(c, f);
  else tp__dispatch_out(c, f);
}

/* Decodes and dispatches every complete frame in p[0..len); returns the
 * bytes used, or stops early when the connection closed. */
static size_t tp__consume(tp_conn_t *c, const uint8_t *p, size_t len) {
  size_t off = 0;
  while (!c->closing && !c->paused) {
    frame_t f;
    size_t used = 0;
    size_t max = c->state == TP_S_READY ? c->tp->max_frame : TP_HANDSHAKE_MAX_FRAME;
    frame_status_t st = frame_decode(p + off, len - off, max, &f, &used);
    if (st == FRAME_NEED_MORE) break;
    if (st != FRAME_OK) {
      tp__fail(c, &c->tp->st.protocol_errors, "%s frame (%s)",
               st == FRAME_TOO_LARGE ? "oversized" : "malformed", frame_status_name(st));
      break;
    }
    off += used;
    tp__dispatch(c, &f);
  }
  return off;
}

/* Keeps the unconsumed tail (at most one partial frame) for the next read. */
static void tp__keep_partial(tp_conn_t *c, const uint8_t *p, size_t rest, int in_rbuf) {
  if (in_rbuf) {
    if (rest) memmove(c->rbuf.data, p, rest);
    c->rbuf.len = rest;
  } else if (rest) {
    buf_add(&c->rbuf, p, rest);
  }
  c->want = rest >= 4 ? 4 + (size_t)tp__be32((const uint8_t *)c->rbuf.data) : 0;
  if (rest == 0) tp__buf_done(&c->rbuf);
}

/* Decodes what a pause left in rbuf (from the check handler). */
static void tp__reprocess(tp_conn_t *c) {
  c->reprocess = 0;
  if (c->closing || c->paused || !c->rbuf.len) return;
  size_t used = tp__consume(c, (const uint8_t *)c->rbuf.data, c->rbuf.len);
  if (c->closing) return;
  tp__keep_partial(c, (const uint8_t *)c->rbuf.data + used, c->rbuf.len - used, 1);
}

static void tp__read_failed(tp_conn_t *c, ssize_t n) {
  const char *what = n == UV_EOF ? "closed by the peer" : uv_strerror((int)n);
  if (c->dir == TP_IN) {
    log_debug("transport: connection from %s closed: %s", c->remote, what);
    tp__close(c, NULL, 0);
  } else {
    tp__close(c, tp__why("connection to %s %s: %s%s", c->remote, c->state == TP_S_READY ? "lost" : "failed", what,
                         c->state == TP_S_AUTH ? " during authentication (is the cluster secret the same?)" : ""),
              1);
  }
}

static void tp__read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  tp_conn_t *c = s->data;
  if (c->closing) return;
  if (n < 0) {
    tp__read_failed(c, n);
    return;
  }
  if (n == 0) return;
  c->tp->st.bytes_in += (uint64_t)n;
  int in_rbuf = b->base != c->tp->readbuf;
  if (in_rbuf) {
    c->rbuf.len += (size_t)n; /* read straight into it (tp__alloc_cb) */
  } else if (c->rbuf.len) {
    buf_add(&c->rbuf, b->base, (size_t)n); /* completes the partial frame */
    in_rbuf = 1;
  }
  const uint8_t *p = in_rbuf ? (const uint8_t *)c->rbuf.data : (const uint8_t *)b->base;
  size_t len = in_rbuf ? c->rbuf.len : (size_t)n;
  size_t used = tp__consume(c, p, len);
  if (c->closing) return;
  tp__keep_partial(c, p + used, len - used, in_rbuf);
  if (c->dir == TP_IN) tp__in_pressure(c);
}
