/** src/obs/rate.ts: a sliding-window rate with time passed in. */
import assert from "node:assert/strict";
import { RateMeter } from "../../src/obs/rate.ts";

const MB = 1_000_000;

/** Feeds a steady rate: `bytes` every `everyMs` from fromMs until toMs (inclusive). */
function feed(m: RateMeter, fromMs: number, toMs: number, everyMs: number, bytes: number): void {
  for (let t = fromMs; t <= toMs; t += everyMs) m.add(t, bytes);
}

function assertNear(actual: number, expected: number, tolerance: number, what: string): void {
  assert.ok(
    Math.abs(actual - expected) <= tolerance * expected,
    `${what}: ${actual} is not within ${tolerance * 100}% of ${expected}`,
  );
}

Deno.test("a steady 100 MB/s reads as 1e8 bytes per second", () => {
  const m = new RateMeter();
  feed(m, 0, 5000, 10, MB); // 1 MB every 10 ms
  assertNear(m.bytesPerSec(5000), 1e8, 0.01, "10 ms events");
  assert.equal(m.totalBytes, 501 * MB);
});

Deno.test("a steady rate reads the same whatever the event size", () => {
  for (const everyMs of [1, 3, 25, 100]) {
    const m = new RateMeter();
    feed(m, 0, 10_000, everyMs, (MB / 10) * everyMs); // 100 MB/s in events of every size
    assertNear(m.bytesPerSec(10_000), 1e8, 0.05, `events every ${everyMs} ms`);
  }
});

Deno.test("the rate follows a change within one window", () => {
  const m = new RateMeter(2000);
  feed(m, 0, 5000, 10, MB); // 100 MB/s
  feed(m, 5010, 10_000, 10, MB / 10); // then 10 MB/s
  assertNear(m.bytesPerSec(10_000), 1e7, 0.05, "after the slowdown");
});

Deno.test("with no new bytes the rate falls, and is 0 once the window has passed", () => {
  const m = new RateMeter(2000);
  feed(m, 0, 5000, 10, MB);
  const steady = m.bytesPerSec(5000);
  const halfway = m.bytesPerSec(6000);
  assert.ok(halfway > 0 && halfway < steady, `${halfway} should be between 0 and ${steady}`);
  assert.equal(m.bytesPerSec(7001), 0);
  assert.equal(m.totalBytes, 501 * MB, "the total is not windowed");
});

Deno.test("fewer than two samples give 0, not a division by zero", () => {
  const m = new RateMeter();
  assert.equal(m.bytesPerSec(0), 0);
  m.add(100, 5000);
  assert.equal(m.bytesPerSec(100), 0);
  assert.equal(m.bytesPerSec(200), 0);
});

Deno.test("a flood of adds keeps memory bounded and the rate right", () => {
  // The window is long enough that nothing expires: only merging and the sample cap bound memory.
  const m = new RateMeter(10_000_000, 256);
  const adds = 2_000_000;
  const before = Deno.memoryUsage().heapUsed;
  for (let t = 0; t < adds; t++) m.add(t, 100); // 100 bytes per ms
  const grown = Deno.memoryUsage().heapUsed - before;
  // One retained object per add would be tens of megabytes.
  assert.ok(grown < 8 * MB, `heap grew by ${grown} bytes over ${adds} adds`);
  assert.equal(m.totalBytes, 100 * adds);
  assertNear(m.bytesPerSec(adds), 100_000, 0.05, "rate after the flood");
});
