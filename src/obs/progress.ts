/** Progress of one transfer as the API shows it, with throttled change notification for event streams. */
import { RateMeter } from "./rate.ts";

export type TransferState = "connecting" | "running" | "committing" | "completed" | "failed" | "cancelled";
export const TERMINAL_STATES: readonly TransferState[] = ["completed", "failed", "cancelled"];

export interface StreamFigures {
  index: number;
  state: "open" | "lost";
  bytes: number;
  wireBytes: number;
  frames: number;
  bytesPerSec: number;
}

export interface TransferSnapshot {
  id: string;
  direction: "send" | "receive";
  state: TransferState;
  source: string;
  peer: string;
  destination: string;
  sizeBytes: number;
  bytesDone: number;
  wireBytes: number;
  /** raw / wire bytes so far (1 when nothing was compressed). */
  ratio: number;
  bytesPerSec: number;
  averageBytesPerSec: number;
  percent: number;
  codec: string;
  chunkBytes: number;
  /** Sending: the most chunks unacknowledged per stream, and over all streams when the link caps that. */
  window?: TransferWindow;
  streams: StreamFigures[];
  retransmits: number;
  encoding?: unknown;
  /** Page-delta figures of a transfer that named a base (src/transport/delta_base.ts DeltaStatus). */
  delta?: unknown;
  /**
   * Time left while running: the bytes left at the link's forecast rate (wire bytes scaled by the
   * ratio so far) when the peer has a forecast, else at the current rate.
   */
  eta?: { ms: number; basis: "forecast" | "current"; predictor?: string };
  startedAt: string;
  finishedAt?: string;
  elapsedMs: number;
  error?: { code: string; message: string };
}

export interface TransferWindow {
  streamChunks: number;
  transferChunks?: number;
}

type Listener = (s: TransferSnapshot) => void;

export class TransferProgress {
  state: TransferState = "connecting";
  retransmits = 0;
  error?: { code: string; message: string };
  readonly #meter = new RateMeter();
  readonly #wireMeter = new RateMeter();
  /** Extra figures shown under `encoding` (the adaptive codec policy's inputs and choices). */
  encoding?: () => unknown;
  /** Page-delta figures shown under `delta` when the transfer named a base. */
  delta?: () => unknown;
  /** The sender's flow-control window, once the receiver has granted its credit. */
  window?: TransferWindow;
  /** The link's bandwidth forecast (wire bytes/s) and who made it, for the ETA. */
  forecast?: () => { bytesPerSec: number; predictor: string } | undefined;
  readonly #streams: { meter: RateMeter; wireBytes: number; frames: number; lost: boolean }[] = [];
  #wireBytes = 0;
  readonly #startMs: number;
  #endMs?: number;
  readonly #listeners = new Set<Listener>();
  #lastNotifyMs = 0;

  constructor(
    readonly info: {
      id: string;
      direction: "send" | "receive";
      source: string;
      peer: string;
      destination: string;
      sizeBytes: number;
      codec: string;
      chunkBytes: number;
      streams: number;
    },
    readonly now: () => number = () => Date.now(),
    /** Least time between progress notifications; state changes notify at once. */
    readonly notifyEveryMs = 200,
  ) {
    this.#startMs = now();
    for (let i = 0; i < info.streams; i++) {
      this.#streams.push({ meter: new RateMeter(), wireBytes: 0, frames: 0, lost: false });
    }
  }

  /** A chunk of rawBytes (wireBytes on the wire) was acknowledged on stream. */
  chunkDone(stream: number, rawBytes: number, wireBytes: number): void {
    const t = this.now();
    this.#meter.add(t, rawBytes);
    this.#wireMeter.add(t, wireBytes);
    this.#wireBytes += wireBytes;
    const s = this.#streams[stream];
    s.meter.add(t, rawBytes);
    s.wireBytes += wireBytes;
    s.frames++;
    if (t - this.#lastNotifyMs >= this.notifyEveryMs) this.#notify(t);
  }

  /** Bytes per second the link carried lately (wire bytes acknowledged); 0 before it was measured. */
  wireBytesPerSec(): number {
    return this.#wireMeter.bytesPerSec(this.now());
  }

  streamLost(stream: number): void {
    this.#streams[stream].lost = true;
    this.#notify(this.now());
  }

  setState(state: TransferState, error?: { code: string; message: string }): void {
    if (TERMINAL_STATES.includes(this.state)) return;
    this.state = state;
    if (error) this.error = error;
    if (TERMINAL_STATES.includes(state)) this.#endMs = this.now();
    this.#notify(this.now());
  }

  get terminal(): boolean {
    return TERMINAL_STATES.includes(this.state);
  }

  subscribe(listener: Listener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #notify(t: number): void {
    this.#lastNotifyMs = t;
    if (this.#listeners.size === 0) return;
    const snap = this.snapshot();
    for (const l of this.#listeners) l(snap);
  }

  #eta(t: number, done: number): TransferSnapshot["eta"] {
    if (this.state !== "running" || this.info.sizeBytes <= 0) return undefined;
    const left = Math.max(0, this.info.sizeBytes - done);
    const f = this.forecast?.();
    if (f && f.bytesPerSec > 0) {
      const rawPerWire = this.#wireBytes > 0 ? done / this.#wireBytes : 1;
      return { ms: (left * 1000) / (f.bytesPerSec * rawPerWire), basis: "forecast", predictor: f.predictor };
    }
    const rate = this.#meter.bytesPerSec(t);
    return rate > 0 ? { ms: (left * 1000) / rate, basis: "current" } : undefined;
  }

  snapshot(): TransferSnapshot {
    const t = this.#endMs ?? this.now();
    const elapsedMs = t - this.#startMs;
    const done = this.#meter.totalBytes;
    return {
      ...this.info,
      state: this.state,
      bytesDone: done,
      wireBytes: this.#wireBytes,
      ratio: this.#wireBytes > 0 ? done / this.#wireBytes : 1,
      bytesPerSec: this.#endMs ? 0 : this.#meter.bytesPerSec(t),
      averageBytesPerSec: elapsedMs > 0 ? (done * 1000) / elapsedMs : 0,
      percent: this.info.sizeBytes > 0
        ? (100 * done) / this.info.sizeBytes
        : (this.state === "completed" ? 100 : 0),
      window: this.window,
      streams: this.#streams.map((s, index) => ({
        index,
        state: s.lost ? "lost" : "open",
        bytes: s.meter.totalBytes,
        wireBytes: s.wireBytes,
        frames: s.frames,
        bytesPerSec: this.#endMs ? 0 : s.meter.bytesPerSec(t),
      })),
      retransmits: this.retransmits,
      encoding: this.encoding?.(),
      delta: this.delta?.(),
      eta: this.#eta(t, done),
      startedAt: new Date(this.#startMs).toISOString(),
      finishedAt: this.#endMs === undefined ? undefined : new Date(this.#endMs).toISOString(),
      elapsedMs,
      error: this.error,
    };
  }
}
