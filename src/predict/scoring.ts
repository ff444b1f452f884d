/**
 * PBA online predictor choice, sans IO: samples come in one per step; every predictor forecasts the
 * sample horizonSteps ahead; when that sample arrives the forecasts are resolved and scored; the
 * predictor with the lowest rolling MAPE over the last windowForecasts resolutions is the one to use
 * (or the lowest MAE, by option: MAPE favours forecasts that err low, because an APE is at most 1 below
 * the actual and unbounded above it; see bench/predict_eval.ts for both on real traces).
 *
 * A challenger takes over only on a lead that is large and no luck: its rolling error lower by
 * switchMargin, and lower forecast by forecast in a paired t-test (Diebold-Mariano's test of equal
 * accuracy, on the errors of the window) at switchT. On volatile links one near-empty bin gives an APE of
 * 10 or more, so a window's MAPE is often decided by which predictor happened to be closest on a single
 * bin; without the test the choice follows those accidents (on the held-out cellular traces it then
 * scored worse than always using the last value; bench/predict_eval.ts shows both).
 *
 * Steps, not milliseconds: the caller feeds samples at a regular interval (one bin), the same step the
 * predictors' horizons count in. Nothing here reads a clock. The state is a function of the samples fed,
 * so after a restart the agent rebuilds it by replaying the persisted SampleRing.
 */
import type { Predictor } from "./baselines.ts";

export interface ScoringOptions {
  /** How many steps ahead the forecasts look. */
  horizonSteps: number;
  /** Resolved forecasts each predictor's rolling error covers. */
  windowForecasts?: number;
  /** Resolutions (with a non-zero actual, for MAPE) needed before leaving the default predictor. */
  minResolved?: number;
  /** Most recent samples handed to the predictors: bounds work per step and memory. */
  historySteps?: number;
  /** Name of the predictor used until the scores mean something; the first one if not given. */
  defaultPredictor?: string;
  /**
   * A challenger replaces the current choice only when its error is lower by this share, so two
   * predictors that score alike do not take turns.
   */
  switchMargin?: number;
  /**
   * How clear the lead must be: the paired t statistic of the current choice's errors less the
   * challenger's, over the window (2: a lead that chance gives about one time in 40).
   */
  switchT?: number;
  /** The rolling error that ranks the predictors. */
  metric?: ScoringMetric;
}

export type ScoringMetric = "mape" | "mae";

export const SCORING_DEFAULTS = {
  windowForecasts: 60,
  minResolved: 10,
  historySteps: 120,
  switchMargin: 0.05,
  switchT: 2,
  metric: "mape" as ScoringMetric,
};

/** Pending forecasts are one per step of the horizon; this caps them (and the horizon). */
export const MAX_HORIZON_STEPS = 10_000;

export interface PredictorScore {
  name: string;
  /** Mean |forecast − actual| / actual over the window, skipping zero actuals; NaN before any. */
  mape: number;
  /** Mean |forecast − actual| in bytes/s over the window; NaN before any resolution. */
  maeBytesPerSec: number;
  /** Resolutions in the window, and how many of them had a zero actual (left out of MAPE). */
  resolved: number;
  zeroActuals: number;
}

/** What one sample settled: the forecasts made horizonSteps earlier for it. */
export interface Resolution {
  /** Index (from 0) of the sample that resolved them. */
  step: number;
  actualBytesPerSec: number;
  /** One per predictor, in the order given to the constructor. */
  forecastsBytesPerSec: number[];
  /** The predictor in use when the forecasts were made, and its forecast: what the online choice said. */
  chosen: string;
  chosenForecastBytesPerSec: number;
}

export interface ScoringSnapshot {
  horizonSteps: number;
  steps: number;
  chosen: string;
  switches: number;
  scores: PredictorScore[];
}

interface Pending {
  targetStep: number;
  forecasts: number[];
  chosen: number;
}

/** Fixed-size window of one predictor's recent errors. */
class ErrorWindow {
  readonly #ape: (number | undefined)[] = [];
  readonly #ae: number[] = [];
  #next = 0;

  constructor(readonly size: number) {}

