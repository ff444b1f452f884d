/**
 * Typed wrapper over the shim's content-defined chunker (c-shim/cdc.c, FastCDC with a fixed gear table):
 * one call finds every cut point in a buffer. src/dedupe/cdc.ts builds the streaming chunker on it.
 */
import { check, native } from "./library.ts";

/** Chunk size bounds: cuts fall after at least minBytes and at most maxBytes; avgBytes is a power of two. */
export interface CdcSizes {
  minBytes: number;
  avgBytes: number;
  maxBytes: number;
}

/** Bytes of the opaque state that carries an open chunk from call to call (all zero at a stream start). */
export const CDC_STATE_BYTES = 16;

/** Entries a cut buffer needs for len bytes: every chunk but the first lies wholly inside them. */
export function cutCapacity(len: number, minBytes: number): number {
  return Math.floor(len / minBytes) + 1;
}

/**
 * Finds the chunks that end inside src, continuing the chunk open in state, and writes their end offsets
 * (exclusive, relative to src) into cuts; returns how many. state is updated to the chunk left open after
 * the last cut. Throws when the sizes are invalid, state is not CDC_STATE_BYTES long or cuts has fewer than
 * cutCapacity(src.length, sizes.minBytes) entries.
 */
export function cdcCuts(src: Uint8Array, sizes: CdcSizes, state: Uint8Array, cuts: Uint32Array): number {
  // The shim reads and writes 16 bytes of state without seeing its length: a shorter one would be overrun.
  if (state.length !== CDC_STATE_BYTES) {
    throw new RangeError(`cdc cuts: state is ${state.length} bytes, must be ${CDC_STATE_BYTES}`);
  }
  return check(
    native().dwcp_cdc_cuts(
      src,
      src.length,
      sizes.minBytes,
      sizes.avgBytes,
      sizes.maxBytes,
      state,
      cuts,
      cuts.length,
    ),
    "cdc cuts",
  );
}
