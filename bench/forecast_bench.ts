/**
 * PBA forecaster inference latency: one Forecaster.predict through the FFI into ONNX Runtime and back, for
 * a 32-unit LSTM at windows of 10, 50 and 100 samples and batches of 1 and 8, plus the committed 1 s model.
 * The window models are untrained but deterministic (seeded weights): latency depends on the shape, not
 * on what the weights learnt. One intra-op thread, as the agent runs it.
 *
 *   deno bench --allow-all bench/forecast_bench.ts
 *
 * The acceptance target is a p50 ≤ 0.5 ms for window 10, batch 1; deno bench prints p75, which bounds it.
 */
import { existsSync } from "node:fs";
import { Forecaster } from "../ffi/forecaster.ts";
import { ortPath } from "../ffi/system.ts";
import { modelDir } from "../src/predict/lstm.ts";
import { exportLstmOnnx, seededLstmWeights } from "../src/predict/lstm_onnx.ts";

const UNITS = 32;
const WINDOWS = [10, 50, 100];
const BATCHES = [1, 8];
const scale = { floorBytesPerSec: 1500, logMean: Math.log(1e6), logStd: 1.5 };
const ignore = !existsSync(ortPath());

/** Capacity-like inputs, log-uniform over 10 kB/s..10 MB/s. */
function inputs(n: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => 10_000 * 1000 ** ((i * 0.618) % 1));
}

for (const windowSamples of WINDOWS) {
  const f = ignore ? undefined : Forecaster.open(
    exportLstmOnnx(seededLstmWeights(UNITS, windowSamples), { windowSamples, scale }),
    { maxBatch: Math.max(...BATCHES) },
  );
  for (const batch of BATCHES) {
    const x = inputs(batch * windowSamples);
    Deno.bench({
      name: `lstm ${UNITS} units, window ${windowSamples}, batch ${batch}`,
      group: `window ${windowSamples}`,
      baseline: batch === 1,
      ignore,
      fn() {
        f!.predict(x, batch);
      },
    });
  }
}

const committed = `${modelDir()}lstm_b1000_h1000.onnx`;
const trained = ignore || !existsSync(committed) ? undefined : Forecaster.open(committed, { maxBatch: 1 });
const window = inputs(trained?.windowSamples ?? 1);
Deno.bench({
  name: "committed 1 s model (lstm_b1000_h1000.onnx), predictOne",
  ignore: !trained,
  fn() {
    trained!.predictOne(window);
  },
});
