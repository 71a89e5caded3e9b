/* fake_uv.c - the in-memory libuv of the fuzz targets (see fake_uv.h).
 *
 * Only what http.c and the transport (tp_conn.c, tp_server.c, tp_client.c) call is here. Handle state lives in the
 * handle's own flags word (private in libuv, ours here); active timers and
 * check handles sit in small fixed tables, queued callbacks in a ring. */
#include "fake_uv.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { F_OPEN = 1, F_CLOSING = 2, F_ACTIVE = 4, F_READING = 8 };
enum { EV_WRITE, EV_SHUTDOWN, EV_CLOSE, EV_CONNECT, EV_GAI };

/* Why 4096: one input queues a handful of callbacks per frame or request it
 * holds; more than this means a target leaks events, so it aborts. */
#define FUV_MAX_EVENTS 4096
#define FUV_MAX_TIMERS 256

typedef struct {
  int kind;
  void *req;
  size_t size;
} fuv_event_t;

uv_loop_t fuv_loop;
uv_stream_t *fuv_listener;
uv_connection_cb fuv_listen_cb;
uv_stream_t *fuv_accepted;
uv_stream_t *fuv_connected;

static fuv_event_t fuv_q[FUV_MAX_EVENTS];
static size_t fuv_qhead, fuv_qlen;
static uv_handle_t *fuv_active[FUV_MAX_TIMERS]; /* timers and check handles */
static int fuv_nactive;
static int fuv_nopen;
static uint64_t fuv_now_ms;

void fuv_reset(void) {
  fuv_qhead = fuv_qlen = 0;
  fuv_nactive = 0;
  fuv_nopen = 0;
  fuv_listener = NULL;
  fuv_listen_cb = NULL;
  fuv_accepted = fuv_connected = NULL;
  fuv_now_ms = 1000000;
}

int fuv_open_handles(void) { return fuv_nopen; }

static void fuv__push(int kind, void *req, size_t size) {
  if (fuv_qlen == FUV_MAX_EVENTS) {
    fprintf(stderr, "fake_uv: more than %d queued callbacks\n", FUV_MAX_EVENTS);
    abort();
  }
  fuv_q[(fuv_qhead + fuv_qlen++) % FUV_MAX_EVENTS] = (fuv_event_t){kind, req, size};
}

static void fuv__activate(uv_handle_t *h) {
  if (h->flags & F_ACTIVE) return;
  if (fuv_nactive == FUV_MAX_TIMERS) abort();
  h->flags |= F_ACTIVE;
  fuv_active[fuv_nactive++] = h;
}

static void fuv__deactivate(uv_handle_t *h) {
  if (!(h->flags & F_ACTIVE)) return;
  h->flags &= ~(unsigned)F_ACTIVE;
  for (int i = 0; i < fuv_nactive; i++)
    if (fuv_active[i] == h) {
      fuv_active[i] = fuv_active[--fuv_nactive];
      return;
    }
}

static void fuv__init(uv_handle_t *h, uv_loop_t *loop, uv_handle_type type, size_t size) {
  void *data = h->data;
  memset(h, 0, size);
  h->data = data;
  h->loop = loop;
  h->type = type;
  h->flags = F_OPEN;
  fuv_nopen++;
}

static void fuv__one(fuv_event_t ev) {
  switch (ev.kind) {
  case EV_WRITE: {
    uv_write_t *w = ev.req;
    w->handle->write_queue_size -= ev.size;
    w->cb(w, (w->handle->flags & F_CLOSING) ? UV_ECANCELED : 0);
    break;
  }
  case EV_SHUTDOWN: {
    uv_shutdown_t *s = ev.req;
    s->cb(s, (s->handle->flags & F_CLOSING) ? UV_ECANCELED : 0);
    break;
  }
  case EV_CLOSE: {
    uv_handle_t *h = ev.req;
    h->flags = 0;
    fuv_nopen--;
    if (h == (uv_handle_t *)fuv_accepted) fuv_accepted = NULL; /* its owner may free it now */
    if (h == (uv_handle_t *)fuv_connected) fuv_connected = NULL;
    if (h->close_cb) h->close_cb(h);
    break;
  }
  case EV_CONNECT: {
    uv_connect_t *c = ev.req;
    c->cb(c, (c->handle->flags & F_CLOSING) ? UV_ECANCELED : 0);
    break;
  }
  case EV_GAI: {
    uv_getaddrinfo_t *g = ev.req;
    g->cb(g, UV_EAI_NONAME, NULL);
    break;
  }
  }
}

