/* estate_mem.h - durable entity state in memory (the embedded storage): one
 * store per runtime, lasting as long as it. */
#ifndef LUSTER_ESTATE_MEM_H
#define LUSTER_ESTATE_MEM_H

#include "storage/estate.h"

typedef struct estate_mem_s estate_mem_t;

/* A new, empty store; its completions run on s. NULL without memory. */
estate_mem_t *estate_mem_new(sched_t *s);
/* The store's operations (see estate.h); ctx is es. Valid while es lives. */
const estate_ops_t *estate_mem_ops(estate_mem_t *es);
/* Applies w at once: a persisted message's reply and its state are stored
 * together (memory.c). */
void estate_mem_apply(estate_mem_t *es, const estate_write_t *w);
/* Fails every queued save and load (callbacks run now), frees every row and
 * the store. Call once its scheduler's queue has been drained. */
void estate_mem_free(estate_mem_t *es);

#endif
