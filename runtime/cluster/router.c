/* router.c - resolving and delivering messages.
 *
 * A message for a shard this runner serves is delivered here (persisted ones
 * stored first). In a cluster, a message for another runner's shard is
 * forwarded over the transport; one whose owner is not known or not
 * reachable yet, or whose shard is being handed over, waits in a per-shard
 * queue (in arrival order) until the assignment or the locks change, at
 * most until its caller's deadline. A "not owner" answer from a runner with
 * a different view puts the message back in that queue and asks for the
 * membership again. */
#include "cluster/router.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "loop/log.h"
#include "cluster/cluster.h"
#include "cluster/durable.h"
#include "cluster/where.h"
#include "core/buf.h"
#include "entity/entity.h"
#include "host/host.h"
#include "storage/storage.h"

typedef struct persist_job_s {
  sched_item_t item;
  router_t *rt;
  timer_entry_t due;
  msg_t *msg;
  call_t *call;
  struct persist_job_s *dprev, *dnext; /* while waiting for deliver_at */
} persist_job_t;

struct router_s {
  sched_t *sched;       /* the owner's */
  mem_store_t *mem;     /* the embedded store, when no durable store is configured */
  persist_job_t *delayed; /* persisted jobs waiting for their deliver_at */
  durable_t *du;        /* set by durable_new */
  cluster_t *cl;        /* set by cluster_new */
  em_t *em;             /* takes handed-over snapshots */
  host_t *host;         /* the types routed to */
  uint32_t n;
  size_t max_frame;
  msg_t **head, **tail; /* held messages per shard, [1..n] */
  uint32_t *handoffs;   /* hand-off frames sent and not yet answered, per shard */
  uint64_t held;
  timer_entry_t retry;
  sched_item_t wake;
  int flushing;
  router_stats_t st;
};

static void router__undelay(router_t *rt, persist_job_t *j) {
  if (j->dprev) j->dprev->dnext = j->dnext; else rt->delayed = j->dnext;
  if (j->dnext) j->dnext->dprev = j->dprev;
}

static void router__hold(router_t *rt, uint32_t shard, msg_t *m);
static void router__route(router_t *rt, msg_t *m);
static void router__local_call(router_t *rt, msg_t *m, call_t *call);

static void router__deliver(router_t *rt, msg_t *m, call_t *call) {
  int rc = em_deliver(m);
  if (rc == 0) {
    if (call) call_complete(call, REPLY_ACCEPTED, "", 0);
    return;
  }
  if (rc == -EAGAIN) { /* its instance is being handed to another runner */
    if (call) msg_attach_call(m, call);
    router__hold(rt, cluster_shard_of(rt->cl, m->id, m->id_len), m);
    return;
  }
  call_t *c = m->call ? msg_detach_call(m) : call;
  if (rc == -EBUSY)
    call_fail(c, REPLY_MAILBOX_FULL, "the mailbox of %s/%.*s is full (%u messages waiting); retry later",
              m->type->name, (int)(m->id_len > 64 ? 64 : m->id_len), m->id, m->type->mailbox);
  else
    call_fail(c, REPLY_UNAVAILABLE, "cannot deliver to %s: out of memory", m->type->name);
  msg_free(m);
}

/* Completes c with an error of this kind whose message is text (of any
 * length, unlike call_fail's formatted one), and frees text. */
static void router__fail_text(call_t *c, reply_kind_t kind, buf_t *text) {
  buf_addc(text, '\0');
  size_t len;
  char *body = reply_error_body(kind, NULL, text->data, &len);
  call_complete(c, kind, body, len);
  free(body);
  buf_free(text);
}

#define ROUTER_KEY_SHOWN 200 /* bytes of a primary key quoted in a conflict */

