/**
 * Page-delta sizes (c-shim/delta.c, src/encoding/page_delta.ts), beside the seed report's figure: "a 4 KiB
 * page with 1 % changed bytes as a 40-byte delta". A script, not a `deno bench` file: it boots a guest.
 *
 *   deno run --allow-all bench/delta_sizes.ts [--pages 2000] [--no-guest] [--memory-mib 512]
 *     [--fill-mib 192] [--dirty-mibps 4] [--interval-s 10] [--intervals 4] [--out results.json]
 *
 * Synthetic pages: a base page of random bytes, and a newer version made by one change model at 0.1 %,
 * 1 % and 10 % of the page's bytes (k = round(fraction × page bytes): 4, 41, 410 at 4 KiB; 66, 655, 6554
 * at 64 KiB). --pages pairs per row (a tenth of that at 64 KiB), fixed seeds.
 *   uniform   k byte positions uniformly at random, each byte replaced by a different random value
 *   words     round(k / 8) aligned 8-byte words, each rewritten with a random value (pointers, fields)
 *   counters  aligned little-endian 64-bit counters at random places, each incremented by 1, until k
 *             bytes differ (a carry changes more than the low byte now and then)
 *   struct    one run of k consecutive bytes at a random offset, each replaced (a struct rewritten)
 *   stats     adjacent 64-bit counters from a random start, each incremented by 1, until k bytes differ
 *             (a block of statistics updated together)
 * Floor: the information-theoretic least bytes any encoding needs for a change drawn from the model
 * (choose the positions, then the new values): uniform log2 C(n, k) + k log2 255 bits; words
 * log2 C(n / 8, w) + 64 w; counters log2 C(n / 8, c) + 2 c (an increment by 1 of a random counter
 * flips the low t + 1 bits with t geometric: 2 bits of entropy); struct log2(n − k + 1) + k log2 255;
 * stats log2(n / 8 − c + 1) + 2 c.
 *
 * Columns: changed = bytes that differ per page (mean); delta = the page's control and literal stream
 * bytes as delta.c writes them (XOR, runs of equal bytes left out; no codec), mean / p50 / p99; whole =
 * pages whose streams would not be smaller than the page (they travel whole, and count as a page's bytes
 * in the delta columns); +zstd = the mean payload bytes per page once the pages of 1 MiB chunks go
 * through DeltaEncoder (zstd on each stream, level 12 up to 4 KiB; the 12-byte header and the 2-bit kind
 * map included): the figure that travels; zstd alone = zstd 3 on the bare XOR of each 1 MiB chunk (no run
 * step), per page, to show what each stage contributes.
 *
 * Real pages: the test guest (tests/support/guest_image.ts) under TCG holding --fill-mib of data that its
 * workload rewrites at --dirty-mibps, saved with QMP pmemsave --intervals + 1 times, --interval-s apart;
 * every 4 KiB and 64 KiB page of the second dump against the same page of the first: how many pages are
 * unchanged, zero, delta (whenever smaller than the page) or whole, how much of each changed page changed
 * (histogram), the control + literal bytes of the delta pages (all, those with at most 10 % and with at
 * most 1 % changed: the seed report's case, on real pages, before the streams' zstd), and the payload of
 * the whole dump: ChunkEncoder (zero pages, then the codec) without deltas, and DeltaEncoder against the
 * first dump with a page sent as a delta only below 256, 128 or 64 256ths of it, whole pages raw or zstd 3.
 * Then, interval by interval, the pages with about 1 % changed (0.5 to 1.5 %) packed 1 MiB at a time
 * through DeltaEncoder: their payload per page after zstd. A 10 s interval holds about 50 such 4 KiB pages,
 * so they share one chunk, and the chunk's fixed costs (header, zstd frames and tables) weigh more than in
 * the synthetic rows' full chunks. The workload comes round to its first block after fill / dirty seconds
 * (48 s by default) and rewrites its own pages with data much like theirs: intervals past that count
 * hundreds of such pages changed alike, which pack to 13 to 33 bytes each, so the default stops short of it.
 *
 * Speed: bench/delta_bench.ts (deno bench). Progress goes to stderr, tables to stdout; --out writes every
 * figure as JSON.
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Codec } from "../ffi/codec.ts";
import { type DeltaBuffers, deltaEncode, kindsBytes } from "../ffi/delta.ts";
import { ChunkEncoder } from "../src/encoding/chunk_codec.ts";
import { DeltaEncoder } from "../src/encoding/page_delta.ts";
import { BenchGuest, MAX_MEMORY_MIB } from "./guest_memory.ts";
import { xorshiftBytes } from "./random_bytes.ts";
import { intArg, log } from "./cli_args.ts";

const KiB = 1024, MiB = 1024 * KiB;
const CHUNK = MiB;
const SEED_REPORT_BYTES = 40;

const { values: args } = parseArgs({
  options: {
    pages: { type: "string", default: "2000" },
    "no-guest": { type: "boolean", default: false },
    "memory-mib": { type: "string", default: "512" },
    "fill-mib": { type: "string", default: "192" },
    "dirty-mibps": { type: "string", default: "4" },
    "interval-s": { type: "string", default: "10" },
    intervals: { type: "string", default: "4" },
    out: { type: "string" },
  },
});

const pagesPerRow = intArg("pages", args.pages, 10, 1_000_000);
const memoryMiB = intArg("memory-mib", args["memory-mib"], 128, MAX_MEMORY_MIB);
const fillMib = intArg("fill-mib", args["fill-mib"], 1, memoryMiB - 64);
const dirtyMibps = intArg("dirty-mibps", args["dirty-mibps"], 0, 1024);
const intervalS = intArg("interval-s", args["interval-s"], 1, 3600);
const intervals = intArg("intervals", args.intervals, 1, 60);

// ---- change models --------------------------------------------------------------------------------

function xorshift(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

/** k distinct integers in [0, n), by a partial Fisher-Yates over a lazily built permutation. */
function distinct(next: () => number, n: number, k: number): number[] {
  const swapped = new Map<number, number>();
  const out: number[] = [];
  for (let i = 0; i < k; i++) {
    const j = i + next() % (n - i);
    const vj = swapped.get(j) ?? j;
    swapped.set(j, swapped.get(i) ?? i);
    out.push(vj);
  }
  return out;
}

