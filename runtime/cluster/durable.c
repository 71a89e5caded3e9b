/* durable.c - persisted messages on durable storage (a cluster's
 * PostgreSQL, or one runner's SQLite file): storing before the
 * acknowledgement, delivery by the shard's owner, replies stored before they
 * are seen, redelivery, delayed delivery, retention (see durable.h). */
#include "cluster/durable.h"

#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loop/log.h"
#include "cluster/cluster.h"
#include "cluster/router.h"
#include "core/hash.h"
#include "core/htab.h"
#include "core/prom.h"
#include "entity/entity.h"
#include "host/host.h"
#include "storage/msgstore.h"
#include "storage/storage.h"

#define DUR_SCAN_PAGE 512
#define DUR_SCAN_EVERY_MS 5000  /* the safety net: forwards that were lost */
#define DUR_POLL_MS 100         /* callers waiting for a reply another runner stores */
#define DUR_PRUNE_EVERY_MS 5000
#define DUR_PRUNE_BATCH 1000
/* A backlog (a takeover, a restart with many pending messages) is read a
 * page at a time; while this many messages already wait for an instance
 * slot (the runner holds --max-active instances, all busy), the next page
 * waits, re-checked this often: the backlog wakes instances no faster than
 * they free, and its messages wait in storage, not in memory. */
#define DUR_SCAN_BACKLOG DUR_SCAN_PAGE
#define DUR_SCAN_PAUSE_MS 20

/* A message this runner delivers now (owner side), from the moment it is
 * checked until its reply is stored or it leaves. Its callers wait here. */
typedef struct known_s {
  stored_t base;
  durable_t *du;
  htab_node_t node;
  uint64_t seq;
  msg_t *checking; /* a forwarded message while its state is read */
  call_t *waiters;
  reply_kind_t kind;
  char *body;
  size_t len;
  estate_done_cb done; /* a durable entity's: after the reply and its state commit */
  void *done_ud;
} known_t;

/* Callers waiting for the reply of a message delivered elsewhere (sender
 * side: a duplicate key, or a deliver_at in the future). */
typedef struct wait_s {
  durable_t *du;
  htab_node_t node;
  uint64_t seq, due;
  call_t *calls;
  int polling;
} wait_t;

/* A caller waiting while something is stored or read. */
typedef struct {
  durable_t *du;
  call_t *call;
  msg_t *m;
  uint64_t deliver_at;
  char *pk; /* a store's primary key, named if it conflicts */
  int op;
} ticket_t;

struct durable_s {
  int on;
  uint32_t n;
  uint64_t retention_ms;
  htab_t known, waits;
  timer_entry_t scan_timer, due_timer, poll_timer, prune_timer;
  timer_entry_t page_timer; /* a scan paused for the instance limit (DUR_SCAN_BACKLOG) */
  uint64_t page_after;      /* ... goes on after this seq */
  uint64_t scan_pauses;     /* times a scan waited so (metrics) */
  sched_item_t scan_item;
  int scanning, rescan;
  uint64_t due_at; /* wall ms the due timer is set for, 0 = none */
  uint64_t scan_from; /* wall ms the current scan delivers up to */
  uint32_t *held;  /* du__held's answer: the shards served here now */
  /* Taking shards over bumps acq_gen; a scan that started at generation g
   * and ended settles g. Until the newest generation is settled, messages
   * arriving for delivery wait in `parked`: the takeover scan must deliver
   * the shards' older pending messages first, or a fresh one would overtake
   * them in their entity's mailbox. */
  uint64_t acq_gen, scan_gen, settled_gen;
  msg_t **parked;
  size_t nparked, cap_parked;
  const ms_ops_t *ops; /* the backend: PostgreSQL or SQLite */
  durable_stats_t st;
  sched_t *sched; /* the owner's, from durable_new */
  router_t *rt;   /* the owner's, from durable_new */
  em_t *em;       /* the owner's entity manager (its slot waiters), from durable_new */
  cluster_t *cl;  /* set by cluster_new (off until it starts) */
  host_t *host;   /* the types stored messages go to, from durable_new */
};

const durable_stats_t *durable_stats(durable_t *du) {
  du->st.running = du->known.count;
  return &du->st;
}

int durable_up(durable_t *du) { return du && du->on && du->ops->up(du->ops->ctx); }
int durable_on(durable_t *du) { return du && du->on; }
int durable_busy(durable_t *du) { return du && du->on ? du->ops->busy(du->ops->ctx) : 0; }
const ms_stats_t *durable_store_stats(durable_t *du) {
  static const ms_stats_t none;
  return du && du->on ? du->ops->stats(du->ops->ctx) : &none;
}

