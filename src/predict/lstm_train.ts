/**
 * PBA LSTM trainer (`deno task train`): fits one small LSTM per (bin size, horizon) on the mahimahi
 * traces with TensorFlow.js's CPU backend, exports each to ONNX, checks that ONNX Runtime gives what
 * TF.js gives, scores it against the baselines on traces held out of training, and writes the models,
 * models.json and the training report (report.json, report.md) to the model directory.
 *
 *   deno task train [--traces DIR] [--out DIR] [--models 1000/1000,1000/10000,1000/60000,100/1000]
 *     [--units 32] [--window 10] [--epochs 8] [--windows-per-epoch 6000] [--batch 256]
 *     [--learning-rate 0.005] [--seed 1] [--loss logmae|ape]
 *
 * --models lists binMs/horizonMs pairs. Reproducible: the split is fixed by recording (lstm_data.ts), the
 * initialisers and the per-epoch draws of windows are seeded, and TF.js's CPU kernels are deterministic,
 * so a rerun writes the same .onnx bytes. Each epoch sees a fresh seeded draw of windows-per-epoch
 * windows from all training windows, which bounds the time on a 2-core machine.
 *
 * The loss is |ln forecast − ln actual| by default: it aims at the median and keeps the forecast near
 * the rate a transfer will see. --loss ape trains on the APE that 1 − MAPE averages instead; on these
 * traces it wins 1 − MAPE at 1 s by forecasting low (a worse median error and MAE), and at 10 s and 60 s
 * it collapses towards 0, where MAPE's cap of 1 below the actual makes every APE 1: a forecast no policy
 * can use.
 */
import { parseArgs } from "node:util";
import { Forecaster } from "../../ffi/forecaster.ts";
import { onnxRuntime } from "../../ffi/system.ts";
import { baselinePredictors } from "./baselines.ts";
import { bestRow, Totals, walkTrace } from "./evaluation.ts";
import { type LstmManifest, type LstmModelEntry, lstmPredictor, MANIFEST_FILE } from "./lstm.ts";
import {
  cutExamples,
  type Examples,
  fitLogScale,
  HELD_OUT_RECORDINGS,
  type LogScale,
  permutation,
  pickExamples,
  seededRandom,
  splitTraces,
  toScaled,
} from "./lstm_data.ts";
import { exportLstmOnnx } from "./lstm_onnx.ts";
import {
  apeLoss,
  buildLstm,
  lastSamples,
  logMaeLoss,
  lstmWeightsOf,
  predictScaled,
  tf,
  useCpuBackend,
} from "./lstm_tf.ts";
import { SCORING_DEFAULTS } from "./scoring.ts";
import { binMahimahi } from "./traces.ts";

/** ONNX Runtime must match TF.js this closely (log domain) or the export is wrong. */
const PARITY_LIMIT = 1e-4;
const PARITY_WINDOWS = 256;
/** Held-out windows scored after each epoch (information only: nothing is chosen by it). */
const HELD_OUT_LOSS_WINDOWS = 2000;

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    traces: { type: "string" },
    out: { type: "string" },
    models: { type: "string", default: "1000/1000,1000/10000,1000/60000,100/1000" },
    units: { type: "string", default: "32" },
    window: { type: "string", default: "10" },
    epochs: { type: "string", default: "8" },
    "windows-per-epoch": { type: "string", default: "6000" },
    batch: { type: "string", default: "256" },
    "learning-rate": { type: "string", default: "0.005" },
    seed: { type: "string", default: "1" },
    loss: { type: "string", default: "logmae" },
  },
});

function intArg(name: keyof typeof args, min: number): number {
  const v = Number(args[name]);
  if (!Number.isInteger(v) || v < min) {
    console.error(`--${name} ${args[name]}: give an integer ≥ ${min}`);
    Deno.exit(2);
  }
  return v;
}

