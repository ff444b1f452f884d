/** src/encoding/page_delta.ts: chunks against a base, the payload layout, codecs, and hostile payloads. */
import assert from "node:assert/strict";
import { xxh3Into } from "../../ffi/codec.ts";
import { PAGE_BYTES } from "../../src/encoding/chunk_codec.ts";
import {
  DELTA_HEADER_BYTES,
  DeltaDecoder,
  DeltaEncoder,
  FLAG_DELTA,
  type PageCounts,
} from "../../src/encoding/page_delta.ts";
import { mulberry32, randInt } from "../transport/prng.ts";

const HEAD = 48;
const PAGES = 64;
const CHUNK = PAGES * PAGE_BYTES;

function randomBytes(n: number, seed: number): Uint8Array {
  const rand = mulberry32(seed);
  return Uint8Array.from({ length: n }, () => Math.floor(rand() * 256));
}

/** The base with a few bytes changed in `changed` of its pages (chosen at random, fixed seed). */
function newerVersion(base: Uint8Array, changedPages: number, seed: number): Uint8Array {
  const rand = mulberry32(seed);
  const out = base.slice();
  const pages = Math.ceil(base.length / PAGE_BYTES);
  for (let n = 0; n < changedPages; n++) {
    const page = randInt(rand, 0, pages - 1);
    for (let k = 0; k < 8; k++) {
      const at = Math.min(base.length - 1, page * PAGE_BYTES + randInt(rand, 0, PAGE_BYTES - 1));
      out[at] ^= 1 + randInt(rand, 0, 254);
    }
  }
  return out;
}

/** A frame buffer: header room, then the chunk. */
function framed(chunk: Uint8Array): Uint8Array {
  const frame = new Uint8Array(HEAD + chunk.length);
  frame.set(chunk, HEAD);
  return frame;
}

async function roundTrip(chunk: Uint8Array, base: Uint8Array, codec: "none" | "zstd" | "lz4" = "none") {
  const encoder = new DeltaEncoder(CHUNK, HEAD);
  const decoder = new DeltaDecoder(CHUNK);
  try {
    const enc = await encoder.encode(framed(chunk), chunk.length, base, () => codec);
    if (!enc) return undefined;
    assert.equal(enc.flags, FLAG_DELTA);
    assert.ok(enc.encLen < chunk.length, `${enc.encLen} bytes is smaller than the chunk`);
    const payload = enc.frame.slice(HEAD, HEAD + enc.encLen);
    const out = new Uint8Array(chunk.length);
    const counts = await decoder.decode(enc.codec, payload, base, out);
    assert.deepEqual(out, chunk, "decodes to the chunk");
    assert.deepEqual(counts, enc.pages);
    return { ...enc, payload };
  } finally {
    encoder.close();
    decoder.close();
  }
}

Deno.test("a chunk with a few bytes changed in 1 of 64 pages travels as a few dozen bytes", async () => {
  const base = randomBytes(CHUNK, 1);
  const r = await roundTrip(newerVersion(base, 1, 2), base);
  assert.ok(r);
  assert.deepEqual(r.pages, { unchanged: 63, zero: 0, delta: 1, whole: 0 });
  // header + 16-byte kind map + run count + 8 changes at 3 bytes at most each (2 control, 1 literal)
  assert.ok(r.encLen <= DELTA_HEADER_BYTES + 16 + 1 + 8 * 3, `${r.encLen} bytes`);
});

Deno.test("an unchanged chunk costs the header and the kind map", async () => {
  const base = randomBytes(CHUNK, 3);
  const r = await roundTrip(base.slice(), base);
  assert.ok(r);
  assert.equal(r.encLen, DELTA_HEADER_BYTES + PAGES / 4);
  assert.deepEqual(r.pages, { unchanged: PAGES, zero: 0, delta: 0, whole: 0 });
});

Deno.test("zstd squeezes the streams of structured changes; whole pages go through the picked codec", async () => {
  const base = randomBytes(CHUNK, 4);
  const chunk = base.slice();
  // Counters: every 8-byte word of the first 32 pages incremented by 1 in its low byte.
  for (let at = 0; at < 32 * PAGE_BYTES; at += 8) chunk[at] = (chunk[at] + 1) & 0xff;
  // Text pages replace the last 8 pages: nothing like their base, but compressible.
  const text = new TextEncoder().encode("status=ok host=h1 bytes=4096 path=/var/lib/dwcp\n".repeat(1000));
  chunk.set(text.subarray(0, 8 * PAGE_BYTES), 56 * PAGE_BYTES);
  const plain = await roundTrip(chunk, base, "none");
  const zstd = await roundTrip(chunk, base, "zstd");
  assert.ok(plain && zstd);
  assert.equal(zstd.pages.delta, 32);
  assert.equal(zstd.pages.whole, 8);
  assert.deepEqual([zstd.payload[2], zstd.payload[3]], [2, 2], "the control and literal streams are zstd");
  assert.equal(zstd.codec, 2, "the whole section is zstd");
  assert.ok(zstd.encLen < plain.encLen / 4, `zstd ${zstd.encLen} vs none ${plain.encLen}`);
  assert.ok(
    zstd.compression && zstd.compression.inBytes === 8 * PAGE_BYTES,
    "the policy sees the whole pages",
  );
});

