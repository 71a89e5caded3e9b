/* spans.c - trace context in the host: new trace and span ids, and the spans
 * of handler runs and of the calls they make, handed to the OTLP exporter.
 * With no exporter (the default) nothing here builds a span: a handler only
 * copies its message's 25 bytes of context. */
#include "host/host_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "core/otlp.h"
#include "core/prom.h"
#include "net/otlp_export.h"

#define SPANS_ID_SHOWN 256

/* splitmix64: ids need to be unlikely to collide, not secret, and one is
 * drawn per gateway request, so a few arithmetic steps rather than a system
 * call. Seeded per host (the clock, the host's address and the pid). */
static uint64_t spans__next(host_t *h) {
  if (h->trace_rng == 0) h->trace_rng = uv_hrtime() ^ ((uint64_t)(uintptr_t)h << 17) ^ (uint64_t)getpid() << 40;
  uint64_t z = (h->trace_rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void host_span_id(host_t *h, uint8_t out[TRACE_SPAN_LEN]) {
  do {
    uint64_t v = spans__next(h);
    memcpy(out, &v, TRACE_SPAN_LEN);
  } while (trace_id_zero(out, TRACE_SPAN_LEN));
}

void host_trace_new(host_t *h, trace_ctx_t *t) {
  do {
    uint64_t a = spans__next(h), b = spans__next(h);
    memcpy(t->trace_id, &a, 8);
    memcpy(t->trace_id + 8, &b, 8);
  } while (trace_id_zero(t->trace_id, TRACE_ID_LEN));
  host_span_id(h, t->span_id);
  t->flags = TRACE_FLAG_SAMPLED;
}

void host_set_otlp(host_t *h, struct otlp_exporter_s *ex) { h->otlp = ex; }
struct otlp_exporter_s *host_otlp(const host_t *h) { return h->otlp; }

uint64_t host_wall_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A handler run: its context is the message's with a span of its own, whose
 * parent is the sender's span. */
void host__span_handle_start(task_t *t, const msg_t *m) {
  t->trace = m->trace;
  host_t *h = t->script->host;
  if (!h->otlp || !(m->trace.flags & TRACE_FLAG_SAMPLED) || trace_id_zero(m->trace.trace_id, TRACE_ID_LEN)) return;
  /* A queue that is full now would drop the span: it is not started (and
   * counted dropped), and the calls of this run name the sender's span as
   * their parent. Under a load the collector cannot take, spans cost a test. */
  if (otlp_exporter_refuses(h->otlp)) return;
  memcpy(t->span_parent, m->trace.span_id, TRACE_SPAN_LEN);
  host_span_id(h, t->trace.span_id);
  t->span_start_ns = host_wall_ns();
}

void host__span_handle_end(task_t *t, reply_kind_t kind, const char *why) {
  host_t *h = t->script->host;
  if (!h->otlp || !t->span_start_ns || !t->msg || otlp_exporter_refuses(h->otlp)) return;
  const msg_t *m = t->msg;
  otlp_span_t s;
  otlp_span_init(&s);
  memcpy(s.trace_id, t->trace.trace_id, TRACE_ID_LEN);
  memcpy(s.span_id, t->trace.span_id, TRACE_SPAN_LEN);
  memcpy(s.parent_id, t->span_parent, TRACE_SPAN_LEN);
  s.flags = t->trace.flags;
  char name[256]; /* "Type.Rpc", without printf: this runs for every handler */
  const rpc_def_t *r = &t->type->rpcs[m->rpc];
  size_t tl = t->type->name_len < 120 ? t->type->name_len : 120, rl = r->tag_len < 120 ? r->tag_len : 120;
  memcpy(name, t->type->name, tl);
  name[tl] = '.';
  memcpy(name + tl + 1, r->tag, rl);
  name[tl + 1 + rl] = '\0';
  s.name = name;
  s.kind = OTLP_KIND_SERVER;
  s.start_ns = t->span_start_ns;
  s.end_ns = host_wall_ns();
  int bad = kind != REPLY_OK && kind != REPLY_ACCEPTED;
  s.status = bad ? OTLP_STATUS_ERROR : OTLP_STATUS_OK;
  s.status_msg = bad ? why : NULL;
  char id[SPANS_ID_SHOWN + 1]; /* a span's size is bounded (otlp.h); an id this long says enough */
  size_t il = m->id_len > SPANS_ID_SHOWN ? SPANS_ID_SHOWN : m->id_len;
  memcpy(id, m->id, il);
  id[il] = '\0';
  otlp_span_attr_str(&s, OTLP_ATTR_TYPE, t->type->name);
  otlp_span_attr_str(&s, OTLP_ATTR_ID, id);
  otlp_span_attr_str(&s, OTLP_ATTR_RPC, r->tag);
  otlp_span_attr_str(&s, OTLP_ATTR_OUTCOME, reply_kind_name(kind));
  otlp_exporter_add(h->otlp, &s);
}

/* A call out of a task: the message carries the task's trace id and, when
 * spans are exported, the call's own span as the receiver's parent. */
void host__span_call_start(task_t *t, call_t *c, const char *type, size_t tl, const char *rpc, size_t rl) {
  c->trace = t->trace;
  host_t *h = t->script->host;
  if (!h->otlp || !(t->trace.flags & TRACE_FLAG_SAMPLED) || trace_id_zero(t->trace.trace_id, TRACE_ID_LEN) ||
      otlp_exporter_refuses(h->otlp))
    return;
  call_span_t *sp = calloc(1, sizeof *sp);
  if (!sp) return;
  /* A singleton or cron run has no span of its own: its calls are roots. */
  if (t->kind == TASK_HANDLE) memcpy(sp->parent, t->trace.span_id, TRACE_SPAN_LEN);
  sp->start_ns = host_wall_ns();
  /* "call Type.Rpc", without printf: this runs for every call */
  _Static_assert(sizeof sp->name >= 5 + 64 + 1 + 64 + 1, "call span name too short");
  tl = tl > 64 ? 64 : tl;
  rl = rl > 64 ? 64 : rl;
  memcpy(sp->name, "call ", 5);
  memcpy(sp->name + 5, type, tl);
  sp->name[5 + tl] = '.';
  memcpy(sp->name + 6 + tl, rpc, rl);
  sp->name[6 + tl + rl] = '\0';
  host_span_id(h, c->trace.span_id);
  c->span = sp;
}

void host__span_call_end(task_t *t, const call_t *c) {
  host_t *h = t->script->host;
  if (!h->otlp || !c->span || otlp_exporter_refuses(h->otlp)) return;
  otlp_span_t s;
  otlp_span_init(&s);
  memcpy(s.trace_id, c->trace.trace_id, TRACE_ID_LEN);
  memcpy(s.span_id, c->trace.span_id, TRACE_SPAN_LEN);
  memcpy(s.parent_id, c->span->parent, TRACE_SPAN_LEN);
  s.flags = c->trace.flags;
  s.name = c->span->name;
  s.kind = OTLP_KIND_CLIENT;
  s.start_ns = c->span->start_ns;
  s.end_ns = host_wall_ns();
  int bad = c->kind != REPLY_OK && c->kind != REPLY_ACCEPTED;
  s.status = bad ? OTLP_STATUS_ERROR : OTLP_STATUS_OK;
  otlp_span_attr_str(&s, OTLP_ATTR_OUTCOME, reply_kind_name(c->kind));
  if (c->span->peer[0]) otlp_span_attr_str(&s, OTLP_ATTR_PEER, c->span->peer);
  otlp_exporter_add(h->otlp, &s);
}

/* The exporter's counters (zero when spans are not exported), so an alert on
 * dropped spans needs no second rule for runners without an endpoint. */
void host_otlp_metrics(const host_t *h, buf_t *b) {
  otlp_exporter_stats_t st;
  memset(&st, 0, sizeof st);
  if (h->otlp) otlp_exporter_stats(h->otlp, &st);
  prom_head(b, "luster_otlp_spans_total", "counter",
            "Trace spans by fate: sent (the OTLP receiver took them), dropped (the queue was full), failed (their "
            "request failed)");
  buf_printf(b, "luster_otlp_spans_total{result=\"sent\"} %llu\n", (unsigned long long)st.sent);
  buf_printf(b, "luster_otlp_spans_total{result=\"dropped\"} %llu\n", (unsigned long long)st.dropped);
  buf_printf(b, "luster_otlp_spans_total{result=\"failed\"} %llu\n", (unsigned long long)st.failed);
  prom_head(b, "luster_otlp_spans_queued", "gauge", "Trace spans waiting to be sent");
  buf_printf(b, "luster_otlp_spans_queued %zu\n", st.queued + st.in_flight);
}
