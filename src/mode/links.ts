/**
 * Link probing, the IO edge: feeds each peer's LinkStats and ModePolicy (the pure parts) from what the
 * agent sees. Round trips come from the agent's own connections as they authenticate and, when a peer is
 * idle, from a probe (connect and authenticate to its data port, then hang up), each read from the
 * kernel's TCP_INFO of that connection (the handshake timed in the agent where TCP_INFO is missing);
 * delivered rates from the transfers the agent sends and, when a peer is idle, from a rate probe (a short
 * burst the peer reads and drops, src/transport/rate_probe.ts); retransmissions from TCP_INFO of the
 * transfers' sockets, sampled every second. The transfers the agent receives show the reverse
 * direction's rate, kept apart. Time, the probes, TCP_INFO and the timer are injected.
 */
import { ShimError } from "../../ffi/library.ts";
import { setCongestionControl, type TcpEndpoints, type TcpInfo, tcpInfo } from "../../ffi/tcp_info.ts";
import type { AgentConfig } from "../agent/config.ts";
import type { Logger } from "../obs/log.ts";
import type { TransferProgress } from "../obs/progress.ts";
import { dial, type DialObserver, dialPeer, type PeerAddress } from "../transport/dial.ts";
import type { PeerIdentity } from "../transport/handshake.ts";
import { RATE_PROBE_LIMITS, type RateSample, sendRateProbe } from "../transport/rate_probe.ts";
import { closeQuietly } from "../transport/wire.ts";
import { type LinkMeasurements, LinkStats } from "./link_stats.ts";
import { type HostFacts, type ModeParameters, modeParameters, type TransferDefaults } from "./parameters.ts";
import { type LinkMode, type ModeChange, ModePolicy, type PolicyTiming } from "./policy.ts";
import type { Forecast, ForecastBook, PeerForecastView } from "../predict/peer_forecast.ts";

/** How often sockets and transfers are sampled and the policies stepped. */
const SAMPLE_INTERVAL_MS = 1000;
/** The kernel's TCP state of an open connection (include/net/tcp_states.h). */
const TCP_ESTABLISHED = 1;
/** The forecast a transfer's streams are counted for: the next 10 s, the span of a transfer or a pass. */
const STREAMS_FORECAST_HORIZON_STEPS = 10;
/** Peers named only by HOST:PORT in requests that are tracked; the least recently used goes first. */
const MAX_UNNAMED_PEERS = 64;
/**
 * A rate probe carries what this long at the link's last known rate carries, within the bounds below:
 * long enough to leave TCP's slow start on a fast link, short enough to cost the link little.
 */
const RATE_PROBE_TARGET_MS = 250;
const RATE_PROBE_MIN_BYTES = 256 * 1024;
const RATE_PROBE_MAX_BYTES = 4 * 1024 * 1024;
/** Without a known rate: 1 MiB, 8 s at 1 Mbit/s, so a slow link's first probe ends well within its timeout. */
const RATE_PROBE_UNKNOWN_RATE_BYTES = 1024 * 1024;

/** What the transfer service asks of link probing (PeerLinks implements it). */
export interface LinkHooks {
  /** The settings the peer's mode gives its link; undefined before the link has a mode. */
  parametersFor(peer: string): ModeParameters | undefined;
  observer(peer: string): DialObserver;
  transferStarted(peer: string, progress: TransferProgress): void;
  /** The peer's bandwidth forecast (wire bytes/s), for ETAs; undefined without a history. */
  forecast(peer: string): Forecast | undefined;
}

export interface PeerLinksDeps {
  /** Configured peers: name → HOST:PORT of its data port. */
  peers: Record<string, string>;
  /** Operator pins from the config: peer → mode. */
  pins: Record<string, LinkMode>;
  timing: PolicyTiming;
  /** An idle peer (no round trip measured for this long) is probed. */
  probeIntervalMs: number;
  host: HostFacts;
  defaults: TransferDefaults;
  /** Connects and authenticates to a peer's data port, hangs up, and resolves with the round trip. */
  probe(peer: string): Promise<RttSample>;
  tcpInfo(conn: TcpEndpoints): TcpInfo | undefined;
  /**
   * Sets a connection's congestion control; false when it has closed. Throws (a ShimError) when the kernel
   * lacks the algorithm or refuses it to this process.
   */
  setCongestion(conn: TcpEndpoints, name: string): boolean;
  now(): number;
  /** Runs fn every ms until the returned function is called. */
  every(ms: number, fn: () => void): () => void;
  /** Active rate probes of idle peers; absent: delivered rates come from transfers only. */
  rateProbe?: RateProbing;
  /** Bandwidth forecasting: fed one sample per tick in which transfers to the peer ran. */
  forecasts?: ForecastBook;
  log: Logger;
}

