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
void sched_close(void);

#endif
