/**
 * Link probing, the pure part: what one peer's link measured, from samples fed in with their time.
 * Round-trip times (smoothed as TCP does, RFC 6298, and a windowed minimum, the propagation delay as
 * BBR estimates it), the delivered rate (a windowed maximum: any transfer's rate is a lower bound on
 * what the link carries) and the retransmit ratio (from the stream sockets' TCP_INFO counters, spurious
 * retransmissions taken out, over the last minute of traffic rather than of time, so an idle link
 * keeps what its last transfer taught). No clock and no IO here: the caller samples and passes nowMs.
 *
 * Retransmissions are the link's loss only when the sender was not overflowing a queue itself. A
 * transfer that fills a LAN or metro link drops packets at the bottleneck's tail (BBRv1 with several
 * streams retransmits over 10 % of what it sends through a one-RTT buffer), and counting those as the
 * path's loss would call every saturated LAN "lossy". So each interval of a socket's counters is
 * classified as TCP Veno does (Fu & Liew, IEEE JSAC 2003): the segments queued along the path are
 * cwnd × (RTT − min RTT) / RTT; with at least CONGESTION_BACKLOG_SEGMENTS queued, losses are the
 * queue's (congestion), and the interval goes to a separate tally instead of the loss ratio.
 */
import type { TcpInfo } from "../../ffi/tcp_info.ts";

/**
 * What a round-trip sample came from: a transfer's connection as it authenticated, an idle probe, or
 * the periodic TCP_INFO of a transfer's socket. (The IO edge takes the kernel's figure for the first two
 * as well, and times the handshake itself only where TCP_INFO is not available.)
 */
export type RttSource = "handshake" | "probe" | "tcp_info";

export interface LinkStatsOptions {
  /** How long a round-trip sample counts towards the minimum. */
  minRttWindowMs: number;
  /** How long a delivered rate counts towards the maximum. */
  rateWindowMs: number;
  /** The retransmit ratio covers the last lossWindowMs of traffic, and at least its last lossWindowBytes. */
  lossWindowMs: number;
  lossWindowBytes: number;
}

export const DEFAULT_STATS_OPTIONS: LinkStatsOptions = {
  minRttWindowMs: 30_000,
  rateWindowMs: 300_000,
  lossWindowMs: 60_000,
  lossWindowBytes: 256 * 1024 * 1024,
};

/** What the mode policy and the API read; optional figures are absent until something measured them. */
export interface LinkMeasurements {
  rttSamples: number;
  latestRttMs?: number;
  lastRttAtMs?: number;
  lastRttSource?: RttSource;
  /** RFC 6298 smoothed round trip and mean deviation: what TCP's own loop sees, queueing included. */
  smoothedRttMs?: number;
  rttVariationMs?: number;
  /** Least round trip within minRttWindowMs: the path's propagation delay, without queueing. */
  minRttMs?: number;
  latestDeliveredBytesPerSec?: number;
  /** Greatest delivered rate within rateWindowMs. */
  maxDeliveredBytesPerSec?: number;
  /**
   * Segments retransmitted, less those the receiver reported as needless (D-SACK), per segment sent,
   * over the last minute of traffic (and at least 256 MiB): the link's loss as TCP saw it. Absent before
   * anything was sent.
   */
  retransmitRatio?: number;
  /** What retransmitRatio is taken over: small samples say little about rare losses. */
  retransmitSampleSegments: number;
  retransmitSampleBytes: number;
  /**
   * The same ratio over the intervals left out of retransmitRatio because the socket had a standing queue
   * (congestion: the transfer's own overflow, see the module comment), and its sample size.
   */
  queuedRetransmitRatio?: number;
  queuedSampleSegments: number;
  /** Segment size and congestion control of the peer's most recently sampled socket. */
  mssBytes?: number;
  congestion?: string;
  lastSampleAtMs?: number;
}

/** Smoothing gains of RFC 6298: 1/8 for the mean, 1/4 for the deviation. */
const RTT_ALPHA = 1 / 8;
const RTT_BETA = 1 / 4;
/** Sockets whose counters are remembered; the oldest is forgotten first (a transfer has at most 65). */
const MAX_SOCKETS = 256;
/** Veno's β: a socket with this many segments queued along the path is congesting it. */
const CONGESTION_BACKLOG_SEGMENTS = 3;

/** The least or greatest value over a sliding time window, kept in a bounded number of time buckets. */
class WindowedExtreme {
  readonly #buckets: { startMs: number; value: number }[] = [];
  readonly #widthMs: number;

  constructor(readonly windowMs: number, readonly keep: (a: number, b: number) => number, buckets = 10) {
    this.#widthMs = windowMs / buckets;
  }

