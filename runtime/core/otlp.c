/* otlp.c - spans and their OTLP/HTTP JSON encoding (see otlp.h). */
#include "core/otlp.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

void otlp_span_init(otlp_span_t *s) { memset(s, 0, sizeof *s); }

static int otlp__attr(otlp_span_t *s, const char *key, const char *str, int64_t num) {
  if (!key || !*key) return -EINVAL;
  if (s->nattrs >= OTLP_MAX_ATTRS) return -ENOSPC;
  s->attrs[s->nattrs++] = (otlp_attr_t){.key = key, .str = str, .num = num};
  return 0;
}

int otlp_span_attr_str(otlp_span_t *s, const char *key, const char *value) {
  return otlp__attr(s, key, value ? value : "", 0);
}

int otlp_span_attr_int(otlp_span_t *s, const char *key, int64_t value) { return otlp__attr(s, key, NULL, value); }

/* The length of s cut to OTLP_MAX_STR bytes without splitting a UTF-8
 * sequence: the cut backs off over continuation bytes (10xxxxxx). */
static size_t otlp__cut(const char *s) {
  size_t n = strnlen(s, OTLP_MAX_STR + 1);
  if (n <= OTLP_MAX_STR) return n;
  n = OTLP_MAX_STR;
  while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
  return n;
}

/* Copies s (cut) to *at, advancing it; NULL stays NULL. */
static const char *otlp__copy(char **at, const char *s) {
  if (!s) return NULL;
  size_t n = otlp__cut(s);
  char *d = *at;
  memcpy(d, s, n);
  d[n] = '\0';
  *at += n + 1;
  return d;
}

otlp_span_t *otlp_span_clone(const otlp_span_t *s) {
  /* One block: the struct, then every string, so a queued span is freed
   * with one call and costs one allocation on the caller's path. */
  size_t need = sizeof *s;
  const char *strs[2 + 2 * OTLP_MAX_ATTRS];
  int ns = 0;
  strs[ns++] = s->name;
  strs[ns++] = s->status_msg;
  int nattrs = s->nattrs < 0 ? 0 : s->nattrs > OTLP_MAX_ATTRS ? OTLP_MAX_ATTRS : s->nattrs;
  for (int i = 0; i < nattrs; i++) {
    strs[ns++] = s->attrs[i].key;
    strs[ns++] = s->attrs[i].str;
  }
  for (int i = 0; i < ns; i++)
    if (strs[i]) need += otlp__cut(strs[i]) + 1;
  otlp_span_t *c = malloc(need);
  if (!c) return NULL;
  *c = *s;
  c->nattrs = nattrs;
  char *at = (char *)(c + 1);
  c->name = otlp__copy(&at, s->name);
  c->status_msg = otlp__copy(&at, s->status_msg);
  for (int i = 0; i < nattrs; i++) {
    c->attrs[i].key = otlp__copy(&at, s->attrs[i].key);
    c->attrs[i].str = otlp__copy(&at, s->attrs[i].str);
  }
  return c;
}

void otlp_span_free(otlp_span_t *s) { free(s); }

/* The length of the valid UTF-8 sequence at s[0..n), or 0 when the bytes
 * there are not one (an overlong form, a surrogate, above U+10FFFF, a stray
 * continuation byte or a sequence cut short). */
static size_t otlp__utf8(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  if (c < 0x80) return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF; /* the allowed range of the second byte */
  if (c >= 0xC2 && c <= 0xDF) len = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else return 0;
  if (n < len || s[1] < lo || s[1] > hi) return 0;
  for (size_t i = 2; i < len; i++)
    if ((s[i] & 0xC0) != 0x80) return 0;
  return len;
}

/* s as a JSON string literal, quotes included. Control characters are
 * escaped; a byte that does not start a valid UTF-8 sequence becomes
 * U+FFFD, since a collector refuses the whole batch over one bad string. */
static void otlp__str(buf_t *b, const char *s) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *p = (const unsigned char *)(s ? s : "");
  size_t n = strlen((const char *)p);
  buf_reserve(b, n + 2);
  buf_addc(b, '"');
  for (size_t i = 0; i < n;) {
    /* A run of printable ASCII needing no escape goes in one copy: names,
     * ids and keys are nearly always all of it. */
    size_t run = i;
    while (run < n && p[run] >= 0x20 && p[run] < 0x7f && p[run] != '"' && p[run] != '\\') run++;
    if (run > i) {
      buf_add(b, p + i, run - i);
      i = run;
      continue;
    }
    unsigned char c = p[i];
    size_t len = otlp__utf8(p + i, n - i);
    if (len == 0) {
      buf_adds(b, "\\ufffd");
      i++;
    } else if (c == '"' || c == '\\') {
      char e[2] = {'\\', (char)c};
      buf_add(b, e, 2);
      i++;
    } else if (c < 0x20) {
      if (c == '\n') buf_adds(b, "\\n");
      else if (c == '\r') buf_adds(b, "\\r");
      else if (c == '\t') buf_adds(b, "\\t");
      else {
        char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        buf_add(b, e, 6);
      }
      i++;
    } else {
      buf_add(b, p + i, len);
      i += len;
    }
  }
  buf_addc(b, '"');
}

