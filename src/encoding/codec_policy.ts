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

/** A codec at a level (zstd); the level does not travel: decoders read any level. */
export interface CodecSpec {
  codec: CodecName;
  level?: number;
}

export function specKey(spec: CodecSpec): string {
  return spec.level === undefined ? spec.codec : `${spec.codec}:${spec.level}`;
}

/** How "auto" weighs CPU against wire bytes; the link's mode (datacenter or internet) sets it. */
export type CodecBias = "datacenter" | "internet";
export const CODEC_BIASES: readonly CodecBias[] = ["datacenter", "internet"];

export interface BiasSettings {
  /** What the policy may pick besides sending raw (none: zero pages only). */
  candidates: readonly CodecSpec[];
  /** Chunk size for "auto" transfers unless one is asked for; none: the configured chunk size. */
  chunkBytes?: number;
}

const MiB = 1024 * 1024;

/**
 * datacenter: raw, zero pages left out. There the endpoints, not the wire, are the limit: what a sender
 * measures as the link's rate is its own, the receiver's and the kernel's CPU, which a compressor takes
 * from. Measured on loopback (bench/codec_loopback.ts): lz4 chosen wherever the policy's model promised
 * 1.5x raw ran at 0.82x of raw on VM memory and 0.91x on text. Links slower than the compressors have
 * longer round trips, and the mode policy (src/mode/) makes them hybrid or internet.
 * internet: the link is the bottleneck, so spend CPU for ratio. Chunks are compressed independently, so
 * a chunk is all the context a codec gets, and zstd's window spans the whole chunk (c-shim/codec.c). On a
 * 1 GiB guest's memory (41 % zero pages) in 16 MiB chunks, one core, zstd saved 88.0 % at level 3
 * (1370 MB/s), 88.2 % at 4 (1060 MB/s), 87.4 % at 5 (590 MB/s: its greedy matcher finds less there than
 * level 4's double-fast one) and 88.3 % at 7 (430 MB/s); on 64 MiB of source text, 85.2 % at 3 and 4
 * (390, 330 MB/s), 86.5 % at 5 (200 MB/s); the `zstd -3` CLI on the whole memory file saved 85.6 %.
 * Hence zstd 4 at the top: VM memory and disk images are what dwcp moves, and above 4 the levels stop
 * saving more on them while costing twice the CPU. The mode policy shrinks the chunk where many streams
 * would hold too much memory.
 */
export const CODEC_BIAS: Record<CodecBias, BiasSettings> = {
  datacenter: { candidates: [] },
  internet: {
    candidates: [
      { codec: "lz4" },
      { codec: "zstd", level: 1 },
      { codec: "zstd", level: 3 },
      { codec: "zstd", level: 4 },
    ],
    chunkBytes: 16 * MiB,
  },
};

export interface CodecChoice extends CodecSpec {
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

/**
 * Starting points until this host's own measurements arrive: bytes/s on one core and savings relative
 * to lz4's, as bench/hde_vs_cli.ts measured them on VM memory on the 2-core build machines.
 */
const PRIORS: Record<string, { bytesPerSec: number; savingsToLz4: number }> = {
  lz4: { bytesPerSec: 830e6, savingsToLz4: 1 },
  snappy: { bytesPerSec: 780e6, savingsToLz4: 1 },
  zstd: { bytesPerSec: 340e6, savingsToLz4: 1.13 },
  "zstd:1": { bytesPerSec: 560e6, savingsToLz4: 1.08 },
  "zstd:3": { bytesPerSec: 340e6, savingsToLz4: 1.13 },
  "zstd:4": { bytesPerSec: 340e6, savingsToLz4: 1.16 },
};
/** Samples that saved less than this say nothing about a codec's relative savings. */
const MIN_SAMPLE_SAVINGS = 0.02;
/** How much less a more thorough codec may promise and still replace a faster one; and how much more
 * than raw the chosen codec must promise. */
const SWITCH_GAIN = 1.05;
/** Weight of a new measurement in the running averages. */
const ALPHA = 0.2;
/**
 * Every this many chunks that are worth compressing, one goes to the next more thorough candidate in
 * turn: a codec is measured only when used, and without these probes an early unlucky estimate of its
 * speed would never be revised. Faster candidates are not probed: by the order they cannot save more.
 */
const PROBE_EVERY = 16;

export class CodecPolicy {
  readonly #speed = new Map<string, number>();
  readonly #savingsToSample = new Map<string, number>();
  readonly #chosen = new Map<string, number>();
  #last?: CodecChoice & PolicyInputs;
  #link = 0;
  #compressible = 0;

