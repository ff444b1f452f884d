/**
 * src/transport/chunk_source.ts and chunk_sink.ts without a network: a StreamSource reading an in-memory
 * connection, a StreamSink writing to one (or to a gated output the test opens and closes), a FileSink on a
 * temp directory. In-memory connections settle on microtasks, so `settle()` (a few macrotask turns) lets
 * everything that can happen happen; nothing here waits on a clock.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { xxh3Into } from "../../ffi/codec.ts";
import { ChunkDigests, RunningDigest } from "../../src/transport/chunk_digest.ts";
import { FileSink, RefusedError, StreamSink } from "../../src/transport/chunk_sink.ts";
import { StreamSource } from "../../src/transport/chunk_source.ts";
import {
  CHECKSUM_OFFSET,
  FRAME_HEADER_BYTES,
  FrameError,
  type FrameHeader,
  FrameType,
} from "../../src/transport/frame.ts";
import type { CommitMessage } from "../../src/transport/messages.ts";
import { StripeScheduler } from "../../src/transport/scheduler.ts";
import { Signal } from "../../src/transport/signal.ts";
import { type Duplex, writeAll } from "../../src/transport/wire.ts";
import { duplexPair } from "./memory_duplex.ts";
import { mulberry32, randInt } from "./prng.ts";

/** Lets every pending microtask chain and zero-delay timer run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((r) => setTimeout(r, 0));
}

function randomBytes(n: number, seed: number): Uint8Array {
  const rand = mulberry32(seed);
  return Uint8Array.from({ length: n }, () => Math.floor(rand() * 256));
}

function xxh3(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(8);
  xxh3Into(data, out);
  return out;
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

function header(seq: number, offset: number, data: Uint8Array, checksum = xxh3(data)): FrameHeader {
  return {
    type: FrameType.Data,
    codec: 0,
    seq,
    transferId: new Uint8Array(16),
    offset,
    rawLen: data.length,
    encLen: data.length,
    checksum,
  };
}

/** Reads conn to its end. */
async function readAll(conn: Duplex): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(4096);
  for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) parts.push(buf.slice(0, n));
  return concat(parts);
}

async function rejectsWithCode(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (err) => {
    assert.ok(err instanceof RefusedError, String(err));
    assert.equal(err.code, code, err.message);
    return true;
  });
}

// ---------------------------------------------------------------------------------------------------------
// StreamSource

/**
 * Takes every chunk the source offers, as one stream, checking each, and acks and releases it unless
 * `hold` says to keep it. Returns the chunks in the order taken.
 */
function drain(
  source: StreamSource,
  sched: StripeScheduler,
  wake: Signal,
  check: (seq: number, data: Uint8Array, offset: number) => void = () => {},
): Promise<Uint8Array[]> {
  return (async () => {
    const chunks: Uint8Array[] = [];
    while (true) {
      const seq = sched.next(0);
      if (seq === undefined) {
        if (sched.done) return chunks;
        await wake.wait();
        continue;
      }
      const { frame, offset, length } = source.load(seq);
      const data = frame.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + length);
      assert.deepEqual(frame.subarray(CHECKSUM_OFFSET, CHECKSUM_OFFSET + 8), xxh3(data), `chunk ${seq}`);
      check(seq, data, offset);
      chunks.push(data.slice());
      assert.ok(sched.ack(0, seq));
      source.release(seq);
    }
  })();
}

function streamScheduler(): StripeScheduler {
  return new StripeScheduler({ streams: 1, windowChunks: 1000, maxRetries: 3 });
}

