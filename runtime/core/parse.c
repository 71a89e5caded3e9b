/* parse.c - strict parsers for durations, sizes and host:port (see parse.h).
 *
 * Durations and sizes share one number grammar, DIGITS [ "." DIGITS ], scaled
 * by a unit, all in integer arithmetic: the result is exact or rejected, and
 * the same string means the same value on every machine (no strtod, no
 * locale). */
#include "parse.h"

#include <errno.h>
#include <string.h>

typedef struct {
  const char *suffix;
  uint64_t scale;
} parse_unit_t;

/* Fraction digits accepted, after trailing zeros are dropped. Longer
 * fractions are refused: nobody writes one on purpose, and the limit keeps
 * both the fraction and its power of ten below 2^63. */
#define PARSE_MAX_FRAC_DIGITS 18

static const parse_unit_t parse_duration_units[] = {
  {"ms", 1}, {"s", 1000ULL}, {"m", 60ULL * 1000}, {"h", 3600ULL * 1000},
  {"d", 86400ULL * 1000},
};

static const parse_unit_t parse_size_units[] = {
  {"b", 1},
  {"k", 1ULL << 10}, {"kb", 1ULL << 10}, {"kib", 1ULL << 10},
  {"m", 1ULL << 20}, {"mb", 1ULL << 20}, {"mib", 1ULL << 20},
  {"g", 1ULL << 30}, {"gb", 1ULL << 30}, {"gib", 1ULL << 30},
  {"t", 1ULL << 40}, {"tb", 1ULL << 40}, {"tib", 1ULL << 40},
};

static int parse_isdigit(char c) { return c >= '0' && c <= '9'; }

static char parse_lower(char c) { return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c; }

/* ASCII-only, so the answer does not depend on the process locale. */
static int parse_eq(const char *a, const char *b, int nocase) {
  for (; *a && *b; a++, b++) {
    char x = nocase ? parse_lower(*a) : *a;
    char y = nocase ? parse_lower(*b) : *b;
    if (x != y) return 0;
  }
  return *a == *b;
}

static uint64_t parse_gcd(uint64_t a, uint64_t b) {
  while (b) {
    uint64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

/* Parses NUMBER [SUFFIX] where the whole of s must be used. An empty suffix
 * means scale 1 and then the number must be an integer. */
static int parse_scaled(const char *s, const parse_unit_t *units, size_t nunits, int nocase,
                        uint64_t *out) {
  if (s == NULL || out == NULL || !parse_isdigit(*s)) return -EINVAL;

  uint64_t ip = 0;
  for (; parse_isdigit(*s); s++) {
    uint64_t d = (uint64_t)(*s - '0');
    if (ip > (UINT64_MAX - d) / 10) return -EINVAL;
    ip = ip * 10 + d;
  }

  /* The fraction as frac / 10^fdigits, trailing zeros dropped. */
  uint64_t frac = 0, pow10 = 1;
  size_t fdigits = 0;
  int has_frac = 0;
  if (*s == '.') {
    s++;
    if (!parse_isdigit(*s)) return -EINVAL;
    has_frac = 1;
    size_t zeros = 0;
    for (; parse_isdigit(*s); s++) {
      if (*s == '0') {
        zeros++;
        continue;
      }
      if (fdigits + zeros + 1 > PARSE_MAX_FRAC_DIGITS) return -EINVAL;
      for (; zeros > 0; zeros--) {
        frac *= 10;
        pow10 *= 10;
        fdigits++;
      }
      frac = frac * 10 + (uint64_t)(*s - '0');
      pow10 *= 10;
      fdigits++;
    }
  }

  uint64_t scale = 0;
  if (*s == '\0') {
    if (has_frac) return -EINVAL;
    scale = 1;
  } else {
    for (size_t i = 0; i < nunits; i++) {
      if (parse_eq(s, units[i].suffix, nocase)) {
        scale = units[i].scale;
        break;
      }
    }
    if (scale == 0) return -EINVAL;
  }

  if (ip > UINT64_MAX / scale) return -EINVAL;
  uint64_t v = ip * scale;

  if (fdigits > 0) {
    /* frac * scale / 10^k must be whole. With g = gcd(scale, 10^k) that is
     * (10^k / g) | frac, and then the value is (frac / (10^k / g)) *
     * (scale / g), which is below scale since frac < 10^k: no overflow. */
    uint64_t g = parse_gcd(scale, pow10);
    uint64_t den = pow10 / g;
    if (frac % den != 0) return -EINVAL;
    uint64_t fv = (frac / den) * (scale / g);
    if (v > UINT64_MAX - fv) return -EINVAL;
    v += fv;
  }
  *out = v;
  return 0;
}

int parse_duration_ms(const char *s, uint64_t *out_ms) {
  return parse_scaled(s, parse_duration_units,
                      sizeof parse_duration_units / sizeof parse_duration_units[0], 0, out_ms);
}

int parse_size(const char *s, uint64_t *out_bytes) {
  return parse_scaled(s, parse_size_units, sizeof parse_size_units / sizeof parse_size_units[0], 1,
                      out_bytes);
}

static int parse_ishex(char c) {
  return parse_isdigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int parse_ishostchar(char c) {
  return parse_isdigit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '.' ||
         c == '-' || c == '_';
}

/* Decimal 0..65535, the whole string, at most 5 digits (so "008080" is
 * refused rather than read as 8080). */
static int parse_port(const char *s, int *port) {
  size_t n = strlen(s);
  if (n == 0 || n > 5) return -EINVAL;
  int v = 0;
  for (size_t i = 0; i < n; i++) {
    if (!parse_isdigit(s[i])) return -EINVAL;
    v = v * 10 + (s[i] - '0');
  }
  if (v > 65535) return -EINVAL;
  *port = v;
  return 0;
}

int parse_hostport(const char *s, char *host, size_t hostcap, int *port) {
  if (s == NULL || host == NULL || port == NULL) return -EINVAL;

  const char *h;
  size_t hlen;
  const char *p;
  if (s[0] == '[') {
    const char *close = strchr(s, ']');
    if (close == NULL || close[1] != ':') return -EINVAL;
    h = s + 1;
    hlen = (size_t)(close - h);
    int colons = 0;
    for (size_t i = 0; i < hlen; i++) {
      if (h[i] == ':') colons++;
      else if (!parse_ishex(h[i]) && h[i] != '.') return -EINVAL;
    }
    if (colons < 2) return -EINVAL; /* "::" is the shortest IPv6 address */
    p = close + 2;
  } else {
    const char *colon = strchr(s, ':');
    /* A second colon means an unbracketed IPv6 address: ambiguous, refuse. */
    if (colon == NULL || strchr(colon + 1, ':') != NULL) return -EINVAL;
    h = s;
    hlen = (size_t)(colon - s);
    for (size_t i = 0; i < hlen; i++)
      if (!parse_ishostchar(h[i])) return -EINVAL;
    if (hlen == 0) {
      h = "0.0.0.0";
      hlen = strlen(h);
    }
    p = colon + 1;
  }

  int v;
  if (parse_port(p, &v) != 0) return -EINVAL;
  if (hlen + 1 > hostcap) return -EINVAL;
  memcpy(host, h, hlen);
  host[hlen] = '\0';
  *port = v;
  return 0;
}
