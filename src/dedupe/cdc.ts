/**
 * Content-defined chunking of a byte stream for dedupe (HDE, DWCP's encoding layer). Cut points come from
 * a gear rolling hash (FastCDC with normalized chunking, c-shim/cdc.c), so a run of bytes that two VMs or
 * two transfers share is cut into the same chunks wherever it sits, and a chunk's identity is its hash.
 *
 *   const chunker = new StreamChunker(VM_MEMORY_CDC);
 *   for await (const read of source) for (const chunk of chunker.push(read)) use(chunk);
 *   const last = chunker.finish(); if (last) use(last);
 *
 * A stream is cut identically however it is split into reads: the open chunk (at most maxBytes) is
 * carried from one push to the next, both its hash state (in the shim) and its bytes (here).
 */
import { CDC_STATE_BYTES, cdcCuts, type CdcSizes, cutCapacity } from "../../ffi/cdc.ts";

export type { CdcSizes } from "../../ffi/cdc.ts";

const KiB = 1024;

/**
 * Defaults for VM memory: 8 KiB average, 2 KiB minimum, 32 KiB maximum. Memory is 4 KiB pages that the
 * guest places where it likes, so shared content comes as runs of a few to many pages, and a chunk is
 * found again only if it lies inside such a run: smaller chunks find more. Each chunk costs 36 bytes of
 * OFFER, an index entry and a file in the store (whose last 4 KiB block is half empty on average): larger
 * chunks cost less. Measured on two 512 MiB guests from one image (bench/dedupe_bench.ts), the second
 * guest sends 71, 75, 82 and 96 MiB after the first at 4, 8, 16 and 32 KiB averages, and a snapshot of
 * the same guest 5 s later 5.5, 5.5, 7.8 and 10.9 MiB; SHA-256 runs at half speed on 4 KiB chunks and
 * at full speed from 8 KiB up. 8 KiB is where the bytes saved level off and the costs have not yet grown.
 */
export const VM_MEMORY_CDC: CdcSizes = { minBytes: 2 * KiB, avgBytes: 8 * KiB, maxBytes: 32 * KiB };

/** The shim's own bounds, checked here too so that a bad setting names itself before any data flows. */
const MIN_LIMIT_BYTES = 64;
const MAX_LIMIT_BYTES = 16 * 1024 * KiB;

/** Throws a RangeError naming the bad size and the rule when sizes are not a valid chunker setting. */
export function validateCdcSizes(sizes: CdcSizes): CdcSizes {
  const { minBytes, avgBytes, maxBytes } = sizes;
  const ints = [minBytes, avgBytes, maxBytes].every((v) => Number.isSafeInteger(v));
  if (
    !ints || minBytes < MIN_LIMIT_BYTES || !(minBytes < avgBytes && avgBytes < maxBytes) ||
    maxBytes > MAX_LIMIT_BYTES || (avgBytes & (avgBytes - 1)) !== 0
  ) {
    throw new RangeError(
      `chunk sizes min ${minBytes}, avg ${avgBytes}, max ${maxBytes}: need integers with ` +
        `${MIN_LIMIT_BYTES} <= min < avg < max <= ${MAX_LIMIT_BYTES} and avg a power of two ` +
        `(for VM memory use min ${VM_MEMORY_CDC.minBytes}, avg ${VM_MEMORY_CDC.avgBytes}, max ${VM_MEMORY_CDC.maxBytes})`,
    );
  }
  return { minBytes, avgBytes, maxBytes };
}

/** Chunks that bound the shim's cut buffer: one call scans at most this many minimum-size chunks. */
const CUTS_PER_CALL = 16 * KiB;

export class StreamChunker {
  readonly sizes: CdcSizes;
  /** Bytes pushed so far, including those of the chunk still open. */
  #streamBytes = 0;
  readonly #state = new Uint8Array(CDC_STATE_BYTES);
  readonly #cuts: Uint32Array;
  /** Bytes scanned per shim call, so that #cuts always has room. */
  readonly #callBytes: number;
  /** The open chunk's bytes: fewer than maxBytes, since the shim cuts at maxBytes. */
  readonly #open: Uint8Array;
  #openLen = 0;

  constructor(sizes: CdcSizes) {
    this.sizes = validateCdcSizes(sizes);
    this.#callBytes = (CUTS_PER_CALL - 1) * sizes.minBytes;
    this.#cuts = new Uint32Array(cutCapacity(this.#callBytes, sizes.minBytes));
    this.#open = new Uint8Array(sizes.maxBytes);
  }

  get streamBytes(): number {
    return this.#streamBytes;
  }

  /**
   * Returns the chunks that end inside data, in order. A chunk that lies wholly inside data is a view of
   * it (no copy): keep data unchanged while such a chunk is in use. A chunk begun in an earlier push is a
   * fresh copy. The bytes after the last cut are kept (copied) for the next push or finish().
   */
  push(data: Uint8Array): Uint8Array[] {
    const chunks: Uint8Array[] = [];
    for (let base = 0; base < data.length; base += this.#callBytes) {
      const part = data.subarray(base, Math.min(data.length, base + this.#callBytes));
      const count = cdcCuts(part, this.sizes, this.#state, this.#cuts);
      let start = 0;
      for (let i = 0; i < count; i++) {
        const end = this.#cuts[i];
        if (this.#openLen > 0) {
          const chunk = new Uint8Array(this.#openLen + end);
          chunk.set(this.#open.subarray(0, this.#openLen));
          chunk.set(part.subarray(0, end), this.#openLen);
          this.#openLen = 0;
          chunks.push(chunk);
        } else {
          chunks.push(part.subarray(start, end));
        }
        start = end;
      }
      this.#open.set(part.subarray(start), this.#openLen);
      this.#openLen += part.length - start;
    }
    this.#streamBytes += data.length;
    return chunks;
  }

  /** Ends the stream: returns the last, possibly short, chunk (a copy), or undefined when none is open. */
  finish(): Uint8Array | undefined {
    const last = this.#openLen > 0 ? this.#open.slice(0, this.#openLen) : undefined;
    this.#openLen = 0;
    this.#state.fill(0);
    return last;
  }
}
