/**
 * Dedupe across VMs (HDE): how many bytes a second VM booted from the same image would send once the
 * receiver's chunk store holds the first, content-defined chunks against fixed 4 KiB pages.
 *
 *   deno run --allow-all bench/dedupe_bench.ts [--memory-mib 512] [--fill-mib 128] [--gap-s 5]
 *       [--dirty-mibps 1] [--dumps DIR] [--store-mib 2048] [--migration-runs 3]
 *
 * Samples: guest A (tests/support/guest_image.ts, under TCG, holding --fill-mib of data and re-writing
 * --dirty-mibps of it) is booted, its RAM saved with QMP `pmemsave` (A0), again --gap-s later (A1), and
 * killed; then guest B is booted from the same kernel and initramfs and saved once (B0). The two share
 * their kernel and initramfs but not their held data, which is random per boot. With --dumps DIR the
 * dumps are kept there, and reused when present (no guest is booted).
 *
 * Table 1, what would travel, in MiB, per chunking: the distinct chunks not already in the store (a chunk
 * repeated in the same dump travels once) plus 36 bytes of OFFER per chunk. "alone" starts from an empty
 * store; "A0 → X" from a store holding A0's chunks. "saved" is 1 − travel(B0 after A0) / B0's non-zero
 * 4 KiB pages, which is what dwcp sends today without dedupe (zero pages are bitmap bits).
 * Table 2, the same for a QEMU-like migration stream synthesized from each dump: every 4 KiB page in
 * address order behind an 8-byte header, zero pages as the header and one byte (QEMU 7.2's RAM_SAVE_FLAG_
 * PAGE / ZERO records), deduped as one byte stream. Each header holds its page's address, so any chunk
 * that spans a header differs between two guests that hold the same bytes at other addresses.
 * Table 3, the same streams page-aware: the headers split off and counted as sent raw, the non-zero page
 * payloads concatenated and deduped (what a migration integration that parses QEMU's RAM records sends).
 * Table 4, the exchange itself (src/dedupe/exchange.ts) with the default chunking, run in this process over
 * an in-memory pipe into a real ChunkStore in a temporary directory: A0, then B0, then A1; bytes on the
 * wire count every message both ways; the output is checked by SHA-256 against the dump. Both sides and
 * the store share this process, so MB/s is what one process does with all the work of both ends.
 * Table 5, throughput on one core: the chunker alone, and SHA-256 over its chunks, on A0's first 256 MiB
 * held in memory (median of 3).
 * Table 6, live migrations through two real agents (bench/dedupe_migrations.ts, which also runs alone):
 * two 256 MiB guests from the same image, holding 8 MiB of per-boot data, migrated one after the other into
 * a fresh destination with dedupe and without, with KASLR and without; QEMU's stream, the bytes carried
 * and the times (median of --migration-runs; 0 skips the table).
 */
import { createHash, type Hash } from "node:crypto";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { zeroPages } from "../ffi/pages.ts";
import { type CdcSizes, StreamChunker, VM_MEMORY_CDC } from "../src/dedupe/cdc.ts";
import { ChunkStore } from "../src/dedupe/chunk_store.ts";
import { receiveDeduped, sendDeduped } from "../src/dedupe/exchange.ts";
import { fingerprint } from "../src/dedupe/fingerprint.ts";
import { ENTRY_BYTES } from "../src/dedupe/messages.ts";
import { memoryChannels } from "../tests/dedupe/support.ts";
import { migrationTable } from "./dedupe_migrations.ts";
import { BenchGuest, MAX_MEMORY_MIB } from "./guest_memory.ts";
import { intArg, log } from "./cli_args.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const PAGE = 4096;
const READ_BYTES = 16 * MiB;

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    "memory-mib": { type: "string", default: "512" },
    "fill-mib": { type: "string", default: "128" },
    "gap-s": { type: "string", default: "5" },
    "dirty-mibps": { type: "string", default: "1" },
    "store-mib": { type: "string", default: "2048" },
    "migration-runs": { type: "string", default: "3" },
    dumps: { type: "string" },
  },
  strict: true,
});

