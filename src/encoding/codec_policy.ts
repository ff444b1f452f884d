/**
 * HDE adaptive codec policy, sans IO: picks a codec for each chunk to maximise end-to-end throughput,
 * from what it is told about the link and the host. Time and measurements come in; a choice comes out.
 *
 * Throughput with codec c, when compression runs beside sending (off the main thread):
 *     min(compressBytesPerSec(c) × workers, linkBytesPerSec / ratio(c))
 * where ratio(c) = wire bytes / raw bytes for this chunk. So on a link faster than every compressor the
 * chunk goes raw (ratio 1, no CPU), and on a slow link the policy spends CPU for ratio. A chunk's savings
 * are estimated from a cheap sample (lz4 on a slice of the chunk): codec c saves k(c) times what the
 * sample saved, where k(c) is learned from what c actually achieved on this transfer (incompressible
 * samples teach nothing, and predict no savings for any codec).
 */
import { type CodecName, CODECS } from "../../ffi/codec.ts";

/** What a transfer may ask for: one codec for every chunk, or "auto" for this policy's choice per chunk. */
export type CodecSetting = CodecName | "auto";
export const CODEC_SETTINGS: readonly CodecSetting[] = [...CODECS, "auto"];

/** What the policy assumes of a link it has not measured yet: fast, so it starts by sending raw. */
export const UNMEASURED_LINK_BYTES_PER_SEC = 1.25e9;

export interface CodecChoice {
  codec: CodecName;
  /** Raw bytes per second the policy expects end to end with this codec. */
  expectedBytesPerSec: number;
}

export interface PolicyInputs {
  linkBytesPerSec: number;
  /** lz4's compressed/raw on a sample of this chunk (1 = incompressible). */
  sampleRatio: number;
}

export interface PolicySnapshot {
  linkBytesPerSec: number;
  workers: number;
  codecs: Record<string, { compressBytesPerSec: number; savingsToSample: number }>;
  chosen: Record<string, number>;
  last?: CodecChoice & PolicyInputs;
}

/** Starting points until this host's own measurements arrive (MB/s on VM-memory-like data, 1 core). */
const PRIOR_SPEED: Partial<Record<CodecName, number>> = { lz4: 1100e6, snappy: 1300e6, zstd: 600e6 };
/** How each codec's savings compare with lz4's on the same bytes, before measurements. */
const PRIOR_SAVINGS_TO_LZ4: Partial<Record<CodecName, number>> = { lz4: 1, snappy: 0.95, zstd: 1.3 };
/** Samples that saved less than this say nothing about a codec's relative savings. */
const MIN_SAMPLE_SAVINGS = 0.02;
/** Weight of a new measurement in the running averages. */
const ALPHA = 0.2;
/**
 * Every this many chunks that are worth compressing, one goes to the next candidate in turn: a codec is
 * measured only when used, and without these probes an early unlucky estimate would never be revised.
 */
const PROBE_EVERY = 16;

export class CodecPolicy {
  readonly #speed = new Map<CodecName, number>();
  readonly #savingsToSample = new Map<CodecName, number>();
  readonly #chosen = new Map<CodecName, number>();
  #last?: CodecChoice & PolicyInputs;
  #link = 0;
  #compressible = 0;

  /** candidates: the codecs it may pick besides "none"; workers: compressions that can run at once. */
  constructor(readonly candidates: CodecName[], readonly workers: number) {
    for (const c of candidates) {
      this.#speed.set(c, PRIOR_SPEED[c] ?? 500e6);
      this.#savingsToSample.set(c, PRIOR_SAVINGS_TO_LZ4[c] ?? 1);
    }
  }

  choose(inputs: PolicyInputs): CodecChoice {
    this.#link = inputs.linkBytesPerSec;
    let best: CodecChoice = { codec: "none", expectedBytesPerSec: inputs.linkBytesPerSec };
    for (const codec of this.candidates) {
      const savings = (1 - inputs.sampleRatio) * this.#savingsToSample.get(codec)!;
      const ratio = Math.min(1, Math.max(0.01, 1 - savings));
      const expected = Math.min(this.#speed.get(codec)! * this.workers, inputs.linkBytesPerSec / ratio);
      // Prefer the cheaper choice unless the gain is real (5 %), so noise does not flip codecs.
      if (expected > best.expectedBytesPerSec * 1.05) best = { codec, expectedBytesPerSec: expected };
    }
    if (best.codec !== "none" && ++this.#compressible % PROBE_EVERY === 0) {
      const probe = this.candidates[(this.#compressible / PROBE_EVERY) % this.candidates.length];
      best = { codec: probe, expectedBytesPerSec: best.expectedBytesPerSec };
    }
    this.#chosen.set(best.codec, (this.#chosen.get(best.codec) ?? 0) + 1);
    this.#last = { ...best, ...inputs };
    return best;
  }

  /** A compression of rawBytes into wireBytes took elapsedMs; sampleRatio is what the sample said. */
  observe(
    codec: CodecName,
    rawBytes: number,
    wireBytes: number,
    elapsedMs: number,
    sampleRatio: number,
  ): void {
    if (codec === "none" || rawBytes === 0) return;
    if (elapsedMs > 0) this.#blend(this.#speed, codec, (rawBytes * 1000) / elapsedMs);
    const sampleSavings = 1 - sampleRatio;
    if (sampleSavings >= MIN_SAMPLE_SAVINGS) {
      this.#blend(this.#savingsToSample, codec, Math.max(0, 1 - wireBytes / rawBytes) / sampleSavings);
    }
  }

  snapshot(): PolicySnapshot {
    return {
      linkBytesPerSec: this.#link,
      workers: this.workers,
      codecs: Object.fromEntries(
        this.candidates.map((c) => [c, {
          compressBytesPerSec: this.#speed.get(c)!,
          savingsToSample: this.#savingsToSample.get(c)!,
        }]),
      ),
      chosen: Object.fromEntries(this.#chosen),
      last: this.#last,
    };
  }

  #blend(map: Map<CodecName, number>, codec: CodecName, value: number): void {
    const old = map.get(codec);
    if (old !== undefined) map.set(codec, old + ALPHA * (value - old));
  }
}