/** A byte that differs from b. */
const otherByte = (next: () => number, b: number) => (b + 1 + next() % 255) & 0xff;

function incrementCounter(page: Uint8Array, word: number): void {
  for (let i = word * 8; i < word * 8 + 8; i++) {
    page[i] = (page[i] + 1) & 0xff;
    if (page[i] !== 0) return; // no carry into the next byte
  }
}

function countChanged(a: Uint8Array, b: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) n++;
  return n;
}

interface Model {
  name: string;
  /** Makes the newer version of base in place (page is a copy of base). */
  apply(page: Uint8Array, base: Uint8Array, k: number, next: () => number): void;
  /** Least bits any encoding needs on average for this model at page size n and k changed bytes. */
  floorBits(n: number, k: number): number;
}

/** log2 of the binomial coefficient C(n, k). */
function log2Choose(n: number, k: number): number {
  let s = 0;
  for (let i = 1; i <= k; i++) s += Math.log2((n - k + i) / i);
  return s;
}

/** Counters incremented (at the given word indices, in order) until k bytes differ; returns how many. */
function incrementUntil(page: Uint8Array, base: Uint8Array, k: number, words: () => number): number {
  let changed = 0, c = 0;
  while (changed < k) {
    const w = words();
    const before = countChanged(page.subarray(w * 8, w * 8 + 8), base.subarray(w * 8, w * 8 + 8));
    incrementCounter(page, w);
    changed += countChanged(page.subarray(w * 8, w * 8 + 8), base.subarray(w * 8, w * 8 + 8)) - before;
    c++;
  }
  return c;
}

