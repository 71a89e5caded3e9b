/* entity.c - instances and their mailboxes.
 *
 * An instance is created by its first message and activated (its script's
 * activate runs) before that message is handled. It handles up to
 * `concurrency` messages at once, in mailbox order. When it has nothing to
 * do it joins its type's idle list, oldest first; the type's idle timer
 * passivates instances from the head of that list once they have been idle
 * for max_idle, so passivation costs O(1) per instance and no scanning.
 *
 * When a script is reloaded, each instance of its old version is "retiring":
 * its queued messages move, in order, to a successor on the new version, which
 * waits (INST_WAITING) while the old instance finishes its running messages;
 * then the old one's snapshot (if its handlers define one) activates the
 * successor, and messages flow again. New messages go straight to the
 * successor's mailbox, behind the moved ones. */
#include "entity/entity.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loop/log.h"
#include "core/hash.h"
#include "core/prom.h"
#include "entity/durable_state.h"
#include "entity/em_int.h"

/* Where shards run (loop/placement.h), as the host was told by the wiring. */
static const placement_ops_t *em__placement(em_t *em) { return em->host.placement(em->host.ud); }

/* Snapshots handed over by a shard's previous owner, waiting for the first
 * message that activates their instance here. An entry is the only copy of
 * that instance's state, so it never expires: it leaves when its instance
 * activates, when its shard is handed on (em_stash_hand_on), or when its
 * new owner does not take it within the hand-off time (em_stash_drop).
 * Kept in the em_t beside its per-shard counts. */
typedef struct stash_s {
  htab_node_t node;
  struct stash_s *prev, *next; /* oldest first */
  uint32_t shard;
  char *snap;
  size_t snap_len, type_len, id_len, key_len;
  char key[]; /* type NUL id */
} stash_t;

static int em__eq(const htab_node_t *n, const void *key, size_t len) {
  const inst_t *i = (const inst_t *)n;
  return i->h.id_len == len && memcmp(i->id, key, len) == 0;
}

static void em__idle_fire(timer_entry_t *te);

static void em__host_ops_init(em_t *em);

em_t *em_new(sched_t *s, uint32_t shards) {
  em_t *em = calloc(1, sizeof *em);
  if (!em) return NULL;
  em->sched = s;
  em->shards = shards ? shards : 1;
  em->counts = calloc(em->shards + 1, sizeof *em->counts);
  em->stash_counts = calloc(em->shards + 1, sizeof *em->stash_counts);
  if (!em->counts || !em->stash_counts) {
    free(em->counts);
    free(em->stash_counts);
    free(em);
    return NULL;
  }
  htab_init(&em->stash);
  em__host_ops_init(em);
  return em;
}

void em_set_host(em_t *em, const em_host_t *host) { em->host = *host; }

uint32_t em_shard_instances(em_t *em, uint32_t shard) { return shard <= em->shards ? em->counts[shard] : 0; }
uint32_t em_shard_stashed(em_t *em, uint32_t shard) { return shard <= em->shards ? em->stash_counts[shard] : 0; }

static int em__stash_eq(const htab_node_t *n, const void *key, size_t len) {
  const stash_t *st = (const stash_t *)n;
  return st->key_len == len && memcmp(st->key, key, len) == 0;
}

static void em__stash_unlink(em_t *em, stash_t *st) {
  htab_remove(&em->stash, &st->node);
  if (st->prev) st->prev->next = st->next; else em->stash_head = st->next;
  if (st->next) st->next->prev = st->prev; else em->stash_tail = st->prev;
  if (st->shard <= em->shards && em->stash_counts[st->shard]) em->stash_counts[st->shard]--;
}

static void em__stash_free(stash_t *st) {
  free(st->snap);
  free(st);
}

static size_t em__stash_key(char *out, const char *type, size_t tl, const char *id, size_t il) {
  memcpy(out, type, tl);
  out[tl] = '\0';
  memcpy(out + tl + 1, id, il);
  return tl + 1 + il;
}

static inst_t *em__find(etype_t *t, const char *id, size_t len, uint64_t h);

/* An instance of (type, id) that exists here already and has not activated
 * yet takes the snapshot itself; one that has activated keeps its own state
 * (it began without the snapshot, which is stale now). Returns 1 when the
 * snapshot was dealt with. */
static int em__stash_to_instance(em_t *em, const char *type, size_t type_len, const char *id, size_t id_len, char *snap,
                                 size_t len) {
  etype_t *t = em->host.find_type(em->host.ud, type, type_len);
  inst_t *i = t && t->kind == DEF_ENTITY && t->em == em ? em__find(t, id, id_len, hash_bytes(id, id_len)) : NULL;
  if (!i || i->retiring) return 0; /* a retiring one is going: the snapshot may be its own, stashed to go on */
  if (i->state == INST_NEW && !i->retiring && !i->snapshot) {
    i->snapshot = snap;
    i->snapshot_len = len;
    return 1;
  }
  log_warn("a snapshot of %s/%.*s arrived after its instance started here; keeping the running instance's state",
           t->name, (int)(id_len > 64 ? 64 : id_len), id);
  free(snap);
  return 1;
}

