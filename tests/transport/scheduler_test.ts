/**
 * src/transport/scheduler.ts, as scenarios: each test is a short transcript of streams asking for
 * chunks, the receiver acking or nacking them, and streams dying; then a seeded random simulation.
 */
import assert from "node:assert/strict";
import { SchedulerError, type SchedulerOptions, StripeScheduler } from "../../src/transport/scheduler.ts";
import { mulberry32, pick, randInt } from "./prng.ts";

const KiB = 1024;

function scheduler(over: Partial<SchedulerOptions> = {}): StripeScheduler {
  return new StripeScheduler({
    sizeBytes: 16 * KiB,
    chunkBytes: KiB,
    streams: 2,
    windowChunks: 2,
    maxRetries: 3,
    ...over,
  });
}

/** Everything stream may send now: next() until it says no. */
function take(s: StripeScheduler, stream: number): number[] {
  const seqs: number[] = [];
  for (let c = s.next(stream); c; c = s.next(stream)) seqs.push(c.seq);
  return seqs;
}

function ackAll(s: StripeScheduler, stream: number, seqs: number[]): void {
  for (const seq of seqs) s.ack(stream, seq);
}

Deno.test("chunks tile the file; the last one is shorter", () => {
  const s = scheduler({ sizeBytes: 10 * KiB + 100, streams: 1, windowChunks: 100 });
  assert.equal(s.totalChunks, 11);
  const chunks = [];
  for (let c = s.next(0); c; c = s.next(0)) chunks.push(c);
  assert.deepEqual(chunks.slice(0, 2), [{ seq: 0, offset: 0, length: KiB }, {
    seq: 1,
    offset: KiB,
    length: KiB,
  }]);
  assert.deepEqual(chunks.at(-1), { seq: 10, offset: 10 * KiB, length: 100 });
  assert.equal(chunks.reduce((sum, c) => sum + c.length, 0), 10 * KiB + 100);
});

Deno.test("a file that is an exact multiple of the chunk size has no short chunk", () => {
  const s = scheduler({ sizeBytes: 4 * KiB, streams: 1, windowChunks: 8 });
  assert.equal(s.totalChunks, 4);
  assert.deepEqual(s.chunk(3), { seq: 3, offset: 3 * KiB, length: KiB });
});

Deno.test("offsets past 4 GiB are exact", () => {
  const GiB = 1024 * 1024 * 1024;
  const s = scheduler({ sizeBytes: 5 * GiB + 1, chunkBytes: GiB, streams: 1 });
  assert.equal(s.totalChunks, 6);
  assert.deepEqual(s.chunk(5), { seq: 5, offset: 5 * GiB, length: 1 });
});

Deno.test("an empty file is done before anything is sent", () => {
  const s = scheduler({ sizeBytes: 0 });
  assert.equal(s.totalChunks, 0);
  assert.ok(s.done);
  assert.equal(s.next(0), undefined);
  // Losing every stream of a finished transfer is not an error.
  s.streamLost(0);
  s.streamLost(1);
});

Deno.test("invalid options are refused", () => {
  assert.throws(() => scheduler({ chunkBytes: 0 }), RangeError);
  assert.throws(() => scheduler({ streams: 0 }), RangeError);
  assert.throws(() => scheduler({ windowChunks: 0 }), RangeError);
});

Deno.test("credit: a stream has at most windowChunks in flight, and each ack returns one", () => {
  const s = scheduler({ windowChunks: 3 });
  assert.deepEqual(take(s, 0), [0, 1, 2]); // window full
  assert.deepEqual(take(s, 1), [3, 4, 5]); // the other stream has its own credit
  assert.equal(s.inflight(0), 3);

  s.ack(0, 1);
  assert.deepEqual(take(s, 0), [6]); // one ack, one credit
  s.ack(0, 0);
  s.ack(0, 2);
  assert.deepEqual(take(s, 0), [7, 8]);
  assert.equal(s.inflight(0), 3);
  assert.equal(s.ackedChunks, 3);
});

Deno.test("duplicate, foreign and unknown acks are ignored", () => {
  const s = scheduler();
  assert.deepEqual(take(s, 0), [0, 1]);
  assert.deepEqual(take(s, 1), [2, 3]);

  s.ack(0, 0);
  s.ack(0, 0); // duplicate
  s.ack(1, 1); // chunk 1 is in flight on stream 0, not 1
  s.ack(0, 99); // never sent
  s.ack(7, 2); // no such stream
  assert.equal(s.ackedChunks, 1);
  assert.equal(s.inflight(0), 1);
  assert.equal(s.inflight(1), 2);
});

