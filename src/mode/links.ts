/**
 * Link probing, the IO edge: feeds each peer's LinkStats and ModePolicy (the pure parts) from what the
 * agent sees. Round trips come from the agent's own connections as they authenticate and, when a peer is
 * idle, from a probe (connect and authenticate to its data port, then hang up), each read from the
 * kernel's TCP_INFO of that connection (the handshake timed in the agent where TCP_INFO is missing);
 * delivered rates from the transfers the agent sends; retransmissions from TCP_INFO of the transfers'
 * sockets, sampled every second. Time, the probe, TCP_INFO and the timer are injected.
 */
import { type TcpEndpoints, type TcpInfo, tcpInfo } from "../../ffi/tcp_info.ts";
import type { AgentConfig } from "../agent/config.ts";
import type { Logger } from "../obs/log.ts";
import type { TransferProgress } from "../obs/progress.ts";
import { dial, type DialObserver, type PeerAddress } from "../transport/dial.ts";
import type { PeerIdentity } from "../transport/handshake.ts";
import { closeQuietly } from "../transport/wire.ts";
import { type LinkMeasurements, LinkStats } from "./link_stats.ts";
import { type HostFacts, type ModeParameters, modeParameters, type TransferDefaults } from "./parameters.ts";
import { type LinkMode, type ModeChange, ModePolicy, type PolicyTiming } from "./policy.ts";
import type { Forecast, ForecastBook, PeerForecastView } from "../predict/peer_forecast.ts";

/** How often sockets and transfers are sampled and the policies stepped. */
const SAMPLE_INTERVAL_MS = 1000;
/** The kernel's TCP state of an open connection (include/net/tcp_states.h). */
const TCP_ESTABLISHED = 1;
/** Peers named only by HOST:PORT in requests that are tracked; the least recently used goes first. */
const MAX_UNNAMED_PEERS = 64;

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
  now(): number;
  /** Runs fn every ms until the returned function is called. */
  every(ms: number, fn: () => void): () => void;
  /** Bandwidth forecasting: fed one sample per tick in which transfers to the peer ran. */
  forecasts?: ForecastBook;
  log: Logger;
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
  };
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
        const kernel = kernelRtt(this.#read(endpoints));
        p.stats.addRtt(this.deps.now(), kernel?.rttMs ?? handshakeRttMs, "handshake", kernel?.minRttMs);
        p.sockets.set(socketKey(conn), endpoints);
      },
    };
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

  /** The settings the peer's mode gives its link (TLS, codec bias, ...); undefined before it has a mode. */
  parametersFor(peer: string): ModeParameters | undefined {
    return this.#parameters(this.#peer(peer));
  }

  /**
   * One round: samples sockets and transfers, steps every policy, and probes idle peers. Resolves once
   * the probes it started have finished.
   */
  async tick(): Promise<void> {
    const probes: Promise<void>[] = [];
    for (const p of this.#peers.values()) {
      const now = this.deps.now();
      this.#sampleSockets(p, now);
      this.#sampleTransfers(p, now);
      const lastRtt = p.stats.measurements(now).lastRttAtMs;
      const idle = p.transfers.size === 0 &&
        (lastRtt === undefined || now - lastRtt >= this.deps.probeIntervalMs);
      if (idle && !p.probing) probes.push(this.#probe(p));
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
        if (rate > 0) p.stats.addDelivered(now, rate);
        linkBytesPerSec += rate;
        running++;
      } else if (progress.terminal) {
        unsubscribe();
        p.transfers.delete(progress);
        const s = progress.snapshot();
        if (s.state === "completed" && s.elapsedMs > 0) {
          p.stats.addDelivered(now, (s.wireBytes * 1000) / s.elapsedMs);
        }
      }
    }
    if (running > 0) this.deps.forecasts?.observe(p.id, now, linkBytesPerSec);
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
    return modeParameters(mode, p.stats.measurements(this.deps.now()), this.deps.host, this.deps.defaults);
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
  const { probeIntervalMs, minDwellMs, confirmMs, pins } = config.link;
  return new PeerLinks({
    peers: config.peers,
    pins,
    timing: { minDwellMs, confirmMs },
    probeIntervalMs,
    host: readHostFacts(),
    defaults: config.transfer,
    probe: dialProbe(config.secret, identity, tcpInfo, resolve),
    tcpInfo,
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
