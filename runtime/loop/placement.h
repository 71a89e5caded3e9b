/* placement.h - where shards run, as the layers below the cluster see it.
 *
 * The lease rule (nothing runs without a fresh lease on its shard) lives in
 * cluster/; host/ and entity/ only ask through this one table, which the
 * wiring (admin/wiring.c) fills with the cluster's answers. A runner without
 * a cluster gets a table that says yes to everything and sends locally. */
#ifndef LUSTER_PLACEMENT_H
#define LUSTER_PLACEMENT_H

#include <stddef.h>
#include <stdint.h>

#include "loop/msg.h"

typedef struct placement_ops_s {
  void *ctx;
  /* May work on this shard run now (this runner holds a fresh lease)? */
  int (*may_run)(void *ctx, uint32_t shard);
  /* The same for work placed by a key (a singleton's or cron job's name). */
  int (*may_run_key)(void *ctx, const char *key, size_t len);
  /* Sends a message to (type, id) wherever its shard runs; c gets the reply. */
  void (*send)(void *ctx, const char *type, size_t type_len, const char *id, size_t id_len, const char *tag,
               size_t tag_len, const char *payload, size_t payload_len, const char *headers, size_t headers_len,
               unsigned flags, call_t *c);
  /* Cron bookkeeping in durable storage: cron_on is 0 when there is none
   * (memory storage); cron queues op and c gets the answer. */
  int (*cron_on)(void *ctx);
  void (*cron)(void *ctx, int op, const char *name, uint64_t at, call_t *c);
  /* The last instance of a shard is gone (a released shard may move now). */
  void (*shard_drained)(void *ctx, uint32_t shard);
  /* A message whose shard is not served here any more goes back to routing. */
  void (*reroute)(void *ctx, msg_t *m);
  /* A handed-over instance's snapshot (owned by the callee) goes to the
   * shard's new owner. */
  void (*handoff)(void *ctx, const char *type, size_t type_len, const char *id, size_t id_len, char *snapshot,
                  size_t len);
} placement_ops_t;

static inline int placement_may_run(const placement_ops_t *p, uint32_t shard) {
  return !p || !p->may_run || p->may_run(p->ctx, shard);
}

static inline int placement_may_run_key(const placement_ops_t *p, const char *key, size_t len) {
  return !p || !p->may_run_key || p->may_run_key(p->ctx, key, len);
}

#endif
