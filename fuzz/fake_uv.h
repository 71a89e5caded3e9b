/* fake_uv.h - an in-memory stand-in for the libuv calls of net/http.c and
 * net/tp_conn.c, net/tp_server.c, net/tp_client.c, so fuzz targets can drive the real connection code with
 * bytes (no sockets, no threads, deterministic). Callbacks that libuv would
 * run on a later loop turn (writes, shutdowns, closes, connects, lookups) are
 * queued and run by fuv_run; timers fire only when fuv_fire_timers says so. */
#ifndef LUSTER_FUZZ_FAKE_UV_H
#define LUSTER_FUZZ_FAKE_UV_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* The one loop every handle belongs to. */
extern uv_loop_t fuv_loop;
/* The last listener, the last accepted and the last connected stream (the
 * latter two NULL again once closed). */
extern uv_stream_t *fuv_listener;
extern uv_connection_cb fuv_listen_cb;
extern uv_stream_t *fuv_accepted;
extern uv_stream_t *fuv_connected;

void fuv_reset(void);
/* Runs queued callbacks and active check handles until nothing is queued
 * (bounded, so a callback that queues forever cannot hang a target). */
void fuv_run(void);
/* Fires every active timer once (then runs what they queued). */
void fuv_fire_timers(void);
/* Delivers p[0..n) to *sp (&fuv_accepted or &fuv_connected, which a close
 * sets to NULL) as reads of at most `chunk` bytes each, while it is open and
 * reading; returns the bytes delivered. */
size_t fuv_feed(uv_stream_t **sp, const uint8_t *p, size_t n, size_t chunk);
/* Delivers EOF to *sp if it is open and reading. */
void fuv_eof(uv_stream_t **sp);
/* Handles opened and not yet closed (0 after a clean shutdown). */
int fuv_open_handles(void);

#endif
