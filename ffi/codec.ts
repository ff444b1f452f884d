/** Typed wrappers over the shim's compression contexts (zstd, lz4 frame, snappy) and checksum. */
import { check, native } from "./library.ts";

export const CODECS = ["none", "lz4", "zstd", "snappy"] as const;
export type CodecName = typeof CODECS[number];

/** Wire ids; also the shim's enum dwcp_codec. */
export const CODEC_IDS: Record<CodecName, number> = { none: 0, lz4: 1, zstd: 2, snappy: 3 };

export function codecName(id: number): CodecName | undefined {
  return CODECS[id];
}

/** Default levels: zstd 3 as the CLI uses; lz4 0 is its fast mode. */
const DEFAULT_LEVEL: Record<CodecName, number> = { none: 0, lz4: 0, zstd: 3, snappy: 0 };

const registry = new FinalizationRegistry<number>((handle) => native().dwcp_codec_free(handle));

/**
 * A reusable compression context. One call at a time per Codec; use one per stream or worker.
 * close() frees it; the finalizer only guards against a forgotten close.
 */
export class Codec {
  readonly id: number;
  #handle: number;

  constructor(readonly name: CodecName, readonly level: number = DEFAULT_LEVEL[name]) {
    this.id = CODEC_IDS[name];
    if (this.id === undefined) {
      throw new RangeError(`unknown codec "${name}"; use one of ${CODECS.join(", ")}`);
    }
    this.#handle = check(native().dwcp_codec_new(this.id, level), `creating ${name} codec`);
    registry.register(this, this.#handle, this);
  }

  /** Largest output compress() can produce for srcLen input bytes. */
  static bound(name: CodecName, srcLen: number): number {
    return check(native().dwcp_compress_bound(CODEC_IDS[name], srcLen), `${name} bound`);
  }

  /** Compresses src into dst; returns the byte count written. Throws when dst is too small. */
  compress(src: Uint8Array, dst: Uint8Array): number {
    return check(
      native().dwcp_compress(this.#live(), src, src.length, dst, dst.length),
      "codec",
    );
  }

  /** As compress(), on a worker thread; src and dst must not be touched until it settles. */
  async compressAsync(src: Uint8Array, dst: Uint8Array): Promise<number> {
    const n = await native().dwcp_compress_async(this.#live(), src, src.length, dst, dst.length);
    return check(n, "codec");
  }

  /** Decompresses src into dst; returns the byte count written. Malformed input throws, never crashes. */
  decompress(src: Uint8Array, dst: Uint8Array): number {
    return check(
      native().dwcp_decompress(this.#live(), src, src.length, dst, dst.length),
      "codec",
    );
  }

  async decompressAsync(src: Uint8Array, dst: Uint8Array): Promise<number> {
    const n = await native().dwcp_decompress_async(this.#live(), src, src.length, dst, dst.length);
    return check(n, "codec");
  }

  close(): void {
    if (this.#handle === 0) return;
    registry.unregister(this);
    check(native().dwcp_codec_free(this.#handle), `freeing ${this.name} codec`);
    this.#handle = 0;
  }

  #live(): number {
    if (this.#handle === 0) throw new Error(`${this.name} codec is closed`);
    return this.#handle;
  }
}

/** XXH3-64 of data, written big-endian into out[0..8). */
export function xxh3Into(data: Uint8Array, out: Uint8Array): void {
  // The shim writes 8 bytes unconditionally: a shorter buffer would be overrun.
  if (out.length < 8) throw new RangeError(`xxh3Into needs an 8-byte output buffer, got ${out.length} bytes`);
  native().dwcp_xxh3_64(data, data.length, out);
}
