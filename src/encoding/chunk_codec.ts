/**
 * HDE chunk encoding: what a chunk's payload looks like on the wire. All-zero 4 KiB pages travel only
 * as bits in a bitmap (FLAG_PAGES); the remaining bytes are compressed with the chosen codec when that
 * makes them smaller. A chunk that gains nothing travels raw, so encoding never costs wire bytes.
 *
 *   plain:        raw bytes                                   (codec 0, no flags, encLen = rawLen)
 *   compressed:   codec(raw)                                  (codec c, encLen < rawLen)
 *   pages:        bitmap ‖ packed non-zero pages              (FLAG_PAGES, codec 0)
 *   pages+codec:  bitmap ‖ codec(packed non-zero pages)       (FLAG_PAGES, codec c)
 *
 * The bitmap has one bit per page of the chunk (LSB first), set for a zero page; its length follows
 * from rawLen. The checksum in the frame covers the raw bytes, so a decoding error is caught there.
 */
import { Codec, type CodecName, codecName, CODECS } from "../../ffi/codec.ts";
import { type CodecSpec, specKey } from "./codec_policy.ts";
import { bitmapBytes as pageBitmapBytes, packPages, unpackPages, zeroPages } from "../../ffi/pages.ts";

export const PAGE_BYTES = 4096;
/** Frame flag: the payload starts with a zero-page bitmap. */
export const FLAG_PAGES = 1;

export function bitmapBytes(rawLen: number): number {
  return pageBitmapBytes(rawLen, PAGE_BYTES);
}

export interface Encoded {
  flags: number;
  codec: number;
  /** Header room (`headroom` bytes) then the payload: the caller's own frame when sent plain. */
  frame: Uint8Array;
  encLen: number;
  /** The chunk consists of zero pages only. */
  allZero: boolean;
  /** What the codec was given (the chunk less its zero pages) and what it made of it, for the policy. */
  compression?: CodecSpec & { inBytes: number; outBytes: number; elapsedMs: number };
}

/** Picks the codec (and level) for a chunk once its zero pages are gone: fixed, or the adaptive policy's. */
export type CodecPicker = (body: Uint8Array) => CodecName | CodecSpec;

/** Bytes of a chunk that sampleRatio compresses to estimate the whole. */
const SAMPLE_BYTES = 16 * 1024;

/**
 * A stream's codec contexts, made on first use and kept: by spec (codec and level) for compressing, by
 * wire id for decompressing (any level decodes with the codec's default context).
 */
export class Codecs {
  readonly #bySpec = new Map<string, Codec>();
  readonly #byId = new Map<number, Codec>();

  forSpec(spec: CodecSpec): Codec {
    const key = specKey(spec);
    let codec = this.#bySpec.get(key);
    if (!codec) this.#bySpec.set(key, codec = new Codec(spec.codec, spec.level));
    return codec;
  }

  /** Throws RangeError for an unknown id or "none" (a payload that claims a codec must have one). */
  forId(id: number): Codec {
    let codec = this.#byId.get(id);
    if (!codec) {
      const name = codecName(id);
      if (!name || name === "none") throw new RangeError(`codec id ${id} is unknown`);
      this.#byId.set(id, codec = new Codec(name));
    }
    return codec;
  }

  close(): void {
    for (const c of [...this.#bySpec.values(), ...this.#byId.values()]) c.close();
  }
}

/**
 * One per stream: reuses its buffers and compression contexts from chunk to chunk. The buffers for
 * packed and compressed payloads are made at the first chunk that needs them: a stream of raw chunks
 * never does, and two chunk-sized buffers per stream, made anew for every transfer, were most of what an
 * agent held after a few 16-stream transfers (VmHWM 220 MiB) before the collector got to them.
 */
export class ChunkEncoder {
  readonly #codecs = new Codecs();
  readonly #bitmap: Uint8Array;
  #packedBuf?: Uint8Array;
  #outBuf?: Uint8Array;
  readonly #sample = new Uint8Array(Codec.bound("lz4", SAMPLE_BYTES));

  /** headroom: bytes kept free in front of every payload, for the caller's frame header. */
  constructor(readonly chunkBytes: number, readonly headroom: number) {
    this.#bitmap = new Uint8Array(bitmapBytes(chunkBytes));
  }

  get #packed(): Uint8Array {
    return this.#packedBuf ??= new Uint8Array(this.chunkBytes);
  }

  get #out(): Uint8Array {
    if (!this.#outBuf) {
      const bound = Math.max(...CODECS.map((c) => Codec.bound(c, this.chunkBytes)));
      this.#outBuf = new Uint8Array(this.headroom + this.#bitmap.length + bound);
    }
    return this.#outBuf;
  }

