// linkem: a userspace link emulator joining network namespaces through TUN devices.
//
// The kernel here has no netem, so delay, jitter, loss and rate are applied in this process. Each host is
// a network namespace with one TUN device ("tun0") created inside it by this program; every IPv4 packet
// read from host i's TUN is routed by its destination address to host j and passes through the path
// i->j (each ordered pair of hosts is an independent path with its own parameters, queue and counters).
//
// A path is modelled as a bottleneck queue followed by a delay line:
//   - the bottleneck serves packets FIFO at a fixed rate, or by the delivery opportunities of a mahimahi
//     trace (one 1500-byte opportunity per line, timestamps in ms, looping). Its queue is drop-tail,
//     bounded in bytes and/or in sojourn time;
//   - the delay line adds the one-way delay plus uniform jitter; delivery order is kept (a packet never
//     overtakes the one before it), so jitter is clamped instead of reordering, as netem does with rate;
//   - random loss uses a per-path seeded PRNG, so a seed reproduces the exact loss pattern for a given
//     packet sequence.
// Because the bottleneck is FIFO and its service rate is known, each packet's departure and delivery
// times are computed once, on arrival; the packet is then stored in a per-path byte ring in delivery
// order and written to the destination TUN when its time comes. Timer lateness therefore never lowers
// the emulated rate, and the only per-packet work is one read, one write and no copy (the read lands
// directly in the ring of the path it most likely belongs to).
//
// Control: a line protocol on stdin, one reply line per command on stdout. EOF on stdin ends the program,
// so the emulator never outlives its parent. Commands:
//   path FROM TO [delay_us=N] [jitter_us=N] [rate_bps=N] [queue_bytes=N] [queue_us=N] [loss=P] [trace=FILE]
//        FROM and TO are host indexes or '*'; omitted keys are reset to "none" (0 / unlimited / no trace).
//   blackout MS      drop every packet arriving, or due for delivery, in the next MS milliseconds
//   counters         one JSON line with per-path counters
//   quit
// Replies: "ok", "err <message>", or the JSON line.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/virtio_net.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define MAX_HOSTS 8
// The TUN devices carry a virtio_net_hdr before each packet so that checksums can stay unfilled
// (TUN_F_CSUM): the sending stack skips computing them and the receiving stack skips verifying them,
// as between two veth ends. That saves two passes over every byte, which at 10 Gbit/s on two cores is a
// large share of the CPU. The header is passed through unchanged.
#define VNET_HDR_BYTES ((uint32_t)sizeof(struct virtio_net_hdr))
// TUN MTU is at most 65535; every read reserves this much contiguous ring space.
#define MAX_PACKET_BYTES (65536 + VNET_HDR_BYTES)
#define OPPORTUNITY_BYTES 1500
// Packets read from one TUN per wakeup: enough to amortise the poll, few enough that deliveries due on
// other paths are not held back by more than a few packet copies.
#define READ_BATCH 16
#define NS_PER_SEC 1000000000LL

typedef struct {
  uint32_t *ts_ms;  // delivery opportunity times, ascending
  size_t count;
  uint64_t period_ms;  // the trace repeats with this period (its last timestamp)
  int refs;
  char *file;
} trace_t;

typedef struct {
  int64_t delay_ns;
  int64_t jitter_ns;
  uint64_t rate_bps;     // 0: unlimited (unless a trace is set)
  uint64_t queue_bytes;  // 0: unbounded by bytes
  int64_t queue_ns;      // 0: unbounded by sojourn time
  double loss;           // probability in [0, 1]
  trace_t *trace;        // when set, it gives the capacity and rate_bps is unused
} params_t;

// In the ring, a packet is stored as read: a virtio_net_hdr, then the IP packet of `len` bytes.
typedef struct {
  uint32_t off, len;
  int64_t depart_ns, deliver_ns;
} packet_t;

