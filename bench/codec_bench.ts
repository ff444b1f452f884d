/**
 * HDE codec throughput through the shim: compress and decompress one 1 MiB chunk per iteration.
 * MB/s = 1.048576 / (time per iteration in ms) * 1000. Each compress bench's name carries the
 * compressed size as a share of the input, so speed and ratio read side by side.
 */
import { Codec, type CodecName, xxh3Into } from "../ffi/codec.ts";
import { xorshiftBytes } from "./random_bytes.ts";

const CHUNK = 1 << 20;

/** Log-like JSON lines, built deterministically: what metadata-heavy transfers look like. */
function textChunk(): Uint8Array {
  const ops = ["read", "write", "fsync", "unlink"];
  let text = "";
  for (let i = 0; text.length < CHUNK; i++) {
    text += `{"ts":${1_700_000_000_000 + i * 37},"host":"node-${i % 23}","op":"${ops[i % 4]}",` +
      `"path":"/var/lib/vm/disk-${i % 7}.qcow2","offset":${(i * 65_536) % 1e9},"latency_us":${
        (i * 7919) % 5000
      }}\n`;
  }
  return new TextEncoder().encode(text).subarray(0, CHUNK);
}

/** Incompressible bytes (xorshift32, fixed seed). */
function randomChunk(): Uint8Array {
  return xorshiftBytes(CHUNK);
}

const data = { text: textChunk(), random: randomChunk() };
const configs: { name: CodecName; level?: number; label: string }[] = [
  { name: "zstd", level: -1, label: "zstd -1" },
  { name: "zstd", level: 1, label: "zstd 1" },
  { name: "zstd", level: 3, label: "zstd 3" },
  { name: "lz4", label: "lz4" },
  { name: "snappy", label: "snappy" },
  { name: "none", label: "none" },
];

for (const [kind, src] of Object.entries(data)) {
  for (const { name, level, label } of configs) {
    const codec = new Codec(name, level);
    const packedBuf = new Uint8Array(Codec.bound(name, CHUNK));
    const packed = packedBuf.subarray(0, codec.compress(src, packedBuf));
    const out = new Uint8Array(CHUNK);
    const ratio = `${(packed.length / CHUNK * 100).toFixed(1)}%`;
    Deno.bench({
      name: `${label} compress 1 MiB ${kind} (→ ${ratio})`,
      group: `compress ${kind}`,
      baseline: name === "none",
      fn: () => void codec.compress(src, packedBuf),
    });
    Deno.bench({
      name: `${label} decompress 1 MiB ${kind}`,
      group: `decompress ${kind}`,
      baseline: name === "none",
      fn: () => void codec.decompress(packed, out),
    });
  }
}

const hash = new Uint8Array(8);
Deno.bench({
  name: "xxh3-64 over 1 MiB random",
  group: "checksum",
  fn: () => xxh3Into(data.random, hash),
});
