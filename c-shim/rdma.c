/* RDMA device enumeration through libibverbs. No device is a normal answer (an empty list). */
#include "dwcp.h"

#include <infiniband/verbs.h>
#include <stdio.h>
#include <string.h>

static const char *link_layer_name(uint8_t l) {
  switch (l) {
  case IBV_LINK_LAYER_INFINIBAND: return "InfiniBand";
  case IBV_LINK_LAYER_ETHERNET: return "Ethernet";
  default: return "unspecified";
  }
}

/* Appends to out[*len..cap); returns 0, or DWCP_ENOSPC once the buffer is full. */
static int append(char *out, uint32_t cap, uint32_t *len, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#include <stdarg.h>
static int append(char *out, uint32_t cap, uint32_t *len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(out + *len, cap - *len, fmt, ap);
  va_end(ap);
  if (n < 0 || (uint32_t)n >= cap - *len) return DWCP_ENOSPC;
  *len += (uint32_t)n;
  return 0;
}

/* Writes a JSON array: [{"name","ports":[{"port","linkLayer","state","activeMtu"}],"maxMrSize"}]. */
int32_t dwcp_rdma_devices(uint8_t *buf, uint32_t cap) {
  char *out = (char *)buf;
  uint32_t len = 0;
  int count = 0;
  struct ibv_device **list = ibv_get_device_list(&count);
  if (!list) {
    /* ENOSYS here means no RDMA subsystem in the kernel: no devices, not a failure. */
    return append(out, cap, &len, "[]") ? dwcp_fail(DWCP_ENOSPC, "output buffer too small") : (int32_t)len;
  }
  int rc = append(out, cap, &len, "[");
  for (int i = 0; i < count && rc == 0; i++) {
    struct ibv_context *ctx = ibv_open_device(list[i]);
    struct ibv_device_attr attr;
    memset(&attr, 0, sizeof attr);
    if (ctx) ibv_query_device(ctx, &attr);
    rc = append(out, cap, &len, "%s{\"name\":\"%s\",\"maxMrSize\":%llu,\"ports\":[", i ? "," : "",
                ibv_get_device_name(list[i]), (unsigned long long)attr.max_mr_size);
    for (uint8_t p = 1; ctx && p <= attr.phys_port_cnt && rc == 0; p++) {
      struct ibv_port_attr pa;
      if (ibv_query_port(ctx, p, &pa)) continue;
      rc = append(out, cap, &len, "%s{\"port\":%u,\"linkLayer\":\"%s\",\"state\":\"%s\",\"activeMtu\":%d}",
                  p > 1 ? "," : "", p, link_layer_name(pa.link_layer), ibv_port_state_str(pa.state),
                  128 << pa.active_mtu);
    }
    if (rc == 0) rc = append(out, cap, &len, "]}");
    if (ctx) ibv_close_device(ctx);
  }
  if (rc == 0) rc = append(out, cap, &len, "]");
  ibv_free_device_list(list);
  if (rc) return dwcp_fail(DWCP_ENOSPC, "output buffer of %u bytes too small for the RDMA device list", cap);
  return (int32_t)len;
}
