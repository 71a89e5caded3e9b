/* url.c - request-target splitting, path segments and query lookup for the
 * HTTP gateway (see url.h). Untrusted input: bounds are checked before every
 * read and write, and nothing allocates. */
#include "url.h"

#include <errno.h>
#include <limits.h>
#include <string.h>

static int url_hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Decodes the byte at s[*i] (a literal, or a %XX escape) and advances *i.
 * Returns the byte 0..255, or -1 for a bad or truncated escape. */
static int url_decode_one(const char *s, size_t n, size_t *i, int plus_is_space) {
  char c = s[*i];
  if (c == '%') {
    if (n - *i < 3) return -1;
    int hi = url_hexval(s[*i + 1]), lo = url_hexval(s[*i + 2]);
    if (hi < 0 || lo < 0) return -1;
    *i += 3;
    return hi * 16 + lo;
  }
  *i += 1;
  if (c == '+' && plus_is_space) return ' ';
  return (unsigned char)c;
}

int url_split(const char *url, size_t n, slice_t *path, slice_t *query) {
  if (url == NULL || path == NULL || query == NULL) return -EINVAL;
  const char *hash = memchr(url, '#', n);
  if (hash != NULL) n = (size_t)(hash - url);
  const char *q = memchr(url, '?', n);
  if (q == NULL) {
    path->ptr = url;
    path->len = n;
    query->ptr = url + n;
    query->len = 0;
    return 0;
  }
  path->ptr = url;
  path->len = (size_t)(q - url);
  query->ptr = q + 1;
  query->len = n - path->len - 1;
  return 0;
}

int url_segments(const char *path, size_t n, char *out, size_t outcap, slice_t *segs, int maxsegs) {
  if (path == NULL || out == NULL || segs == NULL) return -EINVAL;
  if (n == 0 || path[0] != '/') return -EINVAL;

  int nsegs = 0;
  size_t o = 0;
  size_t i = 1; /* just past the '/' that opens the current segment */
  for (;;) {
    if (nsegs >= maxsegs) return -EINVAL;
    size_t start = o;
    while (i < n && path[i] != '/') {
      int c = url_decode_one(path, n, &i, 0);
      if (c <= 0) return -EINVAL; /* bad escape, or a NUL raw or decoded */
      if (o >= outcap) return -EINVAL;
      out[o++] = (char)c;
    }
    if (o >= outcap) return -EINVAL;
    out[o++] = '\0';
    segs[nsegs].ptr = out + start;
    segs[nsegs].len = o - 1 - start;
    nsegs++;
    if (i >= n) break;
    i++; /* the '/' before the next segment */
  }
  return nsegs;
}

/* Whether the raw query name s[0..n) decodes to exactly key. A name that
 * cannot be decoded matches nothing. */
static int url_name_is(const char *s, size_t n, const char *key) {
  size_t i = 0, k = 0;
  while (i < n) {
    int c = url_decode_one(s, n, &i, 1);
    if (c <= 0 || key[k] == '\0' || (unsigned char)key[k] != c) return 0;
    k++;
  }
  return key[k] == '\0';
}

int url_query_get(const char *q, size_t n, const char *key, char *out, size_t outcap) {
  if ((q == NULL && n > 0) || key == NULL || out == NULL) return -EINVAL;

  size_t i = 0;
  while (i < n) {
    const char *pair = q + i;
    const char *amp = memchr(pair, '&', n - i);
    size_t plen = amp ? (size_t)(amp - pair) : n - i;
    i += plen + 1; /* may step one past n when this is the last pair: fine */
    if (plen == 0) continue;

    const char *eq = memchr(pair, '=', plen);
    size_t nlen = eq ? (size_t)(eq - pair) : plen;
    if (!url_name_is(pair, nlen, key)) continue;

    const char *v = eq ? eq + 1 : pair + plen;
    size_t vlen = eq ? plen - nlen - 1 : 0;
    size_t j = 0, o = 0;
    while (j < vlen) {
      int c = url_decode_one(v, vlen, &j, 1);
      if (c <= 0) return -EINVAL;
      if (o + 1 >= outcap) return -EINVAL; /* keep room for the NUL */
      out[o++] = (char)c;
    }
    if (outcap == 0 || o > INT_MAX) return -EINVAL;
    out[o] = '\0';
    return (int)o;
  }
  return -ENOENT;
}
