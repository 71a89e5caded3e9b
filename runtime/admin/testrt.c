/* testrt.c - one in-process runtime for `luster test` (testrt.h): a private
 * copy of the scripts, a runtime on a virtual clock, and a loop driven from
 * the spec's calls, skipping to the next timer whenever nothing can run. */
#include "admin/testrt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "admin/gateway.h"
#include "admin/runtime.h"
#include "cli/config.h"
#include "cluster/durable.h"
#include "cluster/router.h"
#include "entity/entity.h"
#include "host/host.h"
#include "loop/clock.h"
#include "loop/log.h"
#include "loop/sched.h"
#include "net/http.h"

struct testrt_s {
  config_t cfg;
  char tmp[4096];     /* the temporary directory, removed by testrt_free */
  char dir[4200];     /* tmp/app: the copy of the scripts */
  char storage[4200]; /* "memory" or sqlite:tmp/luster.db */
  vclock_t clock;     /* outlives every runtime made on it */
  runtime_t *rt;
  buf_t logs;
};

/* --- the private copy ---------------------------------------------------- */

static int testrt__copy_file(const char *from, const char *to, char *err, size_t errlen) {
  FILE *in = fopen(from, "rb");
  FILE *out = in ? fopen(to, "wb") : NULL;
  int rc = in && out ? 0 : -1;
  char chunk[16384];
  size_t n;
  while (rc == 0 && (n = fread(chunk, 1, sizeof chunk, in)) > 0)
    if (fwrite(chunk, 1, n, out) != n) rc = -1;
  if (in && ferror(in)) rc = -1;
  if (out && fclose(out) != 0) rc = -1;
  if (in) fclose(in);
  if (rc != 0) snprintf(err, errlen, "cannot copy %s to %s: %s", from, to, strerror(errno));
  return rc;
}

/* Copies the directory tree `from` into the existing `to`: every file but
 * dot files and, at the top, spec/ (the specs are not scripts). */
static int testrt__copy_dir(const char *from, const char *to, int top, char *err, size_t errlen) {
  DIR *d = opendir(from);
  if (!d) {
    snprintf(err, errlen, "cannot read directory '%s': %s", from, strerror(errno));
    return -1;
  }
  int rc = 0;
  struct dirent *e;
  while (rc == 0 && (e = readdir(d))) {
    if (e->d_name[0] == '.' || (top && strcmp(e->d_name, "spec") == 0)) continue;
    char src[4096], dst[4096];
    struct stat st;
    if ((size_t)snprintf(src, sizeof src, "%s/%s", from, e->d_name) >= sizeof src ||
        (size_t)snprintf(dst, sizeof dst, "%s/%s", to, e->d_name) >= sizeof dst || stat(src, &st) != 0)
      continue;
    if (S_ISDIR(st.st_mode)) {
      rc = mkdir(dst, 0700) == 0 ? testrt__copy_dir(src, dst, 0, err, errlen) : -1;
      if (rc != 0 && !*err) snprintf(err, errlen, "cannot create %s: %s", dst, strerror(errno));
    } else if (S_ISREG(st.st_mode)) {
      rc = testrt__copy_file(src, dst, err, errlen);
    }
  }
  closedir(d);
  return rc;
}

static int testrt__rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

/* --- driving the loop ---------------------------------------------------- */

/* Runs what can run without moving the clock: the ready queue, and on
 * SQLite the writer thread's commits (real I/O, awaited). Stops early once
 * *done is set (done may be NULL). */
static void testrt__settle(testrt_t *t, const int *done) {
  sched_t *s = runtime_sched(t->rt);
  uv_loop_t *loop = sched_loop(s);
  for (;;) {
    uv_run(loop, UV_RUN_NOWAIT);
    if (done && *done) return;
    if (s->head) continue;
    if (durable_busy(runtime_durable(t->rt)) > 0) {
      uv_run(loop, UV_RUN_ONCE);
      continue;
    }
    return;
  }
}

/* Moves the clock to the next due timer (firing what is due then); 0 when
 * no timer is pending. */
static int testrt__skip(testrt_t *t, uint64_t limit) {
  sched_t *s = runtime_sched(t->rt);
  uint64_t due;
  if (!sched_next_due(s, &due) || due > limit) return 0;
  clock_advance(&t->clock, s, due > t->clock.mono ? due - t->clock.mono : 0);
  return 1;
}

/* Drives the loop until *done, skipping idle time; -1 when nothing can
 * ever set it (no work, no timer). */