const memoryMiB = intArg("memory-mib", args["memory-mib"], 128, MAX_MEMORY_MIB);
const fillMib = intArg("fill-mib", args["fill-mib"], 1, memoryMiB - 64);
const gapS = intArg("gap-s", args["gap-s"], 0, 600);
const dirtyMibps = intArg("dirty-mibps", args["dirty-mibps"], 0, 64);
const storeMiB = intArg("store-mib", args["store-mib"], 16, 1024 * 1024);
const migrationRuns = intArg("migration-runs", args["migration-runs"], 0, 20);

const mib = (bytes: number) => (bytes / MiB).toFixed(1);
const pct = (x: number) => `${(100 * x).toFixed(1)} %`;

// ---- samples ----------------------------------------------------------------------------------------

const workDir = await Deno.makeTempDir({ prefix: "dwcp-dedupe-bench-" });
const dumpDir = args.dumps ?? workDir;
await Deno.mkdir(dumpDir, { recursive: true });
const dump = { a0: join(dumpDir, "a0.bin"), a1: join(dumpDir, "a1.bin"), b0: join(dumpDir, "b0.bin") };
const cleanup = () => Deno.removeSync(workDir, { recursive: true });
Deno.addSignalListener("SIGINT", () => {
  cleanup();
  Deno.exit(130);
});

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

let note = `dumps reused from ${dumpDir}`;
if (!(await exists(dump.a0) && await exists(dump.a1) && await exists(dump.b0))) {
  const boot = (name: string) => BenchGuest.boot({ dir: workDir, memoryMiB, fillMib, dirtyMibps, name, log });
  const a = await boot("dedupe-a");
  try {
    await a.snapshot(dump.a0);
    await new Promise((r) => setTimeout(r, gapS * 1000));
    await a.snapshot(dump.a1);
    note = a.note;
  } finally {
    await a.close();
  }
  // One guest at a time: the second boots only once the first's memory is back.
  const b = await boot("dedupe-b");
  try {
    await b.snapshot(dump.b0);
  } finally {
    await b.close();
  }
}

// ---- reading dumps ----------------------------------------------------------------------------------

/** The dump in fresh READ_BYTES buffers (fresh, because the exchange keeps them until answered). */
async function* readDump(path: string): AsyncGenerator<Uint8Array> {
  using file = await Deno.open(path);
  for (;;) {
    const buf = new Uint8Array(READ_BYTES);
    let n = 0;
    while (n < buf.length) {
      const got = await file.read(buf.subarray(n));
      if (got === null) break;
      n += got;
    }
    if (n > 0) yield buf.subarray(0, n);
    if (n < buf.length) return;
  }
}

/** The dump as a QEMU 7.2 RAM stream's first pass: 8-byte be64 (address | flags) before each page. */
async function* qemuLike(path: string): AsyncGenerator<Uint8Array> {
  const FLAG_ZERO = 0x02, FLAG_PAGE = 0x08, FLAG_CONTINUE = 0x20;
  const bitmap = new Uint8Array(READ_BYTES / PAGE / 8);
  let base = 0;
  for await (const block of readDump(path)) {
    zeroPages(block, PAGE, bitmap);
    const out = new Uint8Array((block.length / PAGE) * (PAGE + 8));
    const view = new DataView(out.buffer);
    let at = 0;
    for (let p = 0; p * PAGE < block.length; p++) {
      const zero = (bitmap[p >> 3] >> (p & 7) & 1) === 1;
      const addr = base + p * PAGE;
      view.setUint32(at, Math.floor(addr / 2 ** 32));
      view.setUint32(at + 4, (addr >>> 0) | (zero ? FLAG_ZERO : FLAG_PAGE) | FLAG_CONTINUE);
      at += 8;
      if (zero) {
        out[at++] = 0;
      } else {
        out.set(block.subarray(p * PAGE, (p + 1) * PAGE), at);
        at += PAGE;
      }
    }
    base += block.length;
    yield out.subarray(0, at);
  }
}

