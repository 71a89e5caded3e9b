/* entity.h - the entity manager: instances, mailboxes, concurrency,
 * activation and idle passivation. */
#ifndef LUSTER_ENTITY_H
#define LUSTER_ENTITY_H

#include <stddef.h>
#include <stdint.h>

#include "core/htab.h"
#include "loop/msg.h"
#include "loop/sched.h"
#include "host/host.h"

typedef enum {
  INST_NEW = 0,    /* created by a message; activates when the queue reaches it */
  INST_ACTIVATING, /* activate runs */
  INST_READY,      /* handling messages */
  INST_WAITING,    /* successor of an instance on a reloaded script, waiting for its snapshot */
} inst_state_t;

typedef struct inst_s {
  htab_node_t node; /* first: the type's table of instances holds inst_t by it */
  host_inst_t h;    /* what the host sees (type, id, shard, Lua refs) */
  sched_item_t ready;
  msg_t *mb_head, *mb_tail;
  uint32_t mb_len;
  uint32_t running;
  uint8_t state;
  uint8_t keep_alive;
  uint8_t idle; /* on its type's idle list */
  uint8_t retiring; /* its script was replaced: finish in-flight work, then hand over */
  uint8_t handoff;  /* retiring because its shard moves to another runner */
  struct dstate_s *ds; /* durable: what it knows of its saved state (durable_state.c) */
  struct inst_s *successor;   /* the instance on the new version that waits for this one */
  struct inst_s *predecessor; /* while INST_WAITING: the old instance it waits for */
  char *snapshot;   /* state handed over by the predecessor, for activate */
  size_t snapshot_len;
  struct em_backoff_s *backoff; /* while a raised persisted message waits to run again */
  struct inst_s *idle_prev, *idle_next;
  uint64_t idle_since;
  char id[]; /* h.id points here; its length is h.id_len */
} inst_t;

/* Instances of h's types run and time out on s. */
void em_init(sched_t *s, host_t *h, uint32_t shards);
void em_type_init(etype_t *t);
/* Queues m on its instance, creating it when needed. Returns 0, or
 * -EBUSY when the mailbox is full (m untouched). Persisted messages are
 * already stored, so they are never refused for a full mailbox. */
int em_deliver(msg_t *m);
void em_keep_alive(etype_t *t, const char *id, size_t len, int on);
/* The instance of (t, id) here, or NULL. */
inst_t *em_find(etype_t *t, const char *id, size_t len);
/* Called by the host when work ends. */
void em_activated(inst_t *inst, const char *error);
void em_handled(inst_t *inst);
/* A persisted message whose handler raised runs again after delay_ms: it
 * goes back to the head of the mailbox, and the instance starts nothing
 * until then (its later messages keep their order behind it). */
void em_retry(inst_t *inst, msg_t *m, uint64_t delay_ms);
/* A script was replaced: every instance of `old` finishes what it runs, then
 * hands its snapshot to an instance of `repl` (same name on the new version;
 * NULL when the type is gone: queued messages get not_found). */
void em_migrate(etype_t *old, etype_t *repl);
/* Instances (any state) still on a type. */
size_t em_instances(const etype_t *t);
/* Frees every instance of a type whose script is being closed. */
void em_type_free(etype_t *t);
/* Stops every instance of every type (shutdown). */
void em_stop_all(void);
uint64_t em_active_total(void);
/* Frees the manager's own tables (per-shard counts, handed-over snapshots
 * not yet claimed), after every type has been freed. */
void em_close(void);

/* The manager as the host calls it (host_config_t.em). In cluster mode,
 * messages that must go elsewhere and handed-over snapshots leave through
 * host_config_t.placement (reroute, handoff). */
const host_em_t *em_host_ops(void);
/* GET /metrics: active, running and queued per entity type. */
void em_metrics(buf_t *b);
/* Instances (any state) on a shard. */
uint32_t em_shard_instances(uint32_t shard);
/* Snapshots handed here for a shard and not yet claimed by an instance. */
uint32_t em_shard_stashed(uint32_t shard);
/* Graceful: for every shard with mask[shard] set, queued messages go back to
 * the router, running ones finish, then each instance hands its snapshot
 * over and goes; snapshots stashed for those shards are handed on too. */
void em_release_shards(const uint8_t *mask);
/* At once: running handlers of those shards end with `unavailable`, queued
 * messages go back to the router, instances go (no snapshot: the lease is
 * gone, so their state may already be stale). */
void em_fence_shards(const uint8_t *mask);
/* A snapshot that arrived for an instance not yet created here: activate
 * hands it to the next instance of (type, id). Takes ownership. It stays
 * until claimed, handed on or dropped (no expiry: it is the only copy). */
void em_stash_snapshot(const char *type, size_t type_len, const char *id, size_t id_len, char *snap, size_t len);
/* Hands every stashed snapshot of the shards in mask to the placement's handoff. */
void em_stash_hand_on(const uint8_t *mask);
/* Frees the stashed snapshots of the shards in mask (their new owner did
 * not take them in time); returns how many. */
uint32_t em_stash_drop(const uint8_t *mask);

#endif