void em_stash_snapshot(em_t *em, const char *type, size_t type_len, const char *id, size_t id_len, char *snap,
                       size_t len) {
  if (em__stash_to_instance(em, type, type_len, id, id_len, snap, len)) return;
  stash_t *st = malloc(sizeof *st + type_len + 1 + id_len);
  if (!st) { free(snap); return; }
  st->key_len = em__stash_key(st->key, type, type_len, id, id_len);
  st->type_len = type_len;
  st->id_len = id_len;
  st->shard = hash_shard(id, id_len, em->shards);
  st->node.hash = hash_bytes(st->key, st->key_len);
  stash_t *old = (stash_t *)htab_find(&em->stash, st->node.hash, em__stash_eq, st->key, st->key_len);
  if (old) {
    em__stash_unlink(em, old);
    em__stash_free(old);
  }
  st->snap = snap;
  st->snap_len = len;
  st->next = NULL;
  st->prev = em->stash_tail;
  if (em->stash_tail) em->stash_tail->next = st; else em->stash_head = st;
  em->stash_tail = st;
  if (htab_insert(&em->stash, &st->node) != 0) {
    em__stash_unlink(em, st);
    em__stash_free(st);
    return;
  }
  if (st->shard <= em->shards) em->stash_counts[st->shard]++;
}

/* Takes out every entry of the shards in mask, oldest first, as a list. */
static stash_t *em__stash_take_shards(em_t *em, const uint8_t *mask) {
  stash_t *head = NULL, *tail = NULL;
  for (stash_t *st = em->stash_head, *next; st; st = next) {
    next = st->next;
    if (st->shard > em->shards || !mask[st->shard]) continue;
    em__stash_unlink(em, st);
    st->next = NULL;
    if (tail) tail->next = st; else head = st;
    tail = st;
  }
  return head;
}

void em_stash_hand_on(em_t *em, const uint8_t *mask) {
  if (!em->stash.count) return;
  /* Taken out first: em_handoff may stash a snapshot again (its new owner
   * is not reachable yet), and that must not feed this walk. */
  stash_t *st = em__stash_take_shards(em, mask);
  while (st) {
    stash_t *next = st->next;
    const placement_ops_t *p = em__placement(em);
    if (p && p->handoff)
      p->handoff(p->ctx, st->key, st->type_len, st->key + st->type_len + 1, st->id_len, st->snap, st->snap_len);
    else free(st->snap);
    free(st);
    st = next;
  }
}

uint32_t em_stash_drop(em_t *em, const uint8_t *mask) {
  if (!em->stash.count) return 0;
  uint32_t n = 0;
  stash_t *st = em__stash_take_shards(em, mask);
  while (st) {
    stash_t *next = st->next;
    em__stash_free(st);
    n++;
    st = next;
  }
  return n;
}

/* Gives a new instance the snapshot its previous owner handed over. */
static void em__stash_take(inst_t *i) {
  em_t *em = i->h.type->em;
  if (!em->stash.count || i->h.type->durable) return; /* a durable type's saved row is its state */
  size_t tl = i->h.type->name_len;
  char *key = malloc(tl + 1 + i->h.id_len);
  if (!key) return;
  size_t kl = em__stash_key(key, i->h.type->name, tl, i->id, i->h.id_len);
  stash_t *st = (stash_t *)htab_find(&em->stash, hash_bytes(key, kl), em__stash_eq, key, kl);
  free(key);
  if (!st) return;
  em__stash_unlink(em, st);
  i->snapshot = st->snap;
  i->snapshot_len = st->snap_len;
  free(st);
}

void em_type_init(em_t *em, etype_t *t) {
  t->em = em;
  htab_init(&t->instances);
  timer_entry_init(&t->idle_timer, em->sched, em__idle_fire);
}

uint64_t em_active_total(em_t *em) {
  uint64_t n = 0;
  for (etype_t *t = em->host.types(em->host.ud); t; t = t->next)
    if (t->em == em) n += t->active;
  return n;
}

size_t em_instances(const etype_t *t) { return t->instances.count; }

static void em__idle_remove(inst_t *i) {
  if (!i->idle) return;
  etype_t *t = i->h.type;
  em_t *em = t->em;
  if (i->idle_prev) i->idle_prev->idle_next = i->idle_next; else t->idle_head = i->idle_next;
  if (i->idle_next) i->idle_next->idle_prev = i->idle_prev; else t->idle_tail = i->idle_prev;
  i->idle_prev = i->idle_next = NULL;
  if (i->lru_prev) i->lru_prev->lru_next = i->lru_next; else em->lru_head = i->lru_next;
  if (i->lru_next) i->lru_next->lru_prev = i->lru_prev; else em->lru_tail = i->lru_prev;
  i->lru_prev = i->lru_next = NULL;
  i->idle = 0;
}

static void em__drain_soon(em_t *em);

static void em__idle_arm(etype_t *t) {
  if (!t->idle_head) { timer_cancel(&t->idle_timer); return; }
  uint64_t due = t->idle_head->idle_since + t->max_idle_ms;
  if (!timer_pending(&t->idle_timer) || t->idle_timer.node.due != due) timer_add(&t->idle_timer, due);
}

