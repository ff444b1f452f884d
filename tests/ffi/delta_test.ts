/** ffi/delta.ts over the real shim: page-delta round trips, the stream format, and hostile input. */
import assert from "node:assert/strict";
import {
  type DeltaBuffers,
  deltaDecode,
  deltaEncode,
  kindsBytes,
  type LiteralForm,
  type PageCounts,
  PageKind,
  xxh3_128Fold,
} from "../../ffi/delta.ts";
import { ShimError } from "../../ffi/library.ts";
import { mulberry32, randInt } from "../transport/prng.ts";

const ECORRUPT = -3;
const ENOSPC = -2;
const EINVAL = -1;
const KiB = 1024;

/** Random bytes with no zero byte, so no page of them is a zero page. */
function dataBytes(n: number, seed: number): Uint8Array {
  const rand = mulberry32(seed);
  return Uint8Array.from({ length: n }, () => 1 + Math.floor(rand() * 255));
}

interface Encoded {
  /** lits XOR the base; news the same literals as the new bytes. */
  sections: Required<DeltaBuffers>;
  counts: PageCounts;
}

function encode(src: Uint8Array, base: Uint8Array, pageSize: number): Encoded {
  const bufs = {
    kinds: new Uint8Array(kindsBytes(src.length, pageSize)),
    ctrl: new Uint8Array(src.length),
    lits: new Uint8Array(src.length),
    news: new Uint8Array(src.length),
    whole: new Uint8Array(src.length),
  };
  const r = deltaEncode(src, base, pageSize, bufs);
  return {
    sections: {
      kinds: bufs.kinds,
      ctrl: bufs.ctrl.slice(0, r.ctrlBytes),
      lits: bufs.lits.slice(0, r.litBytes),
      news: bufs.news.slice(0, r.litBytes),
      whole: bufs.whole.slice(0, r.wholeBytes),
    },
    counts: { unchanged: r.unchanged, zero: r.zero, delta: r.delta, whole: r.whole },
  };
}

/**
 * Decodes with the literals in form (the XOR ones, or the new ones in their place) into a buffer with guard
 * bytes past len, and checks the guard is untouched.
 */
function decode(
  e: Encoded,
  base: Uint8Array,
  pageSize: number,
  len: number,
  form: LiteralForm = "xor",
): Uint8Array {
  const GUARD = 64;
  const dst = new Uint8Array(len + GUARD).fill(0xa5);
  const sections = form === "xor" ? e.sections : { ...e.sections, lits: e.sections.news };
  try {
    const counts = deltaDecode(sections, base, pageSize, len, dst, form);
    assert.deepEqual(counts, e.counts, "decode counts the pages encode counted");
    return dst.slice(0, len);
  } finally {
    assert.ok(dst.subarray(len).every((b) => b === 0xa5), "nothing is written past len");
  }
}

/** Bytes the delta pages take: control and literal streams together. */
const deltaBytes = (e: Encoded) => e.sections.ctrl.length + e.sections.lits.length;

function kindOf(kinds: Uint8Array, page: number): number {
  return kinds[page >> 2] >> (2 * (page & 3)) & 3;
}

/** Encodes and decodes with the literals in either form. */
function roundTrip(src: Uint8Array, base: Uint8Array, pageSize: number): Encoded {
  const e = encode(src, base, pageSize);
  assert.deepEqual(decode(e, base, pageSize, src.length, "xor"), src, "decodes with XOR literals");
  assert.deepEqual(decode(e, base, pageSize, src.length, "new"), src, "decodes with new-byte literals");
  return e;
}