static int testrt__wait(testrt_t *t, const int *done) {
  for (;;) {
    testrt__settle(t, done);
    if (*done) return 0;
    if (!testrt__skip(t, UINT64_MAX)) return -1;
  }
}

void testrt_advance(testrt_t *t, uint64_t ms) {
  uint64_t target = t->clock.mono + ms;
  do testrt__settle(t, NULL);
  while (testrt__skip(t, target));
  clock_advance(&t->clock, runtime_sched(t->rt), target - t->clock.mono);
  testrt__settle(t, NULL);
}

uint64_t testrt_now(const testrt_t *t) { return t->clock.clock.wall_ms(t->clock.clock.ctx); }

/* --- making and ending ----------------------------------------------------- */

static void testrt__log(void *ud, log_level_t lvl, const char *text, size_t len) {
  (void)lvl;
  testrt_t *t = ud;
  buf_add(&t->logs, text, len);
  buf_addc(&t->logs, '\n');
}

/* The settings of `luster run DIR --http none --no-reload` (with the
 * environment's LUSTER_* values for the rest), on the copy. */
static int testrt__config(testrt_t *t, int durable, char *err, size_t errlen) {
  char *argv[] = {"luster", "test", NULL};
  if (config_parse(&t->cfg, "test", 2, argv) != 0) {
    snprintf(err, errlen, "invalid LUSTER_* settings in the environment (see above)");
    return -1;
  }
  snprintf(t->storage, sizeof t->storage, durable ? "sqlite:%s/luster.db" : "memory", t->tmp);
  t->cfg.dir = t->dir;
  t->cfg.http = "none";
  t->cfg.storage = t->storage;
  t->cfg.listen = t->cfg.advertise = NULL;
  t->cfg.admin = "any";
  t->cfg.no_reload = 1;
  config_storage_t kind;
  if (config_check_run(&t->cfg, &kind) != 0) {
    snprintf(err, errlen, "invalid LUSTER_* settings in the environment (see above)");
    return -1;
  }
  return 0;
}

static int testrt__start(testrt_t *t, char *err, size_t errlen) {
  t->rt = runtime_new_on(&t->cfg, &t->clock.clock, err, errlen);
  if (!t->rt) return -1;
  testrt__settle(t, NULL); /* what the load started (singletons) runs up to its first wait */
  return 0;
}

testrt_t *testrt_new(const char *src_dir, int durable, char *err, size_t errlen) {
  testrt_t *t = calloc(1, sizeof *t);
  if (!t) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  buf_init(&t->logs);
  const char *tmpdir = getenv("TMPDIR");
  snprintf(t->tmp, sizeof t->tmp, "%s/luster-test-XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp");
  if (!mkdtemp(t->tmp)) {
    snprintf(err, errlen, "cannot create a temporary directory in %s: %s", tmpdir && *tmpdir ? tmpdir : "/tmp",
             strerror(errno));
    t->tmp[0] = '\0';
    testrt_free(t);
    return NULL;
  }
  snprintf(t->dir, sizeof t->dir, "%s/app", t->tmp);
  *err = '\0';
  lclock_t real;
  clock_real_init(&real, NULL);
  /* The monotonic clock starts past zero, so no deadline is 0 ("unset"). */
  clock_virtual_init(&t->clock, real.wall_ms(NULL) - 1000000);
  t->clock.mono = 1000000;
  log_set_sink(testrt__log, t);
  if (mkdir(t->dir, 0700) != 0 || testrt__copy_dir(src_dir, t->dir, 1, err, errlen) != 0 ||
      testrt__config(t, durable, err, errlen) != 0 || testrt__start(t, err, errlen) != 0) {
    if (!*err) snprintf(err, errlen, "cannot copy '%s': %s", src_dir, strerror(errno));
    testrt_free(t);
    return NULL;
  }
  return t;
}

static void testrt__stop(testrt_t *t) {
  if (!t->rt) return;
  testrt__settle(t, NULL);
  runtime_free(t->rt);
  t->rt = NULL;
}

int testrt_restart(testrt_t *t, char *err, size_t errlen) {
  testrt__stop(t);
  return testrt__start(t, err, errlen);
}

int testrt_durable(const testrt_t *t) { return strcmp(t->storage, "memory") != 0; }

void testrt_free(testrt_t *t) {
  if (!t) return;
  testrt__stop(t);
  log_set_sink(NULL, NULL);
  if (t->tmp[0]) nftw(t->tmp, testrt__rm_one, 16, FTW_DEPTH | FTW_PHYS);
  buf_free(&t->logs);
  free(t);
}

