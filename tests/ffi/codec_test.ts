/** ffi/codec.ts over the real shim: round trips, levels, bounds, malformed input, reuse, async, xxh3. */
import assert from "node:assert/strict";
import { Codec, type CodecName, CODECS, xxh3Into } from "../../ffi/codec.ts";
import { ShimError } from "../../ffi/library.ts";

const ENOSPC = -2;
const MiB = 1 << 20;

/** Deterministic bytes (xorshift32), so a failure reproduces with the same seed. */
function randomBytes(n: number, seed = 1): Uint8Array {
  const words = new Uint32Array(Math.ceil(n / 4));
  let x = seed >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  return new Uint8Array(words.buffer, 0, n);
}

/** Log-like JSON lines: compressible, but not a single repeated byte. */
function textBytes(n: number): Uint8Array {
  const lines: string[] = [];
  for (let i = 0, size = 0; size < n; i++) {
    const line = `{"seq":${i},"host":"node-${i % 17}","op":"${["read", "write", "sync"][i % 3]}","bytes":${
      (i * 7919) % 100000
    }}\n`;
    lines.push(line);
    size += line.length;
  }
  return new TextEncoder().encode(lines.join("")).subarray(0, n);
}

function compressed(codec: Codec, src: Uint8Array): Uint8Array {
  const dst = new Uint8Array(Codec.bound(codec.name, src.length));
  return dst.subarray(0, codec.compress(src, dst));
}

function roundTrip(codec: Codec, src: Uint8Array): Uint8Array {
  const packed = compressed(codec, src);
  const out = new Uint8Array(src.length);
  assert.equal(codec.decompress(packed, out), src.length);
  return out;
}

/** Runs fn with a fresh codec and always closes it. */
function withCodec(name: CodecName, fn: (codec: Codec) => void, level?: number): void {
  const codec = new Codec(name, level);
  try {
    fn(codec);
  } finally {
    codec.close();
  }
}

const inputs: Record<string, Uint8Array> = {
  "random 64 KiB": randomBytes(64 * 1024, 7),
  "text 256 KiB": textBytes(256 * 1024),
  "zeros 1 MiB": new Uint8Array(MiB),
  "empty": new Uint8Array(0),
  "one byte": Uint8Array.of(0x5a),
  "random 4 MiB": randomBytes(4 * MiB, 11),
  "text 4 MiB": textBytes(4 * MiB),
};

for (const name of CODECS) {
  Deno.test(`${name}: round trip keeps every input byte-exact`, () => {
    withCodec(name, (codec) => {
      for (const [label, src] of Object.entries(inputs)) {
        assert.deepEqual(roundTrip(codec, src), src, `${name} on ${label}`);
      }
    });
  });
}

Deno.test("compressible input shrinks and output stays within the bound", () => {
  const text = inputs["text 256 KiB"];
  const zeros = inputs["zeros 1 MiB"];
  for (const name of ["lz4", "zstd", "snappy"] as const) {
    withCodec(name, (codec) => {
      assert.ok(compressed(codec, text).length < text.length / 2, `${name} on text`);
      assert.ok(compressed(codec, zeros).length < zeros.length / 10, `${name} on zeros`);
      const random = inputs["random 4 MiB"];
      assert.ok(compressed(codec, random).length <= Codec.bound(name, random.length));
    });
  }
  withCodec("none", (codec) => assert.equal(compressed(codec, text).length, text.length));
});

Deno.test("zstd accepts negative, default and high levels; higher levels compress text smaller", () => {
  const text = textBytes(MiB);
  const sizes = new Map<number, number>();
  for (const level of [-5, -1, 1, 3, 19]) {
    withCodec("zstd", (codec) => {
      assert.equal(codec.level, level);
      sizes.set(level, compressed(codec, text).length);
      assert.deepEqual(roundTrip(codec, text), text, `level ${level}`);
    }, level);
  }
  assert.ok(sizes.get(19)! < sizes.get(3)!, `level 19 (${sizes.get(19)}) < level 3 (${sizes.get(3)})`);
  assert.ok(sizes.get(3)! < sizes.get(-5)!, `level 3 (${sizes.get(3)}) < level -5 (${sizes.get(-5)})`);
});

