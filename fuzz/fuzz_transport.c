/* fuzz_transport.c - libFuzzer target: bytes from a peer on one runner-to-
 * runner connection, through the real transport (net/tp_*.c: frame decoder, the
 * authentication handshake on both sides, partial frames, back-pressure) on
 * the in-memory libuv of fake_uv.c.
 *
 * Input: byte 0 picks the mode (bit 0: we dialled out and the bytes are the
 * server's, else they are a client's; bit 1: a cluster secret; bit 2:
 * answer requests later; bits 3-7: read size, 0 = all at once); the rest is
 * what the peer sends. Without a secret a proof is 32 zero bytes, so the
 * fuzzer can get past the handshake.
 *
 * A second transport on the same loop stands by, configured but unused: the
 * transport is a value, so the first one's traffic must leave the second's
 * counters at zero, and each shuts down and frees on its own. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loop/log.h"
#include "fake_uv.h"
#include "net/transport.h"

#define MAX_LATER 256
#define SENDS 3

static tp_inbound_t *later[MAX_LATER];
static int nlater, defer_answers;
static int replies[SENDS];

static void check(int ok, const char *what) {
  if (!ok) {
    fprintf(stderr, "fuzz_transport: invariant broken: %s\n", what);
    abort();
  }
}

static void on_request(void *ud, tp_inbound_t *in, const frame_request_t *req) {
  check(req->type.n <= 4096 && req->payload.n <= 4096, "a request string longer than its frame");
  if (defer_answers && nlater < MAX_LATER) {
    later[nlater++] = in;
    return;
  }
  tp_reply(in, 0, req->payload.p, req->payload.n);
}

static void on_abandoned(void *ud, tp_inbound_t *in) {
  for (int i = 0; i < nlater; i++)
    if (later[i] == in) {
      later[i] = later[--nlater];
      return;
    }
  check(0, "on_abandoned for a request already answered");
}

static void on_reply(void *ud, tp_status_t st, uint8_t kind, const char *body, size_t len) {
  int i = (int)(intptr_t)ud;
  check(st == TP_REPLY || st == TP_NOT_SENT || st == TP_LOST, "unknown reply status");
  check(st != TP_REPLY || body || len == 0, "a reply body without bytes");
  replies[i]++;
}

static void answer_later(void) {
  while (nlater) tp_reply(later[--nlater], 1, "{}", 2);
  fuv_run();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  log_set_level(LOG_OFF);
  fuv_reset();
  nlater = 0;
  memset(replies, 0, sizeof replies);
  int outbound = data[0] & 1;
  defer_answers = data[0] & 4;
  size_t chunk = (size_t)(data[0] >> 3) * (data[0] >> 3);
  tp_config_t cfg = {
      .secret = (data[0] & 2) ? "s3cret" : NULL,
      .cluster = "fuzz",
      .self = "127.0.0.1:7000",
      .max_frame = 4096,
      .high_water = 256, /* small, so replies pause reading */
      .handshake_timeout_ms = 1000,
      .on_request = on_request,
      .on_abandoned = on_abandoned,
  };
  uv_stream_t **peer;
  transport_t *t = transport_new(&fuv_loop, &cfg);
  check(t != NULL, "transport_new");
  tp_config_t cfg2 = {.cluster = "other", .on_request = on_request};
  transport_t *bystander = transport_new(&fuv_loop, &cfg2);
  check(bystander != NULL && bystander != t, "a second transport in the same process");
  if (outbound) {
    tp_peer_t *p = tp_peer(t, "127.0.0.1:7001");
    for (int i = 0; i < SENDS; i++) {
      frame_request_t req = {.timeout_ms = 1000, .type = {"T", 1}, .id = {"i", 1}, .tag = {"R", 1},
                             .payload = {"{}", 2}, .headers = {"{}", 2}};
      tp_send(p, &req, on_reply, (void *)(intptr_t)i);
    }
    fuv_run(); /* connects */
    peer = &fuv_connected;
  } else {
    char bound[64];
    check(tp_listen(t, "127.0.0.1", 0, bound, sizeof bound) == 0, "tp_listen");
    fuv_listen_cb(fuv_listener, 0);
    fuv_run(); /* sends HELLO */
    peer = &fuv_accepted;
  }
  size_t fed = 0;
  for (int round = 0; round < 1000 && fed < size - 1; round++) {
    size_t k = fuv_feed(peer, data + 1 + fed, size - 1 - fed, chunk);
    fed += k;
    if (k == 0 && nlater == 0) break;
    answer_later(); /* drains replies, so paused reading resumes */
  }
  answer_later();
  fuv_fire_timers(); /* handshake timeout */
  fuv_eof(peer);
  const tp_stats_t *bs = tp_stats(bystander);
  check(bs->conns_in + bs->conns_out + bs->requests_in + bs->requests_out + bs->bytes_in + bs->bytes_out == 0,
        "the other transport's traffic counted in the bystander");
  tp_shutdown(t);
  fuv_run();
  transport_free(t);
  transport_free(bystander);
  fuv_run();
  check(nlater == 0, "an inbound request was neither answered nor abandoned");
  for (int i = 0; outbound && i < SENDS; i++) check(replies[i] == 1, "a request's callback did not run exactly once");
  check(fuv_open_handles() == 0, "a handle was left open");
  return 0;
}
