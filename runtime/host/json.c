/* json.c - JSON to and from Lua values (see json.h).
 *
 * Every call between entities encodes its payload and reply once and
 * decodes each once, so both directions stay off the general paths of a
 * JSON library: integers are formatted by hand (no printf), strings without
 * escapes are pushed straight from the input, and nothing is allocated but
 * the Lua values themselves and one reusable output buffer.
 *
 * That buffer and the decoder's scratch belong to a json_t, one per host
 * (so two runtimes on two threads share none); the Lua functions find it as
 * their upvalue, the host's C code as a field of its host_t. */
#include "host/json.h"

#include <lauxlib.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------
 * Encoding
 * ------------------------------------------------------------------------- */

typedef struct {
  char *p;
  size_t len, cap;
  json_t *enc; /* the encoder's own buffer: a failure goes to its setjmp (NULL: a Lua error) */
} out_t;

typedef struct {
  lua_State *L;
  const char *s, *p, *end;
  out_t scratch; /* unescaped strings */
} dec_t;

struct json_s {
  /* One buffer serves every encode of its json_t: nothing an encode runs can
   * start another (tables are read raw, so no metamethod runs), and an
   * error leaves it to be reset by the next encode. */
  out_t out;
  /* Where an encode error goes: json_encode_value's caller. */
  jmp_buf *enc_jmp;
  char enc_err[160];
  char num[24]; /* a whole number's text, the commonest payload */
  dec_t dec;    /* its scratch buffer is kept for the next decode */
};

