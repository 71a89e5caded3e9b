/* sched.h - the ready queue and deadline timers of the runner's one loop.
 *
 * Every Lua resume and every reply callback runs from the ready queue, at the
 * top of the loop, never nested inside another handler: a call from entity A
 * to B queues B's message, A yields, the queue runs B, B's reply is queued,
 * the queue resumes A. This keeps C stacks flat and makes ordering explicit. */
#ifndef LUSTER_SCHED_H
#define LUSTER_SCHED_H

#include <stdint.h>
#include <uv.h>

#include "core/heap.h"
#include "loop/clock.h"

typedef struct sched_item_s sched_item_t;
typedef void (*sched_cb)(sched_item_t *it);
struct sched_item_s {
  sched_item_t *next;
  sched_cb run;
  int queued;
};

/* One scheduler per runtime (per uv loop): a value the owner embeds or
 * allocates, initialises with sched_init and passes to everything that
 * queues work or reads the time. Nothing here is process-wide. */
typedef struct sched_s {
  uv_loop_t *uv;
  uv_idle_t idle;
  sched_item_t *head, *tail;
  uv_timer_t timer;
  heap_t heap;
  lclock_t real_clock;
  const lclock_t *clk;
} sched_t;

void sched_init(sched_t *s, uv_loop_t *loop);
uv_loop_t *sched_loop(sched_t *s);
/* Queues it to run once, soon; queuing an already queued item does nothing. */
void sched_push(sched_t *s, sched_item_t *it, sched_cb run);
/* Runs everything queued now (also used by shutdown). */
void sched_drain(sched_t *s);

/* A timer knows its scheduler (set once by timer_entry_init), so arming and
 * cancelling need nothing else. */
typedef struct timer_entry_s timer_entry_t;
typedef void (*timer_cb)(timer_entry_t *t);
struct timer_entry_s {
  heap_node_t node;
  timer_cb fire;
  struct sched_s *sched;
};

void timer_entry_init(timer_entry_t *t, struct sched_s *s, timer_cb fire);
/* Fires at loop time `due_ms` (see sched_now); re-adding moves it. */
void timer_add(timer_entry_t *t, uint64_t due_ms);
void timer_cancel(timer_entry_t *t);
int timer_pending(const timer_entry_t *t);
uint64_t sched_now(const sched_t *s);
/* Wall clock, milliseconds since the epoch (s NULL: the real clock). */
uint64_t sched_wall_ms(const sched_t *s);
/* Monotonic ms read now, not the loop turn's cached time (the lease check). */
uint64_t sched_mono_fresh_ms(const sched_t *s);
/* The clock the scheduler runs on: the real one from sched_init until
 * sched_set_clock(c) (c outlives the scheduler; a virtual clock's timers
 * then fire only from clock_advance). */
void sched_set_clock(sched_t *s, const lclock_t *c);
const lclock_t *sched_clock(const sched_t *s);
/* For a virtual clock: the earliest pending timer's due time (0 when none),
 * and firing every timer due at the clock's time now. */
int sched_next_due(const sched_t *s, uint64_t *due);
void sched_fire_due(sched_t *s);
void sched_close(sched_t *s);

#endif
