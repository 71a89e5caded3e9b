/* storage.h - where persisted messages and their replies live.
 *
 * The embedded backend keeps them in this process (the contract holds until
 * the process exits). A stored message is found again by its deduplication
 * key (type, id, rpc, primary key); its reply is kept for the retention
 * period so a duplicate send gets the first reply. */
#ifndef LUSTER_STORAGE_H
#define LUSTER_STORAGE_H

#include <stddef.h>
#include <stdint.h>

#include "core/htab.h"
#include "entity/msg.h"

typedef enum { STORE_NEW = 0, STORE_PENDING, STORE_DONE } store_status_t;

typedef struct pmsg_s {
  htab_node_t node; /* by key, when it has a primary key */
  struct pmsg_s *rnext; /* retention queue of done records */
  struct pmsg_s *aprev, *anext; /* every record, for shutdown */
  char *key;
  size_t key_len;
  int keyed;
  int done;
  reply_kind_t kind;
  char *reply;
  size_t reply_len;
  uint64_t done_at;
  call_t *waiters;
} pmsg_t;

int storage_init_memory(uint64_t retention_ms);
/* Answers every caller still waiting with `unavailable` (queued on the ready
 * queue) and frees every record. */
void storage_close(void);
/* Stores m's record, or finds the one stored under the same key. */
pmsg_t *storage_put(const msg_t *m, const char *pk, store_status_t *status);
/* Adds a caller waiting for the reply (completed at once when it is known);
 * a call that already finished (timed out, caller gone) is not added. */
void storage_wait(pmsg_t *p, call_t *c);
/* Records the reply and hands it to every waiter. */
void storage_reply(pmsg_t *p, reply_kind_t kind, const char *body, size_t len);
size_t storage_count(void);

#endif
