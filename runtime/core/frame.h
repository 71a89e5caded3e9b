/* frame.h - the runner-to-runner wire format (pure: no I/O).
 *
 * Every frame is a 4-byte big-endian length (of what follows it), a 1-byte
 * frame type, then the type's fields. Integers are big-endian. Byte strings
 * (entity type, id, RPC tag, payload, headers, reply body) are a length then
 * the bytes, passed through untouched: the core never parses payloads.
 *
 *   HELLO    (server → client, first frame): u8 version, u8 flags
 *            (FRAME_HELLO_AUTH when the server requires the secret),
 *            32-byte nonce, str cluster (a tag both sides must agree on)
 *   AUTH     (client → server): 32-byte client nonce, 32-byte proof
 *            HMAC-SHA256(secret, "luster-client" | server nonce | client nonce)
 *            (zeroes when no secret), str runner (the client's advertise address)
 *   AUTH_OK  (server → client): 32-byte proof
 *            HMAC-SHA256(secret, "luster-server" | client nonce | server nonce)
 *   REQUEST  u64 corr, u32 flags, u32 timeout_ms, u64 stored (the request
 *            id of a persisted message already stored, else 0), u64
 *            deliver_at (epoch ms, 0 = now), 16-byte trace id, 8-byte
 *            parent span id, u8 trace flags (all zero: no trace context),
 *            str type, str id, str tag, str payload, str headers
 *   REPLY    u64 corr, u8 kind, str body
 *
 * str = u32 length + bytes. */
#ifndef LUSTER_FRAME_H
#define LUSTER_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "core/trace.h"

#define FRAME_VERSION 3 /* 3: requests carry the trace context */
#define FRAME_NONCE 32
#define FRAME_PROOF 32
#define FRAME_HEADER 5 /* u32 length + u8 type */

enum {
  FRAME_HELLO = 1,
  FRAME_AUTH = 2,
  FRAME_AUTH_OK = 3,
  FRAME_REQUEST = 4,
  FRAME_REPLY = 5,
};

enum { FRAME_HELLO_AUTH = 1 };

typedef struct {
  const char *p;
  uint32_t n;
} frame_str_t;

typedef struct {
  uint8_t version, flags;
  uint8_t nonce[FRAME_NONCE];
  frame_str_t cluster;
} frame_hello_t;

typedef struct {
  uint8_t nonce[FRAME_NONCE];
  uint8_t proof[FRAME_PROOF];
  frame_str_t runner;
} frame_auth_t;

typedef struct {
  uint8_t proof[FRAME_PROOF];
} frame_auth_ok_t;

typedef struct {
  uint64_t corr;
  uint32_t flags;
  uint32_t timeout_ms;
  uint64_t stored, deliver_at;
  trace_ctx_t trace;
  frame_str_t type, id, tag, payload, headers;
} frame_request_t;

typedef struct {
  uint64_t corr;
  uint8_t kind;
  frame_str_t body;
} frame_reply_t;

typedef struct {
  uint8_t type;
  union {
    frame_hello_t hello;
    frame_auth_t auth;
    frame_auth_ok_t auth_ok;
    frame_request_t request;
    frame_reply_t reply;
  } u;
} frame_t;

/* Encoded sizes (header included), so callers can reserve space once. */
size_t frame_request_size(const frame_request_t *r);
size_t frame_reply_size(const frame_reply_t *r);
/* Each encoder writes the whole frame (header included) at out, which has
 * room for the size above (or FRAME_HEADER + the fixed fields for the
 * handshake frames; 512 bytes is always enough for those with short strings),
 * and returns the bytes written. */
size_t frame_encode_request(uint8_t *out, const frame_request_t *r);
size_t frame_encode_reply(uint8_t *out, const frame_reply_t *r);
size_t frame_encode_hello(uint8_t *out, size_t cap, const frame_hello_t *h);
size_t frame_encode_auth(uint8_t *out, size_t cap, const frame_auth_t *a);
size_t frame_encode_auth_ok(uint8_t *out, size_t cap, const frame_auth_ok_t *a);

typedef enum {
  FRAME_OK = 0,      /* one frame decoded; *used = its bytes */
  FRAME_NEED_MORE,   /* incomplete: read more bytes */
  FRAME_TOO_LARGE,   /* the length prefix exceeds max_frame */
  FRAME_BAD,         /* unknown type, or fields that do not fit the length */
} frame_status_t;

/* Decodes the first frame in buf[0..len). Strings in *f point into buf. */
frame_status_t frame_decode(const uint8_t *buf, size_t len, size_t max_frame, frame_t *f, size_t *used);
const char *frame_status_name(frame_status_t s);

#endif
