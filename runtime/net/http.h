/* http.h - HTTP/1.1 server on libuv + http-parser: keep-alive, pipelining
 * with in-order responses, limits on every buffer, timeouts for slow or
 * half-open clients. It knows nothing of entities; see gateway.c. */
#ifndef LUSTER_HTTP_H
#define LUSTER_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/buf.h"
#include "core/histo.h"

typedef struct http_server_s http_server_t;
typedef struct http_conn_s http_conn_t;
typedef struct http_req_s http_req_t;

/* A request parsed in full; ud is the one given to http_server_start. */
typedef void (*http_request_cb)(void *ud, http_req_t *req);
/* The connection closed before the request was answered. */
typedef void (*http_abort_cb)(http_req_t *req);

typedef struct http_limits_s {
  size_t max_body;          /* bytes; 413 beyond */
  size_t max_url;           /* bytes; 414 beyond */
  size_t max_header_bytes;  /* all header names and values; 431 beyond */
  int max_headers;          /* count; 431 beyond */
  uint64_t request_timeout_ms; /* first byte of a request to its last */
  uint64_t idle_timeout_ms;    /* keep-alive connection with nothing to do */
  int max_pipelined;        /* requests in flight per connection before reading pauses */
  int max_connections;
} http_limits_t;

struct http_req_s {
  http_conn_t *conn; /* NULL once the connection is gone */
  http_server_t *srv; /* its server, whose stats count the answer */
  http_req_t *next;
  int method;        /* enum http_method */
  buf_t url;
  buf_t body;
  buf_t headers;     /* JSON object, lower-cased names */
  buf_t hname;
  int hstate;
  int nheaders;
  size_t header_bytes;
  int keep_alive;
  int expect_continue;
  int complete;      /* fully parsed */
  int answered;      /* response ready */
  int close_after;
  uint64_t start_ns; /* parsed in full (uv_hrtime), for luster_http_request_duration_seconds */
  buf_t resp;
  http_abort_cb on_abort;
  void *ud;
};

/* Listens on host:port (port 0: any free port); bound gets the address as
 * bound ("127.0.0.1:41234"). 0, or a libuv error code. */
int http_server_start(http_server_t **out, uv_loop_t *loop, const char *host, int port, const http_limits_t *limits,
                      http_request_cb on_request, void *ud, char *bound, size_t boundcap);
/* The port as bound (the one chosen by the system for port 0). */
int http_server_port(const http_server_t *s);
/* Stops accepting; open connections finish their answered requests. */
void http_server_stop(http_server_t *s);
void http_server_free(http_server_t *s);
/* Answers req; `extra_headers` is "" or CRLF-terminated header lines. A
 * request with no server (srv NULL, made by luster test) keeps its answer in
 * resp as "STATUS\r\nheader lines\r\n\r\nbody" and sets answered. */
void http_respond(http_req_t *req, int status, const char *content_type, const char *extra_headers, const char *body,
                  size_t len);
const char *http_method_name(int method);
/* True when the request's client connected from a loopback address. */
int http_req_from_loopback(const http_req_t *r);

/* Distinct status codes timed; the server and gateway answer with fewer
 * than twenty, so a fixed table needs no allocation on the hot path. */
#define HTTP_TIMED_CODES 32

typedef struct http_stats_s {
  uint64_t connections_total, connections_open, requests_total, rejected_total;
  uint64_t by_status[6]; /* 1xx..5xx, index by status/100 */
  int ncodes;
  int codes[HTTP_TIMED_CODES]; /* in order of first use */
  histo_t durations[HTTP_TIMED_CODES]; /* request parsed to response queued, per code */
} http_stats_t;
/* A server's counters (all zero for s NULL: no HTTP server). */
const http_stats_t *http_stats(const http_server_t *s);
/* GET /metrics: the numbers of http_stats(s). */
void http_metrics(buf_t *b, const http_server_t *s);

#endif
