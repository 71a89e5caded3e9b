/* transport_int.h - what the transport's own files share: the transport value,
 * a connection (tp_conn.c), the listening side (tp_server.c) and the dialing
 * side with its peers and requests (tp_client.c). Not for other modules: they
 * use transport.h.
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
 * Reading. libuv reads into the transport's read buffer; complete frames are
 * decoded straight from it, and only a trailing partial frame is copied into
 * the connection's own buffer. A large frame already announced by its length
 * is read directly into that buffer. A connection therefore holds at most
 * one partial frame (bounded by max_frame, 1024 bytes before
 * authentication), plus, when back-pressure pauses it mid-read, the rest of
 * that one read: decoding stops at the limit rather than answering a whole
 * read's worth of requests (one read of small requests can ask for
 * megabytes of replies), and resumes from the check handler once the
 * replies have drained.
 *
 * Lifetime. A connection is freed when its handles have closed and any
 * getaddrinfo has returned (`refs`), never inside a callback that might
 * still be using it: code after a user callback checks `closing` first.
 * Once closing, a connection no longer touches its transport, so the
 * transport may be freed while its connections finish closing. */
#ifndef LUSTER_TRANSPORT_INT_H
#define LUSTER_TRANSPORT_INT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/buf.h"
#include "core/htab.h"
#include "net/transport.h"

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
  transport_t *tp; /* not used once closing */
  tp_dir_t dir;
  tp_state_t state;
  int refs;
  int closing, writing, reading, counted, linked, dirty;
  int resolving; /* a getaddrinfo is in flight and holds a ref */
  int paused;    /* in: over a limit; reading and decoding wait for the output to drain */
  int reprocess; /* in: rbuf holds frames not yet decoded (decode them from the check handler) */
  tp_conn_t *prev, *next;   /* tp->conns_in */
  tp_conn_t *dprev, *dnext; /* tp->dirty */
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
  transport_t *tp;
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
  struct tp_req_s *prev, *next; /* tp->deferred, once failed */
  tp_peer_t *peer;
  uint64_t corr;
  tp_reply_cb cb;
  void *ud;
  tp_status_t st;
  tp_why_t *why; /* non-NULL: failed, its callback waits on tp->deferred */
} tp_req_t;

/* The loop handles live apart from the transport so it can be freed while
 * they are still closing. */
typedef struct {
  uv_idle_t idle;
  uv_check_t check;
  transport_t *tp; /* NULL once the transport shut down */
  int refs;
} tp_kick_t;

struct transport_s {
  int stopping, stopped;
  uv_loop_t *loop;
  char *secret, *cluster, *self;
  size_t secret_len;
  size_t max_frame, high_water;
  uint64_t last_send_ns; /* when tp_send last queued a request (see the spin in tp__check_cb) */
  uint64_t handshake_ms, write_ms;
  void (*on_request)(void *, tp_inbound_t *, const frame_request_t *);
  void (*on_abandoned)(void *, tp_inbound_t *);
  void (*on_peer_down)(void *, const char *, const char *);
  void *ud; /* the callbacks' */
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
  char *readbuf; /* TP_READ_CHUNK bytes every connection reads into first (see Reading above); made on first use */
};

extern const char *const tp__frame_names[];

/* Reasons (tp_conn.c). */
tp_why_t *tp__why_vnew(const char *fmt, va_list ap);
tp_why_t *tp__why(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
tp_why_t *tp__why_ref(tp_why_t *w);
void tp__why_unref(tp_why_t *w);

/* Helpers (tp_conn.c). */
/* Copies peer-supplied bytes for a log line: no control characters. */
void tp__printable(char *dst, size_t cap, const char *src, size_t n);
void tp__sockname(const struct sockaddr_storage *ss, char *out, size_t cap);
int tp__random(uint8_t *p, size_t n);
/* HMAC-SHA256(secret, label | a | b); all zeroes without a secret. */
int tp__proof(const transport_t *t, const char *label, const uint8_t *a, const uint8_t *b, uint8_t *out);
void tp__buf_done(buf_t *b);
char *tp__strdup(const char *s);

/* The end-of-turn kick (tp_conn.c). */
void tp__kick(transport_t *t);
void tp__mark_dirty(tp_conn_t *c);
void tp__unmark_dirty(tp_conn_t *c);

/* A connection (tp_conn.c). */
tp_conn_t *tp__conn_new(transport_t *t, tp_dir_t dir);
void tp__conn_unref(tp_conn_t *c);
/* Room for n more bytes at the end of `out`; tp__out_commit adds them. */
uint8_t *tp__out_reserve(tp_conn_t *c, size_t n);
void tp__out_commit(tp_conn_t *c, size_t n);
void tp__start_reading(tp_conn_t *c);
void tp__stop_reading(tp_conn_t *c);
/* Closes c (once) and takes ownership of `why`. notify: log it and tell
 * on_peer_down (an outgoing connection); a drop or shutdown does not. */
void tp__close(tp_conn_t *c, tp_why_t *why, int notify);
/* The peer broke the protocol or failed authentication: logged once (the
 * connection closes with it), counted, and only that connection closes. */
void tp__fail(tp_conn_t *c, uint64_t *counter, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void tp__timeout_cb(uv_timer_t *t);

/* The listening side (tp_server.c). */
void tp__dispatch_in(tp_conn_t *c, const frame_t *f);
void tp__in_pressure(tp_conn_t *c);
void tp__in_closed(tp_conn_t *c);

/* The dialing side (tp_client.c). */
void tp__dispatch_out(tp_conn_t *c, const frame_t *f);
void tp__out_closed(tp_conn_t *c, tp_why_t *why, int notify);
void tp__run_downs(transport_t *t);
void tp__run_deferred(transport_t *t);
void tp__run_one_deferred(transport_t *t);
void tp__free_peers(transport_t *t);

#endif
