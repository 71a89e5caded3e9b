/* clock.c - the real and the virtual clock (see clock.h). */
#include "loop/clock.h"

#include <stddef.h>
#include <time.h>

#include "loop/sched.h"

static uint64_t clock__uv_now(void *ctx) { return uv_now((uv_loop_t *)ctx); }

static uint64_t clock__mono_fresh(void *ctx) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t clock__wall(void *ctx) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void clock_real_init(lclock_t *c, uv_loop_t *loop) {
  c->ctx = loop;
  c->mono_ms = clock__uv_now;
  c->mono_fresh_ms = clock__mono_fresh;
  c->wall_ms = clock__wall;
  c->is_virtual = 0;
}

static uint64_t clock__v_mono(void *ctx) { return ((vclock_t *)ctx)->mono; }

static uint64_t clock__v_wall(void *ctx) {
  vclock_t *v = ctx;
  return v->wall_start + v->mono;
}

void clock_virtual_init(vclock_t *v, uint64_t wall_start_ms) {
  v->mono = 0;
  v->wall_start = wall_start_ms;
  v->clock.ctx = v;
  v->clock.mono_ms = clock__v_mono;
  v->clock.mono_fresh_ms = clock__v_mono;
  v->clock.wall_ms = clock__v_wall;
  v->clock.is_virtual = 1;
}

void clock_advance(vclock_t *v, sched_t *s, uint64_t ms) {
  uint64_t target = v->mono + ms;
  if (s && sched_clock(s) == &v->clock) {
    /* One timer at a time, the clock at its due instant, so a timer that
     * re-arms itself within the window fires again in order. */
    uint64_t due;
    while (sched_next_due(s, &due) && due <= target) {
      if (due > v->mono) v->mono = due;
      sched_fire_due(s);
    }
  }
  v->mono = target;
}
