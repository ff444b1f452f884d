/**
 * Typed wrappers over the shim's zero-page mechanics (c-shim/pages.c), used by the HDE encoder: zero
 * pages travel as a bit in a bitmap, only the other pages travel. A bitmap has one bit per page, LSB-first
 * within each byte (bit i is `bitmap[i >> 3] >> (i & 7) & 1`), set for an all-zero page; the last page may
 * be partial, and bits past it are clear. Page sizes are powers of two in 512..65536.
 */
import { check, native, ShimError } from "./library.ts";

const ECORRUPT = -3;

/** Whether the shim accepts pageSize; the shim itself rejects any other with EINVAL. */
function isPageSize(pageSize: number): boolean {
  return Number.isInteger(pageSize) && pageSize >= 512 && pageSize <= 65536 &&
    (pageSize & (pageSize - 1)) === 0;
}

/** Bytes of bitmap that len bytes in pages of pageSize need: one bit per page, the last page may be partial. */
export function bitmapBytes(len: number, pageSize: number): number {
  return Math.ceil(Math.ceil(len / pageSize) / 8);
}

/**
 * Marks the all-zero pages of src in bitmap and returns how many there are. Writes exactly
 * bitmapBytes(src.length, pageSize) bytes of bitmap; throws when bitmap is shorter or pageSize is invalid.
 */
export function zeroPages(src: Uint8Array, pageSize: number, bitmap: Uint8Array): number {
  return check(native().dwcp_zero_pages(src, src.length, pageSize, bitmap, bitmap.length), "zero pages");
}

/**
 * Copies the pages of src whose bit is clear, in order, into dst; returns the byte count written.
 * Throws when dst is too small, bitmap covers fewer pages than src, or bitmap marks pages past its end.
 */
export function packPages(src: Uint8Array, pageSize: number, bitmap: Uint8Array, dst: Uint8Array): number {
  // The shim reads the bitmap for src.length bytes and cannot see its length: a short one would be overread.
  const need = bitmapBytes(src.length, pageSize);
  if (isPageSize(pageSize) && bitmap.length < need) {
    throw new RangeError(
      `pack pages: bitmap of ${bitmap.length} bytes is short of the ${need} that src needs`,
    );
  }
  return check(
    native().dwcp_pack_pages(src, src.length, pageSize, bitmap, dst, dst.length),
    "pack pages",
  );
}

/**
 * The inverse of packPages: writes dst[0..len) with zero pages as zeros and the packed pages in their
 * places; returns len. Input from the wire is checked, never trusted: a bitmap whose length is not exactly
 * bitmapBytes(len, pageSize), a bitmap marking pages past len, or a packed length that is not exactly the
 * bytes the bitmap leaves throw a ShimError with status ECORRUPT (-3). A dst shorter than len throws too.
 */
export function unpackPages(
  packed: Uint8Array,
  pageSize: number,
  bitmap: Uint8Array,
  len: number,
  dst: Uint8Array,
): number {
  const need = bitmapBytes(len, pageSize);
  if (isPageSize(pageSize) && bitmap.length !== need) {
    throw new ShimError(
      ECORRUPT,
      `unpack pages: bitmap of ${bitmap.length} bytes does not match ${len} bytes in ${pageSize}-byte pages ` +
        `(${need} bytes)`,
    );
  }
  return check(
    native().dwcp_unpack_pages(packed, packed.length, pageSize, bitmap, len, dst, dst.length),
    "unpack pages",
  );
}