Deno.test("a nacked chunk goes to the front of the queue and the next free stream resends it", () => {
  const s = scheduler();
  assert.deepEqual(take(s, 0), [0, 1]);
  assert.deepEqual(take(s, 1), [2, 3]);

  s.nack(0, 1); // receiver: chunk 1 failed its checksum
  s.ack(1, 2);
  assert.deepEqual(take(s, 1), [1]); // stream 1 resends it before any fresh chunk
  assert.deepEqual(take(s, 0), [4]);
  s.ack(1, 1);
  assert.equal(s.ackedChunks, 2);
});

Deno.test("nacks for chunks not in flight are ignored and cost no retry", () => {
  const s = scheduler({ maxRetries: 0 });
  assert.deepEqual(take(s, 0), [0, 1]);
  s.nack(1, 0); // foreign
  s.nack(0, 5); // never sent
  assert.equal(s.inflight(0), 2);
  assert.deepEqual(take(s, 1), [2, 3]); // nothing was requeued
});

Deno.test("a chunk nacked more than maxRetries times fails the transfer", () => {
  const s = scheduler({ maxRetries: 2, streams: 1 });
  assert.deepEqual(take(s, 0), [0, 1]);
  s.nack(0, 0);
  assert.deepEqual(take(s, 0), [0]);
  s.nack(0, 0);
  assert.deepEqual(take(s, 0), [0]);
  assert.throws(() => s.nack(0, 0), new SchedulerError("chunk 0 failed verification 3 times; giving up"));
});

Deno.test("retries are counted per chunk", () => {
  const s = scheduler({ maxRetries: 1, streams: 1 });
  assert.deepEqual(take(s, 0), [0, 1]);
  s.nack(0, 0);
  s.nack(0, 1); // a first retry for chunk 1, not a second for the transfer
  assert.deepEqual(take(s, 0), [1, 0]);
});

Deno.test("a lost stream's chunks go to the survivors first, in order", () => {
  const s = scheduler({ windowChunks: 3 });
  assert.deepEqual(take(s, 0), [0, 1, 2]);
  assert.deepEqual(take(s, 1), [3, 4, 5]);
  s.ack(1, 3);
  s.ack(0, 1);

  s.streamLost(0); // 0 and 2 were unacknowledged on it
  assert.equal(s.liveStreams, 1);
  assert.equal(s.isAlive(0), false);
  assert.equal(s.next(0), undefined); // a dead stream gets nothing
  assert.deepEqual(take(s, 1), [0]); // one credit left on stream 1
  s.ack(1, 4);
  s.ack(1, 5);
  assert.deepEqual(take(s, 1), [2, 6]);
});

Deno.test("a late ack from a lost stream does not count", () => {
  const s = scheduler();
  assert.deepEqual(take(s, 0), [0, 1]);
  s.streamLost(0);
  s.ack(0, 0);
  assert.equal(s.ackedChunks, 0);
  assert.deepEqual(take(s, 1), [0, 1]); // still owed, now by stream 1
  ackAll(s, 1, [0, 1]);
  assert.equal(s.ackedChunks, 2);
});

Deno.test("losing a stream twice changes nothing", () => {
  const s = scheduler({ streams: 3 });
  assert.deepEqual(take(s, 0), [0, 1]);
  s.streamLost(0);
  s.streamLost(0);
  assert.equal(s.liveStreams, 2);
  assert.deepEqual(take(s, 1), [0, 1]); // requeued once, not twice
  assert.deepEqual(take(s, 2), [2, 3]);
});

Deno.test("losing every stream before the end fails the transfer", () => {
  const s = scheduler();
  take(s, 0);
  s.streamLost(0);
  assert.throws(() => s.streamLost(1), new SchedulerError("all streams to the peer were lost"));
});

Deno.test("losing every stream after the last ack is fine", () => {
  const s = scheduler({ sizeBytes: 2 * KiB });
  ackAll(s, 0, take(s, 0));
  assert.ok(s.done);
  s.streamLost(0);
  s.streamLost(1);
  assert.equal(s.liveStreams, 0);
});

