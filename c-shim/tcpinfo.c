/* TCP_INFO of a socket named by its addresses, the way `ss` gets it: Deno hands out no socket
 * descriptors, so getsockopt(TCP_INFO) is out of reach, but the kernel answers an exact inet_diag
 * lookup (NETLINK_SOCK_DIAG) for any TCP socket of this network namespace by its 4-tuple. The same
 * lookup gives the socket's inode, by which this process's own descriptor for it is found, to set
 * its congestion control (TCP_CONGESTION). */
#include "dwcp.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

/* The kernel's limit on a congestion control name (include/net/tcp.h, not exported to user space). */
#define TCP_CA_NAME_MAX 16

/* Parses an IPv4 or IPv6 address (Deno's hostname text, no brackets) into the 16-byte form inet_diag
 * uses; returns the family, or 0 when text is neither. */
static int parse_addr(const char *text, __be32 out[4]) {
  memset(out, 0, 16);
  if (inet_pton(AF_INET, text, out) == 1) return AF_INET;
  if (inet_pton(AF_INET6, text, out) == 1) return AF_INET6;
  return 0;
}

static int append(char *out, uint32_t cap, uint32_t *len, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int append(char *out, uint32_t cap, uint32_t *len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(out + *len, cap - *len, fmt, ap);
  va_end(ap);
  if (n < 0 || (uint32_t)n >= cap - *len) return DWCP_ENOSPC;
  *len += (uint32_t)n;
  return 0;
}

/* A field is reported only when the kernel's struct tcp_info reaches it: older kernels send a shorter
 * struct, and a zero there would read as a measurement. */
#define HAS(field) (info_len >= offsetof(struct tcp_info, field) + sizeof(((struct tcp_info *)0)->field))
#define FIELD(name, field)                                                                                    \
  if (rc == 0 && HAS(field)) rc = append(out, cap, &len, ",\"%s\":%llu", name, (unsigned long long)info.field)

/* Writes {"state","congestion"?,"rttUs",...} (see ffi/tcp_info.ts for the fields); DWCP_ENOSPC when cap
 * is too small. */
static int32_t write_json(const struct tcp_info *src, uint32_t info_len, uint8_t state, const char *cong,
                          char *out, uint32_t cap) {
  struct tcp_info info;
  memset(&info, 0, sizeof info);
  if (info_len > sizeof info) info_len = sizeof info;
  memcpy(&info, src, info_len);
  uint32_t len = 0;
  int rc = append(out, cap, &len, "{\"state\":%u", state);
  if (rc == 0 && cong) rc = append(out, cap, &len, ",\"congestion\":\"%s\"", cong);
  FIELD("rttUs", tcpi_rtt);
  FIELD("rttVarUs", tcpi_rttvar);
  FIELD("minRttUs", tcpi_min_rtt);
  FIELD("sndCwndSegments", tcpi_snd_cwnd);
  FIELD("sndMssBytes", tcpi_snd_mss);
  FIELD("retransmitsNow", tcpi_retransmits);
  FIELD("totalRetransSegments", tcpi_total_retrans);
  FIELD("lostSegments", tcpi_lost);
  FIELD("segsOut", tcpi_segs_out);
  FIELD("deliveredSegments", tcpi_delivered);
  FIELD("deliveryRateBytesPerSec", tcpi_delivery_rate);
  FIELD("pacingRateBytesPerSec", tcpi_pacing_rate);
  FIELD("bytesSent", tcpi_bytes_sent);
  FIELD("bytesAcked", tcpi_bytes_acked);
  FIELD("bytesRetrans", tcpi_bytes_retrans);
  FIELD("dsackDups", tcpi_dsack_dups);
  if (rc == 0) rc = append(out, cap, &len, "}");
  if (rc) return dwcp_fail(DWCP_ENOSPC, "output buffer of %u bytes is too small for TCP_INFO", cap);
  return (int32_t)len;
}

/* The kernel's answer to one exact inet_diag lookup: the socket's record and its attributes, which point
 * into buf. One socket's record is a few hundred bytes; uint64_t keeps the nlmsghdr and tcp_info aligned. */
struct diag_answer {
  uint64_t buf[1024];
  const struct inet_diag_msg *msg;
  const struct rtattr *attrs;
  int attrs_len;
};

/* Sends one exact inet_diag request, asking for the attributes in ext (INET_DIAG_* bits), and reads the
 * socket's record into answer. */
static int32_t query(int fd, int family, const __be32 local[4], uint32_t local_port, const __be32 remote[4],
                     uint32_t remote_port, uint8_t ext, struct diag_answer *answer) {
  struct {
    struct nlmsghdr nlh;
    struct inet_diag_req_v2 req;
  } msg;
  memset(&msg, 0, sizeof msg);
  msg.nlh.nlmsg_len = sizeof msg;
  msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  msg.nlh.nlmsg_flags = NLM_F_REQUEST; /* no NLM_F_DUMP: the kernel looks the 4-tuple up in its hash */
  msg.nlh.nlmsg_seq = 1;
  msg.req.sdiag_family = (uint8_t)family;
  msg.req.sdiag_protocol = IPPROTO_TCP;
  msg.req.idiag_ext = ext;
  msg.req.idiag_states = ~0u;
  /* "src" is the socket's own end: the kernel looks up (saddr=dst, daddr=src) as seen by a packet. */
  msg.req.id.idiag_sport = htons((uint16_t)local_port);
  msg.req.id.idiag_dport = htons((uint16_t)remote_port);
  memcpy(msg.req.id.idiag_src, local, 16);
  memcpy(msg.req.id.idiag_dst, remote, 16);
  msg.req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  msg.req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;

  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  if (sendto(fd, &msg, sizeof msg, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) {
    return dwcp_fail(DWCP_EFAIL, "sending the inet_diag request: %s", strerror(errno));
  }
  ssize_t received = recv(fd, answer->buf, sizeof answer->buf, 0);
  if (received < 0) return dwcp_fail(DWCP_EFAIL, "reading the inet_diag answer: %s", strerror(errno));

  int n = (int)received;
  for (struct nlmsghdr *h = (struct nlmsghdr *)answer->buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
    if (h->nlmsg_type == NLMSG_ERROR) {
      const struct nlmsgerr *e = NLMSG_DATA(h);
      if (e->error == -ENOENT) return dwcp_fail(DWCP_ENOTFOUND, "no such TCP socket");
      return dwcp_fail(DWCP_EFAIL, "inet_diag lookup failed: %s", strerror(-e->error));
    }
    if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY) continue;
    answer->msg = NLMSG_DATA(h);
    answer->attrs = (const struct rtattr *)(answer->msg + 1);
    answer->attrs_len = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof *answer->msg));
    return 0;
  }
  return dwcp_fail(DWCP_EFAIL, "the kernel's inet_diag answer held no socket record");
}

