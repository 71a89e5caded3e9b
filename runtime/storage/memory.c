/* memory.c - the embedded storage backend: persisted messages and replies in
 * this process's memory, pruned after the retention period. */
#include "storage/storage.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "loop/log.h"
#include "core/buf.h"
#include "core/hash.h"
#include "core/jsoncanon.h"
#include "storage/estate_mem.h"

/* Done records wait in two queues, each in done order: keyed ones for the
 * retention period, the others for at most STORAGE_UNKEYED_MS. */
typedef struct {
  pmsg_t *head, *tail;
  uint64_t keep_ms;
  timer_entry_t timer;
  mem_store_t *ms;
} mem_queue_t;

struct mem_store_s {
  htab_t keys, rids;
  pmsg_t *all;
  mem_queue_t q[2];
  size_t count;
  sched_t *sched;
  estate_mem_t *es; /* durable state written with replies (storage_new) */
};

static int mem__eq(const htab_node_t *n, const void *key, size_t len) {
  const pmsg_t *p = (const pmsg_t *)((const char *)n - offsetof(pmsg_t, node));
  return p->key_len == len && memcmp(p->key, key, len) == 0;
}

static int mem__rid_eq(const htab_node_t *n, const void *key, size_t len) {
  const pmsg_t *p = (const pmsg_t *)((const char *)n - offsetof(pmsg_t, rnode));
  return len == sizeof p->rid && memcmp(&p->rid, key, len) == 0;
}

static uint64_t mem__rid_hash(uint64_t rid) { return hash_bytes(&rid, sizeof rid); }

static void mem__free(pmsg_t *p) {
  mem_store_t *ms = p->store;
  if (p->keyed) htab_remove(&ms->keys, &p->node);
  htab_remove(&ms->rids, &p->rnode);
  if (p->aprev) p->aprev->anext = p->anext; else ms->all = p->anext;
  if (p->anext) p->anext->aprev = p->aprev;
  free(p->key);
  free(p->reply);
  free(p);
  ms->count--;
}

/* Prunes in small batches so a large backlog never stalls the loop. */
#define MEM_PRUNE_BATCH 10000
static void mem__prune(timer_entry_t *t) {
  mem_queue_t *q = (mem_queue_t *)((char *)t - offsetof(mem_queue_t, timer));
  mem_store_t *ms = q->ms;
  uint64_t now = sched_now(ms->sched);
  int n = 0;
  while (q->head && q->head->done_at + q->keep_ms <= now && n < MEM_PRUNE_BATCH) {
    pmsg_t *p = q->head;
    q->head = p->rnext;
    if (!q->head) q->tail = NULL;
    mem__free(p);
    n++;
  }
  if (q->head) timer_add(t, n == MEM_PRUNE_BATCH ? now + 10 : q->head->done_at + q->keep_ms);
}

mem_store_t *storage_new(sched_t *s, estate_mem_t *es, uint64_t retention_ms) {
  mem_store_t *ms = calloc(1, sizeof *ms);
  if (!ms) return NULL;
  ms->sched = s;
  ms->es = es;
  htab_init(&ms->keys);
  htab_init(&ms->rids);
  ms->q[0].keep_ms = retention_ms < STORAGE_UNKEYED_MS ? retention_ms : STORAGE_UNKEYED_MS;
  ms->q[1].keep_ms = retention_ms;
  for (int i = 0; i < 2; i++) {
    ms->q[i].ms = ms;
    timer_entry_init(&ms->q[i].timer, s, mem__prune);
  }
  return ms;
}

void storage_free(mem_store_t *ms) {
  if (!ms) return;
  for (int i = 0; i < 2; i++) {
    timer_cancel(&ms->q[i].timer);
    ms->q[i].head = ms->q[i].tail = NULL;
  }
  while (ms->all) {
    pmsg_t *p = ms->all;
    while (p->waiters) call_fail(p->waiters, REPLY_UNAVAILABLE, "the runner is shutting down");
    mem__free(p);
  }
  htab_free(&ms->keys);
  htab_free(&ms->rids);
  free(ms);
}

size_t storage_count(const mem_store_t *ms) { return ms ? ms->count : 0; }

static void mem__reply(stored_t *s, reply_kind_t kind, const char *body, size_t len, call_t *caller,
                       const estate_write_t *w, estate_done_cb done, void *ud);
static void mem__drop(stored_t *s) { (void)s; /* stays pending: nothing delivers it again in one process */ }

/* The payload's fingerprint: SHA-256 of its canonical JSON text (so a retry
 * formatted or ordered differently is still a retry), a cryptographic hash so
 * that payloads made to collide cannot pass for another caller's message. */
