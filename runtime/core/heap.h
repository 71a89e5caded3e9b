/* heap.h - intrusive binary min-heap of deadlines (timers, call timeouts). */
#ifndef LUSTER_HEAP_H
#define LUSTER_HEAP_H

#include <stddef.h>
#include <stdint.h>

/* Embedded in the object that waits; `idx` is its slot while queued. */
typedef struct heap_node_s {
  uint64_t due;
  size_t idx; /* HEAP_NONE when not queued */
} heap_node_t;

#define HEAP_NONE ((size_t)-1)

typedef struct heap_s {
  heap_node_t **items;
  size_t len, cap;
} heap_t;

void heap_init(heap_t *h);
void heap_free(heap_t *h);
int heap_push(heap_t *h, heap_node_t *n); /* 0, or -ENOMEM */
void heap_remove(heap_t *h, heap_node_t *n); /* no-op when not queued */
heap_node_t *heap_top(const heap_t *h);
heap_node_t *heap_pop(heap_t *h);

#endif