void router_conflict(call_t *c, const msg_t *m, const char *pk) {
  size_t n = strlen(pk);
  int cut = n > ROUTER_KEY_SHOWN;
  if (cut) { /* cut before a UTF-8 sequence, never inside one */
    n = ROUTER_KEY_SHOWN;
    while (n > 0 && ((unsigned char)pk[n] & 0xc0) == 0x80) n--;
  }
  buf_t text;
  buf_init(&text);
  buf_printf(&text, "primary key '%.*s%s' of %s.%s was sent before with a different payload; a retry must send the "
             "same payload, another message needs another key", (int)n, pk, cut ? "..." : "", m->type->name,
             m->type->rpcs[m->rpc].tag);
  router__fail_text(c, REPLY_CONFLICT, &text);
}

static void router__due(timer_entry_t *t) {
  persist_job_t *j = (persist_job_t *)((char *)t - offsetof(persist_job_t, due));
  router_t *rt = j->rt;
  msg_t *m = j->msg;
  router__undelay(rt, j);
  free(j);
  router__deliver(rt, m, NULL);
}

static void router__persist(sched_item_t *it) {
  persist_job_t *j = (persist_job_t *)it;
  router_t *rt = j->rt;
  msg_t *m = j->msg;
  call_t *call = j->call;
  char *pk = NULL, *err = NULL;
  size_t err_len = 0;
  uint64_t at = 0;
  reply_kind_t k = host_persist_info(m->type, m->rpc, m->payload, m->payload_len, &pk, &at, &err, &err_len);
  if (k != REPLY_OK) {
    call_complete(call, k, err, err_len);
    free(err);
    msg_free(m);
    free(j);
    return;
  }
  if (durable_on(rt->du)) {
    free(j);
    durable_send(rt->du, m, call, pk, at);
    free(pk);
    return;
  }
  store_status_t st;
  const rpc_def_t *rd = &m->type->rpcs[m->rpc];
  storage_names_t names = {m->type->name, rd->tag, m->type->name_len, rd->tag_len};
  pmsg_t *rec = storage_put(rt->mem, m, &names, pk, &st);
  if (!rec || st == STORE_CONFLICT) {
    if (rec) router_conflict(call, m, pk);
    else call_fail(call, REPLY_UNAVAILABLE, "storage is out of memory");
    free(pk);
    msg_free(m);
    free(j);
    return;
  }
  free(pk);
  int discard = (m->flags & MSG_DISCARD) != 0;
  if (discard) {
    call->request_id = rec->rid;
    call_complete(call, REPLY_ACCEPTED, "", 0);
  }
  else storage_wait(rec, call);
  if (st != STORE_NEW) { /* a duplicate: the first message runs, once */
    msg_free(m);
    free(j);
    return;
  }
  m->flags |= MSG_PERSISTED;
  m->stored = &rec->base;
  uint64_t wall = sched_wall_ms(rt->sched);
  if (at > wall) {
    j->msg = m;
    timer_entry_init(&j->due, rt->sched, router__due);
    timer_add(&j->due, sched_now(rt->sched) + (at - wall));
    j->dprev = NULL;
    j->dnext = rt->delayed;
    if (rt->delayed) rt->delayed->dprev = j;
    rt->delayed = j;
    return;
  }
  free(j);
  router__deliver(rt, m, NULL);
}

/* Answers a call for an RPC the type does not have, naming the ones it has
 * (in declaration order) so a typo is fixed without reading the script. The
 * same text reaches HTTP callers (404) and entities (not_found), on the
 * runner that checks it: the sender's, or the owner's for a forwarded one. */
static void router__unknown_rpc(const etype_t *t, const char *tag, size_t tag_len, call_t *call) {
  buf_t text;
  buf_init(&text);
  buf_printf(&text, "unknown rpc '%.*s' on %s; ", (int)(tag_len > 128 ? 128 : tag_len), tag, t->name);
  if (t->nrpcs == 0) buf_adds(&text, "it has no rpcs");
  else buf_adds(&text, "its rpcs are: ");
  for (int i = 0; i < t->nrpcs; i++) {
    if (i) buf_adds(&text, ", ");
    buf_add(&text, t->rpcs[i].tag, t->rpcs[i].tag_len);
  }
  router__fail_text(call, REPLY_NOT_FOUND, &text);
}

/* Checks type, RPC and id and makes the message, or completes `call` with
 * the reason and returns NULL. The call is not attached to the message. */