/* "key":"hex", written without printf: the encoder runs for every span. */
static void otlp__hex(buf_t *b, const char *key, const uint8_t *bytes, size_t n) {
  char hex[2 * TRACE_ID_LEN + 1];
  trace_hex(bytes, n, hex);
  buf_addc(b, '"');
  buf_adds(b, key);
  buf_add(b, "\":\"", 3);
  buf_add(b, hex, 2 * n);
  buf_addc(b, '"');
}

/* v in decimal, quoted when q (the JSON mapping writes 64-bit integers as
 * strings). */
static void otlp__u64(buf_t *b, uint64_t v, int q) {
  char d[24];
  int i = (int)sizeof d;
  do {
    d[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  if (q) buf_addc(b, '"');
  buf_add(b, d + i, sizeof d - (size_t)i);
  if (q) buf_addc(b, '"');
}

static void otlp__kv_str(buf_t *b, const char *key, const char *value) {
  buf_adds(b, "{\"key\":");
  otlp__str(b, key);
  buf_adds(b, ",\"value\":{\"stringValue\":");
  otlp__str(b, value);
  buf_adds(b, "}}");
}

static void otlp__attrs(buf_t *b, const otlp_span_t *s) {
  buf_adds(b, ",\"attributes\":[");
  for (int i = 0; i < s->nattrs && i < OTLP_MAX_ATTRS; i++) {
    const otlp_attr_t *a = &s->attrs[i];
    if (i) buf_addc(b, ',');
    if (a->str) {
      otlp__kv_str(b, a->key, a->str);
    } else {
      /* int64 is a decimal string in the protobuf JSON mapping */
      buf_adds(b, "{\"key\":");
      otlp__str(b, a->key);
      buf_adds(b, ",\"value\":{\"intValue\":");
      if (a->num < 0) {
        buf_add(b, "\"-", 2);
        otlp__u64(b, 0 - (uint64_t)a->num, 0);
        buf_addc(b, '"');
      } else {
        otlp__u64(b, (uint64_t)a->num, 1);
      }
      buf_adds(b, "}}");
    }
  }
  buf_addc(b, ']');
}

static void otlp__span(buf_t *b, const otlp_span_t *s) {
  buf_addc(b, '{');
  otlp__hex(b, "traceId", s->trace_id, TRACE_ID_LEN);
  buf_addc(b, ',');
  otlp__hex(b, "spanId", s->span_id, TRACE_SPAN_LEN);
  if (!trace_id_zero(s->parent_id, TRACE_SPAN_LEN)) {
    buf_addc(b, ',');
    otlp__hex(b, "parentSpanId", s->parent_id, TRACE_SPAN_LEN);
  }
  if (s->flags) { /* fixed32: a JSON number */
    buf_adds(b, ",\"flags\":");
    otlp__u64(b, s->flags, 0);
  }
  buf_adds(b, ",\"name\":");
  otlp__str(b, s->name);
  buf_adds(b, ",\"kind\":");
  otlp__u64(b, (uint64_t)s->kind, 0);
  buf_adds(b, ",\"startTimeUnixNano\":");
  otlp__u64(b, s->start_ns, 1);
  buf_adds(b, ",\"endTimeUnixNano\":");
  otlp__u64(b, s->end_ns, 1);
  otlp__attrs(b, s);
  buf_adds(b, ",\"status\":{\"code\":");
  otlp__u64(b, (uint64_t)s->status, 0);
  if (s->status_msg && *s->status_msg) {
    buf_adds(b, ",\"message\":");
    otlp__str(b, s->status_msg);
  }
  buf_adds(b, "}}");
}

void otlp_encode_begin(buf_t *b, const char *runner) {
  buf_adds(b, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
  otlp__kv_str(b, "service.name", "luster");
  if (runner && *runner) {
    buf_addc(b, ',');
    otlp__kv_str(b, "service.instance.id", runner);
  }
  buf_adds(b, "]},\"scopeSpans\":[{\"scope\":{\"name\":\"luster\"},\"spans\":[");
}

void otlp_encode_span(buf_t *b, const otlp_span_t *s, int first) {
  if (!first) buf_addc(b, ',');
  otlp__span(b, s);
}

void otlp_encode_end(buf_t *b) { buf_adds(b, "]}]}]}"); }

void otlp_encode(buf_t *b, const char *runner, const otlp_span_t *const *spans, size_t n) {
  otlp_encode_begin(b, runner);
  for (size_t i = 0; i < n; i++) otlp_encode_span(b, spans[i], i == 0);
  otlp_encode_end(b);
}