static int du__seq_eq(const htab_node_t *n, const void *key, size_t len) {
  (void)len;
  const uint64_t *seq = key;
  return ((const known_t *)((const char *)n - offsetof(known_t, node)))->seq == *seq;
}

static int du__wait_eq(const htab_node_t *n, const void *key, size_t len) {
  (void)len;
  const uint64_t *seq = key;
  return ((const wait_t *)((const char *)n - offsetof(wait_t, node)))->seq == *seq;
}

static uint64_t du__hash(uint64_t seq) { return hash_bytes(&seq, sizeof seq); }

/* ---------------------------------------------------------------------------
 * Lists of waiting calls
 * ------------------------------------------------------------------------- */

static void du__list_complete(call_t **head, uint64_t seq, reply_kind_t kind, const char *body, size_t len) {
  while (*head) {
    call_t *c = *head;
    c->request_id = seq;
    call_complete(c, kind, body, len); /* unlinks it */
  }
}

static void du__list_fail(call_t **head, const char *why) {
  while (*head) call_fail(*head, REPLY_UNAVAILABLE, "%s", why);
}

static void du__ticket_unlink(call_t *c) {
  ticket_t *t = c->holder;
  t->call = NULL;
}

static ticket_t *du__ticket(durable_t *du, call_t *c) {
  ticket_t *t = calloc(1, sizeof *t);
  t->du = du;
  if (c && !c->done) {
    t->call = c;
    c->holder = t;
    c->unlink = du__ticket_unlink;
  }
  return t;
}

static call_t *du__ticket_take(ticket_t *t) {
  call_t *c = t->call;
  if (c) {
    c->unlink = NULL;
    c->holder = NULL;
  }
  return c;
}

/* ---------------------------------------------------------------------------
 * Owner: messages delivered here
 * ------------------------------------------------------------------------- */

static known_t *du__known(durable_t *du, uint64_t seq) {
  htab_node_t *n = htab_find(&du->known, du__hash(seq), du__seq_eq, &seq, sizeof seq);
  return n ? (known_t *)((char *)n - offsetof(known_t, node)) : NULL;
}

static void du__known_free(known_t *k) {
  durable_t *du = k->du;
  htab_remove(&du->known, &k->node);
  free(k->body);
  free(k);
}

static void du__committed(void *ud, int ok, const char *err) {
  known_t *k = ud;
  durable_t *du = k->du;
  if (k->done) {
    estate_done_cb done = k->done;
    k->done = NULL;
    done(k->done_ud, ok, err);
  }
  if (ok) {
    du__list_complete(&k->waiters, k->seq, k->kind, k->body, k->len);
  } else {
    char why[512];
    snprintf(why, sizeof why, "the reply could not be stored (%s); the message will run again", err ? err : "?");
    du__list_fail(&k->waiters, why);
  }
  if (du->on) du__known_free(k);
}

static void du__store_reply(known_t *k, reply_kind_t kind, const char *body, size_t len, const estate_write_t *w) {
  durable_t *du = k->du;
  k->kind = kind;
  k->body = malloc(len + 1);
  memcpy(k->body, body, len);
  k->body[len] = '\0';
  k->len = len;
  du->ops->reply(du->ops->ctx, k->seq, (int)kind, body, len, w, du__committed, k);
}

static void du__reply(stored_t *s, reply_kind_t kind, const char *body, size_t len, call_t *caller,
                      const estate_write_t *w, estate_done_cb done, void *ud) {
  known_t *k = (known_t *)s;
  call_list_add(&k->waiters, caller);
  k->done = done;
  k->done_ud = ud;
  du__store_reply(k, kind, body, len, w);
}

static void du__drop(stored_t *s) {
  known_t *k = (known_t *)s;
  du__list_fail(&k->waiters, "the message moved to another runner before it ran; it stays stored and runs there");
  du__known_free(k);
}

static known_t *du__known_new(durable_t *du, uint64_t seq) {
  known_t *k = calloc(1, sizeof *k);
  k->du = du;
  k->base.reply = du__reply;
  k->base.drop = du__drop;
  k->seq = seq;
  k->node.hash = du__hash(seq);
  htab_insert(&du->known, &k->node);
  return k;
}

/* Hands m to its instance, as the message k stands for. */
static void du__start(known_t *k, msg_t *m) {
  durable_t *du = k->du;
  m->stored = &k->base;
  if (m->call && (m->flags & MSG_DISCARD)) { /* a forward that waits for nothing more */
    call_t *c = msg_detach_call(m);
    c->request_id = k->seq;
    call_complete(c, REPLY_ACCEPTED, "", 0);
  }
  du->st.delivered++;
  router_deliver_stored(du->rt, m);
}