for (const pageSize of [4 * KiB, 64 * KiB]) {
  Deno.test(`${pageSize / KiB} KiB pages: random changes of every density round-trip`, () => {
    const rand = mulberry32(pageSize);
    const pages = 16;
    const base = dataBytes(pages * pageSize, pageSize + 1);
    for (const density of [0, 0.0001, 0.001, 0.01, 0.1, 0.5, 0.9, 1]) {
      const src = base.slice();
      for (let i = 0; i < src.length; i++) if (rand() < density) src[i] ^= 1 + Math.floor(rand() * 255);
      const e = roundTrip(src, base, pageSize);
      const total = e.counts.unchanged + e.counts.zero + e.counts.delta + e.counts.whole;
      assert.equal(total, pages);
      if (density === 0) assert.equal(e.counts.unchanged, pages);
      if (density === 1) assert.equal(e.counts.whole, pages, "a page changed everywhere travels whole");
    }
  });

  Deno.test(`${pageSize / KiB} KiB pages: no page changed, all changed, only the last byte changed`, () => {
    const base = dataBytes(4 * pageSize, 7);
    const none = roundTrip(base.slice(), base, pageSize);
    assert.deepEqual(none.counts, { unchanged: 4, zero: 0, delta: 0, whole: 0 });
    assert.equal(deltaBytes(none) + none.sections.whole.length, 0);

    const all = base.map((b) => b ^ 0xff);
    const allEnc = roundTrip(all, base, pageSize);
    assert.deepEqual(allEnc.counts, { unchanged: 0, zero: 0, delta: 0, whole: 4 });
    assert.equal(allEnc.sections.whole.length, 4 * pageSize);

    const last = base.slice();
    last[last.length - 1] ^= 0x01;
    const lastEnc = roundTrip(last, base, pageSize);
    assert.deepEqual(lastEnc.counts, { unchanged: 3, zero: 0, delta: 1, whole: 0 });
    // run count, the run's token, the rest of its word distance (2 bytes at 64 KiB), the byte
    assert.ok(deltaBytes(lastEnc) <= 5, `one changed byte costs ${deltaBytes(lastEnc)} bytes`);
  });

  Deno.test(`${pageSize / KiB} KiB pages: a partial last page, a base shorter than the chunk, no base`, () => {
    const base = dataBytes(3 * pageSize, 11);
    const src = base.slice(0, 2 * pageSize + 100);
    src[5] ^= 0x10;
    src[2 * pageSize + 99] ^= 0x20; // the partial last page changes in its last byte
    const e = roundTrip(src, base, pageSize);
    assert.deepEqual(e.counts, { unchanged: 1, zero: 0, delta: 2, whole: 0 });

    const shortBase = base.subarray(0, pageSize + pageSize / 2); // covers page 0 only
    const longer = dataBytes(3 * pageSize, 12);
    longer.set(shortBase.subarray(0, pageSize));
    const s = roundTrip(longer, shortBase, pageSize);
    assert.deepEqual(
      s.counts,
      { unchanged: 1, zero: 0, delta: 0, whole: 2 },
      "pages past the base travel whole",
    );

    const empty = roundTrip(longer, new Uint8Array(), pageSize);
    assert.equal(empty.counts.whole, 3);
  });
}

Deno.test("zero pages travel as zero whatever the base holds; an empty chunk encodes to nothing", () => {
  const base = dataBytes(3 * 4096, 3);
  const src = base.slice();
  src.fill(0, 4096, 8192);
  const e = roundTrip(src, base, 4096);
  assert.deepEqual(e.counts, { unchanged: 2, zero: 1, delta: 0, whole: 0 });
  assert.equal(kindOf(e.sections.kinds, 1), PageKind.Zero);
  const empty = roundTrip(new Uint8Array(), base, 4096);
  assert.equal(empty.sections.kinds.length, 0);
});

Deno.test("the stream format: run count, then a token of word distance, lane and length class per run", () => {
  const base = dataBytes(4096, 5);
  const src = base.slice();
  src[3] ^= 0x01; // word 0 from the page start's word 0, lane 3, length 1: 0 << 5 | 3 << 2 | 0 = 12
  src[20] ^= 0x02; // word 2 from the previous end (4)'s word 0, lane 4: 2 << 5 | 16 = 80
  src[22] ^= 0x04; // in 21's word, lane 6: 24 (runs are never merged across an equal byte)
  for (let i = 100; i < 140; i++) src[i] ^= 0x80; // 10 words on, lane 4, 40 long: 7 << 5 | 16 | 3, 10 - 7, 40 - 4
  const e = encode(src, base, 4096);
  assert.equal(kindOf(e.sections.kinds, 0), PageKind.Delta);
  assert.deepEqual([...e.sections.ctrl], [4, 12, 80, 24, 243, 3, 36]);
  assert.deepEqual([...e.sections.lits], [0x01, 0x02, 0x04, ...Array(40).fill(0x80)]);
  // The same literals as new bytes: the page's bytes at the runs.
  assert.deepEqual([...e.sections.news], [src[3], src[20], src[22], ...src.subarray(100, 140)]);
});

