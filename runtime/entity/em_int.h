/* em_int.h - the entity manager's value (em_t), shared by entity.c and
 * durable_state.c only: callers outside entity/ see em_t as opaque. */
#ifndef LUSTER_EM_INT_H
#define LUSTER_EM_INT_H

#include <stdint.h>

#include "core/htab.h"
#include "entity/entity.h"
#include "host/host.h"
#include "loop/sched.h"
#include "storage/estate.h"

struct stash_s;
struct em_wait_s;

struct em_s {
  sched_t *sched;  /* the owner's scheduler: instances run and time out on it */
  uint32_t shards;
  uint32_t *counts; /* instances per shard, [1..shards] */
  /* Snapshots handed over by a shard's previous owner (entity.c, stash_t). */
  htab_t stash;
  struct stash_s *stash_head, *stash_tail; /* oldest first */
  uint32_t *stash_counts; /* stashed snapshots per shard, [1..shards] */
  em_host_t host; /* the host it calls (em_set_host) */
  const estate_ops_t *estate; /* durable types' saved state (durable_state.c; set by the wiring) */
  host_em_t host_ops; /* what the host calls (em_host_ops), ud = this */
  /* The active-entity limit (em_set_max_active; 0: none). ninst counts
   * every instance (any state); lru_head..lru_tail are the idle ones of
   * every type, least recently used first (an instance joins the tail when
   * its last message ends), so the one to passivate is found in O(1). */
  uint64_t max_active, ninst;
  inst_t *lru_head, *lru_tail;
  /* Messages that need a new instance while every slot is busy, oldest
   * first; drain serves them as slots free. */
  struct em_wait_s *wait_head, *wait_tail;
  uint64_t nwaiting;
  uint64_t wait_ms; /* how long a message with no deadline of its own waits */
  sched_item_t drain;
  uint64_t limit_passivations, slot_waits, slot_timeouts;
};

#endif
