/** ffi/pages.ts over the real shim: zero-page detection, pack/unpack round trips, hostile bitmaps and lengths. */
import assert from "node:assert/strict";
import { ShimError } from "../../ffi/library.ts";
import { bitmapBytes, packPages, unpackPages, zeroPages } from "../../ffi/pages.ts";

const EINVAL = -1;
const ENOSPC = -2;
const ECORRUPT = -3;
const PAGE = 4096;

/** Deterministic generator (xorshift32), so a failure reproduces with the same seed. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

/** Bytes with no zero byte at all, so every page of them is a data page. */
function dataBytes(n: number, seed: number): Uint8Array {
  const next = rng(seed);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (next() % 255) + 1;
  return out;
}

/** The bitmap computed the slow way, one byte at a time. */
function expectedBitmap(src: Uint8Array, pageSize: number): Uint8Array {
  const bitmap = new Uint8Array(bitmapBytes(src.length, pageSize));
  for (let page = 0; page * pageSize < src.length; page++) {
    if (src.subarray(page * pageSize, (page + 1) * pageSize).every((b) => b === 0)) {
      bitmap[page >> 3] |= 1 << (page & 7);
    }
  }
  return bitmap;
}

function bitsSet(bitmap: Uint8Array): number {
  let n = 0;
  for (const b of bitmap) for (let v = b; v; v &= v - 1) n++;
  return n;
}

/** zeroPages into an exact-size bitmap, checked against the slow reference; returns the bitmap. */
function detect(src: Uint8Array, pageSize: number): Uint8Array {
  const bitmap = new Uint8Array(bitmapBytes(src.length, pageSize)).fill(0xff); // stale bits must be cleared
  const zeros = zeroPages(src, pageSize, bitmap);
  const expected = expectedBitmap(src, pageSize);
  assert.deepEqual(bitmap, expected);
  assert.equal(zeros, bitsSet(expected));
  return bitmap;
}

function pack(src: Uint8Array, pageSize: number, bitmap: Uint8Array): Uint8Array {
  const dst = new Uint8Array(src.length);
  return dst.subarray(0, packPages(src, pageSize, bitmap, dst));
}

function roundTrip(src: Uint8Array, pageSize: number): void {
  const bitmap = detect(src, pageSize);
  const packed = pack(src, pageSize, bitmap);
  const out = new Uint8Array(src.length).fill(0xa5); // unpack must write the zero pages too
  assert.equal(unpackPages(packed, pageSize, bitmap, src.length, out), src.length);
  assert.deepEqual(out, src);
}

/** A buffer of whole and partial pages, each zero, data, or zero but for one byte somewhere. */
function pattern(pages: number, pageSize: number, tail: number, seed: number): Uint8Array {
  const next = rng(seed);
  const src = new Uint8Array(pages * pageSize + tail);
  for (let page = 0; page * pageSize < src.length; page++) {
    const start = page * pageSize;
    const end = Math.min(start + pageSize, src.length);
    const kind = next() % 3;
    if (kind === 1) src.set(dataBytes(end - start, next()), start);
    if (kind === 2) src[start + (next() % (end - start))] = 1 + (next() % 255);
  }
  return src;
}

/** Bytes of the pages whose bit is clear: what packPages writes and unpackPages wants. */
function keptBytes(bitmap: Uint8Array, len: number, pageSize: number): number {
  let kept = 0;
  for (let page = 0; page * pageSize < len; page++) {
    if (!(bitmap[page >> 3] >> (page & 7) & 1)) kept += Math.min(pageSize, len - page * pageSize);
  }
  return kept;
}

function assertShimError(fn: () => unknown, status: number): void {
  assert.throws(fn, (err: unknown) => err instanceof ShimError && err.status === status);
}

Deno.test("zeroPages: all-zero buffer marks every page", () => {
  const src = new Uint8Array(64 * PAGE);
  const bitmap = new Uint8Array(8);
  assert.equal(zeroPages(src, PAGE, bitmap), 64);
  assert.deepEqual(bitmap, new Uint8Array(8).fill(0xff));
});

Deno.test("zeroPages: a buffer without zero pages marks none", () => {
  const src = dataBytes(64 * PAGE, 3);
  const bitmap = new Uint8Array(8).fill(0xff);
  assert.equal(zeroPages(src, PAGE, bitmap), 0);
  assert.deepEqual(bitmap, new Uint8Array(8));
});