typedef struct {
  params_t p;
  int64_t params_since_ns;
  // byte ring holding packets in delivery order; entries [q_head, q_head + q_count) of `q`
  uint8_t *buf;
  size_t tail;
  packet_t *q;
  uint32_t q_head, q_count;
  uint32_t q_not_departed;  // offset from q_head of the first packet still in the bottleneck queue
  uint64_t backlog_bytes;   // bytes still in the bottleneck queue
  int64_t last_depart_ns, last_deliver_ns;
  // trace cursor: the current delivery opportunity and the bytes it has left
  int64_t trace_base_ns;
  uint64_t trace_loop;
  size_t trace_idx;
  uint32_t trace_left;
  uint64_t rng;
  uint64_t rx_packets, rx_bytes, tx_packets, tx_bytes;
  uint64_t drop_loss, drop_queue, drop_blackout, drop_overflow, write_errors;
  int64_t late_ns_sum, late_ns_max;  // how far actual writes were from their delivery time
} path_t;

static int host_count;
static int tun_fd[MAX_HOSTS];
static uint32_t host_addr[MAX_HOSTS];  // IPv4, host byte order
static path_t paths[MAX_HOSTS][MAX_HOSTS];
static int last_dst[MAX_HOSTS];
static uint64_t unroutable[MAX_HOSTS];
static size_t ring_bytes = 64u << 20;
static uint32_t ring_packets = 1u << 18;
static uint64_t seed = 1;
static int64_t blackout_from_ns, blackout_until_ns;
// How late a ppoll timeout typically fires: a running estimate of the median, which unlike a mean is not
// dragged up by the odd wakeup that a busy machine delays by milliseconds. On this kind of VM it is
// 20-80 us, a large part of the lan profile's 0.1 ms one-way delay, so the loop asks to wake that much
// early and delivers what is due by then.
static int64_t wake_early_ns;
#define WAKE_EARLY_STEP_NS 1000
#define WAKE_EARLY_MAX_NS 200000
static uint8_t scratch[MAX_PACKET_BYTES];

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "linkem: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1);
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * NS_PER_SEC + ts.tv_nsec;
}

static int in_blackout(int64_t t) { return t >= blackout_from_ns && t < blackout_until_ns; }

// splitmix64: small, fast and good enough for loss and jitter draws.
static uint64_t next_random(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static double uniform01(uint64_t *state) { return (double)(next_random(state) >> 11) * 0x1.0p-53; }

// ---- traces ----

static trace_t *trace_load(const char *file, char *err, size_t errlen) {
  FILE *f = fopen(file, "r");
  if (!f) {
    snprintf(err, errlen, "cannot open trace %s: %s", file, strerror(errno));
    return NULL;
  }
  size_t cap = 4096, n = 0;
  uint32_t *ts = malloc(cap * sizeof *ts);
  char line[64];
  unsigned long prev = 0;
  int lineno = 0;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    char *end;
    errno = 0;
    unsigned long v = strtoul(line, &end, 10);
    while (*end == '\r' || *end == '\n' || *end == ' ') end++;
    if (end == line || *end || errno || v > UINT32_MAX || v < prev) {
      snprintf(err, errlen, "trace %s line %d: expected a non-decreasing ms timestamp", file, lineno);
      free(ts);
      fclose(f);
      return NULL;
    }
    if (n == cap) ts = realloc(ts, (cap *= 2) * sizeof *ts);
    ts[n++] = (uint32_t)v;
    prev = v;
  }
  fclose(f);
  if (n == 0 || ts[n - 1] == 0) {
    snprintf(err, errlen, "trace %s: needs at least one opportunity and a last timestamp > 0", file);
    free(ts);
    return NULL;
  }
  trace_t *t = calloc(1, sizeof *t);
  t->ts_ms = ts;
  t->count = n;
  t->period_ms = ts[n - 1];
  t->file = strdup(file);
  return t;
}

static void trace_release(trace_t *t) {
  if (t && --t->refs == 0) {
    free(t->ts_ms);
    free(t->file);
    free(t);
  }
}

static int64_t trace_time_ns(const path_t *l, uint64_t loop, size_t idx) {
  const trace_t *t = l->p.trace;
  return l->trace_base_ns + (int64_t)((loop * t->period_ms + t->ts_ms[idx]) * 1000000ULL);
}

