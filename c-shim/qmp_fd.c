/* Handing a TCP socket to QEMU. QEMU takes descriptors only as SCM_RIGHTS ancillary data on a QMP monitor
 * connection (the getfd command), which Deno's sockets cannot send, and keeps them per monitor: the command
 * that uses the descriptor must come on the same connection. So this speaks just enough QMP on a monitor
 * of its own: the greeting, qmp_capabilities, getfd, then the caller's command, one reply each. */
#include "dwcp.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

/* QEMU answers at once; the bound is for a QEMU that hangs. */
#define QMP_TIMEOUT_S 10
/* Greetings and replies here are a few hundred bytes; an event QEMU sends in between may be longer. */
#define LINE_CAP 65536

struct monitor {
  int fd;
  char buf[LINE_CAP];
  size_t len;
};

/* Reads the next line QEMU writes into line (NUL-terminated, without the newline). */
static int32_t read_line(struct monitor *m, char *line, size_t cap) {
  while (1) {
    char *nl = memchr(m->buf, '\n', m->len);
    if (nl) {
      size_t n = (size_t)(nl - m->buf);
      if (n >= cap) return dwcp_fail(DWCP_EFAIL, "a QMP line of %zu bytes is longer than %zu", n, cap - 1);
      memcpy(line, m->buf, n);
      line[n] = '\0';
      if (n > 0 && line[n - 1] == '\r') line[n - 1] = '\0';
      m->len -= n + 1;
      memmove(m->buf, nl + 1, m->len);
      return DWCP_OK;
    }
    if (m->len == sizeof m->buf) return dwcp_fail(DWCP_EFAIL, "a QMP line longer than %d bytes", LINE_CAP);
    ssize_t got = read(m->fd, m->buf + m->len, sizeof m->buf - m->len);
    if (got == 0) return dwcp_fail(DWCP_EFAIL, "QEMU closed the monitor connection");
    if (got < 0) {
      if (errno == EINTR) continue;
      return dwcp_fail(DWCP_EFAIL, "reading the QMP monitor: %s", strerror(errno));
    }
    m->len += (size_t)got;
  }
}

/* The reply to the command just sent: the next line that is not an event (QEMU writes keys in order, so
 * a reply starts with "return" or "error"). */
static int32_t read_reply(struct monitor *m, char *line, size_t cap) {
  while (1) {
    int32_t rc = read_line(m, line, cap);
    if (rc) return rc;
    if (strncmp(line, "{\"return\"", 9) == 0 || strncmp(line, "{\"error\"", 8) == 0) return DWCP_OK;
  }
}