const MODELS: Model[] = [
  {
    name: "uniform",
    apply(page, _base, k, next) {
      for (const i of distinct(next, page.length, k)) page[i] = otherByte(next, page[i]);
    },
    floorBits: (n, k) => log2Choose(n, k) + k * Math.log2(255),
  },
  {
    name: "words",
    apply(page, _base, k, next) {
      for (const w of distinct(next, page.length / 8, Math.max(1, Math.round(k / 8)))) {
        for (let i = w * 8; i < w * 8 + 8; i++) page[i] = next() & 0xff;
      }
    },
    floorBits: (n, k) => {
      const w = Math.max(1, Math.round(k / 8));
      return log2Choose(n / 8, w) + 64 * w;
    },
  },
  {
    name: "counters",
    apply(page, base, k, next) {
      const order = distinct(next, page.length / 8, page.length / 8);
      let i = 0;
      incrementUntil(page, base, k, () => order[i++]);
    },
    // About one counter per changed byte (a carry is 1 in 256).
    floorBits: (n, k) => log2Choose(n / 8, k) + 2 * k,
  },
  {
    name: "struct",
    apply(page, _base, k, next) {
      const start = next() % (page.length - k + 1);
      for (let i = start; i < start + k; i++) page[i] = otherByte(next, page[i]);
    },
    floorBits: (n, k) => Math.log2(n - k + 1) + k * Math.log2(255),
  },
  {
    name: "stats",
    apply(page, base, k, next) {
      const words = page.length / 8;
      let w = next() % Math.max(1, words - Math.ceil(k * 1.01));
      incrementUntil(page, base, k, () => w++ % words);
    },
    floorBits: (n, k) => Math.log2(n / 8 - k + 1) + 2 * k,
  },
];

// ---- measuring --------------------------------------------------------------------------------------

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function mean(xs: number[]): number {
  return xs.reduce((s, x) => s + x, 0) / xs.length;
}

/** The control and literal bytes of one page's delta; undefined when the page would not be a delta page. */
function deltaBytesOf(page: Uint8Array, base: Uint8Array, bufs: DeltaBuffers): number | undefined {
  const r = deltaEncode(page, base, page.length, bufs);
  return r.delta === 1 ? r.ctrlBytes + r.litBytes : undefined;
}

const buffers = (bytes: number): DeltaBuffers => ({
  kinds: new Uint8Array(kindsBytes(bytes, 512)),
  ctrl: new Uint8Array(bytes),
  lits: new Uint8Array(bytes),
  whole: new Uint8Array(bytes),
});

interface Row {
  model: string;
  pageBytes: number;
  fraction: number;
  k: number;
  pages: number;
  changedMean: number;
  deltaMean: number;
  deltaP50: number;
  deltaP99: number;
  wholePages: number;
  zstdMean: number;
  zstdAloneMean: number;
  floorBytes: number;
}

const zstd = new Codec("zstd", 3);
const zstdOut = new Uint8Array(Codec.bound("zstd", CHUNK));

async function syntheticRow(model: Model, pageBytes: number, fraction: number, seed: number): Promise<Row> {
  const k = Math.round(fraction * pageBytes);
  const pages = pageBytes === 4096 ? pagesPerRow : Math.max(16, Math.round(pagesPerRow / 10));
  const perChunk = CHUNK / pageBytes;
  const chunks = Math.ceil(pages / perChunk);
  const next = xorshift(seed);
  const bufs = buffers(CHUNK);
  const encoder = new DeltaEncoder(CHUNK, 0, { pageBytes });
  const sizes: number[] = [];
  const changed: number[] = [];
  let wholePages = 0, wireBytes = 0, zstdAloneBytes = 0, counted = 0;
  try {
    for (let c = 0; c < chunks; c++) {
      const base = xorshiftBytes(CHUNK, seed * 7919 + c + 1);
      const chunk = base.slice();
      const n = Math.min(perChunk, pages - c * perChunk);
      for (let p = 0; p < n; p++) {
        const at = p * pageBytes;
        const page = chunk.subarray(at, at + pageBytes), basePage = base.subarray(at, at + pageBytes);
        model.apply(page, basePage, k, next);
        changed.push(countChanged(page, basePage));
        // Every page here differs from its base: not a delta page means a whole one.
        const bytes = deltaBytesOf(page, basePage, bufs);
        sizes.push(bytes ?? pageBytes);
        if (bytes === undefined) wholePages++;
      }
      const used = n * pageBytes;
      const enc = await encoder.encode(chunk.subarray(0, used), used, base.subarray(0, used), () => "zstd");
      wireBytes += enc ? enc.encLen : used;
      const xor = chunk.subarray(0, used).map((b, i) => b ^ base[i]);
      zstdAloneBytes += Math.min(used, zstd.compress(xor, zstdOut));
      counted += n;
    }
  } finally {
    encoder.close();
  }
  const sorted = sizes.toSorted((a, b) => a - b);
  return {
    model: model.name,
    pageBytes,
    fraction,
    k,
    pages: counted,
    changedMean: mean(changed),
    deltaMean: mean(sizes),
    deltaP50: quantile(sorted, 0.5),
    deltaP99: quantile(sorted, 0.99),
    wholePages,
    zstdMean: wireBytes / counted,
    zstdAloneMean: zstdAloneBytes / counted,
    floorBytes: model.floorBits(pageBytes, k) / 8,
  };
}

