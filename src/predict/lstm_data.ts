/**
 * PBA LSTM data, pure: the log scaling shared by training and the exported model, the (window → target)
 * examples cut from binned traces, the split of the mahimahi traces into training and held-out sets by
 * recording, and the seeded generator that makes training reproducible.
 */

/**
 * Inputs: z = (ln(bytesPerSec + floor) − logMean) / logStd, the floor keeping an outage (0 bytes/s)
 * finite. Targets and the output: z = (ln(bytesPerSec) − logMean) / logStd without the floor (a zero target
 * is never trained on), so the model's output exp(z·logStd + logMean) forecasts the capacity itself and is
 * always positive.
 */
export interface LogScale {
  floorBytesPerSec: number;
  logMean: number;
  logStd: number;
}

/** One 1500-byte packet per second: far below any link worth forecasting, so it barely moves real values. */
export const DEFAULT_FLOOR_BYTES_PER_SEC = 1500;

export function fitLogScale(
  series: readonly (readonly number[])[],
  floorBytesPerSec = DEFAULT_FLOOR_BYTES_PER_SEC,
): LogScale {
  let n = 0;
  let sum = 0;
  let sumSq = 0;
  for (const s of series) {
    for (const x of s) {
      const l = Math.log(x + floorBytesPerSec);
      n++;
      sum += l;
      sumSq += l * l;
    }
  }
  if (n < 2) throw new RangeError(`fitting a log scale needs at least 2 samples, got ${n}`);
  const logMean = sum / n;
  const logStd = Math.sqrt(Math.max(sumSq / n - logMean * logMean, 0));
  if (!(logStd > 0)) throw new RangeError("every sample is the same: a log scale needs some spread");
  return { floorBytesPerSec, logMean, logStd };
}

export function toScaled(bytesPerSec: number, s: LogScale): number {
  return (Math.log(bytesPerSec + s.floorBytesPerSec) - s.logMean) / s.logStd;
}

/** A positive target's scaled value (no floor: see LogScale). */
export function toScaledTarget(bytesPerSec: number, s: LogScale): number {
  return (Math.log(bytesPerSec) - s.logMean) / s.logStd;
}

/** Examples: windows of scaled inputs and the scaled target horizonSteps after each window's end. */
export interface Examples {
  windowSamples: number;
  /** count × windowSamples scaled inputs, row-major. */
  inputs: Float32Array;
  /** count scaled targets. */
  targets: Float32Array;
  count: number;
}

/**
 * Every window of windowSamples consecutive bins whose target (the bin horizonSteps after the window's
 * last) is above zero, across the given series; a window never spans two series. Zero targets are left
 * out because they have no percentage error, the measure the model is trained on and judged by.
 */
export function cutExamples(
  series: readonly (readonly number[])[],
  windowSamples: number,
  horizonSteps: number,
  scale: LogScale,
): Examples {
  if (!Number.isInteger(windowSamples) || windowSamples < 1) {
    throw new RangeError(`windowSamples = ${windowSamples}; give an integer ≥ 1`);
  }
  if (!Number.isInteger(horizonSteps) || horizonSteps < 1) {
    throw new RangeError(`horizonSteps = ${horizonSteps}; give an integer ≥ 1`);
  }
  const ends: [number, number][] = [];
  series.forEach((s, si) => {
    for (let end = windowSamples - 1; end + horizonSteps < s.length; end++) {
      if (s[end + horizonSteps] > 0) ends.push([si, end]);
    }
  });
  const inputs = new Float32Array(ends.length * windowSamples);
  const targets = new Float32Array(ends.length);
  ends.forEach(([si, end], row) => {
    const s = series[si];
    for (let k = 0; k < windowSamples; k++) {
      inputs[row * windowSamples + k] = toScaled(s[end - windowSamples + 1 + k], scale);
    }
    targets[row] = toScaledTarget(s[end + horizonSteps], scale);
  });
  return { windowSamples, inputs, targets, count: ends.length };
}

/** The rows of ex picked by rows, in that order. */
export function pickExamples(ex: Examples, rows: readonly number[]): Examples {
  const w = ex.windowSamples;
  const inputs = new Float32Array(rows.length * w);
  const targets = new Float32Array(rows.length);
  rows.forEach((r, i) => {
    inputs.set(ex.inputs.subarray(r * w, (r + 1) * w), i * w);
    targets[i] = ex.targets[r];
  });
  return { windowSamples: w, inputs, targets, count: rows.length };
}

/** mulberry32: a small, fast, seeded generator of floats in [0, 1); the same seed gives the same stream. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A Fisher–Yates permutation of 0..n−1 drawn from random. */
export function permutation(n: number, random: () => number): number[] {
  const p = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [p[i], p[j]] = [p[j], p[i]];
  }
  return p;
}

/**
 * The recordings whose traces are held out of training entirely, one per carrier. A recording's uplink and
 * downlink (.up, .down) were captured on the same drive at the same time, so they go to the same side: a
 * held-out downlink whose uplink was trained on would not be unseen.
 */
export const HELD_OUT_RECORDINGS = ["ATT-LTE-driving-2016", "TMobile-UMTS-driving", "Verizon-LTE-short"];

/** The recording a trace file belongs to: its name without the .up / .down direction. */
export function recordingOf(traceFile: string): string {
  return traceFile.replace(/\.(up|down)$/, "");
}

export function splitTraces(
  traceFiles: readonly string[],
  heldOutRecordings: readonly string[] = HELD_OUT_RECORDINGS,
): { train: string[]; heldOut: string[] } {
  const train: string[] = [];
  const heldOut: string[] = [];
  for (const f of [...traceFiles].sort()) {
    (heldOutRecordings.includes(recordingOf(f)) ? heldOut : train).push(f);
  }
  return { train, heldOut };
}
