/* router.c - resolving and delivering messages on a single runner. */
#include "cluster/router.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli/log.h"
#include "entity/entity.h"
#include "host/host.h"
#include "storage/storage.h"

typedef struct persist_job_s {
  sched_item_t item;
  timer_entry_t due;
  msg_t *msg;
  call_t *call;
  struct persist_job_s *dprev, *dnext; /* while waiting for deliver_at */
} persist_job_t;

static persist_job_t *router_delayed;

static void router__undelay(persist_job_t *j) {
  if (j->dprev) j->dprev->dnext = j->dnext; else router_delayed = j->dnext;
  if (j->dnext) j->dnext->dprev = j->dprev;
}

void router_shutdown(void) {
  while (router_delayed) {
    persist_job_t *j = router_delayed;
    router__undelay(j);
    timer_cancel(&j->due);
    msg_free(j->msg);
    free(j);
  }
}

static void router__deliver(msg_t *m, call_t *call) {
  int rc = em_deliver(m);
  if (rc == 0) {
    if (call) call_complete(call, REPLY_ACCEPTED, "", 0);
    return;
  }
  call_t *c = m->call ? m->call : call;
  if (m->call) { m->call->unlink = NULL; m->call = NULL; }
  if (rc == -EBUSY)
    call_fail(c, REPLY_MAILBOX_FULL, "the mailbox of %s/%.*s is full (%u messages waiting); retry later",
              m->type->name, (int)(m->id_len > 64 ? 64 : m->id_len), m->id, m->type->mailbox);
  else
    call_fail(c, REPLY_UNAVAILABLE, "cannot deliver to %s: out of memory", m->type->name);
  msg_free(m);
}

static void router__due(timer_entry_t *t) {
  persist_job_t *j = (persist_job_t *)((char *)t - offsetof(persist_job_t, due));
  msg_t *m = j->msg;
  router__undelay(j);
  free(j);
  router__deliver(m, NULL);
}

static void router__persist(sched_item_t *it) {
  persist_job_t *j = (persist_job_t *)it;
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
  store_status_t st;
  pmsg_t *rec = storage_put(m, pk, &st);
  free(pk);
  if (!rec) {
    call_fail(call, REPLY_UNAVAILABLE, "storage is out of memory");
    msg_free(m);
    free(j);
    return;
  }
  int discard = (m->flags & MSG_DISCARD) != 0;
  if (discard) call_complete(call, REPLY_ACCEPTED, "", 0);
  else storage_wait(rec, call);
  if (st != STORE_NEW) { /* a duplicate: the first message runs, once */
    msg_free(m);
    free(j);
    return;
  }
  m->flags |= MSG_PERSISTED;
  m->stored = rec;
  uint64_t wall = sched_wall_ms();
  if (at > wall) {
    j->msg = m;
    timer_entry_init(&j->due, router__due);
    timer_add(&j->due, sched_now() + (at - wall));
    j->dprev = NULL;
    j->dnext = router_delayed;
    if (router_delayed) router_delayed->dprev = j;
    router_delayed = j;
    return;
  }
  free(j);
  router__deliver(m, NULL);
}

void router_send(const char *type, size_t type_len, const char *id, size_t id_len, const char *tag, size_t tag_len,
                 const char *payload, size_t payload_len, const char *headers, size_t headers_len, unsigned flags,
                 call_t *call) {
  etype_t *t = host_find_type(type, type_len);
  if (!t || t->kind != DEF_ENTITY) {
    call_fail(call, REPLY_NOT_FOUND, "unknown entity type '%.*s'", (int)(type_len > 128 ? 128 : type_len), type);
    return;
  }
  int rpc = etype_find_rpc(t, tag, tag_len);
  if (rpc < 0) {
    call_fail(call, REPLY_NOT_FOUND, "entity type '%s' has no RPC '%.*s'", t->name,
              (int)(tag_len > 128 ? 128 : tag_len), tag);
    return;
  }
  if (id_len == 0 || id_len > ROUTER_MAX_ID) {
    size_t len;
    char *body = reply_error_body(REPLY_SCHEMA, "id",
                                  id_len ? "entity id is longer than 1024 bytes" : "entity id must not be empty",
                                  &len);
    call_complete(call, REPLY_SCHEMA, body, len);
    free(body);
    return;
  }
  msg_t *m = msg_new(t, rpc, id, id_len, payload, payload_len, headers, headers_len);
  m->flags = flags;
  if (t->rpcs[rpc].persisted) {
    persist_job_t *j = calloc(1, sizeof *j);
    j->msg = m;
    j->call = call;
    sched_push(&j->item, router__persist);
    return;
  }
  if (flags & MSG_DISCARD) {
    router__deliver(m, call);
  } else {
    msg_attach_call(m, call);
    router__deliver(m, NULL);
  }
}