static void em__idle_add(inst_t *i) {
  etype_t *t = i->h.type;
  if (i->idle || i->keep_alive || i->retiring || i->state != INST_READY) return;
  i->idle = 1;
  i->idle_since = sched_now(t->em->sched);
  i->idle_prev = t->idle_tail;
  i->idle_next = NULL;
  if (t->idle_tail) t->idle_tail->idle_next = i; else t->idle_head = i;
  t->idle_tail = i;
  em_t *em = t->em;
  i->lru_prev = em->lru_tail;
  i->lru_next = NULL;
  if (em->lru_tail) em->lru_tail->lru_next = i; else em->lru_head = i;
  em->lru_tail = i;
  if (!timer_pending(&t->idle_timer)) em__idle_arm(t);
  if (em->wait_head) em__drain_soon(em); /* a slot for a waiting message */
}

struct em_backoff_s {
  timer_entry_t timer;
  inst_t *inst;
};

static void em__backoff_end(inst_t *i) {
  if (!i->backoff) return;
  timer_cancel(&i->backoff->timer);
  free(i->backoff);
  i->backoff = NULL;
}

static void em__destroy(inst_t *i) {
  etype_t *t = i->h.type;
  em_t *em = t->em;
  em__backoff_end(i);
  /* Keep reload hand-over links true whichever side goes first. */
  if (i->predecessor) i->predecessor->successor = NULL;
  if (i->successor) i->successor->predecessor = NULL;
  em__idle_remove(i);
  htab_remove(&t->instances, &i->node);
  if (i->h.handlers_ref != LUA_NOREF || i->h.ctx_ref != LUA_NOREF) em->host.release(em->host.ud, &i->h);
  if (i->state == INST_READY) t->active--;
  uint32_t shard = i->h.shard;
  dstate_inst_free(i);
  free(i->snapshot);
  free(i);
  em->ninst--;
  if (em->wait_head) em__drain_soon(em);
  if (shard <= em->shards && em->counts[shard] && --em->counts[shard] == 0) {
    const placement_ops_t *p = em__placement(em);
    if (p && p->shard_drained) p->shard_drained(p->ctx, shard);
  }
  em->host.type_released(em->host.ud, t);
}

/* Every passivation (idle timeout, the active-instance limit, on request)
 * goes here; why ends the debug line. */
static void em__passivate(inst_t *i, const char *why) {
  etype_t *t = i->h.type;
  t->counters->passivations++;
  log_debug("passivating %s/%.*s: %s", t->name, (int)i->h.id_len, i->id, why);
  em__destroy(i);
}

static void em__idle_fire(timer_entry_t *te) {
  etype_t *t = (etype_t *)((char *)te - offsetof(etype_t, idle_timer));
  uint64_t now = sched_now(t->em->sched);
  while (t->idle_head && t->idle_head->idle_since + t->max_idle_ms <= now) {
    inst_t *i = t->idle_head;
    if (i->ready.queued) em__idle_remove(i); /* its pump will run, and re-add it if still idle */
    else em__passivate(i, "idle past max_idle");
  }
  em__idle_arm(t);
}

static void em__pump(sched_item_t *it);

/* Frees every queued message (their callers get `unavailable`). */
static void em__drop_mailbox(inst_t *i) {
  while (i->mb_head) {
    msg_t *m = i->mb_head;
    i->mb_head = m->next;
    i->h.type->queued--;
    msg_free(m);
  }
  i->mb_tail = NULL;
  i->mb_len = 0;
}

static void em__schedule(inst_t *i) { sched_push(i->h.type->em->sched, &i->ready, em__pump); }

/* A retiring instance with nothing running hands over and goes. */
static void em__retire(inst_t *i) {
  if (i->ready.queued) return; /* its pump retires it */
  inst_t *succ = i->successor;
  em_t *em = i->h.type->em;
  size_t len = 0;
  /* A fenced instance (handoff 2) lost its lease: its state may be stale. */
  /* A durable instance's state is its saved row, which its successor or
   * new owner reads: nothing is handed over. */
  int keep = i->handoff != 2 && !i->h.type->durable;
  char *snap = (i->state == INST_READY && i->h.handlers_ref != LUA_NOREF && keep)
                   ? em->host.snapshot(em->host.ud, &i->h, &len)
                   : NULL;
  if (!snap && i->snapshot && keep) { /* never activated: the snapshot it was given travels on */
    snap = i->snapshot;
    len = i->snapshot_len;
    i->snapshot = NULL;
  }
  i->successor = NULL;
  const placement_ops_t *p = em__placement(em);
  if (i->handoff == 1 && snap && p && p->handoff) {
    p->handoff(p->ctx, i->h.type->name, i->h.type->name_len, i->id, i->h.id_len, snap, len);
    snap = NULL;
  }
  em__destroy(i);
  if (!succ) { free(snap); return; }
  succ->predecessor = NULL;
  succ->snapshot = snap;
  succ->snapshot_len = len;
  succ->state = INST_NEW;
  em__schedule(succ);
}