function syntheticTable(rows: Row[]): string {
  const head =
    "| model | page | changed bytes | delta mean / p50 / p99 | whole | +zstd (wire) | zstd alone | " +
    "floor | seed report |\n|---|---|---|---|---|---|---|---|---|";
  const lines = rows.map((r) =>
    `| ${r.model} | ${r.pageBytes / KiB} KiB | ${(r.fraction * 100).toFixed(1)} % = ${
      r.changedMean.toFixed(1)
    } | ` +
    `${r.deltaMean.toFixed(1)} / ${r.deltaP50} / ${r.deltaP99} | ${r.wholePages} of ${r.pages} | ` +
    `${r.zstdMean.toFixed(1)} | ${r.zstdAloneMean.toFixed(1)} | ${r.floorBytes.toFixed(1)} | ` +
    `${r.pageBytes === 4096 && r.fraction === 0.01 ? `${SEED_REPORT_BYTES}` : ""} |`
  );
  return [head, ...lines].join("\n");
}

// ---- real guest memory ------------------------------------------------------------------------------

interface GuestFigures {
  note: string;
  pageBytes: number;
  pages: number;
  kinds: { unchanged: number; zero: number; delta: number; whole: number };
  /** Changed pages (not unchanged, not zero in both) by the share of their bytes that changed. */
  changedShare: Record<string, number>;
  deltaMean: number;
  deltaP50: number;
  deltaP99: number;
  /** The same, for the pages with at most 10 % of their bytes changed, and with at most 1 %. */
  smallDeltaMean: number;
  smallDeltaP50: number;
  smallDeltaP99: number;
  onePctPages: number;
  /** Bytes that changed in those pages, mean. */
  onePctChangedMean: number;
  onePctDeltaMean: number;
  onePctDeltaP50: number;
  onePctDeltaP99: number;
  /** Payload bytes of the whole second dump, by whole-page codec: without deltas, and with deltas at each share. */
  wire: Record<string, Record<string, number>>;
  rawBytes: number;
}

/** Delta shares (in 256ths of a page) tried on the real pages. */
const SHARES = [256, 128, 64];

const SHARE_BINS = [
  ["(0, 1 %]", 0.01],
  ["(1, 10 %]", 0.1],
  ["(10, 50 %]", 0.5],
  ["(50, 90 %]", 0.9],
  ["(90, 100 %]", 1],
] as const;