static void du__arm_due(durable_t *du, uint64_t at) {
  if (!at || (du->due_at && du->due_at <= at && timer_pending(&du->due_timer))) return;
  uint64_t wall = sched_wall_ms(du->sched);
  du->due_at = at;
  timer_cancel(&du->due_timer);
  timer_add(&du->due_timer, sched_now(du->sched) + (at > wall ? at - wall : 0));
}

static void du__checked(void *ud, int ok, uint64_t seq, int found, int done, int kind, const char *reply, size_t len,
                        const char *err) {
  known_t *k = ud;
  durable_t *du = k->du;
  msg_t *m = k->checking;
  k->checking = NULL;
  if (!du->on || !ok || !found || done) {
    if (m) {
      call_list_add(&k->waiters, msg_detach_call(m));
      msg_free(m);
    }
    if (!du->on) {
      du__list_fail(&k->waiters, "the runner is shutting down");
    } else if (!ok) {
      char why[512];
      snprintf(why, sizeof why, "could not read the stored message: %s", err ? err : "?");
      du__list_fail(&k->waiters, why);
    } else if (!found) {
      while (k->waiters) {
        k->waiters->request_id = seq;
        call_fail(k->waiters, REPLY_NOT_FOUND, "message %" PRIu64 " is no longer stored (pruned after its retention)",
                  seq);
      }
    } else {
      du->st.duplicates_skipped++;
      du__list_complete(&k->waiters, seq, (reply_kind_t)kind, reply, len);
    }
    if (du->on) du__known_free(k);
    return;
  }
  du__start(k, m);
}

static void du__park(durable_t *du, msg_t *m) {
  if (du->nparked == du->cap_parked) {
    size_t cap = du->cap_parked ? 2 * du->cap_parked : 64;
    msg_t **p = realloc(du->parked, cap * sizeof *p);
    if (!p) {
      call_fail(msg_detach_call(m), REPLY_UNAVAILABLE, "out of memory while shards are taken over");
      msg_free(m);
      return;
    }
    du->parked = p;
    du->cap_parked = cap;
  }
  du->parked[du->nparked++] = m;
}

/* After the takeover scan delivered the older messages: the parked ones go
 * on, in the order they arrived. */
static void du__release_parked(durable_t *du) {
  msg_t **p = du->parked;
  size_t n = du->nparked;
  du->parked = NULL;
  du->nparked = du->cap_parked = 0;
  for (size_t i = 0; i < n; i++) durable_deliver(du, p[i]);
  free(p);
}

void durable_deliver(durable_t *du, msg_t *m) {
  if (m->stored) { /* delivered here already and back from a mailbox: the same run goes on */
    router_deliver_stored(du->rt, m);
    return;
  }
  uint64_t seq = m->request_id;
  if (m->deliver_at > sched_wall_ms(du->sched)) { /* not due yet: the owner's timer brings it */
    du__arm_due(du, m->deliver_at);
    if (m->call) {
      m->call->request_id = seq;
      call_complete(m->call, REPLY_ACCEPTED, "", 0);
    }
    msg_free(m);
    return;
  }
  known_t *k = du__known(du, seq);
  if (k) { /* delivered here already: wait for that run's reply */
    if (m->call) {
      call_t *c = msg_detach_call(m);
      if (m->flags & MSG_DISCARD) {
        c->request_id = seq;
        call_complete(c, REPLY_ACCEPTED, "", 0);
      } else {
        call_list_add(&k->waiters, c);
      }
    }
    du->st.duplicates_skipped++;
    msg_free(m);
    return;
  }
  if (du->settled_gen != du->acq_gen) {
    du__park(du, m);
    return;
  }
  k = du__known_new(du, seq);
  if (m->flags & MSG_FRESH) { /* stored by this runner a moment ago: nobody else can have run it */
    m->flags &= ~(unsigned)MSG_FRESH;
    du__start(k, m);
    return;
  }
  k->checking = m;
  du->st.forwarded_checks++;
  du->ops->state(du->ops->ctx, seq, du__checked, k);
}

/* ---------------------------------------------------------------------------
 * Owner: scans of pending messages
 * ------------------------------------------------------------------------- */

/* Fills du->held with the shards served here now; returns how many. */
static int du__held(durable_t *du) {
  int n = 0;
  for (uint32_t s = 1; s <= du->n; s++)
    if (cluster_serving(du->cl, s)) du->held[n++] = s;
  return n;
}

static void du__scan_page(durable_t *du, uint64_t after);

