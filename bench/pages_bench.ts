/**
 * HDE zero-page mechanics through the shim, on 1 MiB per iteration in 4 KiB pages:
 * MB/s = 1.048576 / (time per iteration in ms) * 1000 (the MB are of the unpacked 1 MiB buffer).
 * zeroPages on zeros reads every byte (the memory-speed case); on random data it stops at each page's
 * first word; the mixed buffer has half its pages zero, chosen at random (fixed seed).
 */
import { bitmapBytes, packPages, unpackPages, zeroPages } from "../ffi/pages.ts";
import { xorshiftBytes } from "./random_bytes.ts";

const CHUNK = 1 << 20;
const PAGE = 4096;

function xorshift(seed: number): () => number {
  let x = seed;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

/** Incompressible bytes (xorshift32, fixed seed). */
function randomChunk(seed: number): Uint8Array {
  return xorshiftBytes(CHUNK, seed);
}

/** Random data pages with half the pages, picked at random, zeroed. */
function mixedChunk(): Uint8Array {
  const chunk = randomChunk(0x9e3779b9);
  const next = xorshift(12345);
  const pages = [...Array(CHUNK / PAGE).keys()];
  for (let i = pages.length - 1; i > 0; i--) {
    const j = next() % (i + 1);
    [pages[i], pages[j]] = [pages[j], pages[i]];
  }
  for (const page of pages.slice(0, pages.length / 2)) chunk.fill(0, page * PAGE, (page + 1) * PAGE);
  return chunk;
}

const data = { zeros: new Uint8Array(CHUNK), random: randomChunk(0x2545f491), mixed: mixedChunk() };
const bitmap = new Uint8Array(bitmapBytes(CHUNK, PAGE));

for (const [kind, src] of Object.entries(data)) {
  Deno.bench({
    name: `zeroPages 1 MiB ${kind} (4 KiB pages)`,
    group: "zeroPages",
    baseline: kind === "zeros",
    fn: () => void zeroPages(src, PAGE, bitmap),
  });
}

const mixed = data.mixed;
const mixedBitmap = new Uint8Array(bitmap.length);
if (zeroPages(mixed, PAGE, mixedBitmap) !== CHUNK / PAGE / 2) {
  throw new Error("mixed chunk is not half zero pages");
}
const packedBuf = new Uint8Array(CHUNK);
const packed = packedBuf.subarray(0, packPages(mixed, PAGE, mixedBitmap, packedBuf));
const out = new Uint8Array(CHUNK);

Deno.bench({
  name: "packPages 1 MiB mixed (→ 50%)",
  group: "pack",
  fn: () => void packPages(mixed, PAGE, mixedBitmap, packedBuf),
});
Deno.bench({
  name: "unpackPages 1 MiB mixed",
  group: "pack",
  fn: () => void unpackPages(packed, PAGE, mixedBitmap, CHUNK, out),
});
Deno.bench({
  name: "zeroPages + packPages 1 MiB mixed",
  group: "pack",
  fn: () => {
    zeroPages(mixed, PAGE, mixedBitmap);
    packPages(mixed, PAGE, mixedBitmap, packedBuf);
  },
});
