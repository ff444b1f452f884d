/** ffi/cdc.ts over the real shim: cuts against a reference written from the spec, pinned cuts, bad input. */
import assert from "node:assert/strict";
import { CDC_STATE_BYTES, cdcCuts, type CdcSizes, cutCapacity } from "../../ffi/cdc.ts";
import { ShimError } from "../../ffi/library.ts";

const EINVAL = -1;
const ENOSPC = -2;
const M64 = (1n << 64n) - 1n;

/** Deterministic generator (xorshift32), so a failure reproduces with the same seed. */
function randomBytes(n: number, seed: number): Uint8Array {
  let x = seed >>> 0 || 1;
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** gear[b] = the (b+1)-th output of splitmix64 seeded with "dwcpcdc1", as c-shim/cdc.c documents. */
function gearTable(): bigint[] {
  let x = 0x6477637063646331n;
  const table: bigint[] = [];
  for (let i = 0; i < 256; i++) {
    x = (x + 0x9e3779b97f4a7c15n) & M64;
    let z = x;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
    table.push(z ^ (z >> 31n));
  }
  return table;
}

const GEAR = gearTable();

/** The documented rule, one byte at a time: the end offsets of every chunk that ends inside data. */
function referenceCuts(data: Uint8Array, sizes: CdcSizes): number[] {
  const bits = BigInt(Math.log2(sizes.avgBytes));
  const top = (n: bigint) => (M64 << (64n - n)) & M64;
  const maskS = top(bits + 2n);
  const maskL = top(bits - 2n);
  const cuts: number[] = [];
  let n = 0;
  let h = 0n;
  for (let i = 0; i < data.length; i++) {
    n++;
    if (n < sizes.minBytes) continue;
    h = ((h << 1n) + GEAR[data[i]]) & M64;
    const mask = n <= sizes.avgBytes ? maskS : maskL;
    if ((h & mask) === 0n || n === sizes.maxBytes) {
      cuts.push(i + 1);
      n = 0;
      h = 0n;
    }
  }
  return cuts;
}

function shimCuts(data: Uint8Array, sizes: CdcSizes): number[] {
  const cuts = new Uint32Array(cutCapacity(data.length, sizes.minBytes));
  const count = cdcCuts(data, sizes, new Uint8Array(CDC_STATE_BYTES), cuts);
  return [...cuts.subarray(0, count)];
}

const SMALL: CdcSizes = { minBytes: 256, avgBytes: 1024, maxBytes: 4096 };
const VM: CdcSizes = { minBytes: 4096, avgBytes: 16384, maxBytes: 65536 };

Deno.test("the shim cuts where the documented rule cuts, on random data", () => {
  for (const [sizes, seed] of [[SMALL, 1], [SMALL, 2], [VM, 3]] as const) {
    const data = randomBytes(sizes === VM ? 1 << 20 : 256 << 10, seed);
    const expected = referenceCuts(data, sizes);
    assert.ok(expected.length > 20, `${expected.length} cuts are too few to compare`);
    assert.deepEqual(shimCuts(data, sizes), expected);
  }
});

Deno.test("runs with no cut point are cut at maxBytes, and no chunk is shorter than minBytes", () => {
  // Zeros hash to a constant after 64 bytes; this table's constant has top bits set, so only max cuts.
  const zeros = new Uint8Array(10 * 4096 + 100);
  assert.deepEqual(shimCuts(zeros, SMALL), referenceCuts(zeros, SMALL));
  assert.deepEqual(shimCuts(zeros, SMALL), [
    4096,
    8192,
    12288,
    16384,
    20480,
    24576,
    28672,
    32768,
    36864,
    40960,
  ]);

  const data = randomBytes(1 << 20, 9);
  let prev = 0;
  for (const cut of shimCuts(data, SMALL)) {
    assert.ok(cut - prev >= SMALL.minBytes && cut - prev <= SMALL.maxBytes, `chunk of ${cut - prev} bytes`);
    prev = cut;
  }
});

Deno.test("cut points are pinned: a change to the gear table or the rule would orphan every stored chunk", () => {
  const cuts = shimCuts(randomBytes(1 << 20, 42), VM);
  assert.deepEqual(cuts.slice(0, 8), PINNED_FIRST_CUTS);
  assert.equal(cuts.length, PINNED_CUT_COUNT);
});

Deno.test("state carries an open chunk across calls: any split gives the same cuts", () => {
  const data = randomBytes(300_000, 7);
  const whole = shimCuts(data, SMALL);
  for (const split of [1, 255, 256, 1023, 4095, 4096, 150_000]) {
    const state = new Uint8Array(CDC_STATE_BYTES);
    const cuts = new Uint32Array(cutCapacity(data.length, SMALL.minBytes));
    const found: number[] = [];
    for (const [from, to] of [[0, split], [split, data.length]]) {
      const count = cdcCuts(data.subarray(from, to), SMALL, state, cuts);
      for (let i = 0; i < count; i++) found.push(from + cuts[i]);
    }
    assert.deepEqual(found, whole, `split at ${split}`);
  }
});

Deno.test("bad sizes, a short cut buffer and a foreign state are refused with the reason", () => {
  const data = randomBytes(10_000, 5);
  const state = new Uint8Array(CDC_STATE_BYTES);
  const refuse = (sizes: CdcSizes, status: number, text: RegExp, cuts = new Uint32Array(1000)) =>
    assert.throws(() => cdcCuts(data, sizes, state, cuts), (err: unknown) => {
      assert.ok(err instanceof ShimError);
      assert.equal(err.status, status);
      assert.match(err.message, text);
      return true;
    });
  refuse(
    { minBytes: 32, avgBytes: 1024, maxBytes: 4096 },
    EINVAL,
    /min 32 avg 1024 max 4096: need 64 <= min/,
  );
  refuse({ minBytes: 256, avgBytes: 1000, maxBytes: 4096 }, EINVAL, /avg a power of two/);
  refuse({ minBytes: 2048, avgBytes: 1024, maxBytes: 4096 }, EINVAL, /min < avg < max/);
  refuse({ minBytes: 256, avgBytes: 1024, maxBytes: 32 << 20 }, EINVAL, /max <= 16777216/);
  refuse(SMALL, ENOSPC, /cut buffer holds 39 entries, 10000 bytes may need 40/, new Uint32Array(39));
  // A state whose open chunk is already past max was not written by a chunker with these sizes.
  new DataView(state.buffer).setUint32(8, 5000, true);
  refuse(SMALL, EINVAL, /open chunk has 5000 bytes, max is 4096/);
  assert.throws(
    () => cdcCuts(data, SMALL, new Uint8Array(8), new Uint32Array(1000)),
    /state is 8 bytes, must be 16/,
  );
});

/** From this build's first run; the reference test above shows they follow the documented rule. */
const PINNED_FIRST_CUTS = [16476, 34930, 52377, 78201, 100444, 123761, 141098, 165648];
const PINNED_CUT_COUNT = 54;
