/**
 * PBA predictor evaluation on the mahimahi cellular traces (not a deno bench: it measures accuracy, not
 * time). For every trace, at horizons of 1 s, 10 s and 60 s, it walks the binned capacity one bin at a
 * time, lets every predictor forecast the bin one horizon ahead, and scores the forecasts when that bin
 * arrives; the online choice (PredictorScoring) is scored the same way, on the forecasts of whichever
 * predictor it was using when each forecast was made (src/predict/evaluation.ts).
 *
 *   deno run --allow-read --allow-env --allow-ffi bench/predict_eval.ts [--traces DIR] [--bin-ms 1000]
 *     [--window 60] [--min-resolved 10] [--choose-by mape|mae] [--models DIR]
 *
 * The LSTM joins the baselines where a trained model exists for that bin size and horizon (models.json
 * in src/predict/model/, one model per horizon: each forecasts only its own), and only on the traces held
 * out of its training; the training traces are scored with the baselines alone. Without ONNX Runtime or
 * the models, the baselines are scored and the reason is printed.
 *
 * Accuracy is 1 − MAPE (clamped at 0); bins whose actual capacity is 0 have no percentage error and are
 * left out of MAPE (counted in the "zero" column) but kept in MAE.
 */
import { parseArgs } from "node:util";
import { ForecasterError } from "../ffi/forecaster.ts";
import { baselinePredictors, type Predictor } from "../src/predict/baselines.ts";
import { bestRow, Totals, walkTrace } from "../src/predict/evaluation.ts";
import { LstmModels, modelDir } from "../src/predict/lstm.ts";
import { SCORING_DEFAULTS, type ScoringMetric } from "../src/predict/scoring.ts";
import { binMahimahi } from "../src/predict/traces.ts";

const HORIZONS_MS = [1_000, 10_000, 60_000];

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    traces: { type: "string" },
    "bin-ms": { type: "string", default: "1000" },
    window: { type: "string", default: String(SCORING_DEFAULTS.windowForecasts) },
    "min-resolved": { type: "string", default: String(SCORING_DEFAULTS.minResolved) },
    "choose-by": { type: "string", default: SCORING_DEFAULTS.metric },
    models: { type: "string" },
  },
});
const binMs = Number(args["bin-ms"]);
const windowForecasts = Number(args.window);
const minResolved = Number(args["min-resolved"]);
const metric = args["choose-by"] as ScoringMetric;
if (!Number.isInteger(binMs) || binMs < 1 || HORIZONS_MS.some((h) => h % binMs !== 0)) {
  console.error(`--bin-ms ${args["bin-ms"]}: give whole milliseconds that divide 1000 (e.g. 100 or 1000)`);
  Deno.exit(2);
}
const tracesDir = args.traces
  ? args.traces.replace(/\/?$/, "/")
  : new URL("../../shared/traces/mahimahi/", import.meta.url).pathname;

let lstm: LstmModels | undefined;
try {
  lstm = LstmModels.open(args.models ?? modelDir());
} catch (err) {
  if (!(err instanceof ForecasterError)) throw err;
  console.log(`LSTM not scored: ${err.message}\n`);
}
const heldOut = new Set(lstm?.manifest.heldOutTraces ?? []);

const pct = (x: number) => Number.isFinite(x) ? `${(x * 100).toFixed(1)}%` : "n/a";
const pad = (s: string, n: number) => s.padEnd(n);
const lpad = (s: string, n: number) => s.padStart(n);

const files: string[] = [];
for await (const e of Deno.readDir(tracesDir)) if (e.isFile && !e.name.startsWith(".")) files.push(e.name);
files.sort();
if (files.length === 0) {
  console.error(`no traces in ${tracesDir}; give --traces DIR`);
  Deno.exit(2);
}

console.log(`PBA predictors on ${files.length} mahimahi traces, bins of ${binMs} ms, horizons in bins of`);
console.log(
  `${binMs} ms; online choice: rolling ${metric.toUpperCase()} over ${windowForecasts} resolved forecasts, ` +
    `${minResolved} before leaving the default (${baselinePredictors()[0].name}).`,
);
console.log("Accuracy = 1 − MAPE (clamped at 0). Bins whose actual capacity is 0 are skipped for MAPE");
console.log("(column 'zero') but count in MAE. 1−MdAPE is the same with the median APE.");
if (lstm) {
  console.log(
    `The LSTM is scored on the traces held out of its training (marked *): ${[...heldOut].join(", ")}.`,
  );
}
console.log();

function row(label: string, name: string, t: Totals): string {
  return `${pad(label, 8)}${pad(name, 30)}${lpad(pct(t.accuracy()), 8)}${lpad(pct(t.medianAccuracy()), 9)}` +
    `${lpad(t.maeMbps().toFixed(3), 12)}${lpad(String(t.apes.length), 8)}${lpad(String(t.zeroActuals), 6)}`;
}
const header = `${pad("horizon", 8)}${pad("predictor", 30)}${lpad("1−MAPE", 8)}${lpad("1−MdAPE", 9)}` +
  `${lpad("MAE Mbit/s", 12)}${lpad("scored", 8)}${lpad("zero", 6)}`;

