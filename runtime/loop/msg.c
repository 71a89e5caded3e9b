/* msg.c - messages, replies and calls. */
#include "loop/msg.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loop/log.h"
#include "core/buf.h"

static const char *const reply_names[REPLY__COUNT] = {
    "ok", "failure", "defect", "schema", "not_found", "timeout", "unavailable", "mailbox_full", "accepted",
    "conflict",
};

const char *reply_kind_name(reply_kind_t k) { return k < REPLY__COUNT ? reply_names[k] : "defect"; }

int reply_kind_parse(const char *s, size_t n, reply_kind_t *out) {
  for (int i = 0; i < REPLY__COUNT; i++)
    if (strlen(reply_names[i]) == n && memcmp(reply_names[i], s, n) == 0) { *out = (reply_kind_t)i; return 0; }
  return -1;
}

static void *xmalloc(size_t n) {
  void *p = malloc(n);
  if (!p) { log_error("out of memory (%zu bytes)", n); abort(); }
  return p;
}

char *reply_error_body(reply_kind_t kind, const char *path, const char *msg, size_t *len) {
  buf_t b;
  buf_init(&b);
  buf_adds(&b, "{\"kind\":\"");
  buf_adds(&b, reply_kind_name(kind));
  buf_adds(&b, "\",\"message\":");
  buf_add_json_str(&b, msg, strlen(msg));
  if (path || kind == REPLY_SCHEMA) {
    buf_adds(&b, ",\"path\":");
    buf_add_json_str(&b, path ? path : "", path ? strlen(path) : 0);
  }
  buf_addc(&b, '}');
  return buf_steal(&b, len);
}

static void call__timeout(timer_entry_t *t) {
  call_t *c = (call_t *)((char *)t - offsetof(call_t, deadline));
  call_fail(c, REPLY_TIMEOUT, "no reply within %llu ms", (unsigned long long)c->timeout_ms);
}

call_t *call_new(sched_t *s, call_cb cb, void *ud, uint64_t timeout_ms) {
  call_t *c = xmalloc(sizeof *c);
  memset(c, 0, sizeof *c);
  c->cb = cb;
  c->ud = ud;
  c->timeout_ms = timeout_ms;
  timer_entry_init(&c->deadline, s, call__timeout);
  if (timeout_ms) timer_add(&c->deadline, sched_now(s) + timeout_ms);
  return c;
}

static void call__detach(call_t *c) {
  if (c->unlink) c->unlink(c);
  c->unlink = NULL;
  c->holder = NULL;
  timer_cancel(&c->deadline);
}

static void call__run(sched_item_t *it) {
  call_t *c = (call_t *)it;
  if (c->cb) c->cb(c, c->kind, c->body ? c->body : "", c->len);
  free(c->span);
  free(c->body);
  free(c);
}

void call_complete(call_t *c, reply_kind_t kind, const char *body, size_t len) {
  if (!c || c->done) return; /* nobody waits, or the reply was given */
  c->done = 1;
  call__detach(c);
  c->kind = kind;
  c->body = xmalloc(len + 1);
  memcpy(c->body, body, len);
  c->body[len] = '\0';
  c->len = len;
  sched_push(c->deadline.sched, &c->item, call__run);
}

void call_fail(call_t *c, reply_kind_t kind, const char *fmt, ...) {
  if (!c || c->done) return;
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  size_t len;
  char *body = reply_error_body(kind, NULL, msg, &len);
  call_complete(c, kind, body, len);
  free(body);
}

void call_cancel(call_t *c) {
  c->cb = NULL;
  if (c->done) return; /* queued: freed when the queue reaches it */
  c->done = 1;
  call__detach(c);
  sched_push(c->deadline.sched, &c->item, call__run);
}

static void msg__unlink_call(call_t *c) {
  msg_t *m = c->holder;
  if (m) m->call = NULL;
}