/**
 * A random run: live streams take chunks, the receiver acks or nacks a random in-flight chunk, stale
 * and duplicate acks arrive, streams die (all but one, unless killAll). The model tracks what each
 * stream really has in flight and every chunk the scheduler counted as acknowledged.
 */
function simulate(seed: number, killAll = false): { acked: Set<number>; s: StripeScheduler } {
  const rand = mulberry32(seed);
  const streams = randInt(rand, 1, 6);
  const s = new StripeScheduler({
    sizeBytes: randInt(rand, 0, 200) * 1000 + randInt(rand, 0, 999),
    chunkBytes: 1000,
    streams,
    windowChunks: randInt(rand, 1, 5),
    maxRetries: 1000,
  });
  const inflight: number[][] = Array.from({ length: streams }, () => []);
  const lost = new Set<number>();
  const acked = new Set<number>();
  for (let step = 0; !s.done; step++) {
    assert.ok(step < 100_000, `seed ${seed}: no progress`);
    const live = [...inflight.keys()].filter((i) => !lost.has(i));
    const busy = live.filter((i) => inflight[i].length > 0);
    const r = rand();
    if (r < 0.4) {
      const stream = pick(rand, live);
      for (let c = s.next(stream); c; c = s.next(stream)) {
        assert.ok(!acked.has(c.seq), `seed ${seed}: acked chunk ${c.seq} sent again`);
        inflight[stream].push(c.seq);
      }
      assert.ok(s.inflight(stream) <= s.opts.windowChunks, `seed ${seed}: window exceeded`);
    } else if (r < 0.8 && busy.length) {
      const stream = pick(rand, busy);
      const seq = inflight[stream].splice(randInt(rand, 0, inflight[stream].length - 1), 1)[0];
      const before = s.ackedChunks;
      if (rand() < 0.1) {
        s.nack(stream, seq);
        assert.equal(s.ackedChunks, before);
      } else {
        s.ack(stream, seq);
        assert.equal(s.ackedChunks, before + 1, `seed ${seed}: ack of ${seq} on ${stream} not counted`);
        assert.ok(!acked.has(seq), `seed ${seed}: chunk ${seq} acked twice`);
        acked.add(seq);
        if (rand() < 0.2) s.ack(stream, seq); // a duplicate
        assert.equal(s.ackedChunks, before + 1, `seed ${seed}: duplicate ack counted`);
      }
    } else if (r < 0.83 && (killAll || live.length > 1)) {
      const stream = pick(rand, live);
      const stale = inflight[stream];
      s.streamLost(stream); // throws when it was the last one and chunks remain
      lost.add(stream);
      inflight[stream] = [];
      // Acks still on the wire from the dead stream must not count.
      const before = s.ackedChunks;
      for (const seq of stale) s.ack(stream, seq);
      assert.equal(s.ackedChunks, before, `seed ${seed}: stale ack counted`);
    }
    for (const i of inflight.keys()) assert.equal(s.inflight(i), inflight[i].length, `seed ${seed}`);
  }
  return { acked, s };
}

Deno.test("simulation: with a surviving stream, every chunk is acked exactly once", () => {
  for (let seed = 1; seed <= 200; seed++) {
    const { acked, s } = simulate(seed);
    assert.equal(acked.size, s.totalChunks, `seed ${seed}`);
    for (let seq = 0; seq < s.totalChunks; seq++) assert.ok(acked.has(seq), `seed ${seed}: chunk ${seq}`);
    assert.ok(s.liveStreams >= 1);
    for (let i = 0; i < s.opts.streams; i++) assert.equal(s.next(i), undefined, `seed ${seed}: extra chunk`);
  }
});

Deno.test("simulation: when every stream dies first, the scheduler says so", () => {
  let failed = 0;
  for (let seed = 1; seed <= 200; seed++) {
    try {
      const { acked, s } = simulate(seed, true);
      assert.equal(acked.size, s.totalChunks, `seed ${seed}`);
    } catch (err) {
      assert.ok(err instanceof SchedulerError, `seed ${seed}: ${err}`);
      assert.equal(err.message, "all streams to the peer were lost");
      failed++;
    }
  }
  assert.ok(failed > 10, `only ${failed} runs lost every stream; the simulation does not cover it`);
});
