/* durable_state.c - saving and reading back the state of durable entity
 * instances (see durable_state.h). */
#include "entity/durable_state.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loop/log.h"
#include "core/buf.h"
#include "entity/em_int.h"

/* A load or save in flight for one instance. */
typedef struct ds_op_s {
  inst_t *inst;      /* NULL once the instance is gone */
  msg_t *m;          /* volatile: the message whose reply waits for the save */
  reply_kind_t kind; /* and that reply */
  char *body;
  size_t len;
  char *bytes; /* the state being written (NULL: none, the row goes) */
  size_t blen;
} ds_op_t;

/* What an instance knows of its saved row, so that an unchanged snapshot
 * is not written again: `base` is the state it would activate with again,
 * the row's bytes when it has one, else the snapshot it had right after
 * activating without one (what activate(ctx, nil) builds). */
struct dstate_s {
  char *base;
  size_t base_len;
  int has_base;
  int row;    /* a row exists */
  int forget; /* ctx:forget() during the current message */
  ds_op_t *op;
};

static void ds__set_base(struct dstate_s *ds, char *bytes, size_t len) {
  free(ds->base);
  ds->base = bytes;
  ds->base_len = len;
  ds->has_base = bytes != NULL;
}

/* The backend's operations, in the manager (em_t.estate): set by the
 * wiring before any script runs. */
void dstate_set_ops(em_t *em, const estate_ops_t *ops) { em->estate = ops; }

static struct dstate_s *ds__get(inst_t *i) {
  if (!i->ds) i->ds = calloc(1, sizeof *i->ds);
  return i->ds;
}

static char *ds__dup(const char *p, size_t n) {
  char *r = malloc(n + 1);
  if (n) memcpy(r, p, n);
  r[n] = '\0';
  return r;
}

