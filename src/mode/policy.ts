/**
 * The link mode policy, sans IO: a peer's measurements and the time go in, its mode comes out —
 * datacenter (sub-millisecond, lossless), hybrid (a metro or private WAN link: a few ms, or slightly
 * lossy) or internet (tens of ms or more, or lossy). src/mode/parameters.ts turns a mode into transfer,
 * TLS, congestion control and migration settings.
 *
 * Each metric is a Schmitt trigger over two boundaries: it crosses a boundary upwards only clearly past
 * it, and back only clearly below it, so a measurement wandering around a boundary does not flip it.
 *   round trip (the windowed minimum, so queueing under load does not count):
 *       datacenter | hybrid at 2 ms, hybrid | internet at 20 ms; up at ×1.25, down at ×0.8
 *   retransmit ratio: datacenter | hybrid at 0.01 %, hybrid | internet at 0.1 %; up at ×1.5, down at ×0.5,
 *       rising only after 5 retransmitted segments, falling below a boundary only on a sample where 5
 *       would have been expected at it
 * The link is in the worse of the two levels. The first measured level (3 round trips) is taken at once;
 * after that a different level must hold for confirmMs, and the mode must have held for minDwellMs,
 * before the mode changes. An operator's pin overrides all of it until it is lifted.
 */
import type { LinkMeasurements } from "./link_stats.ts";

export const LINK_MODES = ["datacenter", "hybrid", "internet"] as const;
export type LinkMode = typeof LINK_MODES[number];

export interface PolicyTiming {
  /** Least time a mode is kept once entered (a pin or unpin is not held to it). */
  minDwellMs: number;
  /** How long the measurements must point at another mode, without a break, before it is taken. */
  confirmMs: number;
}

export const DEFAULT_TIMING: PolicyTiming = { minDwellMs: 60_000, confirmMs: 10_000 };

/** Upper edges of datacenter and hybrid, for the minimum round trip. */
const RTT_BOUNDARIES_MS = [2, 20] as const;
/** Upper edges of datacenter and hybrid, for the retransmit ratio. */
const LOSS_BOUNDARIES = [1e-4, 1e-3] as const;
const RTT_BAND = { up: 1.25, down: 0.8 };
/** Loss estimates are noisier than round trips, so their band is wider. */
const LOSS_BAND = { up: 1.5, down: 0.5 };
/**
 * Rare events need large samples. The ratio rises past a boundary only once this many segments were
 * retransmitted (one lost segment on a LAN is no trend), and falls below boundary b only on a sample of
 * at least this many segments / b (where that many retransmissions would have been expected at b).
 */
const LOSS_EVIDENCE_SEGMENTS = 5;
/** Round trips needed before the first decision: one sample may be a slow handshake. */
const MIN_RTT_SAMPLES = 3;

export interface ModeChange {
  atMs: number;
  from?: LinkMode;
  to: LinkMode;
  reason: string;
}

export interface PolicyState {
  /** The mode in force; undefined until measured (or pinned). */
  mode?: LinkMode;
  sinceMs?: number;
  pinned?: LinkMode;
  /** What each metric says by itself; undefined before it said anything. */
  byRtt?: LinkMode;
  byLoss?: LinkMode;
  /** The mode the measurements point at now, and since when, when it differs from the mode in force. */
  candidate?: { mode: LinkMode; sinceMs: number };
  /** Why the mode in force was chosen. */
  reason: string;
}

/**
 * One metric's level (0 datacenter, 1 hybrid, 2 internet) after value, from its previous level.
 * canRaise / canLower say whether the value is good enough evidence to cross boundary i up / down.
 */
function schmitt(
  level: number,
  value: number,
  boundaries: readonly number[],
  band: { up: number; down: number },
  canRaise: (boundary: number) => boolean = () => true,
  canLower: (boundary: number) => boolean = () => true,
): number {
  while (level < boundaries.length && canRaise(level) && value >= boundaries[level] * band.up) level++;
  while (level > 0 && canLower(level - 1) && value < boundaries[level - 1] * band.down) level--;
  return level;
}

const fmtMs = (ms: number) => `${ms < 10 ? ms.toFixed(2) : ms.toFixed(1)} ms`;
const fmtPct = (ratio: number) => `${(ratio * 100).toFixed(3)} %`;

export class ModePolicy {
  #mode?: LinkMode;
  #sinceMs?: number;
  #pinned?: LinkMode;
  #rttLevel?: number;
  #lossLevel?: number;
  #candidate?: { mode: LinkMode; sinceMs: number };
  #reason = "no measurements yet";
  /** What the measurements say and why, as of the last step: the reason of a measured change or an unpin. */
  #measuredReason = "";

  constructor(readonly timing: PolicyTiming = DEFAULT_TIMING) {
    for (const [name, ms] of Object.entries(timing)) {
      if (!(ms >= 0) || !Number.isFinite(ms)) {
        throw new RangeError(`${name} = ${ms}: give a duration in ms, 0 or more`);
      }
    }
  }