Deno.test("zstd level out of range throws a ShimError naming the level", () => {
  for (const level of [100, 23]) {
    assert.throws(
      () => new Codec("zstd", level),
      (err) => err instanceof ShimError && err.status === -1 && err.message.includes(`level ${level}`),
    );
  }
});

Deno.test("unknown codec name throws a RangeError listing the codecs", () => {
  assert.throws(() => new Codec("brotli" as CodecName), /unknown codec "brotli".*none, lz4, zstd, snappy/);
});

Deno.test("compress into a too-small destination throws ENOSPC and leaves the codec usable", () => {
  const src = randomBytes(64 * 1024, 3);
  for (const name of CODECS) {
    withCodec(name, (codec) => {
      assert.throws(
        () => codec.compress(src, new Uint8Array(100)),
        (err) => err instanceof ShimError && err.status === ENOSPC,
        name,
      );
      assert.deepEqual(roundTrip(codec, src), src, `${name} after a failed compress`);
    });
  }
});

Deno.test("decompress into a too-small destination throws ENOSPC", () => {
  const src = textBytes(100_000);
  for (const name of CODECS) {
    withCodec(name, (codec) => {
      const packed = compressed(codec, src);
      assert.throws(
        () => codec.decompress(packed, new Uint8Array(src.length - 1)),
        (err) => err instanceof ShimError && err.status === ENOSPC,
        name,
      );
    });
  }
});

for (const name of ["lz4", "zstd", "snappy"] as const) {
  Deno.test(`${name}: random garbage throws a ShimError`, () => {
    withCodec(name, (codec) => {
      const out = new Uint8Array(MiB);
      for (let seed = 1; seed <= 50; seed++) {
        const garbage = randomBytes(16 + seed * 37, seed);
        assert.throws(() => codec.decompress(garbage, out), ShimError, `seed ${seed}`);
      }
    });
  });

  Deno.test(`${name}: truncated frames throw a ShimError`, () => {
    withCodec(name, (codec) => {
      const src = textBytes(200_000);
      const packed = compressed(codec, src);
      const out = new Uint8Array(src.length);
      for (const keep of [1, 4, 8, packed.length >> 1, packed.length - 1]) {
        assert.throws(() => codec.decompress(packed.subarray(0, keep), out), ShimError, `${keep} bytes kept`);
      }
      assert.deepEqual(roundTrip(codec, src), src, "codec still works after the failures");
    });
  });

  Deno.test(`${name}: corrupted frames either throw a ShimError or stay inside the destination`, () => {
    withCodec(name, (codec) => {
      const src = textBytes(64 * 1024);
      const packed = compressed(codec, src);
      // Room after the destination: nothing may be written past what decompress() was handed.
      const arena = new Uint8Array(src.length + 4096).fill(0xee);
      const out = arena.subarray(0, src.length);
      for (let i = 0; i < 200; i++) {
        const bad = packed.slice();
        const at = (i * 7919) % bad.length;
        bad[at] ^= 1 << (i % 8);
        try {
          assert.ok(codec.decompress(bad, out) <= out.length);
        } catch (err) {
          assert.ok(err instanceof ShimError, `flip at ${at}: ${err}`);
        }
        assert.ok(arena.subarray(src.length).every((b) => b === 0xee), `flip at ${at} wrote past dst`);
      }
    });
  });
}

