/* jsoncanon.c - the canonical text of a JSON value (see jsoncanon.h): a small
 * recursive-descent reader that writes as it reads, sorting object members. */
#include "core/jsoncanon.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *p, *e;
  int depth;
} jc_t;

/* One object member's canonical text ("key":value); key_len covers "key". */
typedef struct {
  buf_t text;
  size_t key_len, index;
} jc_member_t;

static int jc__value(jc_t *j, buf_t *out);

static void jc__ws(jc_t *j) {
  while (j->p < j->e && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static void jc__byte(buf_t *out, unsigned char c) {
  static const char hex[] = "0123456789abcdef";
  if (c == '"' || c == '\\') {
    char e[2] = {'\\', (char)c};
    buf_add(out, e, 2);
  } else if (c < 0x20) {
    char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
    buf_add(out, e, 6);
  } else {
    buf_addc(out, (char)c);
  }
}

static int jc__hex4(jc_t *j, unsigned *v) {
  if (j->e - j->p < 4) return -1;
  *v = 0;
  for (int i = 0; i < 4; i++) {
    char c = *j->p++;
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) return -1;
    *v = (*v << 4) | (unsigned)d;
  }
  return 0;
}

/* \uXXXX (after the 'u'), a surrogate pair joined, as UTF-8. */
static int jc__unicode(jc_t *j, buf_t *out) {
  unsigned cp, lo;
  if (jc__hex4(j, &cp) != 0) return -1;
  if (cp >= 0xd800 && cp < 0xdc00 && j->e - j->p >= 6 && j->p[0] == '\\' && j->p[1] == 'u') {
    const char *back = j->p;
    j->p += 2;
    if (jc__hex4(j, &lo) == 0 && lo >= 0xdc00 && lo < 0xe000) cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    else j->p = back; /* a lone surrogate: written on its own, as the decoder would */
  }
  unsigned char u[4];
  int n;
  if (cp < 0x80) { u[0] = (unsigned char)cp; n = 1; }
  else if (cp < 0x800) { u[0] = (unsigned char)(0xc0 | cp >> 6); u[1] = (unsigned char)(0x80 | (cp & 0x3f)); n = 2; }
  else if (cp < 0x10000) {
    u[0] = (unsigned char)(0xe0 | cp >> 12);
    u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    u[2] = (unsigned char)(0x80 | (cp & 0x3f));
    n = 3;
  } else {
    u[0] = (unsigned char)(0xf0 | cp >> 18);
    u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    u[3] = (unsigned char)(0x80 | (cp & 0x3f));
    n = 4;
  }
  for (int i = 0; i < n; i++) jc__byte(out, u[i]);
  return 0;
}

static int jc__string(jc_t *j, buf_t *out) {
  if (j->p >= j->e || *j->p != '"') return -1;
  j->p++;
  buf_addc(out, '"');
  while (j->p < j->e) {
    unsigned char c = (unsigned char)*j->p++;
    if (c == '"') {
      buf_addc(out, '"');
      return 0;
    }
    if (c < 0x20) return -1;
    if (c != '\\') {
      jc__byte(out, c);
      continue;
    }
    if (j->p >= j->e) return -1;
    char esc = *j->p++;
    const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
    const char *k = esc ? strchr(from, esc) : NULL;
    if (k) jc__byte(out, (unsigned char)to[k - from]);
    else if (esc != 'u' || jc__unicode(j, out) != 0) return -1;
  }
  return -1;
}

/* Numbers and literals as written: the reader that decodes them decides. */
static int jc__atom(jc_t *j, buf_t *out) {
  static const char *const lits[] = {"true", "false", "null"};
  for (int i = 0; i < 3; i++) {
    size_t n = strlen(lits[i]);
    if ((size_t)(j->e - j->p) >= n && memcmp(j->p, lits[i], n) == 0) {
      buf_add(out, j->p, n);
      j->p += n;
      return 0;
    }
  }
  const char *start = j->p;
  while (j->p < j->e && strchr("+-.eE0123456789", *j->p) && *j->p) j->p++;
  if (j->p == start) return -1;
  buf_add(out, start, (size_t)(j->p - start));
  return 0;
}

static int jc__array(jc_t *j, buf_t *out) {
  j->p++;
  buf_addc(out, '[');
  jc__ws(j);
  if (j->p < j->e && *j->p == ']') {
    j->p++;
    buf_addc(out, ']');
    return 0;
  }
  for (;;) {
    if (jc__value(j, out) != 0) return -1;
    jc__ws(j);
    if (j->p >= j->e) return -1;
    char c = *j->p++;
    if (c == ']') break;
    if (c != ',') return -1;
    buf_addc(out, ',');
  }
  buf_addc(out, ']');
  return 0;
}

static int jc__member_cmp(const void *a, const void *b) {
  const jc_member_t *x = a, *y = b;
  size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
  int c = memcmp(x->text.data, y->text.data, n);
  if (c) return c;
  if (x->key_len != y->key_len) return x->key_len < y->key_len ? -1 : 1;
  return x->index < y->index ? -1 : 1; /* the same key twice: keep their order */
}

static int jc__members(jc_t *j, jc_member_t **ms, size_t *n) {
  size_t cap = 0;
  for (;;) {
    if (*n == cap) {
      cap = cap ? cap * 2 : 8;
      jc_member_t *grown = realloc(*ms, cap * sizeof **ms);
      if (!grown) return -1;
      *ms = grown;
    }
    jc_member_t *m = &(*ms)[*n];
    buf_init(&m->text);
    m->index = (*n)++;
    jc__ws(j);
    if (jc__string(j, &m->text) != 0) return -1;
    m->key_len = m->text.len;
    jc__ws(j);
    if (j->p >= j->e || *j->p++ != ':') return -1;
    buf_addc(&m->text, ':');
    if (jc__value(j, &m->text) != 0) return -1;
    jc__ws(j);
    if (j->p >= j->e) return -1;
    char c = *j->p++;
    if (c == '}') return 0;
    if (c != ',') return -1;
  }
}

static int jc__object(jc_t *j, buf_t *out) {
  j->p++;
  jc__ws(j);
  if (j->p < j->e && *j->p == '}') {
    j->p++;
    buf_add(out, "{}", 2);
    return 0;
  }
  jc_member_t *ms = NULL;
  size_t n = 0;
  int rc = jc__members(j, &ms, &n);
  if (rc == 0) {
    qsort(ms, n, sizeof *ms, jc__member_cmp);
    buf_addc(out, '{');
    for (size_t i = 0; i < n; i++) {
      if (i) buf_addc(out, ',');
      buf_add(out, ms[i].text.data, ms[i].text.len);
    }
    buf_addc(out, '}');
  }
  for (size_t i = 0; i < n; i++) buf_free(&ms[i].text);
  free(ms);
  return rc;
}

static int jc__value(jc_t *j, buf_t *out) {
  jc__ws(j);
  if (j->p >= j->e) return -1;
  char c = *j->p;
  if (c == '"') return jc__string(j, out);
  if (c != '[' && c != '{') return jc__atom(j, out);
  if (++j->depth > JSONCANON_MAX_DEPTH) return -1;
  int rc = c == '[' ? jc__array(j, out) : jc__object(j, out);
  j->depth--;
  return rc;
}

int json_canonical(const char *s, size_t n, buf_t *out) {
  jc_t j = {s, s + n, 0};
  size_t start = out->len;
  int rc = jc__value(&j, out);
  jc__ws(&j);
  if (rc == 0 && j.p == j.e) return 0;
  out->len = start;
  buf_add(out, s, n);
  return -1;
}
