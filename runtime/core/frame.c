/* frame.c - encode and decode the runner-to-runner frames (see frame.h).
 *
 * The decoder is the first thing network input meets, so it is total: it
 * reads only inside buf[0..len), never allocates, and classifies every input
 * as exactly one frame (OK), a prefix of one (NEED_MORE), or garbage. A frame
 * is accepted only when its fields fill its declared length exactly: a
 * string length that runs past the frame, or bytes left over after the last
 * field, make it BAD. That way two sides that disagree on a layout fail at
 * once instead of misreading each other's fields. */
#include "frame.h"

#include <string.h>

/* Fixed part of each frame body after the type byte. */
#define FRAME_HELLO_FIXED (1 + 1 + FRAME_NONCE + 4)
#define FRAME_AUTH_FIXED (FRAME_NONCE + FRAME_PROOF + 4)
#define FRAME_AUTH_OK_FIXED FRAME_PROOF
#define FRAME_REQUEST_FIXED (8 + 4 + 4 + 8 + 8 + TRACE_ID_LEN + TRACE_SPAN_LEN + 1 + 5 * 4)
#define FRAME_REPLY_FIXED (8 + 1 + 4)

/* --- writing ------------------------------------------------------------- */

static uint8_t *frame__u8(uint8_t *p, uint8_t v) {
  *p = v;
  return p + 1;
}

static uint8_t *frame__u32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
  return p + 4;
}

static uint8_t *frame__u64(uint8_t *p, uint64_t v) {
  p = frame__u32(p, (uint32_t)(v >> 32));
  return frame__u32(p, (uint32_t)v);
}

/* memcpy with n == 0 and a NULL source is undefined, and an empty string
 * may well be {NULL, 0}. */
static uint8_t *frame__bytes(uint8_t *p, const void *src, size_t n) {
  if (n) memcpy(p, src, n);
  return p + n;
}

static uint8_t *frame__str(uint8_t *p, frame_str_t s) {
  p = frame__u32(p, s.n);
  return frame__bytes(p, s.p, s.n);
}

/* The header: the length counts the type byte and the fields. */
static uint8_t *frame__header(uint8_t *p, size_t total, uint8_t type) {
  p = frame__u32(p, (uint32_t)(total - 4));
  return frame__u8(p, type);
}

size_t frame_request_size(const frame_request_t *r) {
  return FRAME_HEADER + FRAME_REQUEST_FIXED + (size_t)r->type.n + r->id.n + r->tag.n + r->payload.n +
         r->headers.n;
}

size_t frame_reply_size(const frame_reply_t *r) { return FRAME_HEADER + FRAME_REPLY_FIXED + (size_t)r->body.n; }

/* The length prefix is 32 bits: a frame whose strings add up past that
 * cannot be expressed, and writing a wrapped length would desynchronise the
 * stream, so the encoders refuse it (return 0). */
static int frame__fits(size_t total) { return total - 4 <= UINT32_MAX && total >= FRAME_HEADER; }

size_t frame_encode_request(uint8_t *out, const frame_request_t *r) {
  size_t total = frame_request_size(r);
  if (!frame__fits(total)) return 0;
  uint8_t *p = frame__header(out, total, FRAME_REQUEST);
  p = frame__u64(p, r->corr);
  p = frame__u32(p, r->flags);
  p = frame__u32(p, r->timeout_ms);
  p = frame__u64(p, r->stored);
  p = frame__u64(p, r->deliver_at);
  p = frame__bytes(p, r->trace.trace_id, TRACE_ID_LEN);
  p = frame__bytes(p, r->trace.span_id, TRACE_SPAN_LEN);
  p = frame__u8(p, r->trace.flags);
  p = frame__str(p, r->type);
  p = frame__str(p, r->id);
  p = frame__str(p, r->tag);
  p = frame__str(p, r->payload);
  p = frame__str(p, r->headers);
  return (size_t)(p - out);
}

size_t frame_encode_reply(uint8_t *out, const frame_reply_t *r) {
  size_t total = frame_reply_size(r);
  if (!frame__fits(total)) return 0;
  uint8_t *p = frame__header(out, total, FRAME_REPLY);
  p = frame__u64(p, r->corr);
  p = frame__u8(p, r->kind);
  p = frame__str(p, r->body);
  return (size_t)(p - out);
}

size_t frame_encode_hello(uint8_t *out, size_t cap, const frame_hello_t *h) {
  size_t total = FRAME_HEADER + FRAME_HELLO_FIXED + (size_t)h->cluster.n;
  if (total > cap || !frame__fits(total)) return 0;
  uint8_t *p = frame__header(out, total, FRAME_HELLO);
  p = frame__u8(p, h->version);
  p = frame__u8(p, h->flags);
  p = frame__bytes(p, h->nonce, FRAME_NONCE);
  p = frame__str(p, h->cluster);
  return (size_t)(p - out);
}

size_t frame_encode_auth(uint8_t *out, size_t cap, const frame_auth_t *a) {
  size_t total = FRAME_HEADER + FRAME_AUTH_FIXED + (size_t)a->runner.n;
  if (total > cap || !frame__fits(total)) return 0;
  uint8_t *p = frame__header(out, total, FRAME_AUTH);
  p = frame__bytes(p, a->nonce, FRAME_NONCE);
  p = frame__bytes(p, a->proof, FRAME_PROOF);
  p = frame__str(p, a->runner);
  return (size_t)(p - out);
}

