/* durable_state.h - durable entity types (`durable = true`): each instance's
 * snapshot saved after every message it handles, before that message's
 * reply is released, and read back whenever the instance activates again.
 *
 * An instance of a durable type handles one message at a time, and the
 * next one only once the previous message's save has committed, so the
 * saved row always matches a state the instance reached in order. A
 * persisted message's state commits with its reply (msg_finish_state); a
 * volatile one's is saved first, then its reply goes out. Whenever the
 * state in memory may differ from the saved one (a handler raised, a save
 * failed, the snapshot could not be encoded, ctx:forget()), the instance
 * is reset: it activates again from storage before its next message. */
#ifndef LUSTER_DURABLE_STATE_H
#define LUSTER_DURABLE_STATE_H

#include <stddef.h>

#include "entity/entity.h"
#include "storage/estate.h"

/* The storage backend's state operations for em's durable types (set once
 * by the wiring, before any script runs). */
void dstate_set_ops(em_t *em, const estate_ops_t *ops);
/* Activates i (state INST_ACTIVATING) with its saved snapshot, once read. */
void dstate_activate(inst_t *i);
/* Activation succeeded: an instance without a saved row notes the state
 * activate built, so an untouched instance writes nothing. */
void dstate_activated(inst_t *i);
/* i's handler returned (kind, body) for m: saves the new state, then
 * releases the reply. Returns 1 when m is finished and the caller must call
 * em_handled(i) itself; 0 when the save's callback will. */
int dstate_handled(inst_t *i, msg_t *m, reply_kind_t kind, const char *body, size_t len);
/* ctx:forget(): the saved state is deleted with the current message's
 * reply, and the instance ends after it. Returns -EINVAL when t is not
 * durable, -ENOENT when no such instance runs here. */
int dstate_forget(etype_t *t, const char *id, size_t len);
/* The instance is being freed: an operation in flight forgets it. */
void dstate_inst_free(inst_t *i);

#endif
