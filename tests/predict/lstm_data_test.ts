/** src/predict/lstm_data.ts: scaling, examples cut from series, the split by recording, the seeded draws. */
import assert from "node:assert/strict";
import {
  cutExamples,
  fitLogScale,
  HELD_OUT_RECORDINGS,
  permutation,
  pickExamples,
  recordingOf,
  seededRandom,
  splitTraces,
  toScaled,
  toScaledTarget,
} from "../../src/predict/lstm_data.ts";

const scale = { floorBytesPerSec: 0.5, logMean: 0, logStd: 1 };

Deno.test("fitLogScale standardises ln(x + floor) of every series together", () => {
  const s = fitLogScale([[Math.E - 1, Math.E ** 3 - 1], [Math.E ** 2 - 1]], 1);
  assert.ok(Math.abs(s.logMean - 2) < 1e-12);
  assert.ok(Math.abs(s.logStd - Math.sqrt(2 / 3)) < 1e-12);
  assert.throws(() => fitLogScale([[5]]), /at least 2 samples/);
  assert.throws(() => fitLogScale([[5, 5, 5]]), /some spread/);
});

Deno.test("inputs carry the floor (an outage stays finite); targets do not", () => {
  const s = { floorBytesPerSec: 1500, logMean: 10, logStd: 2 };
  assert.equal(toScaled(0, s), (Math.log(1500) - 10) / 2);
  assert.equal(toScaledTarget(1e6, s), (Math.log(1e6) - 10) / 2);
});

Deno.test("cutExamples: every window with its target horizonSteps later, inside one series", () => {
  const a = [1, 2, 3, 4, 5];
  const b = [7, 8, 9];
  const ex = cutExamples([a, b], 2, 2, scale);
  // a: windows ending at 1 and 2 (targets a[3], a[4]); b: window ending at 1 needs b[3], which is past the end.
  assert.equal(ex.count, 2);
  assert.deepEqual(Array.from(ex.inputs), [1, 2, 2, 3].map((x) => Math.fround(toScaled(x, scale))));
  assert.deepEqual(Array.from(ex.targets), [4, 5].map((x) => Math.fround(Math.log(x))));
});

Deno.test("cutExamples leaves out zero targets, which have no percentage error", () => {
  const ex = cutExamples([[1, 0, 3, 0, 5]], 1, 1, scale);
  // windows [1]→0 (dropped), [0]→3, [3]→0 (dropped), [0]→5
  assert.equal(ex.count, 2);
  assert.deepEqual(Array.from(ex.targets), [3, 5].map((x) => Math.fround(Math.log(x))));
  assert.throws(() => cutExamples([[1]], 0, 1, scale), /windowSamples = 0/);
  assert.throws(() => cutExamples([[1]], 1, 0, scale), /horizonSteps = 0/);
});

Deno.test("pickExamples takes the rows asked for, in that order", () => {
  const ex = cutExamples([[1, 2, 3, 4, 5, 6]], 2, 1, scale);
  const picked = pickExamples(ex, [3, 0]);
  assert.equal(picked.count, 2);
  assert.deepEqual(Array.from(picked.inputs), [...ex.inputs.subarray(6, 8), ...ex.inputs.subarray(0, 2)]);
  assert.deepEqual(Array.from(picked.targets), [ex.targets[3], ex.targets[0]]);
});

Deno.test("the same seed draws the same numbers and permutations; another seed does not", () => {
  const a = seededRandom(42);
  const b = seededRandom(42);
  const xs = Array.from({ length: 5 }, () => a());
  assert.deepEqual(Array.from({ length: 5 }, () => b()), xs);
  for (const x of xs) assert.ok(x >= 0 && x < 1);
  const p = permutation(20, seededRandom(1));
  assert.deepEqual([...p].sort((x, y) => x - y), Array.from({ length: 20 }, (_, i) => i));
  assert.deepEqual(permutation(20, seededRandom(1)), p);
  assert.notDeepEqual(permutation(20, seededRandom(2)), p);
});

Deno.test("the split is by recording: a trace's uplink and downlink land on the same side", () => {
  const files = [
    "ATT-LTE-driving-2016.down",
    "ATT-LTE-driving-2016.up",
    "ATT-LTE-driving.down",
    "ATT-LTE-driving.up",
    "TMobile-UMTS-driving.up",
    "TMobile-UMTS-driving.down",
    "Verizon-LTE-short.down",
  ];
  const { train, heldOut } = splitTraces(files);
  assert.deepEqual(train, ["ATT-LTE-driving.down", "ATT-LTE-driving.up"]);
  assert.deepEqual(heldOut, [
    "ATT-LTE-driving-2016.down",
    "ATT-LTE-driving-2016.up",
    "TMobile-UMTS-driving.down",
    "TMobile-UMTS-driving.up",
    "Verizon-LTE-short.down",
  ]);
  assert.equal(recordingOf("ATT-LTE-driving-2016.up"), "ATT-LTE-driving-2016");
  assert.equal(HELD_OUT_RECORDINGS.length, 3);
});