static msg_t *router__new_msg(router_t *rt, const char *type, size_t type_len, const char *id, size_t id_len, const char *tag,
                              size_t tag_len, const char *payload, size_t payload_len, const char *headers,
                              size_t headers_len, unsigned flags, call_t *call) {
  etype_t *t = host_find_type(rt->host, type, type_len);
  if (!t || t->kind != DEF_ENTITY) {
    call_fail(call, REPLY_NOT_FOUND, "unknown entity type '%.*s'", (int)(type_len > 128 ? 128 : type_len), type);
    return NULL;
  }
  int rpc = etype_find_rpc(t, tag, tag_len);
  if (rpc < 0) {
    router__unknown_rpc(t, tag, tag_len, call);
    return NULL;
  }
  if (id_len == 0 || id_len > ROUTER_MAX_ID) {
    size_t len;
    char *body = reply_error_body(REPLY_SCHEMA, "id",
                                  id_len ? "entity id is longer than 1024 bytes" : "entity id must not be empty",
                                  &len);
    call_complete(call, REPLY_SCHEMA, body, len);
    free(body);
    return NULL;
  }
  msg_t *m = msg_new(t, rpc, id, id_len, payload, payload_len, headers, headers_len);
  m->flags = flags;
  m->trace = call->trace; /* the sender's context travels with the message */
  return m;
}

void router_send(router_t *rt, const char *type, size_t type_len, const char *id, size_t id_len, const char *tag,
                 size_t tag_len, const char *payload, size_t payload_len, const char *headers, size_t headers_len,
                 unsigned flags, call_t *call) {
  msg_t *m = router__new_msg(rt, type, type_len, id, id_len, tag, tag_len, payload, payload_len, headers, headers_len,
                             flags, call);
  if (!m) return;
  if (!cluster_on(rt->cl) || m->type->rpcs[m->rpc].persisted) {
    /* One runner: straight to the entity manager. Persisted: stored here
     * first, wherever its owner is. */
    router__local_call(rt, m, call);
    return;
  }
  msg_attach_call(m, call);
  router__route(rt, m);
}

void router_lookup(router_t *rt, uint64_t request_id, call_t *c) {
  if (durable_on(rt->du)) durable_lookup(rt->du, request_id, c);
  else storage_get(rt->mem, request_id, c);
}

/* ---------------------------------------------------------------------------
 * Cluster routing
 * ------------------------------------------------------------------------- */


const router_stats_t *router_stats(router_t *rt) {
  rt->st.held = rt->held;
  return &rt->st;
}

/* Delivers on this runner: persisted messages are stored first (unless they
 * were stored before they came back from a mailbox). `call` is the caller,
 * not attached to m. */
static void router__local_call(router_t *rt, msg_t *m, call_t *call) {
  if (m->flags & MSG_PERSISTED) { /* stored already */
    if (call) msg_attach_call(m, call);
    if (durable_on(rt->du)) durable_deliver(rt->du, m);
    else router__deliver(rt, m, NULL);
    return;
  }
  if (m->type->rpcs[m->rpc].persisted) {
    persist_job_t *j = calloc(1, sizeof *j);
    j->rt = rt;
    j->msg = m;
    j->call = call;
    sched_push(rt->sched, &j->item, router__persist);
    return;
  }
  if (m->flags & MSG_DISCARD) {
    router__deliver(rt, m, call);
  } else {
    if (call) msg_attach_call(m, call);
    router__deliver(rt, m, NULL);
  }
}

static void router__local(router_t *rt, msg_t *m) { router__local_call(rt, m, msg_detach_call(m)); }

static void router__arm_retry(router_t *rt) {
  if (!timer_pending(&rt->retry)) timer_add(&rt->retry, sched_now(rt->sched) + 100);
}

/* A stored message that leaves this runner's hands (held, forwarded) stops
 * being one this runner delivers. */
static void router__unstore(msg_t *m) {
  m->flags &= ~(unsigned)MSG_FRESH;
  if (m->stored) {
    stored_t *s = m->stored;
    m->stored = NULL;
    s->drop(s);
  }
}

