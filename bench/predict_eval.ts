/**
 * PBA baseline evaluation on the mahimahi cellular traces (not a deno bench: it measures accuracy, not
 * time). For every trace, at horizons of 1 s, 10 s and 60 s, it walks the binned capacity one bin at a
 * time, lets every baseline forecast the bin one horizon ahead, and scores the forecasts when that bin
 * arrives; the online choice (PredictorScoring) is scored the same way, on the forecasts of whichever
 * predictor it was using when each forecast was made.
 *
 *   deno run --allow-read bench/predict_eval.ts [--traces DIR] [--bin-ms 1000] [--window 60]
 *     [--min-resolved 10] [--choose-by mape|mae]
 *
 * Accuracy is 1 − MAPE (clamped at 0); bins whose actual capacity is 0 have no percentage error and are
 * left out of MAPE (counted in the "zero" column) but kept in MAE. The LSTM forecaster comes later and
 * is to be scored by this same walk, against these numbers.
 */
import { parseArgs } from "node:util";
import { baselinePredictors } from "../src/predict/baselines.ts";
import { PredictorScoring, SCORING_DEFAULTS, type ScoringMetric } from "../src/predict/scoring.ts";
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

/** Whole-trace totals for one forecaster at one horizon. */
class Totals {
  apes: number[] = [];
  aeSum = 0;
  resolved = 0;
  zeroActuals = 0;

  add(forecast: number, actual: number): void {
    this.resolved++;
    this.aeSum += Math.abs(forecast - actual);
    if (actual > 0) this.apes.push(Math.abs(forecast - actual) / actual);
    else this.zeroActuals++;
  }

  /** 1 − MAPE, clamped at 0. */
  accuracy(): number {
    const mape = this.apes.reduce((s, x) => s + x, 0) / this.apes.length;
    return Math.max(0, 1 - mape);
  }

  /** 1 − median APE, clamped at 0: what a typical bin sees, unmoved by a few near-empty bins. */
  medianAccuracy(): number {
    const sorted = [...this.apes].sort((a, b) => a - b);
    const mid = sorted.length >> 1;
    const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    return Math.max(0, 1 - median);
  }

  maeMbps(): number {
    return (this.aeSum / this.resolved) * 8 / 1e6;
  }
}

interface HorizonResult {
  horizonMs: number;
  rows: { name: string; totals: Totals }[];
  online: Totals;
  finalChoice: string;
  switches: number;
}

function evaluate(bins: number[], horizonMs: number): HorizonResult {
  const predictors = baselinePredictors();
  const scoring = new PredictorScoring(predictors, {
    horizonSteps: horizonMs / binMs,
    windowForecasts,
    minResolved,
    metric,
  });
  const rows = predictors.map((p) => ({ name: p.name, totals: new Totals() }));
  const online = new Totals();
  for (const x of bins) {
    const r = scoring.observe(x);
    if (!r) continue;
    r.forecastsBytesPerSec.forEach((f, i) => rows[i].totals.add(f, r.actualBytesPerSec));
    online.add(r.chosenForecastBytesPerSec, r.actualBytesPerSec);
  }
  const snap = scoring.snapshot();
  return { horizonMs, rows, online, finalChoice: snap.chosen, switches: snap.switches };
}

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

console.log(`PBA baselines on ${files.length} mahimahi traces, bins of ${binMs} ms, horizons in bins of`);
console.log(
  `${binMs} ms; online choice: rolling ${metric.toUpperCase()} over ${windowForecasts} resolved forecasts, ` +
    `${minResolved} before leaving the default (${baselinePredictors()[0].name}).`,
);
console.log("Accuracy = 1 − MAPE (clamped at 0). Bins whose actual capacity is 0 are skipped for MAPE");
console.log("(column 'zero') but count in MAE. 1−MdAPE is the same with the median APE.\n");

interface Best {
  name: string;
  accuracy: number;
  medianAccuracy: number;
}
const summary: { trace: string; best: Best[]; online: string[] }[] = [];
for (const name of files) {
  const trace = binMahimahi(await Deno.readTextFile(tracesDir + name), binMs);
  const bins = trace.bytesPerSec;
  const meanMbps = bins.reduce((s, x) => s + x, 0) / bins.length * 8 / 1e6;
  const zeros = bins.filter((x) => x === 0).length;
  console.log(
    `== ${name}: ${bins.length} bins (${(trace.durationMs / 1000).toFixed(0)} s), ` +
      `mean ${meanMbps.toFixed(2)} Mbit/s, ${zeros} zero bins ==`,
  );
  console.log(
    `${pad("horizon", 8)}${pad("predictor", 30)}${lpad("1−MAPE", 8)}${lpad("1−MdAPE", 9)}` +
      `${lpad("MAE Mbit/s", 12)}${lpad("scored", 8)}${lpad("zero", 6)}`,
  );
  const entry = { trace: name, best: [] as Best[], online: [] as string[] };
  for (const horizonMs of HORIZONS_MS) {
    const res = evaluate(bins, horizonMs);
    const label = `${horizonMs / 1000} s`;
    const rows = [
      ...res.rows,
      { name: `online→${res.finalChoice} (${res.switches} sw)`, totals: res.online },
    ];
    for (const { name: rowName, totals: t } of rows) {
      console.log(
        `${pad(label, 8)}${pad(rowName, 30)}${lpad(pct(t.accuracy()), 8)}${
          lpad(pct(t.medianAccuracy()), 9)
        }` +
          `${lpad(t.maeMbps().toFixed(3), 12)}${lpad(String(t.apes.length), 8)}${
            lpad(String(t.zeroActuals), 6)
          }`,
      );
    }
    // Best by 1 − MAPE; when several clamp to 0, the lower MAE decides.
    const best = res.rows.reduce((a, b) => {
      const [accA, accB] = [a.totals.accuracy(), b.totals.accuracy()];
      return accB > accA || (accB === accA && b.totals.maeMbps() < a.totals.maeMbps()) ? b : a;
    });
    entry.best.push({
      name: best.name,
      accuracy: best.totals.accuracy(),
      medianAccuracy: best.totals.medianAccuracy(),
    });
    entry.online.push(res.finalChoice);
  }
  summary.push(entry);
  console.log();
}

console.log("== summary per horizon: best baseline by 1 − MAPE (then MAE), its 1 − MAPE / 1 − MdAPE, and");
console.log("   the predictor the online choice uses at the end of the trace ==");
console.log(`${pad("trace", 27)}${HORIZONS_MS.map((h) => pad(`${h / 1000} s`, 44)).join("")}`.trimEnd());
for (const { trace, best, online } of summary) {
  const cells = best.map((b, i) =>
    pad(`${b.name} ${pct(b.accuracy)}/${pct(b.medianAccuracy)} → ${online[i]}`, 44)
  );
  console.log(`${pad(trace, 27)}${cells.join("")}`.trimEnd());
}
