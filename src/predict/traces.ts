/**
 * PBA trace input: mahimahi link traces (shared/traces/mahimahi) turned into bytes/s per bin, the
 * samples the predictors are evaluated on and, later, the LSTM is trained on.
 *
 * Format: one line per opportunity to deliver one 1500-byte packet, as an integer millisecond since the
 * trace began, in order; a timestamp repeats when several packets fit in that millisecond. A bin of
 * binMs holding n lines had a capacity of n × 1500 / (binMs / 1000) bytes/s.
 *
 * Streaming: TraceBinner takes one line (or timestamp) at a time and hands out each bin once a later
 * timestamp proves it complete, so a caller can feed a file in pieces and drain bins as it goes.
 */

export const MAHIMAHI_PACKET_BYTES = 1500;

/** A jump in time that would close more empty bins than this is a broken trace, not an outage. */
export const MAX_BINS_PER_GAP = 1_000_000;

export class TraceFormatError extends Error {
  override name = "TraceFormatError";
}

export class TraceBinner {
  /** Complete bins not yet taken, bytes/s. */
  #ready: number[] = [];
  #bin = 0;
  #packetsInBin = 0;
  #lastMs = -1;
  #line = 0;
  #packets = 0;

  constructor(readonly binMs: number, readonly packetBytes = MAHIMAHI_PACKET_BYTES) {
    if (!Number.isInteger(binMs) || binMs < 1) {
      throw new RangeError(`binMs = ${binMs}; give a whole number of milliseconds ≥ 1`);
    }
  }

  /** Adds one line of a trace file; blank lines (a final newline, CRLF remains) are skipped. */
  addLine(line: string): void {
    this.#line++;
    const text = line.trim();
    if (text === "") return;
    if (!/^\d+$/.test(text)) {
      throw new TraceFormatError(
        `line ${this.#line}: ${JSON.stringify(line.slice(0, 40))} is not a millisecond timestamp; ` +
          "a mahimahi trace has one non-negative integer per line",
      );
    }
    this.addTimestamp(Number(text));
  }

  /** Adds one delivery opportunity at atMs (ms since the trace began). */
  addTimestamp(atMs: number): void {
    if (!Number.isSafeInteger(atMs) || atMs < 0) {
      throw new TraceFormatError(`${this.#where()}timestamp ${atMs} is not a non-negative integer`);
    }
    if (atMs < this.#lastMs) {
      throw new TraceFormatError(
        `${this.#where()}timestamp ${atMs} comes after ${this.#lastMs}; a trace must be in time order`,
      );
    }
    const bin = Math.floor(atMs / this.binMs);
    if (bin - this.#bin > MAX_BINS_PER_GAP) {
      throw new TraceFormatError(
        `${this.#where()}a gap from ${this.#lastMs} to ${atMs} ms spans more than ${MAX_BINS_PER_GAP} bins`,
      );
    }
    // Every bin before this timestamp's is complete: emit it, and the empty ones a gap skipped.
    while (this.#bin < bin) {
      this.#ready.push(this.#bytesPerSec(this.#packetsInBin));
      this.#packetsInBin = 0;
      this.#bin++;
    }
    this.#packetsInBin++;
    this.#packets++;
    this.#lastMs = atMs;
  }

  /** Drains the bins known complete so far, bytes/s, oldest first. */
  takeBins(): number[] {
    const out = this.#ready;
    this.#ready = [];
    return out;
  }

  /** Delivery opportunities seen so far. */
  get packets(): number {
    return this.#packets;
  }

  /**
   * The last timestamp seen: a mahimahi trace's length (it loops with this period). The bin holding it
   * is never emitted, because the trace ends inside it and its rate is unknown.
   */
  get durationMs(): number {
    return Math.max(0, this.#lastMs);
  }

  #bytesPerSec(packets: number): number {
    return (packets * this.packetBytes * 1000) / this.binMs;
  }

  #where(): string {
    return this.#line > 0 ? `line ${this.#line}: ` : "";
  }
}

export interface BinnedTrace {
  binMs: number;
  /** Capacity per complete bin, oldest first. */
  bytesPerSec: number[];
  packets: number;
  durationMs: number;
}

/** Bins a whole trace, given as its text or as its lines. */
export function binMahimahi(trace: string | Iterable<string>, binMs: number): BinnedTrace {
  const binner = new TraceBinner(binMs);
  const lines = typeof trace === "string" ? trace.split("\n") : trace;
  const bytesPerSec: number[] = [];
  for (const line of lines) {
    binner.addLine(line);
    // Drain as we go so the pending list stays short; push one by one (a spread of a long gap could
    // overflow the argument limit).
    for (const b of binner.takeBins()) bytesPerSec.push(b);
  }
  return { binMs, bytesPerSec, packets: binner.packets, durationMs: binner.durationMs };
}
