/* transport.c - runner-to-runner TCP (see transport.h).
 *
 * Connections. Both directions share tp_conn_t: a TCP handle, a timer for
 * the handshake, a read buffer for the partial frame and three output
 * buffers. `out` collects frames as they are queued; `wbuf` is the one
 * uv_write in flight; an outgoing connection also has `hold`, the requests
 * queued before the handshake finished, which move to `out` together once
 * the peer has proved it knows the secret (we send nothing of substance to
 * an impostor). A flush swaps `out` and `wbuf` and writes everything in one
 * call, so frames queued during one loop turn leave in one write and no
 * frame is ever copied twice.
 *
 * Flushing and deferred work. Connections with unwritten frames sit on a
 * dirty list; failed requests and peer-down notices sit on deferred lists.
 * A uv_check handle does all of it after the loop polls, and a uv_idle
 * handle, active only while something waits, keeps that poll from blocking.
 * So everything queued during a turn (timers, the scheduler's idle drain,
 * I/O callbacks) is handled at the end of that same turn, and callbacks
 * never run inside the call that caused them.
 *
 * Requests. Each peer numbers its requests (corr, from 1) and keeps the
 * waiting ones in a hash table by corr. Frames leave in corr order, so one
 * number per connection, the highest corr handed to uv_write, tells which
 * waiting requests were written (TP_LOST if the connection dies) and which
 * were not (TP_NOT_SENT, safe to re-route).
 *
 * Reading. libuv reads into one static buffer; complete frames are decoded
 * straight from it, and only a trailing partial frame is copied into the
 * connection's own buffer. A large frame already announced by its length is
 * read directly into that buffer. A connection therefore holds at most one
 * partial frame (bounded by max_frame, 1024 bytes before authentication),
 * plus, when back-pressure pauses it mid-read, the rest of that one read:
 * decoding stops at the limit rather than answering a whole read's worth of
 * requests (one read of small requests can ask for megabytes of replies),
 * and resumes from the check handler once the replies have drained.
 *
 * Lifetime. A connection is freed when its handles have closed and any
 * getaddrinfo has returned (`refs`), never inside a callback that might
 * still be using it: code after a user callback checks `closing` first. */
#include "net/transport.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/log.h"
#include "core/buf.h"
#include "core/hash.h"
#include "core/htab.h"
#include "core/parse.h"
#include "net/sock.h"

/* How long the loop keeps polling without sleeping after a request left. */
#define TP_SPIN_NS 50000u
#define TP_DEFAULT_MAX_FRAME (16u << 20)
#define TP_DEFAULT_HIGH_WATER (4u << 20)
#define TP_DEFAULT_HANDSHAKE_MS 5000
#define TP_DEFAULT_WRITE_TIMEOUT_MS 5000
#define TP_MAX_QUEUED (64u << 20)     /* per peer: requests not yet handed to the kernel */
#define TP_MAX_INBOUND 65536          /* per connection: requests awaiting replies before reading pauses */
#define TP_MAX_CONNS_IN 4096
#define TP_MAX_NAME 255               /* cluster tag and self address */
/* Before authentication a frame is a HELLO or AUTH with a short string: a
 * stranger must not make us buffer max_frame bytes. */
#define TP_HANDSHAKE_MAX_FRAME 1024
#define TP_BACKOFF_MIN_MS 50
#define TP_BACKOFF_MAX_MS 1000
#define TP_KEEPALIVE_S 15             /* notices a peer host that vanished without a reset */
#define TP_READ_CHUNK (256u << 10)
#define TP_KEEP_CAP (1u << 20)        /* an emptied buffer bigger than this is freed, not kept */
#define TP_WRITE_CHUNK (1u << 30)     /* uv_buf_t lengths are unsigned int */

#define TP_CONTAINER(p, type, field) ((type *)(void *)((char *)(p) - offsetof(type, field)))

/* A reason, shared by every request that failed for it. */
typedef struct {
  int refs;
  size_t len;
  char s[];
} tp_why_t;

typedef enum { TP_IN, TP_OUT } tp_dir_t;

typedef enum {
  TP_S_CONNECTING, /* out: resolving the name or connecting; in: accepting */
  TP_S_HELLO,     /* out: connected, waiting for the server's HELLO */
  TP_S_AUTH,      /* in: HELLO sent, waiting for AUTH; out: AUTH sent, waiting for AUTH_OK */
  TP_S_READY,
} tp_state_t;

typedef struct tp_conn_s tp_conn_t;

struct tp_inbound_s {
  tp_conn_t *conn; /* NULL once detached */
  tp_inbound_t *prev, *next;
  uint64_t corr;
  void *ud;
  int abandoning;
};

struct tp_conn_s {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_getaddrinfo_t gai;
  uv_connect_t creq;
  uv_write_t wreq;
  tp_dir_t dir;
  tp_state_t state;
  int refs;
  int closing, writing, reading, counted, linked, dirty;
  int resolving; /* a getaddrinfo is in flight and holds a ref */
  int paused;    /* in: over a limit; reading and decoding wait for the output to drain */
  int reprocess; /* in: rbuf holds frames not yet decoded (decode them from the check handler) */
  tp_conn_t *prev, *next;   /* tp.conns_in */
  tp_conn_t *dprev, *dnext; /* tp.dirty */
  buf_t rbuf;
  size_t want; /* size of the partial frame in rbuf, once its length arrived */
  buf_t out, wbuf, hold;
  uint8_t nonce[FRAME_NONCE];      /* ours */
  uint8_t peer_nonce[FRAME_NONCE]; /* out: the server's */
  char remote[128];                /* for log lines: "host:port" */
  /* inbound */
  tp_inbound_t *in_head, *in_tail;
  size_t nin;
  /* outbound */
  tp_peer_t *peer;
  int port;
  uint64_t hold_corr, appended_corr, written_corr;
  size_t stall_seen; /* bytes of the write in flight still unwritten at the last stall check */
};