Deno.test("zeroPages: mixed pages, a single non-zero byte anywhere makes a data page", () => {
  const src = new Uint8Array(16 * PAGE);
  src[1 * PAGE] = 1; // first byte of page 1
  src[4 * PAGE - 1] = 2; // last byte of page 3
  src[6 * PAGE + 2049] = 3; // middle of page 6, not word-aligned
  src.fill(9, 9 * PAGE, 10 * PAGE); // all of page 9
  src[16 * PAGE - 1] = 4; // last byte of the buffer
  const bitmap = new Uint8Array(2);
  assert.equal(zeroPages(src, PAGE, bitmap), 11);
  // Pages 1, 3, 6, 9 and 15 are data: bits clear.
  assert.deepEqual(bitmap, Uint8Array.of(0b1011_0101, 0b0111_1101));
  detect(src, PAGE);
  // Every byte position of a page, one at a time (512-byte pages keep this quick).
  const small = new Uint8Array(3 * 512);
  for (let i = 0; i < small.length; i++) {
    small[i] = 0x80;
    const bits = new Uint8Array(1);
    assert.equal(zeroPages(small, 512, bits), 2, `non-zero byte at ${i}`);
    assert.equal(bits[0], 0b111 & ~(1 << Math.floor(i / 512)), `non-zero byte at ${i}`);
    small[i] = 0;
  }
});

Deno.test("zeroPages: the partial last page counts as zero only when all its bytes are", () => {
  for (const tail of [1, 7, 8, 9, 127, 128, 129, 1000, PAGE - 1]) {
    const src = new Uint8Array(3 * PAGE + tail);
    const bitmap = new Uint8Array(1);
    assert.equal(zeroPages(src, PAGE, bitmap), 4, `tail ${tail}`);
    assert.equal(bitmap[0], 0b1111);
    src[src.length - 1] = 1;
    assert.equal(zeroPages(src, PAGE, bitmap), 3, `tail ${tail}`);
    assert.equal(bitmap[0], 0b0111);
    roundTrip(src, PAGE);
  }
  // A buffer shorter than one page is one partial page; an empty one has none.
  assert.equal(zeroPages(new Uint8Array(100), PAGE, new Uint8Array(1)), 1);
  assert.equal(zeroPages(new Uint8Array(0), PAGE, new Uint8Array(0)), 0);
});

Deno.test("zeroPages: page sizes 512, 4096 and 65536 against the byte-wise reference", () => {
  for (const [pageSize, pages] of [[512, 70], [4096, 37], [65536, 11]]) {
    for (const tail of [0, 300]) {
      const src = pattern(pages, pageSize, tail, pageSize + tail);
      detect(src, pageSize);
    }
  }
  const big = new Uint8Array(20 * 65536);
  big[5 * 65536 + 40000] = 1;
  const bitmap = new Uint8Array(3);
  assert.equal(zeroPages(big, 65536, bitmap), 19);
  assert.deepEqual(bitmap, Uint8Array.of(0b1101_1111, 0xff, 0b1111));
});

Deno.test("zeroPages: page sizes other than powers of two in 512..65536 are rejected", () => {
  const src = new Uint8Array(PAGE);
  const bitmap = new Uint8Array(64);
  for (const pageSize of [0, 1, 256, 511, 513, 1000, 3072, 4095, 131072, 0xffffffff]) {
    assertShimError(() => zeroPages(src, pageSize, bitmap), EINVAL);
    assertShimError(() => packPages(src, pageSize, bitmap, new Uint8Array(PAGE)), EINVAL);
    assertShimError(() => unpackPages(src, pageSize, bitmap, PAGE, new Uint8Array(PAGE)), EINVAL);
  }
  assert.throws(() => zeroPages(src, 1000, bitmap), /page size 1000 is not a power of two/);
});

Deno.test("zeroPages: a bitmap too small for the pages is rejected and left alone", () => {
  const src = new Uint8Array(17 * PAGE); // 17 pages need 3 bytes
  const bitmap = new Uint8Array(2).fill(0x5a);
  assertShimError(() => zeroPages(src, PAGE, bitmap), ENOSPC);
  assert.deepEqual(bitmap, Uint8Array.of(0x5a, 0x5a));
  assert.throws(() => zeroPages(src, PAGE, bitmap), /bitmap holds 2 bytes, 17 pages need 3/);
  // A larger bitmap is fine; only the bytes the pages need are written.
  const roomy = new Uint8Array(5).fill(0x5a);
  assert.equal(zeroPages(src, PAGE, roomy), 17);
  assert.deepEqual(roomy, Uint8Array.of(0xff, 0xff, 0x01, 0x5a, 0x5a));
});

