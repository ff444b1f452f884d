/**
 * What each link mode means for the agent's settings, sans IO: from the mode, the link's measurements
 * and facts about this host, the stream count, chunk size, codec bias, TLS, congestion control and QEMU
 * migration parameters. Every derived figure carries its inputs, so the API can show why.
 *
 * Stream count: enough streams to fill the bandwidth-delay product with each stream's window, and, for
 * loss-based congestion control, enough to carry the link's rate when each stream is held to the rate
 * TCP reaches under random loss (Mathis et al. 1997: rate = MSS / RTT × sqrt(3/2) / sqrt(p)). BBR does
 * not back off on random loss at these rates, so the loss term applies to cubic and reno only.
 */
import { CODEC_BIAS, type CodecBias } from "../encoding/codec_policy.ts";
import type { LinkMeasurements } from "./link_stats.ts";
import type { LinkMode } from "./policy.ts";

/** Facts about this host the parameters depend on (read from /proc by the agent). */
export interface HostFacts {
  /** net.ipv4.tcp_available_congestion_control. */
  availableCongestionControl: readonly string[];
  /** net.ipv4.tcp_congestion_control: what new sockets run until the agent sets their own. */
  defaultCongestionControl: string;
  /** Largest window one TCP stream can open: half of net.ipv4.tcp_rmem's maximum (the rest is overhead). */
  tcpWindowBytes: number;
  /** CPUs this host runs on (each multifd channel is a QEMU thread, plus the agents' work for it). */
  cpuCount: number;
}

/** The agent's configured transfer settings (config `transfer`). */
export interface TransferDefaults {
  streams: number;
  chunkBytes: number;
  windowChunks: number;
}

export interface StreamDerivation {
  count: number;
  /** Streams that fill the bandwidth-delay product, and that carry the rate under loss (1 when no loss). */
  forBdp: number;
  forLoss: number;
  /** The mode's floor and ceiling on the count. */
  min: number;
  max: number;
  /**
   * The rate to fill: the link's bandwidth forecast (PBA) where the peer has a history, else the most a
   * transfer delivered lately; the mode's assumption if that is higher.
   */
  linkBytesPerSec: number;
  /** The forecast it came from, when there was one. */
  forecastBytesPerSec?: number;
  /** TCP's smoothed round trip, else the least measured, else the mode's assumption. */
  rttMs: number;
  /** Measured when the sample allows (5 retransmissions expected at 0.1 %), else the mode's assumption. */
  lossRatio: number;
  /** What one stream can carry: its window, and its rate under that loss by Mathis (absent: no limit). */
  perStreamWindowBytes: number;
  perStreamBytesPerSecUnderLoss?: number;
  /**
   * Datacenter only: the most a transfer keeps unacknowledged over all its streams, twice the
   * bandwidth-delay product at the least round trip; the sender never holds it below one stream's window.
   * Absent elsewhere, where each stream's window is the only limit. On a LAN the CPUs, not the link, set
   * the pace, and what waits in flight goes cold in the caches: 1 GiB over 8 and 16 streams of 4 chunks of
   * 1 MiB on loopback (2 cores) took 11 and 13 % less CPU with the transfer held to 4 chunks, and ran 9 %
   * faster (paired medians of 15 runs; faster in 14 and 11 of them); 1 and 4 streams ran as before.
   */
  transferWindowBytes?: number;
  /** The congestion control the streams run (the mode's), which decides whether loss limits them. */
  congestionControl: string;
}

export interface MigrationParameters {
  /** QEMU downtime-limit: the pause it aims for at the switch-over. */
  downtimeLimitMs: number;
  /** QEMU max-bandwidth. */
  maxBandwidthBytesPerSec: number;
  /** QEMU xbzrle: send pages dirtied again as deltas against a cache of what was sent. */
  xbzrle: boolean;
  xbzrleCacheBytes: number;
  /** QEMU multifd channels; 0 keeps multifd off. */
  multifdChannels: number;
}

export interface ModeParameters {
  mode: LinkMode;
  streams: StreamDerivation;
  chunkBytes: number;
  /** How codec "auto" weighs CPU against wire bytes (src/encoding/codec_policy.ts CODEC_BIAS). */
  codecBias: CodecBias;
  tls: boolean;
  /** What the link's stream sockets run: the agent sets it on each as it connects (see README). */
  congestionControl: "bbr" | "cubic";
  migration: MigrationParameters;
}

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** TCP's usual segment on an Ethernet path, when no socket told the real one. */
const DEFAULT_MSS_BYTES = 1448;

/** QEMU's max-bandwidth when the agents pace the stream: high enough never to bind (as service.ts sets). */
const UNCAPPED_MIGRATION_BYTES_PER_SEC = 64 * GiB;