static void du__next_due(void *ud, int ok, uint64_t due) {
  durable_t *du = ud;
  if (!du->on || !ok) return;
  if (due) du__arm_due(du, due);
}

static void du__scan_end(durable_t *du) {
  du->scanning = 0;
  if (du->scan_gen == du->acq_gen && du->settled_gen != du->acq_gen) {
    du->settled_gen = du->acq_gen;
    du__release_parked(du);
  }
  int n = du__held(du);
  du->due_at = 0;
  timer_cancel(&du->due_timer);
  /* From the scan's own instant, not now: a message that fell due while the
   * scan ran was not in it, and must arm the timer (at once) all the same. */
  if (n) du->ops->next_due(du->ops->ctx, du->held, n, du->scan_from, du__next_due, du);
  if (du->rescan) {
    du->rescan = 0;
    du->scanning = 1;
    du__scan_page(du, 0);
  }
}

static void du__deliver_row(durable_t *du, const ms_row_t *w) {
  if (du__known(du, w->seq) || !cluster_serving(du->cl, w->shard)) return;
  known_t *k = du__known_new(du, w->seq);
  etype_t *t = host_find_type(du->host, w->type, w->type_len);
  int rpc = t && t->kind == DEF_ENTITY ? etype_find_rpc(t, w->rpc, w->rpc_len) : -1;
  if (rpc < 0) { /* its type or RPC went away with a script change: retrying cannot help */
    char text[512];
    snprintf(text, sizeof text, "the stored message's %s %.*s%s%.*s no longer exists", t ? "RPC" : "entity type",
             (int)(w->type_len > 100 ? 100 : w->type_len), w->type, t ? "." : "",
             t ? (int)(w->rpc_len > 100 ? 100 : w->rpc_len) : 0, w->rpc);
    size_t len;
    char *body = reply_error_body(REPLY_DEFECT, NULL, text, &len);
    du__store_reply(k, REPLY_DEFECT, body, len, NULL);
    free(body);
    return;
  }
  msg_t *m = msg_new(t, rpc, w->id, w->id_len, w->payload, w->payload_len, w->headers, w->headers_len);
  if (w->trace[0]) trace_parse(w->trace, strlen(w->trace), &m->trace); /* the redelivery continues its trace */
  m->flags = MSG_PERSISTED | MSG_DISCARD;
  m->request_id = w->seq;
  du__start(k, m);
}

/* The entity manager's messages waiting for an instance slot. */
static uint64_t du__slot_waiting(durable_t *du) { return em_slot_waiting(du->em); }

/* The next page of a scan, once the instances have caught up. */
static void du__scan_next(durable_t *du, uint64_t after) {
  if (du__slot_waiting(du) >= DUR_SCAN_BACKLOG) {
    du->page_after = after;
    du->scan_pauses++;
    timer_add(&du->page_timer, sched_now(du->sched) + DUR_SCAN_PAUSE_MS);
    return;
  }
  du__scan_page(du, after);
}

static void du__page_fire(timer_entry_t *t) {
  durable_t *du = (durable_t *)((char *)t - offsetof(durable_t, page_timer));
  if (du->on) du__scan_next(du, du->page_after);
}

static void du__scanned(void *ud, int ok, const ms_row_t *rows, int nrows) {
  durable_t *du = ud;
  if (!du->on) return;
  if (!ok) {
    du->scanning = 0;
    return; /* the next periodic scan tries again */
  }
  for (int i = 0; i < nrows; i++) du__deliver_row(du, &rows[i]);
  if (nrows == DUR_SCAN_PAGE) du__scan_next(du, rows[nrows - 1].seq);
  else du__scan_end(du);
}

static void du__scan_page(durable_t *du, uint64_t after) {
  if (after == 0) du->scan_gen = du->acq_gen;
  int n = du__held(du);
  if (n == 0) {
    du__scan_end(du);
    return;
  }
  du->st.scans++;
  if (after == 0) du->scan_from = sched_wall_ms(du->sched);
  du->ops->scan(du->ops->ctx, du->held, n, du->scan_from, after, DUR_SCAN_PAGE, du__scanned, du);
}

static void du__scan(durable_t *du) {
  if (!du->on) return;
  if (du->scanning) {
    du->rescan = 1;
    return;
  }
  du->scanning = 1;
  du__scan_page(du, 0);
}

static void du__scan_item(sched_item_t *it) {
  durable_t *du = (durable_t *)((char *)it - offsetof(durable_t, scan_item));
  du__scan(du);
}

void durable_acquired(durable_t *du) {
  if (!du->on) return;
  du->acq_gen++;
  if (!du->scan_item.queued) sched_push(du->sched, &du->scan_item, du__scan_item);
}

