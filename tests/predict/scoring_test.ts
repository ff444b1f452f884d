/** src/predict/scoring.ts: forecasts resolve at t + h, rolling errors rank the predictors, choice is sticky. */
import assert from "node:assert/strict";
import {
  baselinePredictors,
  ewma,
  harmonicMean,
  holt,
  lastValue,
  type Predictor,
} from "../../src/predict/baselines.ts";
import { MAX_HORIZON_STEPS, PredictorScoring } from "../../src/predict/scoring.ts";
import { mulberry32 } from "../transport/prng.ts";

/** A predictor that always says the same, for hand-checked scores. */
function constant(name: string, bytesPerSec: number): Predictor {
  return { name, predict: () => bytesPerSec };
}

function feed(scoring: PredictorScoring, series: number[]): void {
  for (const x of series) scoring.observe(x);
}

Deno.test("a forecast made at step t for horizon h is resolved by the sample at t + h, with what it said", () => {
  const seen: number[][] = [];
  const recorder: Predictor = {
    name: "recorder",
    predict: (history) => {
      seen.push([...history]);
      return history[history.length - 1] * 2;
    },
  };
  const scoring = new PredictorScoring([lastValue(), recorder], { horizonSteps: 3 });
  assert.equal(scoring.forecast(), undefined);
  assert.equal(scoring.observe(10), undefined);
  assert.equal(scoring.forecast(), 10); // last value, the default, from [10]
  assert.equal(scoring.observe(20), undefined);
  assert.equal(scoring.observe(30), undefined);
  const r = scoring.observe(40);
  assert.deepEqual(r, {
    step: 3,
    actualBytesPerSec: 40,
    forecastsBytesPerSec: [10, 20], // made at step 0 from [10]
    chosen: "last",
    chosenForecastBytesPerSec: 10,
  });
  assert.deepEqual(seen.slice(0, 2), [[10], [10, 20]]);
  assert.equal(scoring.observe(50)?.actualBytesPerSec, 50);
  assert.equal(scoring.steps, 5);
});

Deno.test("MAPE skips zero actuals; MAE keeps them", () => {
  const scoring = new PredictorScoring([lastValue()], { horizonSteps: 1 });
  // Resolutions: 10 → 0 (skipped for MAPE, AE 10), 0 → 10 (APE 1, AE 10), 10 → 20 (APE 0.5, AE 10).
  feed(scoring, [10, 0, 10, 20]);
  assert.deepEqual(scoring.scores(), [
    { name: "last", mape: 0.75, maeBytesPerSec: 10, resolved: 3, zeroActuals: 1 },
  ]);
});

Deno.test("the errors roll: only the last windowForecasts resolutions count", () => {
  const scoring = new PredictorScoring([lastValue()], {
    horizonSteps: 1,
    windowForecasts: 2,
    minResolved: 1,
  });
  feed(scoring, [100, 200, 100, 100, 100]); // APEs 0.5, 1, 0, 0: the window holds the last two
  const [s] = scoring.scores();
  assert.equal(s.resolved, 2);
  assert.equal(s.mape, 0);
  assert.equal(s.maeBytesPerSec, 0);
});

Deno.test("a ramp favours Holt, after the minimum number of resolutions", () => {
  const scoring = new PredictorScoring(baselinePredictors(), { horizonSteps: 5, minResolved: 10 });
  const ramp = Array.from({ length: 40 }, (_, i) => 1_000_000 + 50_000 * i);
  feed(scoring, ramp.slice(0, 14)); // 9 resolutions so far: not enough to leave the default
  assert.equal(scoring.best().name, "last");
  feed(scoring, ramp.slice(14));
  assert.equal(scoring.best().name, "holt(0.5,0.1)");
  // Only its first forecast, from one sample and so with no slope yet, missed.
  const mape = Object.fromEntries(scoring.scores().map((s) => [s.name, s.mape]));
  assert.ok(mape["holt(0.5,0.1)"] < 0.01, `holt MAPE ${mape["holt(0.5,0.1)"]}`);
  assert.ok(mape.last > 0.1 && mape["ewma(0.3)"] > 0.1, JSON.stringify(mape));
  // The forecast is the chosen predictor's: the ramp continued 5 steps past the last sample.
  assert.ok(Math.abs(scoring.forecast()! - (1_000_000 + 50_000 * 44)) < 1e-3);
});

Deno.test("a noisy constant favours smoothing (EWMA or harmonic mean) over last value and Holt", () => {
  const rand = mulberry32(7);
  const noisy = Array.from({ length: 150 }, () => 2_000_000 * (0.7 + 0.6 * rand()));
  const scoring = new PredictorScoring([lastValue(), holt(), ewma(0.3), harmonicMean(5)], {
    horizonSteps: 1,
  });
  feed(scoring, noisy);
  assert.match(scoring.best().name, /^(ewma|harmonic)/);
  const byName = Object.fromEntries(scoring.scores().map((s) => [s.name, s.mape]));
  assert.ok(byName["ewma(0.3)"] < byName.last && byName["ewma(0.3)"] < byName["holt(0.5,0.1)"]);
});

Deno.test("the default holds until minResolved, however much better another predictor is", () => {
  const scoring = new PredictorScoring([constant("bad", 500), constant("good", 100)], {
    horizonSteps: 1,
    minResolved: 4,
  });
  feed(scoring, [100, 100, 100, 100]); // 3 resolutions
  assert.equal(scoring.best().name, "bad");
  scoring.observe(100);
  assert.equal(scoring.best().name, "good");
  assert.equal(scoring.snapshot().switches, 1);
});

