/* jsoncanon.h - one text per JSON value, whatever its formatting: what a
 * persisted message's payload is compared by when its primary key comes again.
 *
 * The canonical form has no whitespace, object members sorted by their
 * canonical key text (members with the same key keep their order),
 * strings with escapes decoded and only '"', '\' and control characters
 * escaped again, and numbers and literals as written (1 and 1.0 differ: they
 * decode to different Lua values). So two encoders, or one Lua table encoded
 * in two processes (member order follows each Lua state's hash seed), agree. */
#ifndef LUSTER_JSONCANON_H
#define LUSTER_JSONCANON_H

#include <stddef.h>

#include "core/buf.h"

/* Nesting deeper than this is compared as written (the recursion is bounded). */
#define JSONCANON_MAX_DEPTH 64

/* Appends the canonical form of the JSON text s[0..n) to out. Returns 0, or
 * -1 when s is not JSON or nests deeper than JSONCANON_MAX_DEPTH: then out
 * gets s itself, so equal texts still compare equal. */
int json_canonical(const char *s, size_t n, buf_t *out);

#endif
