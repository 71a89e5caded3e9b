/* sock.c - socket helpers for stalled connections (see sock.h). */
#include "net/sock.h"

#include <poll.h>
#include <sys/socket.h>

int sock_writable(uv_tcp_t *tcp) {
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)tcp, &fd) != 0) return 0;
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  return poll(&p, 1, 0) == 1 && (p.revents & POLLOUT) && !(p.revents & (POLLERR | POLLHUP));
}

void sock_reset_on_close(uv_tcp_t *tcp) {
  uv_os_fd_t fd;
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  if (!uv_is_closing((uv_handle_t *)tcp) && uv_fileno((uv_handle_t *)tcp, &fd) == 0)
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}