/* Sends text, with fd as SCM_RIGHTS when fd >= 0. */
static int32_t send_text(struct monitor *m, const char *text, int fd) {
  struct iovec iov = {.iov_base = (void *)text, .iov_len = strlen(text)};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (fd >= 0) {
    memset(&control, 0, sizeof control);
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  /* Commands are a few hundred bytes: the unix socket takes them whole. */
  ssize_t sent;
  do sent = sendmsg(m->fd, &msg, MSG_NOSIGNAL);
  while (sent < 0 && errno == EINTR);
  if (sent < 0) return dwcp_fail(DWCP_EFAIL, "writing to the QMP monitor: %s", strerror(errno));
  if ((size_t)sent != iov.iov_len) return dwcp_fail(DWCP_EFAIL, "the QMP monitor took a partial command");
  return DWCP_OK;
}

static int32_t open_monitor(struct monitor *m, const char *path) {
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof addr.sun_path) {
    return dwcp_fail(DWCP_EINVAL, "monitor socket path %s is longer than %zu bytes", path, sizeof addr.sun_path - 1);
  }
  strcpy(addr.sun_path, path);
  m->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (m->fd < 0) return dwcp_fail(DWCP_EFAIL, "opening a unix socket: %s", strerror(errno));
  struct timeval timeout = {.tv_sec = QMP_TIMEOUT_S};
  setsockopt(m->fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  setsockopt(m->fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  if (connect(m->fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    return dwcp_fail(DWCP_EFAIL, "connecting to the QMP monitor %s: %s", path, strerror(errno));
  }
  m->len = 0;
  return DWCP_OK;
}

/* Deno's runtime keeps every connection registered in its epoll set, edge-triggered, so each segment that
 * arrives for QEMU would wake it, and it shuts a connection's write side down when it closes it, which acts on
 * the socket, QEMU's too. So the descriptor is taken out of every epoll set of this process (EPOLL_CTL_DEL
 * needs the number still pointing at the socket), then pointed at a fresh unconnected socket: that is all
 * Deno's runtime will shut down, deregister and close. */
int32_t dwcp_tcp_detach(const char *local_host, uint32_t local_port, const char *remote_host,
                        uint32_t remote_port) {
  int number = -1;
  int sock = dwcp_tcp_socket_fd(local_host, local_port, remote_host, remote_port, &number);
  if (sock < 0) return sock;
  close(sock);
  DIR *dir = opendir("/proc/self/fd");
  if (dir) {
    char link[300], target[64];
    for (struct dirent *e; (e = readdir(dir));) {
      if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
      snprintf(link, sizeof link, "/proc/self/fd/%s", e->d_name);
      ssize_t n = readlink(link, target, sizeof target - 1);
      if (n <= 0) continue;
      target[n] = '\0';
      if (strcmp(target, "anon_inode:[eventpoll]") == 0) epoll_ctl(atoi(e->d_name), EPOLL_CTL_DEL, number, NULL);
    }
    closedir(dir);
  }
  int placeholder = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (placeholder < 0) return dwcp_fail(DWCP_EFAIL, "opening a placeholder socket: %s", strerror(errno));
  int moved = dup3(placeholder, number, O_CLOEXEC);
  int err = errno;
  close(placeholder);
  if (moved < 0) return dwcp_fail(DWCP_EFAIL, "pointing descriptor %d elsewhere: %s", number, strerror(err));
  return DWCP_OK;
}

/* Runs text (with fd, if any) and checks that QEMU returned rather than refused. */
static int32_t run(struct monitor *m, const char *text, int fd, const char *what, char *line, size_t cap) {
  int32_t rc = send_text(m, text, fd);
  if (!rc) rc = read_reply(m, line, cap);
  if (rc) return rc;
  if (strncmp(line, "{\"error\"", 8) == 0) return dwcp_fail(DWCP_EFAIL, "QEMU refused %s: %s", what, line);
  return DWCP_OK;
}

int32_t dwcp_qmp_pass_tcp(const char *monitor_path, const char *local_host, uint32_t local_port,
                          const char *remote_host, uint32_t remote_port, const char *fd_name, const char *command,
                          uint8_t *out, uint32_t cap) {
  /* The name goes into JSON unescaped: keep it to characters that need none. */
  for (const char *c = fd_name; *c; c++) {
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '-' ||
          *c == '_')) {
      return dwcp_fail(DWCP_EINVAL, "descriptor name \"%s\" may hold only letters, digits, '-' and '_'", fd_name);
    }
  }
  if (!fd_name[0] || strlen(fd_name) > 64) {
    return dwcp_fail(DWCP_EINVAL, "descriptor name \"%s\" must have 1..64 characters", fd_name);
  }
  int sock = dwcp_tcp_socket_fd(local_host, local_port, remote_host, remote_port, NULL);
  if (sock < 0) return sock;
  struct session {
    struct monitor m;
    char line[LINE_CAP];
  } *s = malloc(sizeof *s);
  if (!s) {
    close(sock);
    return dwcp_fail(DWCP_ENOMEM, "no memory for a QMP session");
  }
  s->m.fd = -1;
  char *line = s->line;
  char getfd[160];
  snprintf(getfd, sizeof getfd, "{\"execute\":\"getfd\",\"arguments\":{\"fdname\":\"%s\"}}\n", fd_name);
  int32_t rc = open_monitor(&s->m, monitor_path);
  if (!rc) rc = read_line(&s->m, line, LINE_CAP); /* the greeting */
  if (!rc) rc = run(&s->m, "{\"execute\":\"qmp_capabilities\"}\n", -1, "qmp_capabilities", line, LINE_CAP);
  if (!rc) rc = run(&s->m, getfd, sock, "getfd", line, LINE_CAP);
  /* The command's own refusal is the caller's to read: it gets the reply either way. */
  if (!rc) rc = send_text(&s->m, command, -1);
  if (!rc) rc = send_text(&s->m, "\n", -1);
  if (!rc) rc = read_reply(&s->m, line, LINE_CAP);
  if (s->m.fd >= 0) close(s->m.fd);
  /* QEMU holds its own descriptor now; this one was a dup. */
  close(sock);
  size_t n = rc ? 0 : strlen(line);
  if (!rc && n > cap) rc = dwcp_fail(DWCP_ENOSPC, "QEMU's reply of %zu bytes is longer than the %u-byte buffer", n, cap);
  if (!rc) memcpy(out, line, n);
  free(s);
  return rc ? rc : (int32_t)n;
}