export interface RateProbing {
  /** A peer with no delivered-rate sample (and no rate probe) for this long, and no transfer, is probed. */
  intervalMs: number;
  /** Sends bytes to the peer's data port, which reads and drops them; resolves with how long that took. */
  probe(peer: string, bytes: number): Promise<RateSample>;
}

interface Peer {
  id: string;
  address: string;
  configured: boolean;
  stats: LinkStats;
  policy: ModePolicy;
  /** Connections to the peer whose TCP_INFO is sampled, by 4-tuple. */
  sockets: Map<string, TcpEndpoints>;
  /** Running transfers to the peer, each with the end of its progress subscription. */
  transfers: Map<TransferProgress, () => void>;
  probing: boolean;
  lastProbe?: { atMs: number; rttMs?: number; error?: string };
  /** When the latest delivered rate was added to stats, from a transfer or a rate probe. */
  lastDeliveredAtMs?: number;
  rateProbing: boolean;
  lastRateProbe?: { atMs: number; bytes: number; bytesPerSec?: number; receiveMs?: number; error?: string };
  /** Transfers this agent receives from the peer: the reverse direction's rate. */
  incoming: Set<TransferProgress>;
  received?: { atMs: number; bytesPerSec: number };
}

export interface PeerView {
  id: string;
  address: string;
  configured: boolean;
  mode: {
    current: LinkMode | null;
    since: string | null;
    pinned: LinkMode | null;
    reason: string;
    /** What each metric alone points at. */
    byRtt: LinkMode | null;
    byLoss: LinkMode | null;
    /** A different mode the measurements point at, waiting out the confirmation and dwell times. */
    candidate: { mode: LinkMode; since: string } | null;
    minDwellMs: number;
    confirmMs: number;
  };
  measurements: LinkMeasurements;
  /** The settings the mode gives this link; null until it has a mode (transfers use the config then). */
  parameters: ModeParameters | null;
  probe: {
    intervalMs: number;
    probing: boolean;
    lastAt: string | null;
    lastRttMs: number | null;
    error: string | null;
    /** Rate probes of the idle peer, every link.rateProbeIntervalMs (0: off). */
    rateIntervalMs: number;
    rateProbing: boolean;
    lastRateAt: string | null;
    lastRateBytes: number | null;
    lastRateBytesPerSec: number | null;
    /** The peer's time from the probe's first byte to its last, which the rate's time exceeds by a round trip. */
    lastRateReceiveMs: number | null;
    rateError: string | null;
  };
  /**
   * Transfers from the peer to this agent: the rate of the other direction, which the measurements (this
   * agent's sending direction) leave out. null until one ran.
   */
  received: { latestBytesPerSec: number | null; at: string | null; transfersRunning: number };
  transfersRunning: number;
  socketsSampled: number;
}

export class UnknownLinkError extends Error {
  override name = "UnknownLinkError";
}

/** A round trip, and the least one seen alongside it (TCP's min_rtt) when there is one. */
export interface RttSample {
  rttMs: number;
  minRttMs?: number;
}

/**
 * The kernel's round trip of a connection: measured on every acknowledgement and free of the event-loop
 * delays that timing a handshake in the agent adds (0.5 ms or more on loopback, against 0.02 ms).
 */
function kernelRtt(info: TcpInfo | undefined): RttSample | undefined {
  if (!info?.rttUs) return undefined;
  return { rttMs: info.rttUs / 1000, minRttMs: (info.minRttUs ?? info.rttUs) / 1000 };
}