static void du__scan_fire(timer_entry_t *t) {
  durable_t *du = (durable_t *)((char *)t - offsetof(durable_t, scan_timer));
  du__scan(du);
  timer_add(t, sched_now(du->sched) + DUR_SCAN_EVERY_MS);
}

static void du__due_fire(timer_entry_t *t) {
  durable_t *du = (durable_t *)((char *)t - offsetof(durable_t, due_timer));
  du->due_at = 0;
  du__scan(du);
}

static void du__pruned(void *ud, int ok, uint64_t deleted) {
  durable_t *du = ud;
  if (!du->on) return;
  timer_add(&du->prune_timer, sched_now(du->sched) + (ok && deleted == DUR_PRUNE_BATCH ? 20 : DUR_PRUNE_EVERY_MS));
}

static void du__prune_fire(timer_entry_t *t) {
  durable_t *du = (durable_t *)((char *)t - offsetof(durable_t, prune_timer));
  int n = du__held(du);
  uint64_t wall = sched_wall_ms(du->sched);
  if (n && wall > du->retention_ms)
    du->ops->prune(du->ops->ctx, du->held, n, wall - du->retention_ms, DUR_PRUNE_BATCH, du__pruned, du);
  else timer_add(t, sched_now(du->sched) + DUR_PRUNE_EVERY_MS);
}

/* ---------------------------------------------------------------------------
 * Sender
 * ------------------------------------------------------------------------- */

static wait_t *du__wait_find(durable_t *du, uint64_t seq) {
  htab_node_t *n = htab_find(&du->waits, du__hash(seq), du__wait_eq, &seq, sizeof seq);
  return n ? (wait_t *)((char *)n - offsetof(wait_t, node)) : NULL;
}

static void du__wait_free(wait_t *w) {
  durable_t *du = w->du;
  htab_remove(&du->waits, &w->node);
  free(w);
}

/* c waits for message seq's reply, read from storage every DUR_POLL_MS from
 * `due` (wall ms) on. */
static void du__wait(durable_t *du, uint64_t seq, uint64_t due, call_t *c) {
  wait_t *w = du__wait_find(du, seq);
  if (!w) {
    w = calloc(1, sizeof *w);
    w->du = du;
    w->seq = seq;
    w->node.hash = du__hash(seq);
    htab_insert(&du->waits, &w->node);
  }
  if (due > w->due) w->due = due;
  c->request_id = seq;
  call_list_add(&w->calls, c);
  if (!timer_pending(&du->poll_timer)) timer_add(&du->poll_timer, sched_now(du->sched) + DUR_POLL_MS);
}

static void du__polled(void *ud, int ok, uint64_t seq, int found, int done, int kind, const char *reply, size_t len,
                       const char *err) {
  wait_t *w = ud;
  durable_t *du = w->du;
  w->polling = 0;
  if (!du->on) return;
  if (ok && found && done) du__list_complete(&w->calls, seq, (reply_kind_t)kind, reply, len);
  else if (ok && !found)
    while (w->calls) call_fail(w->calls, REPLY_NOT_FOUND, "message %" PRIu64 " is no longer stored", seq);
  if (!w->calls) du__wait_free(w);
}

static void du__poll_fire(timer_entry_t *t) {
  durable_t *du = (durable_t *)((char *)t - offsetof(durable_t, poll_timer));
  uint64_t wall = sched_wall_ms(du->sched);
  size_t i;
  htab_node_t *n = htab_first(&du->waits, &i);
  while (n) {
    htab_node_t *next = htab_next(&du->waits, n, &i);
    wait_t *w = (wait_t *)((char *)n - offsetof(wait_t, node));
    if (!w->calls && !w->polling) {
      du__wait_free(w);
    } else if (!w->polling && w->due <= wall) {
      w->polling = 1;
      du->st.retries_polled++;
      du->ops->state(du->ops->ctx, w->seq, du__polled, w);
    }
    n = next;
  }
  if (du->waits.count) timer_add(t, sched_now(du->sched) + DUR_POLL_MS);
}