/** Passes blocks through, feeding them to hash on the way. */
async function* hashing(blocks: AsyncIterable<Uint8Array>, hash: Hash): AsyncGenerator<Uint8Array> {
  for await (const block of blocks) {
    hash.update(block);
    yield block;
  }
}

/** The dump's non-zero pages, concatenated: a migration stream's page payloads with the headers taken out. */
async function* nonZeroPages(path: string): AsyncGenerator<Uint8Array> {
  const bitmap = new Uint8Array(READ_BYTES / PAGE / 8);
  for await (const block of readDump(path)) {
    zeroPages(block, PAGE, bitmap);
    const out = new Uint8Array(block.length);
    let at = 0;
    for (let p = 0; p * PAGE < block.length; p++) {
      if ((bitmap[p >> 3] >> (p & 7) & 1) === 1) continue;
      out.set(block.subarray(p * PAGE, (p + 1) * PAGE), at);
      at += PAGE;
    }
    if (at > 0) yield out.subarray(0, at);
  }
}

async function nonZeroBytes(path: string): Promise<number> {
  const bitmap = new Uint8Array(READ_BYTES / PAGE / 8);
  let bytes = 0;
  for await (const block of readDump(path)) bytes += block.length - zeroPages(block, PAGE, bitmap) * PAGE;
  return bytes;
}

// ---- table 1 and 2: what would travel ---------------------------------------------------------------

type Method = { label: string; sizes?: CdcSizes };
const cdc = (avgKiB: number): CdcSizes => ({
  minBytes: (avgKiB * KiB) / 4,
  avgBytes: avgKiB * KiB,
  maxBytes: avgKiB * KiB * 4,
});
const METHODS: Method[] = [
  { label: "fixed 4 KiB pages" },
  { label: "CDC avg 4 KiB", sizes: cdc(4) },
  { label: "CDC avg 8 KiB (default)", sizes: VM_MEMORY_CDC },
  { label: "CDC avg 16 KiB", sizes: cdc(16) },
  { label: "CDC avg 32 KiB", sizes: cdc(32) },
];

interface Chunked {
  /** 64 bits of each chunk's SHA-256, as hex: plenty to count distinct chunks in a few GiB. */
  keys: string[];
  lengths: number[];
}

async function chunkStream(stream: AsyncIterable<Uint8Array>, method: Method): Promise<Chunked> {
  const out: Chunked = { keys: [], lengths: [] };
  const add = (c: Uint8Array) => {
    out.keys.push(createHash("sha256").update(c).digest("hex").slice(0, 16));
    out.lengths.push(c.length);
  };
  if (!method.sizes) {
    for await (const block of stream) {
      for (let off = 0; off < block.length; off += PAGE) add(block.subarray(off, off + PAGE));
    }
    return out;
  }
  const chunker = new StreamChunker(method.sizes);
  for await (const block of stream) for (const c of chunker.push(block)) add(c);
  const last = chunker.finish();
  if (last) add(last);
  return out;
}

/** Payload plus offer bytes that travel for x when the store already holds known. */
function travel(x: Chunked, known?: Set<string>): number {
  const seen = new Set<string>();
  let bytes = x.keys.length * ENTRY_BYTES;
  x.keys.forEach((k, i) => {
    if (known?.has(k) || seen.has(k)) return;
    seen.add(k);
    bytes += x.lengths[i];
  });
  return bytes;
}

function printTable(title: string, header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    "| " + cells.map((c, i) => i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])).join(" | ") + " |";
  console.log(`\n${title}\n`);
  console.log(line(header));
  console.log(
    "|" + widths.map((w, i) => (i === 0 ? "-" : "-").repeat(w + 1) + (i === 0 ? "-" : ":")).join("|") + "|",
  );
  for (const r of rows) console.log(line(r));
}

