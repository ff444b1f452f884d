/**
 * PBA: writes a trained LSTM forecaster as a standard ONNX model (opset 17), run by ONNX Runtime through
 * the C shim. The graph takes raw capacity samples and gives a forecast in the same unit, so the runtime
 * side needs no knowledge of the training's scaling:
 *
 *   history_bytes_per_sec [batch, window, 1]
 *   → Add floor → Log → Sub logMean → Mul 1/logStd            (the training's input scaling)
 *   → Transpose to [window, batch, 1]                          (ONNX Runtime's LSTM is time-major only)
 *   → LSTM (hidden_size units, gates i,o,f,c) → Y_h [1, batch, units] → Reshape [batch, units]
 *   → Gemm with the dense layer → Add the last scaled sample (Gather along the window)
 *   → Mul logStd → Add logMean → Exp
 *   → forecast_bytes_per_sec [batch, 1]
 *
 * The weights arrive in TensorFlow.js/Keras layout (gates i,f,c,o along the last axis, input-major
 * kernels); ONNX wants gates i,o,f,c along the first axis of per-gate output-major matrices, and splits the
 * bias into an input and a recurrent half (the recurrent half is zero here: Keras has one bias).
 */
import {
  encodeOnnxModel,
  float32Raw,
  int64Raw,
  ONNX_FLOAT,
  ONNX_INT64,
  type OnnxTensor,
} from "./onnx_proto.ts";
import { type LogScale, seededRandom } from "./lstm_data.ts";

/** A one-layer LSTM with a dense output, in TensorFlow.js/Keras layout, row-major. */
export interface LstmWeights {
  units: number;
  features: number;
  /** [features, 4·units], gate blocks i, f, c, o. */
  kernel: Float32Array;
  /** [units, 4·units], gate blocks i, f, c, o. */
  recurrentKernel: Float32Array;
  /** [4·units], gate blocks i, f, c, o. */
  bias: Float32Array;
  /** [units, 1]. */
  denseKernel: Float32Array;
  /** [1]. */
  denseBias: Float32Array;
}

/**
 * Untrained but reproducible weights, uniform in ±0.4: for latency benchmarks and tests that need a model
 * of some shape, not a good one.
 */
export function seededLstmWeights(units: number, seed: number): LstmWeights {
  const random = seededRandom(seed);
  const values = (n: number) => Float32Array.from({ length: n }, () => (random() - 0.5) * 0.8);
  return {
    units,
    features: 1,
    kernel: values(4 * units),
    recurrentKernel: values(units * 4 * units),
    bias: values(4 * units),
    denseKernel: values(units),
    denseBias: values(1),
  };
}

export const ONNX_INPUT_NAME = "history_bytes_per_sec";
export const ONNX_OUTPUT_NAME = "forecast_bytes_per_sec";
const OPSET = 17;
const IR_VERSION = 8; // the IR of opset 17

/** For each ONNX gate block (i, o, f, c), the Keras block (i, f, c, o) holding it. */
export const KERAS_BLOCK_OF_ONNX_GATE = [0, 3, 1, 2] as const;

function checkWeights(w: LstmWeights): void {
  const { units: u, features: f } = w;
  if (!Number.isInteger(u) || u < 1 || !Number.isInteger(f) || f < 1) {
    throw new RangeError(`LSTM units = ${u}, features = ${f}; give positive integers`);
  }
  const expect: [string, Float32Array, number][] = [
    ["kernel", w.kernel, f * 4 * u],
    ["recurrentKernel", w.recurrentKernel, u * 4 * u],
    ["bias", w.bias, 4 * u],
    ["denseKernel", w.denseKernel, u],
    ["denseBias", w.denseBias, 1],
  ];
  for (const [name, a, n] of expect) {
    if (a.length !== n) throw new RangeError(`LSTM ${name} has ${a.length} values; ${u} units need ${n}`);
  }
}

/**
 * Keras [rows, 4·units] (gates i,f,c,o along columns) → ONNX [4·units, rows] (gates i,o,f,c along rows):
 * ONNX row g·units + j, column k is Keras row k, column KERAS_BLOCK_OF_ONNX_GATE[g]·units + j.
 */
export function kerasToOnnxGates(keras: Float32Array, rows: number, units: number): Float32Array {
  const out = new Float32Array(4 * units * rows);
  for (let g = 0; g < 4; g++) {
    const kerasBlock = KERAS_BLOCK_OF_ONNX_GATE[g];
    for (let j = 0; j < units; j++) {
      for (let k = 0; k < rows; k++) {
        out[(g * units + j) * rows + k] = keras[k * 4 * units + kerasBlock * units + j];
      }
    }
  }
  return out;
}

function floatTensor(name: string, dims: number[], values: ArrayLike<number>): OnnxTensor {
  return { name, dims, data_type: ONNX_FLOAT, raw_data: float32Raw(values) };
}