/* Looks up this namespace's TCP socket with these addresses (text) and ports: the part that TCP_INFO and
 * setting the congestion control share. */
static int32_t lookup(const char *local_host, uint32_t local_port, const char *remote_host, uint32_t remote_port,
                      uint8_t ext, struct diag_answer *answer) {
  __be32 local[4], remote[4];
  int family = parse_addr(local_host, local);
  if (!family) return dwcp_fail(DWCP_EINVAL, "local address \"%s\" is not an IPv4 or IPv6 address", local_host);
  int remote_family = parse_addr(remote_host, remote);
  if (remote_family != family) {
    return dwcp_fail(DWCP_EINVAL, "remote address \"%s\" is not an %s address like the local \"%s\"", remote_host,
                     family == AF_INET ? "IPv4" : "IPv6", local_host);
  }
  if (local_port == 0 || local_port > 65535 || remote_port == 0 || remote_port > 65535) {
    return dwcp_fail(DWCP_EINVAL, "ports %u and %u must be 1..65535", local_port, remote_port);
  }
  int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (fd < 0) return dwcp_fail(DWCP_EUNAVAIL, "cannot open a NETLINK_SOCK_DIAG socket: %s", strerror(errno));
  /* The kernel answers at once; the bound only guards against an answer that never comes. */
  struct timeval timeout = {.tv_sec = 1};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  int32_t rc = query(fd, family, local, local_port, remote, remote_port, ext, answer);
  close(fd);
  return rc;
}

int32_t dwcp_tcp_info(const char *local_host, uint32_t local_port, const char *remote_host, uint32_t remote_port,
                      uint8_t *out, uint32_t cap) {
  struct diag_answer answer;
  int32_t rc = lookup(local_host, local_port, remote_host, remote_port,
                      (1 << (INET_DIAG_INFO - 1)) | (1 << (INET_DIAG_CONG - 1)), &answer);
  if (rc) return rc;
  const struct tcp_info *info = NULL;
  uint32_t info_len = 0;
  char cong[TCP_CA_NAME_MAX + 1] = "";
  int attrs_len = answer.attrs_len;
  for (const struct rtattr *a = answer.attrs; RTA_OK(a, attrs_len); a = RTA_NEXT(a, attrs_len)) {
    if (a->rta_type == INET_DIAG_INFO) {
      info = RTA_DATA(a);
      info_len = (uint32_t)RTA_PAYLOAD(a);
    } else if (a->rta_type == INET_DIAG_CONG) {
      size_t m = RTA_PAYLOAD(a) < TCP_CA_NAME_MAX ? RTA_PAYLOAD(a) : TCP_CA_NAME_MAX;
      memcpy(cong, RTA_DATA(a), m);
      cong[m] = '\0';
    }
  }
  /* A socket in TIME_WAIT is a closed connection: it carries no tcp_info. */
  if (!info) return dwcp_fail(DWCP_ENOTFOUND, "the TCP socket is closed (state %u)", answer.msg->idiag_state);
  return write_json(info, info_len, answer.msg->idiag_state, cong[0] ? cong : NULL, (char *)out, cap);
}

