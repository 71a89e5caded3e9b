/* main.c - the luster command: run, check, call, status, where, test, new. */
#include <execinfo.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "admin/runtime.h"
#include "admin/wiring.h"
#include "cli/client.h"
#include "cli/config.h"
#include "cli/new.h"
#include "cli/test_cmd.h"
#include "entity/entity.h"
#include "host/host.h"
#include "loop/log.h"
#include "loop/sched.h"

/* A runner that crashes says so, with the stack, on stderr (its log), before
 * the signal's default action ends it. Sanitizer builds keep their own
 * reports. */
#if !defined(__SANITIZE_ADDRESS__)
static void main__fatal(int sig) {
  char head[96];
  int n = snprintf(head, sizeof head, "luster: fatal signal %d (%s); stack:\n", sig, strsignal(sig));
  if (n > 0 && write(STDERR_FILENO, head, (size_t)n) < 0) n = 0;
  void *frames[64];
  int depth = backtrace(frames, 64);
  backtrace_symbols_fd(frames, depth, STDERR_FILENO);
  signal(sig, SIG_DFL);
  raise(sig);
}
#endif

static void main__fatal_handlers(void) {
#if !defined(__SANITIZE_ADDRESS__)
  void *warm[1];
  backtrace(warm, 1); /* loads what backtrace needs now, not inside a crash */
  static const int sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = main__fatal;
    sa.sa_flags = SA_RESETHAND | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(sigs[i], &sa, NULL);
  }
#endif
}

/* The CLI's SIGTERM and SIGINT, on the runtime's loop: the first stops the
 * runtime gracefully, a second exits at once. */
typedef struct main_signals_s {
  runtime_t *rt;
  uint64_t shutdown_timeout_ms;
  int seen;
  uv_signal_t term, intr;
} main_signals_t;

static void main__signal(uv_signal_t *s, int signum) {
  main_signals_t *ms = s->data;
  if (ms->seen++) {
    log_warn("second %s: exiting now", signum == SIGINT ? "SIGINT" : "SIGTERM");
    exit(1);
  }
  log_info("%s: finishing in-flight messages (at most %llu ms), then exiting",
           signum == SIGINT ? "SIGINT" : "SIGTERM", (unsigned long long)ms->shutdown_timeout_ms);
  runtime_stop(ms->rt);
}

/* The loop does not wait for them; the runtime closes them when it stops. */
static void main__signals(main_signals_t *ms, runtime_t *rt, const config_t *cfg) {
  uv_loop_t *loop = runtime_loop(rt);
  memset(ms, 0, sizeof *ms);
  ms->rt = rt;
  ms->shutdown_timeout_ms = cfg->shutdown_timeout_ms;
  uv_signal_init(loop, &ms->term);
  uv_signal_init(loop, &ms->intr);
  ms->term.data = ms->intr.data = ms;
  uv_signal_start(&ms->term, main__signal, SIGTERM);
  uv_signal_start(&ms->intr, main__signal, SIGINT);
  uv_unref((uv_handle_t *)&ms->term);
  uv_unref((uv_handle_t *)&ms->intr);
}

static int cmd_run(config_t *cfg) {
  if (cfg->nargs != 1) {
    fprintf(stderr, "luster run: expected one script directory, e.g. 'luster run examples/counter'\n");
    return 2;
  }
  cfg->dir = cfg->args[0];
  config_storage_t kind;
  if (config_check_run(cfg, &kind) != 0) return 2;
  signal(SIGPIPE, SIG_IGN);
  main__fatal_handlers();
  char err[1024];
  runtime_t *rt = runtime_new(cfg, err, sizeof err);
  if (!rt) {
    fprintf(stderr, "luster run: %s\n", err);
    return 1;
  }
  main_signals_t ms; /* lives until the runtime is freed, which closes its handles */
  main__signals(&ms, rt, cfg);
  int rc = runtime_run(rt);
  runtime_free(rt);
  return rc;
}

static int cmd_check(config_t *cfg) {
  if (cfg->nargs != 1) {
    fprintf(stderr, "luster check: expected one script directory\n");
    return 2;
  }
  cfg->dir = cfg->args[0];
  if (config_check_common(cfg) != 0) return 2;
  /* Loads the scripts on a scheduler of its own; nothing runs. */
  sched_t sched;
  host_config_t hc;
  sched_init(&sched, uv_default_loop());
  wiring_t w = {0}; /* no cluster: nothing is placed */
  runtime_host_config(cfg, &sched, &w, &hc);
  log_set_level(LOG_OFF); /* every problem is printed below, once */
  em_t *em = em_new(&sched, hc.shards);
  if (!em) return 1;
  hc.em = em_host_ops(em);
  host_t *host = host_new(&hc);
  if (!host) return 1;
  em_host_t eh = em_host_default(host);
  em_set_host(em, &eh);
  int failed = host_load_dir(host);
  if (failed < 0) {
    fprintf(stderr, "luster check: cannot read script directory '%s': %s\n", cfg->dir, strerror(-failed));
    return 1;
  }
  int n = 0;
  for (script_t *s = host_scripts(host); s; s = s->next) {
    n++;
    if (s->error) {
      printf("FAIL %s\n     %s\n", s->file, s->error);
      continue;
    }
    printf("ok   %s", s->file);
    const char *sep = "  (";
    for (etype_t *t = s->types; t; t = t->snext) {
      printf("%s%s %s", sep, t->kind == DEF_ENTITY ? "entity" : t->kind == DEF_SINGLETON ? "singleton" : "cron",
             t->name);
      sep = ", ";
    }
    printf("%s\n", s->types ? ")" : "");
  }
  printf("%d script%s, %d failed\n", n, n == 1 ? "" : "s", failed);
  host_cancel_tasks(host); /* singletons the load started; none ran */
  sched_drain(&sched);
  host_free(host);
  em_free(em);
  sched_close(&sched);
  uv_run(uv_default_loop(), UV_RUN_DEFAULT);
  return failed ? 1 : (n == 0 ? 1 : 0);
}

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    config_usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const char *cmd = argv[1];
  if (strcmp(cmd, "test") == 0) return test_main(argc - 2, argv + 2); /* busted's options, not luster's flags */
  if (strcmp(cmd, "new") == 0) return new_main(argc - 2, argv + 2); /* no runner flags */
  config_t cfg;
  if (config_parse(&cfg, cmd, argc, argv) != 0) return 2;
  log_level_t lvl;
  if (log_parse_level(cfg.log_level, &lvl) != 0) {
    fprintf(stderr, "luster: --log-level must be debug, info, warn or error, got '%s'\n", cfg.log_level);
    return 2;
  }
  log_set_level(lvl);
  if (strcmp(cmd, "run") == 0) return cmd_run(&cfg);
  if (strcmp(cmd, "check") == 0) return cmd_check(&cfg);
  if (strcmp(cmd, "call") == 0) return client_call(&cfg);
  if (strcmp(cmd, "status") == 0) return client_status(&cfg);
  if (strcmp(cmd, "where") == 0) return client_where(&cfg);
  fprintf(stderr, "luster: unknown command '%s'\n", cmd);
  config_usage(stderr);
  return 2;
}
