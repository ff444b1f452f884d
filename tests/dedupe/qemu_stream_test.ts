import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { QEMU_PAGE_BYTES, QemuStreamParser, type StreamRecord } from "../../src/dedupe/qemu_stream.ts";
import { cachedCapture } from "./qemu_capture.ts";
import { sampleStream, StreamBuilder } from "./qemu_streams.ts";
import { randomBytes, xorshift } from "./support.ts";

const PAGE = QEMU_PAGE_BYTES;
const opts = { sanitizeResources: false, sanitizeOps: false };

/** Runs data through a parser in the given read sizes (cycled). */
function parse(data: Uint8Array, reads: number[] = [data.length]) {
  const parser = new QemuStreamParser();
  const records: StreamRecord[] = [];
  for (let at = 0, i = 0; at < data.length; i++) {
    const n = Math.max(1, reads[i % reads.length]);
    records.push(...parser.push(data.subarray(at, at + n)));
    at += n;
  }
  records.push(...parser.finish());
  return { records, parser };
}

/** The records with adjacent RAW ones merged: what must not depend on how the stream was read. */
function normalize(records: StreamRecord[]): { kind: string; bytes: Uint8Array }[] {
  const out: { kind: string; parts: Uint8Array[] }[] = [];
  for (const r of records) {
    const last = out[out.length - 1];
    if (r.kind === "raw" && last?.kind === "raw") last.parts.push(r.bytes);
    else out.push({ kind: r.kind, parts: [r.bytes] });
  }
  return out.map((r) => ({ kind: r.kind, bytes: concat(r.parts) }));
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function pagesOf(records: StreamRecord[]): Uint8Array[] {
  return records.filter((r) => r.kind === "page").map((r) => r.bytes);
}

Deno.test("a synthetic stream splits into its pages and the bytes between them", () => {
  const { bytes, pages } = sampleStream();
  const { records, parser } = parse(bytes);
  assert.deepEqual(concat(records.map((r) => r.bytes)), bytes);
  assert.deepEqual(pagesOf(records), pages);
  assert.ok(records.filter((r) => r.kind === "page").every((r) => r.bytes.length === PAGE));
  const stats = parser.stats();
  assert.equal(stats.pages, pages.length);
  assert.equal(stats.zeroPages, 1);
  assert.equal(stats.xbzrlePages, 1);
  assert.equal(stats.rawBytes, bytes.length - pages.length * PAGE);
  assert.match(parser.passThrough!.reason, /device state/);
});

Deno.test("the same records however the stream is split: at every offset, and byte by byte", () => {
  const { bytes } = sampleStream(7);
  const whole = normalize(parse(bytes).records);
  for (let cut = 1; cut < bytes.length; cut++) {
    const { records } = parse(bytes, [cut, bytes.length]);
    assert.deepEqual(normalize(records), whole, `split at ${cut}`);
  }
  assert.deepEqual(normalize(parse(bytes, [1]).records), whole);
  const next = xorshift(11);
  for (let round = 0; round < 20; round++) {
    const reads = Array.from({ length: 16 }, () => 1 + (next() % 9000));
    assert.deepEqual(normalize(parse(bytes, reads).records), whole, `reads ${reads}`);
  }
});

Deno.test("configuration subsections of known size are parsed; an unknown one passes through", () => {
  const known = new StreamBuilder().header().configuration("pc-q35-7.2")
    .subsection("configuration/target-page-bits", new Uint8Array([0, 0, 0, 12]))
    .subsection("configuration/uuid", randomBytes(16, 1))
    .ramStart(2, [["pc.ram", 4 * PAGE]]).part(2).page("pc.ram", 0, randomBytes(PAGE, 2)).eos().footer(2)
    .build();
  assert.equal(parse(known.bytes).parser.stats().pages, 1);
  assert.equal(parse(known.bytes).parser.passThrough, undefined);

  const unknown = new StreamBuilder().header().configuration("pc-q35-7.2")
    .subsection("configuration/capabilities", new Uint8Array([0, 0, 0, 1, 3, 0x61, 0x62, 0x63]))
    .ramStart(2, [["pc.ram", 4 * PAGE]]).part(2).page("pc.ram", 0, randomBytes(PAGE, 2)).eos().build();
  const { records, parser } = parse(unknown.bytes);
  assert.equal(parser.stats().pages, 0);
  assert.match(parser.passThrough!.reason, /configuration\/capabilities/);
  assert.deepEqual(concat(records.map((r) => r.bytes)), unknown.bytes);

  const bigPages = new StreamBuilder().header().configuration("pc-q35-7.2")
    .subsection("configuration/target-page-bits", new Uint8Array([0, 0, 0, 16])).build();
  assert.match(parse(bigPages.bytes).parser.passThrough!.reason, /2\^16/);
});

/** A stream that goes wrong after one good page: the page is found, everything from the fault is RAW. */
function faulty(write: (s: StreamBuilder) => void): { bytes: Uint8Array; faultAt: number } {
  const s = new StreamBuilder().header().configuration("pc-q35-7.2").ramStart(2, [["pc.ram", 8 * PAGE]])
    .part(2).page("pc.ram", 0, randomBytes(PAGE, 5));
  const faultAt = s.build().bytes.length;
  write(s);
  // Pages after the fault must not be found: the parser is lost there.
  s.page("pc.ram", PAGE, randomBytes(PAGE, 6)).eos();
  return { bytes: s.build().bytes, faultAt };
}

Deno.test("a parse surprise passes the rest through: savings lost, never bytes", () => {
  const cases: [string, (s: StreamBuilder) => void, RegExp][] = [
    ["an unknown flag (COMPRESS_PAGE)", (s) => s.u64(PAGE + 0x100 + 0x20), /flags 0x120/],
    ["a page past the end of its block", (s) => s.u64(8 * PAGE + 0x08 + 0x20), /past the end of RAM block/],
    ["a block the START did not list", (s) => s.u64(0x08).idstr("pc.bios"), /"pc.bios"/],
    ["a block name of length 0", (s) => s.u64(0x08).u8(0), /without an idstr/],
    ["an XBZRLE delta longer than a page", (s) => s.u64(0x40 + 0x20).u8(1).u16(PAGE + 1), /XBZRLE/],
    ["an XBZRLE with another encoding", (s) => s.u64(0x40 + 0x20).u8(2).u16(8), /encoding 2/],
    ["EOS with an address", (s) => s.u64(PAGE + 0x10), /EOS with address/],
    ["a footer for another section", (s) => s.eos().footer(9), /footer for section 9/],
    ["another section's PART", (s) => s.eos().footer(2).part(5), /section 5/],
    ["a second ram START", (s) => s.eos().footer(2).ramStart(4, [["pc.ram", PAGE]]), /only one "ram"/],
    ["a COMMAND section", (s) => s.eos().footer(2).u8(0x08), /section type 0x8/],
    ["a header past 2^53", (s) => s.u32(0xffffffff).u32(0x28), /high word/],
  ];
  for (const [name, write, reason] of cases) {
    const { bytes, faultAt } = faulty(write);
    const { records, parser } = parse(bytes);
    assert.deepEqual(concat(records.map((r) => r.bytes)), bytes, name);
    assert.equal(parser.stats().pages, 1, name);
    assert.match(parser.passThrough!.reason, reason, name);
    assert.ok(parser.passThrough!.atByte >= faultAt, `${name}: stopped at ${parser.passThrough!.atByte}`);
  }
});

Deno.test("streams that are not QEMU 7.2 migration streams pass through whole", () => {
  const cases: [string, Uint8Array, RegExp][] = [
    ["random bytes", randomBytes(10_000, 3), /not a QEMU migration stream/],
    [
      "file version 2",
      new StreamBuilder().raw(new TextEncoder().encode("QEVM")).u32(2).build().bytes,
      /version 3/,
    ],
    [
      "a machine name of 4 GiB",
      new StreamBuilder().header().u8(0x07).u32(0xffffffff).build().bytes,
      /machine/,
    ],
    [
      "a second configuration",
      new StreamBuilder().header().configuration("a").configuration("b").build().bytes,
      /second CONFIGURATION/,
    ],
    [
      "a START without MEM_SIZE",
      new StreamBuilder().header().u8(1).u32(2).idstr("ram").u32(0).u32(4).u64(0x10).build().bytes,
      /not MEM_SIZE/,
    ],
    [
      "a block list longer than the total",
      new StreamBuilder().header().u8(1).u32(2).idstr("ram").u32(0).u32(4).u64(PAGE + 4).idstr("pc.ram")
        .u64(2 * PAGE).build().bytes,
      /of 8192 bytes with 4096 of the total left/,
    ],
    [
      "a ram section of version 3",
      new StreamBuilder().header().u8(1).u32(2).idstr("ram").u32(0).u32(3).build().bytes,
      /version 3, expected 4/,
    ],
    [
      "an iterative section not ram",
      new StreamBuilder().header().u8(1).u32(2).idstr("block").u32(0).u32(1).build().bytes,
      /block/,
    ],
  ];
  for (const [name, bytes, reason] of cases) {
    const { records, parser } = parse(bytes);
    assert.deepEqual(concat(records.map((r) => r.bytes)), bytes, name);
    assert.equal(parser.stats().pages, 0, name);
    assert.match(parser.passThrough?.reason ?? "", reason, name);
  }
});

Deno.test("a stream cut anywhere gives back every byte it had", () => {
  const { bytes } = sampleStream(21);
  for (let end = 0; end <= bytes.length; end += 97) {
    const cut = bytes.subarray(0, end);
    const { records } = parse(cut, [1000]);
    assert.deepEqual(concat(records.map((r) => r.bytes)), cut, `cut at ${end}`);
  }
  const { parser } = parse(bytes.subarray(0, 200));
  assert.match(parser.passThrough!.reason, /ended inside a page/);
});

Deno.test("hostile input: random mutations never throw, never lose a byte, never grow the carry", () => {
  const { bytes } = sampleStream(31);
  const next = xorshift(99);
  for (let round = 0; round < 300; round++) {
    const mutated = bytes.slice();
    for (let i = 0; i < 1 + (round % 5); i++) mutated[next() % mutated.length] = next() & 0xff;
    const reads = [1 + (next() % 5000), 1 + (next() % 300)];
    const { records } = parse(mutated, reads);
    assert.deepEqual(concat(records.map((r) => r.bytes)), mutated, `round ${round}`);
    assert.ok(records.every((r) => r.kind === "raw" || r.bytes.length === PAGE));
  }
});

Deno.test("push after finish is a programming error", () => {
  const parser = new QemuStreamParser();
  parser.finish();
  assert.throws(() => parser.push(new Uint8Array(1)), /after finish/);
});

/** SHA-256 of each page, in order, and of all RAW bytes: a stream's parse in a few bytes. */
function digestParse(data: Uint8Array, reads: number[]) {
  const parser = new QemuStreamParser();
  const raw = createHash("sha256");
  const pages: string[] = [];
  let total = 0;
  const take = (records: StreamRecord[]) => {
    for (const r of records) {
      total += r.bytes.length;
      if (r.kind === "raw") raw.update(r.bytes);
      else pages.push(createHash("sha256").update(r.bytes).digest("hex").slice(0, 16));
    }
  };
  for (let at = 0, i = 0; at < data.length; i++) {
    const n = reads[i % reads.length];
    take(parser.push(data.subarray(at, at + n)));
    at += n;
  }
  take(parser.finish());
  return { total, raw: raw.digest("hex"), pages, stats: parser.stats(), passThrough: parser.passThrough };
}

Deno.test({
  name: "real QEMU 7.2 streams: every page QEMU sent is found, in any split of reads",
  ...opts,
}, async () => {
  const idle = await cachedCapture({ memoryMiB: 128, memMib: 8 });
  // Dirtied while a slow migration runs: several passes, some pages as XBZRLE deltas.
  const dirty = await cachedCapture({
    memoryMiB: 128,
    memMib: 16,
    dirtyMibps: 4,
    capabilities: { xbzrle: true },
    maxBytesPerSec: 32 * 1024 * 1024,
  });
  assert.ok(dirty.passes >= 3, `the dirtying guest took ${dirty.passes} passes`);
  assert.ok(dirty.xbzrlePages > 0);
  for (const capture of [idle, dirty]) {
    const data = await Deno.readFile(capture.path);
    const whole = digestParse(data, [256 * 1024]);
    assert.equal(whole.total, data.length);
    // QEMU's own counters: pages sent whole ("normal") and zero pages ("duplicate").
    assert.equal(whole.stats.pages, capture.normalPages);
    assert.equal(whole.stats.zeroPages, capture.duplicatePages);
    assert.match(whole.passThrough!.reason, /device state/);
    assert.ok(data.length - whole.passThrough!.atByte < 1024 * 1024, "only device state passes through");
    if (capture === dirty) assert.ok(whole.stats.xbzrlePages > 0);
    for (const reads of [[4093], [1, 65536, 7, 4096, 12289], [1024 * 1024]]) {
      const split = digestParse(data, reads);
      assert.equal(split.raw, whole.raw, `reads ${reads}`);
      assert.deepEqual(split.pages, whole.pages, `reads ${reads}`);
    }
  }
});