Deno.test("a base that does not help gives no delta: unrelated data, all zeros, an empty base", async () => {
  const chunk = randomBytes(CHUNK, 5);
  assert.equal(await roundTrip(chunk, randomBytes(CHUNK, 6)), undefined);
  assert.equal(await roundTrip(new Uint8Array(CHUNK), randomBytes(CHUNK, 6)), undefined);
  assert.equal(await roundTrip(chunk, new Uint8Array()), undefined);
});

Deno.test("a base shorter than the chunk: covered pages as deltas, the rest whole", async () => {
  const base = randomBytes(CHUNK, 7);
  const chunk = newerVersion(base, 2, 8);
  const short = base.subarray(0, 10 * PAGE_BYTES + 100);
  const r = await roundTrip(chunk, short);
  assert.ok(r);
  assert.equal(r.pages.whole, PAGES - 10);
  assert.equal(r.pages.unchanged + r.pages.delta, 10);
});

Deno.test("a chunk shorter than a page multiple round-trips (the file's last chunk)", async () => {
  const base = randomBytes(5 * PAGE_BYTES + 77, 9);
  const chunk = base.slice();
  chunk[chunk.length - 1] ^= 0x42;
  const r = await roundTrip(chunk, base);
  assert.ok(r);
  assert.deepEqual(r.pages, { unchanged: 5, zero: 0, delta: 1, whole: 0 });
});

Deno.test("64 KiB pages: the page size travels in the payload", async () => {
  const base = randomBytes(CHUNK, 10);
  const chunk = newerVersion(base, 3, 11);
  const encoder = new DeltaEncoder(CHUNK, HEAD, { pageBytes: 65536 });
  const decoder = new DeltaDecoder(CHUNK);
  try {
    const enc = await encoder.encode(framed(chunk), CHUNK, base, () => "none");
    assert.ok(enc);
    const payload = enc.frame.subarray(HEAD, HEAD + enc.encLen);
    assert.equal(payload[1], 16);
    const out = new Uint8Array(CHUNK);
    assert.equal((await decoder.decode(enc.codec, payload, base, out))?.delta, enc.pages.delta);
    assert.deepEqual(out, chunk);
  } finally {
    encoder.close();
    decoder.close();
  }
  assert.throws(() => new DeltaEncoder(CHUNK, HEAD, { pageBytes: 3000 }), /3000/);
});

Deno.test("decoded against the wrong base, the bytes differ and the chunk's checksum says so", async () => {
  const base = randomBytes(CHUNK, 12);
  const chunk = newerVersion(base, 4, 13);
  const r = await roundTrip(chunk, base, "zstd");
  assert.ok(r);
  const wrongBase = base.slice();
  wrongBase[3 * PAGE_BYTES + 17] ^= 1; // the receiver's copy differs in one byte
  const out = new Uint8Array(CHUNK);
  const decoder = new DeltaDecoder(CHUNK);
  try {
    assert.ok(await decoder.decode(r.codec, r.payload, wrongBase, out), "it decodes...");
  } finally {
    decoder.close();
  }
  const [want, got] = [new Uint8Array(8), new Uint8Array(8)];
  xxh3Into(chunk, want);
  xxh3Into(out, got);
  assert.notDeepEqual(got, want, "...to bytes whose checksum is not the sender's");
});