void router_deliver_stored(router_t *rt, msg_t *m) { router__deliver(rt, m, NULL); }
void router_route_stored(router_t *rt, msg_t *m) { router__route(rt, m); }

static void router__hold(router_t *rt, uint32_t shard, msg_t *m) {
  router__unstore(m);
  m->next = NULL;
  m->enqueued_at = sched_now(rt->sched);
  if (rt->tail[shard]) rt->tail[shard]->next = m; else rt->head[shard] = m;
  rt->tail[shard] = m;
  rt->held++;
  router__arm_retry(rt);
}

typedef struct {
  router_t *rt;
  msg_t *m;
  uint32_t shard;
} fwd_t;

static void router__forward_done(void *ud, tp_status_t st, uint8_t kind, const char *body, size_t len) {
  fwd_t *f = ud;
  router_t *rt = f->rt;
  msg_t *m = f->m;
  uint32_t shard = f->shard;
  free(f);
  int retry_stored = (m->flags & MSG_PERSISTED) &&
                     (st == TP_LOST || (st == TP_REPLY && (kind == REPLY_UNAVAILABLE || kind == REPLY_TIMEOUT)));
  if (st == TP_REPLY && kind != ROUTER_NOT_OWNER && kind < REPLY__COUNT && !retry_stored) {
    msg_finish(m, (reply_kind_t)kind, body, len);
    return;
  }
  if (st == TP_REPLY && kind != ROUTER_NOT_OWNER && !retry_stored) { /* too large to carry back, or unknown */
    char text[512];
    snprintf(text, sizeof text, "the reply from the runner serving this entity could not be carried back: %.*s",
             (int)(len > 300 ? 300 : len), body);
    size_t blen;
    char *b = reply_error_body(REPLY_DEFECT, NULL, text, &blen);
    msg_finish(m, REPLY_DEFECT, b, blen);
    free(b);
    return;
  }
  if (st == TP_LOST && !retry_stored) {
    static const char lost[] = "{\"kind\":\"unavailable\",\"message\":\"the runner serving this entity stopped "
                               "answering while it handled the message; it may or may not have run\"}";
    msg_finish(m, REPLY_UNAVAILABLE, lost, sizeof lost - 1);
    return;
  }
  /* Not sent, or the peer's view differs: wait for a fresher assignment. */
  rt->st.reroutes++;
  cluster_suspect(rt->cl);
  if (msg_abandoned(m)) {
    msg_free(m);
    return;
  }
  router__hold(rt, shard, m);
}

static void router__forward(router_t *rt, msg_t *m, uint32_t shard, tp_peer_t *peer) {
  const rpc_def_t *r = &m->type->rpcs[m->rpc];
  uint64_t timeout = host_config(rt->host)->call_timeout_ms;
  if (m->call && timer_pending(&m->call->deadline)) {
    uint64_t due = m->call->deadline.node.due, now = sched_now(rt->sched);
    timeout = due > now ? due - now : 1;
  }
  router__unstore(m);
  frame_request_t req = {
      .flags = m->flags & MSG_DISCARD,
      .timeout_ms = (uint32_t)(timeout > UINT32_MAX ? UINT32_MAX : timeout),
      .stored = (m->flags & MSG_PERSISTED) ? m->request_id : 0,
      .deliver_at = m->deliver_at,
      .type = {m->type->name, (uint32_t)m->type->name_len},
      .id = {m->id, (uint32_t)m->id_len},
      .tag = {r->tag, (uint32_t)r->tag_len},
      .payload = {m->payload, (uint32_t)m->payload_len},
      .headers = {m->headers, (uint32_t)m->headers_len},
      .trace = m->trace,
  };
  if (m->call && m->call->span) { /* the caller's call span names the runner it went to */
    const char *addr = tp_peer_addr(peer);
    snprintf(m->call->span->peer, sizeof m->call->span->peer, "%s", addr ? addr : "");
  }
  if (rt->max_frame && frame_request_size(&req) - 4 > rt->max_frame) { /* would never fit: say so now */
    char text[256];
    snprintf(text, sizeof text, "the message (%zu bytes of payload) is larger than runners carry between them "
             "(%zu bytes per frame)", m->payload_len, rt->max_frame);
    size_t blen;
    char *b = reply_error_body(REPLY_DEFECT, NULL, text, &blen);
    msg_finish(m, REPLY_DEFECT, b, blen);
    free(b);
    return;
  }
  fwd_t *f = malloc(sizeof *f);
  if (!f) abort();
  f->rt = rt;
  f->m = m;
  f->shard = shard;
  rt->st.forwarded++;
  tp_send(peer, &req, router__forward_done, f);
}