  /** lz4's compressed/raw on a slice of body: a cheap estimate of how compressible it is. */
  sampleRatio(body: Uint8Array): number {
    const slice = body.subarray(0, SAMPLE_BYTES);
    if (slice.length === 0) return 1;
    return Math.min(1, this.#codecs.forSpec({ codec: "lz4" }).compress(slice, this.#sample) / slice.length);
  }

  /** Encodes the chunk at frame[headroom, headroom + rawLen) with the codec pick chooses. */
  async encode(frame: Uint8Array, rawLen: number, pick: CodecPicker): Promise<Encoded> {
    const raw = frame.subarray(this.headroom, this.headroom + rawLen);
    const plain = { flags: 0, codec: 0, frame, encLen: rawLen, allZero: false };
    const bitmap = this.#bitmap.subarray(0, bitmapBytes(rawLen));
    const pages = zeroPages(raw, PAGE_BYTES, bitmap) > 0;
    const body = pages ? this.#packed.subarray(0, packPages(raw, PAGE_BYTES, bitmap, this.#packed)) : raw;
    const picked = body.length > 0 ? pick(body) : "none";
    const spec: CodecSpec = typeof picked === "string" ? { codec: picked } : picked;
    if (!pages && spec.codec === "none") return plain;
    const head = this.headroom + (pages ? bitmap.length : 0);
    if (pages) this.#out.set(bitmap, this.headroom);
    let codec = 0;
    let bodyLen = body.length;
    let compression: Encoded["compression"];
    if (spec.codec !== "none") {
      const c = this.#codecs.forSpec(spec);
      const started = performance.now();
      const n = await c.compressAsync(body, this.#out.subarray(head));
      compression = {
        ...spec,
        inBytes: body.length,
        outBytes: n,
        elapsedMs: performance.now() - started,
      };
      if (n < body.length) [codec, bodyLen] = [c.id, n];
    }
    if (codec === 0) {
      if (!pages) return { ...plain, compression };
      this.#out.set(body, head);
    }
    const encLen = head - this.headroom + bodyLen;
    if (encLen >= rawLen) return { ...plain, compression };
    return {
      flags: pages ? FLAG_PAGES : 0,
      codec,
      frame: this.#out,
      encLen,
      allZero: body.length === 0,
      compression,
    };
  }

  close(): void {
    this.#codecs.close();
  }
}

/**
 * One per stream: decodes payloads into raw bytes; any malformed input is reported, never thrown past.
 * Its buffer for compressed packed pages is made at the first such chunk (see ChunkEncoder).
 */
export class ChunkDecoder {
  readonly #codecs = new Codecs();
  #packedBuf?: Uint8Array;

  constructor(readonly chunkBytes: number) {}

  get #packed(): Uint8Array {
    return this.#packedBuf ??= new Uint8Array(this.chunkBytes);
  }

  /**
   * Decodes payload into out (exactly rawLen bytes). Returns whether the chunk was all zero pages, or
   * undefined when the payload is corrupt (the caller asks for the chunk again).
   */
  async decode(
    flags: number,
    codecId: number,
    payload: Uint8Array,
    out: Uint8Array,
  ): Promise<boolean | undefined> {
    const rawLen = out.length;
    try {
      if (!(flags & FLAG_PAGES)) {
        if (codecId === 0) {
          out.set(payload);
          return false;
        }
        return await this.#codecs.forId(codecId).decompressAsync(payload, out) === rawLen ? false : undefined;
      }
      const bmLen = bitmapBytes(rawLen);
      if (payload.length < bmLen) return undefined;
      const bitmap = payload.subarray(0, bmLen);
      let packed = payload.subarray(bmLen);
      if (codecId !== 0) {
        const n = await this.#codecs.forId(codecId).decompressAsync(packed, this.#packed);
        packed = this.#packed.subarray(0, n);
      }
      unpackPages(packed, PAGE_BYTES, bitmap, rawLen, out);
      return packed.length === 0;
    } catch {
      return undefined;
    }
  }

  close(): void {
    this.#codecs.close();
  }
}
