/* buf.h - growable byte buffer used for responses, JSON output and frames. */
#ifndef LUSTER_BUF_H
#define LUSTER_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct buf_s {
  char *data;
  size_t len;
  size_t cap;
} buf_t;

void buf_init(buf_t *b);
void buf_free(buf_t *b);
/* Ensures room for n more bytes. Aborts on out-of-memory: a runner cannot
 * continue without heap, and every caller would otherwise need a path. */
void buf_reserve(buf_t *b, size_t n);
void buf_add(buf_t *b, const void *p, size_t n);
void buf_adds(buf_t *b, const char *s);
void buf_addc(buf_t *b, char c);
void buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal, quotes included. */
void buf_add_json_str(buf_t *b, const char *s, size_t n);
/* Detaches the bytes: the caller owns the returned pointer (NUL-terminated). */
char *buf_steal(buf_t *b, size_t *len);
void buf_reset(buf_t *b);

#endif