const iso = (ms: number | undefined) => ms === undefined ? null : new Date(ms).toISOString();
const socketKey = (c: TcpEndpoints) => {
  const l = c.localAddr as Deno.NetAddr, r = c.remoteAddr as Deno.NetAddr;
  return `${l.hostname}:${l.port}-${r.hostname}:${r.port}`;
};

export class PeerLinks implements LinkHooks {
  readonly #peers = new Map<string, Peer>();
  #stopTimer?: () => void;
  /** Set once TCP_INFO failed for a reason other than a closed socket: sampling stops, said once. */
  #tcpInfoBroken = false;
  /** Kinds of failure (ShimError status) to set a congestion control already logged: each is said once. */
  readonly #congestionFailures = new Set<number | string>();

  constructor(readonly deps: PeerLinksDeps) {
    for (const [name, address] of Object.entries(deps.peers)) this.#add(name, address, true);
    for (const [peer, mode] of Object.entries(deps.pins)) this.#peer(peer).policy.pin(deps.now(), mode);
  }

  /** The id a peer is tracked under: its configured name, also when it is given by its address. */
  idOf(peer: string): string {
    if (this.deps.peers[peer]) return peer;
    return Object.entries(this.deps.peers).find(([, address]) => address === peer)?.[0] ?? peer;
  }

  /** Starts sampling every SAMPLE_INTERVAL_MS. */
  start(): void {
    this.#stopTimer ??= this.deps.every(SAMPLE_INTERVAL_MS, () => void this.tick());
  }

  stop(): void {
    this.#stopTimer?.();
    this.#stopTimer = undefined;
  }

  /** For dial(): records each connection's handshake round trip and samples the connection from then on. */
  observer(peer: string): DialObserver {
    const p = this.#peer(peer);
    return {
      connected: (conn, handshakeRttMs) => {
        const endpoints = { localAddr: conn.localAddr, remoteAddr: conn.remoteAddr };
        const info = this.#read(endpoints);
        const kernel = kernelRtt(info);
        p.stats.addRtt(this.deps.now(), kernel?.rttMs ?? handshakeRttMs, "handshake", kernel?.minRttMs);
        p.sockets.set(socketKey(conn), endpoints);
        this.#setCongestion(p, endpoints, info?.congestion);
      },
    };
  }

  /**
   * Gives a new connection to the peer the congestion control its mode chose, where the socket runs
   * another (the host's default). Unknown (no TCP_INFO) means the kernel cannot be asked to set it either.
   * A failure leaves the connection running the default: it still carries the transfer.
   */
  #setCongestion(p: Peer, endpoints: TcpEndpoints, running: string | undefined): void {
    const wanted = this.#parameters(p)?.congestionControl;
    if (wanted === undefined || running === undefined || running === wanted) return;
    try {
      this.deps.setCongestion(endpoints, wanted); // false: it closed already, nothing left to set
    } catch (err) {
      const kind = err instanceof ShimError ? err.status : (err as Error).name;
      if (this.#congestionFailures.has(kind)) return;
      this.#congestionFailures.add(kind);
      this.deps.log("congestion control not set: the link's sockets run the host's default", {
        peer: p.id,
        wanted,
        running,
        error: (err as Error).message,
      });
    }
  }