Deno.test("stream source: chunks are offered in order, with increasing offsets, covering the input", async () => {
  for (const seed of [1, 2, 3]) {
    const input = randomBytes(40_000, seed);
    const [producer, conn] = duplexPair(seed, 3000);
    const chunkBytes = 1024, maxHeld = 4;
    const source = new StreamSource(conn, chunkBytes, maxHeld);
    const sched = streamScheduler();
    const wake = new Signal();
    let expectedOffset = 0, lastSeq = -1;
    const running = new RunningDigest();
    const drained = drain(source, sched, wake, (seq, data, offset) => {
      assert.equal(seq, lastSeq + 1, `seed ${seed}: chunks out of order`);
      lastSeq = seq;
      assert.equal(offset, expectedOffset, `seed ${seed}: chunk ${seq} offset`);
      assert.ok(data.length > 0 && data.length <= chunkBytes, `seed ${seed}: chunk ${seq} of ${data.length}`);
      assert.ok(sched.offered - sched.ackedChunks <= maxHeld, `seed ${seed}: more than ${maxHeld} held`);
      expectedOffset += data.length;
      running.fold(xxh3(data));
    });
    const run = source.run(sched, () => wake.notify());
    await writeAll(producer, input);
    producer.close();
    await run;
    const chunks = await drained;
    assert.ok(sched.done, `seed ${seed}: the source ended at EOF`);
    assert.deepEqual(concat(chunks), input, `seed ${seed}`);
    assert.equal(expectedOffset, input.length);
    assert.ok(chunks.length > input.length / chunkBytes, `seed ${seed}: short reads make short chunks`);
    assert.equal(source.digest(), running.digest(), `seed ${seed}: digest of the chunk checksums in order`);
    assert.equal(source.sizeBytes, undefined);
    source.close();
  }
});

Deno.test("stream source: a fast writer fills whole chunks", async () => {
  const input = randomBytes(10 * 4096, 7);
  const [producer, conn] = duplexPair(7, 1 << 20); // large pieces: a read takes what the chunk has room for
  const source = new StreamSource(conn, 4096, 100);
  const sched = streamScheduler();
  await writeAll(producer, input);
  producer.close();
  const wake = new Signal();
  const drained = drain(source, sched, wake);
  await source.run(sched, () => wake.notify());
  const chunks = await drained;
  assert.deepEqual(concat(chunks), input);
  assert.ok(chunks.every((c) => c.length <= 4096));
  assert.ok(chunks.filter((c) => c.length === 4096).length >= 1, "some chunk was filled in one read");
});

Deno.test("stream source: holds at most maxHeldChunks and reads no further until one is released", async () => {
  const [producer, conn] = duplexPair(11, 500);
  const maxHeld = 3;
  const source = new StreamSource(conn, 1024, maxHeld);
  const sched = streamScheduler();
  let wakes = 0;
  const run = source.run(sched, () => wakes++);
  let runSettled = false;
  run.finally(() => runSettled = true);
  const input = randomBytes(50_000, 11);
  await writeAll(producer, input); // the in-memory pipe buffers all of it
  await settle();

  assert.equal(sched.offered, maxHeld);
  assert.equal(wakes, maxHeld, "each offer wakes the stream workers");
  const held = [0, 1, 2].map((seq) => source.load(seq));
  const heldBytes = held.reduce((n, c) => n + c.length, 0);
  assert.equal(conn.incoming.consumed, heldBytes, "the source read exactly the chunks it holds");
  assert.equal(conn.incoming.buffered, input.length - heldBytes, "the rest waits in the connection");
  await settle();
  assert.equal(conn.incoming.consumed, heldBytes, "and it stays there");

  // Acknowledging in the scheduler is not enough: only release() frees room.
  sched.next(0);
  sched.ack(0, 0);
  await settle();
  assert.equal(sched.offered, maxHeld);

  source.release(1); // not the oldest: any release frees room
  await settle();
  assert.equal(sched.offered, maxHeld + 1);
  const fourth = source.load(3);
  assert.equal(fourth.offset, heldBytes);
  assert.equal(conn.incoming.consumed, heldBytes + fourth.length);

  source.release(1); // again: nothing more to free
  source.release(99); // never held
  await settle();
  assert.equal(sched.offered, maxHeld + 1);
  assert.equal(conn.incoming.consumed, heldBytes + fourth.length);

  // The held chunks' bytes are intact though a later read went into a recycled buffer.
  assert.deepEqual(
    source.load(2).frame.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + held[2].length),
    input.subarray(held[0].length + held[1].length, heldBytes),
  );
  assert.equal(runSettled, false);
  source.close();
  await run; // a closed source stops waiting for room
  assert.equal(sched.done, false, "a closed source does not end the offer: the transfer did not finish");
});

