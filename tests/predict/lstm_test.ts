/** src/predict/lstm.ts: the committed models, the LSTM predictor, and the status /v1/info reports. */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { Forecaster, ForecasterError } from "../../ffi/forecaster.ts";
import { ortPath } from "../../ffi/system.ts";
import { forecastStatus, LstmModels, lstmPredictor, modelDir, readManifest } from "../../src/predict/lstm.ts";
import { splitTraces } from "../../src/predict/lstm_data.ts";
import { exportLstmOnnx, seededLstmWeights } from "../../src/predict/lstm_onnx.ts";

const hasOrt = existsSync(ortPath());

/** A capacity series with outages, trickles and bursts: 0 to 100 MB/s. */
function series(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i % 17 === 0 ? 0 : 1000 * 100_000 ** ((i * 0.618) % 1));
}

Deno.test({
  name: "the committed models load and forecast finite, positive bandwidths",
  ignore: !hasOrt,
  fn() {
    const models = LstmModels.open();
    try {
      assert.ok(models.entries.length >= 1);
      const history = series(300);
      for (const { entry, predictor } of models.entries) {
        assert.equal(models.predictorFor(entry.binMs, entry.horizonSteps), predictor);
        for (let end = 1; end <= history.length; end += 7) {
          const f = predictor.predict(history.slice(0, end), entry.horizonSteps);
          assert.ok(Number.isFinite(f) && f > 0, `${entry.file} forecast ${f} after ${end} samples`);
        }
      }
      assert.equal(models.predictorFor(1000, 9999), undefined);
    } finally {
      models.close();
    }
  },
});

Deno.test("models.json names a 1 s model and the held-out traces the split holds out", () => {
  const m = readManifest();
  assert.ok(m.models.some((e) => e.binMs === 1000 && e.horizonSteps === 1), JSON.stringify(m.models));
  for (const e of m.models) assert.ok(existsSync(`${modelDir()}${e.file}`), `${e.file} is committed`);
  assert.deepEqual(splitTraces([...m.trainTraces, ...m.heldOutTraces]).heldOut, m.heldOutTraces);
});

Deno.test({
  name: "the LSTM predictor pads a short history with its oldest sample and keeps to its horizon",
  ignore: !hasOrt,
  fn() {
    const scale = { floorBytesPerSec: 1500, logMean: 13, logStd: 1.5 };
    const f = Forecaster.open(exportLstmOnnx(seededLstmWeights(8, 2), { windowSamples: 4, scale }));
    try {
      const entry = { file: "t.onnx", binMs: 1000, horizonSteps: 3, windowSamples: 4, units: 8 };
      const p = lstmPredictor(f, entry);
      assert.equal(p.name, "lstm(w4)");
      assert.equal(p.predict([5e5, 6e5], 3), f.predictOne([5e5, 5e5, 5e5, 6e5]));
      assert.equal(p.predict([1, 2, 3, 4e5, 5e5, 6e5, 7e5], 3), f.predictOne([4e5, 5e5, 6e5, 7e5]));
      assert.throws(() => p.predict([1e6], 1), /forecasts 3 steps ahead, asked for 1/);
      assert.throws(() => p.predict([], 3), /history is empty/);
      assert.throws(
        () => lstmPredictor(f, { ...entry, windowSamples: 5 }),
        /takes \[4, 1\] windows; models\.json says \[5, 1\]/,
      );
    } finally {
      f.close();
    }
  },
});

Deno.test({
  name: "forecastStatus reports the committed models as loaded",
  ignore: !hasOrt,
  fn() {
    const status = forecastStatus();
    assert.equal(status.model, "loaded");
    if (status.model === "loaded") {
      assert.ok(status.models.some((m) => m.binMs === 1000 && m.horizonSteps === 1));
    }
  },
});

Deno.test("without models, forecastStatus says why and which baselines forecast instead", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const status = forecastStatus(dir);
    assert.equal(status.model, "unavailable");
    if (status.model === "unavailable") {
      assert.match(status.reason, /models\.json does not exist; run `deno task train`/);
      assert.match(
        status.fallback,
        /baselines only: .*last, ewma\(0\.3\), harmonic\(5\), holt\(0\.5,0\.1\).*starts with last/,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "a listed model that is missing or corrupt makes the status 'unavailable', naming the file",
  ignore: !hasOrt,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      const entry = { file: "m.onnx", binMs: 1000, horizonSteps: 1, windowSamples: 10, units: 32 };
      const manifest = { version: 1, trainTraces: [], heldOutTraces: [], models: [entry] };
      await Deno.writeTextFile(`${dir}/models.json`, JSON.stringify(manifest));
      const missing = forecastStatus(dir);
      assert.equal(missing.model, "unavailable");
      if (missing.model === "unavailable") {
        assert.match(missing.reason, /m\.onnx, listed in models\.json, does not exist/);
      }
      await Deno.writeFile(`${dir}/m.onnx`, new Uint8Array([1, 2, 3]));
      const corrupt = forecastStatus(dir);
      assert.equal(corrupt.model, "unavailable");
      if (corrupt.model === "unavailable") {
        assert.match(corrupt.reason, /m\.onnx: opening .*loading the model/);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("a malformed models.json is refused, naming the bad entry", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(
      `${dir}/models.json`,
      JSON.stringify({ version: 1, trainTraces: [], heldOutTraces: [], models: [{ file: "../x.onnx" }] }),
    );
    assert.throws(
      () => readManifest(dir),
      (e: unknown) => e instanceof ForecasterError && /models\[0\]/.test(e.message),
    );
    await Deno.writeTextFile(`${dir}/models.json`, "{");
    assert.throws(() => readManifest(dir), /is not JSON/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
