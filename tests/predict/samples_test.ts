/** src/predict/samples.ts: a bounded per-peer history that survives a JSON round trip, checked on load. */
import assert from "node:assert/strict";
import { SampleRing, SampleRingError } from "../../src/predict/samples.ts";

function ringOf(capacity: number, values: number[]): SampleRing {
  const ring = new SampleRing(capacity);
  values.forEach((bytesPerSec, i) => ring.push({ atMs: 1_000 * i, bytesPerSec }));
  return ring;
}

Deno.test("the ring keeps the newest capacity samples, oldest first", () => {
  const ring = ringOf(3, [10, 20, 30, 40, 50]);
  assert.equal(ring.length, 3);
  assert.deepEqual(ring.values(), [30, 40, 50]);
  assert.deepEqual(ring.values(2), [40, 50]);
  assert.deepEqual(ring.values(99), [30, 40, 50]);
  assert.deepEqual(ring.values(0), []);
  assert.deepEqual(ring.latest(), { atMs: 4_000, bytesPerSec: 50 });
  assert.deepEqual(ring.samples(1), [{ atMs: 4_000, bytesPerSec: 50 }]);
});

Deno.test("an empty ring has no values and no latest sample", () => {
  const ring = new SampleRing(4);
  assert.equal(ring.length, 0);
  assert.deepEqual(ring.values(), []);
  assert.equal(ring.latest(), undefined);
});

Deno.test("samples handed out are copies: callers cannot rewrite the history", () => {
  const ring = new SampleRing(2);
  const s = { atMs: 1, bytesPerSec: 5 };
  ring.push(s);
  s.bytesPerSec = 999;
  ring.samples()[0].bytesPerSec = 777;
  assert.deepEqual(ring.values(), [5]);
});

Deno.test("push refuses a negative rate, a non-finite time and a sample older than the last", () => {
  const ring = ringOf(4, [10]);
  assert.throws(() => ring.push({ atMs: 5_000, bytesPerSec: -1 }), /bytesPerSec = -1/);
  assert.throws(() => ring.push({ atMs: NaN, bytesPerSec: 1 }), /atMs = NaN/);
  assert.throws(() => ring.push({ atMs: -1, bytesPerSec: 1 }), /time order/);
  assert.throws(() => new SampleRing(0), SampleRingError);
  assert.equal(ring.length, 1);
});

Deno.test("JSON round trip of a wrapped ring keeps order and capacity, and pushing goes on", () => {
  const ring = ringOf(3, [1, 2, 3, 4, 5]);
  const back = SampleRing.fromJSON(JSON.parse(JSON.stringify(ring)));
  assert.equal(back.capacity, 3);
  assert.deepEqual(back.samples(), ring.samples());
  assert.deepEqual(back.toJSON(), ring.toJSON());
  back.push({ atMs: 9_000, bytesPerSec: 6 });
  assert.deepEqual(back.values(), [4, 5, 6]);
});

Deno.test("loading with a smaller capacity keeps the newest samples; a larger one leaves room", () => {
  const json = JSON.parse(JSON.stringify(ringOf(5, [1, 2, 3, 4, 5])));
  assert.deepEqual(SampleRing.fromJSON(json, 2).values(), [4, 5]);
  const bigger = SampleRing.fromJSON(json, 8);
  assert.equal(bigger.capacity, 8);
  assert.deepEqual(bigger.values(), [1, 2, 3, 4, 5]);
});

Deno.test("loading refuses a malformed history and names the field", () => {
  const good = ringOf(3, [1, 2]).toJSON();
  const bad: [unknown, RegExp][] = [
    [null, /expected an object/],
    [[], /expected an object/],
    [{ ...good, version: 2 }, /version = 2/],
    [{ ...good, capacity: 1.5 }, /capacity = 1.5/],
    [{ ...good, samples: "x" }, /samples = "x"/],
    [{ ...good, capacity: 1 }, /more than capacity 1/],
    // JSON turns NaN into null: a corrupted file must not load as a rate.
    [{ ...good, samples: [{ atMs: 0, bytesPerSec: null }] }, /samples\[0\]: bytesPerSec = null/],
    [{ ...good, samples: [{ atMs: 0 }] }, /samples\[0\]: bytesPerSec = missing/],
    [
      { ...good, samples: [{ atMs: 5, bytesPerSec: 1 }, { atMs: 4, bytesPerSec: 1 }] },
      /samples\[1\]: .*order/,
    ],
  ];
  for (const [data, message] of bad) {
    assert.throws(() => SampleRing.fromJSON(data), (e: unknown) => {
      assert.ok(e instanceof SampleRingError, `${JSON.stringify(data)} threw ${e}`);
      assert.match(e.message, message);
      return true;
    });
  }
});