struct tp_peer_s {
  htab_node_t node;
  char *addr;
  tp_conn_t *conn;
  htab_t pending; /* tp_req_t by corr */
  uint64_t next_corr;
  uint64_t last_attempt, retry_at, backoff_ms;
  tp_why_t *last_why;    /* last failure, for the backoff reason and log de-duplication */
  tp_why_t *down_why;    /* set while a peer-down notice waits */
  tp_peer_t *down_next;
  int down_queued;
};

typedef struct tp_req_s {
  htab_node_t node;
  struct tp_req_s *prev, *next; /* tp.deferred, once failed */
  tp_peer_t *peer;
  uint64_t corr;
  tp_reply_cb cb;
  void *ud;
  tp_status_t st;
  tp_why_t *why; /* non-NULL: failed, its callback waits on tp.deferred */
} tp_req_t;

/* The loop handles live apart from `tp` so tp_init can run again while the
 * previous ones are still closing. */
typedef struct {
  uv_idle_t idle;
  uv_check_t check;
  int refs;
} tp_kick_t;

static struct {
  int inited, stopping;
  uv_loop_t *loop;
  char *secret, *cluster, *self;
  size_t secret_len;
  size_t max_frame, high_water;
  uint64_t last_send_ns; /* when tp_send last queued a request (see the spin in tp__check_cb) */
  uint64_t handshake_ms, write_ms;
  void (*on_request)(tp_inbound_t *, const frame_request_t *);
  void (*on_abandoned)(tp_inbound_t *);
  void (*on_peer_down)(const char *, const char *);
  uv_tcp_t *listener;
  tp_conn_t *conns_in;
  size_t nconns_in;
  htab_t peers;
  tp_conn_t *dirty;
  tp_req_t deferred; /* sentinel of a circular list */
  size_t ndeferred;
  tp_peer_t *downs, *downs_tail;
  tp_kick_t *kick;
  size_t pending_out;
  tp_stats_t st;
} tp;

static char tp_readbuf[TP_READ_CHUNK];

static const char *const tp_frame_names[] = {"?", "HELLO", "AUTH", "AUTH_OK", "REQUEST", "REPLY"};

static void tp__close(tp_conn_t *c, tp_why_t *why, int notify);
static void tp__read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b);
static void tp__alloc_cb(uv_handle_t *h, size_t sz, uv_buf_t *b);

/* --- small helpers ------------------------------------------------------- */