const units = intArg("units", 1);
const windowSamples = intArg("window", 1);
const epochs = intArg("epochs", 1);
const windowsPerEpoch = intArg("windows-per-epoch", 1);
const batchSize = intArg("batch", 1);
const seed = intArg("seed", 0);
if (args.loss !== "ape" && args.loss !== "logmae") {
  console.error(
    `--loss ${args.loss}: give ape (the APE that 1 − MAPE averages) or logmae (|ln forecast − ln actual|)`,
  );
  Deno.exit(2);
}
const learningRate = Number(args["learning-rate"]);
if (!(learningRate > 0 && learningRate < 1)) {
  console.error(`--learning-rate ${args["learning-rate"]}: give a number in (0, 1)`);
  Deno.exit(2);
}
const specs = (args.models ?? "").split(",").map((s) => {
  const [binMs, horizonMs] = s.split("/").map(Number);
  if (!Number.isInteger(binMs) || binMs < 1 || !Number.isInteger(horizonMs) || horizonMs % binMs !== 0) {
    console.error(`--models ${s}: give binMs/horizonMs, whole milliseconds, horizon a multiple of the bin`);
    Deno.exit(2);
  }
  return { binMs, horizonMs, horizonSteps: horizonMs / binMs };
});
const tracesDir = (args.traces ?? new URL("../../../shared/traces/mahimahi/", import.meta.url).pathname)
  .replace(/\/?$/, "/");
const outDir = (args.out ?? new URL("./model/", import.meta.url).pathname).replace(/\/?$/, "/");

const ort = onnxRuntime();
if (!ort.available) {
  console.error(
    `${ort.reason}\nThe trainer checks every export with ONNX Runtime; run \`bash scripts/setup.sh\`.`,
  );
  Deno.exit(1);
}
await useCpuBackend();

const traceFiles: string[] = [];
for await (const e of Deno.readDir(tracesDir)) {
  if (e.isFile && !e.name.startsWith(".")) traceFiles.push(e.name);
}
if (traceFiles.length === 0) {
  console.error(`no traces in ${tracesDir}; give --traces DIR`);
  Deno.exit(2);
}
const split = splitTraces(traceFiles);
if (split.train.length === 0 || split.heldOut.length === 0) {
  console.error(`the split of ${tracesDir} by recording left a side empty: ${JSON.stringify(split)}`);
  Deno.exit(2);
}
const traceText = new Map<string, string>();
for (const f of traceFiles) traceText.set(f, await Deno.readTextFile(tracesDir + f));
const binned = new Map<number, Map<string, number[]>>();
function binsOf(binMs: number): Map<string, number[]> {
  let m = binned.get(binMs);
  if (!m) {
    m = new Map([...traceText].map(([f, text]) => [f, binMahimahi(text, binMs).bytesPerSec]));
    binned.set(binMs, m);
  }
  return m;
}

interface PredictorFigures {
  name: string;
  accuracy: number;
  medianAccuracy: number;
  maeMbps: number;
  scored: number;
}

function figures(name: string, t: Totals): PredictorFigures {
  return {
    name,
    accuracy: round(t.accuracy()),
    medianAccuracy: round(t.medianAccuracy()),
    maeMbps: round(t.maeMbps()),
    scored: t.apes.length,
  };
}

function round(x: number, digits = 4): number {
  return Number(x.toFixed(digits));
}

/** Mean APE of the model's forecasts on ex: progress on the held-out traces, measured without training. */
function meanApe(model: tf.LayersModel, ex: Examples, scale: LogScale): number {
  const out = predictScaled(model, ex.inputs, ex.count);
  let sum = 0;
  for (let i = 0; i < ex.count; i++) sum += Math.abs(Math.exp((out[i] - ex.targets[i]) * scale.logStd) - 1);
  return sum / ex.count;
}

/** The first count raw (bytes/s) windows of the series, for the parity check. */
function rawWindows(series: readonly number[][], count: number): { raw: Float32Array; count: number } {
  const rows: number[] = [];
  outer: for (const s of series) {
    for (let end = windowSamples - 1; end < s.length; end += windowSamples) {
      for (let k = 0; k < windowSamples; k++) rows.push(s[end - windowSamples + 1 + k]);
      if (rows.length / windowSamples >= count) break outer;
    }
  }
  return { raw: Float32Array.from(rows), count: rows.length / windowSamples };
}