Deno.test("packPages/unpackPages: round trips equal the input (seeded patterns)", () => {
  const next = rng(2024);
  for (let round = 0; round < 60; round++) {
    const pageSize = [512, 1024, 4096, 65536][next() % 4];
    const pages = next() % (pageSize === 65536 ? 6 : 40);
    const tail = next() % 3 === 0 ? next() % pageSize : 0;
    roundTrip(pattern(pages, pageSize, tail, next()), pageSize);
  }
  roundTrip(new Uint8Array(0), PAGE);
  roundTrip(new Uint8Array(8 * PAGE), PAGE);
  roundTrip(dataBytes(8 * PAGE + 5, 9), PAGE);
});

Deno.test("packPages: packed output is the data pages in order, and only them", () => {
  const src = new Uint8Array(5 * 512 + 100);
  src.fill(1, 512, 1024); // page 1
  src.fill(3, 3 * 512, 4 * 512); // page 3
  src.fill(5, 5 * 512); // partial page 5
  const bitmap = detect(src, 512);
  assert.equal(bitmap[0], 0b01_0101);
  const packed = pack(src, 512, bitmap);
  assert.equal(packed.length, 512 + 512 + 100);
  assert.deepEqual(packed.subarray(0, 512), new Uint8Array(512).fill(1));
  assert.deepEqual(packed.subarray(512, 1024), new Uint8Array(512).fill(3));
  assert.deepEqual(packed.subarray(1024), new Uint8Array(100).fill(5));
  // A bitmap may mark data pages too (the caller's choice); they are left out like zero pages.
  const dst = new Uint8Array(src.length);
  assert.equal(packPages(src, 512, Uint8Array.of(0b11_1111), dst), 0);
  assert.equal(packPages(src, 512, Uint8Array.of(0), dst), src.length);
  assert.deepEqual(dst, src);
});

Deno.test("packPages: short destination, short bitmap and bits past the last page are rejected", () => {
  const src = dataBytes(10 * 512, 5);
  const bitmap = new Uint8Array(2);
  assertShimError(() => packPages(src, 512, bitmap, new Uint8Array(10 * 512 - 1)), ENOSPC);
  assert.throws(() => packPages(src, 512, new Uint8Array(1), new Uint8Array(src.length)), RangeError);
  assertShimError(() => packPages(src, 512, Uint8Array.of(0, 0b100), new Uint8Array(src.length)), EINVAL);
});

Deno.test("unpackPages: packed input one byte short or long, or empty, is corrupt", () => {
  const src = pattern(12, 512, 77, 17);
  src[0] = 1; // at least one data page
  const bitmap = detect(src, 512);
  const packed = pack(src, 512, bitmap);
  const dst = new Uint8Array(src.length);
  assertShimError(
    () => unpackPages(packed.subarray(0, packed.length - 1), 512, bitmap, src.length, dst),
    ECORRUPT,
  );
  const long = new Uint8Array(packed.length + 1);
  long.set(packed);
  assertShimError(() => unpackPages(long, 512, bitmap, src.length, dst), ECORRUPT);
  assertShimError(() => unpackPages(new Uint8Array(0), 512, bitmap, src.length, dst), ECORRUPT);
  assert.throws(
    () => unpackPages(long, 512, bitmap, src.length, dst),
    /bitmap leaves \d+ bytes of data pages, packed input has \d+/,
  );
  // An all-zero chunk packs to nothing, and anything else beside it is corrupt.
  const zeros = new Uint8Array(3 * 512);
  assert.equal(unpackPages(new Uint8Array(0), 512, Uint8Array.of(0b111), zeros.length, dst), zeros.length);
  assertShimError(
    () => unpackPages(new Uint8Array(1), 512, Uint8Array.of(0b111), zeros.length, dst),
    ECORRUPT,
  );
});

