/** src/encoding/chunk_codec.ts: zero pages as bitmap bits, codecs on what is left, raw when nothing helps. */
import assert from "node:assert/strict";
import { ChunkDecoder, ChunkEncoder, FLAG_PAGES, PAGE_BYTES } from "../../src/encoding/chunk_codec.ts";
import { mulberry32 } from "../transport/prng.ts";

const HEAD = 48;
const CHUNK = 64 * PAGE_BYTES;

/** A frame buffer (header room, then the chunk) built from per-page contents. */
function chunkOf(pages: ("zero" | "random" | "text")[], seed = 1): Uint8Array {
  const rand = mulberry32(seed);
  const frame = new Uint8Array(HEAD + pages.length * PAGE_BYTES);
  const text = new TextEncoder().encode("status=ok host=h1 bytes=4096 path=/var/lib/dwcp\n".repeat(100));
  pages.forEach((kind, i) => {
    const page = frame.subarray(HEAD + i * PAGE_BYTES, HEAD + (i + 1) * PAGE_BYTES);
    if (kind === "random") { for (let j = 0; j < page.length; j++) page[j] = rand() * 256; }
    if (kind === "text") page.set(text.subarray(0, PAGE_BYTES));
  });
  return frame;
}

async function roundTrip(codec: "none" | "lz4" | "zstd" | "snappy", frame: Uint8Array) {
  const rawLen = frame.length - HEAD;
  const encoder = new ChunkEncoder(CHUNK, HEAD);
  const decoder = new ChunkDecoder(CHUNK);
  try {
    const enc = await encoder.encode(frame, rawLen, () => codec);
    const payload = enc.frame.slice(HEAD, HEAD + enc.encLen);
    const out = new Uint8Array(rawLen);
    const allZero = enc.flags === 0 && enc.codec === 0
      ? (out.set(payload), false)
      : await decoder.decode(enc.flags, enc.codec, payload, out);
    assert.deepEqual(out, frame.subarray(HEAD), "decodes to the raw chunk");
    return { ...enc, allZeroDecoded: allZero };
  } finally {
    encoder.close();
    decoder.close();
  }
}

Deno.test("an all-zero chunk travels as its bitmap only", async () => {
  const r = await roundTrip("none", chunkOf(Array(64).fill("zero")));
  assert.equal(r.flags, FLAG_PAGES);
  assert.equal(r.encLen, 8); // 64 pages → 8 bytes of bitmap
  assert.equal(r.allZero, true);
  assert.equal(r.allZeroDecoded, true);
});

Deno.test("zero pages among random ones are left out; the rest travels as is", async () => {
  const kinds = Array.from({ length: 64 }, (_, i) => (i % 4 === 0 ? "random" : "zero") as "random" | "zero");
  const r = await roundTrip("none", chunkOf(kinds));
  assert.equal(r.flags, FLAG_PAGES);
  assert.equal(r.codec, 0);
  assert.equal(r.encLen, 8 + 16 * PAGE_BYTES);
  assert.equal(r.allZero, false);
});

Deno.test("a codec compresses what is left after zero pages, and only when it shrinks", async () => {
  const kinds = Array.from({ length: 64 }, (_, i) => (i % 2 ? "text" : "zero") as "text" | "zero");
  for (const codec of ["lz4", "zstd", "snappy"] as const) {
    const r = await roundTrip(codec, chunkOf(kinds));
    assert.equal(r.flags, FLAG_PAGES, codec);
    assert.notEqual(r.codec, 0, `${codec} was used`);
    assert.ok(r.encLen < 32 * PAGE_BYTES / 4, `${codec}: ${r.encLen} bytes`);
  }
});

Deno.test("random data with no zero pages goes raw, even with a codec asked for", async () => {
  const r = await roundTrip("zstd", chunkOf(Array(64).fill("random")));
  assert.deepEqual([r.flags, r.codec, r.encLen], [0, 0, 64 * PAGE_BYTES]);
});

Deno.test("a partial last page that is zero counts as a zero page", async () => {
  const frame = chunkOf(["random", "zero"]).subarray(0, HEAD + PAGE_BYTES + 100);
  const r = await roundTrip("none", frame);
  assert.equal(r.flags, FLAG_PAGES);
  assert.equal(r.encLen, 1 + PAGE_BYTES);
});

Deno.test("corrupt payloads are reported, never thrown or silently accepted", async () => {
  const frame = chunkOf(Array.from({ length: 64 }, (_, i) => (i % 2 ? "text" : "zero") as "text" | "zero"));
  const encoder = new ChunkEncoder(CHUNK, HEAD);
  const decoder = new ChunkDecoder(CHUNK);
  try {
    const enc = await encoder.encode(frame, CHUNK, () => "zstd");
    const payload = enc.frame.slice(HEAD, HEAD + enc.encLen);
    const out = new Uint8Array(CHUNK);
    assert.equal(
      await decoder.decode(enc.flags, enc.codec, payload.subarray(0, 4), out),
      undefined,
      "truncated",
    );
    assert.equal(await decoder.decode(enc.flags, 9, payload, out), undefined, "unknown codec");
    const rand = mulberry32(7);
    for (let i = 0; i < 200; i++) {
      const junk = payload.slice();
      junk[Math.floor(rand() * junk.length)] ^= 1 << Math.floor(rand() * 8);
      const r = await decoder.decode(enc.flags, enc.codec, junk, out);
      // A flipped bit either fails to decode or decodes to something the frame checksum then rejects.
      assert.ok(r === undefined || typeof r === "boolean");
    }
  } finally {
    encoder.close();
    decoder.close();
  }
});

Deno.test("the sample ratio tells compressible from random bodies", () => {
  const encoder = new ChunkEncoder(CHUNK, HEAD);
  try {
    const text = chunkOf(Array(8).fill("text")).subarray(HEAD);
    const random = chunkOf(Array(8).fill("random")).subarray(HEAD);
    assert.ok(encoder.sampleRatio(text) < 0.2, `text ${encoder.sampleRatio(text)}`);
    assert.equal(encoder.sampleRatio(random), 1);
  } finally {
    encoder.close();
  }
});
