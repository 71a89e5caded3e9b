/* entity.c - instances and their mailboxes.
 *
 * An instance is created by its first message and activated (its script's
 * activate runs) before that message is handled. It handles up to
 * `concurrency` messages at once, in mailbox order. When it has nothing to
 * do it joins its type's idle list, oldest first; the type's idle timer
 * passivates instances from the head of that list once they have been idle
 * for max_idle, so passivation costs O(1) per instance and no scanning. */
#include "entity/entity.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>

#include "cli/log.h"
#include "core/hash.h"

static uint32_t em_shards = 300;

static int em__eq(const htab_node_t *n, const void *key, size_t len) {
  const inst_t *i = (const inst_t *)n;
  return i->id_len == len && memcmp(i->id, key, len) == 0;
}

static void em__idle_fire(timer_entry_t *te);

void em_init(uint32_t shards) { em_shards = shards ? shards : 1; }

void em_type_init(etype_t *t) {
  htab_init(&t->instances);
  timer_entry_init(&t->idle_timer, em__idle_fire);
}

size_t em_active_total(void) {
  size_t n = 0;
  for (etype_t *t = host_types(); t; t = t->next) n += t->active;
  return n;
}

static void em__idle_remove(inst_t *i) {
  if (!i->idle) return;
  etype_t *t = i->type;
  if (i->idle_prev) i->idle_prev->idle_next = i->idle_next; else t->idle_head = i->idle_next;
  if (i->idle_next) i->idle_next->idle_prev = i->idle_prev; else t->idle_tail = i->idle_prev;
  i->idle_prev = i->idle_next = NULL;
  i->idle = 0;
}

static void em__idle_arm(etype_t *t) {
  if (!t->idle_head) { timer_cancel(&t->idle_timer); return; }
  uint64_t due = t->idle_head->idle_since + t->max_idle_ms;
  if (!timer_pending(&t->idle_timer) || t->idle_timer.node.due != due) timer_add(&t->idle_timer, due);
}

static void em__idle_add(inst_t *i) {
  etype_t *t = i->type;
  if (i->idle || i->keep_alive) return;
  i->idle = 1;
  i->idle_since = sched_now();
  i->idle_prev = t->idle_tail;
  i->idle_next = NULL;
  if (t->idle_tail) t->idle_tail->idle_next = i; else t->idle_head = i;
  t->idle_tail = i;
  if (!timer_pending(&t->idle_timer)) em__idle_arm(t);
}

static void em__destroy(inst_t *i) {
  etype_t *t = i->type;
  em__idle_remove(i);
  htab_remove(&t->instances, &i->node);
  if (i->handlers_ref != LUA_NOREF || i->ctx_ref != LUA_NOREF) host_release_instance(i);
  if (i->state == INST_READY) t->active--;
  free(i);
}

static void em__passivate(inst_t *i) {
  etype_t *t = i->type;
  t->passivations++;
  log_debug("passivating %s/%.*s after %llu ms idle", t->name, (int)i->id_len, i->id,
            (unsigned long long)t->max_idle_ms);
  em__destroy(i);
}

static void em__idle_fire(timer_entry_t *te) {
  etype_t *t = (etype_t *)((char *)te - offsetof(etype_t, idle_timer));
  uint64_t now = sched_now();
  while (t->idle_head && t->idle_head->idle_since + t->max_idle_ms <= now) {
    inst_t *i = t->idle_head;
    if (i->ready.queued) em__idle_remove(i); /* its pump will run, and re-add it if still idle */
    else em__passivate(i);
  }
  em__idle_arm(t);
}

static void em__pump(sched_item_t *it);

static void em__schedule(inst_t *i) { sched_push(&i->ready, em__pump); }