Deno.test("one codec handles 100 chunks of varying size and content", () => {
  for (const name of CODECS) {
    withCodec(name, (codec) => {
      const text = textBytes(300_000);
      for (let i = 0; i < 100; i++) {
        const size = (i * 2654435761) % 70_000;
        const chunk = i % 2 ? randomBytes(size, i + 1) : text.subarray(i * 1000, i * 1000 + size);
        assert.deepEqual(roundTrip(codec, chunk), chunk, `${name} chunk ${i}`);
      }
    });
  }
});

Deno.test("compressAsync and decompressAsync match the synchronous calls", async () => {
  const src = textBytes(2 * MiB);
  for (const name of CODECS) {
    const codec = new Codec(name);
    try {
      const sync = compressed(codec, src);
      const dst = new Uint8Array(Codec.bound(name, src.length));
      const n = await codec.compressAsync(src, dst);
      assert.deepEqual(dst.subarray(0, n), sync, `${name} compressAsync output`);
      const out = new Uint8Array(src.length);
      assert.equal(await codec.decompressAsync(sync, out), src.length);
      assert.deepEqual(out, src, `${name} decompressAsync output`);
    } finally {
      codec.close();
    }
  }
});

Deno.test("async calls report errors as rejected ShimErrors", async () => {
  const codec = new Codec("zstd");
  try {
    await assert.rejects(codec.decompressAsync(randomBytes(1000, 5), new Uint8Array(4096)), ShimError);
    await assert.rejects(
      codec.compressAsync(randomBytes(64 * 1024, 6), new Uint8Array(10)),
      (err) => err instanceof ShimError && err.status === ENOSPC,
    );
  } finally {
    codec.close();
  }
});

Deno.test("close twice is safe; use after close throws", async () => {
  const codec = new Codec("lz4");
  codec.close();
  codec.close();
  const buf = new Uint8Array(64);
  assert.throws(() => codec.compress(buf, buf), /lz4 codec is closed/);
  assert.throws(() => codec.decompress(buf, buf), /lz4 codec is closed/);
  await assert.rejects(async () => await codec.compressAsync(buf, buf), /closed/);
});

Deno.test("closed handles are reused without leaking: 3000 codecs opened and closed in turn", () => {
  // The shim's table holds 1024 handles; closing must return them.
  for (let i = 0; i < 3000; i++) new Codec(CODECS[i % 4]).close();
});

const hex = (bytes: Uint8Array) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

function xxh3(data: Uint8Array): string {
  const out = new Uint8Array(8);
  xxh3Into(data, out);
  return hex(out);
}

Deno.test("xxh3Into matches reference XXH3-64 values, big-endian", () => {
  // Reference values from python xxhash 4.0.1: xxhash.xxh3_64_hexdigest(data).
  const utf8 = new TextEncoder();
  const kib = new Uint8Array(1024).map((_, i) => i & 0xff);
  assert.equal(xxh3(new Uint8Array(0)), "2d06800538d394c2");
  assert.equal(xxh3(utf8.encode("dwcp")), "04093f1034c295f9");
  assert.equal(xxh3(utf8.encode("The quick brown fox jumps over the lazy dog")), "ce7d19a5418fb365");
  assert.equal(xxh3(kib), "a870f92984398d22");
});

Deno.test("xxh3Into is stable, sensitive to every bit, and writes exactly 8 bytes", () => {
  const data = randomBytes(MiB, 9);
  const first = xxh3(data);
  assert.equal(xxh3(data.slice()), first);
  for (const at of [0, 1, data.length >> 1, data.length - 1]) {
    const flipped = data.slice();
    flipped[at] ^= 0x01;
    assert.notEqual(xxh3(flipped), first, `bit flipped at ${at}`);
  }
  const arena = new Uint8Array(16).fill(0xaa);
  xxh3Into(data, arena.subarray(4, 12));
  assert.equal(hex(arena.subarray(4, 12)), first);
  assert.deepEqual([...arena.subarray(0, 4), ...arena.subarray(12)], new Array(8).fill(0xaa));
  assert.throws(() => xxh3Into(data, new Uint8Array(4)), RangeError);
});
