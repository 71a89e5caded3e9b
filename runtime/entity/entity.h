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

/* The entity manager: one value per runtime (em_new), holding what it keeps
 * beside its types (per-shard counts, handed-over snapshots, the durable
 * types' storage). Each etype_t it serves points back at it (t->em, set by
 * em_type_init), so the per-message calls below need no em_t argument. */
typedef struct em_s em_t;

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

/* The host as the manager calls it: every call from entity/ into host/ goes
 * through this table, so the manager can run on a fake host (the per-layer
 * spec, spec/support/luster_em.c). em_host_default() (em_host.c) is the real
 * host; ud is passed back to each function. */
typedef struct em_host_s {
  void *ud;
  etype_t *(*types)(void *ud); /* the live types, linked by next */
  etype_t *(*find_type)(void *ud, const char *name, size_t len);
  int (*find_rpc)(void *ud, const etype_t *t, const char *tag, size_t len); /* its index, or -1 */
  const placement_ops_t *(*placement)(void *ud); /* where shards run (NULL: one runner) */
  /* Starts work whose end the host reports through em_host_ops(em). */
  void (*activate)(void *ud, host_inst_t *i, const char *snapshot, size_t len);
  void (*handle)(void *ud, host_inst_t *i, msg_t *m);
  void (*release)(void *ud, host_inst_t *i);
  /* The instance's snapshot as JSON (malloc'd), or NULL. */
  char *(*snapshot)(void *ud, host_inst_t *i, size_t *len);
  /* A durable type's snapshot() result as saved bytes (malloc'd; NULL: nil,
   * or a failure whose malloc'd text is in *err). */
  char *(*state_snapshot)(void *ud, host_inst_t *i, size_t *len, char **err);
  void (*type_released)(void *ud, etype_t *t); /* a retired type lost an instance */
  void (*cancel_shard_tasks)(void *ud, const uint8_t *mask);
} em_host_t;

/* A manager whose instances run and time out on s, spread over `shards`
 * shards (0 counts as 1). NULL when out of memory. Before any type: set its
 * host (em_set_host). */
em_t *em_new(sched_t *s, uint32_t shards);
/* The host em calls (copied). */
void em_set_host(em_t *em, const em_host_t *host);
/* The real host h (host/host.h) as the manager calls it (ud is h). */
em_host_t em_host_default(host_t *h);
/* Frees the manager's own tables (per-shard counts, handed-over snapshots
 * not yet claimed), after every type it served has been freed. */
void em_free(em_t *em);
/* t is served by em from now on (t->em = em). */
void em_type_init(em_t *em, etype_t *t);
/* Queues m on its instance, creating it when needed. Returns 0, or
 * -EBUSY when the mailbox is full (m untouched). Persisted messages are
 * already stored, so they are never refused for a full mailbox. */
int em_deliver(msg_t *m);
void em_keep_alive(etype_t *t, const char *id, size_t len, int on);
/* The instance of (t, id) here, or NULL. */
inst_t *em_find(etype_t *t, const char *id, size_t len);
/* Passivates one idle instance now, as its idle timeout would (luster
 * test's T.passivate): 1 done, 0 not active, -1 busy (running or queued). */
int em_passivate(etype_t *t, const char *id, size_t len);
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
/* Stops every instance of every type of em (shutdown). */
void em_stop_all(em_t *em);
uint64_t em_active_total(em_t *em);

/* The manager as the host calls it (host_config_t.em). In cluster mode,
 * messages that must go elsewhere and handed-over snapshots leave through
 * host_config_t.placement (reroute, handoff). */
const host_em_t *em_host_ops(em_t *em);
/* GET /metrics: active, running and queued per entity type. */
void em_metrics(em_t *em, buf_t *b);
/* Instances (any state) on a shard. */
uint32_t em_shard_instances(em_t *em, uint32_t shard);
/* Snapshots handed here for a shard and not yet claimed by an instance. */
uint32_t em_shard_stashed(em_t *em, uint32_t shard);
/* Graceful: for every shard with mask[shard] set, queued messages go back to
 * the router, running ones finish, then each instance hands its snapshot
 * over and goes; snapshots stashed for those shards are handed on too. */
void em_release_shards(em_t *em, const uint8_t *mask);
/* At once: running handlers of those shards end with `unavailable`, queued
 * messages go back to the router, instances go (no snapshot: the lease is
 * gone, so their state may already be stale). */
void em_fence_shards(em_t *em, const uint8_t *mask);
/* A snapshot that arrived for an instance not yet created here: activate
 * hands it to the next instance of (type, id). Takes ownership. It stays
 * until claimed, handed on or dropped (no expiry: it is the only copy). */
void em_stash_snapshot(em_t *em, const char *type, size_t type_len, const char *id, size_t id_len, char *snap,
                       size_t len);
/* Hands every stashed snapshot of the shards in mask to the placement's handoff. */
void em_stash_hand_on(em_t *em, const uint8_t *mask);
/* Frees the stashed snapshots of the shards in mask (their new owner did
 * not take them in time); returns how many. */
uint32_t em_stash_drop(em_t *em, const uint8_t *mask);

#endif
