/* histo.h - a latency histogram with fixed buckets, written in Prometheus'
 * text format (cumulative `_bucket{le=...}` lines, `_sum` and `_count`).
 * Pure: the caller measures, and keeps one histo_t per label set. */
#ifndef LUSTER_HISTO_H
#define LUSTER_HISTO_H

#include <stdint.h>

#include "core/buf.h"

/* Upper bounds from 25 µs to 10 s: a handler's run is tens of microseconds,
 * a call that waits on storage or a peer milliseconds, one at its deadline
 * seconds. */
#define HISTO_NBOUNDS 18

typedef struct {
  uint64_t counts[HISTO_NBOUNDS + 1]; /* per bucket, not cumulative; the last is above every bound */
  uint64_t count;
  uint64_t sum_ns;
} histo_t;

/* The bucket bounds in nanoseconds, ascending. */
extern const uint64_t histo_bounds_ns[HISTO_NBOUNDS];

void histo_observe(histo_t *h, uint64_t ns);

/* Appends the sample lines of name for one label set: labels is the inside
 * of the braces, already escaped (`type="Counter",rpc="Get"`), or "" for
 * none. The caller writes the family's # HELP and # TYPE lines once. */
void histo_write(buf_t *b, const char *name, const char *labels, const histo_t *h);

#endif
