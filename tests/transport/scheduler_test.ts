/**
 * src/transport/scheduler.ts, as scenarios: each test is a short transcript of the source offering
 * chunks, streams asking for them, the receiver acking or nacking them, and streams dying; then a seeded
 * random simulation that interleaves all of these.
 */
import assert from "node:assert/strict";
import { SchedulerError, type SchedulerOptions, StripeScheduler } from "../../src/transport/scheduler.ts";
import { mulberry32, pick, randInt } from "./prng.ts";

function scheduler(over: Partial<SchedulerOptions> = {}, offered = 16): StripeScheduler {
  const s = new StripeScheduler({ streams: 2, windowChunks: 2, maxRetries: 3, ...over });
  s.offer(offered);
  return s;
}

/** Everything stream may send now: next() until it says no. Chunk 0 is a valid answer. */
function take(s: StripeScheduler, stream: number): number[] {
  const seqs: number[] = [];
  for (let seq = s.next(stream); seq !== undefined; seq = s.next(stream)) seqs.push(seq);
  return seqs;
}

function ackAll(s: StripeScheduler, stream: number, seqs: number[]): void {
  for (const seq of seqs) assert.ok(s.ack(stream, seq), `ack of ${seq} on ${stream}`);
}

Deno.test("nothing goes out before the source offers it; offered chunks go out in sequence", () => {
  const s = new StripeScheduler({ streams: 2, windowChunks: 8, maxRetries: 3 });
  assert.equal(s.next(0), undefined);
  assert.equal(s.offered, 0);
  s.offer(); // one chunk
  assert.deepEqual(take(s, 0), [0]);
  assert.deepEqual(take(s, 1), []); // nothing else is ready, though stream 1 has all its credit
  s.offer(3);
  assert.equal(s.offered, 4);
  assert.deepEqual(take(s, 1), [1, 2, 3]);
  s.offer(0); // offering nothing changes nothing
  assert.equal(s.offered, 4);
  assert.deepEqual(take(s, 0), []);
});

Deno.test("an empty source is done as soon as it ends", () => {
  const s = new StripeScheduler({ streams: 2, windowChunks: 2, maxRetries: 3 });
  assert.equal(s.done, false, "a source that has not ended may still offer chunks");
  s.end();
  assert.ok(s.done);
  assert.equal(s.next(0), undefined);
  // Losing every stream of a finished transfer is not an error.
  s.streamLost(0);
  s.streamLost(1);
});

Deno.test("offering chunks after the end of the source is refused", () => {
  const s = scheduler({}, 2);
  s.end();
  assert.throws(() => s.offer(), new SchedulerError("chunks offered after the end of the source"));
  assert.throws(() => s.offer(5), SchedulerError);
  assert.equal(s.offered, 2);
  assert.deepEqual(take(s, 0), [0, 1]);
  assert.deepEqual(take(s, 1), []);
});

Deno.test("done only once the source ended and every offered chunk is acknowledged", () => {
  const s = scheduler({}, 3);
  ackAll(s, 0, take(s, 0)); // 0, 1
  ackAll(s, 1, take(s, 1)); // 2
  assert.equal(s.ackedChunks, 3);
  assert.equal(s.done, false, "every offered chunk is acked, but the source has not ended");
  s.offer();
  assert.deepEqual(take(s, 0), [3]);
  s.end();
  assert.equal(s.done, false, "chunk 3 is still in flight");
  s.nack(0, 3);
  assert.equal(s.done, false);
  assert.deepEqual(take(s, 1), [3]);
  ackAll(s, 1, [3]);
  assert.ok(s.done);
});

Deno.test("invalid options are refused", () => {
  assert.throws(() => scheduler({ streams: 0 }), RangeError);
  assert.throws(() => scheduler({ windowChunks: 0 }), RangeError);
  assert.throws(() => scheduler({ streams: NaN }), RangeError);
  assert.throws(() => scheduler({ transferWindowChunks: 0 }), RangeError);
});

Deno.test("credit: a stream has at most windowChunks fresh chunks in flight, and each ack returns one", () => {
  const s = scheduler({ windowChunks: 3 });
  assert.deepEqual(take(s, 0), [0, 1, 2]); // window full
  assert.deepEqual(take(s, 1), [3, 4, 5]); // the other stream has its own credit
  assert.equal(s.inflight(0), 3);

  assert.equal(s.ack(0, 1), true);
  assert.deepEqual(take(s, 0), [6]); // one ack, one credit
  s.ack(0, 0);
  s.ack(0, 2);
  assert.deepEqual(take(s, 0), [7, 8]);
  assert.equal(s.inflight(0), 3);
  assert.equal(s.ackedChunks, 3);
});

