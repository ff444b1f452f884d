/** src/predict/baselines.ts: each baseline on series whose right answer is known. */
import assert from "node:assert/strict";
import { baselinePredictors, ewma, harmonicMean, holt, lastValue } from "../../src/predict/baselines.ts";

function close(actual: number, expected: number, relTolerance: number): void {
  assert.ok(
    Math.abs(actual - expected) <= relTolerance * Math.abs(expected),
    `${actual} is not within ${relTolerance * 100}% of ${expected}`,
  );
}

Deno.test("a constant series forecasts the same constant, at every horizon, for every baseline", () => {
  const history = Array(30).fill(1_250_000);
  for (const p of baselinePredictors()) {
    for (const h of [1, 10, 60]) assert.equal(p.predict(history, h), 1_250_000, `${p.name} at ${h}`);
  }
});

Deno.test("a single sample is the forecast of every baseline", () => {
  for (const p of baselinePredictors()) assert.equal(p.predict([42], 3), 42, p.name);
});

Deno.test("last value is the newest sample", () => {
  assert.equal(lastValue().predict([5, 9, 7], 4), 7);
});

Deno.test("EWMA: known values, seeded with the oldest sample", () => {
  assert.equal(ewma(0.5).predict([10, 20, 30], 1), 22.5); // 10 → 15 → 22.5
  assert.equal(ewma(0.25).predict([100, 200], 7), 125);
  assert.equal(ewma(1).predict([100, 200, 300], 1), 300);
  assert.equal(ewma().name, "ewma(0.3)");
});

Deno.test("harmonic mean of [1, 2, 4] is 3 / 1.75, and only the last k count", () => {
  assert.equal(harmonicMean(3).predict([1, 2, 4], 1), 3 / 1.75);
  assert.equal(harmonicMean(3).predict([1_000_000, 1, 2, 4], 1), 3 / 1.75);
  assert.equal(harmonicMean(5).predict([1, 2, 4], 1), 3 / 1.75); // fewer than k: all of them
});

Deno.test("harmonic mean: a zero sample (an outage) in the window forecasts 0", () => {
  assert.equal(harmonicMean(5).predict([10, 0, 10], 1), 0);
  assert.equal(harmonicMean(2).predict([0, 10, 10], 1), 10);
});

Deno.test("Holt follows an exact ramp exactly, and extrapolates by the horizon", () => {
  const ramp = Array.from({ length: 20 }, (_, i) => 100 + 10 * i); // 100 .. 290
  assert.equal(holt(0.5, 0.1).predict(ramp, 1), 300);
  assert.equal(holt(0.5, 0.1).predict(ramp, 5), 340);
});

Deno.test("Holt on a wobbly ramp after a flat start lands within 5% of the trend", () => {
  // 20 flat samples, then 40 of +20 per step with a ±1% deterministic wobble.
  const series = Array.from({ length: 60 }, (_, i) => {
    const trend = i < 20 ? 1_000 : 1_000 + 20 * (i - 19);
    return trend * (1 + 0.01 * Math.sin(i * 1.7));
  });
  const trendAt = (i: number) => 1_000 + 20 * (i - 19);
  close(holt(0.5, 0.2).predict(series, 1), trendAt(60), 0.05);
  close(holt(0.5, 0.2).predict(series, 10), trendAt(69), 0.05);
  // The flat forecasters lag the ramp by at least the horizon's worth of growth.
  assert.ok(lastValue().predict(series, 10) < trendAt(69) - 150);
});

Deno.test("Holt clamps a falling trend at 0: no negative capacity", () => {
  const falling = Array.from({ length: 10 }, (_, i) => 1_000 - 100 * i); // 1000 .. 100
  assert.equal(holt().predict(falling, 1), 0);
  assert.equal(holt().predict(falling, 60), 0);
});

Deno.test("bad arguments are refused with the value named", () => {
  assert.throws(() => lastValue().predict([], 1), /history is empty/);
  assert.throws(() => ewma().predict([1], 0), /horizonSteps = 0/);
  assert.throws(() => ewma(0), /ewma alpha = 0/);
  assert.throws(() => holt(0.5, 1.5), /holt beta = 1.5/);
  assert.throws(() => harmonicMean(0), /k = 0/);
});

Deno.test("the baselines have distinct names, simplest first", () => {
  const names = baselinePredictors().map((p) => p.name);
  assert.deepEqual(names, ["last", "ewma(0.3)", "harmonic(5)", "holt(0.5,0.1)"]);
});
