/* fuzz_frame.c - libFuzzer target: core/frame.c's decoder on arbitrary bytes.
 *
 * Every frame it accepts must re-encode to exactly the bytes it came from
 * (one encoding per frame, so nothing is read that was not written), and
 * every proper prefix of an accepted frame must be NEED_MORE, never an
 * error: a frame split across reads must not close a connection.
 * Input: byte 0 picks max_frame; the rest is a stream of frames. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/frame.h"

static void check(int ok, const char *what) {
  if (!ok) {
    fprintf(stderr, "fuzz_frame: invariant broken: %s\n", what);
    abort();
  }
}

static int inside(const uint8_t *buf, size_t used, frame_str_t s) {
  return s.n == 0 || ((const uint8_t *)s.p >= buf && (const uint8_t *)s.p + s.n <= buf + used);
}

static size_t reencode(const frame_t *f, uint8_t *out, size_t cap) {
  switch (f->type) {
  case FRAME_HELLO: return frame_encode_hello(out, cap, &f->u.hello);
  case FRAME_AUTH: return frame_encode_auth(out, cap, &f->u.auth);
  case FRAME_AUTH_OK: return frame_encode_auth_ok(out, cap, &f->u.auth_ok);
  case FRAME_REQUEST:
    if (frame_request_size(&f->u.request) > cap) return 0;
    return frame_encode_request(out, &f->u.request);
  case FRAME_REPLY:
    if (frame_reply_size(&f->u.reply) > cap) return 0;
    return frame_encode_reply(out, &f->u.reply);
  }
  check(0, "decoded an unknown frame type");
  return 0;
}

static void one(const uint8_t *buf, size_t used, const frame_t *f, size_t max_frame) {
  check(used >= FRAME_HEADER && used - 4 <= max_frame, "frame size outside the limit");
  if (f->type == FRAME_HELLO) check(inside(buf, used, f->u.hello.cluster), "string outside its frame");
  if (f->type == FRAME_AUTH) check(inside(buf, used, f->u.auth.runner), "string outside its frame");
  if (f->type == FRAME_REPLY) check(inside(buf, used, f->u.reply.body), "string outside its frame");
  if (f->type == FRAME_REQUEST) {
    const frame_request_t *q = &f->u.request;
    check(inside(buf, used, q->type) && inside(buf, used, q->id) && inside(buf, used, q->tag) &&
              inside(buf, used, q->payload) && inside(buf, used, q->headers),
          "string outside its frame");
  }
  uint8_t *out = malloc(used);
  check(out != NULL, "malloc");
  size_t n = reencode(f, out, used);
  check(n == used && memcmp(out, buf, used) == 0, "a decoded frame does not re-encode to its bytes");
  free(out);
  size_t cuts[] = {0, 3, 4, 5, used / 2, used - 1};
  for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
    frame_t g;
    size_t u = 0;
    if (cuts[i] < used) check(frame_decode(buf, cuts[i], max_frame, &g, &u) == FRAME_NEED_MORE, "a prefix is not NEED_MORE");
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  static const size_t limits[] = {16u << 20, 1024, 64, 1};
  size_t max_frame = limits[data[0] & 3];
  const uint8_t *p = data + 1;
  size_t left = size - 1;
  for (;;) {
    frame_t f;
    size_t used = 0;
    frame_status_t st = frame_decode(p, left, max_frame, &f, &used);
    check(frame_status_name(st) != NULL, "status without a name");
    if (st != FRAME_OK) break;
    check(used <= left, "used more bytes than given");
    one(p, used, &f, max_frame);
    p += used;
    left -= used;
  }
  return 0;
}
