/* where.h - GET /entities/{type}/{id}: which shard an id is on, which runner
 * owns it, and whether its instance is active there with how many messages
 * queued, asked of the owner without activating anything. */
#ifndef LUSTER_WHERE_H
#define LUSTER_WHERE_H

#include <stddef.h>
#include <stdint.h>

#include "core/frame.h"
#include "loop/msg.h"
#include "net/transport.h"

/* Completes c with REPLY_OK and {"type","id","shard","runner","active",
 * "mailbox"}, or not_found (unknown type), schema (bad id) or unavailable
 * (no owner now, or the owner could not be asked). `self` and `shards` name
 * this runner and its shard count when it runs alone. */
struct cluster_s;
struct host_s;
void where_ask(struct cluster_s *cl, struct host_s *h, const char *type, size_t type_len, const char *id, size_t id_len,
               const char *self, uint32_t shards, call_t *c);
/* A peer's ROUTER_F_WHERE request: answered from this runner's entity
 * manager when it owns the shard, else with ROUTER_NOT_OWNER. */
void where_inbound(struct cluster_s *cl, struct host_s *h, tp_inbound_t *in, const frame_request_t *req);

#endif
