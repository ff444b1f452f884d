/**
 * PBA (predictive bandwidth allocation): the bandwidth samples kept per peer. A fixed-capacity ring, so
 * memory stays bounded however long the agent runs, with a JSON form the agent persists across restarts
 * (the file IO is the agent's; this module only makes the shape and checks it on load).
 *
 * The predictors and the online scoring need only the values at a regular step; the sample times travel
 * along so that a reloaded history can be judged stale by the caller (for example, a gap of hours).
 */

export interface BandwidthSample {
  /** Wall-clock time of the sample (ms since the epoch), so it still means something after a restart. */
  atMs: number;
  bytesPerSec: number;
}

/** The persisted form: version, capacity, samples oldest first. */
export interface SampleRingJson {
  version: 1;
  capacity: number;
  samples: BandwidthSample[];
}

/** Above this a per-peer history is a configuration mistake, not a forecast input. */
export const MAX_CAPACITY = 1_000_000;

export class SampleRingError extends Error {
  override name = "SampleRingError";
}

export class SampleRing {
  readonly #buf: BandwidthSample[];
  /** Index of the oldest sample. */
  #head = 0;
  #length = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > MAX_CAPACITY) {
      throw new SampleRingError(`capacity = ${capacity}: give an integer in 1..${MAX_CAPACITY}`);
    }
    this.#buf = new Array(capacity);
  }

  get length(): number {
    return this.#length;
  }

  /** Appends a sample, dropping the oldest when full. Samples must come in time order. */
  push(sample: BandwidthSample): void {
    const problem = checkSample(sample, this.latest()?.atMs);
    if (problem) throw new SampleRingError(problem);
    // Copy, so a caller reusing its object cannot rewrite history.
    const copy = { atMs: sample.atMs, bytesPerSec: sample.bytesPerSec };
    if (this.#length < this.capacity) {
      this.#buf[(this.#head + this.#length) % this.capacity] = copy;
      this.#length++;
    } else {
      this.#buf[this.#head] = copy;
      this.#head = (this.#head + 1) % this.capacity;
    }
  }

  latest(): BandwidthSample | undefined {
    return this.#length === 0 ? undefined : this.#at(this.#length - 1);
  }

  /** The last lastN samples (all by default), oldest first. */
  samples(lastN = this.#length): BandwidthSample[] {
    const n = Math.max(0, Math.min(Math.floor(lastN), this.#length));
    const out: BandwidthSample[] = [];
    for (let i = this.#length - n; i < this.#length; i++) out.push({ ...this.#at(i) });
    return out;
  }

  /** bytes/s of the last lastN samples (all by default), oldest first: what a Predictor takes. */
  values(lastN = this.#length): number[] {
    const n = Math.max(0, Math.min(Math.floor(lastN), this.#length));
    const out: number[] = [];
    for (let i = this.#length - n; i < this.#length; i++) out.push(this.#at(i).bytesPerSec);
    return out;
  }

  toJSON(): SampleRingJson {
    return { version: 1, capacity: this.capacity, samples: this.samples() };
  }

  /**
   * Rebuilds a ring from its persisted form (already JSON-parsed), checking every field. capacity
   * overrides the stored one, so a changed setting takes effect on load; when it shrinks, the newest
   * samples are kept. Throws SampleRingError naming the bad field; a caller that would rather start
   * empty than refuse to start catches it.
   */
  static fromJSON(data: unknown, capacity?: number): SampleRing {
    if (typeof data !== "object" || data === null || Array.isArray(data)) {
      throw new SampleRingError(`sample history is ${describe(data)}: expected an object`);
    }
    const o = data as Record<string, unknown>;
    if (o.version !== 1) {
      throw new SampleRingError(`version = ${describe(o.version)}: only version 1 is understood`);
    }
    const stored = o.capacity;
    if (typeof stored !== "number" || !Number.isInteger(stored) || stored < 1 || stored > MAX_CAPACITY) {
      throw new SampleRingError(`capacity = ${describe(stored)}: expected an integer in 1..${MAX_CAPACITY}`);
    }
    if (!Array.isArray(o.samples)) {
      throw new SampleRingError(`samples = ${describe(o.samples)}: expected an array`);
    }
    if (o.samples.length > stored) {
      throw new SampleRingError(`samples has ${o.samples.length} entries, more than capacity ${stored}`);
    }
    const ring = new SampleRing(capacity ?? stored);
    let prevAtMs: number | undefined;
    o.samples.forEach((s: unknown, i: number) => {
      const problem = checkSample(s, prevAtMs);
      if (problem) throw new SampleRingError(`samples[${i}]: ${problem}`);
      prevAtMs = (s as BandwidthSample).atMs;
    });
    for (const s of o.samples.slice(-ring.capacity)) ring.push(s as BandwidthSample);
    return ring;
  }

  #at(i: number): BandwidthSample {
    return this.#buf[(this.#head + i) % this.capacity];
  }
}

/** A reason the value is not a valid next sample, or undefined when it is. */
function checkSample(s: unknown, prevAtMs: number | undefined): string | undefined {
  if (typeof s !== "object" || s === null) return `sample is ${describe(s)}: expected { atMs, bytesPerSec }`;
  const { atMs, bytesPerSec } = s as Record<string, unknown>;
  if (typeof atMs !== "number" || !Number.isFinite(atMs)) {
    return `atMs = ${describe(atMs)}: expected a finite number of milliseconds`;
  }
  if (typeof bytesPerSec !== "number" || !Number.isFinite(bytesPerSec) || bytesPerSec < 0) {
    return `bytesPerSec = ${describe(bytesPerSec)}: expected a finite number ≥ 0`;
  }
  if (prevAtMs !== undefined && atMs < prevAtMs) {
    return `atMs = ${atMs} is before the previous sample's ${prevAtMs}: samples must come in time order`;
  }
  return undefined;
}

function describe(v: unknown): string {
  if (typeof v === "number") return String(v); // JSON.stringify would print NaN as null
  return v === undefined ? "missing" : JSON.stringify(v) ?? String(v);
}
