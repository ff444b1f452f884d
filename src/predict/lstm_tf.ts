/**
 * PBA LSTM in TensorFlow.js (pure-JS CPU backend): the model the trainer fits and the export reads. One
 * LSTM layer over a window of scaled samples (one feature per step), its last hidden state into a dense
 * unit, added to the window's last sample: the network learns a correction to "the next bin looks like
 * the last", so it starts from the strongest baseline instead of from nothing. Sigmoid recurrent
 * activation (TF.js defaults to hard sigmoid), so the cell is exactly ONNX's default LSTM; every
 * initialiser is seeded.
 *
 * tfjs-layers has no layer that slices a time step out, so the last sample comes in as a second input
 * that lastSamples() cuts from the windows; the ONNX graph takes it from the window itself.
 */
import * as tf from "@tensorflow/tfjs";
import type { LstmWeights } from "./lstm_onnx.ts";

let ready: Promise<void> | undefined;

/**
 * Selects the CPU backend once. Production mode silences TF.js's advice to install its Node.js backend,
 * which does not run under Deno.
 */
export function useCpuBackend(): Promise<void> {
  ready ??= (async () => {
    tf.enableProdMode();
    if (!(await tf.setBackend("cpu"))) throw new Error("TensorFlow.js could not start its CPU backend");
    await tf.ready();
  })();
  return ready;
}

export interface LstmShape {
  windowSamples: number;
  units: number;
  seed: number;
}

export function buildLstm({ windowSamples, units, seed }: LstmShape): tf.LayersModel {
  const window = tf.input({ shape: [windowSamples, 1], name: "window" });
  const last = tf.input({ shape: [1], name: "last" });
  const hidden = tf.layers.lstm({
    units,
    recurrentActivation: "sigmoid",
    kernelInitializer: tf.initializers.glorotUniform({ seed }),
    recurrentInitializer: tf.initializers.orthogonal({ seed: seed + 1 }),
  }).apply(window) as tf.SymbolicTensor;
  const correction = tf.layers.dense({
    units: 1,
    kernelInitializer: tf.initializers.glorotUniform({ seed: seed + 2 }),
  }).apply(hidden) as tf.SymbolicTensor;
  const forecast = tf.layers.add().apply([correction, last]) as tf.SymbolicTensor;
  return tf.model({ inputs: [window, last], outputs: forecast });
}

/** The last sample of each of count windows (count × windowSamples values, row-major). */
export function lastSamples(inputs: Float32Array, count: number): Float32Array {
  const windowSamples = inputs.length / count;
  return Float32Array.from({ length: count }, (_, i) => inputs[(i + 1) * windowSamples - 1]);
}

/** The weights of a model built by buildLstm, copied out in Keras layout. */
export function lstmWeightsOf(model: tf.LayersModel): LstmWeights {
  const [kernel, recurrentKernel, bias, denseKernel, denseBias] = model.getWeights().map((t) =>
    t.dataSync() as Float32Array
  );
  const units = denseKernel.length;
  return {
    units,
    features: 1,
    kernel: Float32Array.from(kernel),
    recurrentKernel: Float32Array.from(recurrentKernel),
    bias: Float32Array.from(bias),
    denseKernel: Float32Array.from(denseKernel),
    denseBias: Float32Array.from(denseBias),
  };
}

/** Scaled forecasts for count windows (count × windowSamples scaled inputs). */
export function predictScaled(model: tf.LayersModel, inputs: Float32Array, count: number): Float32Array {
  const windowSamples = inputs.length / count;
  return tf.tidy(() => {
    const x = [
      tf.tensor3d(inputs, [count, windowSamples, 1]),
      tf.tensor2d(lastSamples(inputs, count), [count, 1]),
    ];
    return Float32Array.from((model.predict(x) as tf.Tensor).dataSync());
  });
}

/**
 * Absolute percentage error in the scaled log domain: with d = (ŷ − y)·logStd the log ratio of forecast
 * to actual, |e^d − 1| is exactly the APE that 1 − MAPE averages. Training on it targets the metric the
 * forecaster is judged by; it leans low, as MAPE rewards.
 */
export function apeLoss(logStd: number): (yTrue: tf.Tensor, yPred: tf.Tensor) => tf.Scalar {
  return (yTrue, yPred) =>
    tf.tidy(() => tf.mean(tf.abs(tf.sub(tf.exp(tf.mul(tf.sub(yPred, yTrue), logStd)), 1))) as tf.Scalar);
}

/** |ŷ − y| in the log domain: the forecast's log ratio to the actual, symmetric, so it aims at the median. */
export function logMaeLoss(logStd: number): (yTrue: tf.Tensor, yPred: tf.Tensor) => tf.Scalar {
  return (yTrue, yPred) => tf.tidy(() => tf.mean(tf.abs(tf.mul(tf.sub(yPred, yTrue), logStd))) as tf.Scalar);
}

export { tf };