static void mem__fingerprint(const msg_t *m, unsigned char fp[STORAGE_FP_LEN]) {
  buf_t canon;
  buf_init(&canon);
  json_canonical(m->payload, m->payload_len, &canon);
  unsigned int n = 0;
  EVP_Digest(canon.data ? canon.data : "", canon.len, fp, &n, EVP_sha256(), NULL);
  buf_free(&canon);
}

pmsg_t *storage_put(mem_store_t *ms, const msg_t *m, const storage_names_t *names, const char *pk, store_status_t *status) {
  unsigned char fp[STORAGE_FP_LEN];
  buf_t key;
  buf_init(&key);
  if (pk) {
    buf_add(&key, names->type, names->type_len);
    buf_addc(&key, '\0');
    buf_add(&key, m->id, m->id_len);
    buf_addc(&key, '\0');
    buf_add(&key, names->rpc, names->rpc_len);
    buf_addc(&key, '\0');
    buf_adds(&key, pk);
    uint64_t h = hash_bytes(key.data, key.len);
    htab_node_t *n = htab_find(&ms->keys, h, mem__eq, key.data, key.len);
    mem__fingerprint(m, fp);
    if (n) {
      pmsg_t *p = (pmsg_t *)((char *)n - offsetof(pmsg_t, node));
      buf_free(&key);
      *status = memcmp(p->fp, fp, STORAGE_FP_LEN) != 0 ? STORE_CONFLICT : p->done ? STORE_DONE : STORE_PENDING;
      return p;
    }
  }
  pmsg_t *p = calloc(1, sizeof *p);
  if (!p) { buf_free(&key); return NULL; }
  p->store = ms;
  p->base.reply = mem__reply;
  p->base.drop = mem__drop;
  p->rid = m->request_id;
  p->rnode.hash = mem__rid_hash(p->rid);
  htab_insert(&ms->rids, &p->rnode);
  if (pk) {
    p->key = buf_steal(&key, &p->key_len);
    p->node.hash = hash_bytes(p->key, p->key_len);
    p->keyed = 1;
    memcpy(p->fp, fp, STORAGE_FP_LEN);
    htab_insert(&ms->keys, &p->node);
  }
  p->anext = ms->all;
  if (ms->all) ms->all->aprev = p;
  ms->all = p;
  ms->count++;
  *status = STORE_NEW;
  return p;
}

void storage_wait(pmsg_t *p, call_t *c) {
  if (!c || c->done) return;
  c->request_id = p->rid;
  if (p->done) {
    call_complete(c, p->kind, p->reply, p->reply_len);
    return;
  }
  call_list_add(&p->waiters, c);
}

void storage_get(mem_store_t *ms, uint64_t rid, call_t *c) {
  htab_node_t *n = htab_find(&ms->rids, mem__rid_hash(rid), mem__rid_eq, &rid, sizeof rid);
  c->request_id = rid;
  if (!n) {
    call_fail(c, REPLY_NOT_FOUND, "no stored message has request id %llu (or its reply was pruned)",
              (unsigned long long)rid);
    return;
  }
  pmsg_t *p = (pmsg_t *)((char *)n - offsetof(pmsg_t, rnode));
  if (p->done) call_complete(c, p->kind, p->reply, p->reply_len);
  else call_complete(c, REPLY_ACCEPTED, "", 0);
}

/* A durable entity's state and the reply are stored at once; the save's
 * callback runs from the ready queue like every other (see mem__state_done). */
typedef struct {
  sched_item_t item;
  estate_done_cb done;
  void *ud;
} mem_done_t;

static void mem__state_done(sched_item_t *it) {
  mem_done_t *d = (mem_done_t *)it;
  d->done(d->ud, 1, NULL);
  free(d);
}

static void mem__reply(stored_t *s, reply_kind_t kind, const char *body, size_t len, call_t *caller,
                       const estate_write_t *w, estate_done_cb done, void *ud) {
  pmsg_t *p = (pmsg_t *)s;
  mem_store_t *ms = p->store;
  if (caller) {
    caller->request_id = p->rid;
    call_complete(caller, kind, body, len);
  }
  if (done) {
    mem_done_t *d = calloc(1, sizeof *d);
    d->done = done;
    d->ud = ud;
    sched_push(ms->sched, &d->item, mem__state_done);
  }
  if (p->done) return; /* it has its reply: its state was applied with it */
  if (w && ms->es) estate_mem_apply(ms->es, w);
  p->done = 1;
  p->kind = kind;
  p->reply = malloc(len + 1);
  memcpy(p->reply, body, len);
  p->reply[len] = '\0';
  p->reply_len = len;
  while (p->waiters) call_complete(p->waiters, kind, body, len); /* unlinks itself */
  mem_queue_t *q = &ms->q[p->keyed];
  p->done_at = sched_now(ms->sched);
  if (q->tail) q->tail->rnext = p; else q->head = p;
  q->tail = p;
  if (!timer_pending(&q->timer)) timer_add(&q->timer, p->done_at + q->keep_ms);
}