async function trainOne(spec: typeof specs[number], modelSeed: number) {
  const { binMs, horizonMs, horizonSteps } = spec;
  const bins = binsOf(binMs);
  const train = split.train.map((f) => bins.get(f)!);
  const heldOut = split.heldOut.map((f) => bins.get(f)!);
  const scale = fitLogScale(train);
  const trainEx = cutExamples(train, windowSamples, horizonSteps, scale);
  const heldEx = cutExamples(heldOut, windowSamples, horizonSteps, scale);
  const random = seededRandom(modelSeed);
  const heldLossEx = pickExamples(heldEx, permutation(heldEx.count, random).slice(0, HELD_OUT_LOSS_WINDOWS));

  const model = buildLstm({ windowSamples, units, seed: modelSeed });
  model.compile({
    optimizer: tf.train.adam(learningRate),
    loss: args.loss === "ape" ? apeLoss(scale.logStd) : logMaeLoss(scale.logStd),
  });
  const startedMs = performance.now();
  const losses: { epoch: number; trainLoss: number; heldOutApe: number }[] = [];
  for (let epoch = 1; epoch <= epochs; epoch++) {
    const sub = pickExamples(trainEx, permutation(trainEx.count, random).slice(0, windowsPerEpoch));
    const x = [
      tf.tensor3d(sub.inputs, [sub.count, windowSamples, 1]),
      tf.tensor2d(lastSamples(sub.inputs, sub.count), [sub.count, 1]),
    ];
    const y = tf.tensor2d(sub.targets, [sub.count, 1]);
    const h = await model.fit(x, y, { epochs: 1, batchSize, shuffle: false, verbose: 0 });
    tf.dispose([...x, y]);
    const row = {
      epoch,
      trainLoss: round(h.history.loss[0] as number),
      heldOutApe: round(meanApe(model, heldLossEx, scale)),
    };
    losses.push(row);
    console.log(`  epoch ${epoch}: training loss ${row.trainLoss}, held-out mean APE ${row.heldOutApe}`);
  }
  const trainSeconds = round((performance.now() - startedMs) / 1000, 1);

  const file = `lstm_b${binMs}_h${horizonMs}.onnx`;
  const bytes = exportLstmOnnx(lstmWeightsOf(model), {
    windowSamples,
    scale,
    metadata: {
      binMs: String(binMs),
      horizonSteps: String(horizonSteps),
      trainTraces: split.train.join(","),
      seed: String(modelSeed),
    },
  });
  const entry: LstmModelEntry = { file, binMs, horizonSteps, windowSamples, units };
  const forecaster = Forecaster.open(bytes, { maxBatch: PARITY_WINDOWS });
  try {
    // Parity: ONNX Runtime on raw bytes/s against TF.js on the same windows scaled in TypeScript.
    const { raw, count } = rawWindows(heldOut, PARITY_WINDOWS);
    const tfOut = predictScaled(model, Float32Array.from(raw, (x) => toScaled(x, scale)), count);
    const ortOut = forecaster.predict(raw, count);
    let parityMaxAbsLogError = 0;
    for (let i = 0; i < count; i++) {
      const e = Math.abs(Math.log(ortOut[i]) - (tfOut[i] * scale.logStd + scale.logMean));
      parityMaxAbsLogError = Math.max(parityMaxAbsLogError, e);
    }
    if (!(parityMaxAbsLogError <= PARITY_LIMIT)) {
      throw new Error(
        `${file}: ONNX Runtime differs from TF.js by ${parityMaxAbsLogError} (limit ${PARITY_LIMIT})`,
      );
    }

    // Held-out walk: the LSTM among the baselines, scored as bench/predict_eval.ts scores them.
    const predictors = [...baselinePredictors(), lstmPredictor(forecaster, entry)];
    const pooled = predictors.map(() => new Totals());
    const pooledOnline = new Totals();
    const onlineUses = new Map<string, number>();
    const perTrace = split.heldOut.map((trace, i) => {
      const r = walkTrace(heldOut[i], predictors, { horizonSteps, ...SCORING_DEFAULTS });
      r.rows.forEach((row, j) => pooled[j].merge(row.totals));
      pooledOnline.merge(r.online);
      for (const [name, n] of r.uses) onlineUses.set(name, (onlineUses.get(name) ?? 0) + n);
      const best = bestRow(r.rows.slice(0, -1));
      const lstm = r.rows[r.rows.length - 1];
      return {
        trace,
        bestBaseline: figures(best.name, best.totals),
        lstm: figures(lstm.name, lstm.totals),
        onlineFinalChoice: r.finalChoice,
      };
    });
    const rows = predictors.map((p, j) => ({ name: p.name, totals: pooled[j] }));
    const best = bestRow(rows.slice(0, -1));
    await Deno.writeFile(outDir + file, bytes);
    return {
      entry,
      report: {
        file,
        binMs,
        horizonMs,
        horizonSteps,
        windowSamples,
        units,
        seed: modelSeed,
        scale: { ...scale, logMean: round(scale.logMean, 6), logStd: round(scale.logStd, 6) },
        trainWindows: trainEx.count,
        heldOutWindows: heldEx.count,
        trainSeconds,
        losses,
        parityMaxAbsLogError,
        modelBytes: bytes.length,
        heldOut: {
          pooled: rows.map((r) => figures(r.name, r.totals)),
          online: figures("online choice", pooledOnline),
          /** Share of the online choice's scored forecasts each predictor made, most first. */
          onlineUses: [...onlineUses].sort((a, b) => b[1] - a[1]).map(([name, n]) => ({
            name,
            share: round(n / pooledOnline.resolved, 4),
          })),
          bestBaseline: best.name,
          lstmMinusBestBaselinePoints: round(
            (pooled[pooled.length - 1].accuracy() - best.totals.accuracy()) * 100,
            2,
          ),
          perTrace,
        },
      },
    };
  } finally {
    forecaster.close();
    model.dispose();
  }
}