interface ModeProfile {
  /**
   * Link rate assumed until a transfer delivered more: a floor, so a slow first transfer (a small file,
   * still in slow start) cannot talk the stream count down for the next.
   */
  assumedBytesPerSec: number;
  assumedRttMs: number;
  /** Loss assumed until the retransmit sample is large enough to judge 0.1 %. */
  assumedLossRatio: number;
  minStreams: number;
  maxStreams: number;
  codecBias: CodecBias;
  tls: boolean;
  wantsBbr: boolean;
  xbzrle: boolean;
}

/**
 * datacenter: 10 Gbit/s, sub-ms, lossless; few streams (for CPU parallelism, not for the network), cheap
 * codecs, no TLS (the network is the operator's), cubic (BBRv1's probing overflows shallow switch buffers).
 * hybrid: a metro or private WAN link, 1 Gbit/s; more streams, the codec may spend CPU (the link is slower
 * than the compressors), no TLS (such links are the operator's too; pin internet to encrypt), BBR.
 * internet: 100 Mbit/s, tens of ms, lossy; many streams, spend CPU for ratio, TLS, BBR.
 */
const PROFILES: Record<LinkMode, ModeProfile> = {
  datacenter: {
    assumedBytesPerSec: 1.25e9,
    assumedRttMs: 0.5,
    assumedLossRatio: 0,
    // The configured transfer.streams (4 by default) is the floor, and on a LAN also the count.
    minStreams: 1,
    maxStreams: 16,
    codecBias: "datacenter",
    tls: false,
    wantsBbr: false,
    xbzrle: false,
  },
  hybrid: {
    assumedBytesPerSec: 1.25e8,
    assumedRttMs: 10,
    assumedLossRatio: 1e-4,
    minStreams: 4,
    maxStreams: 32,
    codecBias: "internet",
    tls: false,
    wantsBbr: true,
    xbzrle: true,
  },
  internet: {
    assumedBytesPerSec: 1.25e7,
    assumedRttMs: 50,
    assumedLossRatio: 1e-3,
    minStreams: 8,
    maxStreams: 64,
    codecBias: "internet",
    tls: true,
    wantsBbr: true,
    xbzrle: true,
  },
};

/**
 * Each stream holds about two chunk buffers at each end (the chunk and its encoding), so the stream
 * count times the chunk size is kept under this; the chunk shrinks first, down to MIN_BUDGET_CHUNK_BYTES.
 */
export const STREAM_BUFFER_BUDGET_BYTES = 256 * MiB;
const MIN_BUDGET_CHUNK_BYTES = 1 * MiB;
/** A loss ratio is used once the sample holds this many segments / 0.1 %: 5 expected retransmissions. */
const LOSS_SAMPLE_SEGMENTS_AT_0_1_PCT = 5 / 1e-3;
/**
 * The switch-over's pause beyond the copy itself: the last bytes' delivery and acknowledgement, the
 * agents' finish exchange, the destination's report that the guest runs: about 4 round trips.
 */
const SWITCHOVER_ROUND_TRIPS = 4;
const BASE_DOWNTIME_MS = 300;
/** The acceptance target for downtime on the internet: higher limits only lengthen the pause. */
const MAX_DOWNTIME_MS = 1000;
const XBZRLE_CACHE_BYTES = 256 * MiB;
/** Each multifd channel is a QEMU thread: past a few, a 2-core host has nothing to run them on. */
const MAX_MULTIFD_CHANNELS = 4;
/**
 * CPUs kept for the guest's vCPU and QEMU's main migration thread before multifd channels pay: on this
 * 2-core machine 2 channels through the agents took 1807 ms against 1028 ms with none (256 MiB guest).
 */
const CPUS_BEFORE_MULTIFD = 2;