// Number of opportunities with offset <= off_ms in one period.
static size_t trace_count_upto(const trace_t *t, uint64_t off_ms) {
  size_t lo = 0, hi = t->count;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (t->ts_ms[mid] <= off_ms) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Finds the first opportunity at or after `from` (opportunities that passed while the queue was empty
// are lost, as on a real link).
static void trace_seek(const path_t *l, int64_t from, uint64_t *loop_out, size_t *idx_out) {
  const trace_t *t = l->p.trace;
  int64_t rel = from - l->trace_base_ns;
  if (rel < 0) rel = 0;
  uint64_t rel_ms = (uint64_t)((rel + 999999) / 1000000);  // round up: an opportunity is never early
  uint64_t loop = rel_ms / t->period_ms, off = rel_ms % t->period_ms;
  size_t lo = 0, hi = t->count;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (t->ts_ms[mid] < off) lo = mid + 1;
    else hi = mid;
  }
  if (lo == t->count) {
    loop++;
    lo = 0;
  }
  *loop_out = loop;
  *idx_out = lo;
}

// ---- paths ----

static void path_set(path_t *l, const params_t *p, int64_t now) {
  trace_release(l->p.trace);
  l->p = *p;
  if (l->p.trace) {
    l->p.trace->refs++;
    l->trace_base_ns = now;
    l->trace_loop = 0;
    l->trace_idx = 0;
    l->trace_left = OPPORTUNITY_BYTES;
  }
  l->params_since_ns = now;
}

// Capacity the path offered since its parameters were last set, in bytes.
static uint64_t path_capacity_bytes(const path_t *l, int64_t now) {
  int64_t elapsed = now - l->params_since_ns;
  if (l->p.trace) {
    const trace_t *t = l->p.trace;
    uint64_t ms = (uint64_t)(elapsed / 1000000);
    uint64_t n = (ms / t->period_ms) * t->count + trace_count_upto(t, ms % t->period_ms);
    return n * OPPORTUNITY_BYTES;
  }
  return (uint64_t)((double)l->p.rate_bps * (double)elapsed / 8e9);
}

static void path_advance_departed(path_t *l, int64_t now) {
  while (l->q_not_departed < l->q_count) {
    const packet_t *pk = &l->q[(l->q_head + l->q_not_departed) % ring_packets];
    if (pk->depart_ns > now) break;
    l->backlog_bytes -= pk->len;
    l->q_not_departed++;
  }
}

// Contiguous ring space for `need` bytes after the newest packet, or NULL when the ring is full.
static uint8_t *path_reserve(path_t *l, size_t need, uint32_t *off) {
  if (!l->buf) {
    l->buf = malloc(ring_bytes);
    l->q = malloc((size_t)ring_packets * sizeof *l->q);
    if (!l->buf || !l->q) die("out of memory for a %zu-byte ring", ring_bytes);
  }
  if (l->q_count == ring_packets) return NULL;
  if (l->q_count == 0) l->tail = 0;
  size_t head = l->q_count ? l->q[l->q_head].off : 0;
  size_t at;
  if (l->q_count == 0 || l->tail > head) {
    if (ring_bytes - l->tail >= need) at = l->tail;
    else if (head >= need) at = 0;
    else return NULL;
  } else if (l->tail < head && head - l->tail >= need) {
    at = l->tail;
  } else {
    return NULL;
  }
  *off = (uint32_t)at;
  return l->buf + at;
}

// Decides the fate of a packet that arrived at `now` and already lies in the ring at `off`: schedules
// it, or counts why it was dropped (its ring space is then simply reused).
static void path_arrive(path_t *l, uint32_t off, uint32_t len, int64_t now) {
  l->rx_packets++;
  l->rx_bytes += len;
  if (in_blackout(now)) {
    l->drop_blackout++;
    return;
  }
  if (l->p.loss > 0 && uniform01(&l->rng) < l->p.loss) {
    l->drop_loss++;
    return;
  }
  path_advance_departed(l, now);
  if (l->p.queue_bytes && l->backlog_bytes + len > l->p.queue_bytes) {
    l->drop_queue++;
    return;
  }
  int64_t start = now > l->last_depart_ns ? now : l->last_depart_ns;
  int64_t depart;
  if (l->p.trace) {
    // Work on a copy of the cursor: a packet dropped for sojourn time must not consume capacity.
    uint64_t loop = l->trace_loop;
    size_t idx = l->trace_idx;
    uint32_t left = l->trace_left;
    if (left == 0) {
      if (++idx == l->p.trace->count) idx = 0, loop++;
      left = OPPORTUNITY_BYTES;
    }
    if (trace_time_ns(l, loop, idx) < start) {
      trace_seek(l, start, &loop, &idx);
      left = OPPORTUNITY_BYTES;
    }
    uint32_t rest = len;
    // A packet larger than what the current opportunity has left also uses the following ones.
    while (rest > left) {
      rest -= left;
      if (++idx == l->p.trace->count) idx = 0, loop++;
      left = OPPORTUNITY_BYTES;
    }
    left -= rest;
    depart = trace_time_ns(l, loop, idx);
    if (l->p.queue_ns && depart - now > l->p.queue_ns) {
      l->drop_queue++;
      return;
    }
    l->trace_loop = loop, l->trace_idx = idx, l->trace_left = left;
  } else {
    int64_t serialize = l->p.rate_bps ? (int64_t)((uint64_t)len * 8 * NS_PER_SEC / l->p.rate_bps) : 0;
    depart = start + serialize;
    if (l->p.queue_ns && depart - now > l->p.queue_ns) {
      l->drop_queue++;
      return;
    }
  }
  l->last_depart_ns = depart;
  int64_t delay = l->p.delay_ns;
  if (l->p.jitter_ns) delay += (int64_t)((uniform01(&l->rng) * 2 - 1) * (double)l->p.jitter_ns);
  int64_t deliver = depart + (delay > 0 ? delay : 0);
  if (deliver < l->last_deliver_ns) deliver = l->last_deliver_ns;
  l->last_deliver_ns = deliver;
  packet_t *pk = &l->q[(l->q_head + l->q_count) % ring_packets];
  *pk = (packet_t){.off = off, .len = len, .depart_ns = depart, .deliver_ns = deliver};
  l->q_count++;
  l->tail = (size_t)off + VNET_HDR_BYTES + len;
  l->backlog_bytes += len;
}

static void path_pop(path_t *l) {
  if (l->q_not_departed == 0) l->backlog_bytes -= l->q[l->q_head].len;
  else l->q_not_departed--;
  l->q_head = (l->q_head + 1) % ring_packets;
  l->q_count--;
}

// Writes every packet due by `now` + `early`; returns the earliest delivery time still pending.
static int64_t deliver_due(int64_t now, int64_t early) {
  int64_t next = INT64_MAX;
  for (int i = 0; i < host_count; i++) {
    for (int j = 0; j < host_count; j++) {
      path_t *l = &paths[i][j];
      while (l->q_count) {
        const packet_t *pk = &l->q[l->q_head];
        if (pk->deliver_ns > now + early) {
          if (pk->deliver_ns < next) next = pk->deliver_ns;
          break;
        }
        if (in_blackout(pk->deliver_ns)) {
          l->drop_blackout++;
        } else if (write(tun_fd[j], l->buf + pk->off, VNET_HDR_BYTES + pk->len) ==
                   (ssize_t)(VNET_HDR_BYTES + pk->len)) {
          int64_t late = now_ns() - pk->deliver_ns;
          l->tx_packets++;
          l->tx_bytes += pk->len;
          l->late_ns_sum += late;
          if (late > l->late_ns_max) l->late_ns_max = late;
        } else {
          l->write_errors++;
        }
        path_pop(l);
      }
    }
  }
  return next;
}

static int route(const uint8_t *pkt, ssize_t n) {
  if (n < 20 || (pkt[0] >> 4) != 4) return -1;
  // IPv4 destination address
  uint32_t dst = (uint32_t)pkt[16] << 24 | (uint32_t)pkt[17] << 16 | (uint32_t)pkt[18] << 8 | pkt[19];
  for (int j = 0; j < host_count; j++)
    if (host_addr[j] == dst) return j;
  return -1;
}

// Reads up to READ_BATCH packets from host i's TUN.
static void read_host(int i) {
  for (int k = 0; k < READ_BATCH; k++) {
    int guess = last_dst[i];
    path_t *gl = &paths[i][guess];
    uint32_t off = 0;
    uint8_t *dst = path_reserve(gl, MAX_PACKET_BYTES, &off);
    uint8_t *into = dst ? dst : scratch;
    ssize_t n = read(tun_fd[i], into, MAX_PACKET_BYTES);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      die("read from host %d: %s", i, strerror(errno));
    }
    int64_t now = now_ns();
    int j = n > VNET_HDR_BYTES ? route(into + VNET_HDR_BYTES, n - VNET_HDR_BYTES) : -1;
    if (j < 0 || j == i) {
      unroutable[i]++;
      continue;
    }
    path_t *l = &paths[i][j];
    if (!(dst && j == guess)) {
      uint8_t *space = path_reserve(l, (size_t)n, &off);
      if (!space) {
        l->rx_packets++;
        l->rx_bytes += (uint64_t)n - VNET_HDR_BYTES;
        l->drop_overflow++;
        continue;
      }
      memmove(space, into, (size_t)n);
      last_dst[i] = j;
    }
    path_arrive(l, off, (uint32_t)n - VNET_HDR_BYTES, now);
  }
}