await Deno.mkdir(outDir, { recursive: true });
console.log(
  `training ${specs.length} models on ${split.train.length} traces; held out: ${split.heldOut.join(", ")}`,
);
const results = [];
for (const [i, spec] of specs.entries()) {
  console.log(`model ${i + 1}/${specs.length}: bins of ${spec.binMs} ms, horizon ${spec.horizonMs} ms`);
  results.push(await trainOne(spec, seed + 1000 * i));
}

const manifest: LstmManifest = {
  version: 1,
  trainTraces: split.train,
  heldOutTraces: split.heldOut,
  models: results.map((r) => r.entry),
};
await Deno.writeTextFile(outDir + MANIFEST_FILE, JSON.stringify(manifest, null, 2) + "\n");

const report = {
  data: {
    traces: tracesDir.replace(/.*\/(shared\/)/, "$1"),
    splitBy: "recording (a trace's .up and .down stay together)",
    heldOutRecordings: HELD_OUT_RECORDINGS,
    trainTraces: split.train,
    heldOutTraces: split.heldOut,
    secondsPerTrace: Object.fromEntries([...binsOf(1000)].map(([f, b]) => [f, b.length])),
  },
  settings: {
    units,
    windowSamples,
    epochs,
    windowsPerEpoch,
    batchSize,
    learningRate,
    seed,
    optimizer: "adam",
    loss: args.loss === "ape"
      ? "absolute percentage error of the forecast (the APE of 1 − MAPE), zero-capacity targets left out"
      : "absolute error of ln(forecast), zero-capacity targets left out",
    inputs: "ln(bytes/s + floor), standardised with the training traces' mean and deviation",
    tfjs: tf.version.tfjs,
    onnxRuntime: ort.version,
    scoring: SCORING_DEFAULTS,
  },
  models: results.map((r) => r.report),
};
await Deno.writeTextFile(outDir + "report.json", JSON.stringify(report, null, 2) + "\n");
await Deno.writeTextFile(outDir + "report.md", markdown(report));
console.log(`wrote ${results.length} models, ${MANIFEST_FILE}, report.json and report.md to ${outDir}`);