  /**
   * A transfer to peer started: its delivered rate is sampled while it runs, and its average at the end.
   * Its sockets are also sampled with each progress notice (at most every 200 ms): they close as the
   * transfer ends, and a closed socket tells nothing, so the once-a-second tick alone would miss the
   * last second of a transfer, or all of a short one.
   */
  transferStarted(peer: string, progress: TransferProgress): void {
    const p = this.#peer(peer);
    p.transfers.set(progress, progress.subscribe(() => this.#sampleSockets(p, this.deps.now())));
  }

  /**
   * A transfer from peer (the agent id its handshake gave) was accepted. It measures the reverse
   * direction, so it does not feed the stats; its rate is shown apart. Only a configured peer's: any agent
   * holding the secret can call itself anything, and a name this agent cannot reach is no link to track.
   */
  transferReceived(peer: string, progress: TransferProgress): void {
    const p = this.#peers.get(this.idOf(peer));
    if (p?.configured) p.incoming.add(progress);
  }

  /** The settings the peer's mode gives its link (TLS, codec bias, ...); undefined before it has a mode. */
  parametersFor(peer: string): ModeParameters | undefined {
    return this.#parameters(this.#peer(peer));
  }

  /**
   * One round: samples sockets and transfers, steps every policy, and probes idle peers: their round
   * trip, or else their rate (never both at once: a burst queued on the link would inflate the round
   * trip). Resolves once the probes it started have finished.
   */
  async tick(): Promise<void> {
    const probes: Promise<void>[] = [];
    for (const p of this.#peers.values()) {
      const now = this.deps.now();
      this.#sampleSockets(p, now);
      this.#sampleTransfers(p, now);
      this.#sampleReceived(p, now);
      const lastRtt = p.stats.measurements(now).lastRttAtMs;
      const idle = p.transfers.size === 0 &&
        (lastRtt === undefined || now - lastRtt >= this.deps.probeIntervalMs);
      if (!p.probing && !p.rateProbing) {
        if (idle) probes.push(this.#probe(p));
        else if (this.#rateProbeDue(p, now)) probes.push(this.#rateProbe(p, this.deps.rateProbe!));
      }
      this.#step(p, now);
    }
    await Promise.all(probes);
  }

  list(): PeerView[] {
    return [...this.#peers.values()].map((p) => this.#view(p));
  }

  /** The link to a configured peer, or one this agent has talked to; undefined for any other id. */
  view(id: string): PeerView | undefined {
    const p = this.#peers.get(this.idOf(id));
    return p && this.#view(p);
  }

  /** Pins a peer's mode, or lifts the pin (mode undefined). Throws UnknownLinkError for an unknown peer. */
  pin(id: string, mode: LinkMode | undefined): PeerView {
    const p = this.#peers.get(this.idOf(id));
    if (!p) {
      throw new UnknownLinkError(
        `no link to "${id}": pin a configured peer (${Object.keys(this.deps.peers).join(", ") || "none"}) ` +
          `or one this agent has sent to; GET /v1/peers lists them`,
      );
    }
    const change = p.policy.pin(this.deps.now(), mode);
    this.deps.log(mode ? "link mode pinned" : "link mode pin lifted", { peer: p.id, mode, ...change });
    return this.#view(p);
  }

  #peer(peer: string): Peer {
    const id = this.idOf(peer);
    const known = this.#peers.get(id);
    if (known) {
      if (!known.configured) { // most recently used last, for the eviction below
        this.#peers.delete(id);
        this.#peers.set(id, known);
      }
      return known;
    }
    const unnamed = [...this.#peers.values()].filter((p) => !p.configured);
    if (unnamed.length >= MAX_UNNAMED_PEERS) this.#peers.delete(unnamed[0].id);
    return this.#add(id, id, false);
  }

  #add(id: string, address: string, configured: boolean): Peer {
    const p: Peer = {
      id,
      address,
      configured,
      stats: new LinkStats(),
      policy: new ModePolicy(this.deps.timing),
      sockets: new Map(),
      transfers: new Map(),
      probing: false,
      rateProbing: false,
      incoming: new Set(),
    };
    this.#peers.set(id, p);
    return p;
  }

  /** TCP_INFO of a connection; undefined once it closed, or when the kernel cannot be asked (said once). */
  #read(endpoints: TcpEndpoints): TcpInfo | undefined {
    if (this.#tcpInfoBroken) return undefined;
    try {
      return this.deps.tcpInfo(endpoints);
    } catch (err) {
      this.#tcpInfoBroken = true;
      this.deps.log("TCP_INFO sampling stopped: loss is not measured, round trips are timed in the agent", {
        error: (err as Error).message,
      });
      return undefined;
    }
  }

  #sampleSockets(p: Peer, now: number): void {
    for (const [key, endpoints] of p.sockets) {
      const info = this.#read(endpoints);
      if (this.#tcpInfoBroken) return;
      if (info) p.stats.addTcpInfo(now, key, info);
      // Once the connection is closing its counters are final: this was their last sample.
      if (info?.state !== TCP_ESTABLISHED) {
        p.sockets.delete(key);
        p.stats.socketClosed(key);
      }
    }
  }

  #sampleTransfers(p: Peer, now: number): void {
    // What the link carried this tick, over all the transfers to the peer: the forecasts' sample.
    let linkBytesPerSec = 0, running = 0;
    for (const [progress, unsubscribe] of p.transfers) {
      if (progress.state === "running") {
        const rate = progress.wireBytesPerSec();
        if (rate > 0) this.#addDelivered(p, now, rate);
        linkBytesPerSec += rate;
        running++;
      } else if (progress.terminal) {
        unsubscribe();
        p.transfers.delete(progress);
        const s = progress.snapshot();
        if (s.state === "completed" && s.elapsedMs > 0) {
          this.#addDelivered(p, now, (s.wireBytes * 1000) / s.elapsedMs);
        }
      }
    }
    if (running > 0) this.deps.forecasts?.observe(p.id, now, linkBytesPerSec);
  }

  #addDelivered(p: Peer, now: number, bytesPerSec: number): void {
    p.stats.addDelivered(now, bytesPerSec);
    p.lastDeliveredAtMs = now;
  }

  /** The received transfers' wire rate together while they run; a completed one's average at its end. */
  #sampleReceived(p: Peer, now: number): void {
    let bytesPerSec = 0;
    for (const progress of p.incoming) {
      if (progress.state === "running") bytesPerSec += progress.wireBytesPerSec();
      else if (progress.terminal) {
        p.incoming.delete(progress);
        const s = progress.snapshot();
        if (s.state === "completed" && s.elapsedMs > 0) {
          p.received = { atMs: now, bytesPerSec: (s.wireBytes * 1000) / s.elapsedMs };
        }
      }
    }
    if (bytesPerSec > 0) p.received = { atMs: now, bytesPerSec };
  }

  /** The peer's bandwidth forecast horizonSteps bins ahead, if it has a history. */
  forecast(peer: string, horizonSteps: 1 | 10 = 1): Forecast | undefined {
    return this.deps.forecasts?.forecast(this.idOf(peer), horizonSteps);
  }

  /** History, every predictor's forecast and their scores for GET /v1/peers/:id/forecast. */
  forecastView(id: string): PeerForecastView | undefined {
    return this.deps.forecasts?.view(this.idOf(id));
  }

  async #probe(p: Peer): Promise<void> {
    p.probing = true;
    const atMs = this.deps.now();
    try {
      const { rttMs, minRttMs } = await this.deps.probe(p.id);
      p.stats.addRtt(this.deps.now(), rttMs, "probe", minRttMs);
      p.lastProbe = { atMs, rttMs };
    } catch (err) {
      p.lastProbe = { atMs, error: (err as Error).message };
    } finally {
      p.probing = false;
    }
    this.#step(p, this.deps.now());
  }

