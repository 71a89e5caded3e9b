/* ring.c - weighted consistent hashing with bounded loads: which live runner
 * owns each shard.
 *
 * The ring. Every member with weight w > 0 places min(256 * w, 16384)
 * virtual nodes on a 64-bit circle, at points derived from its id alone:
 *
 *   point(member, j) = hash_mix64(hash_bytes(id) + (j + 1) * 0x9e3779b97f4a7c15)
 *                       for j = 0 .. vnodes - 1
 *
 * and every shard s (1..N) a point of its own:
 *
 *   point(shard s)   = hash_mix64(s * 0xd6e8feb86659fd93 + 0x2545f4914f6cdd1d)
 *
 * Plain consistent hashing gives a shard to the member of the first virtual
 * node clockwise from the shard's point. Because a member's points depend
 * only on its own id, adding a member only takes the arcs its new points
 * land in (about w_new / W of the shards) and removing one only frees its
 * own arcs: the rest of the assignment stays put. Many virtual nodes per
 * member keep each member's share of the circle close to its share of the
 * weight: with k points a member's arc total varies by about 1/sqrt(k).
 * Why 256 and not the customary 64: at 64 (12% spread) a measured 4-runner
 * ring gave one runner 16% of the circle instead of 25%, and the bound
 * below only caps the busiest runner, it cannot lift the idlest; at 256 the
 * spread is 6%, and 4 KiB of ring per unit of weight is cheap. The cap at
 * weight 64 keeps the ring small; heavier members stop gaining ring share
 * beyond it and rely on the load bound for their share.
 *
 * The bound (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with
 * Bounded Loads", 2016). With a few hundred shards, sampling noise alone
 * (about sqrt(N / members) shards) leaves some runner with a visibly bigger
 * slice, so each member i gets a capacity
 *
 *   cap_i = min(N, ceil(f * N * w_i / W)),   W = sum of weights, f >= 1
 *
 * and the shards are placed in the fixed order 1, 2, ..., N: each walks
 * clockwise from its point to the first virtual node whose member is still
 * under its capacity. Since f >= 1, the capacities add up to at least N, so
 * every shard finds a place (every member with w > 0 has a point), and no
 * member ever exceeds cap_i. f = 1.25 means no runner carries more than 25%
 * over its fair share. The price is a little extra movement: when the
 * membership changes, the capacities change too, and a shard that spilled
 * past a full member may now land elsewhere. With f = 1.25 this stays a few
 * percent of N on top of the consistent-hashing minimum (the spec measures
 * it: 3 -> 4 runners over 300 shards moves 24%, 4 -> 3 moves the leaver's
 * 25% and nothing else).
 *
 * f is taken as an integer number of thousandths (rounded up) and the
 * capacities are computed in 128-bit integers, so that every runner derives
 * the same capacities bit for bit; floating point never decides an owner.
 *
 * Determinism. The members are sorted by id (strcmp) first and the ring is
 * sorted by (point, member rank, vnode index), so the outcome depends on
 * the set of members and not on their order; equal ids are refused since
 * they would make that order ambiguous.
 *
 * Like hash.c, every constant here is part of the cluster protocol: runners
 * that disagree on them compute different owners (the shard leases keep
 * that safe, but shards would bounce until all runners run one version). */
#include "ring.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"

#if !defined(__SIZEOF_INT128__)
#error "ring.c computes shard capacities in unsigned __int128 (gcc/clang on 64-bit targets)"
#endif

#define RING_VNODES_PER_WEIGHT 256u
#define RING_MAX_VNODES 16384u      /* per member, reached at weight 64 */
#define RING_LOAD_DEN 1000u         /* load factor resolution: 0.001 */
#define RING_MAX_LOAD_FACTOR 1e6    /* beyond n members any f means "unbounded" */
#define RING_VNODE_STEP 0x9e3779b97f4a7c15ULL
#define RING_SHARD_MUL 0xd6e8feb86659fd93ULL
#define RING_SHARD_ADD 0x2545f4914f6cdd1dULL

typedef struct {
  const char *id;
  uint32_t weight;
  int32_t index; /* position in the caller's array */
} ring_sorted_t;

typedef struct {
  uint64_t point;
  int32_t member; /* rank in the id-sorted array */
  uint32_t vnode;
} ring_vnode_t;

static int ring_cmp_id(const void *a, const void *b) {
  return strcmp(((const ring_sorted_t *)a)->id, ((const ring_sorted_t *)b)->id);
}

static int ring_cmp_vnode(const void *a, const void *b) {
  const ring_vnode_t *x = a, *y = b;
  if (x->point != y->point) return x->point < y->point ? -1 : 1;
  if (x->member != y->member) return x->member < y->member ? -1 : 1;
  if (x->vnode != y->vnode) return x->vnode < y->vnode ? -1 : 1;
  return 0;
}

static uint32_t ring_vnodes(uint32_t weight) {
  return weight >= RING_MAX_VNODES / RING_VNODES_PER_WEIGHT ? RING_MAX_VNODES
                                                            : weight * RING_VNODES_PER_WEIGHT;
}

/* ceil(f * nshards * w / (RING_LOAD_DEN * total)), at most nshards. The
 * product reaches 2^94 (f <= 2^30, nshards and w < 2^32), hence 128 bits. */