static void du__stored(void *ud, ms_put_status_t st, uint64_t seq, int kind, const char *reply, size_t len,
                       const char *err) {
  ticket_t *t = ud;
  durable_t *du = t->du;
  msg_t *m = t->m;
  call_t *c = du__ticket_take(t);
  uint64_t at = t->deliver_at;
  char *pk = t->pk;
  free(t);
  int discard = (m->flags & MSG_DISCARD) != 0;
  if (st == MS_CONFLICT) { /* answered without the stored message's id: it is another caller's */
    router_conflict(c, m, pk);
    free(pk);
    msg_free(m);
    return;
  }
  free(pk);
  if (c) c->request_id = seq;
  switch (st) {
  case MS_FAILED:
    call_fail(c, REPLY_UNAVAILABLE, "the persisted message was not stored: %s", err ? err : "?");
    msg_free(m);
    return;
  case MS_CONFLICT: return; /* answered above */
  case MS_DONE: /* a duplicate of a message that has its reply */
    if (discard) call_complete(c, REPLY_ACCEPTED, "", 0);
    else call_complete(c, (reply_kind_t)kind, reply, len);
    msg_free(m);
    return;
  case MS_PENDING: /* a duplicate of a message not done yet: wait for the first's reply */
    if (discard) call_complete(c, REPLY_ACCEPTED, "", 0);
    else if (c) du__wait(du, seq, 0, c);
    msg_free(m);
    return;
  case MS_STORED: break;
  }
  m->request_id = seq;
  m->deliver_at = at;
  m->flags |= MSG_PERSISTED;
  if (discard) {
    call_complete(c, REPLY_ACCEPTED, "", 0);
    c = NULL;
  }
  if (at > sched_wall_ms(du->sched)) {
    /* The owner learns when it is due; the caller reads the reply then. */
    if (c) du__wait(du, seq, at, c);
    c = NULL;
    m->flags |= MSG_DISCARD;
  }
  if (c) msg_attach_call(m, c);
  uint32_t shard = hash_shard(m->id, m->id_len, du->n);
  tp_peer_t *peer = NULL;
  if (cluster_route(du->cl, shard, &peer) == ROUTE_LOCAL && cluster_serving(du->cl, shard)) m->flags |= MSG_FRESH;
  router_route_stored(du->rt, m);
}

/* Checks that a string can be stored as text (UTF-8, no NUL), as PostgreSQL
 * requires; SQLite takes the same strings, so both backends agree. */
static int du__utf8(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s, *e = p + n;
  while (p < e) {
    unsigned c = *p;
    if (c == 0) return 0;
    if (c < 0x80) { p++; continue; }
    int k = (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : -1;
    if (k < 0 || c == 0xc0 || c == 0xc1 || c > 0xf4 || e - p <= k) return 0;
    unsigned v = c & (0x3f >> k);
    for (int j = 1; j <= k; j++) {
      if ((p[j] & 0xc0) != 0x80) return 0;
      v = (v << 6) | (p[j] & 0x3f);
    }
    if ((k == 1 && v < 0x80) || (k == 2 && (v < 0x800 || (v >= 0xd800 && v <= 0xdfff))) ||
        (k == 3 && (v < 0x10000 || v > 0x10ffff)))
      return 0;
    p += k + 1;
  }
  return 1;
}

/* The dedupe key: hex SHA-256 of type, id, RPC and primary key (NUL
 * separated), so keys of any length fit one index entry. */
static void du__dedupe(const msg_t *m, const char *pk, char out[MS_DEDUPE_LEN + 1]) {
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  unsigned char md[32];
  unsigned int mdlen = 0;
  const etype_t *t = m->type;
  EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
  EVP_DigestUpdate(ctx, t->name, t->name_len + 1);
  EVP_DigestUpdate(ctx, m->id, m->id_len);
  EVP_DigestUpdate(ctx, "", 1);
  EVP_DigestUpdate(ctx, t->rpcs[m->rpc].tag, t->rpcs[m->rpc].tag_len + 1);
  EVP_DigestUpdate(ctx, pk, strlen(pk));
  EVP_DigestFinal_ex(ctx, md, &mdlen);
  EVP_MD_CTX_free(ctx);
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < 32; i++) {
    out[2 * i] = hex[md[i] >> 4];
    out[2 * i + 1] = hex[md[i] & 15];
  }
  out[MS_DEDUPE_LEN] = '\0';
}