/* Starts whatever the instance can start now. */
/* Sends the queued messages back to the router, in order. */
static void em__reroute_mailbox(inst_t *i) {
  msg_t *m = i->mb_head;
  i->mb_head = i->mb_tail = NULL;
  i->mb_len = 0;
  while (m) {
    msg_t *next = m->next;
    i->h.type->queued--;
    m->next = NULL;
    const placement_ops_t *p = em__placement(i->h.type->em);
    if (p && p->reroute) p->reroute(p->ctx, m); else msg_free(m);
    m = next;
  }
}

/* Its shard is not served here any more: messages go back to the router and
 * the instance goes once nothing runs in it. */
static void em__evict(inst_t *i) {
  em__reroute_mailbox(i);
  em__idle_remove(i);
  /* An instance still on the ready queue is left for its pump to retire:
   * freeing it here would leave the queue linked through freed memory. */
  if (i->running == 0 && i->state != INST_ACTIVATING && !i->ready.queued) {
    if (i->predecessor || i->successor) { i->retiring = 1; i->handoff = 2; em__retire(i); }
    else em__destroy(i);
  } else {
    i->retiring = 1;
    i->handoff = 2;
  }
}

static void em__pump(sched_item_t *it) {
  inst_t *i = (inst_t *)((char *)it - offsetof(inst_t, ready));
  etype_t *t = i->h.type;
  em_t *em = t->em;
  if (i->retiring) {
    if (i->running == 0 && i->state != INST_ACTIVATING) em__retire(i);
    return;
  }
  if (!placement_may_run(em__placement(em), i->h.shard)) { /* the lease ran out since the message was queued */
    em__evict(i);
    return;
  }
  if (i->state == INST_NEW) {
    if (!i->mb_head && !i->snapshot) { em__destroy(i); return; }
    i->state = INST_ACTIVATING;
    t->counters->activations++;
    char *snap = i->snapshot;
    size_t snap_len = i->snapshot_len;
    i->snapshot = NULL;
    if (t->durable) dstate_activate(i); /* from its saved row, not a handed-over snapshot */
    else em->host.activate(em->host.ud, &i->h, snap, snap_len);
    free(snap);
    return;
  }
  if (i->state != INST_READY || i->backoff) return;
  while (i->running < t->concurrency && i->mb_head && !i->backoff) {
    msg_t *m = i->mb_head;
    i->mb_head = m->next;
    if (!i->mb_head) i->mb_tail = NULL;
    i->mb_len--;
    t->queued--;
    m->next = NULL;
    if (msg_abandoned(m)) { /* its caller timed out or left while it waited */
      msg_free(m);
      continue;
    }
    i->running++;
    t->running++;
    em__idle_remove(i);
    em->host.handle(em->host.ud, &i->h, m); /* may finish at once and call em_handled */
    if (i->retiring || i->state != INST_READY) return; /* a reset instance activates again first */
  }
  if (i->running == 0 && !i->mb_head) em__idle_add(i);
}

static inst_t *em__find(etype_t *t, const char *id, size_t len, uint64_t h) {
  return (inst_t *)htab_find(&t->instances, h, em__eq, id, len);
}

inst_t *em_find(etype_t *t, const char *id, size_t len) { return em__find(t, id, len, hash_bytes(id, len)); }

int em_passivate(etype_t *t, const char *id, size_t len) {
  inst_t *i = em_find(t, id, len);
  if (!i) return 0;
  if (!i->idle || i->ready.queued) return -1;
  em__passivate(i, "asked to");
  em__idle_arm(t);
  return 1;
}

/* A durable instance whose state in memory may differ from its saved row
 * (see durable_state.h) drops it: it activates again before its next
 * message, or goes when it has none. */
static void em__reset(inst_t *i) {
  i->h.reset = 0;
  em__idle_remove(i);
  if (i->state == INST_READY) i->h.type->active--;
  i->state = INST_NEW;
  em_t *em = i->h.type->em;
  if (i->h.handlers_ref != LUA_NOREF || i->h.ctx_ref != LUA_NOREF) em->host.release(em->host.ud, &i->h);
  /* Its pump activates it, or frees it: never freed here, as this may run
   * inside its pump (a handler that finished at once). */
  em__schedule(i);
}

static inst_t *em__create(etype_t *t, const char *id, size_t len, uint64_t h) {
  inst_t *i = calloc(1, sizeof *i + len + 1);
  if (!i) return NULL;
  memcpy(i->id, id, len);
  i->h.id = i->id;
  i->h.id_len = len;
  i->h.type = t;
  i->node.hash = h;
  i->h.handlers_ref = i->h.ctx_ref = LUA_NOREF;
  i->h.shard = hash_shard(id, len, t->em->shards);
  if (htab_insert(&t->instances, &i->node) != 0) { free(i); return NULL; }
  t->em->counts[i->h.shard]++;
  t->em->ninst++;
  em__stash_take(i);
  return i;
}