msg_t *msg_new(struct etype_s *type, int rpc, const char *id, size_t id_len, const char *payload,
               size_t payload_len, const char *headers, size_t headers_len) {
  size_t hl = headers ? headers_len + 1 : 0;
  msg_t *m = xmalloc(sizeof *m + id_len + 1 + payload_len + 1 + hl);
  memset(m, 0, sizeof *m);
  m->type = type;
  m->rpc = rpc;
  m->id = m->data;
  memcpy(m->id, id, id_len);
  m->id[id_len] = '\0';
  m->id_len = id_len;
  m->payload = m->id + id_len + 1;
  memcpy(m->payload, payload, payload_len);
  m->payload[payload_len] = '\0';
  m->payload_len = payload_len;
  if (headers) {
    m->headers = m->payload + payload_len + 1;
    memcpy(m->headers, headers, headers_len);
    m->headers[headers_len] = '\0';
    m->headers_len = headers_len;
  }
  m->request_id = msg_next_request_id();
  ((msg_typeref_t *)(void *)type)->refs++;
  return m;
}

void msg_attach_call(msg_t *m, call_t *c) {
  m->call = c;
  c->holder = m;
  c->unlink = msg__unlink_call;
}

call_t *msg_detach_call(msg_t *m) {
  call_t *c = m->call;
  if (c) {
    c->unlink = NULL;
    c->holder = NULL;
    m->call = NULL;
  }
  return c;
}

static void call__list_unlink(call_t *c) {
  call_t **head = c->holder;
  if (c->wprev) c->wprev->wnext = c->wnext; else *head = c->wnext;
  if (c->wnext) c->wnext->wprev = c->wprev;
  c->wnext = c->wprev = NULL;
}

void call_list_add(call_t **head, call_t *c) {
  if (!c || c->done) return;
  c->holder = head;
  c->unlink = call__list_unlink;
  c->wprev = NULL;
  c->wnext = *head;
  if (*head) (*head)->wprev = c;
  *head = c;
}

int msg_abandoned(const msg_t *m) {
  return !(m->flags & (MSG_DISCARD | MSG_PERSISTED)) && m->call == NULL;
}

/* Replies that say nothing about the message itself (the runner left, a
 * deadline passed) are not stored: a stored message stays pending, to be
 * delivered again. */
static int msg__final(reply_kind_t k) {
  return k != REPLY_UNAVAILABLE && k != REPLY_TIMEOUT && k != REPLY_MAILBOX_FULL && k != REPLY_ACCEPTED;
}

void msg_finish(msg_t *m, reply_kind_t kind, const char *body, size_t len) {
  msg_finish_state(m, kind, body, len, NULL, NULL, NULL);
}

void msg_finish_state(msg_t *m, reply_kind_t kind, const char *body, size_t len, const estate_write_t *w,
                      estate_done_cb done, void *ud) {
  stored_t *s = m->stored;
  if (s) {
    m->stored = NULL;
    if (msg__final(kind)) {
      s->reply(s, kind, body, len, msg_detach_call(m), w, done, ud);
    } else {
      s->drop(s);
    }
  }
  if (m->call) call_complete(m->call, kind, body, len);
  msg_free(m);
}

void msg_free(msg_t *m) {
  if (m->stored) {
    stored_t *s = m->stored;
    m->stored = NULL;
    s->drop(s);
  }
  if (m->call) call_fail(msg_detach_call(m), REPLY_UNAVAILABLE, "the message was dropped before it ran");
  msg_set_type(m, NULL);
  free(m);
}

/* Process-wide by nature: a request id names a stored message to every
 * runtime of the process (and, from the wall clock start, across restarts),
 * so the counter is one atomic shared by all runtimes and their threads. */
static _Atomic uint64_t msg_request_id_next;

uint64_t msg_next_request_id(void) {
  /* Unique within this process run: start from the wall clock in microseconds
   * so ids do not repeat across restarts of one runner either. The first
   * callers race to set the start; only one wins, the rest add to it. */
  uint64_t cur = atomic_load_explicit(&msg_request_id_next, memory_order_relaxed);
  if (cur == 0) {
    uint64_t start = sched_wall_ms(NULL) * 1000u;
    atomic_compare_exchange_strong(&msg_request_id_next, &cur, start);
  }
  return atomic_fetch_add_explicit(&msg_request_id_next, 1, memory_order_relaxed) + 1;
}

void msg_set_type(msg_t *m, struct etype_s *t) {
  /* msg_typeref_t is the first member of every type record (host.h). */
  struct etype_s *old = m->type;
  m->type = t;
  if (t) ((msg_typeref_t *)(void *)t)->refs++;
  if (old) {
    msg_typeref_t *r = (msg_typeref_t *)(void *)old;
    r->refs--;
    if (r->released) r->released(old);
  }
}
