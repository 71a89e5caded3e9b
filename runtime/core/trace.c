/* trace.c - W3C Trace Context's traceparent header, parsed and printed (see
 * trace.h for the rules it enforces). */
#include "core/trace.h"

#include <string.h>

static int trace__nibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1; /* uppercase is not the format's: two spellings of one id would differ */
}

/* Reads 2n lowercase hex digits into n bytes; -1 on any other character. */
static int trace__unhex(const char *s, size_t n, uint8_t *out) {
  for (size_t i = 0; i < n; i++) {
    int hi = trace__nibble(s[2 * i]), lo = trace__nibble(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return -1;
    out[i] = (uint8_t)(hi << 4 | lo);
  }
  return 0;
}

int trace_id_zero(const uint8_t *bytes, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (bytes[i]) return 0;
  return 1;
}

int trace_parse(const char *s, size_t n, trace_ctx_t *out) {
  while (n && (*s == ' ' || *s == '\t')) s++, n--;
  while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
  if (n < TRACE_HEADER_LEN || s[2] != '-' || s[35] != '-' || s[52] != '-') return -1;
  uint8_t version;
  trace_ctx_t t;
  if (trace__unhex(s, 1, &version) || version == 0xff) return -1;
  /* Version 00 is exactly its four fields; a later one may add fields, each
   * after a '-', and is read by the fields 00 defines. */
  if (n > TRACE_HEADER_LEN && (version == 0 || s[TRACE_HEADER_LEN] != '-')) return -1;
  if (trace__unhex(s + 3, TRACE_ID_LEN, t.trace_id) || trace__unhex(s + 36, TRACE_SPAN_LEN, t.span_id) ||
      trace__unhex(s + 53, 1, &t.flags))
    return -1;
  if (trace_id_zero(t.trace_id, TRACE_ID_LEN) || trace_id_zero(t.span_id, TRACE_SPAN_LEN)) return -1;
  *out = t;
  return 0;
}

void trace_hex(const uint8_t *bytes, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[bytes[i] >> 4];
    out[2 * i + 1] = digits[bytes[i] & 15];
  }
  out[2 * n] = '\0';
}

void trace_format(const trace_ctx_t *t, char out[TRACE_HEADER_LEN + 1]) {
  memcpy(out, "00-", 3);
  trace_hex(t->trace_id, TRACE_ID_LEN, out + 3);
  out[35] = '-';
  trace_hex(t->span_id, TRACE_SPAN_LEN, out + 36);
  out[52] = '-';
  trace_hex(&t->flags, 1, out + 53);
}