static void em__enqueue(inst_t *i, msg_t *m) {
  m->next = NULL;
  m->enqueued_at = sched_now(i->h.type->em->sched);
  if (i->mb_tail) i->mb_tail->next = m; else i->mb_head = m;
  i->mb_tail = m;
  i->mb_len++;
  i->h.type->queued++;
}

/* A message addressed to a type that a reload replaced goes to the type of
 * that name now serving, with its RPC looked up again by tag. */
static int em__retarget(msg_t *m) {
  etype_t *old = m->type;
  const rpc_def_t *r = &old->rpcs[m->rpc];
  em_t *em = old->em;
  etype_t *t = em->host.find_type(em->host.ud, old->name, old->name_len);
  int rpc = t && t->kind == DEF_ENTITY && t->em == em ? em->host.find_rpc(em->host.ud, t, r->tag, r->tag_len) : -1;
  if (rpc < 0) return -ENOENT;
  msg_set_type(m, t);
  m->rpc = rpc;
  return 0;
}

static void em__not_found(msg_t *m) {
  etype_t *old = m->type;
  size_t len;
  char text[512];
  snprintf(text, sizeof text, "%s.%s is no longer defined (its script was changed)", old->name,
           old->rpcs[m->rpc].tag);
  char *body = reply_error_body(REPLY_NOT_FOUND, NULL, text, &len);
  msg_finish(m, REPLY_NOT_FOUND, body, len);
  free(body);
}

/* ---------------------------------------------------------------------------
 * The active-entity limit (em_set_max_active)
 *
 * Memory grows with the instances held, not with the traffic: past the
 * limit the least recently used idle instance goes (the same passivation as
 * an idle timeout; a durable one's state is its saved row), and when every
 * instance is busy a message that needs a new one waits, in arrival order,
 * for one to go idle or end. Every later message that needs a new instance
 * queues behind the waiting ones, so two messages for one id keep their
 * order.
 * ------------------------------------------------------------------------- */

/* A waiting caller hears `unavailable` (503, retry) this long before its
 * deadline, rather than a `timeout` (504) that says nothing of the cause. */
#define EM_WAIT_MARGIN_MS 10

typedef struct em_wait_s {
  timer_entry_t timer; /* its end, unless the message is persisted */
  em_t *em;
  msg_t *m;
  struct em_wait_s *prev, *next;
} em_wait_t;

void em_set_max_active(em_t *em, uint64_t max, uint64_t wait_ms) {
  em->max_active = max;
  em->wait_ms = wait_ms;
}
uint64_t em_resident(em_t *em) { return em->ninst; }
uint64_t em_slot_waiting(em_t *em) { return em->nwaiting; }

/* Passivates the least recently used idle instance for a slot. 0 when none
 * is idle. */
static int em__evict_lru(em_t *em) {
  inst_t *i = em->lru_head;
  if (!i) return 0;
  if (i->ready.queued) { /* its pump runs soon: not idle after all */
    em__idle_remove(i);
    return 1;
  }
  em->limit_passivations++;
  em__passivate(i, "least recently used, at the --max-active limit");
  return 1;
}

/* Whether a new instance fits now, passivating idle ones to make room. */
static int em__room(em_t *em) {
  while (em->max_active && em->ninst >= em->max_active)
    if (!em__evict_lru(em)) return 0;
  return 1;
}

static void em__wait_unlink(em_wait_t *w) {
  em_t *em = w->em;
  if (w->prev) w->prev->next = w->next; else em->wait_head = w->next;
  if (w->next) w->next->prev = w->prev; else em->wait_tail = w->prev;
  em->nwaiting--;
  timer_cancel(&w->timer);
}

static void em__fail(msg_t *m, reply_kind_t kind, const char *text) {
  size_t len;
  char *body = reply_error_body(kind, NULL, text, &len);
  msg_finish(m, kind, body, len);
  free(body);
}

static void em__wait_expire(timer_entry_t *te) {
  em_wait_t *w = (em_wait_t *)((char *)te - offsetof(em_wait_t, timer));
  em_t *em = w->em;
  msg_t *m = w->m;
  em__wait_unlink(w);
  free(w);
  em->slot_timeouts++;
  char text[256];
  snprintf(text, sizeof text, "all %llu entity instances this runner may hold (--max-active) are busy; retry later",
           (unsigned long long)em->max_active);
  em__fail(m, REPLY_UNAVAILABLE, text);
}

/* When the wait of m ends: shortly before its caller's deadline; 0 for a
 * persisted message (it waits until it runs) or a call without deadline. */
static uint64_t em__wait_end(em_t *em, msg_t *m) {
  uint64_t now = sched_now(em->sched);
  if (m->flags & MSG_PERSISTED) return 0;
  if (!m->call) return now + em->wait_ms;
  if (!timer_pending(&m->call->deadline)) return 0;
  uint64_t due = m->call->deadline.node.due;
  if (due <= now) return now;
  uint64_t margin = (due - now) / 2 < EM_WAIT_MARGIN_MS ? (due - now) / 2 : EM_WAIT_MARGIN_MS;
  return due - margin;
}

