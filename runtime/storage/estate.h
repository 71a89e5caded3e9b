/* estate.h - durable entity state: the one saved snapshot per (type, id)
 * that every storage backend keeps (memory, SQLite, PostgreSQL), and the
 * shape of the operations each of them offers for it.
 *
 * A row holds the encoded bytes of an instance's last `snapshot()`. Saves
 * queued during one loop turn commit together; a save's callback runs after
 * its commit (never from inside the call that queued it), and the message
 * whose handling produced the state releases its reply only then. For a
 * persisted message, the backend's reply operation takes the state write
 * too, and stores both in one transaction: a redelivered message finds the
 * state as it was before it, and one that has its reply never applies
 * again. */
#ifndef LUSTER_ESTATE_H
#define LUSTER_ESTATE_H

#include <stddef.h>

#include "loop/msg.h" /* estate_write_t, estate_done_cb */

/* ok 0: the read failed (err says why). found 0: no state saved. bytes are
 * valid during the callback only. */
typedef void (*estate_load_cb)(void *ud, int ok, int found, const char *bytes, size_t len, const char *err);

/* One backend's state operations; ctx is the backend's own value. */
typedef struct {
  void *ctx;
  void (*load)(void *ctx, const char *type, size_t type_len, const char *id, size_t id_len, estate_load_cb cb,
               void *ud);
  /* Copies w; writes queued in one loop turn commit together. */
  void (*save)(void *ctx, const estate_write_t *w, estate_done_cb cb, void *ud);
} estate_ops_t;

#endif