async function guestFigures(t0: string, t1: string, pageBytes: number, note: string): Promise<GuestFigures> {
  const a = await Deno.open(t0), b = await Deno.open(t1);
  const base = new Uint8Array(CHUNK), chunk = new Uint8Array(CHUNK);
  const bufs = buffers(CHUNK);
  const pageBufs = buffers(pageBytes);
  const deltaEncoders = SHARES.map((deltaShare256) =>
    new DeltaEncoder(CHUNK, 0, { pageBytes, deltaShare256 })
  );
  const plainEncoder = new ChunkEncoder(CHUNK, 0);
  const kinds = { unchanged: 0, zero: 0, delta: 0, whole: 0 };
  const share: Record<string, number> = Object.fromEntries(SHARE_BINS.map(([name]) => [name, 0]));
  const sizes: number[] = [];
  const smallSizes: number[] = [];
  const onePctSizes: number[] = [];
  let onePctChanged = 0;
  const wire: Record<string, Record<string, number>> = {};
  const add = (codec: string, how: string, n: number) =>
    (wire[codec] ??= {})[how] = (wire[codec]?.[how] ?? 0) + n;
  let raw = 0;
  try {
    while (true) {
      const n = await readFully(a, base);
      if (n === 0 || (await readFully(b, chunk)) !== n) break;
      raw += n;
      const r = deltaEncode(chunk.subarray(0, n), base.subarray(0, n), pageBytes, bufs);
      for (const k of ["unchanged", "zero", "delta", "whole"] as const) kinds[k] += r[k];
      for (let at = 0; at < n; at += pageBytes) {
        const page = chunk.subarray(at, at + pageBytes), basePage = base.subarray(at, at + pageBytes);
        const diff = countChangedFast(page, basePage);
        if (diff === 0) continue;
        const s = diff / page.length;
        share[SHARE_BINS.find(([, hi]) => s <= hi)![0]]++;
        const bytes = deltaBytesOf(page, basePage, pageBufs);
        if (bytes !== undefined) sizes.push(bytes);
        if (bytes !== undefined && s <= 0.1) smallSizes.push(bytes);
        if (bytes !== undefined && s <= 0.01) {
          onePctSizes.push(bytes);
          onePctChanged += diff;
        }
      }
      for (const codec of ["none", "zstd"] as const) {
        const p = await plainEncoder.encode(chunk.subarray(0, n), n, () => codec);
        add(codec, "no delta", p.encLen);
        for (const [i, enc] of deltaEncoders.entries()) {
          const d = await enc.encode(chunk.subarray(0, n), n, base.subarray(0, n), () => codec);
          add(codec, `delta < ${SHARES[i]}/256`, d ? d.encLen : p.encLen); // as a sender: the delta when there is one
        }
      }
    }
  } finally {
    a.close();
    b.close();
    deltaEncoders.forEach((e) => e.close());
    plainEncoder.close();
  }
  const sorted = sizes.toSorted((x, y) => x - y);
  const smallSorted = smallSizes.toSorted((x, y) => x - y);
  const onePctSorted = onePctSizes.toSorted((x, y) => x - y);
  return {
    note,
    pageBytes,
    pages: kinds.unchanged + kinds.zero + kinds.delta + kinds.whole,
    kinds,
    changedShare: share,
    deltaMean: sizes.length ? mean(sizes) : 0,
    deltaP50: sizes.length ? quantile(sorted, 0.5) : 0,
    deltaP99: sizes.length ? quantile(sorted, 0.99) : 0,
    smallDeltaMean: smallSizes.length ? mean(smallSizes) : 0,
    smallDeltaP50: smallSizes.length ? quantile(smallSorted, 0.5) : 0,
    smallDeltaP99: smallSizes.length ? quantile(smallSorted, 0.99) : 0,
    onePctPages: onePctSizes.length,
    onePctChangedMean: onePctSizes.length ? onePctChanged / onePctSizes.length : 0,
    onePctDeltaMean: onePctSizes.length ? mean(onePctSizes) : 0,
    onePctDeltaP50: onePctSizes.length ? quantile(onePctSorted, 0.5) : 0,
    onePctDeltaP99: onePctSizes.length ? quantile(onePctSorted, 0.99) : 0,
    wire,
    rawBytes: raw,
  };
}

/** Differing bytes, with a quick exit for equal pages (most of them) through 32-bit words. */
function countChangedFast(a: Uint8Array, b: Uint8Array): number {
  const wa = new Uint32Array(a.buffer, a.byteOffset, a.length / 4);
  const wb = new Uint32Array(b.buffer, b.byteOffset, b.length / 4);
  let i = 0;
  while (i < wa.length && wa[i] === wb[i]) i++;
  return i === wa.length ? 0 : countChanged(a.subarray(i * 4), b.subarray(i * 4));
}

async function readFully(file: Deno.FsFile, buf: Uint8Array): Promise<number> {
  let n = 0;
  while (n < buf.length) {
    const r = await file.read(buf.subarray(n));
    if (r === null) break;
    n += r;
  }
  return n;
}