// ---- control ----

static int parse_host(const char *s, int *lo, int *hi) {
  if (strcmp(s, "*") == 0) {
    *lo = 0, *hi = host_count - 1;
    return 0;
  }
  char *end;
  long v = strtol(s, &end, 10);
  if (*end || v < 0 || v >= host_count) return -1;
  *lo = *hi = (int)v;
  return 0;
}

static int parse_number(const char *key, const char *value, double min, double max, double *out, char *err,
                        size_t errlen) {
  char *end;
  errno = 0;
  double v = strtod(value, &end);
  if (end == value || *end || errno || !(v >= min && v <= max)) {
    snprintf(err, errlen, "%s=%s: expected a number in [%g, %g]", key, value, min, max);
    return -1;
  }
  *out = v;
  return 0;
}

static int command_path(char *args, char *err, size_t errlen) {
  char *save, *from = strtok_r(args, " ", &save), *to = strtok_r(NULL, " ", &save);
  int flo, fhi, tlo, thi;
  if (!from || !to || parse_host(from, &flo, &fhi) || parse_host(to, &tlo, &thi)) {
    snprintf(err, errlen, "path needs FROM and TO host indexes in [0, %d] or '*'", host_count - 1);
    return -1;
  }
  params_t p = {0};
  char *kv;
  int rc = 0;
  while (rc == 0 && (kv = strtok_r(NULL, " ", &save))) {
    char *eq = strchr(kv, '=');
    if (!eq) {
      snprintf(err, errlen, "%s: expected key=value", kv);
      rc = -1;
      break;
    }
    *eq = 0;
    const char *value = eq + 1;
    double v = 0;
    if (strcmp(kv, "trace") == 0) {
      trace_release(p.trace);
      p.trace = trace_load(value, err, errlen);
      if (!p.trace) rc = -1;
      else p.trace->refs = 1;
    } else if (strcmp(kv, "delay_us") == 0) {
      if (!(rc = parse_number(kv, value, 0, 60e6, &v, err, errlen))) p.delay_ns = (int64_t)(v * 1000);
    } else if (strcmp(kv, "jitter_us") == 0) {
      if (!(rc = parse_number(kv, value, 0, 60e6, &v, err, errlen))) p.jitter_ns = (int64_t)(v * 1000);
    } else if (strcmp(kv, "rate_bps") == 0) {
      if (!(rc = parse_number(kv, value, 0, 1e12, &v, err, errlen))) p.rate_bps = (uint64_t)v;
    } else if (strcmp(kv, "queue_bytes") == 0) {
      if (!(rc = parse_number(kv, value, 0, 1e12, &v, err, errlen))) p.queue_bytes = (uint64_t)v;
    } else if (strcmp(kv, "queue_us") == 0) {
      if (!(rc = parse_number(kv, value, 0, 60e6, &v, err, errlen))) p.queue_ns = (int64_t)(v * 1000);
    } else if (strcmp(kv, "loss") == 0) {
      rc = parse_number(kv, value, 0, 1, &p.loss, err, errlen);
    } else {
      snprintf(err, errlen, "unknown key %s (known: delay_us jitter_us rate_bps queue_bytes queue_us loss trace)",
               kv);
      rc = -1;
    }
  }
  if (rc == 0) {
    int64_t now = now_ns();
    for (int i = flo; i <= fhi; i++)
      for (int j = tlo; j <= thi; j++)
        if (i != j) path_set(&paths[i][j], &p, now);
  }
  // path_set took its own references; drop the one held while parsing.
  trace_release(p.trace);
  return rc;
}

