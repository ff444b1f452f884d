/**
 * PBA offline evaluation, pure: walks a binned trace one bin at a time through PredictorScoring, so every
 * predictor forecasts the bin one horizon ahead and is scored when it arrives; the online choice is scored
 * on the forecasts of whichever predictor it was using when each was made. bench/predict_eval.ts prints
 * these walks; the trainer's report uses the same walk on its held-out traces.
 */
import type { Predictor } from "./baselines.ts";
import { PredictorScoring, type ScoringMetric } from "./scoring.ts";

/** Whole-trace totals for one forecaster at one horizon. */
export class Totals {
  readonly apes: number[] = [];
  aeSum = 0;
  resolved = 0;
  zeroActuals = 0;

  add(forecast: number, actual: number): void {
    this.resolved++;
    this.aeSum += Math.abs(forecast - actual);
    // A zero actual has no percentage error; it still counts in MAE.
    if (actual > 0) this.apes.push(Math.abs(forecast - actual) / actual);
    else this.zeroActuals++;
  }

  /** Adds another walk's totals: pooled figures over several traces. */
  merge(other: Totals): void {
    for (const a of other.apes) this.apes.push(a);
    this.aeSum += other.aeSum;
    this.resolved += other.resolved;
    this.zeroActuals += other.zeroActuals;
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

export interface WalkOptions {
  horizonSteps: number;
  windowForecasts: number;
  minResolved: number;
  metric: ScoringMetric;
}

export interface WalkResult {
  /** One per predictor, in the order given. */
  rows: { name: string; totals: Totals }[];
  online: Totals;
  /** How many of the online choice's scored forecasts each predictor made. */
  uses: Map<string, number>;
  finalChoice: string;
  switches: number;
}

export function walkTrace(
  bins: readonly number[],
  predictors: readonly Predictor[],
  o: WalkOptions,
): WalkResult {
  const scoring = new PredictorScoring(predictors, {
    horizonSteps: o.horizonSteps,
    windowForecasts: o.windowForecasts,
    minResolved: o.minResolved,
    metric: o.metric,
  });
  const rows = predictors.map((p) => ({ name: p.name, totals: new Totals() }));
  const online = new Totals();
  const uses = new Map<string, number>();
  for (const x of bins) {
    const r = scoring.observe(x);
    if (!r) continue;
    r.forecastsBytesPerSec.forEach((f, i) => rows[i].totals.add(f, r.actualBytesPerSec));
    online.add(r.chosenForecastBytesPerSec, r.actualBytesPerSec);
    uses.set(r.chosen, (uses.get(r.chosen) ?? 0) + 1);
  }
  const snap = scoring.snapshot();
  return { rows, online, uses, finalChoice: snap.chosen, switches: snap.switches };
}

/** The row with the best 1 − MAPE; when several clamp to 0, the lower MAE decides. */
export function bestRow<T extends { totals: Totals }>(rows: readonly T[]): T {
  return rows.reduce((a, b) => {
    const [accA, accB] = [a.totals.accuracy(), b.totals.accuracy()];
    return accB > accA || (accB === accA && b.totals.maeMbps() < a.totals.maeMbps()) ? b : a;
  });
}