static void enc_fail(json_t *j, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void enc_fail(json_t *j, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(j->enc_err, sizeof j->enc_err, fmt, ap);
  va_end(ap);
  longjmp(*j->enc_jmp, 1); /* every encode runs under json_encode_value's setjmp */
}

json_t *json_new(void) {
  json_t *j = calloc(1, sizeof *j);
  if (j) j->out.enc = j;
  return j;
}

static void json__release(json_t *j) {
  free(j->out.p);
  free(j->dec.scratch.p);
  j->out.p = j->dec.scratch.p = NULL;
  j->out.cap = j->dec.scratch.cap = 0;
}

void json_free(json_t *j) {
  if (!j) return;
  json__release(j);
  free(j);
}

static int json__gc(lua_State *L) {
  json__release(lua_touserdata(L, 1));
  return 0;
}

json_t *json_push_new(lua_State *L) {
  json_t *j = lua_newuserdatauv(L, sizeof *j, 0);
  memset(j, 0, sizeof *j);
  j->out.enc = j;
  if (luaL_newmetatable(L, "luster.json_scratch")) {
    lua_pushcfunction(L, json__gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return j;
}

/* A buffer larger than this, grown by one big value, is given back before
 * the next use. */
#define JSON_KEEP_BYTES (64 * 1024)

static void out_trim(out_t *o) {
  if (o->cap <= JSON_KEEP_BYTES) return;
  free(o->p);
  o->p = NULL;
  o->cap = 0;
}

static void out_grow(lua_State *L, out_t *o, size_t more) {
  size_t cap = o->cap ? o->cap : 256;
  while (cap - o->len < more) cap *= 2;
  char *p = realloc(o->p, cap);
  if (!p && o->enc) enc_fail(o->enc, "not enough memory to encode JSON");
  if (!p) luaL_error(L, "not enough memory to encode JSON");
  o->p = p;
  o->cap = cap;
}

/* Nothing to add is not a copy: the buffer may not be allocated yet (or was
 * given back by out_trim), and memcpy with a null pointer is undefined even
 * for zero bytes (a decoded string that starts with an escape). */
static inline void out_add(lua_State *L, out_t *o, const char *s, size_t n) {
  if (n == 0) return; /* o->p may still be NULL: no arithmetic or memcpy on it */
  if (o->cap - o->len < n) out_grow(L, o, n);
  memcpy(o->p + o->len, s, n);
  o->len += n;
}

static inline void out_char(lua_State *L, out_t *o, char c) {
  if (o->len == o->cap) out_grow(L, o, 1);
  o->p[o->len++] = c;
}

static size_t fmt_int(char *dst, long long v) {
  char tmp[24];
  unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
  size_t n = 0;
  do {
    tmp[n++] = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  size_t k = 0;
  if (v < 0) dst[k++] = '-';
  while (n) dst[k++] = tmp[--n];
  return k;
}

#define JSON_EXACT_LIMIT 9007199254740992.0 /* 2^53 */

/* A finite double: whole ones below 2^53 as integers, others with the
 * fewest significant digits that read back as the same double. */
static size_t fmt_double(char *dst, double d) {
  if (d > -JSON_EXACT_LIMIT && d < JSON_EXACT_LIMIT && d == (double)(long long)d) return fmt_int(dst, (long long)d);
  int n = 0;
  for (int prec = 15; prec <= 17; prec++) {
    n = snprintf(dst, 32, "%.*g", prec, d);
    if (strtod(dst, NULL) == d) break;
  }
  return (size_t)n;
}

static void encode_number(lua_State *L, out_t *o, int idx) {
  char num[32];
  size_t n;
  if (lua_isinteger(L, idx)) {
    n = fmt_int(num, (long long)lua_tointeger(L, idx));
  } else {
    double d = lua_tonumber(L, idx);
    if (!isfinite(d)) enc_fail(o->enc, "Cannot serialise number: must not be NaN or Inf");
    n = fmt_double(num, d);
  }
  out_add(L, o, num, n);
}

/* What each byte becomes inside a JSON string: NULL when it stands as is. */
static const char *const json_escape[256] = {
  ['\b'] = "\\b", ['\t'] = "\\t", ['\n'] = "\\n", ['\f'] = "\\f", ['\r'] = "\\r",
  ['"'] = "\\\"", ['\\'] = "\\\\", ['/'] = "\\/",
  [0] = "\\u0000", [1] = "\\u0001", [2] = "\\u0002", [3] = "\\u0003", [4] = "\\u0004",
  [5] = "\\u0005", [6] = "\\u0006", [7] = "\\u0007", [11] = "\\u000b", [14] = "\\u000e",
  [15] = "\\u000f", [16] = "\\u0010", [17] = "\\u0011", [18] = "\\u0012", [19] = "\\u0013",
  [20] = "\\u0014", [21] = "\\u0015", [22] = "\\u0016", [23] = "\\u0017", [24] = "\\u0018",
  [25] = "\\u0019", [26] = "\\u001a", [27] = "\\u001b", [28] = "\\u001c", [29] = "\\u001d",
  [30] = "\\u001e", [31] = "\\u001f", [127] = "\\u007f",
};

static void encode_string(lua_State *L, out_t *o, const char *s, size_t n) {
  /* Worst case: every byte a six-byte escape. */
  if (o->cap - o->len < n * 6 + 2) out_grow(L, o, n * 6 + 2);
  char *w = o->p + o->len;
  *w++ = '"';
  for (size_t i = 0; i < n; i++) {
    const char *e = json_escape[(unsigned char)s[i]];
    if (!e) {
      *w++ = s[i];
    } else {
      while (*e) *w++ = *e++;
    }
  }
  *w++ = '"';
  o->len = (size_t)(w - o->p);
}

/* The array length of the table at idx as cjson sees it: -1 when some key is
 * not a positive whole number (an object), 0 when empty. */
static lua_Integer array_length(lua_State *L, out_t *o, int idx) {
  lua_Integer max = 0, items = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    lua_Integer k;
    if (lua_isinteger(L, -1)) {
      k = lua_tointeger(L, -1);
    } else if (lua_type(L, -1) == LUA_TNUMBER) {
      double d = lua_tonumber(L, -1);
      if (!(d >= 1 && d < 9.2e18 && d == floor(d))) {
        lua_pop(L, 1);
        return -1;
      }
      k = (lua_Integer)d;
    } else {
      lua_pop(L, 1);
      return -1;
    }
    if (k < 1) {
      lua_pop(L, 1);
      return -1;
    }
    if (k > max) max = k;
    items++;
  }
  if (max > 10 && max > items * 2) enc_fail(o->enc, "Cannot serialise table: excessively sparse array");
  return max;
}

static void encode_value(lua_State *L, out_t *o, int idx, int depth);

static void encode_table(lua_State *L, out_t *o, int idx, int depth) {
  if (depth > JSON_MAX_DEPTH || !lua_checkstack(L, 4))
    enc_fail(o->enc, "Cannot serialise, excessive nesting (%d)", depth);
  lua_Integer n = array_length(L, o, idx);
  if (n > 0) {
    out_char(L, o, '[');
    for (lua_Integer i = 1; i <= n; i++) {
      if (i > 1) out_char(L, o, ',');
      lua_rawgeti(L, idx, i);
      encode_value(L, o, lua_gettop(L), depth);
      lua_pop(L, 1);
    }
    out_char(L, o, ']');
    return;
  }
  out_char(L, o, '{');
  int first = 1;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (!first) out_char(L, o, ',');
    first = 0;
    int kt = lua_type(L, -2);
    if (kt == LUA_TSTRING) {
      size_t kl;
      const char *k = lua_tolstring(L, -2, &kl);
      encode_string(L, o, k, kl);
    } else if (kt == LUA_TNUMBER) {
      out_char(L, o, '"');
      encode_number(L, o, lua_gettop(L) - 1);
      out_char(L, o, '"');
    } else {
      enc_fail(o->enc, "Cannot serialise %s: table key must be a number or string", lua_typename(L, kt));
    }
    out_char(L, o, ':');
    encode_value(L, o, lua_gettop(L), depth);
    lua_pop(L, 1);
  }
  out_char(L, o, '}');
}

static void encode_value(lua_State *L, out_t *o, int idx, int depth) {
  switch (lua_type(L, idx)) {
  case LUA_TNIL: out_add(L, o, "null", 4); return;
  case LUA_TBOOLEAN:
    if (lua_toboolean(L, idx)) out_add(L, o, "true", 4);
    else out_add(L, o, "false", 5);
    return;
  case LUA_TNUMBER: encode_number(L, o, idx); return;
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    encode_string(L, o, s, n);
    return;
  }
  case LUA_TTABLE: encode_table(L, o, idx, depth + 1); return;
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == NULL) {
      out_add(L, o, "null", 4);
      return;
    }
    break;
  default: break;
  }
  enc_fail(o->enc, "Cannot serialise %s: type not supported", luaL_typename(L, idx));
}