/* Sends m the way `r` (cluster_route's answer for its shard) says. */
static void router__dispatch(router_t *rt, msg_t *m, uint32_t shard, route_t r, tp_peer_t *peer) {
  if (rt->head[shard] && !rt->flushing) { /* keep arrival order behind held ones */
    router__hold(rt, shard, m);
    return;
  }
  switch (r) {
  case ROUTE_LOCAL: router__local(rt, m); break;
  case ROUTE_REMOTE: router__forward(rt, m, shard, peer); break;
  default: router__hold(rt, shard, m); break;
  }
}

/* Where a message goes now. */
static void router__route(router_t *rt, msg_t *m) {
  if (!cluster_on(rt->cl)) {
    router__local(rt, m);
    return;
  }
  uint32_t shard = cluster_shard_of(rt->cl, m->id, m->id_len);
  tp_peer_t *peer = NULL;
  route_t r = cluster_route(rt->cl, shard, &peer);
  router__dispatch(rt, m, shard, r, peer);
}

void router_reroute(router_t *rt, msg_t *m) {
  if (msg_abandoned(m)) {
    msg_free(m);
    return;
  }
  router__route(rt, m);
}

/* Re-routes every held message, oldest first per shard; drops those whose
 * caller left, and fails those held past the call timeout with nobody
 * waiting on a deadline of their own. */
static void router__flush_held(router_t *rt) {
  if (!cluster_on(rt->cl) || !rt->held) return;
  uint64_t now = sched_now(rt->sched), limit = host_config(rt->host)->call_timeout_ms;
  for (uint32_t s = 1; s <= rt->n; s++) {
    msg_t *m = rt->head[s];
    if (!m) continue;
    tp_peer_t *peer = NULL;
    route_t r = cluster_route(rt->cl, s, &peer);
    rt->head[s] = rt->tail[s] = NULL;
    rt->flushing = 1;
    while (m) {
      msg_t *next = m->next;
      m->next = NULL;
      rt->held--;
      if (msg_abandoned(m)) {
        msg_free(m);
      } else if ((r == ROUTE_HOLD || r == ROUTE_HOLD_MINE) && now - m->enqueued_at > limit && !m->call) {
        rt->st.expired++;
        log_warn("dropping a message for %s/%.*s: no runner took shard %u within %llu ms", m->type->name,
                 (int)(m->id_len > 64 ? 64 : m->id_len), m->id, s, (unsigned long long)limit);
        msg_free(m);
      } else if (r == ROUTE_HOLD || r == ROUTE_HOLD_MINE) {
        uint64_t since = m->enqueued_at;
        router__hold(rt, s, m);
        m->enqueued_at = since;
      } else if (r == ROUTE_LOCAL) {
        router__local(rt, m);
      } else {
        router__forward(rt, m, s, peer);
      }
      m = next;
    }
    rt->flushing = 0;
  }
}

static void router__flush(sched_item_t *it) {
  router__flush_held((router_t *)((char *)it - offsetof(router_t, wake)));
}

static void router__retry_fire(timer_entry_t *t) {
  router_t *rt = (router_t *)((char *)t - offsetof(router_t, retry));
  if (rt->held) {
    router__flush_held(rt);
    if (rt->held) router__arm_retry(rt);
  }
}

void router_wake(router_t *rt) {
  if (rt->held) sched_push(rt->sched, &rt->wake, router__flush);
}

