/* fuzz_parse.c - libFuzzer target: core/parse.c's duration, size and
 * host:port parsers (flags and environment variables) on arbitrary text.
 *
 * Each either accepts all of it or returns -EINVAL with its outputs
 * untouched; an accepted host is a NUL-terminated copy that fits, an
 * accepted port is 0..65535, and a duration or size printed back as a bare
 * integer parses to the same value. Input: byte 0 picks the parser and the
 * host buffer size; the rest is the text (cut at the first NUL). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/parse.h"

#define SENTINEL 0x5a5a5a5a5a5a5a5aull

static void check(int ok, const char *what) {
  if (!ok) {
    fprintf(stderr, "fuzz_parse: invariant broken: %s\n", what);
    abort();
  }
}

static void number(int (*parse)(const char *, uint64_t *), const char *s) {
  uint64_t v = SENTINEL;
  int rc = parse(s, &v);
  check(rc == 0 || rc == -EINVAL, "a return code other than 0 or -EINVAL");
  if (rc != 0) {
    check(v == SENTINEL, "an output written on failure");
    return;
  }
  char again[32];
  snprintf(again, sizeof again, "%" PRIu64, v);
  uint64_t w = 0;
  /* A bare integer is milliseconds or bytes; a size has no upper bound
   * below UINT64_MAX, so any accepted value prints back and parses. */
  check(parse(again, &w) == 0 && w == v, "an accepted value does not read back as a bare integer");
}

static void hostport(const char *s, size_t hostcap) {
  char host[300];
  memset(host, 'Z', sizeof host);
  int port = -7;
  int rc = parse_hostport(s, host, hostcap, &port);
  check(rc == 0 || rc == -EINVAL, "a return code other than 0 or -EINVAL");
  for (size_t i = hostcap; i < sizeof host; i++) check(host[i] == 'Z', "wrote past hostcap");
  if (rc != 0) {
    check(port == -7, "port written on failure");
    return;
  }
  check(port >= 0 && port <= 65535, "port out of range");
  check(memchr(host, '\0', hostcap) != NULL, "host not NUL-terminated within hostcap");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  char *s = malloc(size);
  if (!s) return 0;
  memcpy(s, data + 1, size - 1);
  s[size - 1] = '\0';
  switch (data[0] % 3) {
  case 0: number(parse_duration_ms, s); break;
  case 1: number(parse_size, s); break;
  default: hostport(s, 1 + (size_t)(data[0] / 3) % 299); break;
  }
  free(s);
  return 0;
}