static uint32_t ring_capacity(uint64_t f, uint32_t nshards, uint32_t w, uint64_t total) {
  unsigned __int128 num = (unsigned __int128)f * nshards * w;
  unsigned __int128 den = (unsigned __int128)RING_LOAD_DEN * total;
  unsigned __int128 cap = (num + den - 1) / den;
  return cap > nshards ? nshards : (uint32_t)cap;
}

/* The load factor in thousandths, rounded up (rounding up only loosens the
 * bound, so the capacities still cover every shard). */
static uint64_t ring_factor(double load_factor) {
  double lf = load_factor;
  if (!(lf >= 1.0)) lf = 1.0; /* also NaN */
  if (lf > RING_MAX_LOAD_FACTOR) lf = RING_MAX_LOAD_FACTOR;
  double scaled = lf * RING_LOAD_DEN;
  uint64_t f = (uint64_t)scaled;
  if ((double)f < scaled) f++;
  return f;
}

/* Every member's virtual nodes (unsorted) and its capacity in shards. */
static void ring_build(const ring_sorted_t *sorted, int n, uint32_t nshards, uint64_t f, uint64_t total,
                       ring_vnode_t *ring, uint32_t *cap) {
  size_t v = 0;
  for (int i = 0; i < n; i++) {
    cap[i] = ring_capacity(f, nshards, sorted[i].weight, total);
    uint64_t h = hash_bytes(sorted[i].id, strlen(sorted[i].id));
    uint32_t k = ring_vnodes(sorted[i].weight);
    for (uint32_t j = 0; j < k; j++) {
      ring[v].point = hash_mix64(h + (uint64_t)(j + 1) * RING_VNODE_STEP);
      ring[v].member = i;
      ring[v].vnode = j;
      v++;
    }
  }
}

/* Shard s goes to the first member under capacity at or after its point on
 * the sorted ring (nv nodes), wrapping past the top; returns that member's
 * position in the sorted members and counts the shard in its load. */
static int32_t ring_place(const ring_vnode_t *ring, size_t nv, uint32_t s, const uint32_t *cap, uint32_t *load) {
  uint64_t p = hash_mix64((uint64_t)s * RING_SHARD_MUL + RING_SHARD_ADD);
  size_t lo = 0, hi = nv;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (ring[mid].point < p) lo = mid + 1;
    else hi = mid;
  }
  if (lo == nv) lo = 0;
  /* Some member is under capacity (capacities sum to >= nshards > shards
   * placed so far), so this walk always ends inside the loop; the
   * fallback only keeps the function total should that ever break. */
  int32_t m = ring[lo].member;
  for (size_t k = 0; k < nv; k++) {
    int32_t c = ring[(lo + k) % nv].member;
    if (load[c] < cap[c]) {
      m = c;
      break;
    }
  }
  load[m]++;
  return m;
}

int ring_assign(const ring_member_t *members, int n, uint32_t nshards, double load_factor,
                int32_t *owner) {
  if (nshards == 0 || n < 0 || owner == NULL || (n > 0 && members == NULL)) return -EINVAL;
  for (int i = 0; i < n; i++)
    if (members[i].id == NULL) return -EINVAL;
  if (n == 0) {
    for (uint32_t s = 0; s < nshards; s++) owner[s] = -1;
    return 0;
  }

  ring_sorted_t *sorted = malloc((size_t)n * sizeof *sorted);
  if (sorted == NULL) return -ENOMEM;
  for (int i = 0; i < n; i++) {
    sorted[i].id = members[i].id;
    sorted[i].weight = members[i].weight;
    sorted[i].index = i;
  }
  qsort(sorted, (size_t)n, sizeof *sorted, ring_cmp_id);

  int rc = 0;
  ring_vnode_t *ring = NULL;
  uint32_t *cap = NULL, *load = NULL;
  uint64_t total = 0;
  uint64_t nv = 0; /* 64-bit so the sum cannot wrap on 32-bit targets */
  for (int i = 0; i < n; i++) {
    if (i > 0 && strcmp(sorted[i - 1].id, sorted[i].id) == 0) {
      rc = -EINVAL;
      goto out;
    }
    total += sorted[i].weight; /* < 2^31 * 2^32: no overflow */
    nv += ring_vnodes(sorted[i].weight);
  }
  if (total == 0) {
    for (uint32_t s = 0; s < nshards; s++) owner[s] = -1;
    goto out;
  }
  if (nv > SIZE_MAX / sizeof *ring) {
    rc = -ENOMEM;
    goto out;
  }

  ring = malloc((size_t)nv * sizeof *ring);
  cap = malloc((size_t)n * sizeof *cap);
  load = calloc((size_t)n, sizeof *load);
  if (ring == NULL || cap == NULL || load == NULL) {
    rc = -ENOMEM;
    goto out;
  }

  ring_build(sorted, n, nshards, ring_factor(load_factor), total, ring, cap);
  qsort(ring, (size_t)nv, sizeof *ring, ring_cmp_vnode);
  for (uint32_t s = 1; s <= nshards; s++) owner[s - 1] = sorted[ring_place(ring, (size_t)nv, s, cap, load)].index;

out:
  free(load);
  free(cap);
  free(ring);
  free(sorted);
  return rc;
}
