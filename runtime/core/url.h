/* url.h - request-target routing helpers for the HTTP gateway.
 *
 * Fed by untrusted network input: every function is total (any bytes give
 * either a result or -EINVAL), never reads outside [ptr, ptr + n), never
 * writes outside the caller's buffers and never allocates. Inputs are byte
 * ranges, not C strings, because http_parser hands out ranges. */
#ifndef LUSTER_URL_H
#define LUSTER_URL_H

#include <stddef.h>

/* A byte range into someone else's buffer (not NUL-terminated). */
typedef struct {
  const char *ptr;
  size_t len;
} slice_t;

/* Splits a request target ("/a/b?x=1#frag") into path ("/a/b") and query
 * ("x=1") at the first '?', after dropping everything from the first '#'.
 * Without a '?' the query is empty (ptr at the end of the path, len 0).
 * Returns 0, or -EINVAL for NULL arguments. */
int url_split(const char *url, size_t n, slice_t *path, slice_t *query);

/* Splits an absolute path on '/' and percent-decodes each segment into out,
 * each followed by a NUL (so segs[i].ptr is also a C string). '/' is split
 * before decoding, so "%2F" is a slash inside one segment; '+' stays '+'.
 * Empty segments are kept ("/a//b" is "a", "", "b"; "/a/" is "a", "";
 * "/" is one empty segment) so callers can refuse an empty id explicitly.
 * Returns the number of segments, or -EINVAL when the path does not start
 * with '/', has a bad '%' escape, contains a NUL (raw or %00), has more than
 * maxsegs segments, or does not fit in outcap bytes (outcap >= n always
 * does: each segment's NUL takes the place of the '/' before it). */
int url_segments(const char *path, size_t n, char *out, size_t outcap, slice_t *segs, int maxsegs);

/* Finds key in an "a=1&b=2" query (names compared after decoding; empty
 * pairs skipped; first match wins) and percent-decodes its value into out,
 * NUL-terminated, with '+' as a space. "key" alone, without '=', is present
 * with an empty value. Returns the value length, -ENOENT when absent, or
 * -EINVAL for a bad escape or %00 in the value, a value that does not fit
 * (length + 1 > outcap) or NULL arguments. Pairs whose names cannot be
 * decoded never match, so junk elsewhere in the query does not hide a good
 * key. */
int url_query_get(const char *q, size_t n, const char *key, char *out, size_t outcap);

#endif
