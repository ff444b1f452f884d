/**
 * src/predict/lstm_onnx.ts: an LSTM trained in TensorFlow.js, exported to ONNX and run by ONNX Runtime
 * (through ffi/forecaster.ts) gives what TensorFlow.js gives on the same inputs, to 1e-4 in the log domain
 * the model works in; and the file is a standard ONNX LSTM model.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { Forecaster } from "../../ffi/forecaster.ts";
import { ortPath } from "../../ffi/system.ts";
import { fitLogScale, seededRandom, toScaled } from "../../src/predict/lstm_data.ts";
import {
  exportLstmOnnx,
  KERAS_BLOCK_OF_ONNX_GATE,
  kerasToOnnxGates,
  seededLstmWeights,
} from "../../src/predict/lstm_onnx.ts";
import { decodeOnnxModel } from "../../src/predict/onnx_proto.ts";
import { buildLstm, lstmWeightsOf, predictScaled, tf, useCpuBackend } from "../../src/predict/lstm_tf.ts";

const hasOrt = existsSync(ortPath());

/** Capacity-like samples: log-uniform from 10 kB/s to 10 MB/s, with an outage (0) now and then. */
function samples(n: number, seed: number): number[] {
  const random = seededRandom(seed);
  return Array.from({ length: n }, () => random() < 0.05 ? 0 : 10_000 * 1000 ** random());
}

/**
 * max |ln(ORT forecast) − TF.js log forecast| over batch windows, for a seeded TF.js model whose every
 * weight, biases included, is random (so a gate mix-up cannot hide behind zero biases).
 */
async function maxLogError(
  windowSamples: number,
  units: number,
  batch: number,
  seed: number,
): Promise<number> {
  await useCpuBackend();
  const model = buildLstm({ windowSamples, units, seed });
  const random = seededRandom(seed + 100);
  model.setWeights(
    model.getWeights().map((w) =>
      tf.tensor(Float32Array.from({ length: w.size }, () => (random() - 0.5) * 0.8), w.shape)
    ),
  );
  const raw = samples(batch * windowSamples, seed + 1);
  const scale = fitLogScale([raw]);
  const tfOut = predictScaled(model, Float32Array.from(raw, (x) => toScaled(x, scale)), batch);
  const f = Forecaster.open(exportLstmOnnx(lstmWeightsOf(model), { windowSamples, scale }), {
    maxBatch: batch,
  });
  model.dispose();
  try {
    const ortOut = f.predict(Float32Array.from(raw), batch);
    let worst = 0;
    for (let i = 0; i < batch; i++) {
      worst = Math.max(worst, Math.abs(Math.log(ortOut[i]) - (tfOut[i] * scale.logStd + scale.logMean)));
    }
    return worst;
  } finally {
    f.close();
  }
}

Deno.test({
  name: "ONNX Runtime equals TensorFlow.js to 1e-4: 32 units, window 10, batch 64",
  ignore: !hasOrt,
  async fn() {
    const err = await maxLogError(10, 32, 64, 7);
    assert.ok(err <= 1e-4, `max |ln ORT − ln TF.js| = ${err}`);
  },
});

Deno.test({
  name: "ONNX Runtime equals TensorFlow.js to 1e-4: 8 units, window 50, batch 5",
  ignore: !hasOrt,
  async fn() {
    const err = await maxLogError(50, 8, 5, 11);
    assert.ok(err <= 1e-4, `max |ln ORT − ln TF.js| = ${err}`);
  },
});

Deno.test("Keras gate blocks i,f,c,o become ONNX's i,o,f,c, transposed", () => {
  // Keras [rows = 2, 4·units = 4·1]: entry value = 10·row + kerasBlock.
  const keras = Float32Array.from([0, 1, 2, 3, 10, 11, 12, 13]);
  const onnx = kerasToOnnxGates(keras, 2, 1);
  // ONNX [4·units, rows]: gate rows i, o, f, c = Keras blocks 0, 3, 1, 2.
  assert.deepEqual(Array.from(onnx), [0, 10, 3, 13, 1, 11, 2, 12]);
  assert.deepEqual(KERAS_BLOCK_OF_ONNX_GATE, [0, 3, 1, 2]);
});

Deno.test("the export is a standard ONNX model: opset 17, an LSTM node, [batch, window, 1] in, [batch, 1] out", () => {
  const scale = { floorBytesPerSec: 1500, logMean: 13, logStd: 1.5 };
  const bytes = exportLstmOnnx(seededLstmWeights(16, 3), {
    windowSamples: 12,
    scale,
    metadata: { horizonSteps: "1" },
  });
  const m = decodeOnnxModel(bytes) as {
    ir_version: number;
    opset_import: { version: number }[];
    graph: {
      node: { op_type: string; attribute?: { name: string; i?: number }[] }[];
      input: { type: { tensor_type: { shape: { dim: { dim_value?: number; dim_param?: string }[] } } } }[];
      output: { type: { tensor_type: { shape: { dim: { dim_value?: number; dim_param?: string }[] } } } }[];
      initializer: { name: string; dims: number[] }[];
    };
    metadata_props: { key: string; value: string }[];
  };
  assert.equal(m.ir_version, 8);
  assert.equal(m.opset_import[0].version, 17);
  const lstm = m.graph.node.find((n) => n.op_type === "LSTM");
  assert.ok(lstm);
  assert.deepEqual(lstm.attribute, [{ name: "hidden_size", type: 2, i: 16 }]);
  assert.deepEqual(m.graph.input[0].type.tensor_type.shape.dim, [{ dim_param: "batch" }, { dim_value: 12 }, {
    dim_value: 1,
  }]);
  assert.deepEqual(m.graph.output[0].type.tensor_type.shape.dim, [{ dim_param: "batch" }, { dim_value: 1 }]);
  const dims = Object.fromEntries(m.graph.initializer.map((t) => [t.name, t.dims]));
  assert.deepEqual(dims.W, [1, 64, 1]);
  assert.deepEqual(dims.R, [1, 64, 16]);
  assert.deepEqual(dims.B, [1, 128]);
  const meta = Object.fromEntries(m.metadata_props.map((p) => [p.key, p.value]));
  assert.equal(meta.windowSamples, "12");
  assert.equal(meta.horizonSteps, "1");
});

Deno.test("export refuses weights that do not match their unit count", () => {
  const w = seededLstmWeights(8, 1);
  const scale = { floorBytesPerSec: 1500, logMean: 13, logStd: 1.5 };
  assert.throws(
    () =>
      exportLstmOnnx({ ...w, recurrentKernel: w.recurrentKernel.subarray(1) }, { windowSamples: 4, scale }),
    /recurrentKernel has 255 values; 8 units need 256/,
  );
  assert.throws(() => exportLstmOnnx(w, { windowSamples: 0, scale }), /windowSamples = 0/);
  assert.throws(() => exportLstmOnnx(w, { windowSamples: 4, scale: { ...scale, logStd: 0 } }), /std > 0/);
});
