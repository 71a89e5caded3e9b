/* fuzz_trace.c - libFuzzer target: core/trace.c's traceparent parser on
 * arbitrary bytes (NULs included: a header value is bytes).
 *
 * A value it accepts prints back as a version 00 header of exactly
 * TRACE_HEADER_LEN lowercase characters that reads back to the same ids and
 * flags, never with an all-zero id; a value it refuses leaves the output as
 * it was. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/trace.h"

static void check(int ok, const char *what) {
  if (!ok) {
    fprintf(stderr, "fuzz_trace: invariant broken: %s\n", what);
    abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  trace_ctx_t t, again;
  memset(&t, 0x5a, sizeof t);
  trace_ctx_t before = t;
  if (trace_parse((const char *)data, size, &t) != 0) {
    check(memcmp(&t, &before, sizeof t) == 0, "output written for a refused value");
    return 0;
  }
  check(size >= TRACE_HEADER_LEN, "accepted a value shorter than a header");
  check(!trace_id_zero(t.trace_id, TRACE_ID_LEN) && !trace_id_zero(t.span_id, TRACE_SPAN_LEN),
        "accepted an all-zero id");
  char out[TRACE_HEADER_LEN + 1];
  memset(out, 'Z', sizeof out);
  trace_format(&t, out);
  check(out[TRACE_HEADER_LEN] == '\0' && strlen(out) == TRACE_HEADER_LEN, "printed header of the wrong length");
  for (int i = 0; i < TRACE_HEADER_LEN; i++)
    check(out[i] == '-' || (out[i] >= '0' && out[i] <= '9') || (out[i] >= 'a' && out[i] <= 'f'),
          "printed a character a header may not have");
  check(trace_parse(out, TRACE_HEADER_LEN, &again) == 0, "its own header does not read back");
  check(memcmp(&t, &again, sizeof t) == 0, "its own header reads back to other ids");
  return 0;
}
