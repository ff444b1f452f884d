/**
 * HDE page deltas: a chunk encoded against the same bytes of an older version of the object that the
 * receiver holds (its base: an image synced before, an earlier memory snapshot). Pages equal to the base
 * travel as 2 bits of a kind map; changed pages as the XOR against their base page with its runs of equal
 * bytes left out, split into a control stream (where the runs lie) and a literal stream (their bytes, XOR
 * the base's or as they are now: whichever compresses smaller, chunk by chunk), c-shim/delta.c has the
 * format and why; pages the base does not help with travel whole. The control and literal streams then go
 * each through a codec (zstd unless told otherwise) when that makes them smaller; the whole pages through
 * the codec the transfer's policy picks, as in chunk_codec.ts.
 *
 * Payload of a FLAG_DELTA frame, layout version 2 (docs/wire-format.md §3.1):
 *
 *   0   u8   layout version (2)
 *   1   u8   log2 of the page size (9..16; senders use 12, 4 KiB)
 *   2   u8   codec of the control section (0 none, 1 lz4, 2 zstd, 3 snappy)
 *   3   u8   codec of the literal section in bits 0..6; bit 7 set: the literals are the new bytes, clear:
 *            the new bytes XOR the base's
 *   4   u32  bytes of the control section on the wire
 *   8   u32  bytes of the literal section on the wire
 *   12       kind map: 2 bits per page, ceil(pages / 4) bytes (0 unchanged, 1 zero, 2 delta, 3 whole)
 *            control section, literal section
 *            whole section (the rest): the whole pages in order, coded with the frame's codec
 *
 * The frame's checksum covers the decoded bytes, so a delta against the wrong base cannot pass as good.
 */
import { Codec, CODECS } from "../../ffi/codec.ts";
import {
  type DeltaBuffers,
  deltaDecode,
  deltaEncode,
  kindsBytes,
  type LiteralForm,
  type PageCounts,
} from "../../ffi/delta.ts";
import { type CodecPicker, Codecs, type Encoded, PAGE_BYTES } from "./chunk_codec.ts";
import type { CodecSpec } from "./codec_policy.ts";

export type { PageCounts };

/** Frame flag: the payload is a page delta against the receiver's base. */
export const FLAG_DELTA = 2;
export const DELTA_LAYOUT_VERSION = 2;
export const DELTA_HEADER_BYTES = 12;

const MIN_PAGE_SHIFT = 9, MAX_PAGE_SHIFT = 16;

/**
 * A changed page goes as a delta when its streams take less than this share of it, in 256ths. Half the
 * page when the whole pages are compressed too: a page rewritten with new data compresses better whole
 * than XOR-ed with data it no longer resembles (the test guest's 512 MiB of memory dumped 10 s apart, in
 * bench/delta_sizes.ts: 9.1 MiB of payload at half, 12.9 to 13.8 MiB at any gain, zstd on whole pages).
 * Any gain when whole pages travel raw (37.4 to 37.9 MiB at any gain, 39.9 MiB at half).
 */
export const DELTA_SHARE_256 = { wholeCompressed: 128, wholeRaw: 256 } as const;

/** Streams at most this long are compressed on the calling thread: a worker hop costs more. */
const SYNC_COMPRESS_BYTES = 64 * 1024;

/**
 * The streams' default codec: zstd, at a higher level for streams this short. A chunk whose few delta pages
 * make streams of a few KiB pays zstd's frame and table costs on little data, and level 12 finds more in it
 * for about 0.1 ms: on the test guest's pages with about 1 % changed (some 50 to a chunk, 1.3 KiB of control
 * and 2 KiB of literal bytes) 0.7 to 1.0 bytes less per page than level 3 (bench/delta_sizes.ts). Longer
 * streams amortize those costs and level 12 would take milliseconds: a 1 MiB chunk with 1 % of every page
 * changed (10 KiB of literals) encoded in 0.94 ms with this bound at 16 KiB, 0.43 ms at 4 KiB
 * (bench/delta_bench.ts).
 */
const SMALL_STREAM = { maxBytes: 4 * 1024, spec: { codec: "zstd", level: 12 } } as const;
const LARGE_STREAM_SPEC: CodecSpec = { codec: "zstd" };

/**
 * Header byte 3, bit 7: the literal stream holds the runs' new bytes rather than their XOR with the base.
 * For literal streams up to SMALL_STREAM's size the encoder compresses both and keeps the smaller; longer
 * ones go as XOR, for the reason above. XOR wins where counters tick and flags flip (few distinct values),
 * the new bytes where one value is stored in many places or pointers are written over others (their high
 * bytes repeat across a chunk, their XORs do not): on the test guest's pages with about 1 % changed the new
 * bytes took 6.6 to 9.1 % less after zstd, on counters incremented (bench/delta_sizes.ts' synthetic model)
 * 2.6 times more.
 */
const LITS_NEW_BIT = 0x80;

export interface DeltaEncoded extends Encoded {
  /** How the chunk's pages travelled. */
  pages: PageCounts;
}

