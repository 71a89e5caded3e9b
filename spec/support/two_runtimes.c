/* two_runtimes.c - two runtimes in one process, each on a thread of its own
 * (admin/runtime.h), for spec/runtimes_spec.lua.
 *
 * Usage: two_runtimes DIR_A [DIR_B]. Each runtime serves its script
 * directory on memory storage and a free loopback port. Prints "pid N", then
 * one line per runtime, "runtime a port N" (and "runtime b port N"), then
 * "running"; stops them all (runtime_stop, from this thread) on a line "stop"
 * or at the end of stdin, joins their threads, frees them, prints "stopped"
 * and exits 0 (1 when a runtime cannot start or does not run cleanly, 2 on
 * bad usage). With one directory it checks the harness itself. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "admin/runtime.h"
#include "cli/config.h"
#include "loop/log.h"

/* One runtime and its thread. The thread builds the runtime and runs it:
 * the host's CPU-time budget timer counts the CPU time of the thread that
 * creates the Lua states, so that must be the one that runs them. */
typedef struct side_s {
  const char *name, *dir;
  config_t cfg; /* outlives its runtime: main's whole run */
  runtime_t *rt; /* NULL when it could not start */
  uv_thread_t thread;
  uv_sem_t ready; /* posted once rt is built (or not) */
  int rc;
} side_t;

/* A runtime for s->dir, configured as `luster run DIR --http 127.0.0.1:0
 * --storage memory --no-reload` would be (defaults and LUSTER_* included). */
static runtime_t *two__new(side_t *s) {
  char *argv[] = {"two_runtimes", "run", (char *)s->dir, "--http", "127.0.0.1:0", "--storage", "memory",
                  "--no-reload", NULL};
  if (config_parse(&s->cfg, "run", 8, argv) != 0) return NULL;
  s->cfg.dir = s->cfg.args[0];
  config_storage_t kind;
  if (config_check_run(&s->cfg, &kind) != 0) return NULL;
  char err[1024];
  runtime_t *rt = runtime_new(&s->cfg, err, sizeof err);
  if (!rt) fprintf(stderr, "two_runtimes: %s: %s\n", s->dir, err);
  return rt;
}

static void two__thread(void *arg) {
  side_t *s = arg;
  s->rt = two__new(s);
  s->rc = s->rt ? 0 : 1;
  uv_sem_post(&s->ready);
  if (s->rt) s->rc = runtime_run(s->rt);
}

/* Until a line "stop" or the end of stdin. */
static void two__wait_stdin(void) {
  char line[256];
  while (fgets(line, sizeof line, stdin))
    if (strncmp(line, "stop", 4) == 0 && (line[4] == '\n' || line[4] == '\0')) return;
}

int main(int argc, char **argv) {
  if (argc != 2 && argc != 3) {
    fprintf(stderr, "usage: two_runtimes DIR_A [DIR_B]\n");
    return 2;
  }
  int n = argc - 1;
  signal(SIGPIPE, SIG_IGN); /* process-wide: a client gone mid-answer is an error return, not a signal */
  side_t sides[2] = {{.name = "a"}, {.name = "b"}};
  printf("pid %d\n", (int)uv_os_getpid());
  int rc = 0, started = 0;
  for (; started < n; started++) {
    side_t *s = &sides[started];
    s->dir = argv[1 + started];
    if (uv_sem_init(&s->ready, 0) != 0 || uv_thread_create(&s->thread, two__thread, s) != 0) {
      fprintf(stderr, "two_runtimes: cannot start a thread\n");
      rc = 1;
      break;
    }
    uv_sem_wait(&s->ready);
    if (!s->rt) {
      rc = 1;
      started++; /* its thread has ended: joined below */
      break;
    }
    printf("runtime %s port %d\n", s->name, runtime_http_port(s->rt));
  }
  if (rc == 0) {
    printf("running\n");
    fflush(stdout);
    two__wait_stdin();
  }
  for (int i = 0; i < started; i++)
    if (sides[i].rt) runtime_stop(sides[i].rt);
  for (int i = 0; i < started; i++) {
    uv_thread_join(&sides[i].thread);
    uv_sem_destroy(&sides[i].ready);
    if (sides[i].rc != 0) rc = 1;
    runtime_free(sides[i].rt); /* after its run: only memory is left to release */
  }
  log_info("two_runtimes: %d runtime%s stopped", n, n == 1 ? "" : "s");
  printf("stopped\n");
  fflush(stdout);
  return rc;
}
