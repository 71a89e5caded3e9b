/* otlp.c - spans and their OTLP/HTTP encodings, protobuf and JSON (see
 * otlp.h). */
#include "core/otlp.h"

#include <assert.h>
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
  size_t n = otlp__cut((const char *)p);
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

/* The JSON request around its items: see otlp_encode_wrap. */
static size_t otlp__json_wrap(buf_t *head, buf_t *tail, const char *runner, size_t items_len) {
  buf_adds(head, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
  otlp__kv_str(head, "service.name", "luster");
  if (runner && *runner) {
    buf_addc(head, ',');
    otlp__kv_str(head, "service.instance.id", runner);
  }
  buf_adds(head, "]},\"scopeSpans\":[{\"scope\":{\"name\":\"luster\"},\"spans\":[");
  buf_adds(tail, "]}]}]}");
  return items_len ? 1 : 0;
}

/* ---- protobuf ------------------------------------------------------------
 * Field numbers from opentelemetry-proto (collector/trace/v1, trace/v1,
 * common/v1, resource/v1):
 *   ExportTraceServiceRequest { ResourceSpans resource_spans = 1; }
 *   ResourceSpans { Resource resource = 1; ScopeSpans scope_spans = 2; }
 *   Resource { KeyValue attributes = 1; }
 *   ScopeSpans { InstrumentationScope scope = 1; Span spans = 2; }
 *   InstrumentationScope { string name = 1; }
 *   Span { bytes trace_id = 1; bytes span_id = 2; bytes parent_span_id = 4;
 *          string name = 5; SpanKind kind = 6; fixed64 start_time_unix_nano = 7;
 *          fixed64 end_time_unix_nano = 8; KeyValue attributes = 9;
 *          Status status = 15; fixed32 flags = 16; }
 *   Status { string message = 2; StatusCode code = 3; }
 *   KeyValue { string key = 1; AnyValue value = 2; }
 *   AnyValue { string string_value = 1; int64 int_value = 3; }
 * A nested message's length precedes it, so every size is computed first
 * (sizes only add up the strings' lengths), then the bytes are written
 * straight into room reserved once: no scratch copies, no allocation per
 * span. */

#define PB_LEN 2     /* wire type: length-delimited */
#define PB_VARINT 0  /* wire type: varint */
#define PB_I64 1     /* wire type: fixed64 */
#define PB_I32 5     /* wire type: fixed32 */
#define PB_TAG(field, wire) (((field) << 3) | (wire))

/* A string as protobuf writes it: p[0..n) cut to OTLP_MAX_STR, out bytes
 * once each byte that is not UTF-8 became U+FFFD (3 bytes). */
typedef struct {
  const unsigned char *p;
  size_t n, out;
  int clean; /* 1 when out == n and the bytes go as they are */
} pb_str_t;

static void pb__str(pb_str_t *s, const char *str) {
  s->p = (const unsigned char *)(str ? str : "");
  s->n = otlp__cut((const char *)s->p);
  size_t out = 0, i = 0;
  int clean = 1;
  /* Names, ids and keys are nearly always ASCII: eight bytes per test. */
  for (uint64_t w; i + 8 <= s->n; i += 8, out += 8) {
    memcpy(&w, s->p + i, 8);
    if (w & 0x8080808080808080ull) break;
  }
  while (i < s->n) {
    if (s->p[i] < 0x80) {
      i++;
      out++;
      continue;
    }
    size_t len = otlp__utf8(s->p + i, s->n - i);
    if (len) {
      i += len;
      out += len;
    } else {
      i++;
      out += 3;
      clean = 0;
    }
  }
  s->out = out;
  s->clean = clean;
}

static size_t pb__vlen(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

static uint8_t *pb__varint(uint8_t *w, uint64_t v) {
  while (v >= 0x80) {
    *w++ = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  *w++ = (uint8_t)v;
  return w;
}

/* Little-endian, as fixed32/fixed64 are on the wire. */
static uint8_t *pb__fixed(uint8_t *w, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; i++) *w++ = (uint8_t)(v >> (8 * i));
  return w;
}

/* A length-delimited field's size, given its payload's. */
static size_t pb__field(size_t len) { return 1 + pb__vlen(len) + len; }

static uint8_t *pb__head(uint8_t *w, unsigned tag, size_t len) {
  *w++ = (uint8_t)tag;
  return pb__varint(w, len);
}

static uint8_t *pb__bytes(uint8_t *w, unsigned field, const void *p, size_t n) {
  w = pb__head(w, PB_TAG(field, PB_LEN), n);
  memcpy(w, p, n);
  return w + n;
}

static uint8_t *pb__string(uint8_t *w, unsigned field, const pb_str_t *s) {
  w = pb__head(w, PB_TAG(field, PB_LEN), s->out);
  if (s->clean) {
    memcpy(w, s->p, s->n);
    return w + s->n;
  }
  for (size_t i = 0; i < s->n;) {
    size_t len = s->p[i] < 0x80 ? 1 : otlp__utf8(s->p + i, s->n - i);
    if (len == 0) {
      *w++ = 0xEF, *w++ = 0xBF, *w++ = 0xBD; /* U+FFFD */
      i++;
    } else {
      memcpy(w, s->p + i, len);
      w += len;
      i += len;
    }
  }
  return w;
}

/* KeyValue { key, AnyValue { string_value | int_value } }: the payload's
 * size; val NULL for an integer. */
static size_t pb__kv_size(const pb_str_t *key, const pb_str_t *val, int64_t num) {
  size_t any = val ? pb__field(val->out) : 1 + pb__vlen((uint64_t)num);
  return pb__field(key->out) + pb__field(any);
}

static uint8_t *pb__kv(uint8_t *w, unsigned field, const pb_str_t *key, const pb_str_t *val, int64_t num) {
  w = pb__head(w, PB_TAG(field, PB_LEN), pb__kv_size(key, val, num));
  w = pb__string(w, 1, key);
  if (val) {
    w = pb__head(w, PB_TAG(2, PB_LEN), pb__field(val->out));
    return pb__string(w, 1, val);
  }
  w = pb__head(w, PB_TAG(2, PB_LEN), 1 + pb__vlen((uint64_t)num));
  *w++ = PB_TAG(3, PB_VARINT);
  return pb__varint(w, (uint64_t)num); /* int64: a negative one takes ten bytes */
}

/* A span's strings, read once for their sizes and again to write them. */
typedef struct {
  pb_str_t name, msg, key[OTLP_MAX_ATTRS], val[OTLP_MAX_ATTRS];
  int nattrs, has_msg, root;
  size_t status, span; /* payload sizes of the Status and the Span */
} pb_span_t;

static void pb__prepare(pb_span_t *ps, const otlp_span_t *s) {
  ps->nattrs = s->nattrs < 0 ? 0 : s->nattrs > OTLP_MAX_ATTRS ? OTLP_MAX_ATTRS : s->nattrs;
  ps->root = trace_id_zero(s->parent_id, TRACE_SPAN_LEN);
  ps->has_msg = s->status_msg && *s->status_msg;
  pb__str(&ps->name, s->name);
  ps->status = s->status ? 1 + pb__vlen((uint64_t)s->status) : 0;
  if (ps->has_msg) {
    pb__str(&ps->msg, s->status_msg);
    ps->status += pb__field(ps->msg.out);
  }
  size_t n = pb__field(TRACE_ID_LEN) + pb__field(TRACE_SPAN_LEN) + (ps->root ? 0 : pb__field(TRACE_SPAN_LEN)) +
             pb__field(ps->name.out) + (s->kind ? 1 + pb__vlen((uint64_t)s->kind) : 0) + 2 * 9 +
             pb__field(ps->status) + (s->flags ? 2 + 4 : 0);
  for (int i = 0; i < ps->nattrs; i++) {
    pb__str(&ps->key[i], s->attrs[i].key);
    if (s->attrs[i].str) pb__str(&ps->val[i], s->attrs[i].str);
    n += pb__field(pb__kv_size(&ps->key[i], s->attrs[i].str ? &ps->val[i] : NULL, s->attrs[i].num));
  }
  ps->span = n;
}

static void pb__item(buf_t *b, const otlp_span_t *s) {
  pb_span_t ps;
  pb__prepare(&ps, s);
  size_t total = pb__field(ps.span);
  buf_reserve(b, total);
  uint8_t *w = (uint8_t *)b->data + b->len, *start = w;
  w = pb__head(w, PB_TAG(2, PB_LEN), ps.span); /* ScopeSpans.spans */
  w = pb__bytes(w, 1, s->trace_id, TRACE_ID_LEN);
  w = pb__bytes(w, 2, s->span_id, TRACE_SPAN_LEN);
  if (!ps.root) w = pb__bytes(w, 4, s->parent_id, TRACE_SPAN_LEN);
  w = pb__string(w, 5, &ps.name);
  if (s->kind) {
    *w++ = PB_TAG(6, PB_VARINT);
    w = pb__varint(w, (uint64_t)s->kind);
  }
  *w++ = PB_TAG(7, PB_I64);
  w = pb__fixed(w, s->start_ns, 8);
  *w++ = PB_TAG(8, PB_I64);
  w = pb__fixed(w, s->end_ns, 8);
  for (int i = 0; i < ps.nattrs; i++)
    w = pb__kv(w, 9, &ps.key[i], s->attrs[i].str ? &ps.val[i] : NULL, s->attrs[i].num);
  /* The status goes even when empty, as the JSON encoding writes {"code":0}. */
  w = pb__head(w, PB_TAG(15, PB_LEN), ps.status);
  if (ps.has_msg) w = pb__string(w, 2, &ps.msg);
  if (s->status) {
    *w++ = PB_TAG(3, PB_VARINT);
    w = pb__varint(w, (uint64_t)s->status);
  }
  if (s->flags) {
    w = pb__varint(w, PB_TAG(16, PB_I32)); /* field 16: a two-byte tag */
    w = pb__fixed(w, s->flags, 4);
  }
  assert((size_t)(w - start) == total); /* the sizes computed first are the bytes written */
  b->len += (size_t)(w - start);
  b->data[b->len] = '\0';
}

/* The protobuf request around its items: see otlp_encode_wrap. */
static void pb__wrap(buf_t *head, const char *runner, size_t items_len) {
  pb_str_t k1, v1, k2, v2, scope;
  pb__str(&k1, "service.name");
  pb__str(&v1, "luster");
  pb__str(&scope, "luster");
  int inst = runner && *runner;
  size_t res = pb__field(pb__kv_size(&k1, &v1, 0));
  if (inst) {
    pb__str(&k2, "service.instance.id");
    pb__str(&v2, runner);
    res += pb__field(pb__kv_size(&k2, &v2, 0));
  }
  size_t ss = pb__field(pb__field(scope.out)) + items_len; /* ScopeSpans */
  size_t rs = pb__field(res) + pb__field(ss);              /* ResourceSpans */
  size_t before = pb__field(rs) - rs + pb__field(res) + (pb__field(ss) - ss) + pb__field(pb__field(scope.out));
  buf_reserve(head, before);
  uint8_t *w = (uint8_t *)head->data + head->len, *start = w;
  w = pb__head(w, PB_TAG(1, PB_LEN), rs);  /* ExportTraceServiceRequest.resource_spans */
  w = pb__head(w, PB_TAG(1, PB_LEN), res); /* ResourceSpans.resource */
  w = pb__kv(w, 1, &k1, &v1, 0);
  if (inst) w = pb__kv(w, 1, &k2, &v2, 0);
  w = pb__head(w, PB_TAG(2, PB_LEN), ss);                /* ResourceSpans.scope_spans */
  w = pb__head(w, PB_TAG(1, PB_LEN), pb__field(scope.out)); /* ScopeSpans.scope */
  w = pb__string(w, 1, &scope);
  assert((size_t)(w - start) == before);
  head->len += (size_t)(w - start);
  head->data[head->len] = '\0';
}

int otlp_protocol_parse(const char *s, otlp_protocol_t *out) {
  if (s && strcmp(s, "http/protobuf") == 0) *out = OTLP_PROTOBUF;
  else if (s && strcmp(s, "http/json") == 0) *out = OTLP_JSON;
  else return -1;
  return 0;
}

const char *otlp_protocol_name(otlp_protocol_t p) { return p == OTLP_JSON ? "http/json" : "http/protobuf"; }

const char *otlp_content_type(otlp_protocol_t p) {
  return p == OTLP_JSON ? "application/json" : "application/x-protobuf";
}

void otlp_encode_item(buf_t *b, otlp_protocol_t p, const otlp_span_t *s) {
  if (p == OTLP_JSON) {
    buf_addc(b, ',');
    otlp__span(b, s);
  } else {
    pb__item(b, s);
  }
}

size_t otlp_encode_wrap(buf_t *head, buf_t *tail, otlp_protocol_t p, const char *runner, size_t items_len) {
  if (p == OTLP_JSON) return otlp__json_wrap(head, tail, runner, items_len);
  pb__wrap(head, runner, items_len);
  return 0;
}

void otlp_encode(buf_t *b, otlp_protocol_t p, const char *runner, const otlp_span_t *const *spans, size_t n) {
  buf_t items, tail;
  buf_init(&items);
  buf_init(&tail);
  for (size_t i = 0; i < n; i++) otlp_encode_item(&items, p, spans[i]);
  size_t skip = otlp_encode_wrap(b, &tail, p, runner, items.len);
  buf_add(b, items.data + skip, items.len - skip);
  buf_add(b, tail.data, tail.len);
  buf_free(&items);
  buf_free(&tail);
}
