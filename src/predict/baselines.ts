/**
 * PBA baseline bandwidth predictors: pure functions of a history, no state and no IO, so the online
 * scoring can ask every one of them at every step and the same history always gives the same forecast.
 * The ONNX LSTM forecaster comes later behind the same interface, and must beat these to be chosen.
 */

export interface Predictor {
  /** Unique among the predictors scored together; carries the parameters, e.g. "ewma(0.3)". */
  readonly name: string;
  /**
   * Forecast of the sample horizonSteps after the last one in history.
   * history: bytes/s at a regular step, oldest first, at least one value.
   */
  predict(history: readonly number[], horizonSteps: number): number;
}

function checkArgs(name: string, history: readonly number[], horizonSteps: number): void {
  if (history.length === 0) throw new RangeError(`${name}: history is empty; give at least one sample`);
  if (!Number.isInteger(horizonSteps) || horizonSteps < 1) {
    throw new RangeError(`${name}: horizonSteps = ${horizonSteps}; give an integer ≥ 1`);
  }
}

function checkUnit(what: string, value: number, { open }: { open: boolean }): void {
  const ok = Number.isFinite(value) && value <= 1 && (open ? value > 0 : value >= 0);
  if (!ok) throw new RangeError(`${what} = ${value}; give a number in ${open ? "(0, 1]" : "[0, 1]"}`);
}

/** Tomorrow looks like today: the last sample, at every horizon. */
export function lastValue(): Predictor {
  const name = "last";
  return {
    name,
    predict(history, horizonSteps) {
      checkArgs(name, history, horizonSteps);
      return history[history.length - 1];
    },
  };
}

/**
 * Exponentially weighted moving average, s ← s + alpha·(x − s), seeded with the oldest sample; a flat
 * forecast at every horizon. Small alpha smooths bursts away; alpha = 1 is lastValue.
 */
export function ewma(alpha = 0.3): Predictor {
  checkUnit("ewma alpha", alpha, { open: true });
  const name = `ewma(${alpha})`;
  return {
    name,
    predict(history, horizonSteps) {
      checkArgs(name, history, horizonSteps);
      let s = history[0];
      for (let i = 1; i < history.length; i++) s += alpha * (history[i] - s);
      return s;
    },
  };
}

/**
 * Harmonic mean of the last k samples: the throughput predictor of MPC video streaming (Yin et al.,
 * SIGCOMM 2015). It leans towards the low samples, so one burst does not inflate the forecast, and a
 * zero sample (an outage) makes it 0: conservative by design.
 */
export function harmonicMean(k = 5): Predictor {
  if (!Number.isInteger(k) || k < 1) throw new RangeError(`harmonic mean k = ${k}; give an integer ≥ 1`);
  const name = `harmonic(${k})`;
  return {
    name,
    predict(history, horizonSteps) {
      checkArgs(name, history, horizonSteps);
      const from = Math.max(0, history.length - k);
      let sumInverse = 0;
      for (let i = from; i < history.length; i++) {
        if (history[i] <= 0) return 0; // the limit of n / Σ 1/x as one x → 0
        sumInverse += 1 / history[i];
      }
      return (history.length - from) / sumInverse;
    },
  };
}

/**
 * Holt's linear trend (double exponential smoothing): a level and a slope per step, forecast
 * level + horizon·slope, clamped at 0 because a link has no negative capacity. Seeded with the first
 * sample as level and the first difference as slope, so an exact ramp is followed exactly.
 */
export function holt(alpha = 0.5, beta = 0.1): Predictor {
  checkUnit("holt alpha", alpha, { open: true });
  checkUnit("holt beta", beta, { open: false });
  const name = `holt(${alpha},${beta})`;
  return {
    name,
    predict(history, horizonSteps) {
      checkArgs(name, history, horizonSteps);
      let level = history[0];
      let slope = history.length > 1 ? history[1] - history[0] : 0;
      for (let i = 1; i < history.length; i++) {
        const prevLevel = level;
        level = alpha * history[i] + (1 - alpha) * (level + slope);
        slope = beta * (level - prevLevel) + (1 - beta) * slope;
      }
      return Math.max(0, level + horizonSteps * slope);
    },
  };
}

/**
 * The baselines scored together, simplest first: when two score the same, the scoring keeps the earlier
 * one. (The LSTM joins this list when it lands.)
 */
export function baselinePredictors(): Predictor[] {
  return [lastValue(), ewma(), harmonicMean(), holt()];
}
