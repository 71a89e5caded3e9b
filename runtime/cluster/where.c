/* where.c - where an id lives (see where.h).
 *
 * A runner that does not own the id's shard asks the owner over the runner
 * transport, as a forwarded call would go: a request frame with the
 * ROUTER_F_WHERE flag, the type and the id, and no RPC. The owner's router
 * hands it here before any message is made, and the answer comes from its
 * entity manager's table (em_find), so nothing is activated or queued.
 * Proxying through the owner's HTTP gateway (its address is in the
 * membership) was the other way: it needs an HTTP client in the runtime,
 * a second connection per peer, and a way to tell a stale owner from a
 * real answer, which the transport already has (ROUTER_NOT_OWNER, deadlines,
 * authentication). */
#include "cluster/where.h"

#include <stdlib.h>
#include <string.h>

#include "cluster/cluster.h"
#include "cluster/router.h"
#include "core/buf.h"
#include "core/hash.h"
#include "entity/entity.h"
#include "host/host.h"

/* The answer, from this runner's entity manager: `active` while the instance
 * is activated here, `mailbox` its messages queued (not running). */
static void where__json(buf_t *b, etype_t *t, const char *id, size_t id_len, uint32_t shard, const char *runner) {
  inst_t *i = em_find(t, id, id_len);
  buf_adds(b, "{\"type\":");
  buf_add_json_str(b, t->name, t->name_len);
  buf_adds(b, ",\"id\":");
  buf_add_json_str(b, id, id_len);
  buf_printf(b, ",\"shard\":%u,\"runner\":", shard);
  buf_add_json_str(b, runner, strlen(runner));
  buf_printf(b, ",\"active\":%s,\"mailbox\":%u}", i && i->state == INST_READY ? "true" : "false",
             i ? i->mb_len : 0);
}

static void where__local(call_t *c, etype_t *t, const char *id, size_t id_len, uint32_t shard, const char *runner) {
  buf_t b;
  buf_init(&b);
  where__json(&b, t, id, id_len, shard, runner);
  call_complete(c, REPLY_OK, b.data, b.len);
  buf_free(&b);
}

/* A question on its way to the owner. The call may end first (deadline,
 * client gone): then `c` is cleared and the owner's answer is dropped. */
typedef struct {
  call_t *c;
} where_t;

static void where__unlink(call_t *c) { ((where_t *)c->holder)->c = NULL; }

static void where__done(void *ud, tp_status_t st, uint8_t kind, const char *body, size_t len) {
  where_t *w = ud;
  call_t *c = w->c;
  free(w);
  if (!c) return;
  c->unlink = NULL;
  c->holder = NULL;
  if (st == TP_REPLY && kind < REPLY__COUNT) call_complete(c, (reply_kind_t)kind, body, len);
  else if (st == TP_REPLY) /* ROUTER_NOT_OWNER: the shard moved while we asked */
    call_fail(c, REPLY_UNAVAILABLE, "the id's shard is moving to another runner; retry");
  else call_fail(c, REPLY_UNAVAILABLE, "could not ask the shard's owner: %.*s", (int)(len > 200 ? 200 : len), body);
}

void where_ask(cluster_t *cl, host_t *h, const char *type, size_t type_len, const char *id, size_t id_len, const char *self,
               uint32_t shards, call_t *c) {
  etype_t *t = host_find_type(h, type, type_len);
  if (!t || t->kind != DEF_ENTITY) {
    call_fail(c, REPLY_NOT_FOUND, "unknown entity type '%.*s'", (int)(type_len > 128 ? 128 : type_len), type);
    return;
  }
  if (id_len == 0 || id_len > ROUTER_MAX_ID) {
    size_t len;
    char *body = reply_error_body(REPLY_SCHEMA, "id",
                                  id_len ? "entity id is longer than 1024 bytes" : "entity id must not be empty", &len);
    call_complete(c, REPLY_SCHEMA, body, len);
    free(body);
    return;
  }
  if (!cluster_on(cl)) {
    where__local(c, t, id, id_len, hash_shard(id, id_len, shards), self);
    return;
  }
  uint32_t shard = cluster_shard_of(cl, id, id_len);
  tp_peer_t *peer = NULL;
  route_t r = cluster_route(cl, shard, &peer);
  if (r == ROUTE_LOCAL || r == ROUTE_HOLD_MINE) {
    where__local(c, t, id, id_len, shard, cluster_self(cl));
    return;
  }
  if (r != ROUTE_REMOTE || !peer) {
    call_fail(c, REPLY_UNAVAILABLE, "shard %u has no owner right now; retry", shard);
    return;
  }
  where_t *w = malloc(sizeof *w);
  if (!w) abort(); /* as buf.c: no path on without heap */
  w->c = c;
  c->holder = w;
  c->unlink = where__unlink;
  frame_request_t req = {
      .flags = ROUTER_F_WHERE,
      .timeout_ms = (uint32_t)(c->timeout_ms > UINT32_MAX ? UINT32_MAX : c->timeout_ms),
      .type = {t->name, (uint32_t)t->name_len},
      .id = {id, (uint32_t)id_len},
  };
  tp_send(peer, &req, where__done, w);
}

void where_inbound(cluster_t *cl, host_t *h, tp_inbound_t *in, const frame_request_t *req) {
  uint32_t shard = cluster_shard_of(cl, req->id.p, req->id.n);
  tp_peer_t *peer = NULL;
  route_t r = req->id.n > 0 && req->id.n <= ROUTER_MAX_ID ? cluster_route(cl, shard, &peer) : ROUTE_HOLD;
  if (r != ROUTE_LOCAL && r != ROUTE_HOLD_MINE) {
    tp_reply(in, ROUTER_NOT_OWNER, "", 0);
    return;
  }
  etype_t *t = host_find_type(h, req->type.p, req->type.n);
  buf_t b;
  buf_init(&b);
  if (!t || t->kind != DEF_ENTITY) { /* loaded on the asker, not (yet) on the owner */
    buf_printf(&b, "unknown entity type '%.*s' on %s, the shard's owner", (int)(req->type.n > 128 ? 128 : req->type.n),
               req->type.p, cluster_self(cl));
    size_t len;
    char *body = reply_error_body(REPLY_NOT_FOUND, NULL, b.data, &len);
    tp_reply(in, REPLY_NOT_FOUND, body, len);
    free(body);
  } else {
    where__json(&b, t, req->id.p, req->id.n, shard, cluster_self(cl));
    tp_reply(in, REPLY_OK, b.data, b.len);
  }
  buf_free(&b);
}