function guestTable(gs: GuestFigures[]): string {
  const pct = (x: number, of: number) => `${((100 * x) / of).toFixed(2)} %`;
  const lines = gs.map((g) => {
    const changed = Object.values(g.changedShare).reduce((s, x) => s + x, 0);
    return `| ${g.pageBytes / KiB} KiB | ${g.pages} | ${pct(g.kinds.unchanged, g.pages)} | ${
      pct(g.kinds.zero, g.pages)
    } | ${g.kinds.delta} | ${g.kinds.whole} | ` +
      SHARE_BINS.map(([name]) => `${g.changedShare[name]}`).join(" / ") + ` (${changed}) | ` +
      `${g.deltaMean.toFixed(1)} / ${g.deltaP50} / ${g.deltaP99} | ` +
      `${g.smallDeltaMean.toFixed(1)} / ${g.smallDeltaP50} / ${g.smallDeltaP99} | ` +
      `${g.onePctDeltaMean.toFixed(1)} / ${g.onePctDeltaP50} / ${g.onePctDeltaP99} (${g.onePctPages}, ${
        g.onePctChangedMean.toFixed(1)
      } bytes changed) |`;
  });
  const wireLines = gs.flatMap((g) =>
    Object.entries(g.wire).map(([codec, hows]) =>
      `| ${g.pageBytes / KiB} KiB | ${codec} | ` +
      Object.values(hows).map((bytes) => `${(bytes / MiB).toFixed(2)}`).join(" | ") + " |"
    )
  );
  const hows = Object.keys(gs[0].wire.none);
  return "| page | pages | unchanged | zero | delta | whole | changed pages by share of bytes changed: " +
    SHARE_BINS.map(([n]) => n).join(" / ") +
    " (all) | delta bytes mean / p50 / p99 | same, pages ≤ 10 % changed | same, pages ≤ 1 % changed (pages, mean changed bytes) |\n" +
    "|---|---|---|---|---|---|---|---|---|---|\n" + lines.join("\n") +
    `\n\nPayload MiB for the second dump (raw ${
      (gs[0].rawBytes / MiB).toFixed(0)
    } MiB), by the codec of the whole ` +
    "pages (the streams always try zstd), without deltas and with a page sent as a delta when its streams " +
    "take less than a share of it:\n\n| page | whole-page codec | " + hows.join(" | ") + " |\n|---|---|" +
    hows.map(() => "---|").join("") + "\n" + wireLines.join("\n");
}

/**
 * Pages with about 1 % of their bytes changed (0.5 to 1.5 %) between two consecutive dumps, and their
 * payload per page through DeltaEncoder.
 */
interface NearOnePct {
  pageBytes: number;
  /** The interval: dumps interval - 1 and interval. */
  interval: number;
  pages: number;
  /** Bytes that changed in those pages, mean. */
  changedMean: number;
  bytesPerPage: number;
}

/**
 * The near-1 % pages of one interval, packed with their bases in address order a 1 MiB chunk at a time, as
 * one transfer of the newer dump against the older would carry them if they were its only delta pages. Each
 * interval is measured apart: a page changes alike from interval to interval (a counter incremented again),
 * and zstd would find one interval's delta in the next one's, which no transfer sends twice.
 */
async function nearOnePct(
  older: string,
  newer: string,
  pageBytes: number,
  interval: number,
): Promise<NearOnePct> {
  const pages = new Uint8Array(CHUNK), bases = new Uint8Array(CHUNK);
  const base = new Uint8Array(CHUNK), chunk = new Uint8Array(CHUNK);
  const encoder = new DeltaEncoder(CHUNK, 0, { pageBytes });
  const a = await Deno.open(older), b = await Deno.open(newer);
  let count = 0, changed = 0, wire = 0, packed = 0;
  const flush = async () => {
    if (packed === 0) return;
    const len = packed * pageBytes;
    const enc = await encoder.encode(pages.subarray(0, len), len, bases.subarray(0, len), () => "zstd");
    wire += enc ? enc.encLen : len;
    packed = 0;
  };
  try {
    while (true) {
      const n = await readFully(a, base);
      if (n === 0 || (await readFully(b, chunk)) !== n) break;
      for (let at = 0; at + pageBytes <= n; at += pageBytes) {
        const diff = countChangedFast(chunk.subarray(at, at + pageBytes), base.subarray(at, at + pageBytes));
        if (diff <= 0.005 * pageBytes || diff > 0.015 * pageBytes) continue;
        pages.set(chunk.subarray(at, at + pageBytes), packed * pageBytes);
        bases.set(base.subarray(at, at + pageBytes), packed * pageBytes);
        count++;
        changed += diff;
        if (++packed * pageBytes === CHUNK) await flush();
      }
    }
    await flush();
  } finally {
    a.close();
    b.close();
    encoder.close();
  }
  return {
    pageBytes,
    interval,
    pages: count,
    changedMean: count ? changed / count : 0,
    bytesPerPage: wire / count,
  };
}