  /**
   * Whether the peer is due a rate probe: none runs, no transfer to it runs (a probe would only take its
   * share), and neither a delivered rate nor a probe's attempt is as recent as the interval.
   */
  #rateProbeDue(p: Peer, now: number): boolean {
    const intervalMs = this.deps.rateProbe?.intervalMs ?? 0;
    if (intervalMs <= 0 || p.transfers.size > 0) return false;
    const lastMs = Math.max(p.lastDeliveredAtMs ?? -Infinity, p.lastRateProbe?.atMs ?? -Infinity);
    return now - lastMs >= intervalMs;
  }

  /**
   * Measures the idle link's delivered rate with a short burst (sized by rateProbeBytes) and adds it to
   * the stats, where the mode's parameters see it. Not to the forecasts: their history is the link's
   * throughput in each second that transfers ran, the series their predictors are scored on; a burst of a
   * quarter second on one fresh connection, slow start included, is another quantity, and one every few
   * minutes among idle seconds would read as a spike to every predictor. Failures are recorded, not thrown.
   */
  async #rateProbe(p: Peer, rate: RateProbing): Promise<void> {
    p.rateProbing = true;
    const atMs = this.deps.now();
    const bytes = rateProbeBytes(p.stats.measurements(atMs));
    try {
      const { elapsedMs, receiveMs } = await rate.probe(p.id, bytes);
      if (!(elapsedMs > 0)) throw new RangeError(`rate probe took ${elapsedMs} ms: no rate to tell`);
      const bytesPerSec = (bytes * 1000) / elapsedMs;
      this.#addDelivered(p, this.deps.now(), bytesPerSec);
      p.lastRateProbe = { atMs, bytes, bytesPerSec, receiveMs };
    } catch (err) {
      p.lastRateProbe = { atMs, bytes, error: (err as Error).message };
    } finally {
      p.rateProbing = false;
    }
    this.#step(p, this.deps.now());
  }

  #step(p: Peer, now: number): void {
    const m = p.stats.measurements(now);
    const change: ModeChange | undefined = p.policy.step(now, m);
    if (change) {
      const params = this.#parameters(p);
      this.deps.log("link mode changed", {
        peer: p.id,
        from: change.from,
        to: change.to,
        reason: change.reason,
        measurements: m,
        streams: params?.streams.count,
      });
    }
  }

  #parameters(p: Peer): ModeParameters | undefined {
    const mode = p.policy.state.mode;
    if (mode === undefined) return undefined;
    const forecast = this.deps.forecasts?.forecast(p.id, STREAMS_FORECAST_HORIZON_STEPS)?.bytesPerSec;
    return modeParameters(
      mode,
      p.stats.measurements(this.deps.now()),
      this.deps.host,
      this.deps.defaults,
      Number.isFinite(forecast) ? forecast : undefined,
    );
  }

  #view(p: Peer): PeerView {
    const s = p.policy.state;
    return {
      id: p.id,
      address: p.address,
      configured: p.configured,
      mode: {
        current: s.mode ?? null,
        since: iso(s.sinceMs),
        pinned: s.pinned ?? null,
        reason: s.reason,
        byRtt: s.byRtt ?? null,
        byLoss: s.byLoss ?? null,
        candidate: s.candidate ? { mode: s.candidate.mode, since: iso(s.candidate.sinceMs)! } : null,
        ...this.deps.timing,
      },
      measurements: p.stats.measurements(this.deps.now()),
      parameters: this.#parameters(p) ?? null,
      probe: {
        intervalMs: this.deps.probeIntervalMs,
        probing: p.probing,
        lastAt: iso(p.lastProbe?.atMs),
        lastRttMs: p.lastProbe?.rttMs ?? null,
        error: p.lastProbe?.error ?? null,
        rateIntervalMs: this.deps.rateProbe?.intervalMs ?? 0,
        rateProbing: p.rateProbing,
        lastRateAt: iso(p.lastRateProbe?.atMs),
        lastRateBytes: p.lastRateProbe?.bytes ?? null,
        lastRateBytesPerSec: p.lastRateProbe?.bytesPerSec ?? null,
        lastRateReceiveMs: p.lastRateProbe?.receiveMs ?? null,
        rateError: p.lastRateProbe?.error ?? null,
      },
      received: {
        latestBytesPerSec: p.received?.bytesPerSec ?? null,
        at: iso(p.received?.atMs),
        transfersRunning: [...p.incoming].filter((t) => !t.terminal).length,
      },
      transfersRunning: p.transfers.size,
      socketsSampled: p.sockets.size,
    };
  }
}

