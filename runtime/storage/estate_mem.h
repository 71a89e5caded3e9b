/* estate_mem.h - durable entity state in this process's memory (the
 * embedded storage): it lasts as long as the process. */
#ifndef LUSTER_ESTATE_MEM_H
#define LUSTER_ESTATE_MEM_H

#include "storage/estate.h"

/* The memory backend's operations (see estate.h). */
/* The store's operations; its completions run on s. */
const estate_ops_t *estate_mem_ops(sched_t *s);
/* Applies w at once: a persisted message's reply and its state are stored
 * together (memory.c). */
void estate_mem_apply(const estate_write_t *w);
/* Fails every queued save and load (callbacks run now), frees every row. */
void estate_mem_close(void);

#endif