  add(forecast: number, actual: number): void {
    const ae = Math.abs(forecast - actual);
    // A zero actual has no percentage error; it still counts for MAE.
    const ape = actual > 0 ? ae / actual : undefined;
    if (this.#ae.length < this.size) {
      this.#ae.push(ae);
      this.#ape.push(ape);
    } else {
      this.#ae[this.#next] = ae;
      this.#ape[this.#next] = ape;
      this.#next = (this.#next + 1) % this.size;
    }
  }

  get resolved(): number {
    return this.#ae.length;
  }

  /** The window's errors by metric, in slot order: windows filled together line up slot by slot. */
  series(metric: ScoringMetric): number[] {
    return metric === "mae" ? [...this.#ae] : this.#ape.filter((a): a is number => a !== undefined);
  }

  /** Summed afresh on each call: the window is small, and a running sum would drift. */
  stats(): { mape: number; mapeCount: number; mae: number } {
    let apeSum = 0;
    let mapeCount = 0;
    for (const a of this.#ape) {
      if (a !== undefined) {
        apeSum += a;
        mapeCount++;
      }
    }
    const aeSum = this.#ae.reduce((s, x) => s + x, 0);
    return {
      mape: mapeCount ? apeSum / mapeCount : NaN,
      mapeCount,
      mae: this.#ae.length ? aeSum / this.#ae.length : NaN,
    };
  }
}

export class PredictorScoring {
  readonly horizonSteps: number;
  readonly windowForecasts: number;
  readonly minResolved: number;
  readonly historySteps: number;
  readonly switchMargin: number;
  readonly switchT: number;
  readonly metric: ScoringMetric;
  readonly #history: number[] = [];
  readonly #pending: Pending[] = [];
  readonly #errors: ErrorWindow[];
  #step = 0;
  #chosen: number;
  #switches = 0;

  constructor(readonly predictors: readonly Predictor[], options: ScoringOptions) {
    const o = { ...SCORING_DEFAULTS, ...options };
    if (predictors.length === 0) throw new RangeError("give at least one predictor to score");
    const names = new Set(predictors.map((p) => p.name));
    if (names.size !== predictors.length) {
      throw new RangeError(`predictor names must be unique: ${predictors.map((p) => p.name).join(", ")}`);
    }
    requireInt("horizonSteps", o.horizonSteps, 1, MAX_HORIZON_STEPS);
    requireInt("windowForecasts", o.windowForecasts, 1, 100_000);
    requireInt("minResolved", o.minResolved, 1, o.windowForecasts);
    requireInt("historySteps", o.historySteps, 1, 100_000);
    if (!(o.switchMargin >= 0 && o.switchMargin < 1)) {
      throw new RangeError(`switchMargin = ${o.switchMargin}; give a share in [0, 1)`);
    }
    this.horizonSteps = o.horizonSteps;
    this.windowForecasts = o.windowForecasts;
    this.minResolved = o.minResolved;
    this.historySteps = o.historySteps;
    this.switchMargin = o.switchMargin;
    if (!(o.switchT >= 0 && Number.isFinite(o.switchT))) {
      throw new RangeError(`switchT = ${o.switchT}; give a t statistic ≥ 0 (2 is the default)`);
    }
    this.switchT = o.switchT;
    if (o.metric !== "mape" && o.metric !== "mae") {
      throw new RangeError(`metric = ${o.metric}; give "mape" or "mae"`);
    }
    this.metric = o.metric;
    this.#errors = predictors.map(() => new ErrorWindow(o.windowForecasts));
    this.#chosen = o.defaultPredictor === undefined
      ? 0
      : predictors.findIndex((p) => p.name === o.defaultPredictor);
    if (this.#chosen < 0) {
      throw new RangeError(`defaultPredictor = ${o.defaultPredictor} is not among: ${[...names].join(", ")}`);
    }
  }

  /** Samples fed so far. */
  get steps(): number {
    return this.#step;
  }

