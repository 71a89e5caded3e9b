/* msg.h - messages, replies and the calls that wait for them.
 *
 * A message carries (type, id, rpc) and the payload as JSON bytes; the C side
 * never parses payloads. A call is the caller's side of a request: it holds
 * the deadline and the callback, and is completed exactly once, always from
 * the ready queue (never from inside the code that produced the reply). */
#ifndef LUSTER_MSG_H
#define LUSTER_MSG_H

#include <stddef.h>
#include <stdint.h>

#include "core/trace.h"
#include "loop/sched.h"

/* A durable entity's new state, as the envelope carries it to storage with
 * a reply (storage/estate.h uses the same two types). */
typedef struct {
  const char *type, *id;
  size_t type_len, id_len;
  const char *bytes; /* the encoded snapshot; NULL: forget (delete the row) */
  size_t len;
} estate_write_t;
typedef void (*estate_done_cb)(void *ud, int ok, const char *err);

typedef enum {
  REPLY_OK = 0,
  REPLY_FAILURE,
  REPLY_DEFECT,
  REPLY_SCHEMA,
  REPLY_NOT_FOUND,
  REPLY_TIMEOUT,
  REPLY_UNAVAILABLE,
  REPLY_MAILBOX_FULL,
  REPLY_ACCEPTED, /* stored or queued, reply not awaited (discard) */
  REPLY_CONFLICT, /* a persisted send reused a primary key with another payload */
  REPLY__COUNT
} reply_kind_t;

const char *reply_kind_name(reply_kind_t k);
int reply_kind_parse(const char *s, size_t n, reply_kind_t *out);

typedef struct call_s call_t;
typedef struct msg_s msg_t;
struct etype_s;

/* The envelope knows a message's type only as a count of the messages that
 * point at it: the type's record (host.h) starts with this, and `released`
 * (set by the layer that owns types) runs when the count drops. */
typedef struct msg_typeref_s {
  size_t refs;
  void (*released)(struct etype_s *t);
} msg_typeref_t;

/* Body: for OK and FAILURE the JSON value; for every other kind a JSON object
 * {"kind": ..., "message": ..., ["path": ...]}. */
typedef void (*call_cb)(call_t *c, reply_kind_t kind, const char *body, size_t len);

struct call_s {
  sched_item_t item;
  timer_entry_t deadline;
  call_cb cb;
  void *ud;
  /* Whoever currently holds this call (a message or a stored message's list
   * of waiters) and how to let go of it. */
  void (*unlink)(call_t *c);
  void *holder;
  call_t *wnext, *wprev;
  uint64_t timeout_ms;
  uint64_t request_id; /* of the stored message it waits for (persisted RPCs), else 0 */
  reply_kind_t kind;
  char *body;
  size_t len;
  int done;
  /* The trace context the message this call sends carries (all zero: none):
   * the sender's trace id and its span, the parent of the receiver's. */
  trace_ctx_t trace;
  /* Only while spans are exported (--otlp-endpoint): the span this call's
   * owner ends in its callback; freed with the call. NULL otherwise. */
  struct call_span_s *span;
};

/* A span under way on a call: its parent, start (unix ns) and, when the
 * message crossed runners, the runner it went to. */
#define CALL_PEER_MAX 96
typedef struct call_span_s {
  uint8_t parent[TRACE_SPAN_LEN];
  uint64_t start_ns;
  char peer[CALL_PEER_MAX];
  char name[160]; /* "call Type.Rpc", or the gateway request span's "POST /entities/Type/{id}/Rpc" */
} call_span_t;

/* timeout_ms 0 = no deadline. */
/* The call's deadline and its callback run on s (the caller's scheduler). */
call_t *call_new(sched_t *s, call_cb cb, void *ud, uint64_t timeout_ms);
/* Records the reply (copying body) and queues the callback; later replies
 * (and a NULL call) are ignored. The call is freed after its callback returns. */
void call_complete(call_t *c, reply_kind_t kind, const char *body, size_t len);
void call_fail(call_t *c, reply_kind_t kind, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The caller is gone (connection closed): no callback, freed now or after the
 * queued callback would have run. */
void call_cancel(call_t *c);

/* Adds c to a list of calls waiting for one answer (a stored message's
 * reply); a call that completes some other way (deadline, caller gone)
 * leaves the list by itself. A call already done is not added. */
void call_list_add(call_t **head, call_t *c);

/* Builds the JSON error body {"kind":K,"message":M[,"path":P]} into a malloc'd
 * string. */
char *reply_error_body(reply_kind_t kind, const char *path, const char *msg, size_t *len);

enum {
  MSG_DISCARD = 1,   /* nobody awaits the reply */
  MSG_PERSISTED = 2, /* stored already; request_id is its id in storage */
  MSG_FRESH = 4,     /* stored by this runner, which owns its shard, a moment ago */
};

/* A persisted message's record in storage, as the message sees it.
 * `reply` gets a final reply and the waiting caller (NULL if none), whose
 * answer it owns from then on: it answers once the reply is stored. `w`
 * (NULL: none) is a durable entity's new state, stored in the same
 * transaction as the reply; `done` (NULL: none) runs after that commit,
 * ok 0 when it failed (the message then stays pending, the state as it
 * was), never from inside the call. `drop`:
 * the message leaves this runner without a reply (it stays pending in
 * storage, to be delivered again). Exactly one of them is called. */
typedef struct stored_s stored_t;
struct stored_s {
  void (*reply)(stored_t *s, reply_kind_t kind, const char *body, size_t len, call_t *caller,
                const estate_write_t *w, estate_done_cb done, void *ud);
  void (*drop)(stored_t *s);
};

struct msg_s {
  msg_t *next;
  struct etype_s *type;
  int rpc;
  unsigned flags;
  call_t *call;           /* the waiting caller, if still there */
  stored_t *stored;       /* the stored record, while this runner delivers it */
  uint64_t request_id;
  uint64_t deliver_at;    /* persisted: epoch ms it is due, 0 = now */
  uint32_t attempts;      /* persisted: runs that raised so far */
  uint64_t enqueued_at;
  char *id;
  size_t id_len;
  char *payload;
  size_t payload_len;
  char *headers; /* JSON object, or NULL */
  size_t headers_len;
  trace_ctx_t trace; /* the sender's trace context (all zero: none) */
  char data[];
};

msg_t *msg_new(struct etype_s *type, int rpc, const char *id, size_t id_len, const char *payload,
               size_t payload_len, const char *headers, size_t headers_len);
void msg_attach_call(msg_t *m, call_t *c);
/* Takes m's waiting caller off it (NULL when none): the caller's answer is
 * now the taker's to give. */
call_t *msg_detach_call(msg_t *m);
/* Sends the reply to whoever waits and frees the message. */
void msg_finish(msg_t *m, reply_kind_t kind, const char *body, size_t len);
/* msg_finish for a persisted message whose handler changed a durable
 * entity's state: w and the reply commit together (stored_t.reply). Only
 * for a message with a stored record and a final reply kind. */
void msg_finish_state(msg_t *m, reply_kind_t kind, const char *body, size_t len, const estate_write_t *w,
                      estate_done_cb done, void *ud);
void msg_free(msg_t *m);
/* Points m at another type (a reload replaced its own), moving its reference. */
void msg_set_type(msg_t *m, struct etype_s *t);
/* True when a caller was waiting and has gone: the message need not run. */
int msg_abandoned(const msg_t *m);

uint64_t msg_next_request_id(void);

#endif
