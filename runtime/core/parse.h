/* parse.h - strict parsers for configuration values (flags, env vars).
 *
 * Every parser takes a NUL-terminated string and either accepts all of it or
 * returns -EINVAL leaving the outputs untouched: no surrounding spaces, no
 * signs, no partial parses, no silent overflow. A typo in a flag should stop
 * the runner at start-up, not run it with a surprising value. */
#ifndef LUSTER_PARSE_H
#define LUSTER_PARSE_H

#include <stddef.h>
#include <stdint.h>

/* Duration in milliseconds: NUMBER UNIT with UNIT one of ms, s, m, h, d
 * (lower case; "m" is minutes), NUMBER digits with an optional fraction
 * ("1.5s", "0.25h"), or a bare integer meaning milliseconds ("250").
 * A fraction must come out at a whole number of milliseconds ("1.5ms" is
 * rejected rather than rounded; at most 18 fraction digits, trailing zeros
 * aside). Returns 0 or -EINVAL. */
int parse_duration_ms(const char *s, uint64_t *out_ms);

/* Size in bytes: NUMBER with an optional case-insensitive suffix B, K, KB,
 * KiB, M, MB, MiB, G, GB, GiB, T, TB, TiB, all powers of 1024 ("512K",
 * "256mb", "1.5G"). A bare number must be an integer and a fraction must come
 * out at a whole number of bytes. Returns 0 or -EINVAL. */
int parse_size(const char *s, uint64_t *out_bytes);

/* HOST:PORT, as for --listen and --http: "127.0.0.1:8080", "localhost:80",
 * "[::1]:8080" (host comes back without the brackets), ":8080" (host comes
 * back as "0.0.0.0"). PORT is 0..65535 in decimal; 0 means "any free port".
 * HOST is letters, digits, '.', '-', '_' (a name or IPv4 address), or, inside
 * brackets, an IPv6 address (hex digits, ':', '.'). host receives a
 * NUL-terminated copy; hostcap too small is -EINVAL like any other error. */
int parse_hostport(const char *s, char *host, size_t hostcap, int *port);

#endif
