/** StreamChunker: a stream is cut the same however it is read, shared runs give shared chunks, sizes hold. */
import assert from "node:assert/strict";
import { type CdcSizes, StreamChunker, validateCdcSizes, VM_MEMORY_CDC } from "../../src/dedupe/cdc.ts";
import { fingerprint, hashHex } from "../../src/dedupe/fingerprint.ts";
import { randomBytes, xorshift } from "./support.ts";

const SMALL: CdcSizes = { minBytes: 256, avgBytes: 1024, maxBytes: 4096 };

function chunkAll(sizes: CdcSizes, reads: Uint8Array[]): Uint8Array[] {
  const chunker = new StreamChunker(sizes);
  // Copies, because chunks may be views of a read, and the caller below keeps them all.
  const out = reads.flatMap((r) => chunker.push(r).map((c) => c.slice()));
  const last = chunker.finish();
  return last ? [...out, last] : out;
}

/** Splits data into reads whose sizes come from the seed: from 1 byte to several chunks long. */
function randomReads(data: Uint8Array, seed: number, maxRead: number): Uint8Array[] {
  const next = xorshift(seed);
  const reads: Uint8Array[] = [];
  for (let off = 0; off < data.length;) {
    const n = Math.min(data.length - off, 1 + (next() % maxRead));
    reads.push(data.subarray(off, off + n));
    off += n;
  }
  return reads;
}

/** A stream with internal repeats and zero runs, like memory: cuts land in all the interesting places. */
function memoryLikeStream(n: number, seed: number): Uint8Array {
  const data = randomBytes(n, seed);
  data.copyWithin(n / 2, 1000, 1000 + n / 4);
  data.fill(0, n / 8, n / 8 + 50_000);
  return data;
}

Deno.test("a stream is cut into the same chunks however it is split into reads", () => {
  for (const sizes of [SMALL, VM_MEMORY_CDC]) {
    const data = memoryLikeStream(sizes === SMALL ? 400_000 : 3 << 20, 11);
    const whole = chunkAll(sizes, [data]);
    assert.deepEqual(concat(whole), data);
    // Reads from a byte to a few max-size chunks, so chunks span 1..many reads and reads hold 0..many cuts
    // (byte-sized reads only on the small stream: each read is a shim call).
    const readSizes = sizes === SMALL
      ? [1, 7, sizes.minBytes, sizes.maxBytes * 3]
      : [999, sizes.minBytes, sizes.maxBytes * 3];
    for (let seed = 1; seed <= 12; seed++) {
      const maxRead = readSizes[seed % readSizes.length];
      const reads = randomReads(data, seed, maxRead);
      assert.deepEqual(chunkAll(sizes, reads), whole, `seed ${seed}, reads up to ${maxRead} bytes`);
    }
  }
});

Deno.test("bytes inserted at the front change only the chunks around them: the rest dedupe", () => {
  const data = randomBytes(4 << 20, 5);
  const shifted = new Uint8Array(data.length + 100);
  shifted.set(randomBytes(100, 6));
  shifted.set(data, 100);
  const before = new Set(chunkAll(VM_MEMORY_CDC, [data]).map((c) => hashHex(fingerprint(c))));
  const after = chunkAll(VM_MEMORY_CDC, [shifted]).map((c) => hashHex(fingerprint(c)));
  const fresh = after.filter((h) => !before.has(h));
  assert.ok(
    fresh.length <= 3,
    `${fresh.length} of ${after.length} chunks changed; expected the first few only`,
  );
});

Deno.test("chunk sizes stay within bounds and average near the target on random data", () => {
  const chunks = chunkAll(VM_MEMORY_CDC, [randomBytes(16 << 20, 8)]);
  for (const c of chunks.slice(0, -1)) {
    assert.ok(
      c.length >= VM_MEMORY_CDC.minBytes && c.length <= VM_MEMORY_CDC.maxBytes,
      `chunk of ${c.length}`,
    );
  }
  const meanBytes = (16 << 20) / chunks.length;
  // Normalized chunking pulls sizes towards avg: the mean sits a little above it (min is skipped).
  assert.ok(
    meanBytes > 0.9 * VM_MEMORY_CDC.avgBytes && meanBytes < 1.4 * VM_MEMORY_CDC.avgBytes,
    `mean chunk ${meanBytes.toFixed(0)} bytes`,
  );
});

Deno.test("chunks wholly inside a read are views of it; a chunk spanning reads is a copy", () => {
  const data = randomBytes(200_000, 3);
  const chunker = new StreamChunker(SMALL);
  const first = chunker.push(data.subarray(0, 100_000));
  assert.ok(first.length > 2);
  assert.equal(first[1].buffer, data.buffer);
  const second = chunker.push(data.subarray(100_000));
  assert.notEqual(second[0].buffer, data.buffer);
  assert.equal(chunker.streamBytes, 200_000);
});

Deno.test("an empty stream has no chunks; a short one has one; finish leaves the chunker ready again", () => {
  assert.deepEqual(chunkAll(SMALL, []), []);
  assert.deepEqual(chunkAll(SMALL, [new Uint8Array(0)]), []);
  const tiny = randomBytes(100, 1);
  assert.deepEqual(chunkAll(SMALL, [tiny]), [tiny]);
  const chunker = new StreamChunker(SMALL);
  const data = randomBytes(50_000, 2);
  chunker.push(data.subarray(0, 10_000));
  chunker.finish();
  const again = chunker.push(data);
  assert.deepEqual(again.map((c) => c.slice()), chunkAll(SMALL, [data]).slice(0, again.length));
});

Deno.test("bad sizes are refused with the rule and the defaults to use", () => {
  assert.throws(
    () => validateCdcSizes({ minBytes: 4096, avgBytes: 12000, maxBytes: 65536 }),
    /avg 12000, max 65536: need integers .* avg a power of two \(for VM memory use min 2048, avg 8192/,
  );
  assert.throws(() => new StreamChunker({ minBytes: 8, avgBytes: 16, maxBytes: 32 }), /min 8/);
  assert.throws(
    () => new StreamChunker({ minBytes: 1024, avgBytes: 2048, maxBytes: 2048.5 }),
    /need integers/,
  );
});

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}
