/* htab.h - intrusive chained hash table; entries embed htab_node_t and the
 * caller supplies hashing and equality, so one table type serves instances,
 * stored messages and anything else keyed by bytes. */
#ifndef LUSTER_HTAB_H
#define LUSTER_HTAB_H

#include <stddef.h>
#include <stdint.h>

typedef struct htab_node_s {
  struct htab_node_s *hnext;
  uint64_t hash;
} htab_node_t;

typedef struct htab_s {
  htab_node_t **buckets;
  size_t nbuckets; /* power of two, or 0 */
  size_t count;
} htab_t;

typedef int (*htab_eq_fn)(const htab_node_t *n, const void *key, size_t len);

void htab_init(htab_t *t);
void htab_free(htab_t *t); /* frees the bucket array, not the entries */
htab_node_t *htab_find(const htab_t *t, uint64_t hash, htab_eq_fn eq, const void *key, size_t len);
int htab_insert(htab_t *t, htab_node_t *n); /* n->hash set by the caller; 0 or -ENOMEM */
void htab_remove(htab_t *t, htab_node_t *n);
/* Iteration: for (n = htab_first(t, &i); n; n = htab_next(t, n, &i)) */
htab_node_t *htab_first(const htab_t *t, size_t *i);
htab_node_t *htab_next(const htab_t *t, htab_node_t *n, size_t *i);

#endif