Deno.test("a page whose delta would not be smaller than the page travels whole", () => {
  const base = dataBytes(4096, 8);
  const every2 = base.slice();
  for (let i = 0; i < 4096; i += 2) every2[i] ^= 0x01; // 2048 runs: 2 + 2048 control + 2048 literal bytes
  assert.equal(encode(every2, base, 4096).counts.whole, 1);
  const every3 = base.slice();
  for (let i = 0; i < 4096; i += 3) every3[i] ^= 0x01; // 1366 runs: 2 + 1366 + 1366 bytes
  const e = encode(every3, base, 4096);
  assert.equal(e.counts.delta, 1);
  assert.equal(deltaBytes(e), 2 + 2 * 1366);
});

Deno.test("random sections never crash, never write past len, and fail with ECORRUPT", () => {
  const rand = mulberry32(99);
  const base = dataBytes(8 * 4096, 21);
  const bytes = (n: number) => Uint8Array.from({ length: n }, () => Math.floor(rand() * 256));
  let rejected = 0;
  for (let round = 0; round < 3000; round++) {
    const len = randInt(rand, 1, 8 * 4096);
    const sections = {
      kinds: bytes(kindsBytes(len, 4096)),
      ctrl: bytes(randInt(rand, 0, 100)),
      lits: bytes(randInt(rand, 0, 300)),
      whole: new Uint8Array(randInt(rand, 0, 3) * 4096),
    };
    const baseLen = randInt(rand, 0, base.length);
    const dst = new Uint8Array(len + 32).fill(0xa5);
    try {
      deltaDecode(sections, base.subarray(0, baseLen), 4096, len, dst, round % 2 ? "new" : "xor");
    } catch (err) {
      assert.ok(err instanceof ShimError, String(err));
      assert.equal(err.status, ECORRUPT, err.message);
      rejected++;
    }
    assert.ok(dst.subarray(len).every((b) => b === 0xa5), `round ${round} wrote past len`);
  }
  assert.ok(rejected > 2900, `${rejected} of 3000 random inputs were rejected`);
});

Deno.test("every truncation and every bit flip of a valid control stream is handled", () => {
  const base = dataBytes(4 * 4096, 31);
  const src = base.slice();
  const rand = mulberry32(4);
  for (let i = 0; i < 200; i++) src[randInt(rand, 0, src.length - 4097)] ^= 1 + Math.floor(rand() * 255);
  for (let i = 8000; i < 8300; i++) src[i] ^= 0x40; // a long run: a length varint of 2 bytes
  const e = encode(src, base, 4096);
  assert.ok(e.counts.delta >= 3, JSON.stringify(e.counts));
  const { ctrl, lits } = e.sections;
  for (let cut = 0; cut < ctrl.length; cut++) {
    assert.throws(
      () =>
        decode({ ...e, sections: { ...e.sections, ctrl: ctrl.subarray(0, cut) } }, base, 4096, src.length),
      (err: ShimError) => err.status === ECORRUPT,
      `a control stream cut at ${cut} bytes`,
    );
  }
  for (let cut = 0; cut < lits.length; cut += 7) {
    assert.throws(
      () =>
        decode({ ...e, sections: { ...e.sections, lits: lits.subarray(0, cut) } }, base, 4096, src.length),
      (err: ShimError) => err.status === ECORRUPT,
      `a literal stream cut at ${cut} bytes`,
    );
  }
  for (let bit = 0; bit < ctrl.length * 8; bit++) {
    const bad = ctrl.slice();
    bad[bit >> 3] ^= 1 << (bit & 7);
    const dst = new Uint8Array(src.length + 16).fill(0xa5);
    try {
      deltaDecode({ ...e.sections, ctrl: bad }, base, 4096, src.length, dst);
      // A flip may leave streams that decode, to other bytes: the frame checksum catches those.
    } catch (err) {
      assert.equal((err as ShimError).status, ECORRUPT);
    }
    assert.ok(dst.subarray(src.length).every((b) => b === 0xa5), `flip of bit ${bit} wrote past len`);
  }
});