Deno.test("a named default is used first; on a tie the choice ends on the earlier (simpler) predictor", () => {
  const scoring = new PredictorScoring([constant("simple", 90), constant("fancy", 110)], {
    horizonSteps: 1,
    minResolved: 2,
    defaultPredictor: "fancy",
  });
  assert.equal(scoring.best().name, "fancy");
  feed(scoring, [100, 100, 100]); // both 10% off
  assert.equal(scoring.best().name, "simple");
  // And a tie never moves the choice off the first.
  const first = new PredictorScoring([constant("a", 90), constant("b", 110)], {
    horizonSteps: 1,
    minResolved: 1,
  });
  feed(first, [100, 100, 100]);
  assert.equal(first.best().name, "a");
  assert.equal(first.snapshot().switches, 0);
});

Deno.test("a challenger within the switch margin does not take over; beyond it, it does", () => {
  const predictors = [constant("current", 110), constant("slightly-better", 90.3)]; // APE 0.10 vs 0.097
  const sticky = new PredictorScoring(predictors, { horizonSteps: 1, minResolved: 1, switchMargin: 0.05 });
  const eager = new PredictorScoring(predictors, { horizonSteps: 1, minResolved: 1, switchMargin: 0 });
  feed(sticky, [100, 100, 100]);
  feed(eager, [100, 100, 100]);
  assert.equal(sticky.best().name, "current");
  assert.equal(eager.best().name, "slightly-better");
});

Deno.test("a lead won on one near-empty bin is luck, not accuracy: the t-test keeps the choice", () => {
  // 59 bins of 100, then one of 1. "steady" is exact until the dip (APE 99 there); "low" is 40 % off on
  // every bin but less off on the dip (APE 59): its MAPE is lower (1.38 vs 1.65), on one bin alone.
  const series = [...Array(60).fill(100), 1];
  const predictors = () => [constant("steady", 100), constant("low", 60)];
  const tested = new PredictorScoring(predictors(), { horizonSteps: 1 });
  const untested = new PredictorScoring(predictors(), { horizonSteps: 1, switchT: 0 });
  feed(tested, series);
  feed(untested, series);
  const mape = Object.fromEntries(tested.scores().map((s) => [s.name, s.mape]));
  assert.ok(mape.low < mape.steady * 0.95, JSON.stringify(mape));
  assert.equal(tested.best().name, "steady");
  assert.equal(untested.best().name, "low");
});

Deno.test("MAPE rewards forecasting low where MAE does not: the metric is an option", () => {
  // Actuals alternate 1 and 100. "zero" has APE 1 always (MAPE 1) but MAE 50.5; "middle" has
  // MAPE ≈ 25 (49.5 on the small ones) but MAE 49.5.
  const series = Array.from({ length: 40 }, (_, i) => (i % 2 ? 100 : 1));
  const predictors = () => [constant("middle", 50.5), constant("zero", 0)];
  const byMape = new PredictorScoring(predictors(), { horizonSteps: 1 });
  const byMae = new PredictorScoring(predictors(), { horizonSteps: 1, metric: "mae" });
  feed(byMape, series);
  feed(byMae, series);
  assert.equal(byMape.best().name, "zero");
  assert.equal(byMae.best().name, "middle");
});

Deno.test("a predictor answering NaN never holds the choice", () => {
  const scoring = new PredictorScoring([constant("broken", NaN), constant("ok", 100)], {
    horizonSteps: 1,
    minResolved: 1,
  });
  feed(scoring, [100, 100, 100]);
  assert.equal(scoring.best().name, "ok");
});

Deno.test("the same samples give the same state: a restart rebuilds it by replaying the history", () => {
  const rand = mulberry32(11);
  const series = Array.from({ length: 80 }, () => 1e6 * (0.5 + rand()));
  const a = new PredictorScoring(baselinePredictors(), { horizonSteps: 3 });
  const b = new PredictorScoring(baselinePredictors(), { horizonSteps: 3 });
  feed(a, series);
  feed(b, series);
  assert.deepEqual(a.snapshot(), b.snapshot());
  assert.equal(a.forecast(), b.forecast());
});

Deno.test("bad options and samples are refused with the value named", () => {
  const ps = baselinePredictors();
  assert.throws(() => new PredictorScoring([], { horizonSteps: 1 }), /at least one predictor/);
  assert.throws(() => new PredictorScoring([lastValue(), lastValue()], { horizonSteps: 1 }), /unique/);
  assert.throws(() => new PredictorScoring(ps, { horizonSteps: 0 }), /horizonSteps = 0/);
  assert.throws(() => new PredictorScoring(ps, { horizonSteps: MAX_HORIZON_STEPS + 1 }), /horizonSteps/);
  assert.throws(() => new PredictorScoring(ps, { horizonSteps: 1, minResolved: 100 }), /minResolved = 100/);
  assert.throws(() => new PredictorScoring(ps, { horizonSteps: 1, defaultPredictor: "lstm" }), /lstm/);
  assert.throws(() => new PredictorScoring(ps, { horizonSteps: 1, switchMargin: 1 }), /switchMargin = 1/);
  assert.throws(() => new PredictorScoring(ps, { horizonSteps: 1, switchT: -1 }), /switchT = -1/);
  const scoring = new PredictorScoring(ps, { horizonSteps: 1 });
  assert.throws(() => scoring.observe(-5), /bytesPerSec = -5/);
  assert.throws(() => scoring.observe(Infinity), /bytesPerSec = Infinity/);
  assert.equal(scoring.steps, 0);
});