/* Rows are text in every backend: valid UTF-8, no NUL bytes. */
static int ds__utf8(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s, *end = p + n;
  while (p < end) {
    unsigned c = *p++;
    if (c == 0) return 0;
    if (c < 0x80) continue;
    int more = c >= 0xf0 && c <= 0xf4 ? 3 : c >= 0xe0 ? 2 : c >= 0xc2 && c < 0xe0 ? 1 : -1;
    if (more < 0 || end - p < more) return 0;
    unsigned cp = c & (0x3f >> more);
    for (int k = 0; k < more; k++) {
      if ((p[k] & 0xc0) != 0x80) return 0;
      cp = (cp << 6) | (p[k] & 0x3f);
    }
    if ((more == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (more == 3 && (cp < 0x10000 || cp > 0x10ffff)))
      return 0;
    p += more;
  }
  return 1;
}

/* ---------------------------------------------------------------------------
 * Activation
 * ------------------------------------------------------------------------- */

static void ds__loaded(void *ud, int ok, int found, const char *bytes, size_t len, const char *err) {
  ds_op_t *op = ud;
  inst_t *i = op->inst;
  free(op);
  if (!i) return;
  struct dstate_s *ds = i->ds;
  ds->op = NULL;
  if (!ok) {
    char why[512];
    snprintf(why, sizeof why, "reading its saved state failed: %s", err ? err : "?");
    em_activated(i, why);
    return;
  }
  ds__set_base(ds, found ? ds__dup(bytes, len) : NULL, found ? len : 0);
  ds->row = found;
  ds->forget = 0;
  em_t *em = i->h.type->em;
  em->host.activate(em->host.ud, &i->h, ds->base, ds->base_len);
}

void dstate_activate(inst_t *i) {
  struct dstate_s *ds = ds__get(i);
  ds_op_t *op = calloc(1, sizeof *op);
  op->inst = i;
  ds->op = op;
  etype_t *t = i->h.type;
  const estate_ops_t *ops = t->em->estate;
  ops->load(ops->ctx, t->name, t->name_len, i->id, i->h.id_len, ds__loaded, op);
}

/* ---------------------------------------------------------------------------
 * After a message
 * ------------------------------------------------------------------------- */

/* The instance's snapshot() as encoded bytes (NULL: it returned nil, or it
 * failed and *err says why). */
static char *ds__snapshot(inst_t *i, size_t *len, char **err) {
  em_t *em = i->h.type->em;
  char *out = em->host.state_snapshot(em->host.ud, &i->h, len, err);
  const char *bad = *err ? NULL
                    : out && !ds__utf8(out, *len) ? "its snapshot is stored as text: it must be valid UTF-8"
                    : !ds__utf8(i->id, i->h.id_len) ? "the entity's id is stored as text: it must be valid UTF-8 without NUL bytes"
                                                  : NULL;
  if (bad) *err = ds__dup(bad, strlen(bad));
  if (*err) {
    free(out);
    out = NULL;
  }
  return out;
}

void dstate_activated(inst_t *i) {
  struct dstate_s *ds = i->ds;
  if (!ds || ds->row) return;
  size_t len;
  char *err = NULL;
  char *bytes = ds__snapshot(i, &len, &err);
  free(err); /* no base: its first message writes */
  ds__set_base(ds, bytes, len);
}

/* The snapshot could not be encoded: a defect for m (a persisted message
 * runs again, like one whose handler raised) and the instance starts over
 * from its saved state. Returns 1 (em_handled is the caller's). */
static int ds__unsaved(inst_t *i, msg_t *m, const char *err) {
  etype_t *t = i->h.type;
  int idl = (int)(i->h.id_len > 64 ? 64 : i->h.id_len);
  buf_t b;
  buf_init(&b);
  buf_printf(&b, "the state of %s/%.*s could not be saved: %s", t->name, idl, i->id, err);
  log_warn("defect %s/%.*s %s request=%llu: %s", t->name, idl, i->id, t->rpcs[m->rpc].tag,
           (unsigned long long)m->request_id, b.data);
  i->h.reset = 1;
  if (m->stored) {
    m->attempts++;
    if (m->attempts < HOST_PERSISTED_ATTEMPTS) {
      uint64_t delay = (uint64_t)HOST_RETRY_BASE_MS << (m->attempts - 1);
      log_warn("%s/%.*s: %s runs again in %llu ms (attempt %u of %d)", t->name, idl, i->id, t->rpcs[m->rpc].tag,
               (unsigned long long)delay, m->attempts, HOST_PERSISTED_ATTEMPTS);
      em_retry(i, m, delay);
      buf_free(&b);
      return 1;
    }
    buf_t again;
    buf_init(&again);
    buf_printf(&again, "failed %d times; last error: %s", HOST_PERSISTED_ATTEMPTS, b.data);
    buf_free(&b);
    b = again;
  }
  size_t len;
  char *body = reply_error_body(REPLY_DEFECT, NULL, b.data, &len);
  t->counters->outcomes[REPLY_DEFECT]++;
  msg_finish(m, REPLY_DEFECT, body, len);
  free(body);
  buf_free(&b);
  return 1;
}

static void ds__saved(void *ud, int ok, const char *err) {
  ds_op_t *op = ud;
  inst_t *i = op->inst;
  if (op->m) {
    msg_t *m = op->m;
    etype_t *t = m->type;
    if (ok) {
      t->counters->outcomes[op->kind]++;
      msg_finish(m, op->kind, op->body, op->len);
    } else {
      char text[1024];
      snprintf(text, sizeof text, "the state of %s/%.*s could not be saved: %s", t->name,
               (int)(m->id_len > 64 ? 64 : m->id_len), m->id, err ? err : "?");
      size_t len;
      char *body = reply_error_body(REPLY_DEFECT, NULL, text, &len);
      t->counters->outcomes[REPLY_DEFECT]++;
      msg_finish(m, REPLY_DEFECT, body, len);
      free(body);
    }
  }
  if (i) {
    struct dstate_s *ds = i->ds;
    ds->op = NULL;
    if (ok) {
      ds->row = op->bytes != NULL;
      ds__set_base(ds, op->bytes, op->blen);
      op->bytes = NULL;
      if (ds->forget) i->h.reset = 1; /* it ends after this message */
    } else {
      log_warn("the state of %s/%.*s could not be saved (%s); it activates again from its saved state",
               i->h.type->name, (int)(i->h.id_len > 64 ? 64 : i->h.id_len), i->id, err ? err : "?");
      i->h.reset = 1;
    }
  }
  free(op->bytes);
  free(op->body);
  free(op);
  if (i) em_handled(i);
}

int dstate_handled(inst_t *i, msg_t *m, reply_kind_t kind, const char *body, size_t len) {
  etype_t *t = i->h.type;
  struct dstate_s *ds = ds__get(i);
  char *err = NULL, *bytes = NULL;
  size_t blen = 0;
  if (!ds->forget) bytes = ds__snapshot(i, &blen, &err);
  if (err) {
    int r = ds__unsaved(i, m, err);
    free(err);
    return r;
  }
  int same = bytes ? ds->has_base && blen == ds->base_len && memcmp(bytes, ds->base, blen) == 0 : !ds->row;
  if (same) {
    free(bytes); /* unchanged: nothing to write */
    t->counters->outcomes[kind]++;
    msg_finish(m, kind, body, len);
    if (ds->forget) i->h.reset = 1;
    return 1;
  }
  estate_write_t w = {t->name, i->id, t->name_len, i->h.id_len, bytes, blen};
  ds_op_t *op = calloc(1, sizeof *op);
  op->inst = i;
  op->bytes = bytes;
  op->blen = blen;
  ds->op = op;
  t->counters->state_writes++;
  if (m->stored) {
    t->counters->outcomes[kind]++;
    msg_finish_state(m, kind, body, len, &w, ds__saved, op);
  } else {
    op->m = m;
    op->kind = kind;
    op->body = ds__dup(body, len);
    op->len = len;
    const estate_ops_t *ops = t->em->estate;
    ops->save(ops->ctx, &w, ds__saved, op);
  }
  return 0;
}

int dstate_forget(etype_t *t, const char *id, size_t len) {
  if (!t->durable) return -EINVAL;
  inst_t *i = em_find(t, id, len);
  if (!i) return -ENOENT;
  ds__get(i)->forget = 1;
  return 0;
}

void dstate_inst_free(inst_t *i) {
  struct dstate_s *ds = i->ds;
  if (!ds) return;
  if (ds->op) ds->op->inst = NULL;
  free(ds->base);
  free(ds);
  i->ds = NULL;
}