static void command_counters(void) {
  int64_t now = now_ns();
  printf("{\"nowMs\":%.3f,\"blackoutLeftMs\":%.3f,\"wakeEarlyUs\":%.1f,\"unroutable\":[", (double)now / 1e6,
         now < blackout_until_ns ? (double)(blackout_until_ns - now) / 1e6 : 0.0, (double)wake_early_ns / 1e3);
  for (int i = 0; i < host_count; i++) printf("%s%" PRIu64, i ? "," : "", unroutable[i]);
  printf("],\"paths\":[");
  int first = 1;
  for (int i = 0; i < host_count; i++) {
    for (int j = 0; j < host_count; j++) {
      if (i == j) continue;
      path_t *l = &paths[i][j];
      path_advance_departed(l, now);
      printf("%s{\"from\":%d,\"to\":%d,\"rxPackets\":%" PRIu64 ",\"rxBytes\":%" PRIu64 ",\"txPackets\":%" PRIu64
             ",\"txBytes\":%" PRIu64 ",\"dropLoss\":%" PRIu64 ",\"dropQueue\":%" PRIu64 ",\"dropBlackout\":%" PRIu64
             ",\"dropOverflow\":%" PRIu64 ",\"writeErrors\":%" PRIu64 ",\"backlogBytes\":%" PRIu64
             ",\"inFlightPackets\":%u,\"capacityBytes\":%" PRIu64 ",\"paramsAgeMs\":%.3f,\"lateUsMean\":%.1f"
             ",\"lateUsMax\":%.1f}",
             first ? "" : ",", i, j, l->rx_packets, l->rx_bytes, l->tx_packets, l->tx_bytes, l->drop_loss,
             l->drop_queue, l->drop_blackout, l->drop_overflow, l->write_errors, l->backlog_bytes, l->q_count,
             path_capacity_bytes(l, now), (double)(now - l->params_since_ns) / 1e6,
             l->tx_packets ? (double)l->late_ns_sum / (double)l->tx_packets / 1e3 : 0.0, (double)l->late_ns_max / 1e3);
      first = 0;
    }
  }
  printf("]}\n");
}