export interface DeltaEncoderOptions {
  /** Page size; a power of two in 512..65536 (default 4 KiB). */
  pageBytes?: number;
  /** The codec tried on the control and literal streams (default zstd: level 12 up to 4 KiB, else 3). */
  streamCodec?: CodecSpec;
  /** A changed page goes as a delta when its streams take less than this share of it, in 256ths (default
   * 256: whenever smaller; see DELTA_SHARE_256). */
  deltaShare256?: number;
}

/** One per stream: reuses its buffers and compression contexts from chunk to chunk. */
export class DeltaEncoder {
  readonly pageBytes: number;
  readonly #pageShift: number;
  readonly #streamSpec?: CodecSpec;
  readonly #deltaShare256: number;
  readonly #codecs = new Codecs();
  readonly #sections: Required<DeltaBuffers>;
  readonly #packed: Uint8Array;
  /** For the literal stream's second form (short streams only): both are compressed before one is placed. */
  readonly #packedNew: Uint8Array;
  readonly #out: Uint8Array;

  /** headroom: bytes kept free in front of every payload, for the caller's frame header. */
  constructor(readonly chunkBytes: number, readonly headroom: number, opts: DeltaEncoderOptions = {}) {
    this.pageBytes = opts.pageBytes ?? PAGE_BYTES;
    this.#pageShift = Math.log2(this.pageBytes);
    if (
      !Number.isInteger(this.#pageShift) || this.#pageShift < MIN_PAGE_SHIFT ||
      this.#pageShift > MAX_PAGE_SHIFT
    ) {
      throw new RangeError(`page size ${this.pageBytes} is not a power of two in 512..65536`);
    }
    this.#streamSpec = opts.streamCodec;
    this.#deltaShare256 = opts.deltaShare256 ?? DELTA_SHARE_256.wholeRaw;
    this.#sections = {
      kinds: new Uint8Array(kindsBytes(chunkBytes, this.pageBytes)),
      ctrl: new Uint8Array(chunkBytes),
      lits: new Uint8Array(chunkBytes),
      news: new Uint8Array(chunkBytes),
      whole: new Uint8Array(chunkBytes),
    };
    const bound = Math.max(...CODECS.map((c) => Codec.bound(c, chunkBytes)));
    this.#packed = new Uint8Array(bound);
    this.#packedNew = new Uint8Array(Math.max(...CODECS.map((c) => Codec.bound(c, SMALL_STREAM.maxBytes))));
    // The three sections together are at most the chunk (a delta page's streams are shorter than the
    // page), and the two streams are placed only when compressing them did not make them longer, so one
    // codec bound past the header and the kind map holds the whole section compressed or not.
    this.#out = new Uint8Array(headroom + DELTA_HEADER_BYTES + this.#sections.kinds.length + bound);
  }

  /**
   * Encodes the chunk at frame[headroom, headroom + rawLen) against base (the base's bytes at the chunk's
   * offset: as long as the chunk, shorter where the base ends, or empty). Returns undefined when the base
   * does not help (no page is unchanged or a delta) or the payload would not be smaller than the chunk:
   * the caller then encodes the chunk on its own. pick chooses the codec for the whole pages.
   */
  async encode(
    frame: Uint8Array,
    rawLen: number,
    base: Uint8Array,
    pick: CodecPicker,
  ): Promise<DeltaEncoded | undefined> {
    const raw = frame.subarray(this.headroom, this.headroom + rawLen);
    const all = this.#sections;
    const kinds = all.kinds.subarray(0, kindsBytes(rawLen, this.pageBytes));
    const s = deltaEncode(
      raw,
      base.subarray(0, rawLen),
      this.pageBytes,
      { ...all, kinds },
      this.#deltaShare256,
    );
    if (s.unchanged + s.delta === 0) return undefined;
    const out = this.#out;
    const head = this.headroom;
    let at = head + DELTA_HEADER_BYTES;
    out.set(kinds, at);
    at += kinds.length;
    const ctrl = await this.#squeeze(all.ctrl.subarray(0, s.ctrlBytes), this.#packed);
    out.set(ctrl.bytes, at);
    at += ctrl.bytes.length;
    const xor = await this.#squeeze(all.lits.subarray(0, s.litBytes), this.#packed);
    const news = s.litBytes <= SMALL_STREAM.maxBytes
      ? await this.#squeeze(all.news.subarray(0, s.litBytes), this.#packedNew)
      : undefined;
    const lits = news && news.bytes.length < xor.bytes.length
      ? { ...news, flag: LITS_NEW_BIT }
      : { ...xor, flag: 0 };
    out.set(lits.bytes, at);
    at += lits.bytes.length;

    let codec = 0;
    let compression: Encoded["compression"];
    const whole = all.whole.subarray(0, s.wholeBytes);
    let wholeLen = whole.length;
    if (whole.length > 0) {
      const picked = pick(whole);
      const spec: CodecSpec = typeof picked === "string" ? { codec: picked } : picked;
      if (spec.codec !== "none") {
        const c = this.#codecs.forSpec(spec);
        const started = performance.now();
        const n = await c.compressAsync(whole, out.subarray(at));
        compression = { ...spec, inBytes: whole.length, outBytes: n, elapsedMs: performance.now() - started };
        if (n < whole.length) [codec, wholeLen] = [c.id, n];
      }
      if (codec === 0) out.set(whole, at);
    }
    at += wholeLen;

    const encLen = at - head;
    if (encLen >= rawLen) return undefined;
    const view = new DataView(out.buffer, out.byteOffset + head, DELTA_HEADER_BYTES);
    view.setUint8(0, DELTA_LAYOUT_VERSION);
    view.setUint8(1, this.#pageShift);
    view.setUint8(2, ctrl.codec);
    view.setUint8(3, lits.codec | lits.flag);
    view.setUint32(4, ctrl.bytes.length, true);
    view.setUint32(8, lits.bytes.length, true);
    return {
      flags: FLAG_DELTA,
      codec,
      frame: out,
      encLen,
      // A zero page is marked zero before it is compared with the base, so a chunk with an unchanged or
      // delta page has a non-zero page.
      allZero: false,
      compression,
      pages: { unchanged: s.unchanged, zero: s.zero, delta: s.delta, whole: s.whole },
    };
  }

  /** A stream compressed into scratch when that makes it smaller, else the stream itself; and its codec. */
  async #squeeze(stream: Uint8Array, scratch: Uint8Array): Promise<{ codec: number; bytes: Uint8Array }> {
    const spec = this.#streamSpec ??
      (stream.length <= SMALL_STREAM.maxBytes ? SMALL_STREAM.spec : LARGE_STREAM_SPEC);
    if (stream.length > 0 && spec.codec !== "none") {
      const c = this.#codecs.forSpec(spec);
      const n = stream.length <= SYNC_COMPRESS_BYTES
        ? c.compress(stream, scratch)
        : await c.compressAsync(stream, scratch);
      if (n < stream.length) return { codec: c.id, bytes: scratch.subarray(0, n) };
    }
    return { codec: 0, bytes: stream };
  }

