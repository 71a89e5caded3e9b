/* storage.h - where persisted messages and their replies live on a runner
 * without a cluster (embedded storage; see pgstore.h for PostgreSQL).
 *
 * The embedded backend keeps them in this process (the contract holds until
 * the process exits). A stored message is found again by its deduplication
 * key (type, id, rpc, primary key) and by its request id; a keyed record
 * keeps the SHA-256 of its payload's canonical JSON (core/jsoncanon.h), so a
 * send that reuses the key with another payload is told apart from a retry
 * (STORE_CONFLICT); its reply is kept
 * for the retention period (at most STORAGE_UNKEYED_MS for messages without
 * a primary key, which nothing but GET /requests/{id} can ask for again). */
#ifndef LUSTER_STORAGE_H
#define LUSTER_STORAGE_H

#include <stddef.h>
#include <stdint.h>

#include "core/htab.h"
#include "loop/msg.h"
#include "storage/estate_mem.h"

#define STORAGE_UNKEYED_MS 60000

#define STORAGE_FP_LEN 32 /* SHA-256 of a keyed message's canonical payload */

/* CONFLICT: the key is stored with a different payload; nothing is stored. */
typedef enum { STORE_NEW = 0, STORE_PENDING, STORE_DONE, STORE_CONFLICT } store_status_t;

/* The embedded store: one per runtime (storage_new), nothing process-wide. */
typedef struct mem_store_s mem_store_t;

typedef struct pmsg_s {
  stored_t base;       /* what its message calls when it ends */
  mem_store_t *store;  /* the store that holds it */
  htab_node_t node;    /* by key, when it has a primary key */
  htab_node_t rnode;   /* by request id */
  struct pmsg_s *rnext; /* retention queue of done records */
  struct pmsg_s *aprev, *anext; /* every record, for shutdown */
  uint64_t rid;
  char *key;
  size_t key_len;
  unsigned char fp[STORAGE_FP_LEN]; /* payload fingerprint, when keyed */
  int keyed;
  int done;
  reply_kind_t kind;
  char *reply;
  size_t reply_len;
  uint64_t done_at;
  call_t *waiters;
} pmsg_t;

/* A store whose completions and pruning run on s; a reply's state write goes
 * to es (NULL: replies carry none). NULL: out of memory. */
mem_store_t *storage_new(sched_t *s, estate_mem_t *es, uint64_t retention_ms);
/* Answers every caller still waiting with `unavailable` (queued on the ready
 * queue) and frees every record and the store (NULL: nothing). */
void storage_free(mem_store_t *ms);
/* The names a keyed record is found by besides m's id and the primary key:
 * its type's name and its RPC's tag, as plain strings (storage knows no
 * types). */
typedef struct {
  const char *type, *rpc;
  size_t type_len, rpc_len;
} storage_names_t;

/* Stores m's record (under m->request_id), or finds the one stored under the
 * same key (names, m's id, pk): *status says which, and STORE_CONFLICT when
 * that one's payload differs from m's. */
pmsg_t *storage_put(mem_store_t *ms, const msg_t *m, const storage_names_t *names, const char *pk, store_status_t *status);
/* Adds a caller waiting for the reply (completed at once when it is known);
 * a call that already finished (timed out, caller gone) is not added. */
void storage_wait(pmsg_t *p, call_t *c);
/* GET /requests/{id}: completes c with the stored reply, REPLY_ACCEPTED
 * while the message is pending, REPLY_NOT_FOUND when no such id is kept. */
void storage_get(mem_store_t *ms, uint64_t request_id, call_t *c);
size_t storage_count(const mem_store_t *ms);

#endif
