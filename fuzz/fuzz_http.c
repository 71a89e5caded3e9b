/* fuzz_http.c - libFuzzer target: bytes on one HTTP connection, through the
 * real net/http.c (http-parser settings, limits, pipelining, 100-continue,
 * timeouts) on the in-memory libuv of fake_uv.c, and each request routed the
 * way admin/gateway.c routes it (url_split, url_segments, url_query_get).
 *
 * Input: byte 0 picks the mode (bit 0: answer requests later and out of
 * order; bit 1: small limits; bits 2-7: read size, 0 = all at once); the
 * rest is what the client sends. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loop/log.h"
#include "core/url.h"
#include "fake_uv.h"
#include "net/http.h"

#define MAX_LATER 256

static http_req_t *later[MAX_LATER];
static int nlater;
static int defer_answers;

static void check(int ok, const char *what) {
  if (!ok) {
    fprintf(stderr, "fuzz_http: invariant broken: %s\n", what);
    abort();
  }
}

static void forget(http_req_t *r) {
  for (int i = 0; i < nlater; i++)
    if (later[i] == r) {
      later[i] = later[--nlater];
      return;
    }
}

/* The gateway's routing, with its buffer sizes; the answer names the route. */
static void route(http_req_t *r, buf_t *out) {
  slice_t path, query;
  check(url_split(r->url.data, r->url.len, &path, &query) == 0, "url_split refused a request URL");
  check(path.ptr >= r->url.data && path.ptr + path.len <= r->url.data + r->url.len, "path outside the URL");
  char store[8192 + 16];
  slice_t seg[8];
  int n = url_segments(path.ptr, path.len, store, sizeof store, seg, 8);
  if (n < 0) {
    buf_adds(out, "{\"error\":\"malformed path\"}");
    return;
  }
  check(n >= 1 && n <= 8, "segment count out of range");
  buf_adds(out, "{\"segments\":[");
  for (int i = 0; i < n; i++) {
    check(seg[i].ptr >= store && seg[i].ptr + seg[i].len < store + sizeof store, "segment outside its buffer");
    check(seg[i].ptr[seg[i].len] == '\0' && strlen(seg[i].ptr) == seg[i].len, "segment not a C string");
    if (i) buf_addc(out, ',');
    buf_add_json_str(out, seg[i].ptr, seg[i].len);
  }
  buf_adds(out, "]");
  static const char *const keys[] = {"timeout", "discard", ""};
  for (int k = 0; k < 3; k++) {
    char v[32];
    int m = url_query_get(query.ptr, query.len, keys[k], v, sizeof v);
    if (m >= 0) {
      check((size_t)m < sizeof v && v[m] == '\0' && strlen(v) == (size_t)m, "query value not a C string");
      buf_printf(out, ",\"%s\":", keys[k]);
      buf_add_json_str(out, v, (size_t)m);
    }
  }
  buf_addc(out, '}');
}

static void answer(http_req_t *r) {
  buf_t b;
  buf_init(&b);
  route(r, &b);
  http_respond(r, 200, NULL, NULL, b.data, b.len);
  buf_free(&b);
}

static void on_request(void *ud, http_req_t *r) {
  check(r->complete && r->url.data && r->body.data, "a request reached the gateway half-built");
  if (defer_answers && nlater < MAX_LATER) {
    r->on_abort = forget;
    later[nlater++] = r;
    return;
  }
  answer(r);
}

static void answer_later(void) {
  while (nlater) { /* last first: answers must still leave in request order */
    http_req_t *r = later[--nlater];
    answer(r);
  }
  fuv_run();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  log_set_level(LOG_OFF);
  fuv_reset();
  nlater = 0;
  defer_answers = data[0] & 1;
  int small = data[0] & 2;
  size_t chunk = (size_t)(data[0] >> 2) * (data[0] >> 2);
  http_limits_t lim = {
      .max_body = small ? 64 : 1 << 20,
      .max_url = small ? 64 : 8192,
      .max_header_bytes = small ? 64 : 16384,
      .max_headers = small ? 3 : 100,
      .request_timeout_ms = 1000,
      .idle_timeout_ms = 1000,
      .max_pipelined = small ? 2 : 128,
      .max_connections = 10,
  };
  http_server_t *srv = NULL;
  char bound[64];
  if (http_server_start(&srv, &fuv_loop, "127.0.0.1", 0, &lim, on_request, NULL, bound, sizeof bound) != 0) abort();
  fuv_listen_cb(fuv_listener, 0);
  /* Reading paused behind unanswered requests resumes once they are. */
  size_t fed = 0;
  for (int round = 0; round < 1000 && fed < size - 1; round++) {
    size_t k = fuv_feed(&fuv_accepted, data + 1 + fed, size - 1 - fed, chunk);
    fed += k;
    if (k == 0 && nlater == 0) break;
    answer_later();
  }
  fuv_fire_timers(); /* slow request or idle connection */
  answer_later();
  fuv_eof(&fuv_accepted);
  http_server_stop(srv);
  fuv_run();
  answer_later();
  http_server_free(srv);
  fuv_run();
  check(nlater == 0, "a request was left unanswered and unaborted");
  check(fuv_open_handles() == 0, "a handle was left open");
  return 0;
}