router_t *router_new(sched_t *s, mem_store_t *mem, em_t *em, host_t *h) {
  router_t *rt = calloc(1, sizeof *rt);
  if (!rt) abort();
  rt->sched = s;
  rt->mem = mem;
  rt->em = em;
  rt->host = h;
  return rt;
}

void router_free(router_t *rt) {
  if (!rt) return;
  router_shutdown(rt);
  free(rt);
}

void router__set_durable(router_t *rt, durable_t *du) { rt->du = du; }
void router__set_cluster(router_t *rt, cluster_t *cl) { rt->cl = cl; }

size_t router_stored_count(router_t *rt) { return storage_count(rt->mem); }

void router_init(router_t *rt, uint32_t shards, size_t max_frame) {
  rt->n = shards;
  rt->max_frame = max_frame;
  rt->head = calloc(shards + 1, sizeof *rt->head);
  rt->tail = calloc(shards + 1, sizeof *rt->tail);
  rt->handoffs = calloc(shards + 1, sizeof *rt->handoffs);
  timer_entry_init(&rt->retry, rt->sched, router__retry_fire);
}

/* Graceful hand-off: the instance's snapshot goes to the shard's new owner,
 * ahead of the messages that follow it there. Until the new owner confirms
 * it, the shard stays locked here (router_handoffs_pending), so the new
 * owner cannot start the instance without it. A snapshot that could not be
 * delivered (no reachable owner, "not owner", connection lost) goes back to
 * the stash, and the shard's release hands it on again. */
typedef struct {
  router_t *rt;
  uint32_t shard;
  size_t type_len, id_len, len;
  char *snap;
  char names[]; /* type, then id */
} handoff_t;

uint32_t router_handoffs_pending(router_t *rt, uint32_t shard) {
  return rt->handoffs && shard <= rt->n ? rt->handoffs[shard] : 0;
}

void router_handoffs_forget(router_t *rt, const uint8_t *mask) {
  for (uint32_t s = 1; rt->handoffs && s <= rt->n; s++)
    if (mask[s]) rt->handoffs[s] = 0;
}

static void router__handoff_done(void *ud, tp_status_t st, uint8_t kind, const char *body, size_t len) {
  (void)body;
  (void)len;
  handoff_t *h = ud;
  router_t *rt = h->rt;
  if (rt->handoffs && rt->handoffs[h->shard]) rt->handoffs[h->shard]--;
  if (st == TP_REPLY && kind == REPLY_ACCEPTED) {
    free(h->snap);
    if (cluster_on(rt->cl)) cluster_shard_drained(rt->cl, h->shard);
  } else if (cluster_on(rt->cl)) {
    /* Stashed again; the release's next tick (100 ms) sends it again, after
     * the membership read this asks for. */
    rt->st.handoffs_lost++;
    cluster_suspect(rt->cl);
    em_stash_snapshot(rt->em, h->names, h->type_len, h->names + h->type_len, h->id_len, h->snap, h->len);
  } else {
    free(h->snap);
  }
  free(h);
}

void router_handoff(router_t *rt, const char *type, size_t type_len, const char *id, size_t id_len, char *snap,
                            size_t len) {
  uint32_t shard = cluster_shard_of(rt->cl, id, id_len);
  tp_peer_t *peer = NULL;
  handoff_t *h = NULL;
  route_t r = cluster_route(rt->cl, shard, &peer);
  if (r != ROUTE_REMOTE && !cluster_has_owner(rt->cl, shard)) { /* no runner left to take it */
    rt->st.handoffs_lost++;
    free(snap);
    return;
  }
  if (r != ROUTE_REMOTE || !(h = malloc(sizeof *h + type_len + id_len))) {
    em_stash_snapshot(rt->em, type, type_len, id, id_len, snap, len); /* the release tries again */
    return;
  }
  h->rt = rt;
  h->shard = shard;
  h->type_len = type_len;
  h->id_len = id_len;
  h->len = len;
  h->snap = snap;
  memcpy(h->names, type, type_len);
  memcpy(h->names + type_len, id, id_len);
  frame_request_t req = {
      .flags = ROUTER_F_HANDOFF,
      .timeout_ms = 10000,
      .type = {type, (uint32_t)type_len},
      .id = {id, (uint32_t)id_len},
      .payload = {snap, (uint32_t)len},
  };
  rt->st.handoffs++;
  rt->handoffs[shard]++;
  tp_send(peer, &req, router__handoff_done, h);
}

