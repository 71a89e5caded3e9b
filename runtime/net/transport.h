/* transport.h - runner-to-runner TCP: length-prefixed frames (core/frame.h),
 * request/reply correlation, pipelining, back-pressure, reconnects and, with
 * a cluster secret, an HMAC challenge in both directions before any request.
 *
 * Each runner listens (--listen) for requests from its peers and opens one
 * outgoing connection per peer for its own requests; replies come back on
 * the connection the request went out on. Writes are batched: frames queued
 * during one loop turn leave in one write. Everything runs on the loop
 * thread; no callback is ever called from inside the function that caused it
 * (callbacks run from libuv callbacks or a deferred queue).
 *
 * Life cycle: transport_new (configuration; one value per use, so two
 * transports can live in one process, each on its own or a shared loop),
 * then tp_listen on a runner that takes requests, tp_peer / tp_send for its
 * own requests, tp_shutdown at the end and transport_free once it is no
 * longer read. Nothing is kept in file-scope state.
 *
 * Limits (beyond the configured ones): at most 64 MiB of requests per peer
 * waiting to be written; at most 65536 requests awaiting replies per inbound
 * connection (reading pauses, like for high_water); frames before
 * authentication at most 1024 bytes; at most 4096 inbound connections; a
 * write the peer reads none of for write_timeout_ms resets the connection. */
#ifndef LUSTER_TRANSPORT_H
#define LUSTER_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/frame.h"

typedef struct transport_s transport_t;   /* one transport: its loop, listener, peers and counters */
typedef struct tp_inbound_s tp_inbound_t; /* a request received, awaiting its reply */
typedef struct tp_peer_s tp_peer_t;       /* our outgoing connection to one peer */

/* Strings are copied by transport_new; zero numbers take the default shown. */
typedef struct {
  const char *secret;    /* NULL or "": no authentication (both sides must agree) */
  const char *cluster;   /* tag both sides must agree on, e.g. "luster_/300" (at most 255 bytes) */
  const char *self;      /* this runner's advertised address, sent in AUTH (NULL: ""; at most 255 bytes) */
  size_t max_frame;      /* frames longer than this close the connection (16 MiB; counts the bytes after
                          * the length prefix). Requests and replies that would be longer are not sent:
                          * see TP_NOT_SENT and TP_KIND_TOO_LARGE. */
  size_t high_water;     /* stop reading a connection while this many reply bytes wait to be written (4 MiB) */
  uint64_t handshake_timeout_ms; /* connect + handshake, and an inbound connection's AUTH (5000) */
  uint64_t write_timeout_ms;     /* a peer that reads none of a write for this long is reset (5000) */
  /* A request arrived. The receiver must later call tp_reply(in, ...) exactly
   * once, or get on_abandoned(in) first. It may keep `in` and read req's
   * strings only during this call (copy what it needs). */
  void (*on_request)(void *ud, tp_inbound_t *in, const frame_request_t *req);
  /* The connection of `in` closed before the reply was given: the receiver
   * drops its reference (cancels the work). `in` is freed after this returns;
   * tp_reply must not be called for it afterwards. */
  void (*on_abandoned)(void *ud, tp_inbound_t *in);
  /* An outgoing connection to `addr` was lost or could not be made (refused,
   * reset, handshake failed). Used for fast failure detection. */
  void (*on_peer_down)(void *ud, const char *addr, const char *why);
  void *ud; /* passed to the three callbacks above */
} tp_config_t;

typedef struct {
  uint64_t conns_in, conns_out;           /* open now */
  uint64_t requests_in, requests_out;     /* totals */
  uint64_t replies_in, replies_out;
  uint64_t bytes_in, bytes_out;
  uint64_t auth_failures, protocol_errors, connect_failures;
} tp_stats_t;

/* A transport on `loop` with a copy of cfg. NULL when cfg is invalid (NULL,
 * no cluster tag, a tag or self address longer than 255 bytes). */
transport_t *transport_new(uv_loop_t *loop, const tp_config_t *cfg);
/* Shuts t down if tp_shutdown was not called, and frees it. Its handles may
 * still be closing: let the loop run to finish them. NULL does nothing. */
void transport_free(transport_t *t);
/* Listens on host:port (port 0 picks one); bound receives "host:port"
 * ("[v6]:port" for IPv6). The configuration's on_request must be set. A
 * host name (not a numeric address) is resolved synchronously: this runs at
 * start-up, before the loop does. 0 or a negative libuv error (UV_EALREADY
 * when t already listens). */
