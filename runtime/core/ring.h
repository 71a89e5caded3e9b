/* ring.h - shard -> runner assignment: a weighted consistent hash ring with
 * bounded load (the algorithm and its guarantees are explained in ring.c).
 *
 * Every runner computes the assignment on its own from the membership it
 * reads from storage, so the result depends only on the set of (id, weight)
 * pairs, the shard count and the load factor: never on the order of the
 * members, the machine or the process. */
#ifndef LUSTER_RING_H
#define LUSTER_RING_H

#include <stdint.h>

typedef struct {
  const char *id;  /* runner id (its advertised address), NUL-terminated */
  uint32_t weight; /* relative capacity; 0 = member that takes no shards */
} ring_member_t;

/* Fills owner[0..nshards-1]: owner[s - 1] is the index into members of the
 * runner that owns shard s, or -1 when nobody can (n == 0, or every weight
 * is 0). No member gets more than ceil(f * nshards * weight / total_weight)
 * shards, f = max(load_factor, 1) (NaN counts as 1; f is rounded up to a
 * multiple of 0.001 and capped at 1e6). Returns 0; -EINVAL for nshards == 0,
 * n < 0, NULL members (with n > 0) or owner, a NULL id or duplicate ids;
 * -ENOMEM if the working memory cannot be allocated (owner then untouched). */
int ring_assign(const ring_member_t *members, int n, uint32_t nshards, double load_factor,
                int32_t *owner);

#endif