interface Best {
  name: string;
  accuracy: number;
  medianAccuracy: number;
}
const summary: { trace: string; best: Best[]; online: string[] }[] = [];
/** Per horizon, each predictor's totals pooled over the held-out traces (LSTM last), for the closing table. */
const pooled = HORIZONS_MS.map(() => new Map<string, Totals>());
/** Per horizon, how many of the online choice's held-out forecasts each predictor made. */
const pooledUses = HORIZONS_MS.map(() => new Map<string, number>());
for (const name of files) {
  const trace = binMahimahi(await Deno.readTextFile(tracesDir + name), binMs);
  const bins = trace.bytesPerSec;
  const meanMbps = bins.reduce((s, x) => s + x, 0) / bins.length * 8 / 1e6;
  const zeros = bins.filter((x) => x === 0).length;
  const isHeldOut = heldOut.has(name);
  console.log(
    `== ${name}${isHeldOut ? " *" : ""}: ${bins.length} bins (${(trace.durationMs / 1000).toFixed(0)} s), ` +
      `mean ${meanMbps.toFixed(2)} Mbit/s, ${zeros} zero bins ==`,
  );
  console.log(header);
  const entry = { trace: name, best: [] as Best[], online: [] as string[] };
  HORIZONS_MS.forEach((horizonMs, h) => {
    const horizonSteps = horizonMs / binMs;
    const model = isHeldOut ? lstm?.predictorFor(binMs, horizonSteps) : undefined;
    const predictors: Predictor[] = [...baselinePredictors(), ...(model ? [model] : [])];
    const res = walkTrace(bins, predictors, { horizonSteps, windowForecasts, minResolved, metric });
    const label = `${horizonMs / 1000} s`;
    for (const r of res.rows) console.log(row(label, r.name, r.totals));
    console.log(row(label, `online→${res.finalChoice} (${res.switches} sw)`, res.online));
    if (isHeldOut) {
      for (const r of [...res.rows, { name: "online choice", totals: res.online }]) {
        const t = pooled[h].get(r.name) ?? new Totals();
        t.merge(r.totals);
        pooled[h].set(r.name, t);
      }
      for (const [name, n] of res.uses) pooledUses[h].set(name, (pooledUses[h].get(name) ?? 0) + n);
    }
    const best = bestRow(res.rows.slice(0, baselinePredictors().length));
    entry.best.push({
      name: best.name,
      accuracy: best.totals.accuracy(),
      medianAccuracy: best.totals.medianAccuracy(),
    });
    entry.online.push(res.finalChoice);
  });
  summary.push(entry);
  console.log();
}

console.log("== summary per horizon: best baseline by 1 − MAPE (then MAE), its 1 − MAPE / 1 − MdAPE, and");
console.log("   the predictor the online choice uses at the end of the trace ==");
console.log(`${pad("trace", 29)}${HORIZONS_MS.map((h) => pad(`${h / 1000} s`, 44)).join("")}`.trimEnd());
for (const { trace, best, online } of summary) {
  const cells = best.map((b, i) =>
    pad(`${b.name} ${pct(b.accuracy)}/${pct(b.medianAccuracy)} → ${online[i]}`, 44)
  );
  console.log(`${pad(trace + (heldOut.has(trace) ? " *" : ""), 29)}${cells.join("")}`.trimEnd());
}

if (heldOut.size > 0) {
  console.log("\n== held-out traces (*) pooled: every scored bin of every held-out trace together ==");
  console.log(header);
  HORIZONS_MS.forEach((horizonMs, h) => {
    const label = `${horizonMs / 1000} s`;
    const rows = [...pooled[h]].map(([name, totals]) => ({ name, totals }));
    for (const r of rows) console.log(row(label, r.name, r.totals));
    const lstmRow = rows.find((r) => r.name.startsWith("lstm"));
    const best = bestRow(rows.filter((r) => baselinePredictors().some((p) => p.name === r.name)));
    console.log(
      lstmRow
        ? `${pad(label, 8)}LSTM − best baseline (${best.name}): ${
          ((lstmRow.totals.accuracy() - best.totals.accuracy()) * 100).toFixed(1)
        } points of 1 − MAPE, ${
          ((lstmRow.totals.medianAccuracy() - best.totals.medianAccuracy()) * 100).toFixed(1)
        } of 1 − MdAPE, MAE ${(lstmRow.totals.maeMbps() - best.totals.maeMbps()).toFixed(3)} Mbit/s`
        : `${pad(label, 8)}no LSTM model for bins of ${binMs} ms at this horizon`,
    );
    const uses = [...pooledUses[h]].sort((a, b) => b[1] - a[1]);
    const total = uses.reduce((s, [, n]) => s + n, 0);
    console.log(
      `${pad(label, 8)}online choice's forecasts made by: ${
        uses.map(([name, n]) => `${name} ${pct(n / total)}`).join(", ")
      }`,
    );
  });
}
lstm?.close();