function streamDerivation(
  mode: LinkMode,
  profile: ModeProfile,
  m: LinkMeasurements,
  host: HostFacts,
  defaults: TransferDefaults,
  chunkBytes: number,
  congestionControl: string,
  forecastBytesPerSec: number | undefined,
): StreamDerivation {
  // The forecast says what the next seconds carry, where the most delivered lately only says what the
  // link once did; the assumption stays a floor, so a slow start cannot talk the count down.
  const linkBytesPerSec = Math.max(
    forecastBytesPerSec ?? m.maxDeliveredBytesPerSec ?? 0,
    profile.assumedBytesPerSec,
  );
  const rttMs = m.smoothedRttMs ?? m.minRttMs ?? profile.assumedRttMs;
  const mss = m.mssBytes ?? DEFAULT_MSS_BYTES;
  const lossJudged = m.retransmitRatio !== undefined &&
    m.retransmitSampleSegments >= LOSS_SAMPLE_SEGMENTS_AT_0_1_PCT;
  const lossRatio = lossJudged ? m.retransmitRatio! : profile.assumedLossRatio;
  // A stream has at most windowChunks unacknowledged chunks, and TCP's own window.
  const perStreamWindowBytes = Math.min(host.tcpWindowBytes, defaults.windowChunks * chunkBytes);
  const bdpBytes = linkBytesPerSec * rttMs / 1000;
  const forBdp = Math.max(1, Math.ceil(bdpBytes / perStreamWindowBytes));
  const lossLimits = lossRatio > 0 && congestionControl !== "bbr";
  const perStreamBytesPerSecUnderLoss = lossLimits
    ? (mss / (Math.max(rttMs, 0.01) / 1000)) * Math.sqrt(1.5 / lossRatio)
    : undefined;
  const forLoss = perStreamBytesPerSecUnderLoss === undefined
    ? 1
    : Math.max(1, Math.ceil(linkBytesPerSec / perStreamBytesPerSecUnderLoss));
  // The configured default is a floor in every mode: the operator asked for at least that many.
  const min = Math.max(profile.minStreams, defaults.streams);
  const max = Math.max(
    min,
    Math.min(profile.maxStreams, Math.floor(STREAM_BUFFER_BUDGET_BYTES / chunkBytes)),
  );
  return {
    count: Math.min(max, Math.max(min, forBdp, forLoss)),
    forBdp,
    forLoss,
    min,
    max,
    linkBytesPerSec,
    rttMs,
    lossRatio,
    perStreamWindowBytes,
    perStreamBytesPerSecUnderLoss,
    // From the least round trip: the smoothed one grows with the queue a full window builds, and a window
    // sized from it would grow the queue again.
    transferWindowBytes: mode === "datacenter"
      ? Math.ceil(2 * linkBytesPerSec * (m.minRttMs ?? rttMs) / 1000)
      : undefined,
    congestionControl,
    forecastBytesPerSec,
  };
}

/**
 * The settings for a link in mode, given what it measured, this host, and the link's bandwidth forecast
 * (bytes/s over the next seconds; from src/predict/, absent without a history). The forecast sets the rate
 * the streams are counted for and, through it, where a transfer's codec policy starts.
 */
export function modeParameters(
  mode: LinkMode,
  m: LinkMeasurements,
  host: HostFacts,
  defaults: TransferDefaults,
  forecastBytesPerSec?: number,
): ModeParameters {
  if (
    forecastBytesPerSec !== undefined && !(forecastBytesPerSec >= 0 && Number.isFinite(forecastBytesPerSec))
  ) {
    throw new RangeError(
      `forecastBytesPerSec = ${forecastBytesPerSec}: a forecast is a finite rate, 0 or more`,
    );
  }
  const profile = PROFILES[mode];
  const hasBbr = host.availableCongestionControl.includes("bbr");
  const congestionControl = profile.wantsBbr && hasBbr ? "bbr" : "cubic";
  // Datacenter keeps the configured chunk; elsewhere the codec bias's chunk (more context for the codec),
  // halved while the streams the link needs would hold more buffers than the budget.
  let chunkBytes = (mode === "datacenter" ? undefined : CODEC_BIAS[profile.codecBias].chunkBytes) ??
    defaults.chunkBytes;
  const derive = (chunk: number) =>
    streamDerivation(mode, profile, m, host, defaults, chunk, congestionControl, forecastBytesPerSec);
  let streams = derive(chunkBytes);
  const needed = (s: StreamDerivation) => Math.min(profile.maxStreams, Math.max(s.min, s.forBdp, s.forLoss));
  while (
    needed(streams) * chunkBytes > STREAM_BUFFER_BUDGET_BYTES && chunkBytes / 2 >= MIN_BUDGET_CHUNK_BYTES
  ) {
    chunkBytes /= 2;
    streams = derive(chunkBytes);
  }
  const rttMs = streams.rttMs;
  return {
    mode,
    streams,
    chunkBytes,
    codecBias: profile.codecBias,
    tls: profile.tls,
    congestionControl,
    migration: {
      downtimeLimitMs: mode === "datacenter"
        ? BASE_DOWNTIME_MS
        : Math.min(MAX_DOWNTIME_MS, Math.round(BASE_DOWNTIME_MS + SWITCHOVER_ROUND_TRIPS * rttMs)),
      // The agents' streams pace QEMU through backpressure; a cap of its own would only be a second,
      // blind limiter (and with compression the agents carry more than the link's raw rate).
      maxBandwidthBytesPerSec: UNCAPPED_MIGRATION_BYTES_PER_SEC,
      xbzrle: profile.xbzrle,
      xbzrleCacheBytes: profile.xbzrle ? XBZRLE_CACHE_BYTES : 0,
      // QEMU refuses multifd with xbzrle; where the link, not one migration thread, is the bottleneck,
      // xbzrle's smaller stream is worth more than parallel copying.
      multifdChannels: profile.xbzrle
        ? 0
        : Math.max(0, Math.min(MAX_MULTIFD_CHANNELS, streams.count, host.cpuCount - CPUS_BEFORE_MULTIFD)),
    },
  };
}