Deno.test("hostile payloads (random, cut, bit-flipped, bad headers) are reported, never thrown", async () => {
  const base = randomBytes(CHUNK, 14);
  const chunk = newerVersion(base, 6, 15);
  const good: Uint8Array[] = [];
  for (const codec of ["none", "zstd"] as const) {
    const r = await roundTrip(chunk, base, codec);
    assert.ok(r);
    good.push(r.payload);
  }
  const decoder = new DeltaDecoder(CHUNK);
  const rand = mulberry32(16);
  const out = new Uint8Array(CHUNK);
  const expectBad = async (codec: number, payload: Uint8Array, what: string) =>
    assert.equal(await decoder.decode(codec, payload, base, out), undefined, what);
  try {
    for (const [i, payload] of good.entries()) {
      for (let cut = 0; cut < payload.length; cut += 1 + (cut >> 4)) {
        await expectBad(0, payload.subarray(0, cut), `payload ${i} cut at ${cut}`);
      }
      for (let n = 0; n < 300; n++) {
        const bad = payload.slice();
        bad[randInt(rand, 0, bad.length - 1)] ^= 1 << randInt(rand, 0, 7);
        // A flip may leave a payload that decodes (to other bytes, which the checksum catches): no throw.
        const counts: PageCounts | undefined = await decoder.decode(0, bad, base, out);
        if (counts) assert.equal(counts.unchanged + counts.zero + counts.delta + counts.whole, PAGES);
      }
    }
    for (let n = 0; n < 500; n++) {
      const junk = randomBytes(randInt(rand, 0, 2000), 100 + n);
      await decoder.decode(randInt(rand, 0, 4), junk, base, out);
    }
    const header = good[0].slice();
    await expectBad(
      0,
      Object.assign(header.slice(), { 0: 1 }),
      "layout version 1 (the byte-gap control stream)",
    );
    await expectBad(0, Object.assign(header.slice(), { 0: 3 }), "layout version 3");
    await expectBad(0, Object.assign(header.slice(), { 1: 8 }), "page shift 8");
    await expectBad(0, Object.assign(header.slice(), { 1: 17 }), "page shift 17");
    await expectBad(0, Object.assign(header.slice(), { 2: 9 }), "control codec 9");
    await expectBad(0, Object.assign(header.slice(), { 3: 9 }), "literal codec 9");
    await expectBad(0, Object.assign(header.slice(), { 3: 0x89 }), "literal codec 9 in the new form");
    await expectBad(0, Object.assign(header.slice(), { 3: 2 }), "literals that are not zstd");
    await expectBad(0, Object.assign(header.slice(), { 7: 0xff }), "control section past the payload");
    await expectBad(0, Object.assign(header.slice(), { 11: 0xff }), "literal section past the payload");
    await expectBad(9, header, "whole-section codec 9");
    assert.equal(
      await decoder.decode(0, good[0], base.subarray(0, PAGE_BYTES), out),
      undefined,
      "pages that refer to base bytes the receiver's base lacks",
    );
    assert.equal(
      await decoder.decode(0, good[0], base, new Uint8Array(2 * CHUNK)),
      undefined,
      "rawLen > chunk",
    );
  } finally {
    decoder.close();
  }
});

Deno.test("short streams are compressed harder by default: the same pages take fewer bytes than at level 3", async () => {
  // Counters incremented in most pages of the chunk: control and literal streams of a few KiB each.
  const base = randomBytes(CHUNK, 41);
  const newer = base.slice();
  const rand = mulberry32(42);
  for (let page = 0; page < PAGES; page++) {
    for (let k = 0; k < 40; k++) newer[page * PAGE_BYTES + 8 * randInt(rand, 0, PAGE_BYTES / 8 - 1)] += 1;
  }
  const sizes: number[] = [];
  for (const opts of [{}, { streamCodec: { codec: "zstd" as const, level: 3 } }]) {
    const encoder = new DeltaEncoder(CHUNK, HEAD, opts);
    const decoder = new DeltaDecoder(CHUNK);
    try {
      const enc = await encoder.encode(framed(newer), CHUNK, base, () => "none");
      assert.ok(enc);
      assert.equal(enc.pages.delta, PAGES);
      const out = new Uint8Array(CHUNK);
      await decoder.decode(enc.codec, enc.frame.slice(HEAD, HEAD + enc.encLen), base, out);
      assert.deepEqual(out, newer);
      sizes.push(enc.encLen);
    } finally {
      encoder.close();
      decoder.close();
    }
  }
  assert.ok(sizes[0] < sizes[1], `default ${sizes[0]} bytes, level 3 ${sizes[1]} bytes`);
});

Deno.test("literals go in the smaller form: new bytes for one value stored often, XOR for counters", async () => {
  const base = randomBytes(CHUNK, 51);
  const rand = mulberry32(52);
  // A stamp written into 6 fields of every page (each over a different old value): as new bytes the
  // literals repeat 8 bytes; XOR the old values they are as random as those.
  const stamped = base.slice();
  const stamp = randomBytes(8, 53);
  for (let page = 0; page < PAGES; page++) {
    for (let k = 0; k < 6; k++) {
      stamped.set(stamp, page * PAGE_BYTES + 8 * randInt(rand, 0, PAGE_BYTES / 8 - 1));
    }
  }
  // Counters incremented: XOR leaves 0x01, 0x03, ...; the new bytes are as random as the old ones.
  const counted = base.slice();
  for (let page = 0; page < PAGES; page++) {
    for (let k = 0; k < 20; k++) counted[page * PAGE_BYTES + 8 * randInt(rand, 0, PAGE_BYTES / 8 - 1)] += 1;
  }
  for (const [chunk, newBytes] of [[stamped, true], [counted, false]] as const) {
    const r = await roundTrip(chunk, base);
    assert.ok(r);
    assert.equal(r.pages.delta, PAGES);
    assert.equal(
      (r.payload[3] & 0x80) !== 0,
      newBytes,
      `literal form bit for the ${newBytes ? "stamps" : "counters"}`,
    );
  }
});