Deno.test("unpackPages: a bitmap claiming more pages than len, or fewer, is corrupt", () => {
  const len = 10 * 512 + 1; // 11 pages: 2 bitmap bytes, bits 11..15 are padding
  const dst = new Uint8Array(len);
  // Padding bits set: pages 11..15 do not exist.
  for (let bit = 3; bit < 8; bit++) {
    const bitmap = Uint8Array.of(0xff, 0b111 | (1 << bit));
    assertShimError(() => unpackPages(new Uint8Array(0), 512, bitmap, len, dst), ECORRUPT);
  }
  // Longer bitmaps cover more pages than len has, shorter ones fewer: both caught before the shim reads.
  assertShimError(
    () => unpackPages(new Uint8Array(0), 512, Uint8Array.of(0xff, 0b111, 0), len, dst),
    ECORRUPT,
  );
  assertShimError(() => unpackPages(new Uint8Array(0), 512, Uint8Array.of(0xff), len, dst), ECORRUPT);
  // The exact bitmap works; a destination shorter than len does not.
  assert.equal(unpackPages(new Uint8Array(0), 512, Uint8Array.of(0xff, 0b111), len, dst), len);
  assertShimError(
    () => unpackPages(new Uint8Array(0), 512, Uint8Array.of(0xff, 0b111), len, dst.subarray(1)),
    ENOSPC,
  );
});

Deno.test("unpackPages: random bitmaps, lengths and packed sizes never crash and never write past len", () => {
  const next = rng(77);
  let ok = 0;
  for (let round = 0; round < 3000; round++) {
    const pageSize = 512 << (next() % 8); // 512..65536
    const len = next() % 3 === 0 ? next() % (4 * pageSize) : next() % (40 * 512);
    const need = bitmapBytes(len, pageSize);
    // Mostly exact-size bitmaps (what reaches the shim), sometimes off by one either way.
    const bitmapLen = Math.max(0, need + (next() % 8 === 0 ? (next() % 3) - 1 : 0));
    const bitmap = new Uint8Array(bitmapLen);
    for (let i = 0; i < bitmapLen; i++) bitmap[i] = next() & 0xff;
    if (need > 0 && bitmapLen === need && next() % 2 === 0) {
      // Half the time, clear the padding bits so the bitmap is well formed and the packed length decides.
      const pages = Math.ceil(len / pageSize);
      if (pages % 8) bitmap[need - 1] &= (1 << (pages % 8)) - 1;
    }
    // Sometimes exactly the bytes the bitmap leaves (the success path), else any size up to len + 1.
    const exact = keptBytes(bitmap.subarray(0, need), len, pageSize);
    const packed = new Uint8Array(next() % 3 === 0 ? exact : next() % (len + 2));
    for (let i = 0; i < packed.length; i += 97) packed[i] = next() & 0xff;
    const dst = new Uint8Array(len + 16).fill(0xee);
    const cap = next() % 10 === 0 ? Math.max(0, len - 1) : len;
    try {
      assert.equal(unpackPages(packed, pageSize, bitmap, len, dst.subarray(0, cap)), len);
      ok++;
    } catch (err) {
      assert.ok(err instanceof ShimError, String(err));
      assert.ok([ENOSPC, ECORRUPT].includes(err.status), err.message);
    }
    // Nothing past len (nor past cap) is ever written.
    assert.ok(dst.subarray(Math.min(len, cap)).every((b) => b === 0xee), `round ${round} wrote past the end`);
  }
  // The generator must exercise the success path too, not only rejections.
  assert.ok(ok > 100, `only ${ok} random cases unpacked`);
});

Deno.test("packPages: random bitmaps on random lengths never crash and never write past dst", () => {
  const next = rng(99);
  const data = dataBytes(8 * 65536 + 64, 99);
  for (let round = 0; round < 2000; round++) {
    const pageSize = 512 << (next() % 8);
    const len = next() % (8 * pageSize);
    const offset = next() % 64; // unaligned sources too
    const src = data.subarray(offset, offset + len);
    const bitmap = new Uint8Array(bitmapBytes(len, pageSize));
    for (let i = 0; i < bitmap.length; i++) bitmap[i] = next() & 0xff;
    const cap = next() % (len + 1);
    const dst = new Uint8Array(len + 16).fill(0xee);
    try {
      const n = packPages(src, pageSize, bitmap, dst.subarray(0, cap));
      assert.equal(n, keptBytes(bitmap, len, pageSize));
      assert.ok(n <= cap);
    } catch (err) {
      assert.ok(err instanceof ShimError, String(err));
      assert.ok([EINVAL, ENOSPC].includes(err.status), err.message);
    }
    assert.ok(dst.subarray(cap).every((b) => b === 0xee), `round ${round} wrote past the destination`);
  }
});
