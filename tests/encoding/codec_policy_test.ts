/** src/encoding/codec_policy.ts: raw on links faster than the compressors, ratio on slow links. */
import assert from "node:assert/strict";
import { AUTO_CANDIDATES, CodecPolicy, specKey } from "../../src/encoding/codec_policy.ts";

const LZ4 = { codec: "lz4" } as const;
const ZSTD3 = { codec: "zstd", level: 3 } as const;

const MB = 1e6;

Deno.test("a link faster than every compressor gets raw chunks", () => {
  const p = new CodecPolicy([LZ4, ZSTD3], 2);
  assert.equal(p.choose({ linkBytesPerSec: 10_000 * MB, sampleRatio: 0.3 }).codec, "none");
});

Deno.test("incompressible data goes raw whatever the link", () => {
  const p = new CodecPolicy([LZ4, ZSTD3], 2);
  assert.equal(p.choose({ linkBytesPerSec: 10 * MB, sampleRatio: 1 }).codec, "none");
});

Deno.test("a slow link with compressible data spends CPU for ratio (zstd)", () => {
  const p = new CodecPolicy([LZ4, ZSTD3], 2);
  const c = p.choose({ linkBytesPerSec: 12 * MB, sampleRatio: 0.4 });
  assert.equal(c.codec, "zstd");
  assert.ok(c.expectedBytesPerSec > 12 * MB / 0.4);
});

Deno.test("a link between the compressors' speeds takes the fast codec", () => {
  const p = new CodecPolicy([LZ4, ZSTD3], 1);
  // Over 600 MB/s raw is capped at 600; lz4 (~830 MB/s) doubles what the link carries; zstd 3 (~340) caps.
  assert.equal(p.choose({ linkBytesPerSec: 600 * MB, sampleRatio: 0.5 }).codec, "lz4");
});

Deno.test("measurements move the choice: a slow compressor here loses to raw", () => {
  const p = new CodecPolicy([ZSTD3], 1);
  assert.equal(p.choose({ linkBytesPerSec: 200 * MB, sampleRatio: 0.5 }).codec, "zstd");
  for (let i = 0; i < 50; i++) p.observe(ZSTD3, 1_000_000, 500_000, 20, 0.5); // 50 MB/s measured
  assert.equal(p.choose({ linkBytesPerSec: 200 * MB, sampleRatio: 0.5 }).codec, "none");
  const snap = p.snapshot();
  assert.ok(snap.codecs["zstd:3"].compressBytesPerSec < 60 * MB);
  assert.deepEqual(snap.chosen, { "zstd:3": 1, none: 1 });
  assert.equal(snap.last?.codec, "none");
});

Deno.test("a codec that lost on an early estimate is probed again and can win back", () => {
  const p = new CodecPolicy([LZ4, ZSTD3], 2);
  const link = { linkBytesPerSec: 12 * MB, sampleRatio: 0.6 };
  // zstd looked poor at first: learned to save barely more than lz4's sample.
  for (let i = 0; i < 30; i++) p.observe(ZSTD3, 1_000_000, 560_000, 3, 0.6);
  const first = Array.from({ length: 32 }, () => p.choose(link).codec);
  assert.ok(first.includes("zstd"), "zstd is still probed now and then");
  // The probes show zstd saves much more than the sample suggested: it wins again.
  for (let i = 0; i < 30; i++) p.observe(ZSTD3, 1_000_000, 250_000, 3, 0.6);
  assert.equal(p.choose(link).codec, "zstd");
});

Deno.test("on a slow link the thorough zstd level wins: the link, not the CPU, is the limit", () => {
  const p = new CodecPolicy(AUTO_CANDIDATES, 2);
  const c = p.choose({ linkBytesPerSec: 12.5 * MB, sampleRatio: 0.35 });
  assert.equal(specKey(c), "zstd:9");
  const fast = p.choose({ linkBytesPerSec: 400 * MB, sampleRatio: 0.35 });
  assert.notEqual(specKey(fast), "zstd:9", "on a fast link zstd 9 would be the bottleneck");
});
