/* transport.h - runner-to-runner TCP: length-prefixed frames (core/frame.h),
 * request/reply correlation, pipelining, back-pressure, reconnects and, with
 * a cluster secret, an HMAC challenge in both directions before any request.
 *
 * Each runner listens (--listen) for requests from its peers and opens one
 * outgoing connection per peer for its own requests; replies come back on
 * the connection the request went out on. Writes are batched: frames queued
 * during one loop turn leave in one write. Everything runs on the loop
 * thread; no callback is ever called from inside the function that caused it
 * (callbacks run from libuv callbacks or a deferred queue). */
#ifndef LUSTER_TRANSPORT_H
#define LUSTER_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/frame.h"

typedef struct tp_inbound_s tp_inbound_t; /* a request received, awaiting its reply */
typedef struct tp_peer_s tp_peer_t;       /* our outgoing connection to one peer */

typedef struct {
  const char *secret;    /* NULL or "": no authentication (both sides must agree) */
  const char *cluster;   /* tag both sides must agree on, e.g. "luster_/300" */
  const char *self;      /* this runner's advertised address, sent in AUTH */
  size_t max_frame;      /* frames longer than this close the connection */
  size_t high_water;     /* stop reading a connection while this many reply bytes wait to be written */
  uint64_t handshake_timeout_ms;
  /* A request arrived. The receiver must later call tp_reply(in, ...) exactly
   * once, or get tp_abandoned(in) first. It may keep `in` and read req's
   * strings only during this call (copy what it needs). */
  void (*on_request)(tp_inbound_t *in, const frame_request_t *req);
  /* The connection of `in` closed before the reply was given: the receiver
   * drops its reference (cancels the work). `in` is freed after this returns;
   * tp_reply must not be called for it afterwards. */
  void (*on_abandoned)(tp_inbound_t *in);
  /* An outgoing connection to `addr` was lost or could not be made (refused,
   * reset, handshake failed). Used for fast failure detection. */
  void (*on_peer_down)(const char *addr, const char *why);
} tp_config_t;

typedef struct {
  uint64_t conns_in, conns_out;           /* open now */
  uint64_t requests_in, requests_out;     /* totals */
  uint64_t replies_in, replies_out;
  uint64_t bytes_in, bytes_out;
  uint64_t auth_failures, protocol_errors, connect_failures;
} tp_stats_t;

/* Stores the configuration (strings copied) and sets up the loop handles;
 * required before tp_listen and tp_peer. */
int tp_init(uv_loop_t *loop, const tp_config_t *cfg);
/* Listens on host:port (port 0 picks one); bound receives "host:port". */
int tp_listen(uv_loop_t *loop, const char *host, int port, const tp_config_t *cfg, char *bound, size_t bound_len);
/* Per-request user pointer for the receiver. */
void tp_inbound_set_ud(tp_inbound_t *in, void *ud);
void *tp_inbound_ud(const tp_inbound_t *in);
/* Sends the reply and frees `in`. */
void tp_reply(tp_inbound_t *in, uint8_t kind, const char *body, size_t len);

typedef enum {
  TP_REPLY = 0,   /* a reply arrived: kind, body */
  TP_NOT_SENT,    /* the request never left this runner (no connection, handshake failed, queue full): safe to re-route */
  TP_LOST,        /* it was written but the connection closed before the reply: outcome unknown */
} tp_status_t;

typedef void (*tp_reply_cb)(void *ud, tp_status_t st, uint8_t kind, const char *body, size_t len);

/* The peer at "host:port", created on first use (connects lazily, reconnects
 * with backoff while requests wait). */
tp_peer_t *tp_peer(const char *addr);
/* 1 when the connection is up and authenticated. */
int tp_peer_ready(const tp_peer_t *p);
/* Queues a request (req->corr is assigned by the transport); cb runs exactly
 * once unless tp_forget is called first. Returns the correlation id. */
uint64_t tp_send(tp_peer_t *p, const frame_request_t *req, tp_reply_cb cb, void *ud);
/* The caller stopped waiting: cb will not run for corr. */
void tp_forget(tp_peer_t *p, uint64_t corr);
/* Closes the connection to a peer that left; its waiting requests get
 * TP_NOT_SENT or TP_LOST. */
void tp_peer_drop(const char *addr);

/* Stops accepting connections (shutdown starts). */
void tp_stop_listening(void);
/* Closes everything: waiting outgoing requests get TP_NOT_SENT/TP_LOST,
 * inbound requests without replies get on_abandoned. */
void tp_shutdown(void);
/* Bytes of replies still queued for writing on inbound connections. */
size_t tp_pending_output(void);
const tp_stats_t *tp_stats(void);

#endif
