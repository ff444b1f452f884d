/** src/encoding/codec_policy.ts: raw on links faster than the compressors, ratio on slow links. */
import assert from "node:assert/strict";
import { CodecPolicy } from "../../src/encoding/codec_policy.ts";

const MB = 1e6;

Deno.test("a link faster than every compressor gets raw chunks", () => {
  const p = new CodecPolicy(["lz4", "zstd"], 2);
  assert.equal(p.choose({ linkBytesPerSec: 10_000 * MB, sampleRatio: 0.3 }).codec, "none");
});

Deno.test("incompressible data goes raw whatever the link", () => {
  const p = new CodecPolicy(["lz4", "zstd"], 2);
  assert.equal(p.choose({ linkBytesPerSec: 10 * MB, sampleRatio: 1 }).codec, "none");
});

Deno.test("a slow link with compressible data spends CPU for ratio (zstd)", () => {
  const p = new CodecPolicy(["lz4", "zstd"], 2);
  const c = p.choose({ linkBytesPerSec: 12 * MB, sampleRatio: 0.4 });
  assert.equal(c.codec, "zstd");
  assert.ok(c.expectedBytesPerSec > 12 * MB / 0.4);
});

Deno.test("a link between the compressors' speeds takes the fast codec", () => {
  const p = new CodecPolicy(["lz4", "zstd"], 1);
  // zstd at ~600 MB/s on one worker caps below what lz4 delivers over a 900 MB/s link.
  assert.equal(p.choose({ linkBytesPerSec: 900 * MB, sampleRatio: 0.5 }).codec, "lz4");
});

Deno.test("measurements move the choice: a slow compressor here loses to raw", () => {
  const p = new CodecPolicy(["zstd"], 1);
  assert.equal(p.choose({ linkBytesPerSec: 200 * MB, sampleRatio: 0.5 }).codec, "zstd");
  for (let i = 0; i < 50; i++) p.observe("zstd", 1_000_000, 500_000, 20, 0.5); // 50 MB/s measured
  assert.equal(p.choose({ linkBytesPerSec: 200 * MB, sampleRatio: 0.5 }).codec, "none");
  const snap = p.snapshot();
  assert.ok(snap.codecs.zstd.compressBytesPerSec < 60 * MB);
  assert.deepEqual(snap.chosen, { zstd: 1, none: 1 });
  assert.equal(snap.last?.codec, "none");
});

Deno.test("a codec that lost on an early estimate is probed again and can win back", () => {
  const p = new CodecPolicy(["lz4", "zstd"], 2);
  const link = { linkBytesPerSec: 12 * MB, sampleRatio: 0.6 };
  // zstd looked poor at first: learned to save barely more than lz4's sample.
  for (let i = 0; i < 30; i++) p.observe("zstd", 1_000_000, 560_000, 3, 0.6);
  const first = Array.from({ length: 32 }, () => p.choose(link).codec);
  assert.ok(first.includes("zstd"), "zstd is still probed now and then");
  // The probes show zstd saves much more than the sample suggested: it wins again.
  for (let i = 0; i < 30; i++) p.observe("zstd", 1_000_000, 250_000, 3, 0.6);
  assert.equal(p.choose(link).codec, "zstd");
});
