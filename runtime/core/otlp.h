/* otlp.h - a finished span and its OTLP/HTTP JSON encoding (an
 * ExportTraceServiceRequest, as the OTLP specification's "JSON Protobuf
 * Encoding" maps it: lowerCamelCase keys, trace and span ids as lowercase
 * hex, 64-bit integers as decimal strings, enums as integers). Pure: no I/O,
 * no clock; the caller fills in the times and the ids. */
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
/* A copied string is cut to this many bytes (at a UTF-8 character boundary),
 * so a queued span's size is bounded whatever an id or an error says. */
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

/* A finished span. Strings are borrowed (otlp_span_clone makes an owned
 * copy); parent_id all zero marks a root span. */
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

/* An owned copy of s in one allocation (free it with otlp_span_free), its
 * strings cut to OTLP_MAX_STR bytes. NULL when out of memory. */
otlp_span_t *otlp_span_clone(const otlp_span_t *s);
void otlp_span_free(otlp_span_t *s);

/* Appends an ExportTraceServiceRequest holding spans[0..n) to b: one
 * resourceSpans whose resource says service.name "luster" and
 * service.instance.id runner (omitted when runner is NULL or empty), one
 * scopeSpans of scope "luster". Bytes that are not UTF-8 are written as
 * U+FFFD, so the output is valid JSON whatever the strings hold. */
void otlp_encode(buf_t *b, const char *runner, const otlp_span_t *const *spans, size_t n);

/* The same request written piece by piece, for a caller whose spans are not
 * in one array: begin, then each span (first 1 for the first one), then
 * end. */
void otlp_encode_begin(buf_t *b, const char *runner);
void otlp_encode_span(buf_t *b, const otlp_span_t *s, int first);
void otlp_encode_end(buf_t *b);

#endif
