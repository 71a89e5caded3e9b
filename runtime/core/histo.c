/* histo.c - fixed-bucket latency histograms in Prometheus' text format. */
#include "core/histo.h"

#include <inttypes.h>

const uint64_t histo_bounds_ns[HISTO_NBOUNDS] = {
    25000,     50000,     100000,    250000,    500000,     1000000,    2500000,    5000000,    10000000,
    25000000,  50000000,  100000000, 250000000, 500000000, 1000000000, 2500000000, 5000000000, 10000000000,
};

void histo_observe(histo_t *h, uint64_t ns) {
  /* A linear scan from the smallest bound: nearly every observation is a
   * handler run of well under a millisecond, found in the first few steps. */
  int i = 0;
  while (i < HISTO_NBOUNDS && ns > histo_bounds_ns[i]) i++;
  h->counts[i]++;
  h->count++;
  h->sum_ns += ns;
}

/* Seconds with nine decimals and no trailing zeros ("0.000025", "10"). */
static void histo__seconds(buf_t *b, uint64_t ns) {
  buf_printf(b, "%" PRIu64, ns / 1000000000u);
  uint64_t frac = ns % 1000000000u;
  if (!frac) return;
  char digits[10];
  int n = 9;
  for (int i = 8; i >= 0; i--, frac /= 10) digits[i] = (char)('0' + frac % 10);
  while (digits[n - 1] == '0') n--;
  buf_addc(b, '.');
  buf_add(b, digits, (size_t)n);
}

void histo_write(buf_t *b, const char *name, const char *labels, const histo_t *h) {
  const char *sep = labels[0] ? "," : "";
  uint64_t cum = 0;
  for (int i = 0; i < HISTO_NBOUNDS; i++) {
    cum += h->counts[i];
    buf_printf(b, "%s_bucket{%s%sle=\"", name, labels, sep);
    histo__seconds(b, histo_bounds_ns[i]);
    buf_printf(b, "\"} %" PRIu64 "\n", cum);
  }
  buf_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n", name, labels, sep, h->count);
  buf_printf(b, labels[0] ? "%s_sum{%s} " : "%s_sum%s ", name, labels);
  histo__seconds(b, h->sum_ns);
  buf_printf(b, labels[0] ? "\n%s_count{%s} %" PRIu64 "\n" : "\n%s_count%s %" PRIu64 "\n", name, labels, h->count);
}
