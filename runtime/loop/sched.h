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

void sched_init(uv_loop_t *loop);
uv_loop_t *sched_loop(void);
/* Queues it to run once, soon; queuing an already queued item does nothing. */
void sched_push(sched_item_t *it, sched_cb run);
/* Runs everything queued now (also used by shutdown). */
void sched_drain(void);

typedef struct timer_entry_s timer_entry_t;
typedef void (*timer_cb)(timer_entry_t *t);
struct timer_entry_s {
  heap_node_t node;
  timer_cb fire;
};

void timer_entry_init(timer_entry_t *t, timer_cb fire);
/* Fires at loop time `due_ms` (see sched_now); re-adding moves it. */
void timer_add(timer_entry_t *t, uint64_t due_ms);
void timer_cancel(timer_entry_t *t);
int timer_pending(const timer_entry_t *t);
uint64_t sched_now(void);
/* Wall clock, milliseconds since the epoch. */
uint64_t sched_wall_ms(void);
/* Monotonic ms read now, not the loop turn's cached time (the lease check). */
uint64_t sched_mono_fresh_ms(void);
/* The clock the scheduler runs on: the real one from sched_init until
 * sched_set_clock(c) (c outlives the scheduler; a virtual clock's timers
 * then fire only from clock_advance). */
void sched_set_clock(const lclock_t *c);
const lclock_t *sched_clock(void);
/* For a virtual clock: the earliest pending timer's due time (0 when none),
 * and firing every timer due at the clock's time now. */
int sched_next_due(uint64_t *due);
void sched_fire_due(void);
void sched_close(void);

#endif