function markdown(r: typeof report): string {
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  const lines = [
    "# PBA LSTM training report",
    "",
    "Written by `deno task train` (src/predict/lstm_train.ts); the numbers below are report.json's.",
    "",
    `- Traces: ${r.data.traces}, split by ${r.data.splitBy}.`,
    `- Training: ${r.data.trainTraces.join(", ")}.`,
    `- Held out (never trained on): ${r.data.heldOutTraces.join(", ")}.`,
    `- Model: 1 LSTM layer of ${r.settings.units} units over ${r.settings.windowSamples} past bins, one dense ` +
    `output; ${r.settings.inputs}.`,
    `- Training: ${r.settings.optimizer} at ${r.settings.learningRate}, ${r.settings.epochs} epochs of ` +
    `${r.settings.windowsPerEpoch} windows drawn afresh each epoch, batch ${r.settings.batchSize}, seed ` +
    `${r.settings.seed}; loss: ${r.settings.loss}.`,
    `- TensorFlow.js ${r.settings.tfjs} (CPU backend); ONNX Runtime ${r.settings.onnxRuntime}.`,
    "- Held-out figures walk each trace bin by bin as bench/predict_eval.ts does (zero-capacity bins are left",
    "  out of MAPE, kept in MAE) and pool all held-out traces; the online choice scores every row, LSTM included.",
    "",
  ];
  for (const m of r.models) {
    lines.push(
      `## ${m.file}: bins of ${m.binMs} ms, horizon ${m.horizonMs / 1000} s (${m.horizonSteps} bins)`,
      "",
      `${m.trainWindows} training windows, ${m.heldOutWindows} held-out windows; trained in ${m.trainSeconds} s; ` +
        `${m.modelBytes} bytes; ONNX Runtime vs TF.js max |Δ ln| = ${
          m.parityMaxAbsLogError.toExponential(2)
        }.`,
      "",
      `Per epoch, training loss / held-out mean APE (${HELD_OUT_LOSS_WINDOWS} windows, not used to choose ` +
        `anything): ${
          m.losses.map((l) => `${l.trainLoss.toFixed(3)} / ${l.heldOutApe.toFixed(3)}`).join(", ")
        }.`,
      "",
      "| predictor | 1−MAPE | 1−MdAPE | MAE Mbit/s | scored |",
      "| --- | ---: | ---: | ---: | ---: |",
      ...[...m.heldOut.pooled, m.heldOut.online].map((p) =>
        `| ${p.name} | ${pct(p.accuracy)} | ${pct(p.medianAccuracy)} | ${
          p.maeMbps.toFixed(3)
        } | ${p.scored} |`
      ),
      "",
      `LSTM minus best baseline (${m.heldOut.bestBaseline}) in 1−MAPE: ${m.heldOut.lstmMinusBestBaselinePoints} ` +
        "points.",
      `The online choice made its forecasts with: ${
        m.heldOut.onlineUses.map((u) => `${u.name} ${pct(u.share)}`).join(", ")
      }.`,
      "",
      "| held-out trace | best baseline 1−MAPE / MAE | LSTM 1−MAPE / MAE | online choice at the end |",
      "| --- | --- | --- | --- |",
      ...m.heldOut.perTrace.map((t) =>
        `| ${t.trace} | ${t.bestBaseline.name} ${pct(t.bestBaseline.accuracy)} / ${
          t.bestBaseline.maeMbps.toFixed(3)
        } | ${pct(t.lstm.accuracy)} / ${t.lstm.maeMbps.toFixed(3)} | ${t.onlineFinalChoice} |`
      ),
      "",
    );
  }
  return lines.join("\n");
}