  add(nowMs: number, value: number): void {
    this.#expire(nowMs);
    const last = this.#buckets.at(-1);
    if (last && nowMs - last.startMs < this.#widthMs) last.value = this.keep(last.value, value);
    else this.#buckets.push({ startMs: nowMs, value });
  }

  /** The extreme of the samples of the last windowMs (up to one bucket width more); undefined if none. */
  value(nowMs: number): number | undefined {
    this.#expire(nowMs);
    return this.#buckets.length
      ? this.#buckets.map((b) => b.value).reduce((a, b) => this.keep(a, b))
      : undefined;
  }

  #expire(nowMs: number): void {
    while (this.#buckets.length && nowMs - this.#buckets[0].startMs >= this.windowMs) this.#buckets.shift();
  }
}

/** What a socket sent and retransmitted: cumulative counters, or the growth between two samples. */
interface Counters {
  sentBytes: number;
  sentSegments: number;
  /** Retransmitted segments, less those the receiver reported as duplicates (D-SACK): spurious ones. */
  lostSegments: number;
}

/**
 * Lost / sent segments over the last windowMs of traffic, and at least its last windowBytes: a fast link
 * fills the bytes in a second and the minute smooths its estimate, a slow one needs the bytes to say
 * anything about rare losses. Only traffic moves the window, so an idle link keeps its estimate.
 */
class LossWindow {
  readonly #buckets: (Counters & { startMs: number })[] = [];

  constructor(readonly windowMs: number, readonly windowBytes: number, readonly buckets = 16) {}

  add(nowMs: number, c: Counters): void {
    let last = this.#buckets.at(-1);
    if (!last || nowMs - last.startMs >= this.windowMs / this.buckets) {
      last = { startMs: nowMs, sentBytes: 0, sentSegments: 0, lostSegments: 0 };
      this.#buckets.push(last);
    }
    last.sentBytes += c.sentBytes;
    last.sentSegments += c.sentSegments;
    last.lostSegments += c.lostSegments;
    // The oldest bucket goes once all of it is older than the window and the rest holds enough bytes.
    while (
      this.#buckets.length > 1 && nowMs - this.#buckets[1].startMs >= this.windowMs &&
      this.#sum("sentBytes") - this.#buckets[0].sentBytes >= this.windowBytes
    ) {
      this.#buckets.shift();
    }
    // A slow link keeps more than a minute's buckets to hold its bytes: coarsen its oldest ones.
    if (this.#buckets.length > 4 * this.buckets) {
      const [a, b] = this.#buckets.splice(0, 2);
      this.#buckets.unshift({
        startMs: a.startMs,
        sentBytes: a.sentBytes + b.sentBytes,
        sentSegments: a.sentSegments + b.sentSegments,
        lostSegments: a.lostSegments + b.lostSegments,
      });
    }
  }

  get sentBytes(): number {
    return this.#sum("sentBytes");
  }

  get sentSegments(): number {
    return this.#sum("sentSegments");
  }

  /**
   * Undefined before anything was sent. A D-SACK can arrive a sample after its retransmission was
   * counted, so a bucket may hold a negative count: the sum, not each bucket, is what is clamped.
   */
  get ratio(): number | undefined {
    const sent = this.sentSegments;
    return sent > 0 ? Math.max(0, this.#sum("lostSegments")) / sent : undefined;
  }

  /** Summed from the buckets each time (a few dozen), so removing old ones leaves no rounding drift. */
  #sum(key: keyof Counters): number {
    return this.#buckets.reduce((sum, b) => sum + b[key], 0);
  }
}

/**
 * Segments the socket has queued along the path (Veno's N = cwnd × (RTT − base RTT) / RTT); undefined
 * when the kernel did not report the window or the round trips.
 */
function queuedSegments(info: TcpInfo): number | undefined {
  const { sndCwndSegments: cwnd, rttUs, minRttUs } = info;
  if (cwnd === undefined || !rttUs || minRttUs === undefined) return undefined;
  return cwnd * Math.max(0, rttUs - minRttUs) / rttUs;
}

/**
 * A socket's counters so far. Segments are TCP's own unit of loss (and Mathis's p); bytes, where the
 * kernel has them (4.19+), measure the window, else segments times the MSS do.
 */
function counters(info: TcpInfo): Counters | undefined {
  if (info.segsOut === undefined || info.totalRetransSegments === undefined) return undefined;
  return {
    sentBytes: info.bytesSent ?? info.segsOut * (info.sndMssBytes ?? 0),
    sentSegments: info.segsOut,
    lostSegments: info.totalRetransSegments - (info.dsackDups ?? 0),
  };
}

export class LinkStats {
  readonly #minRtt: WindowedExtreme;
  readonly #maxRate: WindowedExtreme;
  readonly #loss: LossWindow;
  /** Intervals with a standing queue: kept apart from #loss, and shown. */
  readonly #queuedLoss: LossWindow;
  readonly #sockets = new Map<string, Counters>();
  #rttSamples = 0;
  #latestRttMs?: number;
  #lastRttAtMs?: number;
  #lastRttSource?: RttSource;
  #srttMs?: number;
  #rttVarMs?: number;
  #latestRate?: number;
  #mssBytes?: number;
  #congestion?: string;
  #lastSampleAtMs?: number;