const dumpBytes = (await Deno.stat(dump.a0)).size;
const nonZero = {
  a0: await nonZeroBytes(dump.a0),
  a1: await nonZeroBytes(dump.a1),
  b0: await nonZeroBytes(dump.b0),
};
console.log(`\n# dedupe of guest memory across two VMs from one image\n`);
console.log(`samples: ${note}; A0, A1 (${gapS} s later) and B0 (second guest), ${mib(dumpBytes)} MiB each`);
console.log(
  `non-zero 4 KiB pages: A0 ${mib(nonZero.a0)} MiB, A1 ${mib(nonZero.a1)} MiB, B0 ${mib(nonZero.b0)} MiB`,
);

const HEADER = [
  "chunking",
  "A0 alone",
  "A0 → A1",
  "B0 alone",
  "A0 → B0",
  "B0 saved vs non-zero pages",
  "B0 saved by the store",
];

/**
 * One table: per chunking, what travels for each scenario. rawBytes(path) is what travels beside the
 * deduped stream for that dump (the page headers, when they are split off), counted in every figure.
 */
async function travelTable(
  title: string,
  streamOf: (path: string) => AsyncIterable<Uint8Array>,
  rawBytes: (path: string) => number = () => 0,
) {
  const rows: string[][] = [];
  for (const method of METHODS) {
    log(`${title}: ${method.label}`);
    const a0 = await chunkStream(streamOf(dump.a0), method);
    const known = new Set(a0.keys);
    const a1 = await chunkStream(streamOf(dump.a1), method);
    const b0 = await chunkStream(streamOf(dump.b0), method);
    const b0Alone = travel(b0) + rawBytes(dump.b0);
    const b0After = travel(b0, known) + rawBytes(dump.b0);
    rows.push([
      method.label,
      mib(travel(a0) + rawBytes(dump.a0)),
      mib(travel(a1, known) + rawBytes(dump.a1)),
      mib(b0Alone),
      mib(b0After),
      pct(1 - b0After / nonZero[dumpName(dump.b0)]),
      pct(1 - b0After / b0Alone),
    ]);
  }
  printTable(`${title} (MiB that travel: chunks the store lacks + 36 B of OFFER per chunk)`, HEADER, rows);
}

function dumpName(path: string): keyof typeof nonZero {
  return path === dump.a0 ? "a0" : path === dump.a1 ? "a1" : "b0";
}

/** QEMU's page headers, sent as they are when split off: 8 bytes a page, and a zero page's one zero byte. */
const headerBytes = (path: string) => {
  const pages = dumpBytes / PAGE;
  const dataPages = nonZero[dumpName(path)] / PAGE;
  return pages * 8 + (pages - dataPages);
};

await travelTable("Table 1: RAM dumps", readDump);
await travelTable("Table 2: QEMU-like migration streams, deduped as they are", qemuLike);
await travelTable(
  "Table 3: QEMU-like migration streams, page-aware: headers split off and sent raw, page payloads deduped",
  nonZeroPages,
  headerBytes,
);

// ---- table 4: the exchange with a real store --------------------------------------------------------