static int em__wait(em_t *em, msg_t *m) {
  em_wait_t *w = malloc(sizeof *w);
  if (!w) return -ENOMEM;
  w->em = em;
  w->m = m;
  w->next = NULL;
  w->prev = em->wait_tail;
  if (em->wait_tail) em->wait_tail->next = w; else em->wait_head = w;
  em->wait_tail = w;
  em->nwaiting++;
  em->slot_waits++;
  m->enqueued_at = sched_now(em->sched);
  timer_entry_init(&w->timer, em->sched, em__wait_expire);
  uint64_t end = em__wait_end(em, m);
  if (end) timer_add(&w->timer, end);
  return 0;
}

static int em__deliver(msg_t *m, int waited);

/* Serves waiting messages, oldest first, while slots free up. */
static void em__drain(sched_item_t *it) {
  em_t *em = (em_t *)((char *)it - offsetof(em_t, drain));
  while (em->wait_head) {
    em_wait_t *w = em->wait_head;
    msg_t *m = w->m;
    if (!msg_abandoned(m) && !(m->type->retired && em__retarget(m) != 0) &&
        !em__find(m->type, m->id, m->id_len, hash_bytes(m->id, m->id_len)) && !em__room(em))
      return; /* still full: the next idle or ended instance calls again */
    em__wait_unlink(w);
    free(w);
    if (msg_abandoned(m)) { msg_free(m); continue; }
    if (m->type->retired) { em__not_found(m); continue; }
    int rc = em__deliver(m, 1);
    const placement_ops_t *p = em__placement(em);
    if (rc == -EAGAIN && p && p->reroute) p->reroute(p->ctx, m);
    else if (rc == -EBUSY) em__fail(m, REPLY_MAILBOX_FULL, "the mailbox is full; retry later");
    else if (rc != 0) em__fail(m, REPLY_UNAVAILABLE, "cannot deliver: out of memory");
  }
}

static void em__drain_soon(em_t *em) {
  if (!em->drain.queued) sched_push(em->sched, &em->drain, em__drain);
}

/* Hands the waiting messages of the shards in mask (NULL: all) to fn. */
static void em__waiters_each(em_t *em, const uint8_t *mask, void (*fn)(em_t *em, msg_t *m)) {
  for (em_wait_t *w = em->wait_head, *next; w; w = next) {
    next = w->next;
    msg_t *m = w->m;
    uint32_t shard = hash_shard(m->id, m->id_len, em->shards);
    if (mask && (shard > em->shards || !mask[shard])) continue;
    em__wait_unlink(w);
    free(w);
    fn(em, m);
  }
}

static void em__waiter_reroute(em_t *em, msg_t *m) {
  const placement_ops_t *p = em__placement(em);
  if (p && p->reroute) p->reroute(p->ctx, m); else msg_free(m);
}
static void em__waiter_free(em_t *em, msg_t *m) { msg_free(m); }

/* waited: m comes from the waiting list, whose turn it is. */
static int em__deliver(msg_t *m, int waited) {
  etype_t *t = m->type;
  uint64_t h = hash_bytes(m->id, m->id_len);
  inst_t *i = em__find(t, m->id, m->id_len, h);
  if (!i) {
    if ((t->em->wait_head && !waited) || !em__room(t->em)) return em__wait(t->em, m);
    i = em__create(t, m->id, m->id_len, h);
    if (!i) return -ENOMEM;
  } else if (i->handoff) {
    return -EAGAIN; /* on its way to another runner: the router re-routes */
  } else if (i->mb_len >= t->mailbox && !(m->flags & MSG_PERSISTED)) {
    return -EBUSY;
  }
  em__enqueue(i, m);
  em__idle_remove(i);
  em__schedule(i);
  return 0;
}

int em_deliver(msg_t *m) {
  if (m->type->retired && em__retarget(m) != 0) {
    em__not_found(m);
    return 0;
  }
  return em__deliver(m, 0);
}

void em_activated(inst_t *i, const char *error) {
  etype_t *t = i->h.type;
  if (error) {
    /* Every waiting message learns why; the next message tries again. */
    char msg[1536];
    snprintf(msg, sizeof msg, "activating %s/%.*s failed: %s", t->name, (int)(i->h.id_len > 64 ? 64 : i->h.id_len),
             i->id, error);
    size_t len;
    char *body = reply_error_body(REPLY_DEFECT, NULL, msg, &len);
    while (i->mb_head) {
      msg_t *m = i->mb_head;
      i->mb_head = m->next;
      t->queued--;
      t->counters->outcomes[REPLY_DEFECT]++;
      msg_finish(m, REPLY_DEFECT, body, len);
    }
    free(body);
    i->mb_tail = NULL;
    i->mb_len = 0;
    i->state = INST_NEW;
    if (i->retiring) em__retire(i);
    else if (i->ready.queued) return; /* messages came while activate waited: the pump retries */
    else em__destroy(i);
    return;
  }
  i->state = INST_READY;
  t->active++;
  if (t->durable) dstate_activated(i);
  em__schedule(i);
}

void em_handled(inst_t *i) {
  i->running--;
  i->h.type->running--;
  if (i->retiring) {
    if (i->running == 0) em__retire(i);
    return;
  }
  if (i->h.reset && i->running == 0) em__reset(i);
  else if (i->mb_head) em__schedule(i);
  else if (i->running == 0) em__idle_add(i);
}

