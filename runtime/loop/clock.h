/* clock.h - the runtime's clock, as a value: monotonic time (the loop's,
 * cached per turn, and a fresh reading for the lease check), wall time, and
 * whether the scheduler's timers need a real timer to wake them.
 *
 * The real clock reads libuv and the OS. The virtual clock moves only when
 * told (clock_advance), so a test can run the scheduler's timers (and
 * everything built on them: deadlines, sleeps, idle passivation, retries)
 * on time it controls: advancing fires every timer that falls due, in order
 * of due time, each with the clock set to its own due instant. */
#ifndef LUSTER_CLOCK_H
#define LUSTER_CLOCK_H

#include <stdint.h>
#include <uv.h>

typedef struct lclock_s lclock_t;
struct lclock_s {
  void *ctx;
  uint64_t (*mono_ms)(void *ctx);       /* the loop's time: timers are due against it */
  uint64_t (*mono_fresh_ms)(void *ctx); /* read now (the lease check: never a cached value) */
  uint64_t (*wall_ms)(void *ctx);       /* milliseconds since the epoch */
  int is_virtual;                       /* timers fire only from clock_advance */
};

/* The OS clock, with loop as the source of the loop's time. */
void clock_real_init(lclock_t *c, uv_loop_t *loop);

/* A clock that only moves on clock_advance; starts at mono 0 and wall
 * `wall_start_ms`. */
typedef struct {
  lclock_t clock;
  uint64_t mono, wall_start;
} vclock_t;
void clock_virtual_init(vclock_t *v, uint64_t wall_start_ms);
/* Moves v forward by ms, firing s's due timers in order when v is s's clock
 * (sched_set_clock; s may be NULL). */
struct sched_s;
void clock_advance(vclock_t *v, struct sched_s *s, uint64_t ms);

#endif