  close(): void {
    this.#codecs.close();
  }
}

/** One per stream: decodes delta payloads against the base; malformed input is reported, never thrown. */
export class DeltaDecoder {
  readonly #codecs = new Codecs();
  readonly #ctrl: Uint8Array;
  readonly #lits: Uint8Array;
  readonly #whole: Uint8Array;

  constructor(readonly chunkBytes: number) {
    this.#ctrl = new Uint8Array(chunkBytes);
    this.#lits = new Uint8Array(chunkBytes);
    this.#whole = new Uint8Array(chunkBytes);
  }

  /**
   * Decodes a FLAG_DELTA payload (codecId: the frame's codec, that of the whole section) into out, exactly
   * rawLen = out.length bytes, reading base (the receiver's base bytes at the chunk's offset). Returns the
   * page counts, or undefined when the payload is malformed or needs base bytes the base lacks (the
   * caller asks for the chunk again). No section decodes to more than chunkBytes, whatever it claims.
   */
  async decode(
    codecId: number,
    payload: Uint8Array,
    base: Uint8Array,
    out: Uint8Array,
  ): Promise<PageCounts | undefined> {
    const rawLen = out.length;
    if (payload.length < DELTA_HEADER_BYTES || rawLen > this.chunkBytes) return undefined;
    const view = new DataView(payload.buffer, payload.byteOffset, DELTA_HEADER_BYTES);
    const shift = view.getUint8(1);
    if (view.getUint8(0) !== DELTA_LAYOUT_VERSION || shift < MIN_PAGE_SHIFT || shift > MAX_PAGE_SHIFT) {
      return undefined;
    }
    const pageBytes = 2 ** shift;
    const ctrlAt = DELTA_HEADER_BYTES + kindsBytes(rawLen, pageBytes);
    const litsAt = ctrlAt + view.getUint32(4, true);
    const wholeAt = litsAt + view.getUint32(8, true);
    if (wholeAt > payload.length) return undefined;
    const litsByte = view.getUint8(3);
    const litsForm: LiteralForm = litsByte & LITS_NEW_BIT ? "new" : "xor";
    try {
      const sections = {
        kinds: payload.subarray(DELTA_HEADER_BYTES, ctrlAt),
        ctrl: await this.#section(view.getUint8(2), payload.subarray(ctrlAt, litsAt), this.#ctrl),
        lits: await this.#section(litsByte & ~LITS_NEW_BIT, payload.subarray(litsAt, wholeAt), this.#lits),
        whole: await this.#section(codecId, payload.subarray(wholeAt), this.#whole),
      };
      return deltaDecode(sections, base, pageBytes, rawLen, out, litsForm);
    } catch {
      return undefined;
    }
  }

  /** A section as it came (codec 0) or decompressed into buf. */
  async #section(codecId: number, wire: Uint8Array, buf: Uint8Array): Promise<Uint8Array> {
    if (codecId === 0) return wire;
    return buf.subarray(0, await this.#codecs.forId(codecId).decompressAsync(wire, buf));
  }

  close(): void {
    this.#codecs.close();
  }
}
