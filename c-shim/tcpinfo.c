/* TCP_INFO of a socket named by its addresses, the way `ss` gets it: Deno hands out no socket
 * descriptors, so getsockopt(TCP_INFO) is out of reach, but the kernel answers an exact inet_diag
 * lookup (NETLINK_SOCK_DIAG) for any TCP socket of this network namespace by its 4-tuple. */
#include "dwcp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
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

/* Sends one exact inet_diag request and parses the answer into JSON. */
static int32_t query(int fd, int family, const __be32 local[4], uint32_t local_port, const __be32 remote[4],
                     uint32_t remote_port, uint8_t *out, uint32_t cap) {
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
  msg.req.idiag_ext = (1 << (INET_DIAG_INFO - 1)) | (1 << (INET_DIAG_CONG - 1));
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
  /* One socket's record is a few hundred bytes; uint64_t keeps the nlmsghdr and tcp_info aligned. */
  uint64_t buf[1024];
  ssize_t received = recv(fd, buf, sizeof buf, 0);
  if (received < 0) return dwcp_fail(DWCP_EFAIL, "reading the inet_diag answer: %s", strerror(errno));

  int n = (int)received;
  for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
    if (h->nlmsg_type == NLMSG_ERROR) {
      const struct nlmsgerr *e = NLMSG_DATA(h);
      if (e->error == -ENOENT) return dwcp_fail(DWCP_ENOTFOUND, "no such TCP socket");
      return dwcp_fail(DWCP_EFAIL, "inet_diag lookup failed: %s", strerror(-e->error));
    }
    if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY) continue;
    const struct inet_diag_msg *diag = NLMSG_DATA(h);
    int attr_len = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof *diag));
    const struct tcp_info *info = NULL;
    uint32_t info_len = 0;
    char cong[TCP_CA_NAME_MAX + 1] = "";
    for (const struct rtattr *a = (const struct rtattr *)(diag + 1); RTA_OK(a, attr_len);
         a = RTA_NEXT(a, attr_len)) {
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
    if (!info) return dwcp_fail(DWCP_ENOTFOUND, "the TCP socket is closed (state %u)", diag->idiag_state);
    return write_json(info, info_len, diag->idiag_state, cong[0] ? cong : NULL, (char *)out, cap);
  }
  return dwcp_fail(DWCP_EFAIL, "the kernel's inet_diag answer held no socket record");
}

int32_t dwcp_tcp_info(const char *local_host, uint32_t local_port, const char *remote_host, uint32_t remote_port,
                      uint8_t *out, uint32_t cap) {
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
  int32_t rc = query(fd, family, local, local_port, remote, remote_port, out, cap);
  close(fd);
  return rc;
}
