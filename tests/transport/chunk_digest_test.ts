/** src/transport/chunk_digest.ts: the digest both ends compare before a transfer commits. */
import assert from "node:assert/strict";
import { xxh3Into } from "../../ffi/codec.ts";
import { ChunkDigests, RunningDigest } from "../../src/transport/chunk_digest.ts";
import { mulberry32 } from "./prng.ts";

/** A distinct, deterministic 8-byte checksum per chunk. */
function checksum(seq: number, salt = 0): Uint8Array {
  const rand = mulberry32(seq * 7919 + salt + 1);
  return Uint8Array.from({ length: 8 }, () => Math.floor(rand() * 256));
}

function digestOf(total: number, order: number[], tweak?: (seq: number) => Uint8Array): string {
  const d = new ChunkDigests(total);
  for (const seq of order) d.record(seq, tweak?.(seq) ?? checksum(seq));
  return d.digest();
}

function shuffled(n: number, seed: number): number[] {
  const rand = mulberry32(seed);
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

Deno.test("the digest does not depend on the order chunks were recorded in", () => {
  const inOrder = digestOf(50, shuffled(50, 0).sort((a, b) => a - b));
  for (const seed of [1, 2, 3, 4]) assert.equal(digestOf(50, shuffled(50, seed)), inOrder, `seed ${seed}`);
  assert.equal(digestOf(50, [...Array(50).keys()].reverse()), inOrder);
});

Deno.test("the digest is XXH3-64 of the checksums in chunk order, as 16 hex digits", () => {
  const table = new Uint8Array(3 * 8);
  for (let seq = 0; seq < 3; seq++) table.set(checksum(seq), seq * 8);
  const out = new Uint8Array(8);
  xxh3Into(table, out);
  const hex = Array.from(out, (b) => b.toString(16).padStart(2, "0")).join("");
  assert.equal(digestOf(3, [2, 0, 1]), hex);
  assert.match(hex, /^[0-9a-f]{16}$/);
});

Deno.test("changing any one chunk's checksum changes the digest", () => {
  const base = digestOf(20, shuffled(20, 5));
  for (let changed = 0; changed < 20; changed++) {
    const other = digestOf(20, shuffled(20, 5), (seq) => checksum(seq, seq === changed ? 1 : 0));
    assert.notEqual(other, base, `chunk ${changed}`);
  }
});

Deno.test("swapping two chunks' checksums changes the digest", () => {
  const base = digestOf(4, [0, 1, 2, 3]);
  const swapped = digestOf(4, [0, 1, 2, 3], (seq) => checksum(seq === 1 ? 2 : seq === 2 ? 1 : seq));
  assert.notEqual(swapped, base);
});

Deno.test("a chunk recorded twice counts once, and its latest checksum wins", () => {
  const d = new ChunkDigests(3);
  d.record(0, checksum(0));
  d.record(1, checksum(99)); // a retransmission replaces what was recorded for chunk 1
  d.record(1, checksum(1));
  d.record(1, checksum(1));
  assert.equal(d.recorded, 2);
  assert.equal(d.complete, false);
  d.record(2, checksum(2));
  assert.equal(d.recorded, 3);
  assert.equal(d.digest(), digestOf(3, [0, 1, 2]));
});

Deno.test("complete only when every chunk is recorded", () => {
  const d = new ChunkDigests(5);
  for (const seq of [4, 0, 3, 1]) {
    d.record(seq, checksum(seq));
    assert.equal(d.complete, false, `after ${seq}`);
  }
  d.record(2, checksum(2));
  assert.equal(d.complete, true);
  assert.equal(d.recorded, 5);
});

Deno.test("a transfer of no chunks is complete from the start", () => {
  const d = new ChunkDigests(0);
  assert.equal(d.complete, true);
  assert.match(d.digest(), /^[0-9a-f]{16}$/);
});

Deno.test("a chunk number outside the table is refused, not counted", () => {
  const d = new ChunkDigests(5);
  assert.throws(() => d.record(5, checksum(5)), RangeError);
  assert.throws(() => d.record(-1, checksum(0)), RangeError);
  assert.equal(d.recorded, 0);
});

function running(seqs: number[], salt = 0): RunningDigest {
  const d = new RunningDigest();
  for (const seq of seqs) d.fold(checksum(seq, salt));
  return d;
}

Deno.test("running digest: the same checksums in the same order give the same digest on two instances", () => {
  const seqs = shuffled(40, 9);
  const a = running(seqs), b = running(seqs);
  assert.equal(a.digest(), b.digest());
  assert.match(a.digest(), /^[0-9a-f]{16}$/);
  // Folding into one does not disturb the other.
  a.fold(checksum(99));
  assert.notEqual(a.digest(), b.digest());
  b.fold(checksum(99));
  assert.equal(a.digest(), b.digest());
});

Deno.test("running digest: order matters", () => {
  const base = running([0, 1, 2, 3]).digest();
  assert.notEqual(running([1, 0, 2, 3]).digest(), base);
  assert.notEqual(running([0, 1, 3, 2]).digest(), base);
  assert.notEqual(running([3, 2, 1, 0]).digest(), base);
});

Deno.test("running digest: every checksum and every extra fold counts", () => {
  const base = running([0, 1, 2, 3, 4]).digest();
  for (let changed = 0; changed < 5; changed++) {
    const d = new RunningDigest();
    for (let seq = 0; seq < 5; seq++) d.fold(checksum(seq, seq === changed ? 1 : 0));
    assert.notEqual(d.digest(), base, `chunk ${changed}`);
  }
  assert.notEqual(running([0, 1, 2, 3]).digest(), base, "a missing last chunk");
  assert.notEqual(running([0, 1, 2, 3, 4, 4]).digest(), base, "a chunk folded twice");
  // Identical checksums still change the state at each fold.
  const same = new RunningDigest();
  const seen = new Set([same.digest()]);
  for (let i = 0; i < 10; i++) {
    same.fold(checksum(7));
    seen.add(same.digest());
  }
  assert.equal(seen.size, 11);
});

Deno.test("running digest: count is the number of folds; digest() does not change the state", () => {
  const d = new RunningDigest();
  assert.equal(d.count, 0);
  const empty = d.digest();
  assert.equal(d.digest(), empty);
  for (let seq = 0; seq < 7; seq++) d.fold(checksum(seq));
  assert.equal(d.count, 7);
  const after = d.digest();
  assert.equal(d.digest(), after);
  assert.notEqual(after, empty);
  assert.equal(after, running([0, 1, 2, 3, 4, 5, 6]).digest());
});

Deno.test("running digest: each fold is XXH3-64 of the previous state and the checksum", () => {
  const state = new Uint8Array(16);
  for (const seq of [0, 1, 2]) {
    state.set(checksum(seq), 8);
    xxh3Into(state, state.subarray(0, 8));
  }
  const hex = Array.from(state.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
  assert.equal(running([0, 1, 2]).digest(), hex);
});

Deno.test("running digest: the fold does not keep a reference to the caller's checksum", () => {
  const sum = checksum(1);
  const d = new RunningDigest();
  d.fold(sum);
  sum.fill(0); // the sender reuses its frame buffer
  d.fold(checksum(2));
  assert.equal(d.digest(), running([1, 2]).digest());
});
