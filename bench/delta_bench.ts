/**
 * HDE page deltas through the shim, on a 1 MiB chunk of 4 KiB pages against its 1 MiB base per iteration:
 * MB/s = 1.048576 / (time per iteration in ms) * 1000 (MB of the chunk's raw bytes). Cases: unchanged
 * (every page equal to the base: compared and marked), 1 % uniform (41 bytes at random places in every
 * page, each a different random value: every page a delta), rewritten (unrelated random bytes: every page
 * found whole). deltaEncode and deltaDecode are the one FFI call per chunk; DeltaEncoder adds zstd on the
 * control and literal streams (level 12 up to 4 KiB, trying both literal forms there; else level 3) and the
 * payload layout (whole pages left raw). The same buffers serve every iteration, so they sit in the CPU caches.
 * Sizes are measured by bench/delta_sizes.ts.
 */
import { type DeltaBuffers, deltaDecode, deltaEncode, kindsBytes } from "../ffi/delta.ts";
import { DeltaEncoder } from "../src/encoding/page_delta.ts";
import { xorshiftBytes } from "./random_bytes.ts";

const CHUNK = 1 << 20;
const PAGE = 4096;
const CHANGED_BYTES = 41;

const base = xorshiftBytes(CHUNK, 42);

/** The base with CHANGED_BYTES distinct bytes of every page replaced (xorshift32, fixed seed). */
function uniformChanges(): Uint8Array {
  const out = base.slice();
  const noise = xorshiftBytes(CHUNK, 43);
  let k = 0;
  const next = () => noise[k++ % noise.length] << 8 | noise[k++ % noise.length];
  for (let page = 0; page < CHUNK; page += PAGE) {
    const seen = new Set<number>();
    while (seen.size < CHANGED_BYTES) seen.add(next() % PAGE);
    for (const i of seen) out[page + i] ^= 1 + next() % 255;
  }
  return out;
}

const cases: Record<string, Uint8Array> = {
  unchanged: base.slice(),
  "1 % uniform": uniformChanges(),
  rewritten: xorshiftBytes(CHUNK, 44),
};

const bufs: DeltaBuffers = {
  kinds: new Uint8Array(kindsBytes(CHUNK, PAGE)),
  ctrl: new Uint8Array(CHUNK),
  lits: new Uint8Array(CHUNK),
  whole: new Uint8Array(CHUNK),
};
const out = new Uint8Array(CHUNK);
const encoder = new DeltaEncoder(CHUNK, 0);

for (const [name, chunk] of Object.entries(cases)) {
  const r = deltaEncode(chunk, base, PAGE, bufs);
  const sections: DeltaBuffers = {
    kinds: bufs.kinds.slice(),
    ctrl: bufs.ctrl.slice(0, r.ctrlBytes),
    lits: bufs.lits.slice(0, r.litBytes),
    whole: bufs.whole.slice(0, r.wholeBytes),
  };
  Deno.bench({
    name: `deltaEncode 1 MiB ${name}`,
    group: name,
    baseline: true,
    fn: () => void deltaEncode(chunk, base, PAGE, bufs),
  });
  Deno.bench({
    name: `deltaDecode 1 MiB ${name}`,
    group: name,
    fn: () => void deltaDecode(sections, base, PAGE, CHUNK, out),
  });
  Deno.bench({
    name: `DeltaEncoder.encode 1 MiB ${name} (+zstd on the streams)`,
    group: name,
    fn: async () => void await encoder.encode(chunk, CHUNK, base, () => "none"),
  });
}