Deno.test("stream source: load() of a chunk not held throws", async () => {
  const [producer, conn] = duplexPair(13, 100);
  const source = new StreamSource(conn, 1024, 1000); // room for every chunk: run() ends at EOF
  const sched = streamScheduler();
  const run = source.run(sched, () => {});
  await writeAll(producer, randomBytes(300, 13));
  producer.close();
  await run;
  assert.ok(sched.offered > 1);
  assert.throws(() => source.load(sched.offered), /not held/); // never read
  assert.throws(() => source.load(10_000), /not held/);
  source.load(0);
  source.release(0);
  assert.throws(() => source.load(0), /not held/); // released
  source.close();
});

Deno.test("stream source: an input that ends at once offers nothing and ends", async () => {
  const [producer, conn] = duplexPair(17);
  const source = new StreamSource(conn, 1024, 4);
  const sched = streamScheduler();
  producer.close();
  let woken = false;
  await source.run(sched, () => woken = true);
  assert.equal(sched.offered, 0);
  assert.ok(sched.done);
  assert.ok(woken, "the workers are told the source ended");
  assert.equal(source.digest(), new RunningDigest().digest());
});

Deno.test("stream source: close() while waiting for input ends run()", async () => {
  const [_producer, conn] = duplexPair(19);
  const source = new StreamSource(conn, 1024, 4);
  const sched = streamScheduler();
  let settled = false;
  const run = source.run(sched, () => {}).finally(() => settled = true);
  await settle();
  // The transfer failed while the producer (a paused QEMU) writes nothing: the sender's run() awaits this.
  source.close();
  await settle();
  const wasSettled = settled;
  conn.close(); // lets run() finish either way, so that the test ends
  await run;
  assert.ok(wasSettled, "run() still waits on the input after close(): the sender's run() cannot return");
});

// ---------------------------------------------------------------------------------------------------------
// StreamSink

/** An output whose writes complete only while open; close() fails writes in flight, as a socket does. */
class GatedOutput implements Duplex {
  readonly written: Uint8Array[] = [];
  closed = false;
  #gate = Promise.withResolvers<void>();
  #failPending = Promise.withResolvers<never>();

  constructor(open = true) {
    this.#failPending.promise.catch(() => {});
    if (open) this.open();
  }

  get bytes(): number {
    return this.written.reduce((n, p) => n + p.length, 0);
  }

  open(): void {
    this.#gate.resolve();
  }

  pause(): void {
    this.#gate = Promise.withResolvers<void>();
  }

  read(): Promise<number | null> {
    return Promise.resolve(null);
  }

