/* entity.h - the entity manager: instances, mailboxes, concurrency,
 * activation and idle passivation. */
#ifndef LUSTER_ENTITY_H
#define LUSTER_ENTITY_H

#include <stddef.h>
#include <stdint.h>

#include "core/htab.h"
#include "entity/msg.h"
#include "entity/sched.h"
#include "host/host.h"

typedef enum { INST_NEW = 0, INST_ACTIVATING, INST_READY } inst_state_t;

typedef struct inst_s {
  htab_node_t node;
  sched_item_t ready;
  etype_t *type;
  msg_t *mb_head, *mb_tail;
  uint32_t mb_len;
  uint32_t running;
  uint8_t state;
  uint8_t keep_alive;
  uint8_t idle; /* on its type's idle list */
  uint32_t shard;
  int handlers_ref, ctx_ref;
  struct inst_s *idle_prev, *idle_next;
  uint64_t idle_since;
  size_t id_len;
  char id[];
} inst_t;

void em_init(uint32_t shards);
void em_type_init(etype_t *t);
/* Queues m on its instance, creating it when needed. Returns 0, or
 * -EBUSY when the mailbox is full (m untouched). Persisted messages are
 * already stored, so they are never refused for a full mailbox. */
int em_deliver(msg_t *m);
void em_keep_alive(etype_t *t, const char *id, size_t len, int on);
/* Called by the host when work ends. */
void em_activated(inst_t *inst, const char *error);
void em_handled(inst_t *inst);
/* Stops every instance of every type (shutdown). */
void em_stop_all(void);
size_t em_active_total(void);

#endif