function nearTable(ns: NearOnePct[]): string {
  const lines = ns.map((n) =>
    `| ${n.pageBytes / KiB} KiB | ${n.interval} | ${n.pages} | ${n.changedMean.toFixed(1)} | ${
      n.pages ? n.bytesPerPage.toFixed(1) : "none"
    } | ${n.pageBytes === 4096 ? SEED_REPORT_BYTES : ""} |`
  );
  const all = [4096, 65536].map((pageBytes) => {
    const of = ns.filter((n) => n.pageBytes === pageBytes && n.pages > 0);
    const pages = of.reduce((s, n) => s + n.pages, 0);
    const bytes = of.reduce((s, n) => s + n.pages * n.bytesPerPage, 0);
    return `${pageBytes / KiB} KiB: ${pages} pages, ${
      pages ? (bytes / pages).toFixed(1) : "-"
    } bytes per page`;
  });
  return "| page | interval | pages | bytes changed (mean) | payload bytes per page (zstd on the streams, " +
    "header and kind map included) | seed report |\n|---|---|---|---|---|---|\n" + lines.join("\n") +
    `\n\nOver every interval: ${all.join("; ")}.`;
}

async function realGuest(): Promise<{ figures: GuestFigures[]; near: NearOnePct[] }> {
  const dir = await Deno.makeTempDir({ dir: "/dev/shm", prefix: "dwcp-delta-bench-" });
  let guest: BenchGuest | undefined;
  const onSignal = () => {
    void guest?.close().finally(() => Deno.remove(dir, { recursive: true }).finally(() => Deno.exit(130)));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  try {
    guest = await BenchGuest.boot({ dir, memoryMiB, fillMib, dirtyMibps, name: "delta-bench", log });
    const dumps = Array.from({ length: intervals + 1 }, (_, i) => join(dir, `t${i}.bin`));
    for (const [i, dump] of dumps.entries()) {
      if (i > 0) await new Promise((r) => setTimeout(r, intervalS * 1000));
      await guest.snapshot(dump);
      log(`  dump ${i + 1} of ${dumps.length} saved`);
    }
    const note = guest.note + `; ${dumps.length} dumps ${intervalS} s apart`;
    await guest.close();
    guest = undefined;
    const figures: GuestFigures[] = [];
    const near: NearOnePct[] = [];
    for (const pageBytes of [4096, 65536]) {
      log(`  comparing dumps in ${pageBytes / KiB} KiB pages`);
      figures.push(await guestFigures(dumps[0], dumps[1], pageBytes, note));
      for (let i = 1; i < dumps.length; i++) {
        near.push(await nearOnePct(dumps[i - 1], dumps[i], pageBytes, i));
      }
    }
    return { figures, near };
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    await guest?.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

// ---- main -------------------------------------------------------------------------------------------

const rows: Row[] = [];
let seed = 1;
for (const pageBytes of [4096, 65536]) {
  for (const model of MODELS) {
    for (const fraction of [0.001, 0.01, 0.1]) {
      log(`synthetic: ${model.name}, ${pageBytes / KiB} KiB pages, ${fraction * 100} %`);
      rows.push(await syntheticRow(model, pageBytes, fraction, seed++));
    }
  }
}
console.log("## Delta size per page, synthetic change models (bytes)\n");
console.log(syntheticTable(rows));
const fourKiB1 = rows.filter((r) => r.pageBytes === 4096 && r.fraction === 0.01);
console.log(
  `\nSeed report: a 4 KiB page with 1 % changed bytes as a ${SEED_REPORT_BYTES}-byte delta. Mean with zstd ≤ ` +
    `${SEED_REPORT_BYTES}: ` +
    fourKiB1.map((r) =>
      `${r.model} ${r.zstdMean <= SEED_REPORT_BYTES ? "yes" : "no"} (${r.zstdMean.toFixed(1)})`
    )
      .join(", ") +
    ".",
);

let guest: { figures: GuestFigures[]; near: NearOnePct[] } | undefined;
if (!args["no-guest"]) {
  log("real guest memory");
  guest = await realGuest();
  console.log(`\n## Real page pairs: ${guest.figures[0].note}\n`);
  console.log("The first two dumps, page by page:\n");
  console.log(guestTable(guest.figures));
  console.log("\nPages with about 1 % changed, interval by interval, beside the seed report's 40 bytes:\n");
  console.log(nearTable(guest.near));
}
zstd.close();

if (args.out) {
  await Deno.writeTextFile(
    args.out,
    JSON.stringify({ synthetic: rows, guest }, null, 2),
  );
}
