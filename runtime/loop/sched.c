/* sched.c - ready queue (drained from a uv_idle handle) and a heap of
 * deadlines behind one uv_timer. */
#include "loop/sched.h"

#include <stddef.h>
#include <stdlib.h>

#include "loop/log.h"

static uv_loop_t *sched_uv;
static uv_idle_t sched_idle;
static sched_item_t *sched_head, *sched_tail;
static uv_timer_t sched_timer;
static heap_t sched_heap;
static lclock_t sched_real_clock;
static const lclock_t *sched_clk;

/* How many items one idle callback runs before letting the loop poll for I/O:
 * large enough to amortise the loop turn, small enough that a flood of local
 * calls cannot starve the HTTP sockets. */
#define SCHED_RUN_BATCH 4096

static void sched__idle_cb(uv_idle_t *h) {
  (void)h;
  for (int n = 0; n < SCHED_RUN_BATCH && sched_head; n++) {
    sched_item_t *it = sched_head;
    sched_head = it->next;
    if (!sched_head) sched_tail = NULL;
    it->next = NULL;
    it->queued = 0;
    it->run(it);
  }
  if (!sched_head) uv_idle_stop(&sched_idle);
}

void sched_drain(void) {
  while (sched_head) sched__idle_cb(&sched_idle);
}

void sched_push(sched_item_t *it, sched_cb run) {
  if (it->queued) return;
  it->queued = 1;
  it->run = run;
  it->next = NULL;
  if (sched_tail) sched_tail->next = it; else sched_head = it;
  sched_tail = it;
  if (!uv_is_active((uv_handle_t *)&sched_idle)) uv_idle_start(&sched_idle, sched__idle_cb);
}

uv_loop_t *sched_loop(void) { return sched_uv; }

uint64_t sched_now(void) { return sched_clk->mono_ms(sched_clk->ctx); }
uint64_t sched_mono_fresh_ms(void) { return sched_clk->mono_fresh_ms(sched_clk->ctx); }
const lclock_t *sched_clock(void) { return sched_clk; }

static void sched__arm(void);
void sched_set_clock(const lclock_t *c) {
  sched_clk = c ? c : &sched_real_clock;
  sched__arm();
}

uint64_t sched_wall_ms(void) {
  /* Before sched_init (request ids made early) the real clock answers. */
  if (!sched_clk) {
    lclock_t c;
    clock_real_init(&c, NULL);
    return c.wall_ms(c.ctx);
  }
  return sched_clk->wall_ms(sched_clk->ctx);
}

static void sched__timer_cb(uv_timer_t *h);

static void sched__arm(void) {
  heap_node_t *top = heap_top(&sched_heap);
  if (!top || sched_clk->is_virtual) { uv_timer_stop(&sched_timer); return; }
  uint64_t now = sched_now();
  uv_timer_start(&sched_timer, sched__timer_cb, top->due > now ? top->due - now : 0, 0);
}

static void sched__timer_cb(uv_timer_t *h) {
  (void)h;
  uv_update_time(sched_uv);
  sched_fire_due();
}

int sched_next_due(uint64_t *due) {
  heap_node_t *top = heap_top(&sched_heap);
  *due = top ? top->due : 0;
  return top != NULL;
}

void sched_fire_due(void) {
  uint64_t now = sched_now();
  heap_node_t *top;
  while ((top = heap_top(&sched_heap)) && top->due <= now) {
    heap_pop(&sched_heap);
    timer_entry_t *t = (timer_entry_t *)((char *)top - offsetof(timer_entry_t, node));
    t->fire(t);
  }
  sched__arm();
}

void timer_entry_init(timer_entry_t *t, timer_cb fire) {
  t->node.idx = HEAP_NONE;
  t->node.due = 0;
  t->fire = fire;
}

int timer_pending(const timer_entry_t *t) { return t->node.idx != HEAP_NONE; }

void timer_add(timer_entry_t *t, uint64_t due_ms) {
  heap_node_t *before = heap_top(&sched_heap);
  uint64_t before_due = before ? before->due : 0;
  heap_remove(&sched_heap, &t->node);
  t->node.due = due_ms;
  if (heap_push(&sched_heap, &t->node) != 0) {
    log_error("out of memory queuing a timer");
    abort();
  }
  heap_node_t *after = heap_top(&sched_heap);
  if (after != before || after->due != before_due) sched__arm();
}

void timer_cancel(timer_entry_t *t) {
  if (t->node.idx == HEAP_NONE) return;
  int was_top = heap_top(&sched_heap) == &t->node;
  heap_remove(&sched_heap, &t->node);
  if (was_top) sched__arm();
}

void sched_init(uv_loop_t *loop) {
  sched_uv = loop;
  clock_real_init(&sched_real_clock, loop);
  sched_clk = &sched_real_clock;
  uv_idle_init(loop, &sched_idle);
  uv_timer_init(loop, &sched_timer);
  heap_init(&sched_heap);
}

void sched_close(void) {
  uv_idle_stop(&sched_idle);
  uv_timer_stop(&sched_timer);
  uv_close((uv_handle_t *)&sched_idle, NULL);
  uv_close((uv_handle_t *)&sched_timer, NULL);
  heap_free(&sched_heap);
}