void fuv_run(void) {
  for (int turn = 0; turn < 1000; turn++) {
    while (fuv_qlen) {
      fuv_event_t ev = fuv_q[fuv_qhead];
      fuv_qhead = (fuv_qhead + 1) % FUV_MAX_EVENTS;
      fuv_qlen--;
      fuv__one(ev);
    }
    int ran = 0;
    uv_handle_t *checks[FUV_MAX_TIMERS];
    int n = 0;
    for (int i = 0; i < fuv_nactive; i++)
      if (fuv_active[i]->type == UV_CHECK) checks[n++] = fuv_active[i];
    for (int i = 0; i < n; i++)
      if (checks[i]->flags & F_ACTIVE) {
        ((uv_check_t *)checks[i])->check_cb((uv_check_t *)checks[i]);
        ran = 1;
      }
    fuv_now_ms++;
    if (!fuv_qlen && !(ran && turn < 2)) return;
  }
}

void fuv_fire_timers(void) {
  uv_handle_t *due[FUV_MAX_TIMERS];
  int n = 0;
  for (int i = 0; i < fuv_nactive; i++)
    if (fuv_active[i]->type == UV_TIMER) due[n++] = fuv_active[i];
  fuv_now_ms += 60000;
  for (int i = 0; i < n; i++) {
    uv_timer_t *t = (uv_timer_t *)due[i];
    if (!(t->flags & F_ACTIVE)) continue; /* stopped by an earlier one */
    fuv__deactivate((uv_handle_t *)t);
    t->timer_cb(t);
  }
  fuv_run();
}

size_t fuv_feed(uv_stream_t **sp, const uint8_t *p, size_t n, size_t chunk) {
  size_t off = 0;
  if (chunk == 0) chunk = n ? n : 1;
  uv_stream_t *s;
  while (off < n && (s = *sp) && (s->flags & F_READING) && !(s->flags & F_CLOSING)) {
    uv_buf_t b = uv_buf_init(NULL, 0);
    s->alloc_cb((uv_handle_t *)s, 65536, &b);
    size_t k = n - off < chunk ? n - off : chunk;
    if (k > b.len) k = b.len;
    if (k == 0) abort(); /* alloc_cb gave no room */
    memcpy(b.base, p + off, k);
    off += k;
    s->read_cb(s, (ssize_t)k, &b);
    fuv_run();
  }
  return off;
}

void fuv_eof(uv_stream_t **sp) {
  uv_stream_t *s = *sp;
  if (!s || !(s->flags & F_READING) || (s->flags & F_CLOSING)) return;
  uv_buf_t b = uv_buf_init(NULL, 0);
  s->read_cb(s, UV_EOF, &b);
  fuv_run();
}

/* --- the libuv API ------------------------------------------------------- */

uv_buf_t uv_buf_init(char *base, unsigned int len) {
  uv_buf_t b;
  b.base = base;
  b.len = len;
  return b;
}

const char *uv_strerror(int err) { return err == UV_ECANCELED ? "operation canceled" : "fake libuv error"; }
uint64_t uv_now(const uv_loop_t *loop) { (void)loop; return fuv_now_ms; }
uint64_t uv_hrtime(void) { return fuv_now_ms * 1000000u; }

int uv_random(uv_loop_t *loop, uv_random_t *req, void *buf, size_t len, unsigned flags, uv_random_cb cb) {
  (void)loop, (void)req, (void)flags, (void)cb;
  memset(buf, 7, len);
  return 0;
}

