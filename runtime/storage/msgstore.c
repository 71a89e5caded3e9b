/* msgstore.c - what the message stores share (see msgstore.h). */
#include "storage/msgstore.h"

#include <string.h>

#include "core/buf.h"
#include "core/jsoncanon.h"

int ms_same_payload(const char *sent, size_t sent_len, const char *stored, size_t stored_len) {
  if (sent_len == stored_len && memcmp(sent, stored, sent_len) == 0) return 1;
  buf_t a, b;
  buf_init(&a);
  buf_init(&b);
  json_canonical(stored, stored_len, &a);
  json_canonical(sent, sent_len, &b);
  int same = a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0);
  buf_free(&a);
  buf_free(&b);
  return same;
}
