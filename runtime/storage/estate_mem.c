/* estate_mem.c - durable entity state kept in memory: one row per (type,
 * id), saves committed together once per pass of the ready queue. */
#include "storage/estate_mem.h"

#include <stdlib.h>
#include <string.h>

#include "core/hash.h"
#include "core/htab.h"
#include "loop/sched.h"

typedef struct {
  htab_node_t node;
  char *bytes;
  size_t len, key_len;
  char key[]; /* type NUL id */
} em_row_t;

/* A queued save or load; answered from the flush, never from the call. */
typedef struct em_op_s {
  struct em_op_s *next;
  int load;
  estate_write_t w; /* strings in key / bytes below */
  estate_done_cb done;
  estate_load_cb loaded;
  void *ud;
  char *bytes;
  size_t key_len;
  char key[];
} em_op_t;

/* The rows of one runtime's embedded store, beside memory.c's own tables:
 * like them they belong to the runtime and live as long as it. */
struct estate_mem_s {
  htab_t rows;
  em_op_t *head, *tail;
  sched_item_t flush; /* first use of the queue pushes it; es__flush finds the store from it */
  sched_t *sched;     /* the owner's, from estate_mem_new */
  estate_ops_t ops;   /* ctx: this store */
};

static int es__eq(const htab_node_t *n, const void *key, size_t len) {
  const em_row_t *r = (const em_row_t *)n;
  return r->key_len == len && memcmp(r->key, key, len) == 0;
}

static size_t es__key(char *out, const char *type, size_t tl, const char *id, size_t il) {
  memcpy(out, type, tl);
  out[tl] = '\0';
  memcpy(out + tl + 1, id, il);
  return tl + 1 + il;
}

static em_row_t *es__find(estate_mem_t *es, const char *key, size_t kl) {
  return (em_row_t *)htab_find(&es->rows, hash_bytes(key, kl), es__eq, key, kl);
}

static void es__put(estate_mem_t *es, const char *key, size_t kl, const char *bytes, size_t len) {
  em_row_t *r = es__find(es, key, kl);
  if (!bytes) {
    if (r) {
      htab_remove(&es->rows, &r->node);
      free(r->bytes);
      free(r);
    }
    return;
  }
  char *copy = malloc(len + 1);
  memcpy(copy, bytes, len);
  copy[len] = '\0';
  if (!r) {
    r = malloc(sizeof *r + kl);
    memcpy(r->key, key, kl);
    r->key_len = kl;
    r->node.hash = hash_bytes(key, kl);
    r->bytes = NULL;
    htab_insert(&es->rows, &r->node);
  }
  free(r->bytes);
  r->bytes = copy;
  r->len = len;
}

void estate_mem_apply(estate_mem_t *es, const estate_write_t *w) {
  char *key = malloc(w->type_len + 1 + w->id_len);
  size_t kl = es__key(key, w->type, w->type_len, w->id, w->id_len);
  es__put(es, key, kl, w->bytes, w->len);
  free(key);
}

/* Commits every queued save, then answers every queued operation in order
 * (a load queued after a save reads what it wrote). */
static void es__flush(sched_item_t *it) {
  estate_mem_t *es = (estate_mem_t *)((char *)it - offsetof(estate_mem_t, flush));
  em_op_t *op = es->head;
  es->head = es->tail = NULL;
  for (em_op_t *o = op; o; o = o->next)
    if (!o->load) es__put(es, o->key, o->key_len, o->bytes, o->w.len);
  while (op) {
    em_op_t *next = op->next;
    if (op->load) {
      em_row_t *r = es__find(es, op->key, op->key_len);
      op->loaded(op->ud, 1, r != NULL, r ? r->bytes : NULL, r ? r->len : 0, NULL);
    } else if (op->done) {
      op->done(op->ud, 1, NULL);
    }
    free(op->bytes);
    free(op);
    op = next;
  }
}

static em_op_t *es__op(estate_mem_t *es, const char *type, size_t tl, const char *id, size_t il) {
  em_op_t *op = calloc(1, sizeof *op + tl + 1 + il);
  op->key_len = es__key(op->key, type, tl, id, il);
  op->next = NULL;
  if (es->tail) es->tail->next = op; else es->head = op;
  es->tail = op;
  sched_push(es->sched, &es->flush, es__flush);
  return op;
}

static void es__load(void *ctx, const char *type, size_t tl, const char *id, size_t il, estate_load_cb cb,
                     void *ud) {
  em_op_t *op = es__op(ctx, type, tl, id, il);
  op->load = 1;
  op->loaded = cb;
  op->ud = ud;
}

static void es__save(void *ctx, const estate_write_t *w, estate_done_cb cb, void *ud) {
  em_op_t *op = es__op(ctx, w->type, w->type_len, w->id, w->id_len);
  op->done = cb;
  op->ud = ud;
  op->w.len = w->len;
  if (w->bytes) {
    op->bytes = malloc(w->len + 1);
    memcpy(op->bytes, w->bytes, w->len);
    op->bytes[w->len] = '\0';
  }
}

estate_mem_t *estate_mem_new(sched_t *s) {
  estate_mem_t *es = calloc(1, sizeof *es);
  if (!es) return NULL;
  es->sched = s;
  htab_init(&es->rows);
  es->ops = (estate_ops_t){es, es__load, es__save};
  return es;
}

const estate_ops_t *estate_mem_ops(estate_mem_t *es) { return &es->ops; }

void estate_mem_free(estate_mem_t *es) {
  if (!es) return;
  while (es->head) {
    em_op_t *op = es->head;
    es->head = op->next;
    if (op->load) op->loaded(op->ud, 0, 0, NULL, 0, "the runner is shutting down");
    else if (op->done) op->done(op->ud, 0, "the runner is shutting down");
    free(op->bytes);
    free(op);
  }
  es->tail = NULL;
  size_t i;
  htab_node_t *n = htab_first(&es->rows, &i);
  while (n) {
    em_row_t *r = (em_row_t *)n;
    n = htab_next(&es->rows, n, &i);
    free(r->bytes);
    free(r);
  }
  htab_free(&es->rows);
  free(es);
}