const char *json_encode_value(json_t *j, lua_State *L, int idx, size_t *len, const char **error) {
  out_t *o = &j->out;
  const int at = lua_absindex(L, idx);
  /* The commonest payloads and replies: a whole number. */
  if (lua_isinteger(L, at)) {
    *len = fmt_int(j->num, (long long)lua_tointeger(L, at));
    return j->num;
  }
  out_trim(o);
  /* Nothing an encode runs can raise a Lua error or start another encode. */
  jmp_buf here;
  j->enc_jmp = &here;
  if (setjmp(here)) {
    j->enc_jmp = NULL;
    *error = j->enc_err;
    return NULL;
  }
  o->len = 0;
  encode_value(L, o, at, 0);
  j->enc_jmp = NULL;
  *len = o->len;
  return o->p;
}

/* The json_t of json_lua_encode / json_lua_decode: their upvalue. */
static json_t *json__up(lua_State *L) { return lua_touserdata(L, lua_upvalueindex(1)); }

int json_lua_encode(lua_State *L) {
  size_t len;
  const char *err = NULL;
  lua_settop(L, 1);
  const char *text = json_encode_value(json__up(L), L, 1, &len, &err);
  if (!text) return luaL_error(L, "%s", err);
  lua_pushlstring(L, text, len);
  return 1;
}

/* ---------------------------------------------------------------------------
 * Decoding
 * ------------------------------------------------------------------------- */

static int dec_fail(dec_t *d, const char *what) {
  const char *at = d->p;
  if (at >= d->end) return luaL_error(d->L, "%s but found the end of the input at character %d", what,
                                      (int)(d->end - d->s) + 1);
  unsigned char c = (unsigned char)*at;
  char found[16];
  if (c >= 0x21 && c < 0x7f) snprintf(found, sizeof found, "'%c'", c);
  else snprintf(found, sizeof found, "byte 0x%02x", c);
  return luaL_error(d->L, "%s but found %s at character %d", what, found, (int)(at - d->s) + 1);
}

static inline void skip_ws(dec_t *d) {
  while (d->p < d->end && (*d->p == ' ' || *d->p == '\n' || *d->p == '\r' || *d->p == '\t')) d->p++;
}

static int hex4(const char *p) {
  int v = 0;
  for (int i = 0; i < 4; i++) {
    int c = (unsigned char)p[i], x;
    if (c >= '0' && c <= '9') x = c - '0';
    else if (c >= 'a' && c <= 'f') x = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') x = c - 'A' + 10;
    else return -1;
    v = v * 16 + x;
  }
  return v;
}

