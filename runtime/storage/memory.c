/* memory.c - the embedded storage backend: persisted messages and replies in
 * this process's memory, pruned after the retention period. */
#include "storage/storage.h"

#include <stdlib.h>
#include <string.h>

#include "cli/log.h"
#include "core/buf.h"
#include "core/hash.h"
#include "host/host.h"

static htab_t mem_keys;
static pmsg_t *mem_all;
static pmsg_t *mem_done_head, *mem_done_tail;
static size_t mem_count;
static uint64_t mem_retention_ms;
static timer_entry_t mem_prune_timer;

static int mem__eq(const htab_node_t *n, const void *key, size_t len) {
  const pmsg_t *p = (const pmsg_t *)n;
  return p->key_len == len && memcmp(p->key, key, len) == 0;
}

static void mem__free(pmsg_t *p) {
  if (p->keyed) htab_remove(&mem_keys, &p->node);
  if (p->aprev) p->aprev->anext = p->anext; else mem_all = p->anext;
  if (p->anext) p->anext->aprev = p->aprev;
  free(p->key);
  free(p->reply);
  free(p);
  mem_count--;
}

/* Prunes in small batches so a large backlog never stalls the loop. */
#define MEM_PRUNE_BATCH 10000
static void mem__prune(timer_entry_t *t) {
  uint64_t now = sched_now();
  int n = 0;
  while (mem_done_head && mem_done_head->done_at + mem_retention_ms <= now && n < MEM_PRUNE_BATCH) {
    pmsg_t *p = mem_done_head;
    mem_done_head = p->rnext;
    if (!mem_done_head) mem_done_tail = NULL;
    mem__free(p);
    n++;
  }
  if (mem_done_head) {
    uint64_t due = n == MEM_PRUNE_BATCH ? now + 10 : mem_done_head->done_at + mem_retention_ms;
    timer_add(t, due);
  }
}

int storage_init_memory(uint64_t retention_ms) {
  htab_init(&mem_keys);
  mem_retention_ms = retention_ms;
  timer_entry_init(&mem_prune_timer, mem__prune);
  return 0;
}

void storage_close(void) {
  timer_cancel(&mem_prune_timer);
  while (mem_all) {
    pmsg_t *p = mem_all;
    while (p->waiters) call_fail(p->waiters, REPLY_UNAVAILABLE, "the runner is shutting down");
    mem__free(p);
  }
  mem_done_head = mem_done_tail = NULL;
  htab_free(&mem_keys);
}

size_t storage_count(void) { return mem_count; }

pmsg_t *storage_put(const msg_t *m, const char *pk, store_status_t *status) {
  buf_t key;
  buf_init(&key);
  if (pk) {
    etype_t *t = m->type;
    buf_add(&key, t->name, t->name_len);
    buf_addc(&key, '\0');
    buf_add(&key, m->id, m->id_len);
    buf_addc(&key, '\0');
    buf_add(&key, t->rpcs[m->rpc].tag, t->rpcs[m->rpc].tag_len);
    buf_addc(&key, '\0');
    buf_adds(&key, pk);
    uint64_t h = hash_bytes(key.data, key.len);
    pmsg_t *p = (pmsg_t *)htab_find(&mem_keys, h, mem__eq, key.data, key.len);
    if (p) {
      buf_free(&key);
      *status = p->done ? STORE_DONE : STORE_PENDING;
      return p;
    }
  }
  pmsg_t *p = calloc(1, sizeof *p);
  if (!p) { buf_free(&key); return NULL; }
  if (pk) {
    p->key = buf_steal(&key, &p->key_len);
    p->node.hash = hash_bytes(p->key, p->key_len);
    p->keyed = 1;
    htab_insert(&mem_keys, &p->node);
  }
  p->anext = mem_all;
  if (mem_all) mem_all->aprev = p;
  mem_all = p;
  mem_count++;
  *status = STORE_NEW;
  return p;
}

static void mem__unlink_waiter(call_t *c) {
  pmsg_t *p = c->holder;
  if (c->wprev) c->wprev->wnext = c->wnext; else p->waiters = c->wnext;
  if (c->wnext) c->wnext->wprev = c->wprev;
  c->wnext = c->wprev = NULL;
}

void storage_wait(pmsg_t *p, call_t *c) {
  if (!c || c->done) return;
  if (p->done) {
    call_complete(c, p->kind, p->reply, p->reply_len);
    return;
  }
  c->holder = p;
  c->unlink = mem__unlink_waiter;
  c->wprev = NULL;
  c->wnext = p->waiters;
  if (p->waiters) p->waiters->wprev = c;
  p->waiters = c;
}

void storage_reply(pmsg_t *p, reply_kind_t kind, const char *body, size_t len) {
  if (p->done) return;
  p->done = 1;
  p->kind = kind;
  p->reply = malloc(len + 1);
  memcpy(p->reply, body, len);
  p->reply[len] = '\0';
  p->reply_len = len;
  while (p->waiters) call_complete(p->waiters, kind, body, len); /* unlinks itself */
  if (!p->keyed) { /* nothing can ask for it again */
    mem__free(p);
    return;
  }
  p->done_at = sched_now();
  if (mem_done_tail) mem_done_tail->rnext = p; else mem_done_head = p;
  mem_done_tail = p;
  if (!timer_pending(&mem_prune_timer)) timer_add(&mem_prune_timer, p->done_at + mem_retention_ms);
}