  /**
   * Feeds the next sample. Resolves the forecasts made horizonSteps ago (returned, so a caller can keep
   * its own totals), updates the choice, then has every predictor forecast horizonSteps ahead.
   */
  observe(bytesPerSec: number): Resolution | undefined {
    if (!Number.isFinite(bytesPerSec) || bytesPerSec < 0) {
      throw new RangeError(`bytesPerSec = ${bytesPerSec}; give a finite number ≥ 0`);
    }
    const step = this.#step++;
    let resolution: Resolution | undefined;
    if (this.#pending.length > 0 && this.#pending[0].targetStep === step) {
      const due = this.#pending.shift()!;
      due.forecasts.forEach((f, i) => this.#errors[i].add(f, bytesPerSec));
      resolution = {
        step,
        actualBytesPerSec: bytesPerSec,
        forecastsBytesPerSec: due.forecasts,
        chosen: this.predictors[due.chosen].name,
        chosenForecastBytesPerSec: due.forecasts[due.chosen],
      };
      this.#rechoose();
    }

    this.#history.push(bytesPerSec);
    if (this.#history.length > this.historySteps) this.#history.shift();
    this.#pending.push({
      targetStep: step + this.horizonSteps,
      forecasts: this.predictors.map((p) => p.predict(this.#history, this.horizonSteps)),
      chosen: this.#chosen,
    });
    return resolution;
  }

  /** The predictor to use now. */
  best(): Predictor {
    return this.predictors[this.#chosen];
  }

  /** best()'s forecast horizonSteps past the last sample; undefined before the first sample. */
  forecast(): number | undefined {
    // The newest pending forecasts were made after the last choice, from the whole history.
    return this.#pending.at(-1)?.forecasts[this.#chosen];
  }

  scores(): PredictorScore[] {
    return this.predictors.map((p, i) => {
      const w = this.#errors[i];
      const { mape, mapeCount, mae } = w.stats();
      return {
        name: p.name,
        mape,
        maeBytesPerSec: mae,
        resolved: w.resolved,
        zeroActuals: w.resolved - mapeCount,
      };
    });
  }

  /** The inputs of the choice, for the API and logs (measure, then decide). */
  snapshot(): ScoringSnapshot {
    return {
      horizonSteps: this.horizonSteps,
      steps: this.#step,
      chosen: this.best().name,
      switches: this.#switches,
      scores: this.scores(),
    };
  }

  #rechoose(): void {
    const stats = this.#errors.map((w) => w.stats());
    // Every predictor is resolved against the same samples, so one count says whether the scores are ripe.
    const ripe = this.metric === "mape" ? stats[this.#chosen].mapeCount : this.#errors[this.#chosen].resolved;
    if (ripe < this.minResolved) return;
    // A predictor that answered NaN has no score, and must not hold the choice.
    const err = stats.map((s) => this.metric === "mape" ? s.mape : s.mae).map((e) =>
      Number.isNaN(e) ? Infinity : e
    );
    let challenger = 0;
    for (let i = 1; i < err.length; i++) {
      // Strictly lower: on a tie the earlier (simpler) predictor keeps its place.
      if (err[i] < err[challenger]) challenger = i;
    }
    if (challenger === this.#chosen) return;
    const current = err[this.#chosen];
    const lowerEnough = err[challenger] < current * (1 - this.switchMargin) &&
      (current === Infinity || this.#clearLead(challenger));
    // An exact tie with an earlier predictor also moves, so ties end on the simpler one.
    const tieToSimpler = err[challenger] === current && challenger < this.#chosen;
    if (lowerEnough || tieToSimpler) {
      this.#chosen = challenger;
      this.#switches++;
    }
  }

  /** Whether the challenger's errors are lower than the current choice's forecast by forecast, at switchT. */
  #clearLead(challenger: number): boolean {
    const current = this.#errors[this.#chosen].series(this.metric);
    const other = this.#errors[challenger].series(this.metric);
    const d = current.map((e, i) => e - other[i]);
    const n = d.length;
    const mean = d.reduce((s, x) => s + x, 0) / n;
    if (n < 2) return mean > 0;
    const variance = d.reduce((s, x) => s + (x - mean) ** 2, 0) / (n - 1);
    // No spread: the challenger was better (or not) on every forecast alike.
    if (variance === 0) return mean > 0;
    return mean / Math.sqrt(variance / n) > this.switchT;
  }
}

function requireInt(what: string, value: number, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`${what} = ${value}; give an integer in ${min}..${max}`);
  }
}