const buf_t *testrt_logs(const testrt_t *t) { return &t->logs; }

/* --- what a spec does ------------------------------------------------------ */

static void testrt__replied(call_t *c, reply_kind_t kind, const char *body, size_t len) {
  testrt_reply_t *out = c->ud;
  out->kind = kind;
  buf_add(&out->body, body, len);
  out->done = 1;
}

void testrt_call(testrt_t *t, const char *type, const char *id, const char *rpc, const char *payload, size_t plen,
                 uint64_t timeout_ms, int discard, testrt_reply_t *out) {
  memset(out, 0, sizeof *out);
  buf_init(&out->body);
  call_t *c = call_new(runtime_sched(t->rt), testrt__replied, out, timeout_ms ? timeout_ms : t->cfg.call_timeout_ms);
  router_send(runtime_gateway(t->rt)->info.router, type, strlen(type), id, strlen(id), rpc, strlen(rpc), payload, plen,
              NULL, 0, discard ? MSG_DISCARD : 0, c);
  testrt__wait(t, &out->done); /* the call's own deadline is a timer: it ends */
}

static int testrt__method(const char *name) {
  for (int m = 0; m < 64; m++) {
    const char *s = http_method_str((enum http_method)m);
    if (strcmp(s, "<unknown>") == 0) break;
    if (strcmp(s, name) == 0) return m;
  }
  return -1;
}

int testrt_http(testrt_t *t, const char *method, const char *path, const char *body, size_t blen, const char *headers,
                size_t hlen, buf_t *resp) {
  int m = testrt__method(method);
  if (m < 0) {
    buf_printf(resp, "unknown HTTP method '%s'", method);
    return -1;
  }
  http_req_t *r = calloc(1, sizeof *r);
  if (!r) abort();
  r->method = m;
  r->complete = 1;
  buf_adds(&r->url, path);
  buf_add(&r->body, body, blen);
  if (headers) buf_add(&r->headers, headers, hlen);
  else buf_adds(&r->headers, "{}");
  gateway_on_request(runtime_gateway(t->rt), r);
  testrt__wait(t, &r->answered);
  if (!r->answered && r->on_abort) r->on_abort(r);
  buf_add(resp, r->resp.data, r->resp.len);
  buf_free(&r->url);
  buf_free(&r->body);
  buf_free(&r->headers);
  buf_free(&r->resp);
  free(r);
  return 0;
}

long testrt_active(testrt_t *t, const char *type, const char *id) {
  etype_t *ty = host_find_type(runtime_host(t->rt), type, strlen(type));
  if (!ty || ty->kind != DEF_ENTITY) return -1;
  if (!id) return (long)ty->active;
  inst_t *i = em_find(ty, id, strlen(id));
  return i && i->state == INST_READY;
}

int testrt_passivate(testrt_t *t, const char *type, const char *id) {
  etype_t *ty = host_find_type(runtime_host(t->rt), type, strlen(type));
  if (!ty || ty->kind != DEF_ENTITY) return -2;
  int rc = em_passivate(ty, id, strlen(id));
  testrt__settle(t, NULL);
  return rc;
}

/* A relative path without "..": writes stay inside the copy. */
static int testrt__safe_path(const char *file) {
  if (!*file || file[0] == '/') return 0;
  for (const char *p = file; *p; p++)
    if (p[0] == '.' && p[1] == '.' && (p == file || p[-1] == '/') && (p[2] == '/' || p[2] == '\0')) return 0;
  return 1;
}

int testrt_write(testrt_t *t, const char *file, const char *src, size_t len, buf_t *report, char *err,
                 size_t errlen) {
  if (!testrt__safe_path(file)) {
    snprintf(err, errlen, "'%s' must be a relative path inside the script directory", file);
    return -1;
  }
  char path[4400];
  snprintf(path, sizeof path, "%s/%s", t->dir, file);
  for (char *p = path + strlen(t->dir) + 1; (p = strchr(p, '/')); p++) { /* parent directories */
    *p = '\0';
    mkdir(path, 0700);
    *p = '/';
  }
  FILE *f = fopen(path, "wb");
  int bad = !f || fwrite(src, 1, len, f) != len;
  if ((f && fclose(f) != 0) || bad) {
    snprintf(err, errlen, "cannot write %s: %s", file, strerror(errno));
    return -1;
  }
  host_reload_report_t rep;
  host_rescan(runtime_host(t->rt), &rep, report);
  testrt__settle(t, NULL);
  return 0;
}