  get state(): PolicyState {
    return {
      mode: this.#mode,
      sinceMs: this.#sinceMs,
      pinned: this.#pinned,
      byRtt: this.#rttLevel === undefined ? undefined : LINK_MODES[this.#rttLevel],
      byLoss: this.#lossLevel === undefined ? undefined : LINK_MODES[this.#lossLevel],
      candidate: this.#candidate,
      reason: this.#reason,
    };
  }

  /** Feeds the latest measurements; returns the change of mode they cause, if any. */
  step(nowMs: number, m: LinkMeasurements): ModeChange | undefined {
    const target = this.#measure(m);
    if (target === undefined || this.#pinned) return undefined;
    if (this.#mode === undefined) {
      return this.#enter(nowMs, target, `first measurement: ${this.#measuredReason}`);
    }
    if (target === this.#mode) {
      this.#candidate = undefined;
      return undefined;
    }
    if (this.#candidate?.mode !== target) this.#candidate = { mode: target, sinceMs: nowMs };
    const heldMs = nowMs - this.#candidate.sinceMs;
    if (heldMs < this.timing.confirmMs || nowMs - this.#sinceMs! < this.timing.minDwellMs) return undefined;
    return this.#enter(nowMs, target, `${this.#measuredReason}, for ${Math.round(heldMs / 1000)} s`);
  }

  /** Pins the mode (an operator's word), or with undefined lifts the pin and returns to the measured one. */
  pin(nowMs: number, mode: LinkMode | undefined): ModeChange | undefined {
    if (mode !== undefined && !LINK_MODES.includes(mode)) {
      throw new RangeError(`mode "${mode}" is not one of ${LINK_MODES.join(", ")}`);
    }
    this.#pinned = mode;
    this.#candidate = undefined;
    if (mode !== undefined) return this.#enter(nowMs, mode, "pinned by the operator");
    const measured = this.#measuredMode();
    if (measured === undefined) {
      // Back to unmeasured: transfers take the configured defaults until the link has been measured.
      this.#mode = this.#sinceMs = undefined;
      this.#reason = "pin lifted; no measurements yet";
      return undefined;
    }
    return this.#enter(nowMs, measured, `pin lifted: ${this.#measuredReason}`);
  }

  #enter(nowMs: number, mode: LinkMode, reason: string): ModeChange | undefined {
    const from = this.#mode;
    this.#candidate = undefined;
    this.#reason = reason;
    if (from === mode) return undefined;
    this.#mode = mode;
    this.#sinceMs = nowMs;
    return { atMs: nowMs, from, to: mode, reason };
  }

  /** Updates each metric's level from m and returns the mode they point at (undefined: too few data). */
  #measure(m: LinkMeasurements): LinkMode | undefined {
    if (m.minRttMs !== undefined && m.rttSamples >= MIN_RTT_SAMPLES) {
      this.#rttLevel = schmitt(this.#rttLevel ?? 0, m.minRttMs, RTT_BOUNDARIES_MS, RTT_BAND);
    }
    if (m.retransmitRatio !== undefined) {
      const sampleSegments = m.retransmitSampleSegments;
      const canRaise = () => m.retransmitRatio! * sampleSegments >= LOSS_EVIDENCE_SEGMENTS;
      const canLower = (i: number) => sampleSegments * LOSS_BOUNDARIES[i] >= LOSS_EVIDENCE_SEGMENTS;
      // Until the sample can move the level either way, the ratio says nothing and gets no level.
      if (this.#lossLevel !== undefined || canRaise() || canLower(LOSS_BOUNDARIES.length - 1)) {
        this.#lossLevel = schmitt(
          this.#lossLevel ?? 0,
          m.retransmitRatio,
          LOSS_BOUNDARIES,
          LOSS_BAND,
          canRaise,
          canLower,
        );
      }
    }
    const measured = this.#measuredMode();
    if (measured !== undefined) {
      const rtt = m.minRttMs === undefined ? "no recent RTT" : `min RTT ${fmtMs(m.minRttMs)}`;
      const parts = [`${rtt} → ${LINK_MODES[this.#rttLevel!]}`];
      if (this.#lossLevel !== undefined && m.retransmitRatio !== undefined) {
        const mib = (m.retransmitSampleBytes / 1048576).toFixed(1);
        parts.push(`retransmits ${fmtPct(m.retransmitRatio)} of ${mib} MiB → ${LINK_MODES[this.#lossLevel]}`);
      }
      this.#measuredReason = parts.join("; ");
    }
    return measured;
  }

  /** The worse of the metrics' levels; a decision needs the round trip (loss alone may be unknown). */
  #measuredMode(): LinkMode | undefined {
    if (this.#rttLevel === undefined) return undefined;
    return LINK_MODES[Math.max(this.#rttLevel, this.#lossLevel ?? 0)];
  }
}