// Returns 0 to keep running, 1 to quit.
static int command(char *line) {
  char err[256] = "";
  char *sp = strchr(line, ' ');
  char *args = sp ? sp + 1 : line + strlen(line);
  if (sp) *sp = 0;
  if (strcmp(line, "path") == 0) {
    if (command_path(args, err, sizeof err) == 0) printf("ok\n");
    else printf("err %s\n", err);
  } else if (strcmp(line, "blackout") == 0) {
    double ms;
    if (parse_number("blackout", args, 0, 3600e3, &ms, err, sizeof err) == 0) {
      blackout_from_ns = now_ns();
      blackout_until_ns = blackout_from_ns + (int64_t)(ms * 1e6);
      printf("ok\n");
    } else {
      printf("err %s\n", err);
    }
  } else if (strcmp(line, "counters") == 0) {
    command_counters();
  } else if (strcmp(line, "quit") == 0) {
    printf("ok\n");
    fflush(stdout);
    return 1;
  } else {
    printf("err unknown command '%s' (known: path blackout counters quit)\n", line);
  }
  fflush(stdout);
  return 0;
}

// Reads whatever stdin has; runs each complete line. Returns 1 on quit or EOF.
static int read_control(void) {
  static char buf[8192];
  static size_t used;
  ssize_t n = read(0, buf + used, sizeof buf - 1 - used);
  if (n == 0) return 1;
  if (n < 0) return errno == EAGAIN || errno == EINTR ? 0 : 1;
  used += (size_t)n;
  buf[used] = 0;
  char *start = buf, *nl;
  while ((nl = strchr(start, '\n'))) {
    *nl = 0;
    if (command(start)) return 1;
    start = nl + 1;
  }
  used -= (size_t)(start - buf);
  memmove(buf, start, used);
  if (used == sizeof buf - 1) die("control line longer than %zu bytes", sizeof buf - 1);
  return 0;
}

// ---- setup ----