Deno.test("transfer window: fresh chunks stop at transferWindowChunks over all streams", () => {
  const s = scheduler({ streams: 3, windowChunks: 2, transferWindowChunks: 3 });
  assert.deepEqual(take(s, 0), [0, 1]); // the stream's own window
  assert.deepEqual(take(s, 1), [2]); // the transfer's
  assert.deepEqual(take(s, 2), []);
  s.ack(0, 0);
  assert.deepEqual(take(s, 2), [3]); // an ack on one stream frees a chunk for any
  assert.deepEqual(take(s, 1), []);
  s.ack(1, 2);
  s.ack(2, 3);
  assert.deepEqual(take(s, 1), [4, 5]);
  assert.deepEqual(take(s, 2), []);
});

Deno.test("transfer window: resends and a lost stream's chunks go out past it; losses free it", () => {
  const s = scheduler({ streams: 3, windowChunks: 2, transferWindowChunks: 3 });
  assert.deepEqual(take(s, 0), [0, 1]);
  assert.deepEqual(take(s, 1), [2]);
  s.nack(1, 2);
  assert.deepEqual(take(s, 2), [2]); // the resend takes the place it left
  s.streamLost(0);
  assert.deepEqual(take(s, 1), [0, 1]); // requeued, credit or not
  assert.deepEqual(take(s, 2), []); // 3 in flight: no fresh chunk
  s.ack(2, 2);
  s.streamLost(1);
  assert.deepEqual(take(s, 2), [0, 1]); // the lost stream's, past the window again
  ackAll(s, 2, [0, 1]);
  assert.deepEqual(take(s, 2), [3, 4]); // nothing in flight: the stream's own window binds
});