/* A descriptor of this process for the socket with this inode, dup()ed so that it stays that socket while
 * it is used even if another thread closes the original and its number is reused; -1 when none is open.
 * *number is the original's. */
static int dup_socket_fd(ino_t inode, int *number) {
  DIR *dir = opendir("/proc/self/fd");
  if (!dir) return -1;
  int found = -1;
  for (struct dirent *e; found < 0 && (e = readdir(dir));) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    int fd = fcntl(atoi(e->d_name), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) continue;
    /* fstat of a socket descriptor gives its sockfs inode, the number /proc/self/fd/N shows as socket:[N]. */
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_ino == inode) {
      found = fd;
      *number = atoi(e->d_name);
    } else {
      close(fd);
    }
  }
  closedir(dir);
  return found;
}

int32_t dwcp_tcp_socket_fd(const char *local_host, uint32_t local_port, const char *remote_host,
                           uint32_t remote_port, int32_t *number) {
  struct diag_answer answer;
  int32_t rc = lookup(local_host, local_port, remote_host, remote_port, 0, &answer);
  if (rc) return rc;
  /* A socket no descriptor holds (TIME_WAIT, or closed and still sending its last bytes) has inode 0. */
  ino_t inode = answer.msg->idiag_inode;
  if (inode == 0) return dwcp_fail(DWCP_ENOTFOUND, "the TCP socket is closed (state %u)", answer.msg->idiag_state);
  int original = -1;
  int fd = dup_socket_fd(inode, &original);
  if (fd < 0) {
    return dwcp_fail(DWCP_ENOTFOUND, "TCP socket inode %lu is not open in this process", (unsigned long)inode);
  }
  if (number) *number = original;
  return fd;
}

int32_t dwcp_tcp_set_congestion(const char *local_host, uint32_t local_port, const char *remote_host,
                                uint32_t remote_port, const char *name) {
  size_t name_len = strlen(name);
  if (name_len == 0 || name_len >= TCP_CA_NAME_MAX) {
    return dwcp_fail(DWCP_EINVAL, "congestion control \"%s\" is not a name of 1..%d characters", name,
                     TCP_CA_NAME_MAX - 1);
  }
  int fd = dwcp_tcp_socket_fd(local_host, local_port, remote_host, remote_port, NULL);
  if (fd < 0) return fd;
  int set = setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name, (socklen_t)name_len);
  int err = errno;
  close(fd);
  if (set == 0) return DWCP_OK;
  if (err == ENOENT) {
    return dwcp_fail(DWCP_EUNAVAIL,
                     "congestion control \"%s\" is not available in this kernel: load its module (modprobe tcp_%s) "
                     "or pick one of net.ipv4.tcp_available_congestion_control",
                     name, name);
  }
  if (err == EPERM) {
    return dwcp_fail(DWCP_EPERM,
                     "congestion control \"%s\" is not permitted to this process: add it to "
                     "net.ipv4.tcp_allowed_congestion_control, or run the agent with CAP_NET_ADMIN",
                     name);
  }
  return dwcp_fail(DWCP_EFAIL, "setting congestion control \"%s\": %s", name, strerror(err));
}

int32_t dwcp_tcp_set_buffers(const char *local_host, uint32_t local_port, const char *remote_host,
                             uint32_t remote_port, int32_t send_bytes, int32_t receive_bytes) {
  int fd = dwcp_tcp_socket_fd(local_host, local_port, remote_host, remote_port, NULL);
  if (fd < 0) return fd;
  int32_t rc = DWCP_OK;
  if (send_bytes > 0 && setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &send_bytes, sizeof send_bytes) < 0) {
    rc = dwcp_fail(DWCP_EFAIL, "setting SO_SNDBUF to %d bytes: %s", send_bytes, strerror(errno));
  }
  if (!rc && receive_bytes > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &receive_bytes, sizeof receive_bytes) < 0) {
    rc = dwcp_fail(DWCP_EFAIL, "setting SO_RCVBUF to %d bytes: %s", receive_bytes, strerror(errno));
  }
  close(fd);
  return rc;
}
