/* router.h - where a message goes: resolves type and RPC, stores persisted
 * messages first, and hands the message to the instance's owner (this runner,
 * when it runs alone). */
#ifndef LUSTER_ROUTER_H
#define LUSTER_ROUTER_H

#include <stddef.h>

#include "entity/msg.h"

/* Upper bound on entity id length, in bytes. */
#define ROUTER_MAX_ID 1024

/* Sends one message; the reply (or REPLY_ACCEPTED with MSG_DISCARD) reaches
 * `call`, which must not be NULL. */
void router_send(const char *type, size_t type_len, const char *id, size_t id_len, const char *tag, size_t tag_len,
                 const char *payload, size_t payload_len, const char *headers, size_t headers_len, unsigned flags,
                 call_t *call);

/* Drops messages waiting for their deliver_at (shutdown). */
void router_shutdown(void);

#endif