int uv_ip4_addr(const char *ip, int port, struct sockaddr_in *addr) {
  memset(addr, 0, sizeof *addr);
  addr->sin_family = AF_INET;
  addr->sin_port = htons((uint16_t)port);
  return inet_pton(AF_INET, ip, &addr->sin_addr) == 1 ? 0 : UV_EINVAL;
}

int uv_ip6_addr(const char *ip, int port, struct sockaddr_in6 *addr) {
  memset(addr, 0, sizeof *addr);
  addr->sin6_family = AF_INET6;
  addr->sin6_port = htons((uint16_t)port);
  return inet_pton(AF_INET6, ip, &addr->sin6_addr) == 1 ? 0 : UV_EINVAL;
}

int uv_ip4_name(const struct sockaddr_in *src, char *dst, size_t size) {
  return inet_ntop(AF_INET, &src->sin_addr, dst, (socklen_t)size) ? 0 : UV_ENOSPC;
}

int uv_ip6_name(const struct sockaddr_in6 *src, char *dst, size_t size) {
  return inet_ntop(AF_INET6, &src->sin6_addr, dst, (socklen_t)size) ? 0 : UV_ENOSPC;
}

static int fuv__name(struct sockaddr *name, int *namelen, int port) {
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  if ((size_t)*namelen < sizeof a) return UV_EINVAL;
  memcpy(name, &a, sizeof a);
  *namelen = sizeof a;
  return 0;
}

int uv_tcp_getsockname(const uv_tcp_t *h, struct sockaddr *name, int *namelen) {
  (void)h;
  return fuv__name(name, namelen, 7946);
}

int uv_tcp_getpeername(const uv_tcp_t *h, struct sockaddr *name, int *namelen) {
  (void)h;
  return fuv__name(name, namelen, 40000);
}

int uv_tcp_init(uv_loop_t *loop, uv_tcp_t *h) {
  fuv__init((uv_handle_t *)h, loop, UV_TCP, sizeof *h);
  return 0;
}

int uv_timer_init(uv_loop_t *loop, uv_timer_t *h) {
  fuv__init((uv_handle_t *)h, loop, UV_TIMER, sizeof *h);
  return 0;
}

int uv_check_init(uv_loop_t *loop, uv_check_t *h) {
  fuv__init((uv_handle_t *)h, loop, UV_CHECK, sizeof *h);
  return 0;
}

int uv_idle_init(uv_loop_t *loop, uv_idle_t *h) {
  fuv__init((uv_handle_t *)h, loop, UV_IDLE, sizeof *h);
  return 0;
}

int uv_tcp_bind(uv_tcp_t *h, const struct sockaddr *addr, unsigned int flags) {
  (void)h, (void)addr, (void)flags;
  return 0;
}

int uv_tcp_nodelay(uv_tcp_t *h, int enable) { (void)h, (void)enable; return 0; }
int uv_tcp_keepalive(uv_tcp_t *h, int enable, unsigned int delay) { (void)h, (void)enable, (void)delay; return 0; }

int uv_listen(uv_stream_t *s, int backlog, uv_connection_cb cb) {
  (void)backlog;
  fuv_listener = s;
  fuv_listen_cb = cb;
  return 0;
}

int uv_accept(uv_stream_t *server, uv_stream_t *client) {
  (void)server;
  fuv_accepted = client;
  return 0;
}

int uv_tcp_connect(uv_connect_t *req, uv_tcp_t *h, const struct sockaddr *addr, uv_connect_cb cb) {
  (void)addr;
  req->handle = (uv_stream_t *)h;
  req->cb = cb;
  fuv_connected = (uv_stream_t *)h;
  fuv__push(EV_CONNECT, req, 0);
  return 0;
}

