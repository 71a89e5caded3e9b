/* htab.c - intrusive chained hash table that doubles at load factor 1. */
#include "htab.h"

#include <errno.h>
#include <stdlib.h>

void htab_init(htab_t *t) { t->buckets = NULL; t->nbuckets = 0; t->count = 0; }

void htab_free(htab_t *t) { free(t->buckets); htab_init(t); }

htab_node_t *htab_find(const htab_t *t, uint64_t hash, htab_eq_fn eq, const void *key, size_t len) {
  if (!t->nbuckets) return NULL;
  for (htab_node_t *n = t->buckets[hash & (t->nbuckets - 1)]; n; n = n->hnext)
    if (n->hash == hash && eq(n, key, len)) return n;
  return NULL;
}

static int htab__grow(htab_t *t) {
  size_t nb = t->nbuckets ? t->nbuckets * 2 : 16;
  htab_node_t **b = calloc(nb, sizeof *b);
  if (!b) return -ENOMEM;
  for (size_t i = 0; i < t->nbuckets; i++) {
    htab_node_t *n = t->buckets[i];
    while (n) {
      htab_node_t *next = n->hnext;
      size_t j = n->hash & (nb - 1);
      n->hnext = b[j];
      b[j] = n;
      n = next;
    }
  }
  free(t->buckets);
  t->buckets = b;
  t->nbuckets = nb;
  return 0;
}

int htab_insert(htab_t *t, htab_node_t *n) {
  if (t->count >= t->nbuckets) {
    int rc = htab__grow(t);
    if (rc) return rc;
  }
  size_t j = n->hash & (t->nbuckets - 1);
  n->hnext = t->buckets[j];
  t->buckets[j] = n;
  t->count++;
  return 0;
}

void htab_remove(htab_t *t, htab_node_t *n) {
  if (!t->nbuckets) return;
  htab_node_t **p = &t->buckets[n->hash & (t->nbuckets - 1)];
  while (*p && *p != n) p = &(*p)->hnext;
  if (*p) { *p = n->hnext; t->count--; n->hnext = NULL; }
}

htab_node_t *htab_first(const htab_t *t, size_t *i) {
  for (*i = 0; *i < t->nbuckets; (*i)++)
    if (t->buckets[*i]) return t->buckets[*i];
  return NULL;
}

htab_node_t *htab_next(const htab_t *t, htab_node_t *n, size_t *i) {
  if (n->hnext) return n->hnext;
  for ((*i)++; *i < t->nbuckets; (*i)++)
    if (t->buckets[*i]) return t->buckets[*i];
  return NULL;
}