export interface LstmOnnxOptions {
  windowSamples: number;
  scale: LogScale;
  /** Free-form facts stored as the model's metadata_props (bin size, horizon, training data). */
  metadata?: Record<string, string>;
  doc?: string;
}

/** Builds the .onnx bytes of a trained forecaster. */
export function exportLstmOnnx(w: LstmWeights, o: LstmOnnxOptions): Uint8Array {
  checkWeights(w);
  const { units: u, features: f } = w;
  if (!Number.isInteger(o.windowSamples) || o.windowSamples < 1) {
    throw new RangeError(`windowSamples = ${o.windowSamples}; give an integer ≥ 1`);
  }
  const { floorBytesPerSec, logMean, logStd } = o.scale;
  if (!(floorBytesPerSec > 0) || !Number.isFinite(logMean) || !(logStd > 0)) {
    throw new RangeError(
      `scale floor = ${floorBytesPerSec}, mean = ${logMean}, std = ${logStd}; need floor > 0, finite mean, std > 0`,
    );
  }
  // Keras' single bias goes to the input half (Wb); the recurrent half (Rb) is zero.
  const onnxBias = new Float32Array(8 * u);
  onnxBias.set(kerasToOnnxGates(w.bias, 1, u));

  const initializers: OnnxTensor[] = [
    floatTensor("floor", [1], [floorBytesPerSec]),
    floatTensor("log_mean", [1], [logMean]),
    floatTensor("inv_log_std", [1], [1 / logStd]),
    floatTensor("log_std", [1], [logStd]),
    floatTensor("W", [1, 4 * u, f], kerasToOnnxGates(w.kernel, f, u)),
    floatTensor("R", [1, 4 * u, u], kerasToOnnxGates(w.recurrentKernel, u, u)),
    floatTensor("B", [1, 8 * u], onnxBias),
    { name: "hidden_shape", dims: [2], data_type: ONNX_INT64, raw_data: int64Raw([-1, u]) },
    { name: "last_step", dims: [], data_type: ONNX_INT64, raw_data: int64Raw([o.windowSamples - 1]) },
    floatTensor("dense_w", [u, 1], w.denseKernel),
    floatTensor("dense_b", [1], w.denseBias),
  ];
  const node = (op_type: string, input: string[], output: string[], attribute?: object[]) => ({
    name: output.filter((x) => x !== "").join("_"),
    op_type,
    input,
    output,
    attribute,
  });
  const nodes = [
    node("Add", [ONNX_INPUT_NAME, "floor"], ["shifted"]),
    node("Log", ["shifted"], ["log_history"]),
    node("Sub", ["log_history", "log_mean"], ["centred"]),
    node("Mul", ["centred", "inv_log_std"], ["z"]),
    node("Transpose", ["z"], ["z_time_major"], [{ name: "perm", type: 7, ints: [1, 0, 2] }]),
    // Y (every step's hidden state) is not needed: only Y_h, the last one.
    node("LSTM", ["z_time_major", "W", "R", "B"], ["", "h_last"], [{ name: "hidden_size", type: 2, i: u }]),
    node("Reshape", ["h_last", "hidden_shape"], ["h"]),
    node("Gemm", ["h", "dense_w", "dense_b"], ["z_correction"]),
    // The network learns a correction to the last sample: [batch, window, 1] → [batch, 1] at window − 1.
    node("Gather", ["z", "last_step"], ["z_last"], [{ name: "axis", type: 2, i: 1 }]),
    node("Add", ["z_correction", "z_last"], ["z_forecast"]),
    node("Mul", ["z_forecast", "log_std"], ["log_scaled"]),
    node("Add", ["log_scaled", "log_mean"], ["log_forecast"]),
    node("Exp", ["log_forecast"], [ONNX_OUTPUT_NAME]),
  ] as Parameters<typeof encodeOnnxModel>[0]["nodes"];

  return encodeOnnxModel({
    irVersion: IR_VERSION,
    opsetVersion: OPSET,
    producerName: "dwcp",
    producerVersion: "1",
    doc: o.doc ?? "dwcp PBA bandwidth forecaster: one-layer LSTM over past capacity samples",
    graphName: "pba_lstm",
    nodes,
    initializers,
    inputs: [{
      name: ONNX_INPUT_NAME,
      elemType: ONNX_FLOAT,
      shape: ["batch", o.windowSamples, f],
      doc: "capacity samples in bytes/s, oldest first, one per bin",
    }],
    outputs: [{
      name: ONNX_OUTPUT_NAME,
      elemType: ONNX_FLOAT,
      shape: ["batch", 1],
      doc: "forecast capacity in bytes/s, horizonSteps bins after the last sample",
    }],
    metadata: {
      windowSamples: String(o.windowSamples),
      units: String(u),
      floorBytesPerSec: String(floorBytesPerSec),
      logMean: String(logMean),
      logStd: String(logStd),
      ...o.metadata,
    },
  });
}