static tp_why_t *tp__why_vnew(const char *fmt, va_list ap) {
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

static tp_why_t *tp__why(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static tp_why_t *tp__why(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  tp_why_t *w = tp__why_vnew(fmt, ap);
  va_end(ap);
  return w;
}

static tp_why_t *tp__why_ref(tp_why_t *w) {
  w->refs++;
  return w;
}

static void tp__why_unref(tp_why_t *w) {
  if (w && --w->refs == 0) free(w);
}

/* Copies peer-supplied bytes for a log line: no control characters, so a
 * hostile peer cannot forge or break log lines. */
static void tp__printable(char *dst, size_t cap, const char *src, size_t n) {
  size_t k = 0;
  for (size_t i = 0; i < n && k + 1 < cap; i++) {
    unsigned char ch = (unsigned char)src[i];
    dst[k++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
  }
  dst[k] = '\0';
}

static void tp__sockname(const struct sockaddr_storage *ss, char *out, size_t cap) {
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

static int tp__random(uint8_t *p, size_t n) {
  if (RAND_bytes(p, (int)n) == 1) return 0;
  return uv_random(NULL, NULL, p, n, 0, NULL);
}

/* HMAC-SHA256(secret, label | a | b); all zeroes without a secret. */
static int tp__proof(const char *label, const uint8_t *a, const uint8_t *b, uint8_t *out) {
  memset(out, 0, FRAME_PROOF);
  if (!tp.secret_len) return 0;
  uint8_t msg[16 + 2 * FRAME_NONCE];
  size_t l = strlen(label);
  memcpy(msg, label, l);
  memcpy(msg + l, a, FRAME_NONCE);
  memcpy(msg + l + FRAME_NONCE, b, FRAME_NONCE);
  unsigned int outlen = 0;
  if (!HMAC(EVP_sha256(), tp.secret, (int)tp.secret_len, msg, l + 2 * FRAME_NONCE, out, &outlen) ||
      outlen != FRAME_PROOF)
    return -1;
  return 0;
}

static void tp__buf_done(buf_t *b) {
  if (b->cap > TP_KEEP_CAP) buf_free(b);
  else buf_reset(b);
}

static uint64_t tp__corr_hash(uint64_t corr) { return hash_mix64(corr); }

static int tp__req_eq(const htab_node_t *n, const void *key, size_t len) {
  (void)len;
  return TP_CONTAINER(n, tp_req_t, node)->corr == *(const uint64_t *)key;
}

static tp_req_t *tp__req_find(tp_peer_t *p, uint64_t corr) {
  htab_node_t *n = htab_find(&p->pending, tp__corr_hash(corr), tp__req_eq, &corr, sizeof corr);
  return n ? TP_CONTAINER(n, tp_req_t, node) : NULL;
}

/* --- the kick: flushes and deferred callbacks at the end of the turn ----- */

static int tp__has_work(void) { return tp.dirty || tp.ndeferred || tp.downs; }

static void tp__idle_cb(uv_idle_t *h) { (void)h; /* only keeps the poll from blocking */ }

static void tp__check_cb(uv_check_t *h);

static void tp__kick(void) {
  if (!tp.kick || uv_is_active((uv_handle_t *)&tp.kick->check)) return;
  uv_idle_start(&tp.kick->idle, tp__idle_cb);
  uv_check_start(&tp.kick->check, tp__check_cb);
}

static void tp__mark_dirty(tp_conn_t *c) {
  if (c->dirty || c->closing) return;
  c->dirty = 1;
  c->dprev = NULL;
  c->dnext = tp.dirty;
  if (tp.dirty) tp.dirty->dprev = c;
  tp.dirty = c;
  tp__kick();
}

static void tp__unmark_dirty(tp_conn_t *c) {
  if (!c->dirty) return;
  if (c->dprev) c->dprev->dnext = c->dnext; else tp.dirty = c->dnext;
  if (c->dnext) c->dnext->dprev = c->dprev;
  c->dirty = 0;
  c->dprev = c->dnext = NULL;
}

static void tp__defer_unlink(tp_req_t *r) {
  r->prev->next = r->next;
  r->next->prev = r->prev;
  r->prev = r->next = NULL;
  tp.ndeferred--;
}

/* The request's callback will run from the deferred queue with `st`. */
static void tp__req_fail(tp_req_t *r, tp_status_t st, tp_why_t *why) {
  if (r->why) return; /* already failed */
  r->st = st;
  r->why = tp__why_ref(why);
  r->prev = tp.deferred.prev;
  r->next = &tp.deferred;
  tp.deferred.prev->next = r;
  tp.deferred.prev = r;
  tp.ndeferred++;
  tp__kick();
}

static void tp__run_one_deferred(void) {
  tp_req_t *r = tp.deferred.next;
  tp__defer_unlink(r);
  htab_remove(&r->peer->pending, &r->node);
  tp_why_t *why = r->why;
  r->cb(r->ud, r->st, 0, why->s, why->len);
  tp__why_unref(why);
  free(r);
}

/* Only the requests failed before this turn's drain started: a callback
 * that re-sends into a failing peer gets its answer next turn instead of
 * spinning here. */
static void tp__run_deferred(void) {
  size_t n = tp.ndeferred;
  while (n-- && tp.ndeferred) tp__run_one_deferred();
}

static void tp__peer_down(tp_peer_t *p, tp_why_t *why) {
  tp__why_unref(p->down_why);
  p->down_why = tp__why_ref(why);
  if (p->down_queued) return;
  p->down_queued = 1;
  p->down_next = NULL;
  if (tp.downs_tail) tp.downs_tail->down_next = p; else tp.downs = p;
  tp.downs_tail = p;
  tp__kick();
}

static void tp__run_downs(void) {
  while (tp.downs) {
    tp_peer_t *p = tp.downs;
    tp.downs = p->down_next;
    if (!tp.downs) tp.downs_tail = NULL;
    p->down_queued = 0;
    tp_why_t *why = p->down_why;
    p->down_why = NULL;
    if (tp.on_peer_down) tp.on_peer_down(p->addr, why->s);
    tp__why_unref(why);
  }
}

static void tp__flush(tp_conn_t *c);
static void tp__reprocess(tp_conn_t *c);

static void tp__check_cb(uv_check_t *h) {
  tp_kick_t *k = h->data;
  /* Peer-down first, so the router knows before it re-routes the failures. */
  tp__run_downs();
  if (tp.kick != k) return; /* a callback shut the transport down */
  tp__run_deferred();
  if (tp.kick != k) return;
  while (tp.dirty) {
    tp_conn_t *c = tp.dirty;
    tp__unmark_dirty(c);
    if (c->reprocess) tp__reprocess(c);
    if (tp.kick != k) return; /* on_request shut the transport down */
    tp__flush(c);
  }
  if (!tp__has_work()) {
    /* Right after a request went out, keep polling without sleeping: a
     * reply from a peer on the same network usually arrives in ~25 us,
     * and waking a process that slept in epoll_wait costs more than that
     * (measured: sequential cross-runner p50 59 us sleeping, 25 us with
     * this). Bounded, so an idle runner still sleeps. */
    if (uv_hrtime() - tp.last_send_ns < TP_SPIN_NS) return;
    uv_idle_stop(&k->idle);
    uv_check_stop(&k->check);
  }
}

static void tp__kick_close_cb(uv_handle_t *h) {
  tp_kick_t *k = h->data;
  if (--k->refs == 0) free(k);
}

/* --- connections: lifetime and writing ----------------------------------- */

static void tp__conn_unref(tp_conn_t *c) {
  if (--c->refs > 0) return;
  buf_free(&c->rbuf);
  buf_free(&c->out);
  buf_free(&c->wbuf);
  buf_free(&c->hold);
  free(c);
}

static void tp__conn_close_cb(uv_handle_t *h) { tp__conn_unref(h->data); }

static tp_conn_t *tp__conn_new(tp_dir_t dir) {
  tp_conn_t *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->dir = dir;
  uv_tcp_init(tp.loop, &c->tcp);
  uv_timer_init(tp.loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->gai.data = c;
  c->creq.data = c;
  c->wreq.data = c;
  c->refs = 2;
  return c;
}

/* Room for n more bytes at the end of `out`; tp__out_commit adds them. */
static uint8_t *tp__out_reserve(tp_conn_t *c, size_t n) {
  buf_reserve(&c->out, n);
  return (uint8_t *)c->out.data + c->out.len;
}

static void tp__out_commit(tp_conn_t *c, size_t n) {
  c->out.len += n;
  if (c->dir == TP_IN) tp.pending_out += n;
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
static void tp__stall_cb(uv_timer_t *t) {
  tp_conn_t *c = t->data;
  if (c->closing || !c->writing) {
    uv_timer_stop(t);
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
  sock_reset_on_close(&c->tcp);
  if (c->dir == TP_IN) {
    log_warn("transport: closing the connection from %s: it read none of our replies for %llu ms "
             "(%zu bytes unwritten)", c->remote, (unsigned long long)tp.write_ms, left);
    tp__close(c, NULL, 0);
  } else {
    tp__close(c, tp__why("connection to %s dropped: the peer read none of our requests for %llu ms "
                         "(%zu bytes unwritten)", c->remote, (unsigned long long)tp.write_ms, left), 1);
  }
}

static void tp__flush(tp_conn_t *c) {
  if (c->closing || c->writing || c->out.len == 0) return;
  buf_t t = c->wbuf;
  c->wbuf = c->out;
  c->out = t;
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
  tp.st.bytes_out += n;
  if (c->state == TP_S_READY) { /* before that the timer watches the handshake */
    c->stall_seen = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
    uv_timer_start(&c->timer, tp__stall_cb, tp.write_ms, tp.write_ms);
  }
}

static void tp__in_pressure(tp_conn_t *c);

static void tp__write_cb(uv_write_t *w, int status) {
  tp_conn_t *c = w->data;
  c->writing = 0;
  if (c->closing) return;
  if (c->state == TP_S_READY) uv_timer_stop(&c->timer); /* the stall watch ends with the write */
  if (status < 0) {
    tp__close(c, tp__why("write to %s failed: %s", c->remote, uv_strerror(status)), 1);
    return;
  }
  if (c->dir == TP_IN) tp.pending_out -= c->wbuf.len;
  tp__buf_done(&c->wbuf);
  if (c->out.len) tp__mark_dirty(c);
  if (c->dir == TP_IN) tp__in_pressure(c);
}

static void tp__start_reading(tp_conn_t *c) {
  if (c->reading || c->closing) return;
  if (uv_read_start((uv_stream_t *)&c->tcp, tp__alloc_cb, tp__read_cb) == 0) c->reading = 1;
}

static void tp__stop_reading(tp_conn_t *c) {
  if (!c->reading) return;
  uv_read_stop((uv_stream_t *)&c->tcp);
  c->reading = 0;
}

/* Reading (and decoding) pauses while the peer's replies pile up unwritten
 * or too many of its requests wait for replies, and resumes at half, so a
 * fast sender or a slow reader cannot grow the runner's memory without
 * bound. Frames already read wait in rbuf; the check handler decodes them
 * (not this function: it runs inside tp_reply, maybe inside a decode). */
static void tp__in_pressure(tp_conn_t *c) {
  if (c->closing || c->state != TP_S_READY) return;
  size_t unsent = c->out.len + c->wbuf.len;
  if (unsent > tp.high_water || c->nin >= TP_MAX_INBOUND) {
    c->paused = 1;
    tp__stop_reading(c);
  } else if (c->paused && unsent <= tp.high_water / 2 && c->nin <= TP_MAX_INBOUND / 2) {
    c->paused = 0;
    tp__start_reading(c);
    if (c->rbuf.len) {
      c->reprocess = 1;
      tp__mark_dirty(c);
    }
  }
}

/* --- closing -------------------------------------------------------------- */

static void tp__inbound_unlink(tp_inbound_t *in) {
  tp_conn_t *c = in->conn;
  if (in->prev) in->prev->next = in->next; else c->in_head = in->next;
  if (in->next) in->next->prev = in->prev; else c->in_tail = in->prev;
  in->prev = in->next = NULL;
  in->conn = NULL;
  c->nin--;
}

static void tp__in_closed(tp_conn_t *c) {
  if (c->linked) {
    if (c->prev) c->prev->next = c->next; else tp.conns_in = c->next;
    if (c->next) c->next->prev = c->prev;
    tp.nconns_in--;
    tp.st.conns_in--;
    c->linked = 0;
  }
  tp.pending_out -= c->out.len + c->wbuf.len;
  /* Popped one at a time: on_abandoned may reply to (or be told about) any
   * other request of this connection. */
  while (c->in_head) {
    tp_inbound_t *in = c->in_head;
    tp__inbound_unlink(in);
    in->abandoning = 1;
    if (tp.on_abandoned) tp.on_abandoned(in);
    free(in);
  }
}

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

static void tp__out_closed(tp_conn_t *c, tp_why_t *why, int notify) {
  tp_peer_t *p = c->peer;
  int was_ready = c->state == TP_S_READY;
  c->peer = NULL;
  if (c->counted) tp.st.conns_out--;
  if (!p) return;
  p->conn = NULL;
  if (!was_ready) tp.st.connect_failures++;
  tp__backoff(p, was_ready);
  if (notify) tp__log_out_failure(p, why);
  size_t i;
  for (htab_node_t *n = htab_first(&p->pending, &i); n; n = htab_next(&p->pending, n, &i)) {
    tp_req_t *r = TP_CONTAINER(n, tp_req_t, node);
    tp__req_fail(r, r->corr <= c->written_corr ? TP_LOST : TP_NOT_SENT, why);
  }
  if (notify) tp__peer_down(p, why);
}

/* Closes c (once) and takes ownership of `why`. notify: log it and tell
 * on_peer_down (an outgoing connection); a drop or shutdown does not. */
static void tp__close(tp_conn_t *c, tp_why_t *why, int notify) {
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

/* The peer broke the protocol or failed authentication: logged once (the
 * connection closes with it), counted, and only that connection closes. */
static void tp__fail(tp_conn_t *c, uint64_t *counter, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void tp__fail(tp_conn_t *c, uint64_t *counter, const char *fmt, ...) {
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

static void tp__timeout_cb(uv_timer_t *t) {
  tp_conn_t *c = t->data;
  if (c->dir == TP_IN)
    tp__fail(c, &tp.st.auth_failures, "did not authenticate within %llu ms", (unsigned long long)tp.handshake_ms);
  else
    tp__close(c, tp__why("connection to %s failed: no handshake within %llu ms", c->remote,
                         (unsigned long long)tp.handshake_ms), 1);
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
  *b = uv_buf_init(tp_readbuf, sizeof tp_readbuf);
}

static void tp__dispatch(tp_conn_t *c, const frame_t *f);

/* Decodes and dispatches every complete frame in p[0..len); returns the
 * bytes used, or stops early when the connection closed. */
static size_t tp__consume(tp_conn_t *c, const uint8_t *p, size_t len) {
  size_t off = 0;
  while (!c->closing && !c->paused) {
    frame_t f;
    size_t used = 0;
    size_t max = c->state == TP_S_READY ? tp.max_frame : TP_HANDSHAKE_MAX_FRAME;
    frame_status_t st = frame_decode(p + off, len - off, max, &f, &used);
    if (st == FRAME_NEED_MORE) break;
    if (st != FRAME_OK) {
      tp__fail(c, &tp.st.protocol_errors, "%s frame (%s)",
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

static void tp__read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  tp_conn_t *c = s->data;
  if (c->closing) return;
  if (n < 0) {
    const char *what = n == UV_EOF ? "closed by the peer" : uv_strerror((int)n);
    if (c->dir == TP_IN) {
      log_debug("transport: connection from %s closed: %s", c->remote, what);
      tp__close(c, NULL, 0);
    } else {
      tp__close(c, tp__why("connection to %s %s: %s%s", c->remote, c->state == TP_S_READY ? "lost" : "failed", what,
                           c->state == TP_S_AUTH ? " during authentication (is the cluster secret the same?)" : ""),
                1);
    }
    return;
  }
  if (n == 0) return;
  tp.st.bytes_in += (uint64_t)n;
  int in_rbuf = b->base != tp_readbuf;
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

/* --- the server side ----------------------------------------------------- */

static void tp__in_auth(tp_conn_t *c, const frame_auth_t *a) {
  char runner[64];
  tp__printable(runner, sizeof runner, a->runner.p, a->runner.n);
  uint8_t want[FRAME_PROOF];
  if (tp__proof("luster-client", c->nonce, a->nonce, want) != 0) {
    tp__fail(c, &tp.st.auth_failures, "could not compute the HMAC proof");
    return;
  }
  if (CRYPTO_memcmp(want, a->proof, FRAME_PROOF) != 0) {
    tp__fail(c, &tp.st.auth_failures, "runner \"%s\" failed authentication: %s", runner,
             tp.secret_len ? "wrong cluster secret" : "it has a cluster secret, this runner has none");
    return;
  }
  frame_auth_ok_t ok;
  if (tp__proof("luster-server", a->nonce, c->nonce, ok.proof) != 0) {
    tp__fail(c, &tp.st.auth_failures, "could not compute the HMAC proof");
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
  tp.st.requests_in++;
  tp.on_request(in, req);
  tp__in_pressure(c);
}

static void tp__dispatch_in(tp_conn_t *c, const frame_t *f) {
  if (c->state != TP_S_READY) {
    if (f->type == FRAME_AUTH) tp__in_auth(c, &f->u.auth);
    else tp__fail(c, &tp.st.auth_failures, "sent a %s frame before authenticating", tp_frame_names[f->type]);
    return;
  }
  if (f->type == FRAME_REQUEST && tp.on_request) tp__in_request(c, &f->u.request);
  else tp__fail(c, &tp.st.protocol_errors, "unexpected %s frame", tp_frame_names[f->type]);
}

static void tp__accept_cb(uv_stream_t *ls, int status) {
  if (status < 0) {
    log_warn("transport: accepting a connection failed: %s", uv_strerror(status));
    return;
  }
  tp_conn_t *c = tp__conn_new(TP_IN);
  if (!c) return;
  if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0 || tp.stopping || tp.nconns_in >= TP_MAX_CONNS_IN) {
    if (!tp.stopping && tp.nconns_in >= TP_MAX_CONNS_IN)
      log_warn("transport: refusing a connection: %d inbound connections already open", TP_MAX_CONNS_IN);
    tp__close(c, NULL, 0);
    return;
  }
  c->linked = 1;
  c->next = tp.conns_in;
  if (tp.conns_in) tp.conns_in->prev = c;
  tp.conns_in = c;
  tp.nconns_in++;
  tp.st.conns_in++;
  struct sockaddr_storage ss;
  int sslen = sizeof ss;
  memset(&ss, 0, sizeof ss);
  uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sslen);
  tp__sockname(&ss, c->remote, sizeof c->remote);
  uv_tcp_nodelay(&c->tcp, 1);
  uv_tcp_keepalive(&c->tcp, 1, TP_KEEPALIVE_S);

  frame_hello_t h = {FRAME_VERSION, tp.secret_len ? FRAME_HELLO_AUTH : 0, {0}, {tp.cluster, (uint32_t)strlen(tp.cluster)}};
  if (tp__random(c->nonce, FRAME_NONCE) != 0) {
    log_error("transport: no random bytes for a handshake nonce; closing the connection from %s", c->remote);
    tp__close(c, NULL, 0);
    return;
  }
  memcpy(h.nonce, c->nonce, FRAME_NONCE);
  size_t cap = FRAME_HEADER + 2 + FRAME_NONCE + 4 + h.cluster.n;
  tp__out_commit(c, frame_encode_hello(tp__out_reserve(c, cap), cap, &h));
  c->state = TP_S_AUTH;
  uv_timer_start(&c->timer, tp__timeout_cb, tp.handshake_ms, 0);
  tp__start_reading(c);
}

/* --- the client side ----------------------------------------------------- */

static int tp__hello_problem(tp_conn_t *c, const frame_hello_t *h) {
  if (h->version != FRAME_VERSION) {
    tp__fail(c, &tp.st.protocol_errors, "peer speaks frame version %u, this runner %u", h->version, FRAME_VERSION);
    return 1;
  }
  if (h->cluster.n != strlen(tp.cluster) || memcmp(h->cluster.p, tp.cluster, h->cluster.n) != 0) {
    char theirs[64];
    tp__printable(theirs, sizeof theirs, h->cluster.p, h->cluster.n);
    tp__fail(c, &tp.st.auth_failures, "cluster mismatch: peer is in cluster \"%s\", this runner in \"%s\"", theirs,
             tp.cluster);
    return 1;
  }
  int wants = h->flags & FRAME_HELLO_AUTH;
  if (wants && !tp.secret_len) {
    tp__fail(c, &tp.st.auth_failures, "peer requires a cluster secret (give this runner the same secret)");
    return 1;
  }
  if (!wants && tp.secret_len) {
    tp__fail(c, &tp.st.auth_failures, "peer has no cluster secret (give it the same secret as this runner)");
    return 1;
  }
  return 0;
}

static void tp__out_hello(tp_conn_t *c, const frame_hello_t *h) {
  if (tp__hello_problem(c, h)) return;
  memcpy(c->peer_nonce, h->nonce, FRAME_NONCE);
  frame_auth_t a;
  if (tp__random(c->nonce, FRAME_NONCE) != 0 || tp__proof("luster-client", c->peer_nonce, c->nonce, a.proof) != 0) {
    tp__fail(c, &tp.st.auth_failures, "could not compute the handshake nonce or proof");
    return;
  }
  memcpy(a.nonce, c->nonce, FRAME_NONCE);
  a.runner = (frame_str_t){tp.self, (uint32_t)strlen(tp.self)};
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
    buf_t t = c->out;
    c->out = c->hold;
    c->hold = t;
  } else {
    buf_add(&c->out, c->hold.data, c->hold.len);
    tp__buf_done(&c->hold);
  }
  c->appended_corr = c->hold_corr;
  tp__mark_dirty(c);
}

static void tp__out_auth_ok(tp_conn_t *c, const frame_auth_ok_t *ok) {
  uint8_t want[FRAME_PROOF];
  if (tp__proof("luster-server", c->nonce, c->peer_nonce, want) != 0 ||
      CRYPTO_memcmp(want, ok->proof, FRAME_PROOF) != 0) {
    tp__fail(c, &tp.st.auth_failures, "peer failed the cluster secret check (its secret differs)");
    return;
  }
  tp__out_ready(c);
}

static void tp__out_reply(tp_conn_t *c, const frame_reply_t *rep) {
  tp_req_t *r = tp__req_find(c->peer, rep->corr);
  if (!r || r->why) return; /* forgotten by its caller */
  htab_remove(&c->peer->pending, &r->node);
  tp.st.replies_in++;
  r->cb(r->ud, TP_REPLY, rep->kind, rep->body.p, rep->body.n);
  free(r);
}

static void tp__dispatch_out(tp_conn_t *c, const frame_t *f) {
  if (c->state == TP_S_HELLO && f->type == FRAME_HELLO) tp__out_hello(c, &f->u.hello);
  else if (c->state == TP_S_AUTH && f->type == FRAME_AUTH_OK) tp__out_auth_ok(c, &f->u.auth_ok);
  else if (c->state == TP_S_READY && f->type == FRAME_REPLY) tp__out_reply(c, &f->u.reply);
  else tp__fail(c, &tp.st.protocol_errors, "unexpected %s frame", tp_frame_names[f->type]);
}

static void tp__dispatch(tp_conn_t *c, const frame_t *f) {
  if (c->dir == TP_IN) tp__dispatch_in(c, f);
  else tp__dispatch_out(c, f);
}

static void tp__connect_cb(uv_connect_t *req, int status) {
  tp_conn_t *c = req->data;
  if (c->closing) return;
  if (status < 0) {
    tp__close(c, tp__why("cannot connect to %s: %s", c->remote, uv_strerror(status)), 1);
    return;
  }
  c->counted = 1;
  tp.st.conns_out++;
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
  tp_conn_t *c = tp__conn_new(TP_OUT);
  if (!c) abort();
  c->peer = p;
  p->conn = c;
  p->last_attempt = uv_now(tp.loop);
  snprintf(c->remote, sizeof c->remote, "%s", p->addr);
  uv_timer_start(&c->timer, tp__timeout_cb, tp.handshake_ms, 0);
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
  int rc = uv_getaddrinfo(tp.loop, &c->gai, tp__gai_cb, host, NULL, &hints);
  if (rc != 0) {
    tp__close(c, tp__why("cannot resolve %s: %s", c->remote, uv_strerror(rc)), 1);
    return;
  }
  c->refs++;
  c->resolving = 1;
}

/* --- public API ----------------------------------------------------------- */

static char *tp__strdup(const char *s) {
  char *d = strdup(s ? s : "");
  if (!d) abort();
  return d;
}

int tp_init(uv_loop_t *loop, const tp_config_t *cfg) {
  if (tp.inited) return UV_EALREADY;
  if (!loop || !cfg || !cfg->cluster || strlen(cfg->cluster) > TP_MAX_NAME ||
      (cfg->self && strlen(cfg->self) > TP_MAX_NAME))
    return UV_EINVAL;
  memset(&tp, 0, sizeof tp);
  tp.loop = loop;
  tp.secret = tp__strdup(cfg->secret);
  tp.secret_len = strlen(tp.secret);
  tp.cluster = tp__strdup(cfg->cluster);
  tp.self = tp__strdup(cfg->self);
  tp.max_frame = cfg->max_frame ? cfg->max_frame : TP_DEFAULT_MAX_FRAME;
  if (tp.max_frame > UINT32_MAX) tp.max_frame = UINT32_MAX;
  tp.high_water = cfg->high_water ? cfg->high_water : TP_DEFAULT_HIGH_WATER;
  tp.handshake_ms = cfg->handshake_timeout_ms ? cfg->handshake_timeout_ms : TP_DEFAULT_HANDSHAKE_MS;
  tp.write_ms = cfg->write_timeout_ms ? cfg->write_timeout_ms : TP_DEFAULT_WRITE_TIMEOUT_MS;
  tp.on_request = cfg->on_request;
  tp.on_abandoned = cfg->on_abandoned;
  tp.on_peer_down = cfg->on_peer_down;
  htab_init(&tp.peers);
  tp.deferred.prev = tp.deferred.next = &tp.deferred;
  tp.kick = calloc(1, sizeof *tp.kick);
  if (!tp.kick) abort();
  uv_idle_init(loop, &tp.kick->idle);
  uv_check_init(loop, &tp.kick->check);
  tp.kick->idle.data = tp.kick->check.data = tp.kick;
  tp.kick->refs = 2;
  tp.inited = 1;
  return 0;
}

static int tp__listen_addr(const char *host, int port, struct sockaddr_storage *ss) {
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
  int rc = uv_getaddrinfo(tp.loop, &req, NULL, host, NULL, &hints);
  if (rc != 0) return rc;
  memcpy(ss, req.addrinfo->ai_addr,
         req.addrinfo->ai_addrlen < sizeof *ss ? req.addrinfo->ai_addrlen : sizeof *ss);
  uv_freeaddrinfo(req.addrinfo);
  if (ss->ss_family == AF_INET6) ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
  else ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
  return 0;
}

int tp_listen(uv_loop_t *loop, const char *host, int port, const tp_config_t *cfg, char *bound, size_t bound_len) {
  if (!tp.inited) {
    int rc = tp_init(loop, cfg);
    if (rc) return rc;
  }
  if (tp.listener) return UV_EALREADY;
  if (!tp.on_request || port < 0 || port > 65535 || !host) return UV_EINVAL;
  struct sockaddr_storage ss;
  int rc = tp__listen_addr(host, port, &ss);
  if (rc) return rc;
  uv_tcp_t *l = malloc(sizeof *l);
  if (!l) return UV_ENOMEM;
  uv_tcp_init(tp.loop, l);
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
  tp.listener = l;
  return 0;
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
  if (len > UINT32_MAX || frame_reply_size(&r) - 4 > tp.max_frame) {
    snprintf(note, sizeof note, "the reply (%zu bytes) exceeds the transport's max_frame (%zu bytes)", len,
             tp.max_frame);
    log_warn("transport: to %s: %s; sent kind %d instead", c->remote, note, TP_KIND_TOO_LARGE);
    r.kind = TP_KIND_TOO_LARGE;
    r.body = (frame_str_t){note, (uint32_t)strlen(note)};
  }
  size_t size = frame_reply_size(&r);
  tp__out_commit(c, frame_encode_reply(tp__out_reserve(c, size), &r));
  tp.st.replies_out++;
  tp__in_pressure(c);
}

static int tp__peer_eq(const htab_node_t *n, const void *key, size_t len) {
  const tp_peer_t *p = TP_CONTAINER(n, tp_peer_t, node);
  return strlen(p->addr) == len && memcmp(p->addr, key, len) == 0;
}

static tp_peer_t *tp__peer_find(const char *addr) {
  size_t n = strlen(addr);
  htab_node_t *h = htab_find(&tp.peers, hash_bytes(addr, n), tp__peer_eq, addr, n);
  return h ? TP_CONTAINER(h, tp_peer_t, node) : NULL;
}

tp_peer_t *tp_peer(const char *addr) {
  if (!tp.inited || tp.stopping || !addr) return NULL;
  tp_peer_t *p = tp__peer_find(addr);
  if (p) return p;
  p = calloc(1, sizeof *p);
  if (!p) abort();
  p->addr = tp__strdup(addr);
  htab_init(&p->pending);
  p->node.hash = hash_bytes(addr, strlen(addr));
  if (htab_insert(&tp.peers, &p->node) != 0) abort();
  return p;
}

const char *tp_peer_addr(const tp_peer_t *p) { return p->addr; }

int tp_peer_ready(const tp_peer_t *p) { return p && p->conn && p->conn->state == TP_S_READY; }

/* Why a request cannot be queued now, or NULL. */
static tp_why_t *tp__send_refusal(tp_peer_t *p, size_t size) {
  if (tp.stopping) return tp__why("the transport is shutting down");
  if (size - 4 > tp.max_frame)
    return tp__why("the request (%zu bytes) exceeds the transport's max_frame (%zu bytes)", size, tp.max_frame);
  uint64_t now = uv_now(tp.loop);
  if (!p->conn && now < p->retry_at)
    return tp__why("peer %s is unreachable (%s); next attempt in %llu ms", p->addr,
                   p->last_why ? p->last_why->s : "connection failed", (unsigned long long)(p->retry_at - now));
  return NULL;
}

uint64_t tp_send(tp_peer_t *p, const frame_request_t *req, tp_reply_cb cb, void *ud) {
  tp.last_send_ns = uv_hrtime();
  if (!p) return 0; /* tp_peer failed (not initialised): nothing can be promised */
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
  tp_conn_t *c = p->conn;
  int ready = c->state == TP_S_READY;
  buf_t *q = ready ? &c->out : &c->hold;
  buf_reserve(q, size);
  q->len += frame_encode_request((uint8_t *)q->data + q->len, &fr);
  if (ready) {
    c->appended_corr = r->corr;
    tp__mark_dirty(c);
  } else {
    c->hold_corr = r->corr;
  }
  tp.st.requests_out++;
  return r->corr;
}

void tp_forget(tp_peer_t *p, uint64_t corr) {
  if (!p) return;
  tp_req_t *r = tp__req_find(p, corr);
  if (!r) return;
  htab_remove(&p->pending, &r->node);
  if (r->why) {
    tp__defer_unlink(r);
    tp__why_unref(r->why);
  }
  free(r);
}

void tp_peer_drop(const char *addr) {
  if (!tp.inited || !addr) return;
  tp_peer_t *p = tp__peer_find(addr);
  if (!p) return;
  if (p->conn) tp__close(p->conn, tp__why("peer %s left the cluster", p->addr), 0);
  p->backoff_ms = 0;
  p->retry_at = 0;
  tp__why_unref(p->last_why);
  p->last_why = NULL;
}

void tp_stop_listening(void) {
  if (!tp.listener) return;
  uv_close((uv_handle_t *)tp.listener, (uv_close_cb)free);
  tp.listener = NULL;
}

static void tp__free_peers(void) {
  size_t i;
  htab_node_t *n = htab_first(&tp.peers, &i);
  while (n) {
    htab_node_t *next = htab_next(&tp.peers, n, &i);
    tp_peer_t *p = TP_CONTAINER(n, tp_peer_t, node);
    htab_free(&p->pending); /* empty: every request was answered above */
    tp__why_unref(p->last_why);
    tp__why_unref(p->down_why);
    free(p->addr);
    free(p);
    n = next;
  }
  htab_free(&tp.peers);
}

void tp_shutdown(void) {
  if (!tp.inited || tp.stopping) return;
  tp.stopping = 1;
  tp_stop_listening();
  while (tp.conns_in) tp__close(tp.conns_in, NULL, 0);
  size_t i;
  for (htab_node_t *n = htab_first(&tp.peers, &i); n; n = htab_next(&tp.peers, n, &i)) {
    tp_peer_t *p = TP_CONTAINER(n, tp_peer_t, node);
    /* Every waiting request is in its connection or already failed. */
    if (p->conn) tp__close(p->conn, tp__why("the transport is shutting down"), 0);
  }
  while (tp.ndeferred) tp__run_one_deferred(); /* includes any a callback re-sends */
  tp.downs = tp.downs_tail = NULL;
  tp__free_peers();
  while (tp.dirty) tp__unmark_dirty(tp.dirty);
  uv_close((uv_handle_t *)&tp.kick->idle, tp__kick_close_cb);
  uv_close((uv_handle_t *)&tp.kick->check, tp__kick_close_cb);
  tp.kick = NULL;
  OPENSSL_cleanse(tp.secret, tp.secret_len);
  free(tp.secret);
  free(tp.cluster);
  free(tp.self);
  tp.secret = tp.cluster = tp.self = NULL;
  tp.secret_len = 0;
  tp.inited = 0;
  tp.stopping = 0;
}

size_t tp_pending_output(void) { return tp.pending_out; }

const tp_stats_t *tp_stats(void) { return &tp.st; }