int tp_listen(transport_t *t, const char *host, int port, char *bound, size_t bound_len);
/* Per-request user pointer for the receiver. */
void tp_inbound_set_ud(tp_inbound_t *in, void *ud);
void *tp_inbound_ud(const tp_inbound_t *in);
/* Sends the reply and frees `in`. A reply whose frame would exceed max_frame
 * is not sent as is: the transport logs it and sends kind TP_KIND_TOO_LARGE
 * with a one-line explanation as the body instead, so the caller is answered
 * and the connection survives. Called for an `in` inside its on_abandoned,
 * it does nothing. */
void tp_reply(tp_inbound_t *in, uint8_t kind, const char *body, size_t len);

/* The reply kind the transport substitutes for a reply too large to send;
 * callers should keep their own kinds below it. */
#define TP_KIND_TOO_LARGE 255

typedef enum {
  TP_REPLY = 0,   /* a reply arrived: kind, body */
  TP_NOT_SENT,    /* the request never left this runner (no connection, handshake failed, queue full): safe to re-route */
  TP_LOST,        /* it was written but the connection closed before the reply: outcome unknown */
} tp_status_t;

/* For TP_REPLY, kind and body are the reply's (body valid during the call).
 * For TP_NOT_SENT and TP_LOST, kind is 0 and body a human-readable reason
 * ("connection to 10.0.0.2:7000 lost: connection reset by peer"). */
typedef void (*tp_reply_cb)(void *ud, tp_status_t st, uint8_t kind, const char *body, size_t len);

/* The peer at "host:port" (IPv4, [IPv6] or a host name, resolved without
 * blocking) of t, created on first use; it connects on the first tp_send.
 * NULL during or after tp_shutdown. The pointer stays valid until
 * tp_shutdown. */
tp_peer_t *tp_peer(transport_t *t, const char *addr);
/* The address the peer was created with ("host:port"). */
const char *tp_peer_addr(const tp_peer_t *p);
/* 1 when the connection is up and authenticated. */
int tp_peer_ready(const tp_peer_t *p);
/* Queues a request (req->corr is assigned by the transport); cb runs exactly
 * once unless tp_forget is called first. Returns the correlation id.
 * Requests wait while a connection is being made and leave together once it
 * is authenticated. After a failed attempt, the peer is in backoff (50 ms
 * after the attempt, doubling per consecutive failure up to 1 s; attempts
 * are at least 50 ms apart even after a working connection drops): a
 * tp_send then fails with TP_NOT_SENT without connecting. So do a request
 * longer than max_frame, one past the 64 MiB waiting to be written, and any
 * tp_send during or after tp_shutdown. Failures are reported from the
 * deferred queue, never from inside tp_send; on_peer_down runs before the
 * TP_NOT_SENT / TP_LOST callbacks of the same failure. p NULL (tp_peer
 * failed): returns 0 and cb never runs. */
uint64_t tp_send(tp_peer_t *p, const frame_request_t *req, tp_reply_cb cb, void *ud);
/* The caller stopped waiting: cb will not run for corr. */
void tp_forget(tp_peer_t *p, uint64_t corr);
/* Closes the connection to a peer that left; its waiting requests get
 * TP_NOT_SENT or TP_LOST (deferred), on_peer_down is not called, and the
 * backoff is cleared so a later tp_send connects at once. */
void tp_peer_drop(transport_t *t, const char *addr);

/* Stops accepting connections (shutdown starts). */
void tp_stop_listening(transport_t *t);
/* Closes everything: waiting outgoing requests get TP_NOT_SENT/TP_LOST,
 * inbound requests without replies get on_abandoned. Unlike everywhere
 * else, these callbacks run from inside tp_shutdown (on_abandoned first,
 * then the reply callbacks); on_peer_down is not called. Callbacks may call
 * tp_send (it fails, reported before tp_shutdown returns), tp_forget and
 * tp_reply. Afterwards every tp_peer_t pointer is invalid, the handles are
 * closing (uv_run can finish) and tp_stats keeps the final counts until
 * transport_free. A second call does nothing. */
void tp_shutdown(transport_t *t);
/* Bytes of replies still queued for writing on inbound connections. */
size_t tp_pending_output(const transport_t *t);
const tp_stats_t *tp_stats(const transport_t *t);

#endif