void durable_send(durable_t *du, msg_t *m, call_t *call, const char *pk, uint64_t deliver_at) {
  const char *bad = !du__utf8(m->id, m->id_len)            ? "id"
                    : !du__utf8(m->payload, m->payload_len) ? "payload"
                    : m->headers && !du__utf8(m->headers, m->headers_len) ? "headers"
                                                                          : NULL;
  if (bad) {
    size_t len;
    char *body = reply_error_body(REPLY_SCHEMA, bad, "a persisted message is stored as text: it must be valid UTF-8 "
                                                     "without NUL bytes", &len);
    call_complete(call, REPLY_SCHEMA, body, len);
    free(body);
    msg_free(m);
    return;
  }
  if (!durable_up(du)) {
    call_fail(call, REPLY_UNAVAILABLE, "storage (%s) is unavailable: the persisted message was not stored; retry later",
              du->ops->name);
    msg_free(m);
    return;
  }
  char key[MS_DEDUPE_LEN + 1];
  if (pk) du__dedupe(m, pk, key);
  const rpc_def_t *r = &m->type->rpcs[m->rpc];
  ms_msg_t pm = {
      .shard = hash_shard(m->id, m->id_len, du->n),
      .type = m->type->name,
      .type_len = m->type->name_len,
      .id = m->id,
      .id_len = m->id_len,
      .rpc = r->tag,
      .rpc_len = r->tag_len,
      .payload = m->payload,
      .payload_len = m->payload_len,
      .headers = m->headers,
      .headers_len = m->headers_len,
      .dedupe = pk ? key : NULL,
      .deliver_at = deliver_at,
  };
  if (!trace_id_zero(m->trace.trace_id, TRACE_ID_LEN)) trace_format(&m->trace, pm.trace);
  ticket_t *t = du__ticket(du, call);
  t->m = m;
  t->deliver_at = deliver_at;
  t->pk = pk ? strdup(pk) : NULL;
  du->ops->put(du->ops->ctx, &pm, du__stored, t);
}

/* ---------------------------------------------------------------------------
 * Lookups and cron
 * ------------------------------------------------------------------------- */

static void du__looked_up(void *ud, int ok, uint64_t seq, int found, int done, int kind, const char *reply,
                          size_t len, const char *err) {
  ticket_t *t = ud;
  call_t *c = du__ticket_take(t);
  free(t);
  if (!c) return;
  c->request_id = seq;
  if (!ok) call_fail(c, REPLY_UNAVAILABLE, "could not read the stored message: %s", err ? err : "?");
  else if (!found) call_fail(c, REPLY_NOT_FOUND, "no stored message has request id %" PRIu64 " (or its reply was "
                                                 "pruned)", seq);
  else if (!done) call_complete(c, REPLY_ACCEPTED, "", 0);
  else call_complete(c, (reply_kind_t)kind, reply, len);
}

void durable_lookup(durable_t *du, uint64_t rid, call_t *c) {
  if (!durable_up(du)) {
    call_fail(c, REPLY_UNAVAILABLE, "storage (%s) is unavailable; retry later", du->ops->name);
    return;
  }
  du->ops->state(du->ops->ctx, rid, du__looked_up, du__ticket(du, c));
}

static void du__cron_done(void *ud, int ok, int64_t a, int64_t b, const char *err) {
  ticket_t *t = ud;
  call_t *c = du__ticket_take(t);
  free(t);
  if (!c) return;
  if (!ok) {
    call_fail(c, REPLY_UNAVAILABLE, "cron bookkeeping failed: %s", err ? err : "?");
    return;
  }
  char body[64];
  int n = snprintf(body, sizeof body, "%" PRId64 " %" PRId64, a, b);
  call_complete(c, REPLY_OK, body, (size_t)n);
}

void durable_cron(durable_t *du, int op, const char *name, uint64_t at, call_t *c) {
  du->ops->cron(du->ops->ctx, (ms_cron_op_t)op, name, at, du__cron_done, du__ticket(du, c));
}

/* ---------------------------------------------------------------------------
 * Life
 * ------------------------------------------------------------------------- */

durable_t *durable_new(sched_t *s, router_t *rt, em_t *em, host_t *h) {
  durable_t *du = calloc(1, sizeof *du);
  if (!du) abort();
  du->sched = s;
  du->rt = rt;
  du->em = em;
  du->host = h;
  router__set_durable(rt, du);
  return du;
}

void durable__set_cluster(durable_t *du, cluster_t *cl) { du->cl = cl; }

void durable_free(durable_t *du) {
  if (!du) return;
  durable_close(du);
  free(du);
}

int durable_init(durable_t *du, const ms_ops_t *ops, uint32_t shards, uint64_t retention_ms) {
  du->ops = ops;
  du->n = shards;
  du->held = malloc(sizeof *du->held * shards);
  du->retention_ms = retention_ms;
  htab_init(&du->known);
  htab_init(&du->waits);
  timer_entry_init(&du->scan_timer, du->sched, du__scan_fire);
  timer_entry_init(&du->due_timer, du->sched, du__due_fire);
  timer_entry_init(&du->poll_timer, du->sched, du__poll_fire);
  timer_entry_init(&du->prune_timer, du->sched, du__prune_fire);
  timer_entry_init(&du->page_timer, du->sched, du__page_fire);
  timer_add(&du->scan_timer, sched_now(du->sched) + DUR_SCAN_EVERY_MS);
  timer_add(&du->prune_timer, sched_now(du->sched) + DUR_PRUNE_EVERY_MS);
  du->on = 1;
  return 0;
}