static int open_tun_in(const char *netns, const char *dev) {
  char file[PATH_MAX];
  snprintf(file, sizeof file, "/run/netns/%s", netns);
  int self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
  int target = open(file, O_RDONLY | O_CLOEXEC);
  if (self < 0 || target < 0) die("cannot open network namespace %s (create it with `ip netns add`)", file);
  if (setns(target, CLONE_NEWNET) < 0) die("setns %s: %s (needs root)", netns, strerror(errno));
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) die("open /dev/net/tun: %s", strerror(errno));
  struct ifreq ifr = {0};
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR;
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", dev);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) die("TUNSETIFF %s in %s: %s", dev, netns, strerror(errno));
  if (ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM) < 0) die("TUNSETOFFLOAD %s: %s", dev, strerror(errno));
  if (setns(self, CLONE_NEWNET) < 0) die("setns back: %s", strerror(errno));
  close(self);
  close(target);
  return fd;
}

static void usage(void) {
  fprintf(stderr,
          "usage: linkem [--seed N] [--ring-mib N] [--dev NAME] NETNS=IPV4 NETNS=IPV4 [...]\n"
          "  creates a TUN device NAME (default tun0) in each namespace and forwards between them;\n"
          "  IPV4 is the host's address, used to route packets by destination. Control on stdin.\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *dev = "tun0";
  char *hosts[MAX_HOSTS];
  for (int a = 1; a < argc; a++) {
    if (strcmp(argv[a], "--seed") == 0 && a + 1 < argc) {
      seed = strtoull(argv[++a], NULL, 10);
    } else if (strcmp(argv[a], "--ring-mib") == 0 && a + 1 < argc) {
      long mib = strtol(argv[++a], NULL, 10);
      if (mib < 1 || mib > 4096) die("--ring-mib %ld: expected 1..4096", mib);
      ring_bytes = (size_t)mib << 20;
    } else if (strcmp(argv[a], "--dev") == 0 && a + 1 < argc) {
      dev = argv[++a];
    } else if (argv[a][0] == '-') {
      usage();
    } else {
      if (host_count == MAX_HOSTS) die("at most %d hosts", MAX_HOSTS);
      hosts[host_count++] = argv[a];
    }
  }
  if (host_count < 2) usage();
  // Default timer slack (50 us) would add up to half the lan profile's one-way delay.
  prctl(PR_SET_TIMERSLACK, 1UL);
  signal(SIGPIPE, SIG_IGN);
  for (int i = 0; i < host_count; i++) {
    char *eq = strchr(hosts[i], '=');
    unsigned a, b, c, d;
    if (!eq || sscanf(eq + 1, "%u.%u.%u.%u", &a, &b, &c, &d) != 4 || (a | b | c | d) > 255)
      die("host '%s': expected NETNS=IPV4", hosts[i]);
    *eq = 0;
    host_addr[i] = a << 24 | b << 16 | c << 8 | d;
    tun_fd[i] = open_tun_in(hosts[i], dev);
    last_dst[i] = i == 0 ? 1 : 0;
  }
  for (int i = 0; i < host_count; i++)
    for (int j = 0; j < host_count; j++) paths[i][j].rng = seed * 0x100000001b3ULL + (uint64_t)(i * MAX_HOSTS + j);
  fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
  printf("ready\n");
  fflush(stdout);

  struct pollfd fds[MAX_HOSTS + 1];
  fds[0] = (struct pollfd){.fd = 0, .events = POLLIN};
  for (int i = 0; i < host_count; i++) fds[i + 1] = (struct pollfd){.fd = tun_fd[i], .events = POLLIN};
  for (;;) {
    int64_t next = deliver_due(now_ns(), wake_early_ns);
    struct timespec timeout, *tp = NULL;
    int64_t wake_at = next - wake_early_ns, wait = 0;
    if (next != INT64_MAX) {
      wait = wake_at - now_ns();
      if (wait < 0) wait = 0;
      timeout = (struct timespec){.tv_sec = wait / NS_PER_SEC, .tv_nsec = wait % NS_PER_SEC};
      tp = &timeout;
    }
    int n = ppoll(fds, (nfds_t)host_count + 1, tp, NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("ppoll: %s", strerror(errno));
    }
    if (n == 0 && wait > 0) {
      if (now_ns() - wake_at > wake_early_ns) {
        if (wake_early_ns < WAKE_EARLY_MAX_NS) wake_early_ns += WAKE_EARLY_STEP_NS;
      } else if (wake_early_ns > 0) {
        wake_early_ns -= WAKE_EARLY_STEP_NS;
      }
    }
    for (int i = 0; i < host_count; i++)
      if (fds[i + 1].revents & POLLIN) read_host(i);
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR) && read_control()) break;
  }
  return 0;
}