/* Starts whatever the instance can start now. */
static void em__pump(sched_item_t *it) {
  inst_t *i = (inst_t *)((char *)it - offsetof(inst_t, ready));
  etype_t *t = i->type;
  if (i->state == INST_NEW) {
    if (!i->mb_head) { em__destroy(i); return; }
    i->state = INST_ACTIVATING;
    t->activations++;
    host_activate(i, NULL, 0);
    return;
  }
  if (i->state != INST_READY) return;
  while (i->running < t->concurrency && i->mb_head) {
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
    host_handle(i, m); /* may finish at once and call em_handled */
  }
  if (i->running == 0 && !i->mb_head) em__idle_add(i);
}

int em_deliver(msg_t *m) {
  etype_t *t = m->type;
  uint64_t h = hash_bytes(m->id, m->id_len);
  inst_t *i = (inst_t *)htab_find(&t->instances, h, em__eq, m->id, m->id_len);
  if (!i) {
    i = calloc(1, sizeof *i + m->id_len + 1);
    if (!i) return -ENOMEM;
    memcpy(i->id, m->id, m->id_len);
    i->id_len = m->id_len;
    i->type = t;
    i->node.hash = h;
    i->handlers_ref = i->ctx_ref = LUA_NOREF;
    i->shard = hash_shard(m->id, m->id_len, em_shards);
    if (htab_insert(&t->instances, &i->node) != 0) { free(i); return -ENOMEM; }
  } else if (i->mb_len >= t->mailbox && !(m->flags & MSG_PERSISTED)) {
    return -EBUSY;
  }
  m->next = NULL;
  m->enqueued_at = sched_now();
  if (i->mb_tail) i->mb_tail->next = m; else i->mb_head = m;
  i->mb_tail = m;
  i->mb_len++;
  t->queued++;
  em__idle_remove(i);
  em__schedule(i);
  return 0;
}

void em_activated(inst_t *i, const char *error) {
  etype_t *t = i->type;
  if (error) {
    /* Every waiting message learns why; the next message tries again. */
    char msg[1536];
    snprintf(msg, sizeof msg, "activating %s/%.*s failed: %s", t->name, (int)(i->id_len > 64 ? 64 : i->id_len),
             i->id, error);
    size_t len;
    char *body = reply_error_body(REPLY_DEFECT, NULL, msg, &len);
    while (i->mb_head) {
      msg_t *m = i->mb_head;
      i->mb_head = m->next;
      t->queued--;
      t->outcomes[REPLY_DEFECT]++;
      msg_finish(m, REPLY_DEFECT, body, len);
    }
    free(body);
    i->mb_tail = NULL;
    i->mb_len = 0;
    em__destroy(i);
    return;
  }
  i->state = INST_READY;
  t->active++;
  em__schedule(i);
}

void em_handled(inst_t *i) {
  i->running--;
  i->type->running--;
  if (i->mb_head) em__schedule(i);
  else if (i->running == 0) em__idle_add(i);
}

void em_keep_alive(etype_t *t, const char *id, size_t len, int on) {
  inst_t *i = (inst_t *)htab_find(&t->instances, hash_bytes(id, len), em__eq, id, len);
  if (!i) return;
  i->keep_alive = on ? 1 : 0;
  if (on) em__idle_remove(i);
  else if (i->running == 0 && !i->mb_head && i->state == INST_READY) em__idle_add(i);
}

void em_stop_all(void) {
  for (etype_t *t = host_types(); t; t = t->next) {
    timer_cancel(&t->idle_timer);
    size_t it;
    htab_node_t *n = htab_first(&t->instances, &it);
    while (n) {
      inst_t *i = (inst_t *)n;
      n = htab_next(&t->instances, n, &it);
      while (i->mb_head) {
        msg_t *m = i->mb_head;
        i->mb_head = m->next;
        t->queued--;
        msg_free(m);
      }
      i->mb_tail = NULL;
      if (i->running == 0 && i->state != INST_ACTIVATING && !i->ready.queued) em__destroy(i);
    }
  }
}
