/* otlp.h - a finished span and its two OTLP/HTTP encodings of an
 * ExportTraceServiceRequest: binary protobuf (the default of OTLP/HTTP,
 * written by hand: varints and length-delimited fields, ids as raw bytes)
 * and JSON, as the OTLP specification's "JSON Protobuf Encoding" maps it
 * (lowerCamelCase keys, ids as lowercase hex, 64-bit integers as decimal
 * strings, enums as integers). Pure: no I/O, no clock; the caller fills in
 * the times and the ids. */
#ifndef LUSTER_OTLP_H
#define LUSTER_OTLP_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/trace.h"

/* The attribute keys luster's spans carry. */
#define OTLP_ATTR_TYPE "luster.type"       /* entity type */
#define OTLP_ATTR_ID "luster.id"           /* entity id */
#define OTLP_ATTR_RPC "luster.rpc"         /* rpc tag */
#define OTLP_ATTR_OUTCOME "luster.outcome"  /* ok, error, timeout, ... as in luster_messages_total */
#define OTLP_ATTR_PEER "luster.peer_runner" /* the runner a call went to */

/* Enough for the five above plus a few (an HTTP method and code, a shard). */
#define OTLP_MAX_ATTRS 8
/* An encoded string is cut to this many bytes (at a UTF-8 character
 * boundary), so a queued span's size is bounded whatever an id or an error
 * says. */
#define OTLP_MAX_STR 1024

typedef enum {
  OTLP_KIND_UNSPECIFIED = 0,
  OTLP_KIND_INTERNAL = 1,
  OTLP_KIND_SERVER = 2,   /* the gateway's request; a handler run for a remote caller */
  OTLP_KIND_CLIENT = 3,   /* a call to another entity or runner */
  OTLP_KIND_PRODUCER = 4, /* a persisted message stored for later delivery */
  OTLP_KIND_CONSUMER = 5, /* its delivery */
} otlp_kind_t;

typedef enum { OTLP_STATUS_UNSET = 0, OTLP_STATUS_OK = 1, OTLP_STATUS_ERROR = 2 } otlp_status_t;

/* A string attribute when str is not NULL, else an integer one. */
typedef struct {
  const char *key;
  const char *str;
  int64_t num;
} otlp_attr_t;

/* A finished span. Strings are borrowed (an exporter encodes the span when
 * it is queued, so nothing outlives the call); parent_id all zero marks a
 * root span. */
typedef struct {
  uint8_t trace_id[TRACE_ID_LEN];
  uint8_t span_id[TRACE_SPAN_LEN];
  uint8_t parent_id[TRACE_SPAN_LEN];
  uint8_t flags; /* the W3C trace flags (TRACE_FLAG_SAMPLED) */
  const char *name;
  otlp_kind_t kind;
  uint64_t start_ns, end_ns; /* unix time in nanoseconds */
  otlp_status_t status;
  const char *status_msg; /* NULL or "" for none; sent with OTLP_STATUS_ERROR */
  int nattrs;
  otlp_attr_t attrs[OTLP_MAX_ATTRS];
} otlp_span_t;

/* Zeroes s: no name, kind unspecified, status unset, no attributes. */
void otlp_span_init(otlp_span_t *s);

/* Append an attribute (key and str borrowed). Return 0, or -ENOSPC when the
 * span has OTLP_MAX_ATTRS already, -EINVAL for a NULL or empty key. */
int otlp_span_attr_str(otlp_span_t *s, const char *key, const char *value);
int otlp_span_attr_int(otlp_span_t *s, const char *key, int64_t value);

typedef enum {
  OTLP_PROTOBUF = 0, /* "http/protobuf", Content-Type application/x-protobuf */
  OTLP_JSON = 1,     /* "http/json", Content-Type application/json */
} otlp_protocol_t;

/* "http/protobuf" or "http/json" (as OTEL_EXPORTER_OTLP_PROTOCOL spells
 * them): 0 and *out set, else -1. */
int otlp_protocol_parse(const char *s, otlp_protocol_t *out);
const char *otlp_protocol_name(otlp_protocol_t p);
const char *otlp_content_type(otlp_protocol_t p);

/* A request is built from items, one per span, so an exporter can encode a
 * span when it is queued and send a run of them later without copying:
 *   protobuf: the ScopeSpans field holding the span (tag 2, length, Span);
 *   JSON: ',' then the span object.
 * Every string is cut to OTLP_MAX_STR bytes (at a UTF-8 character boundary)
 * and bytes that are not UTF-8 are written as U+FFFD: a collector refuses a
 * whole batch over one bad string (protobuf string fields must be UTF-8
 * too). No allocation beyond b's growth, no printf. */
void otlp_encode_item(buf_t *b, otlp_protocol_t p, const otlp_span_t *s);

/* What goes around items_len bytes of items to make an
 * ExportTraceServiceRequest: one resourceSpans whose resource says
 * service.name "luster" and service.instance.id runner (omitted when runner
 * is NULL or empty), one scopeSpans of scope "luster". Appends the bytes
 * before the items to head and those after them to tail, and returns how
 * many leading bytes of the items to leave out (JSON: the first comma). */
size_t otlp_encode_wrap(buf_t *head, buf_t *tail, otlp_protocol_t p, const char *runner, size_t items_len);

/* A whole request holding spans[0..n), appended to b. */
void otlp_encode(buf_t *b, otlp_protocol_t p, const char *runner, const otlp_span_t *const *spans, size_t n);

#endif