  async write(p: Uint8Array): Promise<number> {
    if (this.closed) throw new Deno.errors.BrokenPipe("the consumer closed");
    await Promise.race([this.#gate.promise, this.#failPending.promise]);
    if (this.closed) throw new Deno.errors.BrokenPipe("the consumer closed");
    const n = Math.min(p.length, 1000); // short writes, as a socket may do
    this.written.push(p.slice(0, n));
    return n;
  }

  close(): void {
    this.closed = true;
    this.#failPending.reject(new Deno.errors.BadResource("closed"));
  }
}

function chunksOf(sizes: number[], seed: number): Uint8Array[] {
  return sizes.map((n, i) => randomBytes(n, seed * 1000 + i));
}

function commitFor(chunks: Uint8Array[]): CommitMessage {
  const d = new RunningDigest();
  for (const c of chunks) d.fold(xxh3(c));
  return {
    type: "commit",
    chunks: chunks.length,
    bytes: chunks.reduce((n, c) => n + c.length, 0),
    digest: d.digest(),
  };
}

function offsets(chunks: Uint8Array[]): number[] {
  let at = 0;
  return chunks.map((c) => (at += c.length) - c.length);
}

Deno.test("stream sink: chunks accepted out of order reach the output in order, each acked once written", async () => {
  const chunks = chunksOf([3000, 10, 2500, 1, 4096, 700], 1);
  const at = offsets(chunks);
  const ends = chunks.map((c, i) => at[i] + c.length);
  const out = new GatedOutput();
  const sink = new StreamSink("vm-1", out);
  assert.equal(sink.label, "vm-1");
  const acks: { seq: number; written: number }[] = [];
  const accept = async (seq: number) => {
    const data = chunks[seq].slice();
    sink.check(header(seq, at[seq], data));
    await sink.accept(header(seq, at[seq], data), data, () => {
      acks.push({ seq, written: out.bytes });
      return Promise.resolve();
    });
    data.fill(0); // the receiver reuses its buffer for the next frame
  };

  await accept(2);
  await accept(5);
  await settle();
  assert.equal(out.bytes, 0, "nothing is written before chunk 0 arrives");
  assert.equal(acks.length, 0, "early chunks are not acknowledged before they are delivered");
  await accept(0);
  await settle();
  assert.deepEqual(acks.map((a) => a.seq), [0]);
  await accept(1);
  await settle();
  assert.deepEqual(acks.map((a) => a.seq), [0, 1, 2]);
  await accept(4);
  await accept(3);
  await settle();
  assert.deepEqual(acks.map((a) => a.seq), [0, 1, 2, 3, 4, 5]);
  for (const a of acks) assert.ok(a.written >= ends[a.seq], `chunk ${a.seq} acked before it was written`);
  assert.deepEqual(concat(out.written), concat(chunks));
  await sink.commit(commitFor(chunks));
  assert.ok(out.closed, "commit ends the output");
});

Deno.test("stream sink: an ack waits for the consumer to take the chunk", async () => {
  const chunks = chunksOf([5000, 5000], 2);
  const out = new GatedOutput(false);
  const sink = new StreamSink("s", out);
  let acked = 0;
  const ack = () => (acked++, Promise.resolve());
  // The next chunk in line is written from the caller's buffer: its accept settles once written.
  const first = sink.accept(header(0, 0, chunks[0]), chunks[0], ack);
  await sink.accept(header(1, 5000, chunks[1]), chunks[1], ack);
  await settle();
  assert.equal(acked, 0, "a consumer that does not read holds back the acknowledgement");
  out.open();
  await first;
  await settle();
  assert.equal(acked, 2);
  assert.deepEqual(concat(out.written), concat(chunks));
});

Deno.test("stream sink: resent chunks are acked again but delivered once", async () => {
  const chunks = chunksOf([100, 200, 300, 400], 3);
  const at = offsets(chunks);
  const out = new GatedOutput();
  const sink = new StreamSink("s", out);
  const acks: number[] = [];
  const accept = (seq: number) =>
    sink.accept(header(seq, at[seq], chunks[seq]), chunks[seq].slice(), () => {
      acks.push(seq);
      return Promise.resolve();
    });

  await accept(0);
  await settle();
  assert.deepEqual(acks, [0]);
  // The ack of chunk 0 was lost with its stream, so the sender sends it again: it is re-acked.
  sink.check(header(0, at[0], chunks[0]));
  await accept(0);
  await settle();
  assert.deepEqual(acks, [0, 0]);
  assert.equal(out.bytes, 100, "delivered once");

  // Chunk 2 arrives early, then again on another stream before chunk 1 arrives.
  await accept(2);
  await accept(2);
  await settle();
  assert.equal(out.bytes, 100);
  await accept(1);
  await accept(3);
  await settle();
  assert.deepEqual(concat(out.written), concat(chunks), "each chunk once, in order");
  assert.deepEqual(acks.filter((s) => s === 1), [1]);
  assert.ok(acks.filter((s) => s === 2).length >= 1, "chunk 2 is acknowledged");
  assert.ok(acks.includes(3));
  await sink.commit(commitFor(chunks));
});

Deno.test("stream sink: an empty chunk is refused", () => {
  const sink = new StreamSink("s", new GatedOutput());
  assert.throws(() => sink.check(header(0, 0, new Uint8Array(0))), FrameError);
});

Deno.test("stream sink: commit waits for chunks still being delivered", async () => {
  const chunks = chunksOf([2000, 2000, 2000], 4);
  const at = offsets(chunks);
  const out = new GatedOutput(false);
  const sink = new StreamSink("s", out);
  const accepted = [1, 0, 2].map((seq) =>
    sink.accept(header(seq, at[seq], chunks[seq]), chunks[seq], () => Promise.resolve())
  );
  let committed = false;
  const commit = sink.commit(commitFor(chunks)).then(() => committed = true);
  await settle();
  assert.equal(committed, false, "the consumer has not taken the chunks yet");
  assert.equal(out.closed, false);
  out.open();
  await commit;
  await Promise.all(accepted);
  assert.deepEqual(concat(out.written), concat(chunks));
  assert.ok(out.closed);
});

Deno.test("stream sink: commit verifies the chunk count, the bytes and the digest", async (t) => {
  const chunks = chunksOf([1000, 1000, 500], 5);
  const at = offsets(chunks);
  async function delivered(): Promise<{ sink: StreamSink; out: GatedOutput }> {
    const out = new GatedOutput();
    const sink = new StreamSink("s", out);
    for (const seq of [0, 1, 2]) {
      await sink.accept(header(seq, at[seq], chunks[seq]), chunks[seq], () => Promise.resolve());
    }
    await settle();
    assert.equal(out.bytes, 2500);
    return { sink, out };
  }
  const good = commitFor(chunks);

  await t.step("fewer chunks than delivered: incomplete", async () => {
    const { sink } = await delivered();
    await rejectsWithCode(sink.commit({ ...good, chunks: 2 }), "incomplete");
    await sink.abort();
  });
  await t.step("other bytes than delivered: incomplete", async () => {
    const { sink } = await delivered();
    await rejectsWithCode(sink.commit({ ...good, bytes: good.bytes + 1 }), "incomplete");
    await sink.abort();
  });
  await t.step("another digest: digest_mismatch", async () => {
    const { sink } = await delivered();
    await rejectsWithCode(
      sink.commit({ ...good, digest: commitFor(chunks.slice().reverse()).digest }),
      "digest_mismatch",
    );
    await sink.abort();
  });
  await t.step("a frame whose checksum the sender folded differently: digest_mismatch", async () => {
    const out = new GatedOutput();
    const sink = new StreamSink("s", out);
    for (const seq of [0, 1, 2]) {
      const sum = xxh3(chunks[seq]);
      if (seq === 1) sum[0] ^= 1; // what the receiver verified is not what the sender's digest covers
      await sink.accept(header(seq, at[seq], chunks[seq], sum), chunks[seq], () => Promise.resolve());
    }
    await rejectsWithCode(sink.commit(good), "digest_mismatch");
    await sink.abort();
  });
  await t.step("all agree: committed, output closed", async () => {
    const { sink, out } = await delivered();
    await sink.commit(good);
    assert.ok(out.closed);
  });
});

Deno.test("stream sink: a commit for chunks that never arrived is refused, not awaited", async () => {
  const chunks = chunksOf([1000, 1000, 1000], 6);
  const at = offsets(chunks);
  const out = new GatedOutput();
  const sink = new StreamSink("s", out);
  for (const seq of [0, 2]) {
    await sink.accept(header(seq, at[seq], chunks[seq]), chunks[seq], () => Promise.resolve());
  }
  let outcome: unknown = "pending";
  const commit = sink.commit(commitFor(chunks)).then(() => outcome = "committed", (err) => outcome = err);
  await settle();
  const seen = outcome;
  await sink.abort(); // ends a commit that is still waiting, so that the test ends
  await commit;
  assert.notEqual(seen, "pending", "commit waits forever for chunk 1, which the sender never sent");
  assert.ok(seen instanceof RefusedError && seen.code === "incomplete", String(seen));
});

Deno.test("stream sink: abort closes the output, also while a write is stuck", async () => {
  const out = new GatedOutput();
  const sink = new StreamSink("s", out);
  const data = randomBytes(3000, 8);
  await sink.accept(header(0, 0, data), data, () => Promise.resolve());
  await settle();
  await sink.abort();
  assert.ok(out.closed);
  await sink.abort(); // twice is fine

  const stuck = new GatedOutput(false);
  const sink2 = new StreamSink("s", stuck);
  let acked = false;
  const accepted = sink2.accept(header(0, 0, data), data, () => (acked = true, Promise.resolve()));
  await settle();
  await sink2.abort(); // the consumer never reads: abort must not wait for it
  await accepted; // and the reader waiting on its chunk is let go
  assert.ok(stuck.closed);
  assert.equal(acked, false);
});

Deno.test("stream sink: a consumer that went away fails what comes next with sink_failed", async () => {
  const [output, consumer] = duplexPair(21, 500);
  const sink = new StreamSink("s", output);
  const chunks = chunksOf([800, 800, 800], 9);
  const at = offsets(chunks);
  let acked = 0;
  const ack = () => (acked++, Promise.resolve());
  await sink.accept(header(0, 0, chunks[0]), chunks[0], ack);
  await settle();
  assert.equal(acked, 1);
  consumer.close();
  await rejectsWithCode(sink.accept(header(1, at[1], chunks[1]), chunks[1], ack), "sink_failed");
  await settle();
  assert.equal(acked, 1, "a chunk the consumer did not take is not acknowledged");
  await rejectsWithCode(sink.accept(header(2, at[2], chunks[2]), chunks[2], ack), "sink_failed");
  await rejectsWithCode(sink.commit(commitFor(chunks)), "sink_failed");
  await sink.abort();
});

Deno.test("stream source to stream sink over three streams in random order: identical bytes, digests agree", async () => {
  const rand = mulberry32(31);
  const input = randomBytes(200_000, 31);
  const [producer, conn] = duplexPair(31, 5000);
  const [output, consumer] = duplexPair(32, 3000);
  const source = new StreamSource(conn, 2048, 3 * 4);
  const sched = new StripeScheduler({ streams: 3, windowChunks: 4, maxRetries: 3 });
  const sink = new StreamSink("s", output);
  const received = readAll(consumer);
  const wake = new Signal();
  const run = source.run(sched, () => wake.notify());
  const feeding = writeAll(producer, input).then(() => producer.close());
  // Frames in flight, per stream; the "network" delivers a random one of them at each step.
  const inflight: { stream: number; seq: number }[] = [];
  let bytes = 0;
  while (!sched.done) {
    let took = false;
    for (let stream = 0; stream < 3; stream++) {
      for (let seq = sched.next(stream); seq !== undefined; seq = sched.next(stream)) {
        inflight.push({ stream, seq });
        took = true;
      }
    }
    if (inflight.length === 0) {
      if (!took) await wake.wait();
      continue;
    }
    const { stream, seq } = inflight.splice(randInt(rand, 0, inflight.length - 1), 1)[0];
    const c = source.load(seq);
    const data = c.frame.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + c.length);
    const h = header(seq, c.offset, data, c.frame.slice(CHECKSUM_OFFSET, CHECKSUM_OFFSET + 8));
    sink.check(h);
    await sink.accept(h, data, () => {
      if (sched.ack(stream, seq)) {
        bytes += c.length;
        source.release(seq);
      }
      wake.notify();
      return Promise.resolve();
    });
    await new Promise((r) => setTimeout(r, 0)); // the sink delivers and acks
  }
  await run;
  await feeding;
  await sink.commit({ type: "commit", chunks: sched.offered, bytes, digest: source.digest() });
  assert.deepEqual(await received, input);
  assert.equal(bytes, input.length);
});

// ---------------------------------------------------------------------------------------------------------
// FileSink

const KiB = 1024;
const FILE_SIZE = 10 * KiB + 100; // ten full chunks and a short one

async function fileSink(dir: string): Promise<FileSink> {
  return await FileSink.create(join(dir, "out.bin"), crypto.randomUUID(), FILE_SIZE, KiB, false);
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

function fileChunks(data: Uint8Array): { seq: number; offset: number; data: Uint8Array }[] {
  return Array.from({ length: Math.ceil(data.length / KiB) }, (_, seq) => ({
    seq,
    offset: seq * KiB,
    data: data.subarray(seq * KiB, Math.min(data.length, (seq + 1) * KiB)),
  }));
}

function fileDigest(data: Uint8Array): string {
  const d = new ChunkDigests(Math.ceil(data.length / KiB));
  for (const c of fileChunks(data)) d.record(c.seq, xxh3(c.data));
  return d.digest();
}

Deno.test("file sink: check() refuses a frame outside the file's layout", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const sink = await fileSink(dir);
    const body = (n: number) => new Uint8Array(n);
    sink.check(header(0, 0, body(KiB)));
    sink.check(header(9, 9 * KiB, body(KiB)));
    sink.check(header(10, 10 * KiB, body(100))); // the short last chunk
    for (
      const [what, h] of [
        ["past the last chunk", header(11, 11 * KiB, body(100))],
        ["far past the end", header(2 ** 31, 2 ** 31 * KiB, body(KiB))],
        ["offset not seq × chunkBytes", header(1, 0, body(KiB))],
        ["offset off by one", header(1, KiB + 1, body(KiB))],
        ["a full-size last chunk", header(10, 10 * KiB, body(KiB))],
        ["a short middle chunk", header(3, 3 * KiB, body(1000))],
        ["an empty chunk", header(2, 2 * KiB, body(0))],
      ] as const
    ) {
      assert.throws(() => sink.check(h), FrameError, what);
    }
    await sink.abort();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("file sink: chunks in any order, acked once written, committed into place", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const data = randomBytes(FILE_SIZE, 41);
    const sink = await fileSink(dir);
    assert.equal(sink.label, join(dir, "out.bin"));
    assert.equal(sink.sizeBytes, FILE_SIZE);
    assert.ok(await exists(sink.tempPath), "the temporary file exists from the start");
    const order = fileChunks(data).reverse();
    for (const c of order) {
      const h = header(c.seq, c.offset, c.data);
      sink.check(h);
      await sink.accept(h, c.data.slice(), async () => {
        const f = await Deno.open(sink.tempPath);
        const got = new Uint8Array(c.data.length);
        await f.seek(c.offset, Deno.SeekMode.Start);
        let n = 0;
        while (n < got.length) n += (await f.read(got.subarray(n))) ?? Infinity;
        f.close();
        assert.deepEqual(got, c.data, `chunk ${c.seq} acked before it was written`);
      });
    }
    await sink.commit({ type: "commit", chunks: 11, bytes: FILE_SIZE, digest: fileDigest(data) });
    assert.deepEqual(await Deno.readFile(join(dir, "out.bin")), data);
    assert.equal(await exists(sink.tempPath), false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("file sink: commit with a missing chunk is incomplete; a wrong digest is digest_mismatch", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const data = randomBytes(FILE_SIZE, 43);
    const commit = { type: "commit", chunks: 11, bytes: FILE_SIZE, digest: fileDigest(data) } as const;

    const missing = await fileSink(dir);
    for (const c of fileChunks(data).filter((c) => c.seq !== 4)) {
      await missing.accept(header(c.seq, c.offset, c.data), c.data, () => Promise.resolve());
    }
    await rejectsWithCode(missing.commit(commit), "incomplete");
    assert.equal(await exists(join(dir, "out.bin")), false, "nothing is put in place");
    await missing.abort();

    const wrongCount = await fileSink(dir);
    for (const c of fileChunks(data)) {
      await wrongCount.accept(header(c.seq, c.offset, c.data), c.data, () => Promise.resolve());
    }
    await rejectsWithCode(wrongCount.commit({ ...commit, chunks: 12 }), "incomplete");
    await rejectsWithCode(wrongCount.commit({ ...commit, digest: "0".repeat(16) }), "digest_mismatch");
    assert.equal(await exists(join(dir, "out.bin")), false);
    await wrongCount.abort();
    assert.deepEqual(await Array.fromAsync(Deno.readDir(dir)), [], "aborts left nothing behind");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("file sink: abort removes the temporary file, and may be repeated", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const sink = await fileSink(dir);
    const c = fileChunks(randomBytes(FILE_SIZE, 47))[0];
    await sink.accept(header(c.seq, c.offset, c.data), c.data, () => Promise.resolve());
    assert.ok(await exists(sink.tempPath));
    await sink.abort();
    assert.equal(await exists(sink.tempPath), false);
    assert.equal(await exists(join(dir, "out.bin")), false);
    await sink.abort();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