static void em__backoff_fire(timer_entry_t *te) {
  struct em_backoff_s *b = (struct em_backoff_s *)((char *)te - offsetof(struct em_backoff_s, timer));
  inst_t *i = b->inst;
  i->backoff = NULL;
  free(b);
  em__schedule(i);
}

void em_retry(inst_t *i, msg_t *m, uint64_t delay_ms) {
  if (i->h.type->durable) i->h.reset = 1; /* the run that raised may have changed its state: start from the saved one */
  m->next = i->mb_head;
  i->mb_head = m;
  if (!i->mb_tail) i->mb_tail = m;
  i->mb_len++;
  i->h.type->queued++;
  sched_t *s = i->h.type->em->sched;
  m->enqueued_at = sched_now(s);
  if (!i->backoff) {
    i->backoff = malloc(sizeof *i->backoff);
    if (!i->backoff) return; /* runs again at once */
    i->backoff->inst = i;
    timer_entry_init(&i->backoff->timer, s, em__backoff_fire);
  }
  timer_cancel(&i->backoff->timer);
  timer_add(&i->backoff->timer, sched_now(s) + delay_ms);
}

void em_keep_alive(etype_t *t, const char *id, size_t len, int on) {
  inst_t *i = em__find(t, id, len, hash_bytes(id, len));
  if (!i) return;
  i->keep_alive = on ? 1 : 0;
  if (on) em__idle_remove(i);
  else if (i->running == 0 && !i->mb_head) em__idle_add(i);
}

void em_migrate(etype_t *old, etype_t *repl) {
  timer_cancel(&old->idle_timer);
  size_t it;
  htab_node_t *n = htab_first(&old->instances, &it);
  while (n) {
    inst_t *i = (inst_t *)n;
    n = htab_next(&old->instances, n, &it);
    if (i->retiring) continue;
    em__idle_remove(i);
    i->retiring = 1;
    inst_t *succ = NULL;
    if (repl) {
      succ = em__create(repl, i->id, i->h.id_len, i->node.hash);
      if (succ) {
        succ->state = INST_WAITING;
        succ->keep_alive = i->keep_alive;
      }
    }
    i->successor = succ;
    if (i->state == INST_WAITING && i->predecessor) {
      /* Reloaded again before the old instance finished: the oldest one
       * (still running) hands over straight to the newest. */
      inst_t *pred = i->predecessor;
      pred->successor = succ;
      if (succ) succ->predecessor = pred;
      i->predecessor = NULL;
      i->successor = NULL;
    } else if (succ) {
      succ->predecessor = i;
    }
    /* The queue moves in order; messages for RPCs the new version dropped
     * are answered not_found. */
    msg_t *m = i->mb_head;
    i->mb_head = i->mb_tail = NULL;
    i->mb_len = 0;
    while (m) {
      msg_t *next = m->next;
      old->queued--;
      if (succ && em__retarget(m) == 0 && m->type == repl) em__enqueue(succ, m);
      else em__not_found(m);
      m = next;
    }
    if (i->running == 0 && i->state != INST_ACTIVATING) em__retire(i);
  }
}

static void em__each_in(em_t *em, const uint8_t *mask, void (*fn)(inst_t *i)) {
  for (etype_t *t = em->host.types(em->host.ud); t; t = t->next) {
    if (t->em != em) continue;
    size_t it;
    htab_node_t *n = htab_first(&t->instances, &it);
    while (n) {
      inst_t *i = (inst_t *)n;
      n = htab_next(&t->instances, n, &it);
      if (i->h.shard <= em->shards && mask[i->h.shard] && !(i->retiring && !i->handoff)) fn(i);
    }
  }
}

static void em__release_one(inst_t *i) {
  if (i->retiring) return;
  em__idle_remove(i);
  i->retiring = 1;
  i->handoff = 1;
  em__reroute_mailbox(i);
  if (i->running == 0 && i->state != INST_ACTIVATING && i->state != INST_WAITING) em__retire(i);
}

void em_release_shards(em_t *em, const uint8_t *mask) {
  em__waiters_each(em, mask, em__waiter_reroute);
  em__each_in(em, mask, em__release_one);
  em_stash_hand_on(em, mask);
}

static void em__fence_one(inst_t *i) {
  i->handoff = 2;
  em__evict(i);
}

void em_fence_shards(em_t *em, const uint8_t *mask) {
  em->host.cancel_shard_tasks(em->host.ud, mask);
  em__waiters_each(em, mask, em__waiter_reroute);
  em__each_in(em, mask, em__fence_one);
}

void em_stop_all(em_t *em) {
  em__waiters_each(em, NULL, em__waiter_free);
  for (etype_t *t = em->host.types(em->host.ud); t; t = t->next) {
    if (t->em != em) continue;
    timer_cancel(&t->idle_timer);
    size_t it;
    htab_node_t *n = htab_first(&t->instances, &it);
    while (n) {
      inst_t *i = (inst_t *)n;
      n = htab_next(&t->instances, n, &it);
      em__drop_mailbox(i);
      if (i->running == 0 && i->state != INST_ACTIVATING && !i->ready.queued) em__destroy(i);
    }
  }
}

