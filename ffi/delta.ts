/**
 * Typed wrappers over the shim's page deltas (c-shim/delta.c), used by the HDE delta encoder: a chunk is
 * encoded against the same bytes of an older version, page by page, into a kind map (2 bits per page:
 * unchanged, zero, delta or whole), the delta pages' control stream (where their runs of changed bytes
 * lie) and literal stream (those bytes XOR the base, or as they are now), and the whole pages. One call per
 * chunk. Page sizes are powers of two in 512..65536.
 */
import { check, native } from "./library.ts";

/** The 2-bit page kinds of a kind map. */
export const PageKind = { Unchanged: 0, Zero: 1, Delta: 2, Whole: 3 } as const;

export interface PageCounts {
  unchanged: number;
  zero: number;
  delta: number;
  whole: number;
}

export interface DeltaSections extends PageCounts {
  /** Bytes of control stream written. */
  ctrlBytes: number;
  /** Bytes of literal stream written. */
  litBytes: number;
  /** Bytes of whole pages written. */
  wholeBytes: number;
}

/**
 * How the literal stream holds the runs' bytes: XOR the base's (a counter incremented leaves a few distinct
 * values), or the new bytes as they are (pointers written over other pointers repeat their high bytes).
 */
export type LiteralForm = "xor" | "new";
const LITERAL_FORM = { xor: 0, new: 1 } as const; // c-shim/dwcp.h enum dwcp_lits_form

/**
 * The sections of a chunk's delta, as deltaEncode wrote them and deltaDecode reads them. lits holds the
 * literals XOR the base; news, when given to deltaEncode, the same literals in their new form.
 */
export interface DeltaBuffers {
  kinds: Uint8Array;
  ctrl: Uint8Array;
  lits: Uint8Array;
  news?: Uint8Array;
  whole: Uint8Array;
}

/** Bytes of kind map that len bytes in pages of pageSize need: 2 bits per page, the last may be partial. */
export function kindsBytes(len: number, pageSize: number): number {
  return Math.ceil(Math.ceil(len / pageSize) / 4);
}

// Out-parameters of the synchronous calls below; JS runs one of them at a time.
const encodeOut = new Uint32Array(7);
const decodeOut = new Uint32Array(4);

/**
 * Encodes src against base (the older version of the same bytes; it may be shorter than src, and pages
 * it does not wholly cover travel whole) into out. A changed page goes as a delta when its streams take
 * fewer than deltaShare256 / 256 of its bytes (1..256; 256: whenever smaller), else whole. out.ctrl,
 * out.lits, out.news (when given) and out.whole must hold at least src.length bytes each; out.kinds at
 * least kindsBytes(src.length, pageSize).
 */
export function deltaEncode(
  src: Uint8Array,
  base: Uint8Array,
  pageSize: number,
  out: DeltaBuffers,
  deltaShare256 = 256,
): DeltaSections {
  const { kinds, ctrl, lits, news, whole } = out;
  check(
    native().dwcp_delta_encode(
      src,
      src.length,
      base,
      base.length,
      pageSize,
      deltaShare256,
      kinds,
      kinds.length,
      ctrl,
      ctrl.length,
      lits,
      lits.length,
      news ?? null,
      news?.length ?? 0,
      whole,
      whole.length,
      encodeOut,
    ),
    "delta encode",
  );
  const [ctrlBytes, litBytes, wholeBytes, unchanged, zero, delta, wholePages] = encodeOut;
  return { ctrlBytes, litBytes, wholeBytes, unchanged, zero, delta, whole: wholePages };
}

/**
 * The inverse of deltaEncode: writes dst[0..len) from the sections (each exactly as long as its content,
 * the literals in litsForm) and the base. Input from the wire is checked, never trusted: a kind map of the
 * wrong length or marking pages past len, a page that refers to base bytes the base lacks, a malformed
 * control stream, or sections longer or shorter than their pages use throw a ShimError with status
 * ECORRUPT (-3); nothing outside dst[0..len) is written.
 */
export function deltaDecode(
  sections: DeltaBuffers,
  base: Uint8Array,
  pageSize: number,
  len: number,
  dst: Uint8Array,
  litsForm: LiteralForm = "xor",
): PageCounts {
  const { kinds, ctrl, lits, whole } = sections;
  check(
    native().dwcp_delta_decode(
      kinds,
      kinds.length,
      ctrl,
      ctrl.length,
      lits,
      lits.length,
      LITERAL_FORM[litsForm],
      whole,
      whole.length,
      base,
      base.length,
      pageSize,
      dst,
      len,
      dst.length,
      decodeOut,
    ),
    "delta decode",
  );
  const [unchanged, zero, delta, wholePages] = decodeOut;
  return { unchanged, zero, delta, whole: wholePages };
}

/** acc = XXH3-128(acc ‖ XXH3-128(data)) in place: a hash of many pieces, folded one at a time. */
export function xxh3_128Fold(acc: Uint8Array, data: Uint8Array): void {
  // The shim reads and writes 16 bytes of acc unconditionally: a shorter buffer would be overrun.
  if (acc.length !== 16) {
    throw new RangeError(`xxh3_128Fold needs a 16-byte accumulator, got ${acc.length} bytes`);
  }
  check(native().dwcp_xxh3_128_fold(acc, data, data.length), "xxh3-128");
}
