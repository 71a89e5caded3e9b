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

typedef struct side_s {
  const char *name;
  runtime_t *rt;
  uv_thread_t thread;
  int rc;
} side_t;

static void two__run(void *arg) {
  side_t *s = arg;
  s->rc = runtime_run(s->rt);
}

/* A runtime for dir, configured as `luster run DIR --http 127.0.0.1:0
 * --storage memory --no-reload` would be (defaults and LUSTER_* included).
 * cfg must outlive it. */
static runtime_t *two__new(config_t *cfg, const char *dir) {
  char *argv[] = {"two_runtimes", "run", (char *)dir, "--http", "127.0.0.1:0", "--storage", "memory",
                  "--no-reload", NULL};
  if (config_parse(cfg, "run", 8, argv) != 0) return NULL;
  cfg->dir = cfg->args[0];
  config_storage_t kind;
  if (config_check_run(cfg, &kind) != 0) return NULL;
  char err[1024];
  runtime_t *rt = runtime_new(cfg, err, sizeof err);
  if (!rt) fprintf(stderr, "two_runtimes: %s: %s\n", dir, err);
  return rt;
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
  config_t cfgs[2]; /* outlive their runtimes: main's whole run */
  side_t sides[2] = {{.name = "a"}, {.name = "b"}};
  printf("pid %d\n", (int)uv_os_getpid());
  for (int i = 0; i < n; i++) {
    sides[i].rt = two__new(&cfgs[i], argv[1 + i]);
    if (!sides[i].rt) {
      if (i) runtime_free(sides[0].rt);
      return 1;
    }
    printf("runtime %s port %d\n", sides[i].name, runtime_http_port(sides[i].rt));
  }
  fflush(stdout);
  int rc = 0, started = 0;
  while (started < n && uv_thread_create(&sides[started].thread, two__run, &sides[started]) == 0) started++;
  if (started < n) {
    fprintf(stderr, "two_runtimes: cannot start a thread\n");
    rc = 1;
  } else {
    printf("running\n");
    fflush(stdout);
    two__wait_stdin();
  }
  for (int i = 0; i < started; i++) runtime_stop(sides[i].rt);
  for (int i = 0; i < n; i++) {
    if (i < started) uv_thread_join(&sides[i].thread);
    if (sides[i].rc != 0) rc = 1;
    runtime_free(sides[i].rt);
  }
  log_info("two_runtimes: %d runtime%s stopped", n, n == 1 ? "" : "s");
  printf("stopped\n");
  fflush(stdout);
  return rc;
}