void durable_close(durable_t *du) {
  if (!du->on) return;
  /* Statements in flight answer now (unavailable); the callbacks see du->on. */
  du->ops->close(du->ops->ctx);
  du->on = 0;
  timer_cancel(&du->scan_timer);
  timer_cancel(&du->due_timer);
  timer_cancel(&du->poll_timer);
  timer_cancel(&du->prune_timer);
  timer_cancel(&du->page_timer);
  size_t i;
  htab_node_t *n;
  while ((n = htab_first(&du->waits, &i))) {
    wait_t *w = (wait_t *)((char *)n - offsetof(wait_t, node));
    du__list_fail(&w->calls, "the runner is shutting down");
    du__wait_free(w);
  }
  while ((n = htab_first(&du->known, &i))) {
    known_t *k = (known_t *)((char *)n - offsetof(known_t, node));
    du__list_fail(&k->waiters, "the runner is shutting down");
    if (k->checking) {
      msg_t *m = k->checking;
      k->checking = NULL;
      msg_free(m);
    }
    du__known_free(k);
  }
  for (size_t j = 0; j < du->nparked; j++) {
    call_t *c = msg_detach_call(du->parked[j]);
    if (c) call_fail(c, REPLY_UNAVAILABLE, "the runner is shutting down");
    msg_free(du->parked[j]);
  }
  free(du->parked);
  du->parked = NULL;
  du->nparked = du->cap_parked = 0;
  htab_free(&du->known);
  htab_free(&du->waits);
  free(du->held);
  du->held = NULL;
}
/* GET /metrics: persisted messages, in memory storage or in the durable
 * store with this runner's delivery counters. */
void durable_metrics(durable_t *du, buf_t *b) {
  if (!durable_on(du)) {
    prom_head(b, "luster_persisted_messages", "gauge", "Persisted messages and replies held by storage.");
    buf_printf(b, "luster_persisted_messages %zu\n", router_stored_count(du->rt));
  } else {
    const ms_stats_t *ps = durable_store_stats(du);
    const durable_stats_t *ds = durable_stats(du);
    static const struct {
      const char *name, *type, *help;
      size_t off;
      int durable;
    } rows[] = {
#define PGS_ROW(n, f, h) {"luster_persisted_" n, "counter", h, offsetof(ms_stats_t, f), 0}
#define DUR_ROW(n, t, f, h) {"luster_persisted_" n, t, h, offsetof(durable_stats_t, f), 1}
        PGS_ROW("stored_total", stored, "Persisted messages stored by this runner."),
        PGS_ROW("duplicates_total", duplicates, "Sends whose primary key was stored before (answered with its reply)."),
        PGS_ROW("replies_total", replies, "Replies of persisted messages stored by this runner."),
        PGS_ROW("pruned_total", pruned, "Done messages deleted after the retention."),
        PGS_ROW("storage_failures_total", failures, "Batched storage statements that failed."),
        PGS_ROW("store_batches_total", put_batches, "Statements that stored messages (many messages each)."),
        PGS_ROW("reply_batches_total", reply_batches, "Statements that stored replies."),
        PGS_ROW("state_saves_total", state_saves, "Durable entity states written to (or deleted from) PostgreSQL."),
        PGS_ROW("state_loads_total", state_loads, "Durable entity states read from PostgreSQL."),
        DUR_ROW("delivered_total", "counter", delivered, "Stored messages handed to their instance here."),
        DUR_ROW("redelivery_scans_total", "counter", scans, "Reads of pending messages of this runner's shards."),
        DUR_ROW("duplicates_skipped_total", "counter", duplicates_skipped,
                "Deliveries skipped because the message ran here already or was done."),
        DUR_ROW("running", "gauge", running, "Stored messages this runner delivers now."),
#undef PGS_ROW
#undef DUR_ROW
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
      const char *base = rows[i].durable ? (const char *)ds : (const char *)ps;
      prom_head(b, rows[i].name, rows[i].type, rows[i].help);
      buf_printf(b, "%s %llu\n", rows[i].name, (unsigned long long)*(const uint64_t *)(base + rows[i].off));
    }
    prom_head(b, "luster_persisted_scan_pauses_total", "counter",
              "Times a scan of pending messages waited for instance slots (--max-active) before its next page.");
    buf_printf(b, "luster_persisted_scan_pauses_total %llu\n", (unsigned long long)du->scan_pauses);
  }
}
