/* heap.c - intrusive binary min-heap keyed by `due`, ties broken by
 * insertion order being irrelevant: callers that need FIFO among equal
 * deadlines add a sequence number to `due` themselves. */
#include "heap.h"

#include <errno.h>
#include <stdlib.h>

void heap_init(heap_t *h) { h->items = NULL; h->len = h->cap = 0; }

void heap_free(heap_t *h) { free(h->items); heap_init(h); }

static void heap__set(heap_t *h, size_t i, heap_node_t *n) { h->items[i] = n; n->idx = i; }

static void heap__up(heap_t *h, size_t i) {
  heap_node_t *n = h->items[i];
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (h->items[p]->due <= n->due) break;
    heap__set(h, i, h->items[p]);
    i = p;
  }
  heap__set(h, i, n);
}

static void heap__down(heap_t *h, size_t i) {
  heap_node_t *n = h->items[i];
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    uint64_t md = n->due;
    if (l < h->len && h->items[l]->due < md) { m = l; md = h->items[l]->due; }
    if (r < h->len && h->items[r]->due < md) m = r;
    if (m == i) break;
    heap__set(h, i, h->items[m]);
    i = m;
  }
  heap__set(h, i, n);
}

int heap_push(heap_t *h, heap_node_t *n) {
  if (h->len == h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 64;
    heap_node_t **p = realloc(h->items, cap * sizeof *p);
    if (!p) return -ENOMEM;
    h->items = p;
    h->cap = cap;
  }
  heap__set(h, h->len++, n);
  heap__up(h, n->idx);
  return 0;
}

void heap_remove(heap_t *h, heap_node_t *n) {
  size_t i = n->idx;
  if (i == HEAP_NONE || i >= h->len || h->items[i] != n) return;
  n->idx = HEAP_NONE;
  h->len--;
  if (i == h->len) return;
  heap__set(h, i, h->items[h->len]);
  heap__up(h, i);
  heap__down(h, h->items[i]->idx);
}

heap_node_t *heap_top(const heap_t *h) { return h->len ? h->items[0] : NULL; }

heap_node_t *heap_pop(heap_t *h) {
  heap_node_t *n = heap_top(h);
  if (n) heap_remove(h, n);
  return n;
}