static size_t utf8_put(char *w, unsigned cp) {
  if (cp < 0x80) {
    w[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    w[0] = (char)(0xc0 | (cp >> 6));
    w[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
  }
  if (cp < 0x10000) {
    w[0] = (char)(0xe0 | (cp >> 12));
    w[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    w[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
  }
  w[0] = (char)(0xf0 | (cp >> 18));
  w[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
  w[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
  w[3] = (char)(0x80 | (cp & 0x3f));
  return 4;
}

/* At the opening quote: pushes the string. */
static void decode_string(dec_t *d) {
  const char *start = ++d->p, *q = start;
  while (q < d->end && *q != '"' && *q != '\\') q++;
  if (q < d->end && *q == '"') { /* no escapes: straight from the input */
    lua_pushlstring(d->L, start, (size_t)(q - start));
    d->p = q + 1;
    return;
  }
  out_t *o = &d->scratch;
  o->len = 0;
  out_add(d->L, o, start, (size_t)(q - start));
  d->p = q;
  for (;;) {
    if (d->p >= d->end) dec_fail(d, "expected the end of a string");
    char c = *d->p;
    if (c == '"') break;
    if (c != '\\') {
      out_char(d->L, o, c);
      d->p++;
      continue;
    }
    if (d->p + 1 >= d->end) {
      d->p = d->end;
      dec_fail(d, "expected an escape");
    }
    char e = d->p[1];
    const char *simple = NULL;
    switch (e) {
    case '"': simple = "\""; break;
    case '\\': simple = "\\"; break;
    case '/': simple = "/"; break;
    case 'b': simple = "\b"; break;
    case 'f': simple = "\f"; break;
    case 'n': simple = "\n"; break;
    case 'r': simple = "\r"; break;
    case 't': simple = "\t"; break;
    default: break;
    }
    if (simple) {
      out_char(d->L, o, *simple);
      d->p += 2;
      continue;
    }
    if (e != 'u') {
      d->p++;
      dec_fail(d, "expected a valid escape (\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u)");
    }
    int cp = d->end - d->p >= 6 ? hex4(d->p + 2) : -1;
    if (cp < 0) dec_fail(d, "expected four hex digits after \\u");
    d->p += 6;
    if (cp >= 0xd800 && cp <= 0xdbff) { /* a surrogate pair */
      int lo = d->end - d->p >= 6 && d->p[0] == '\\' && d->p[1] == 'u' ? hex4(d->p + 2) : -1;
      if (lo < 0xdc00 || lo > 0xdfff) dec_fail(d, "expected the low half of a UTF-16 surrogate pair");
      cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
      d->p += 6;
    } else if (cp >= 0xdc00 && cp <= 0xdfff) {
      d->p -= 6;
      dec_fail(d, "expected a \\u escape other than a lone low surrogate");
    }
    char u[4];
    out_add(d->L, o, u, utf8_put(u, (unsigned)cp));
  }
  d->p++;
  lua_pushlstring(d->L, o->p, o->len);
}

/* At least one digit at p, or the error `what`; returns the end of the run. */
static const char *decode_digits(dec_t *d, const char *p, const char *what) {
  if (p >= d->end || *p < '0' || *p > '9') {
    d->p = p;
    dec_fail(d, what);
  }
  while (p < d->end && *p >= '0' && *p <= '9') p++;
  return p;
}

static void decode_number(dec_t *d) {
  const char *p = d->p, *start = p;
  int neg = 0;
  if (p < d->end && *p == '-') {
    neg = 1;
    p++;
  }
  if (p >= d->end || *p < '0' || *p > '9') {
    d->p = p;
    dec_fail(d, "expected a digit");
  }
  uint64_t v = 0;
  int overflow = 0;
  if (*p == '0') {
    p++;
  } else {
    while (p < d->end && *p >= '0' && *p <= '9') {
      unsigned digit = (unsigned)(*p - '0');
      if (v > (UINT64_MAX - digit) / 10) overflow = 1;
      else v = v * 10 + digit;
      p++;
    }
  }
  int whole = 1;
  if (p < d->end && *p == '.') {
    whole = 0;
    p = decode_digits(d, p + 1, "expected a digit after the decimal point");
  }
  if (p < d->end && (*p == 'e' || *p == 'E')) {
    whole = 0;
    p++;
    if (p < d->end && (*p == '+' || *p == '-')) p++;
    p = decode_digits(d, p, "expected a digit in the exponent");
  }
  d->p = p;
  if (whole && !overflow && v < (1ULL << 53)) {
    lua_pushinteger(d->L, neg ? -(lua_Integer)v : (lua_Integer)v);
    return;
  }
  /* strtod needs a terminated copy: the input may go on with more digits. */
  char tmp[64];
  size_t n = (size_t)(p - start);
  double x;
  if (n < sizeof tmp) {
    memcpy(tmp, start, n);
    tmp[n] = 0;
    x = strtod(tmp, NULL);
  } else {
    char *big = malloc(n + 1);
    if (!big) luaL_error(d->L, "not enough memory to decode JSON");
    memcpy(big, start, n);
    big[n] = 0;
    x = strtod(big, NULL);
    free(big);
  }
  if (x > -JSON_EXACT_LIMIT && x < JSON_EXACT_LIMIT && x == (double)(long long)x)
    lua_pushinteger(d->L, (lua_Integer)x);
  else
    lua_pushnumber(d->L, x);
}

static void decode_value(dec_t *d, int depth);

static void decode_literal(dec_t *d, const char *word, size_t n) {
  if ((size_t)(d->end - d->p) < n || memcmp(d->p, word, n) != 0) dec_fail(d, "expected a value");
  d->p += n;
}

static void decode_container(dec_t *d, int depth, int object) {
  lua_State *L = d->L;
  if (depth > JSON_MAX_DEPTH) luaL_error(L, "found more than %d nested arrays and objects at character %d",
                                         JSON_MAX_DEPTH, (int)(d->p - d->s) + 1);
  luaL_checkstack(L, 3, "JSON nests too deep");
  d->p++;
  lua_newtable(L);
  skip_ws(d);
  char close = object ? '}' : ']';
  if (d->p < d->end && *d->p == close) {
    d->p++;
    return;
  }
  for (lua_Integer i = 1;; i++) {
    if (object) {
      if (d->p >= d->end || *d->p != '"') dec_fail(d, "expected an object key (a string)");
      decode_string(d);
      skip_ws(d);
      if (d->p >= d->end || *d->p != ':') dec_fail(d, "expected ':' after an object key");
      d->p++;
      decode_value(d, depth);
      lua_rawset(L, -3);
    } else {
      decode_value(d, depth);
      lua_rawseti(L, -2, i);
    }
    skip_ws(d);
    if (d->p < d->end && *d->p == ',') {
      d->p++;
      skip_ws(d);
      continue;
    }
    if (d->p < d->end && *d->p == close) {
      d->p++;
      return;
    }
    dec_fail(d, object ? "expected ',' or '}'" : "expected ',' or ']'");
  }
}

static void decode_value(dec_t *d, int depth) {
  skip_ws(d);
  if (d->p >= d->end) dec_fail(d, "expected a value");
  switch (*d->p) {
  case '{': decode_container(d, depth + 1, 1); return;
  case '[': decode_container(d, depth + 1, 0); return;
  case '"': decode_string(d); return;
  case 't':
    decode_literal(d, "true", 4);
    lua_pushboolean(d->L, 1);
    return;
  case 'f':
    decode_literal(d, "false", 5);
    lua_pushboolean(d->L, 0);
    return;
  case 'n':
    decode_literal(d, "null", 4);
    lua_pushlightuserdata(d->L, NULL);
    return;
  default:
    if (*d->p == '-' || (*d->p >= '0' && *d->p <= '9')) {
      decode_number(d);
      return;
    }
    dec_fail(d, "expected a value");
  }
}

void json_push_decoded(json_t *j, lua_State *L, const char *s, size_t n) {
  dec_t *d = &j->dec; /* its scratch buffer is kept for the next decode */
  out_trim(&d->scratch);
  d->L = L;
  d->s = d->p = s;
  d->end = s + n;
  decode_value(d, 0);
  skip_ws(d);
  if (d->p < d->end) dec_fail(d, "expected the end of the input");
}

int json_lua_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_settop(L, 1);
  json_push_decoded(json__up(L), L, s, n);
  return 1;
}