const storeDir = join(workDir, "store");
const store = await ChunkStore.open({ dir: storeDir, budgetBytes: storeMiB * MiB, log });
const exchangeRows: string[][] = [];
for (
  const [name, path] of [["A0 (empty store)", dump.a0], ["B0 (store: A0)", dump.b0], [
    "A1 (store: A0, B0)",
    dump.a1,
  ]]
) {
  log(`exchange: ${name}`);
  const [a, b] = memoryChannels();
  const inHash = createHash("sha256");
  const outHash = createHash("sha256");
  const t0 = performance.now();
  const [, received] = await Promise.all([
    sendDeduped(hashing(readDump(path), inHash), a),
    receiveDeduped(b, store, (bytes) => {
      outHash.update(bytes);
      return Promise.resolve();
    }),
  ]);
  const seconds = (performance.now() - t0) / 1000;
  if (inHash.digest("hex") !== outHash.digest("hex")) {
    throw new Error(`${name}: the receiver's output differs`);
  }
  exchangeRows.push([
    name,
    mib(received.bytes),
    mib(a.sentBytes + b.sentBytes),
    mib(received.heldBytes),
    mib(received.repeatBytes),
    mib(received.wantedBytes),
    seconds.toFixed(1),
    (received.bytes / seconds / 1e6).toFixed(0),
  ]);
}
const storeStats = store.stats();
await store.close();
printTable(
  `Table 4: the exchange, default chunking, in-memory pipe, real ChunkStore (budget ${storeMiB} MiB; ` +
    `output verified by SHA-256)`,
  ["stream", "MiB", "wire MiB", "from store", "repeats", "sent chunks", "s", "MB/s"],
  exchangeRows,
);
console.log(
  `store after: ${storeStats.entries} chunks, ${mib(storeStats.diskBytes)} MiB on disk (4 KiB blocks), ` +
    `${storeStats.evictions} evicted`,
);

// ---- table 5: throughput ----------------------------------------------------------------------------

const sample = new Uint8Array(Math.min(256 * MiB, dumpBytes));
{
  using file = await Deno.open(dump.a0);
  for (let n = 0; n < sample.length;) n += (await file.read(sample.subarray(n))) ?? sample.length;
}
const median = (xs: number[]) => xs.sort((x, y) => x - y)[Math.floor(xs.length / 2)];
const speedRows: string[][] = [];
for (const method of METHODS.filter((m) => m.sizes)) {
  const cutSeconds: number[] = [];
  const hashSeconds: number[] = [];
  let chunks: Uint8Array[] = [];
  for (let rep = 0; rep < 3; rep++) {
    const chunker = new StreamChunker(method.sizes!);
    let t0 = performance.now();
    chunks = [];
    for (let off = 0; off < sample.length; off += READ_BYTES) {
      chunks.push(...chunker.push(sample.subarray(off, off + READ_BYTES)));
    }
    cutSeconds.push((performance.now() - t0) / 1000);
    t0 = performance.now();
    for (const c of chunks) fingerprint(c);
    hashSeconds.push((performance.now() - t0) / 1000);
  }
  speedRows.push([
    method.label,
    (sample.length / chunks.length / KiB).toFixed(1),
    (sample.length / median(cutSeconds) / 1e6).toFixed(0),
    (sample.length / median(hashSeconds) / 1e6).toFixed(0),
  ]);
}
{
  const seconds: number[] = [];
  for (let rep = 0; rep < 3; rep++) {
    const t0 = performance.now();
    for (let off = 0; off < sample.length; off += PAGE) fingerprint(sample.subarray(off, off + PAGE));
    seconds.push((performance.now() - t0) / 1000);
  }
  speedRows.push(["fixed 4 KiB pages", "4.0", "-", (sample.length / median(seconds) / 1e6).toFixed(0)]);
}
printTable(
  `Table 5: throughput on A0's first ${
    mib(sample.length)
  } MiB in memory, one core (MB/s, 10^6 bytes/s, median of 3)`,
  ["chunking", "mean chunk KiB", "CDC cut MB/s", "SHA-256 MB/s"],
  speedRows,
);

// ---- table 6: live migrations through two agents ----------------------------------------------------

if (migrationRuns > 0) {
  log("migrations through two agents");
  const table6 = await migrationTable({ memoryMiB: 256, fillMib: 8, runs: migrationRuns, log });
  printTable(
    `Table 6: a second VM from the same image, migrated through two agents on loopback, with and without ` +
      `dedupe (256 MiB TCG guests, 8 MiB per-boot data, fresh destination store; median of ${migrationRuns})`,
    table6.header,
    table6.rows,
  );
}

cleanup();
