/* sock.h - small socket helpers shared by the HTTP server and the runner
 * transport: is a stalled connection's peer reading, and closing with a
 * reset instead of a graceful close. */
#ifndef LUSTER_SOCK_H
#define LUSTER_SOCK_H

#include <uv.h>

/* 1 when the socket can take more bytes now: the peer has read some of what
 * was sent. Checked before dropping a connection whose writes made no
 * progress, since a loop that was itself busy for a while did not write
 * either (its timers run before its I/O when it wakes). */
int sock_writable(uv_tcp_t *tcp);
/* Makes the coming uv_close reset the connection (SO_LINGER 0): the kernel
 * drops what it still holds instead of keeping it for a peer that does not
 * read. */
void sock_reset_on_close(uv_tcp_t *tcp);

#endif
