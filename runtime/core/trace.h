/* trace.h - W3C Trace Context: the `traceparent` header's form, parsed and
 * printed, and the identifiers it carries. Pure: the caller supplies the
 * random bytes of new identifiers. */
#ifndef LUSTER_TRACE_H
#define LUSTER_TRACE_H

#include <stddef.h>
#include <stdint.h>

#define TRACE_ID_LEN 16     /* bytes of a trace id */
#define TRACE_SPAN_LEN 8    /* bytes of a span (parent) id */
#define TRACE_HEADER_LEN 55 /* "00-" 32 hex "-" 16 hex "-" 2 hex */
#define TRACE_FLAG_SAMPLED 0x01

typedef struct {
  uint8_t trace_id[TRACE_ID_LEN];
  uint8_t span_id[TRACE_SPAN_LEN]; /* the sender's span: the parent of ours */
  uint8_t flags;
} trace_ctx_t;

/* Reads a traceparent value (surrounding spaces and tabs ignored). Returns
 * 0, or -1 when it is not one this version of the format accepts: wrong
 * length or separators, hex that is not lowercase, version ff, an all-zero
 * trace or span id, or version 00 with anything after the flags. A later
 * version is read by version 00's fields when what follows them starts with
 * '-'. out is written only on success. */
int trace_parse(const char *s, size_t n, trace_ctx_t *out);

/* Writes the version 00 header of t: TRACE_HEADER_LEN characters and a NUL. */
void trace_format(const trace_ctx_t *t, char out[TRACE_HEADER_LEN + 1]);

/* Writes n bytes as 2n lowercase hex digits and a NUL. */
void trace_hex(const uint8_t *bytes, size_t n, char *out);

/* 1 when the n bytes are all zero (an id that the format calls invalid). */
int trace_id_zero(const uint8_t *bytes, size_t n);

#endif