static void router__inbound_done(call_t *c, reply_kind_t kind, const char *body, size_t len) {
  tp_reply((tp_inbound_t *)c->ud, (uint8_t)kind, body, len);
}

void router_inbound(router_t *rt, tp_inbound_t *in, const frame_request_t *req) {
  if (req->flags & ROUTER_F_WHERE) {
    where_inbound(rt->cl, rt->host, in, req);
    return;
  }
  if (req->flags & ROUTER_F_HANDOFF) {
    /* Only the shard's owner keeps it: elsewhere it would wait for an
     * instance that never starts here. The sender tries again. */
    uint32_t hs = cluster_shard_of(rt->cl, req->id.p, req->id.n);
    tp_peer_t *hp = NULL;
    route_t hr = req->id.n > 0 ? cluster_route(rt->cl, hs, &hp) : ROUTE_HOLD;
    if (hr != ROUTE_LOCAL && hr != ROUTE_HOLD_MINE) {
      rt->st.not_owner++;
      tp_reply(in, ROUTER_NOT_OWNER, "", 0);
      return;
    }
    char *snap = malloc(req->payload.n + 1);
    if (snap) {
      memcpy(snap, req->payload.p, req->payload.n);
      em_stash_snapshot(rt->em, req->type.p, req->type.n, req->id.p, req->id.n, snap, req->payload.n);
    }
    tp_reply(in, REPLY_ACCEPTED, "", 0);
    return;
  }
  rt->st.inbound++;
  /* Served here, or about to be: otherwise the sender's view is stale. */
  int good_id = req->id.n > 0 && req->id.n <= ROUTER_MAX_ID; /* a bad one is refused below */
  uint32_t shard = cluster_shard_of(rt->cl, req->id.p, req->id.n);
  tp_peer_t *peer = NULL;
  route_t r = good_id ? cluster_route(rt->cl, shard, &peer) : ROUTE_LOCAL;
  if (r != ROUTE_LOCAL && r != ROUTE_HOLD_MINE) {
    rt->st.not_owner++;
    tp_reply(in, ROUTER_NOT_OWNER, "", 0);
    return;
  }
  call_t *c = call_new(rt->sched, router__inbound_done, in,
                       req->timeout_ms ? req->timeout_ms : host_config(rt->host)->call_timeout_ms);
  tp_inbound_set_ud(in, c);
  c->trace = req->trace;
  msg_t *m = router__new_msg(rt, req->type.p, req->type.n, req->id.p, req->id.n, req->tag.p, req->tag.n, req->payload.p,
                             req->payload.n, req->headers.n ? req->headers.p : NULL, req->headers.n,
                             req->flags & MSG_DISCARD, c);
  if (!m) return;
  if (req->stored) {
    m->flags |= MSG_PERSISTED;
    m->request_id = req->stored;
    m->deliver_at = req->deliver_at;
  }
  msg_attach_call(m, c);
  router__dispatch(rt, m, shard, r, peer);
}

void router_inbound_abandoned(router_t *rt, tp_inbound_t *in) {
  call_t *c = tp_inbound_ud(in);
  if (c) call_cancel(c);
}

void router_shutdown(router_t *rt) {
  while (rt->delayed) {
    persist_job_t *j = rt->delayed;
    router__undelay(rt, j);
    timer_cancel(&j->due);
    msg_free(j->msg);
    free(j);
  }
  if (rt->head) {
    for (uint32_t s = 1; s <= rt->n; s++) {
      msg_t *m = rt->head[s];
      while (m) {
        msg_t *next = m->next;
        msg_free(m);
        m = next;
      }
    }
    timer_cancel(&rt->retry);
    free(rt->head);
    free(rt->tail);
    free(rt->handoffs);
    rt->head = rt->tail = NULL;
    rt->handoffs = NULL;
    rt->held = 0;
  }
}