/**
 * The probe: the cheapest exchange that proves the peer's agent answers. Connect, authenticate (the
 * handshake's round trip is the sample), hang up; the peer's data server drops such a connection quietly.
 */
export function dialProbe(
  secret: string,
  identity: PeerIdentity,
  read: (conn: TcpEndpoints) => TcpInfo | undefined,
  resolve: (peer: string) => PeerAddress,
): (peer: string) => Promise<RttSample> {
  return async (peer) => {
    let handshakeRttMs = 0;
    const conn = await dial(resolve(peer), secret, identity, { connected: (_, ms) => handshakeRttMs = ms });
    try {
      return kernelRtt(read(conn)) ?? { rttMs: handshakeRttMs };
    } catch {
      return { rttMs: handshakeRttMs }; // PeerLinks reports a TCP_INFO failure when it samples
    } finally {
      closeQuietly(conn);
    }
  };
}

/**
 * How many bytes a rate probe carries: what RATE_PROBE_TARGET_MS at the link's best recent rate carries,
 * within RATE_PROBE_MIN_BYTES..RATE_PROBE_MAX_BYTES (the receiver takes up to RATE_PROBE_LIMITS.maxBytes).
 * The best rather than the latest: a probe reads low on a long fat link (slow start), and sizing the next
 * probe by it alone would shrink the probes, and their figures, step by step.
 */