Deno.test("duplicate, foreign and unknown acks are ignored and say so", () => {
  const s = scheduler();
  assert.deepEqual(take(s, 0), [0, 1]);
  assert.deepEqual(take(s, 1), [2, 3]);

  assert.equal(s.ack(0, 0), true);
  assert.equal(s.ack(0, 0), false); // duplicate
  assert.equal(s.ack(1, 1), false); // chunk 1 is in flight on stream 0, not 1
  assert.equal(s.ack(0, 99), false); // never sent
  assert.equal(s.ack(7, 2), false); // no such stream
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

Deno.test("a lost stream's chunks go to the survivors first, in order, credit or not", () => {
  const s = scheduler({ windowChunks: 3 });
  assert.deepEqual(take(s, 0), [0, 1, 2]);
  assert.deepEqual(take(s, 1), [3, 4, 5]);
  s.ack(1, 3);
  s.ack(0, 1);

  s.streamLost(0); // 0 and 2 were unacknowledged on it
  assert.equal(s.liveStreams, 1);
  assert.equal(s.isAlive(0), false);
  assert.equal(s.next(0), undefined); // a dead stream gets nothing
  // Both requeued chunks go out at once, though stream 1 had one credit left; then no fresh chunk.
  assert.deepEqual(take(s, 1), [0, 2]);
  assert.equal(s.inflight(1), 4);
  s.ack(1, 4);
  s.ack(1, 5);
  s.ack(1, 0);
  // Credit counts every chunk in flight, resends included: with chunk 2 out, two fresh ones fit.
  assert.deepEqual(take(s, 1), [6, 7]);
});

Deno.test("requeued chunks go out on a stream with no credit (the in-order receiver's deadlock)", () => {
  // Window 1: A sends chunk 0, B sends chunk 1. A in-order receiver holds chunk 1 unacknowledged until
  // chunk 0 arrives. A dies with chunk 0. If B waited for credit it would wait forever.
  const s = scheduler({ streams: 2, windowChunks: 1 }, 4);
  const A = 0, B = 1;
  assert.deepEqual(take(s, A), [0]);
  assert.deepEqual(take(s, B), [1]);
  assert.equal(s.next(B), undefined, "B has no credit for a fresh chunk");
  s.streamLost(A);
  assert.equal(s.next(B), 0, "B resends chunk 0 although chunk 1 is unacknowledged on it");
  assert.equal(s.inflight(B), 2);
  assert.equal(s.next(B), undefined, "no fresh chunk beyond the window");
  // The receiver delivers 0, then 1, and acks both.
  ackAll(s, B, [0, 1]);
  assert.deepEqual(take(s, B), [2]);
});

Deno.test("a nacked chunk is resent next on a stream whose window is full", () => {
  const s = scheduler({ streams: 2, windowChunks: 1 }, 4);
  assert.deepEqual(take(s, 0), [0]);
  assert.deepEqual(take(s, 1), [1]);
  s.nack(1, 1);
  assert.equal(s.inflight(0), 1);
  assert.equal(s.next(0), 1, "stream 0's window is full, but the resend does not wait for credit");
  assert.deepEqual(take(s, 1), [2]); // the fresh chunk takes stream 1's returned credit
});

Deno.test("a late ack from a lost stream does not count", () => {
  const s = scheduler();
  assert.deepEqual(take(s, 0), [0, 1]);
  s.streamLost(0);
  assert.equal(s.ack(0, 0), false);
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
  assert.deepEqual(take(s, 1), [0, 1]); // requeued once, not twice; they fill its window
  assert.deepEqual(take(s, 2), [2, 3]);
});

Deno.test("losing every stream before the end fails the transfer", () => {
  const s = scheduler();
  take(s, 0);
  s.streamLost(0);
  assert.throws(() => s.streamLost(1), new SchedulerError("all streams to the peer were lost"));
});

Deno.test("losing every stream while the source may still offer fails, even with all acked", () => {
  const s = scheduler({}, 2);
  ackAll(s, 0, take(s, 0));
  assert.equal(s.done, false);
  s.streamLost(0);
  assert.throws(() => s.streamLost(1), SchedulerError);
});

Deno.test("losing every stream after the end and the last ack is fine", () => {
  const s = scheduler({}, 2);
  s.end();
  ackAll(s, 0, take(s, 0));
  assert.ok(s.done);
  s.streamLost(0);
  s.streamLost(1);
  assert.equal(s.liveStreams, 0);
});

/**
 * A random run: the source offers chunks a few at a time, live streams take chunks, the receiver acks
 * or nacks a random in-flight chunk, stale and duplicate acks arrive, streams die (all but one, unless
 * killAll); once the source has offered everything it ends. The model keeps what each stream really has
 * in flight, the queue of chunks to resend, and every chunk the scheduler counted as acknowledged.
 */
function simulate(seed: number, killAll = false): { acked: Set<number>; s: StripeScheduler; total: number } {
  const rand = mulberry32(seed);
  const streams = randInt(rand, 1, 6);
  const window = randInt(rand, 1, 5);
  // Half the runs cap the transfer's chunks in flight below streams × window.
  const transferWindow = rand() < 0.5 ? randInt(rand, 1, streams * window) : undefined;
  const total = randInt(rand, 0, 200);
  const s = new StripeScheduler({
    streams,
    windowChunks: window,
    transferWindowChunks: transferWindow,
    maxRetries: 1000,
  });
  const inflight: number[][] = Array.from({ length: streams }, () => []);
  const requeued: number[] = [];
  const lost = new Set<number>();
  const acked = new Set<number>();
  const inFlight = () => inflight.reduce((n, chunks) => n + chunks.length, 0);
  let offered = 0, ended = false, nextFresh = 0;
  for (let step = 0; !s.done; step++) {
    assert.ok(step < 100_000, `seed ${seed}: no progress`);
    assert.equal(ended && acked.size === offered, false, `seed ${seed}: not done though it should be`);
    const live = [...inflight.keys()].filter((i) => !lost.has(i));
    const busy = live.filter((i) => inflight[i].length > 0);
    const r = rand();
    if (r < 0.15 && !ended) {
      if (offered < total) {
        const n = randInt(rand, 0, Math.min(5, total - offered));
        s.offer(n);
        offered += n;
      } else {
        s.end();
        ended = true;
      }
      assert.equal(s.offered, offered);
    } else if (r < 0.5) {
      const stream = pick(rand, live);
      for (let seq = s.next(stream); seq !== undefined; seq = s.next(stream)) {
        assert.ok(!acked.has(seq), `seed ${seed}: acked chunk ${seq} sent again`);
        assert.ok(seq < offered, `seed ${seed}: chunk ${seq} sent before it was offered`);
        if (requeued.length) {
          assert.equal(seq, requeued.shift(), `seed ${seed}: a resend must go before fresh chunks`);
        } else {
          assert.equal(seq, nextFresh++, `seed ${seed}: fresh chunks go out in sequence`);
          // Credit counts everything in flight on the stream, resends included; the transfer's window
          // everything in flight on live streams.
          assert.ok(inflight[stream].length < window, `seed ${seed}: window exceeded on stream ${stream}`);
          assert.ok(inFlight() < (transferWindow ?? Infinity), `seed ${seed}: transfer window exceeded`);
        }
        inflight[stream].push(seq);
      }
      // It stopped because the stream or the transfer has no credit, or nothing is ready.
      assert.equal(requeued.length, 0, `seed ${seed}`);
      assert.ok(
        inflight[stream].length >= window || inFlight() >= (transferWindow ?? Infinity) ||
          nextFresh === offered,
        `seed ${seed}: stopped early`,
      );
    } else if (r < 0.83 && busy.length) {
      const stream = pick(rand, busy);
      const seq = inflight[stream].splice(randInt(rand, 0, inflight[stream].length - 1), 1)[0];
      const before = s.ackedChunks;
      if (rand() < 0.1) {
        s.nack(stream, seq);
        assert.equal(s.ackedChunks, before);
        requeued.unshift(seq);
      } else {
        assert.equal(s.ack(stream, seq), true, `seed ${seed}: ack of ${seq} on ${stream} refused`);
        assert.equal(s.ackedChunks, before + 1, `seed ${seed}: ack of ${seq} on ${stream} not counted`);
        assert.ok(!acked.has(seq), `seed ${seed}: chunk ${seq} acked twice`);
        acked.add(seq);
        if (rand() < 0.2) assert.equal(s.ack(stream, seq), false, `seed ${seed}: duplicate ack taken`);
        assert.equal(s.ackedChunks, before + 1, `seed ${seed}: duplicate ack counted`);
      }
    } else if (r < 0.86 && (killAll || live.length > 1)) {
      const stream = pick(rand, live);
      const stale = inflight[stream];
      s.streamLost(stream); // throws when it was the last one and the transfer is not done
      lost.add(stream);
      requeued.unshift(...[...stale].sort((a, b) => a - b));
      inflight[stream] = [];
      // Acks still on the wire from the dead stream must not count.
      const before = s.ackedChunks;
      for (const seq of stale) assert.equal(s.ack(stream, seq), false, `seed ${seed}: stale ack taken`);
      assert.equal(s.ackedChunks, before, `seed ${seed}: stale ack counted`);
      assert.equal(s.next(stream), undefined, `seed ${seed}: a dead stream got a chunk`);
    }
    for (const i of inflight.keys()) assert.equal(s.inflight(i), inflight[i].length, `seed ${seed}`);
  }
  assert.ok(ended, `seed ${seed}: done before the source ended`);
  return { acked, s, total };
}

Deno.test("simulation: with a surviving stream, every chunk is acked exactly once", () => {
  let resends = 0;
  for (let seed = 1; seed <= 300; seed++) {
    const { acked, s, total } = simulate(seed);
    assert.equal(s.offered, total, `seed ${seed}`);
    assert.equal(acked.size, total, `seed ${seed}`);
    for (let seq = 0; seq < total; seq++) assert.ok(acked.has(seq), `seed ${seed}: chunk ${seq}`);
    assert.equal(s.ackedChunks, total, `seed ${seed}`);
    assert.ok(s.liveStreams >= 1);
    for (let i = 0; i < s.opts.streams; i++) assert.equal(s.next(i), undefined, `seed ${seed}: extra chunk`);
    if (s.opts.streams > 1 && s.liveStreams < s.opts.streams) resends++;
  }
  assert.ok(resends > 50, `only ${resends} runs lost a stream; the simulation does not cover it`);
});

Deno.test("simulation: when every stream dies first, the scheduler says so", () => {
  let failed = 0;
  for (let seed = 1; seed <= 300; seed++) {
    try {
      const { acked, total } = simulate(seed, true);
      assert.equal(acked.size, total, `seed ${seed}`);
    } catch (err) {
      assert.ok(err instanceof SchedulerError, `seed ${seed}: ${err}`);
      assert.equal(err.message, "all streams to the peer were lost");
      failed++;
    }
  }
  assert.ok(failed > 10, `only ${failed} runs lost every stream; the simulation does not cover it`);
});