int uv_getaddrinfo(uv_loop_t *loop, uv_getaddrinfo_t *req, uv_getaddrinfo_cb cb, const char *node,
                   const char *service, const struct addrinfo *hints) {
  (void)loop, (void)node, (void)service, (void)hints;
  if (!cb) return UV_EAI_NONAME; /* no name service here */
  req->cb = cb;
  fuv__push(EV_GAI, req, 0);
  return 0;
}

void uv_freeaddrinfo(struct addrinfo *ai) {
  if (ai) freeaddrinfo(ai);
}

int uv_cancel(uv_req_t *req) { (void)req; return UV_EBUSY; }

int uv_read_start(uv_stream_t *s, uv_alloc_cb alloc_cb, uv_read_cb read_cb) {
  if (s->flags & F_CLOSING) return UV_EINVAL;
  s->alloc_cb = alloc_cb;
  s->read_cb = read_cb;
  s->flags |= F_READING;
  return 0;
}

int uv_read_stop(uv_stream_t *s) {
  s->flags &= ~(unsigned)F_READING;
  return 0;
}

int uv_write(uv_write_t *req, uv_stream_t *s, const uv_buf_t bufs[], unsigned int nbufs, uv_write_cb cb) {
  if (s->flags & F_CLOSING) return UV_EPIPE;
  size_t size = 0;
  for (unsigned i = 0; i < nbufs; i++) size += bufs[i].len;
  req->handle = s;
  req->cb = cb;
  s->write_queue_size += size;
  fuv__push(EV_WRITE, req, size);
  return 0;
}

size_t uv_stream_get_write_queue_size(const uv_stream_t *s) { return s->write_queue_size; }

int uv_shutdown(uv_shutdown_t *req, uv_stream_t *s, uv_shutdown_cb cb) {
  if (s->flags & F_CLOSING) return UV_ENOTCONN;
  req->handle = s;
  req->cb = cb;
  fuv__push(EV_SHUTDOWN, req, 0);
  return 0;
}

int uv_timer_start(uv_timer_t *t, uv_timer_cb cb, uint64_t timeout, uint64_t repeat) {
  (void)timeout, (void)repeat;
  if (t->flags & F_CLOSING) return UV_EINVAL;
  t->timer_cb = cb;
  fuv__activate((uv_handle_t *)t);
  return 0;
}

int uv_timer_stop(uv_timer_t *t) {
  fuv__deactivate((uv_handle_t *)t);
  return 0;
}

int uv_check_start(uv_check_t *h, uv_check_cb cb) {
  h->check_cb = cb;
  fuv__activate((uv_handle_t *)h);
  return 0;
}

int uv_check_stop(uv_check_t *h) {
  fuv__deactivate((uv_handle_t *)h);
  return 0;
}

int uv_idle_start(uv_idle_t *h, uv_idle_cb cb) {
  h->idle_cb = cb;
  h->flags |= F_ACTIVE; /* idle handles only keep a real loop polling */
  return 0;
}

int uv_idle_stop(uv_idle_t *h) {
  h->flags &= ~(unsigned)F_ACTIVE;
  return 0;
}

int uv_is_active(const uv_handle_t *h) { return (h->flags & F_ACTIVE) != 0; }
int uv_is_closing(const uv_handle_t *h) { return (h->flags & F_CLOSING) != 0; }

void uv_close(uv_handle_t *h, uv_close_cb cb) {
  if (h->flags & F_CLOSING) abort(); /* libuv asserts this too */
  fuv__deactivate(h);
  h->flags = (h->flags & ~(unsigned)(F_READING | F_ACTIVE)) | F_CLOSING;
  h->close_cb = cb;
  fuv__push(EV_CLOSE, h, 0);
}

/* net/sock.c's helpers over the in-memory sockets: there is no kernel
 * buffer, so a stalled write is the peer's (never "still writable"), and a
 * reset close is an ordinary close. */
#include "net/sock.h"
int sock_writable(uv_tcp_t *tcp) { (void)tcp; return 0; }
void sock_reset_on_close(uv_tcp_t *tcp) { (void)tcp; }