void em_free(em_t *em) {
  if (!em) return;
  while (em->stash_head) {
    stash_t *st = em->stash_head;
    em__stash_unlink(em, st);
    em__stash_free(st);
  }
  htab_free(&em->stash);
  free(em->counts);
  free(em->stash_counts);
  free(em);
}

void em_type_free(etype_t *t) {
  timer_cancel(&t->idle_timer);
  size_t it;
  htab_node_t *n = htab_first(&t->instances, &it);
  while (n) {
    inst_t *i = (inst_t *)n;
    n = htab_next(&t->instances, n, &it);
    em__drop_mailbox(i);
    em__backoff_end(i);
    em__idle_remove(i);
    em_t *em = t->em;
    if (i->h.shard <= em->shards && em->counts[i->h.shard]) em->counts[i->h.shard]--;
    em->ninst--;
    dstate_inst_free(i);
    free(i->snapshot);
    free(i);
  }
  htab_free(&t->instances);
}

/* The host reports outcomes with the host_inst_t it was given, a member of
 * its inst_t. */
static inst_t *em__of(host_inst_t *h) { return (inst_t *)(void *)((char *)h - offsetof(inst_t, h)); }
static void em__host_activated(host_inst_t *h, const char *error) { em_activated(em__of(h), error); }
static void em__host_handled(host_inst_t *h) { em_handled(em__of(h)); }
static void em__host_retry(host_inst_t *h, msg_t *m, uint64_t delay_ms) { em_retry(em__of(h), m, delay_ms); }
static int em__host_durable_reply(host_inst_t *h, msg_t *m, reply_kind_t kind, const char *body, size_t len) {
  return dstate_handled(em__of(h), m, kind, body, len);
}

static void em__host_type_init(void *ud, etype_t *t) { em_type_init(ud, t); }

static void em__host_ops_init(em_t *em) {
  em->host_ops = (host_em_t){
      .ud = em,
      .type_init = em__host_type_init,
      .type_free = em_type_free,
      .instances = em_instances,
      .migrate = em_migrate,
      .activated = em__host_activated,
      .handled = em__host_handled,
      .retry = em__host_retry,
      .durable_reply = em__host_durable_reply,
      .keep_alive = em_keep_alive,
      .forget = dstate_forget,
  };
}

const host_em_t *em_host_ops(em_t *em) { return &em->host_ops; }

/* The active-entity limit's part of /metrics. */
static void em__limit_metrics(em_t *em, buf_t *b) {
  static const struct {
    const char *name, *type, *help;
    size_t off;
  } lines[] = {
      {"luster_max_active", "gauge", "The most entity instances this runner holds at once (--max-active).",
       offsetof(em_t, max_active)},
      {"luster_resident_instances", "gauge", "Entity instances held on this runner now, of every type and state.",
       offsetof(em_t, ninst)},
      {"luster_slot_waiting_messages", "gauge", "Messages waiting for an instance slot now (every instance busy).",
       offsetof(em_t, nwaiting)},
      {"luster_limit_passivations_total", "counter",
       "Idle instances passivated to stay within --max-active (least recently used first).",
       offsetof(em_t, limit_passivations)},
      {"luster_slot_waits_total", "counter", "Messages that waited for an instance slot because every instance was busy.",
       offsetof(em_t, slot_waits)},
      {"luster_slot_wait_timeouts_total", "counter",
       "Messages that found no free instance slot before their deadline (answered unavailable).",
       offsetof(em_t, slot_timeouts)},
  };
  for (size_t m = 0; m < sizeof lines / sizeof lines[0]; m++) {
    prom_head(b, lines[m].name, lines[m].type, lines[m].help);
    buf_printf(b, "%s %llu\n", lines[m].name,
               (unsigned long long)*(const uint64_t *)((const char *)em + lines[m].off));
  }
}
static void em__limit_metrics(em_t *em, buf_t *b);
/* GET /metrics: the manager's gauges per entity type served now. */
void em_metrics(em_t *em, buf_t *b) {
  static const struct {
    const char *name, *help;
    size_t off;
  } gauges[] = {
      {"luster_active_instances", "Active entity instances on this runner, per type.", offsetof(etype_t, active)},
      {"luster_running_messages", "Messages being handled now, per type.", offsetof(etype_t, running)},
      {"luster_queued_messages", "Messages waiting in mailboxes, per type.", offsetof(etype_t, queued)},
  };
  for (size_t m = 0; m < sizeof gauges / sizeof gauges[0]; m++) {
    prom_head(b, gauges[m].name, "gauge", gauges[m].help);
    for (etype_t *t = em->host.types(em->host.ud); t; t = t->next)
      if (t->kind == DEF_ENTITY && t->em == em)
        buf_printf(b, "%s{type=\"%s\"} %llu\n", gauges[m].name, t->name,
                   (unsigned long long)*(const uint64_t *)((const char *)t + gauges[m].off));
  }
  em__limit_metrics(em, b);
}