  constructor(readonly options: LinkStatsOptions = DEFAULT_STATS_OPTIONS) {
    this.#minRtt = new WindowedExtreme(options.minRttWindowMs, Math.min);
    this.#maxRate = new WindowedExtreme(options.rateWindowMs, Math.max);
    this.#loss = new LossWindow(options.lossWindowMs, options.lossWindowBytes);
    this.#queuedLoss = new LossWindow(options.lossWindowMs, options.lossWindowBytes);
  }

  /** One round-trip sample. minRttMs: a lower figure the source measured alongside (TCP's min_rtt). */
  addRtt(nowMs: number, rttMs: number, source: RttSource, minRttMs = rttMs): void {
    if (!(rttMs >= 0) || !Number.isFinite(rttMs)) {
      throw new RangeError(`rttMs = ${rttMs}: a round-trip time is a finite number of ms, 0 or more`);
    }
    this.#seen(nowMs);
    this.#rttSamples++;
    this.#latestRttMs = rttMs;
    this.#lastRttAtMs = nowMs;
    this.#lastRttSource = source;
    if (this.#srttMs === undefined || this.#rttVarMs === undefined) {
      this.#srttMs = rttMs;
      this.#rttVarMs = rttMs / 2;
    } else {
      this.#rttVarMs += RTT_BETA * (Math.abs(this.#srttMs - rttMs) - this.#rttVarMs);
      this.#srttMs += RTT_ALPHA * (rttMs - this.#srttMs);
    }
    this.#minRtt.add(nowMs, Math.min(rttMs, minRttMs));
  }

  /** A transfer to the peer delivered this rate (wire bytes per second), lately or over its whole life. */
  addDelivered(nowMs: number, bytesPerSec: number): void {
    if (!(bytesPerSec >= 0) || !Number.isFinite(bytesPerSec)) {
      throw new RangeError(`bytesPerSec = ${bytesPerSec}: a delivered rate is a finite number, 0 or more`);
    }
    this.#seen(nowMs);
    this.#latestRate = bytesPerSec;
    this.#maxRate.add(nowMs, bytesPerSec);
  }

  /**
   * TCP_INFO of one of the peer's sockets (socket: any stable key for it, such as its 4-tuple). Feeds
   * the round trip and the retransmit counters; counters are cumulative, so only the growth since the
   * socket's previous sample is added (its first sample adds all it did since it opened), to the loss
   * ratio, or to the queued tally when the socket has a standing queue now (see the module comment).
   */
  addTcpInfo(nowMs: number, socket: string, info: TcpInfo): void {
    this.#seen(nowMs);
    if (info.sndMssBytes) this.#mssBytes = info.sndMssBytes;
    if (info.congestion) this.#congestion = info.congestion;
    if (info.rttUs !== undefined && info.rttUs > 0) {
      this.addRtt(nowMs, info.rttUs / 1000, "tcp_info", (info.minRttUs ?? info.rttUs) / 1000);
    }
    const now = counters(info);
    if (!now) return;
    const zero = { sentBytes: 0, sentSegments: 0, lostSegments: 0 };
    const before = this.#sockets.get(socket) ?? zero;
    // Segments sent only grow; fewer mean the key now names a new socket, which starts from zero.
    const base = now.sentSegments < before.sentSegments ? zero : before;
    if (now.sentSegments > base.sentSegments) {
      const queued = (queuedSegments(info) ?? 0) >= CONGESTION_BACKLOG_SEGMENTS;
      (queued ? this.#queuedLoss : this.#loss).add(nowMs, {
        sentBytes: now.sentBytes - base.sentBytes,
        sentSegments: now.sentSegments - base.sentSegments,
        lostSegments: now.lostSegments - base.lostSegments,
      });
    }
    this.#sockets.delete(socket); // re-inserted last, so the map's order is least recently sampled first
    this.#sockets.set(socket, now);
    if (this.#sockets.size > MAX_SOCKETS) this.#sockets.delete(this.#sockets.keys().next().value!);
  }

  /** The socket closed: forget its counters. */
  socketClosed(socket: string): void {
    this.#sockets.delete(socket);
  }

  measurements(nowMs: number): LinkMeasurements {
    return {
      rttSamples: this.#rttSamples,
      latestRttMs: this.#latestRttMs,
      lastRttAtMs: this.#lastRttAtMs,
      lastRttSource: this.#lastRttSource,
      smoothedRttMs: this.#srttMs,
      rttVariationMs: this.#rttVarMs,
      minRttMs: this.#minRtt.value(nowMs),
      latestDeliveredBytesPerSec: this.#latestRate,
      maxDeliveredBytesPerSec: this.#maxRate.value(nowMs),
      retransmitRatio: this.#loss.ratio,
      retransmitSampleSegments: this.#loss.sentSegments,
      retransmitSampleBytes: this.#loss.sentBytes,
      queuedRetransmitRatio: this.#queuedLoss.ratio,
      queuedSampleSegments: this.#queuedLoss.sentSegments,
      mssBytes: this.#mssBytes,
      congestion: this.#congestion,
      lastSampleAtMs: this.#lastSampleAtMs,
    };
  }

  #seen(nowMs: number): void {
    this.#lastSampleAtMs = Math.max(nowMs, this.#lastSampleAtMs ?? nowMs);
  }
}
