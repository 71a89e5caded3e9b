/* sqlite.h - one runner's durable storage in a SQLite file: persisted
 * messages, their replies, cron instants (msgstore.h) and durable entity
 * state (estate.h).
 *
 * The loop never waits on the disk: every operation is queued to a writer
 * thread of the store's own, which runs everything queued while its previous
 * commit ran as the next transaction (a group commit), in queue order, and
 * hands the results back to the loop through a uv_async. The file is in WAL
 * mode; `synchronous` is NORMAL (a process crash loses nothing committed, a
 * power loss may lose the last commits) or FULL (nothing committed is lost).
 * One runner per file: an exclusive flock on PATH-lock, held while the store
 * is open. A single runner serves every shard, so the shard lists of the
 * operations are not consulted. */
#ifndef LUSTER_SQLITE_H
#define LUSTER_SQLITE_H

#include <stddef.h>
#include <uv.h>

#include "storage/estate.h"
#include "storage/msgstore.h"

typedef struct sqls_s sqls_t;

/* Opens (creating when missing) and migrates the file, before the loop
 * runs: NULL with err set when the lock is held, the directory is missing or
 * not writable, or the file is not a SQLite database of ours. */
sqls_t *sqls_open(uv_loop_t *loop, const char *path, int sync_full, char *err, size_t errlen);
/* The message operations; their close ends the store (see msgstore.h). */
const ms_ops_t *sqls_ops(sqls_t *s);
/* The durable entity state operations, valid until the store closes. */
estate_ops_t sqls_estate_ops(sqls_t *s);

#endif
