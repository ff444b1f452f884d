import assert from "node:assert/strict";
import { join } from "node:path";
import { ChunkStore } from "../../src/dedupe/chunk_store.ts";
import { DedupeSink, DedupeSource } from "../../src/dedupe/migration_io.ts";
import { FRAME_HEADER_BYTES, FrameKind, STREAM_HEADER_BYTES } from "../../src/dedupe/migration_stream.ts";
import type { Duplex } from "../../src/transport/wire.ts";
import { sampleStream, StreamBuilder } from "./qemu_streams.ts";
import { randomBytes, xorshift } from "./support.ts";

const PAGE = 4096;

/** QEMU's outgoing side: serves a stream in reads of varying size. */
class StreamReader implements Duplex {
  #pos = 0;
  closed = false;
  readonly #next = xorshift(3);
  constructor(readonly data: Uint8Array) {}
  read(p: Uint8Array): Promise<number | null> {
    if (this.closed) return Promise.reject(new Error("closed"));
    if (this.#pos >= this.data.length) return Promise.resolve(null);
    const n = Math.min(p.length, this.data.length - this.#pos, 1 + (this.#next() % 70_000));
    p.set(this.data.subarray(this.#pos, this.#pos + n));
    this.#pos += n;
    return Promise.resolve(n);
  }
  write(p: Uint8Array): Promise<number> {
    return Promise.resolve(p.length);
  }
  close(): void {
    this.closed = true;
  }
}

/** QEMU's incoming side: keeps what it is given. */
class StreamWriter implements Duplex {
  parts: Uint8Array[] = [];
  closed = false;
  read(): Promise<number | null> {
    return Promise.resolve(null);
  }
  write(p: Uint8Array): Promise<number> {
    if (this.closed) return Promise.reject(new Error("closed"));
    this.parts.push(p.slice());
    return Promise.resolve(p.length);
  }
  close(): void {
    this.closed = true;
  }
  get bytes(): Uint8Array {
    return concat(this.parts);
  }
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

interface Moved {
  out: StreamWriter;
  source: DedupeSource;
  sink: DedupeSink;
  carriedBytes: number;
  failures: Error[];
  logs: string[];
  /** What the sink threw, if it did. */
  error?: unknown;
}

/**
 * Moves stream from a DedupeSource into a DedupeSink the way a stream transfer does (one write at a time,
 * in order), with WANTs going back asynchronously like messages on the migration exchange.
 */
async function move(stream: Uint8Array, store: ChunkStore, tamper?: (b: Uint8Array) => void): Promise<Moved> {
  const out = new StreamWriter();
  const source = new DedupeSource(new StreamReader(stream));
  const failures: Error[] = [];
  const logs: string[] = [];
  const sink = new DedupeSink(out, store, {
    sendWant: (msg) => {
      setTimeout(() => source.want(msg.slice()), 0);
      return Promise.resolve();
    },
    failed: (err) => {
      failures.push(err);
      return Promise.resolve();
    },
  }, (msg, fields) => logs.push(`${msg} ${JSON.stringify(fields)}`));
  const buf = new Uint8Array(256 * 1024);
  const moved: Moved = { out, source, sink, carriedBytes: 0, failures, logs };
  try {
    for (;;) {
      const n = await source.read(buf);
      if (n === null) break;
      const chunk = buf.slice(0, n);
      tamper?.(chunk);
      moved.carriedBytes += n;
      await sink.write(chunk);
    }
    sink.close();
    await sink.stored();
  } catch (err) {
    moved.error = err;
  } finally {
    source.close();
  }
  return moved;
}

async function withStore(fn: (store: ChunkStore, dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "dwcp-dedupe-io-" });
  const store = await ChunkStore.open({ dir, budgetBytes: 256 * 1024 * 1024 });
  try {
    await fn(store, dir);
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Three passes over 64 pages, half of them (in runs of 16: chunks are 8 KiB on average) shared. */
function guestStream(seed: number): Uint8Array {
  const s = new StreamBuilder().header().configuration("pc-q35-7.2").ramStart(2, [["pc.ram", 256 * PAGE]]);
  for (let pass = 0; pass < 3; pass++) {
    s.part(2);
    for (let p = 0; p < 64; p++) {
      const shared = Math.floor(p / 16) % 2 === 0;
      s.page("pc.ram", p * PAGE, randomBytes(PAGE, (shared ? 0 : seed) * 1000 + pass * 100 + p));
      s.zero("pc.ram", (64 + p) * PAGE);
    }
    s.eos().footer(2);
  }
  return s.deviceState().build().bytes;
}

Deno.test("source to sink through a real store: QEMU's exact stream, and the store fills", async () => {
  await withStore(async (store) => {
    const first = guestStream(1);
    const a = await move(first, store);
    assert.equal(a.error, undefined);
    assert.deepEqual(a.out.bytes, first);
    assert.equal(a.failures.length, 0);
    assert.ok(a.out.closed);
    assert.equal(a.source.stats().streamBytes, first.length);
    assert.ok(store.stats().entries > 0);

    // A second guest shares half its pages with the first: those come from the store.
    const second = guestStream(2);
    const b = await move(second, store);
    assert.deepEqual(b.out.bytes, second);
    const sent = b.source.stats();
    assert.ok(sent.bytesSent < 0.75 * sent.bytesOffered, JSON.stringify(sent));
    assert.ok(b.sink.stats().heldBytes > 0);
    assert.ok(b.carriedBytes < a.carriedBytes);
  });
});

Deno.test("a corrupted chunk file in the store is not used: the chunk travels again", async () => {
  await withStore(async (store, dir) => {
    const { bytes } = sampleStream(4);
    await move(bytes, store);
    await store.flush();
    // Damage every stored chunk file on disk; the store checks each read against its name.
    for await (const sub of Deno.readDir(join(dir, "chunks"))) {
      for await (const f of Deno.readDir(join(dir, "chunks", sub.name))) {
        const path = join(dir, "chunks", sub.name, f.name);
        const data = await Deno.readFile(path);
        data[0] ^= 1;
        await Deno.writeFile(path, data);
      }
    }
    const again = await move(bytes, store);
    assert.deepEqual(again.out.bytes, bytes);
    assert.equal(again.sink.stats().heldBytes, 0);
    assert.ok(store.stats().corrupt > 0);
  });
});

/** Flips the first byte of the first non-empty CHUNKS body, walking the frames as they pass. */
function tamperFirstChunk(): (b: Uint8Array) => void {
  let skip = STREAM_HEADER_BYTES;
  let head: number[] = [];
  let message: number[] = [];
  let kind = 0;
  let left = 0;
  let done = false;
  return (b) => {
    for (let i = 0; i < b.length && !done; i++) {
      if (skip > 0) {
        skip--;
      } else if (left === 0) {
        head.push(b[i]);
        if (head.length < FRAME_HEADER_BYTES) continue;
        kind = head[0];
        left = kind === FrameKind.PAGES
          ? 0
          : head[1] + head[2] * 2 ** 8 + head[3] * 2 ** 16 + head[4] * 2 ** 24;
        head = [];
        message = [];
      } else {
        left--;
        if (kind !== FrameKind.DEDUPE) continue;
        if (message.length < 24) message.push(b[i]);
        else if (message[0] === 3) {
          b[i] ^= 0xff;
          done = true;
        }
      }
    }
  };
}

Deno.test("a tampered chunk fails the sink: QEMU gets part of the stream, no wrong byte, then EOF", async () => {
  await withStore(async (store) => {
    const stream = guestStream(3);
    const moved = await move(stream, store, tamperFirstChunk());
    assert.match(String(moved.error), /hashes to [0-9a-f]{64}, offered as/);
    assert.equal(moved.failures.length, 1);
    assert.equal(moved.failures[0], moved.error);
    assert.ok(moved.out.closed);
    const got = moved.out.bytes;
    assert.ok(got.length < stream.length);
    assert.deepEqual(got, stream.subarray(0, got.length));
    // Nothing from the refused message went into the store either.
    assert.equal(store.stats().entries, 0);
  });
});

Deno.test("the sink reports its failure to the source agent and closes QEMU's socket", async () => {
  await withStore(async (store) => {
    const out = new StreamWriter();
    const failures: Error[] = [];
    const sink = new DedupeSink(out, store, {
      sendWant: () => Promise.resolve(),
      failed: (err) => {
        failures.push(err);
        return Promise.resolve();
      },
    }, () => {});
    await assert.rejects(() => sink.write(new TextEncoder().encode("QEVM\0\0\0\x03")), /not "DWMS"/);
    assert.equal(failures.length, 1);
    assert.ok(out.closed);
    assert.equal(out.bytes.length, 0);
    // Once failed, it stays failed.
    await assert.rejects(() => sink.write(new Uint8Array(1)), /not "DWMS"/);
  });
});

Deno.test("a store that fails only costs savings: the stream still arrives whole", async () => {
  await withStore(async (store) => {
    const stream = guestStream(5);
    await store.close(); // every get and put now throws
    const moved = await move(stream, store);
    assert.deepEqual(moved.out.bytes, stream);
    assert.ok(moved.logs.some((l) => l.includes("store write failed")));
    assert.ok(moved.logs.some((l) => l.includes("store read failed")));
  });
});