  /**
   * candidates: the codecs it may pick besides "none", ordered from fast to thorough (each saves at
   * least what the ones before it save); workers: compressions that can run at once.
   */
  constructor(readonly candidates: readonly CodecSpec[], readonly workers: number) {
    for (const c of candidates) {
      const prior = PRIORS[specKey(c)] ?? { bytesPerSec: 300e6, savingsToLz4: 1 };
      this.#speed.set(specKey(c), prior.bytesPerSec);
      this.#savingsToSample.set(specKey(c), prior.savingsToLz4);
    }
  }

  choose(inputs: PolicyInputs): CodecChoice {
    this.#link = inputs.linkBytesPerSec;
    const raw: CodecChoice = { codec: "none", expectedBytesPerSec: inputs.linkBytesPerSec };
    let best = raw;
    // Candidates run from fast to thorough, and a more thorough one saves at least what the ones
    // before it save. Each codec's savings are learned on the chunks it happened to get (a probe may
    // land on poor data), so that order caps every estimate at the one before it; and the sample
    // underrates thorough codecs (16 KiB of lz4 cannot see what zstd 4 finds in 16 MiB), so a more
    // thorough codec wins unless it promises clearly less: unless the CPU would be the limit.
    let ratioCap = 1;
    for (const spec of this.candidates) {
      const key = specKey(spec);
      const savings = (1 - inputs.sampleRatio) * this.#savingsToSample.get(key)!;
      const ratio = Math.min(ratioCap, Math.max(0.01, 1 - savings));
      ratioCap = ratio;
      const expected = Math.min(this.#speed.get(key)! * this.workers, inputs.linkBytesPerSec / ratio);
      if (best === raw || expected * SWITCH_GAIN >= best.expectedBytesPerSec) {
        best = { ...spec, expectedBytesPerSec: expected };
      }
    }
    if (best.expectedBytesPerSec < raw.expectedBytesPerSec * SWITCH_GAIN) best = raw;
    if (best.codec !== "none" && ++this.#compressible % PROBE_EVERY === 0) {
      const thorougher = this.candidates.slice(
        this.candidates.findIndex((c) => specKey(c) === specKey(best)) + 1,
      );
      if (thorougher.length > 0) {
        const probe = thorougher[(this.#compressible / PROBE_EVERY) % thorougher.length];
        best = { ...probe, expectedBytesPerSec: best.expectedBytesPerSec };
      }
    }
    this.#chosen.set(specKey(best), (this.#chosen.get(specKey(best)) ?? 0) + 1);
    this.#last = { ...best, ...inputs };
    return best;
  }

  /** A compression of rawBytes into wireBytes took elapsedMs; sampleRatio is what the sample said. */
  observe(
    spec: CodecSpec,
    rawBytes: number,
    wireBytes: number,
    elapsedMs: number,
    sampleRatio: number,
  ): void {
    const codec = specKey(spec);
    if (spec.codec === "none" || rawBytes === 0) return;
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
        this.candidates.map((c) => [specKey(c), {
          compressBytesPerSec: this.#speed.get(specKey(c))!,
          savingsToSample: this.#savingsToSample.get(specKey(c))!,
        }]),
      ),
      chosen: Object.fromEntries(this.#chosen),
      last: this.#last,
    };
  }

  #blend(map: Map<string, number>, codec: string, value: number): void {
    const old = map.get(codec);
    if (old !== undefined) map.set(codec, old + ALPHA * (value - old));
  }
}
