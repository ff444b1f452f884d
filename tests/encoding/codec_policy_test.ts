/** src/encoding/codec_policy.ts: raw on links faster than the compressors, ratio on slow links. */
import assert from "node:assert/strict";
import { CODEC_BIAS, CodecPolicy, specKey } from "../../src/encoding/codec_policy.ts";

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
  const p = new CodecPolicy([LZ4, ZSTD3], 1);
  const link = { linkBytesPerSec: 400 * MB, sampleRatio: 0.5 };
  // zstd looked slow at first (50 MB/s: a busy core): the CPU would be the limit, lz4 wins.
  for (let i = 0; i < 30; i++) p.observe(ZSTD3, 1_000_000, 430_000, 20, 0.5);
  const first = Array.from({ length: 32 }, () => p.choose(link).codec);
  assert.deepEqual(first.filter((c) => c !== "lz4"), ["zstd", "zstd"], "probes of the more thorough zstd");
  assert.ok(first.includes("zstd"), "zstd is still probed now and then");
  // The probes show zstd runs at 1000 MB/s after all: with its better ratio it wins again.
  for (let i = 0; i < 30; i++) p.observe(ZSTD3, 1_000_000, 430_000, 1, 0.5);
  assert.equal(p.choose(link).codec, "zstd");
});

Deno.test("a more thorough codec wins on a slow link even where the sample predicts little gain", () => {
  const p = new CodecPolicy([LZ4, ZSTD3], 2);
  // The lz4 sample barely compresses, so every codec looks nearly alike, and the link is the limit.
  assert.equal(p.choose({ linkBytesPerSec: 12.5 * MB, sampleRatio: 0.95 }).codec, "zstd");
});

Deno.test("internet bias: on a slow link the thorough zstd level wins, the link is the limit", () => {
  const p = new CodecPolicy(CODEC_BIAS.internet.candidates, 2);
  const c = p.choose({ linkBytesPerSec: 12.5 * MB, sampleRatio: 0.35 });
  assert.equal(specKey(c), "zstd:4");
  const fast = p.choose({ linkBytesPerSec: 400 * MB, sampleRatio: 0.35 });
  assert.notEqual(specKey(fast), "zstd:4", "on a fast link zstd 4 would be the bottleneck");
});

Deno.test("datacenter bias: raw (zero pages only) on any link, however compressible", () => {
  const p = new CodecPolicy(CODEC_BIAS.datacenter.candidates, 2);
  for (const linkBytesPerSec of [12.5 * MB, 400 * MB, 10_000 * MB]) {
    assert.equal(p.choose({ linkBytesPerSec, sampleRatio: 0.1 }).codec, "none");
  }
});

Deno.test("probes go only to more thorough codecs: none once the most thorough is chosen", () => {
  const p = new CodecPolicy([LZ4, ZSTD3], 2);
  const picks = Array.from(
    { length: 64 },
    () => p.choose({ linkBytesPerSec: 12.5 * MB, sampleRatio: 0.4 }).codec,
  );
  assert.deepEqual(new Set(picks), new Set(["zstd"]), "lz4 cannot save more than zstd: never probed");
});