Deno.test("a kind map that lies about the base, the sections or the page count is refused", () => {
  const base = dataBytes(2 * 4096, 41);
  const src = base.slice();
  src[10] ^= 1;
  const e = encode(src, base, 4096);
  const dst = new Uint8Array(src.length);
  const corrupt = (sections: Partial<DeltaBuffers>, b: Uint8Array, what: string) =>
    assert.throws(
      () => deltaDecode({ ...e.sections, ...sections }, b, 4096, src.length, dst),
      (err: ShimError) => err.status === ECORRUPT && err.message.length > 0,
      what,
    );
  corrupt({}, base.subarray(0, 4096), "a base shorter than the pages that use it");
  corrupt({ whole: new Uint8Array(1) }, base, "whole bytes no page uses");
  corrupt({ lits: new Uint8Array(2) }, base, "literal bytes no run uses");
  corrupt({ ctrl: Uint8Array.of(...e.sections.ctrl, 0) }, base, "control bytes no page uses");
  corrupt({ ctrl: Uint8Array.of(0) }, base, "a delta page with no runs");
  corrupt({ kinds: Uint8Array.of(0x40) }, base, "page 3 of 2 marked");
  corrupt({ kinds: new Uint8Array(2) }, base, "a kind map too long");
  corrupt({ kinds: Uint8Array.of(0x0f) }, base, "whole pages missing");
  assert.throws(
    () => deltaDecode(e.sections, base, 4096, src.length, new Uint8Array(100)),
    (err: ShimError) => err.status === ENOSPC,
  );
  assert.throws(
    () => deltaDecode(e.sections, base, 3000, src.length, dst),
    (err: ShimError) => err.status === EINVAL && /3000/.test(err.message),
  );
});

Deno.test("encode refuses buffers that could not hold the sections", () => {
  const src = dataBytes(4096, 1);
  const fits = {
    kinds: new Uint8Array(1),
    ctrl: new Uint8Array(4096),
    lits: new Uint8Array(4096),
    whole: new Uint8Array(4096),
  };
  assert.throws(
    () => deltaEncode(src, src, 4096, { ...fits, lits: new Uint8Array(100) }),
    (err: ShimError) => err.status === ENOSPC && /4096/.test(err.message),
  );
  assert.throws(
    () => deltaEncode(src, src, 4096, { ...fits, news: new Uint8Array(100) }),
    (err: ShimError) => err.status === ENOSPC && /new-literal/.test(err.message),
  );
  assert.throws(
    () => deltaEncode(src, src, 4096, { ...fits, kinds: new Uint8Array(0) }),
    (err: ShimError) => err.status === ENOSPC,
  );
});

Deno.test("the folded XXH3-128 depends on every piece and their order", () => {
  const hashOf = (...pieces: Uint8Array[]) => {
    const acc = new Uint8Array(16);
    for (const p of pieces) xxh3_128Fold(acc, p);
    return Array.from(acc, (b) => b.toString(16).padStart(2, "0")).join("");
  };
  const a = dataBytes(1000, 1), b = dataBytes(1000, 2);
  assert.equal(hashOf(a, b), hashOf(a.slice(), b.slice()));
  assert.notEqual(hashOf(a, b), hashOf(b, a));
  assert.notEqual(hashOf(a), hashOf(a, new Uint8Array()));
  assert.match(hashOf(a), /^[0-9a-f]{32}$/);
  assert.throws(() => xxh3_128Fold(new Uint8Array(8), a), RangeError);
});