export function rateProbeBytes(m: LinkMeasurements): number {
  const known = m.maxDeliveredBytesPerSec ?? m.latestDeliveredBytesPerSec;
  if (known === undefined) return RATE_PROBE_UNKNOWN_RATE_BYTES;
  const bytes = Math.round((known * RATE_PROBE_TARGET_MS) / 1000);
  return Math.min(RATE_PROBE_MAX_BYTES, Math.max(RATE_PROBE_MIN_BYTES, bytes));
}

/**
 * The rate probe: connect and authenticate to the peer's data port, send the burst, read the answer, hang
 * up (src/transport/rate_probe.ts). A peer whose handshake does not list the capability is not sent it.
 */
export function dialRateProbe(
  secret: string,
  identity: PeerIdentity,
  resolve: (peer: string) => PeerAddress,
): (peer: string, bytes: number) => Promise<RateSample> {
  return async (peer, bytes) => {
    const { conn, peer: them } = await dialPeer(resolve(peer), secret, identity);
    // The peer's own limit applies too; a probe that stalls is dropped at its timeout, as the peer does.
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      closeQuietly(conn);
    }, RATE_PROBE_LIMITS.timeoutMs);
    try {
      if (them.capabilities?.rateProbe !== true) {
        throw new Error(
          `peer "${peer}" (agent "${them.agentId}") does not answer rate probes: its dwcp predates them; ` +
            `its rate is measured from transfers only until it is upgraded`,
        );
      }
      return await sendRateProbe(conn, bytes);
    } catch (err) {
      if (!timedOut) throw err;
      throw new Error(
        `rate probe of ${bytes} bytes to "${peer}" took over ${RATE_PROBE_LIMITS.timeoutMs} ms and was dropped`,
      );
    } finally {
      clearTimeout(timer);
      closeQuietly(conn);
    }
  };
}

/**
 * Link probing for an agent: real probes, TCP_INFO and clock; start() begins the sampling. resolve is
 * how the agent reaches a peer (its address, and TLS where it applies), as its transfers do.
 */
export function agentPeerLinks(
  config: AgentConfig,
  identity: PeerIdentity,
  log: Logger,
  resolve: (peer: string) => PeerAddress,
  forecasts?: ForecastBook,
): PeerLinks {
  const { probeIntervalMs, rateProbeIntervalMs, minDwellMs, confirmMs, pins } = config.link;
  return new PeerLinks({
    peers: config.peers,
    pins,
    timing: { minDwellMs, confirmMs },
    probeIntervalMs,
    host: readHostFacts(),
    defaults: config.transfer,
    probe: dialProbe(config.secret, identity, tcpInfo, resolve),
    rateProbe: rateProbeIntervalMs > 0
      ? { intervalMs: rateProbeIntervalMs, probe: dialRateProbe(config.secret, identity, resolve) }
      : undefined,
    tcpInfo,
    setCongestion: setCongestionControl,
    now: Date.now,
    every: (ms, fn) => {
      const timer = setInterval(fn, ms);
      return () => clearInterval(timer);
    },
    forecasts,
    log,
  });
}

/** This host's congestion controls and TCP window, from /proc; Linux defaults where a file is missing. */
export function readHostFacts(read: (path: string) => string | undefined = readProc): HostFacts {
  const available = read("/proc/sys/net/ipv4/tcp_available_congestion_control")?.split(/\s+/).filter(Boolean);
  const rmemMax = Number(read("/proc/sys/net/ipv4/tcp_rmem")?.split(/\s+/)[2]);
  return {
    availableCongestionControl: available?.length ? available : ["reno", "cubic"],
    defaultCongestionControl: read("/proc/sys/net/ipv4/tcp_congestion_control")?.trim() || "cubic",
    // tcp_rmem's maximum holds the window and the buffers' overhead, about half each (tcp_adv_win_scale 1).
    tcpWindowBytes: Number.isFinite(rmemMax) && rmemMax > 0 ? rmemMax / 2 : 3 * 1024 * 1024,
    cpuCount: navigator.hardwareConcurrency,
  };
}

function readProc(path: string): string | undefined {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return undefined;
  }
}
