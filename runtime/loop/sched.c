/* sched.c - ready queue (drained from a uv_idle handle) and a heap of
 * deadlines behind one uv_timer. */
#include "loop/sched.h"

#include <stddef.h>
#include <stdlib.h>

#include "loop/log.h"


/* How many items one idle callback runs before letting the loop poll for I/O:
 * large enough to amortise the loop turn, small enough that a flood of local
 * calls cannot starve the HTTP sockets. */
#define SCHED_RUN_BATCH 4096

static void sched__idle_cb(uv_idle_t *h) {
  sched_t *s = h->data;
  for (int n = 0; n < SCHED_RUN_BATCH && s->head; n++) {
    sched_item_t *it = s->head;
    s->head = it->next;
    if (!s->head) s->tail = NULL;
    it->next = NULL;
    it->queued = 0;
    it->run(it);
  }
  if (!s->head) uv_idle_stop(&s->idle);
}

void sched_drain(sched_t *s) {
  while (s->head) sched__idle_cb(&s->idle);
}

void sched_push(sched_t *s, sched_item_t *it, sched_cb run) {
  if (it->queued) return;
  it->queued = 1;
  it->run = run;
  it->next = NULL;
  if (s->tail) s->tail->next = it; else s->head = it;
  s->tail = it;
  if (!uv_is_active((uv_handle_t *)&s->idle)) uv_idle_start(&s->idle, sched__idle_cb);
}

uv_loop_t *sched_loop(sched_t *s) { return s->uv; }

uint64_t sched_now(const sched_t *s) { return s->clk->mono_ms(s->clk->ctx); }
uint64_t sched_mono_fresh_ms(const sched_t *s) { return s->clk->mono_fresh_ms(s->clk->ctx); }
const lclock_t *sched_clock(const sched_t *s) { return s->clk; }

static void sched__arm(sched_t *s);
void sched_set_clock(sched_t *s, const lclock_t *c) {
  s->clk = c ? c : &s->real_clock;
  sched__arm(s);
}

uint64_t sched_wall_ms(const sched_t *s) {
  /* Without a scheduler (request ids made early) the real clock answers. */
  if (!s || !s->clk) {
    lclock_t c;
    clock_real_init(&c, NULL);
    return c.wall_ms(c.ctx);
  }
  return s->clk->wall_ms(s->clk->ctx);
}

static void sched__timer_cb(uv_timer_t *h);

static void sched__arm(sched_t *s) {
  heap_node_t *top = heap_top(&s->heap);
  if (!top || s->clk->is_virtual) { uv_timer_stop(&s->timer); return; }
  uint64_t now = sched_now(s);
  uv_timer_start(&s->timer, sched__timer_cb, top->due > now ? top->due - now : 0, 0);
}

static void sched__timer_cb(uv_timer_t *h) {
  sched_t *s = h->data;
  uv_update_time(s->uv);
  sched_fire_due(s);
}

int sched_next_due(const sched_t *s, uint64_t *due) {
  heap_node_t *top = heap_top(&s->heap);
  *due = top ? top->due : 0;
  return top != NULL;
}

void sched_fire_due(sched_t *s) {
  uint64_t now = sched_now(s);
  heap_node_t *top;
  while ((top = heap_top(&s->heap)) && top->due <= now) {
    heap_pop(&s->heap);
    timer_entry_t *t = (timer_entry_t *)((char *)top - offsetof(timer_entry_t, node));
    t->fire(t);
  }
  sched__arm(s);
}

void timer_entry_init(timer_entry_t *t, sched_t *s, timer_cb fire) {
  t->sched = s;
  t->node.idx = HEAP_NONE;
  t->node.due = 0;
  t->fire = fire;
}

int timer_pending(const timer_entry_t *t) { return t->node.idx != HEAP_NONE; }

void timer_add(timer_entry_t *t, uint64_t due_ms) {
  sched_t *s = t->sched;
  heap_node_t *before = heap_top(&s->heap);
  uint64_t before_due = before ? before->due : 0;
  heap_remove(&s->heap, &t->node);
  t->node.due = due_ms;
  if (heap_push(&s->heap, &t->node) != 0) {
    log_error("out of memory queuing a timer");
    abort();
  }
  heap_node_t *after = heap_top(&s->heap);
  if (after != before || after->due != before_due) sched__arm(s);
}

void timer_cancel(timer_entry_t *t) {
  if (t->node.idx == HEAP_NONE) return;
  sched_t *s = t->sched;
  int was_top = heap_top(&s->heap) == &t->node;
  heap_remove(&s->heap, &t->node);
  if (was_top) sched__arm(s);
}

void sched_init(sched_t *s, uv_loop_t *loop) {
  s->uv = loop;
  s->head = s->tail = NULL;
  clock_real_init(&s->real_clock, loop);
  s->clk = &s->real_clock;
  uv_idle_init(loop, &s->idle);
  uv_timer_init(loop, &s->timer);
  s->idle.data = s;
  s->timer.data = s;
  heap_init(&s->heap);
}

void sched_close(sched_t *s) {
  uv_idle_stop(&s->idle);
  uv_timer_stop(&s->timer);
  uv_close((uv_handle_t *)&s->idle, NULL);
  uv_close((uv_handle_t *)&s->timer, NULL);
  heap_free(&s->heap);
}
