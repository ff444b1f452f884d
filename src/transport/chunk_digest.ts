/** The per-chunk checksum table both ends keep; its digest proves they agree on every chunk. */
import { xxh3Into } from "../../ffi/codec.ts";

export class ChunkDigests {
  readonly #sums: Uint8Array;
  #count = 0;
  readonly #seen: Uint8Array;

  constructor(readonly totalChunks: number) {
    this.#sums = new Uint8Array(totalChunks * 8);
    this.#seen = new Uint8Array(totalChunks);
  }

  /** Records chunk seq's 8-byte checksum; true the first time, repeated records count once. */
  record(seq: number, checksum: Uint8Array): boolean {
    if (!(seq >= 0 && seq < this.totalChunks) || checksum.length !== 8) {
      throw new RangeError(`chunk ${seq} / checksum of ${checksum.length} bytes is outside the table`);
    }
    this.#sums.set(checksum, seq * 8);
    if (this.#seen[seq] === 1) return false;
    this.#seen[seq] = 1;
    this.#count++;
    return true;
  }

  get recorded(): number {
    return this.#count;
  }

  get complete(): boolean {
    return this.#count === this.totalChunks;
  }

  /** XXH3-64 over the checksums in chunk order, as hex. */
  digest(): string {
    const out = new Uint8Array(8);
    xxh3Into(this.#sums, out);
    return Array.from(out, (b) => b.toString(16).padStart(2, "0")).join("");
  }
}

/**
 * A digest folded chunk by chunk in sequence order, for streams: constant memory however long the
 * stream runs. Both ends fold the same checksums in the same order, the sender as it reads, the
 * receiver as it delivers.
 */
export class RunningDigest {
  readonly #state = new Uint8Array(16);
  count = 0;

  fold(checksum: Uint8Array): void {
    this.#state.set(checksum, 8);
    xxh3Into(this.#state, this.#state.subarray(0, 8));
    this.count++;
  }

  digest(): string {
    return Array.from(this.#state.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
  }
}