size_t frame_encode_auth_ok(uint8_t *out, size_t cap, const frame_auth_ok_t *a) {
  size_t total = FRAME_HEADER + FRAME_AUTH_OK_FIXED;
  if (total > cap) return 0;
  uint8_t *p = frame__header(out, total, FRAME_AUTH_OK);
  p = frame__bytes(p, a->proof, FRAME_PROOF);
  return (size_t)(p - out);
}

/* --- reading ------------------------------------------------------------- */

/* A cursor over one frame's body. Every read checks the bytes left first and
 * sets `bad` instead of reading past the end; later reads then fail too, so
 * the decoders check once, at the end. */
typedef struct {
  const uint8_t *p;
  size_t left;
  int bad;
} frame_rd_t;

static int frame__take(frame_rd_t *r, size_t n) {
  if (r->bad || r->left < n) {
    r->bad = 1;
    return 0;
  }
  return 1;
}

static uint8_t frame__rd_u8(frame_rd_t *r) {
  if (!frame__take(r, 1)) return 0;
  uint8_t v = r->p[0];
  r->p++;
  r->left--;
  return v;
}

static uint32_t frame__rd_u32(frame_rd_t *r) {
  if (!frame__take(r, 4)) return 0;
  uint32_t v = (uint32_t)r->p[0] << 24 | (uint32_t)r->p[1] << 16 | (uint32_t)r->p[2] << 8 | r->p[3];
  r->p += 4;
  r->left -= 4;
  return v;
}

static uint64_t frame__rd_u64(frame_rd_t *r) {
  uint64_t hi = frame__rd_u32(r);
  return hi << 32 | frame__rd_u32(r);
}

static void frame__rd_bytes(frame_rd_t *r, uint8_t *dst, size_t n) {
  if (!frame__take(r, n)) {
    memset(dst, 0, n);
    return;
  }
  memcpy(dst, r->p, n);
  r->p += n;
  r->left -= n;
}

static frame_str_t frame__rd_str(frame_rd_t *r) {
  frame_str_t s = {"", 0};
  uint32_t n = frame__rd_u32(r);
  if (!frame__take(r, n)) return s;
  s.p = (const char *)r->p;
  s.n = n;
  r->p += n;
  r->left -= n;
  return s;
}

static void frame__rd_hello(frame_rd_t *r, frame_hello_t *h) {
  h->version = frame__rd_u8(r);
  h->flags = frame__rd_u8(r);
  frame__rd_bytes(r, h->nonce, FRAME_NONCE);
  h->cluster = frame__rd_str(r);
}

static void frame__rd_auth(frame_rd_t *r, frame_auth_t *a) {
  frame__rd_bytes(r, a->nonce, FRAME_NONCE);
  frame__rd_bytes(r, a->proof, FRAME_PROOF);
  a->runner = frame__rd_str(r);
}

static void frame__rd_request(frame_rd_t *r, frame_request_t *q) {
  q->corr = frame__rd_u64(r);
  q->flags = frame__rd_u32(r);
  q->timeout_ms = frame__rd_u32(r);
  q->stored = frame__rd_u64(r);
  q->deliver_at = frame__rd_u64(r);
  frame__rd_bytes(r, q->trace.trace_id, TRACE_ID_LEN);
  frame__rd_bytes(r, q->trace.span_id, TRACE_SPAN_LEN);
  q->trace.flags = frame__rd_u8(r);
  q->type = frame__rd_str(r);
  q->id = frame__rd_str(r);
  q->tag = frame__rd_str(r);
  q->payload = frame__rd_str(r);
  q->headers = frame__rd_str(r);
}

static void frame__rd_reply(frame_rd_t *r, frame_reply_t *q) {
  q->corr = frame__rd_u64(r);
  q->kind = frame__rd_u8(r);
  q->body = frame__rd_str(r);
}

static int frame__known(uint8_t type) { return type >= FRAME_HELLO && type <= FRAME_REPLY; }

/* The checks are ordered so garbage is refused as early as possible: an
 * oversized or empty length after 4 bytes, an unknown type after 5, without
 * waiting for (and buffering) a body that will never be valid. */
frame_status_t frame_decode(const uint8_t *buf, size_t len, size_t max_frame, frame_t *f, size_t *used) {
  if (len < 4) return FRAME_NEED_MORE;
  uint32_t flen = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 | (uint32_t)buf[2] << 8 | buf[3];
  if (flen > max_frame) return FRAME_TOO_LARGE;
  if (flen == 0) return FRAME_BAD; /* not even a type byte */
  if (len < FRAME_HEADER) return FRAME_NEED_MORE;
  uint8_t type = buf[4];
  if (!frame__known(type)) return FRAME_BAD;
  if (len - 4 < flen) return FRAME_NEED_MORE;

  memset(f, 0, sizeof *f);
  f->type = type;
  frame_rd_t r = {buf + FRAME_HEADER, flen - 1, 0};
  switch (type) {
  case FRAME_HELLO: frame__rd_hello(&r, &f->u.hello); break;
  case FRAME_AUTH: frame__rd_auth(&r, &f->u.auth); break;
  case FRAME_AUTH_OK: frame__rd_bytes(&r, f->u.auth_ok.proof, FRAME_PROOF); break;
  case FRAME_REQUEST: frame__rd_request(&r, &f->u.request); break;
  default: frame__rd_reply(&r, &f->u.reply); break;
  }
  if (r.bad || r.left != 0) return FRAME_BAD;
  *used = 4 + (size_t)flen;
  return FRAME_OK;
}

const char *frame_status_name(frame_status_t s) {
  switch (s) {
  case FRAME_OK: return "ok";
  case FRAME_NEED_MORE: return "need_more";
  case FRAME_TOO_LARGE: return "too_large";
  case FRAME_BAD: return "bad";
  }
  return "unknown";
}
