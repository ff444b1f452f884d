/**
 * PBA per peer, sans IO: each peer's bandwidth history (one sample per 1 s bin in which the agent sent
 * to it), every predictor's forecast at each horizon, and the online choice among them (scoring.ts). The
 * agent feeds it from the transfers it runs (src/mode/links.ts), persists the histories, and asks it
 * for forecasts: the migration's QEMU parameters (src/migration/tuning.ts) and transfers' ETAs.
 *
 * A restart replays the persisted history through fresh scorings, so the choice is what it was.
 */
import { baselinePredictors, type Predictor } from "./baselines.ts";
import { type BandwidthSample, SampleRing, type SampleRingJson } from "./samples.ts";
import { PredictorScoring, type ScoringSnapshot } from "./scoring.ts";

/** The step the agent samples at, and the bin the LSTM models for it were trained on. */
export const FORECAST_BIN_MS = 1000;
/** Horizons forecast for every peer, in bins: the next second (rates, ETAs) and the next 10 s. */
export const FORECAST_HORIZONS = [1, 10] as const;
/** An hour of busy seconds per peer. */
export const HISTORY_CAPACITY = 3600;
/** Samples shown by view(). */
const VIEW_SAMPLES = 60;

export interface Forecast {
  bytesPerSec: number;
  /** The predictor the online choice uses now. */
  predictor: string;
  horizonSteps: number;
}

export interface PeerForecastView {
  binMs: number;
  samples: number;
  /** The latest samples, oldest first. */
  history: BandwidthSample[];
  horizons: {
    horizonSteps: number;
    chosen: string;
    /** What each predictor forecasts now for horizonSteps bins past the latest sample. */
    forecasts: { predictor: string; bytesPerSec: number }[];
    scoring: ScoringSnapshot;
  }[];
}

/** Predictors for a horizon: the baselines, plus the LSTM trained for that horizon when one loaded. */
export type PredictorsFor = (horizonSteps: number) => Predictor[];

export const baselinesOnly: PredictorsFor = () => baselinePredictors();

class PeerHistory {
  readonly ring = new SampleRing(HISTORY_CAPACITY);
  readonly scorings: PredictorScoring[];

  constructor(predictorsFor: PredictorsFor) {
    this.scorings = FORECAST_HORIZONS.map((h) => new PredictorScoring(predictorsFor(h), { horizonSteps: h }));
  }

  add(sample: BandwidthSample): void {
    this.ring.push(sample);
    for (const s of this.scorings) s.observe(sample.bytesPerSec);
  }
}

export class ForecastBook {
  readonly #peers = new Map<string, PeerHistory>();

  constructor(readonly predictorsFor: PredictorsFor = baselinesOnly) {}

  /** The peer's link delivered bytesPerSec in the bin ending at atMs. */
  observe(peer: string, atMs: number, bytesPerSec: number): void {
    let p = this.#peers.get(peer);
    if (!p) this.#peers.set(peer, p = new PeerHistory(this.predictorsFor));
    p.add({ atMs, bytesPerSec });
  }

  /** The chosen predictor's forecast horizonSteps bins ahead; undefined before the peer's first sample. */
  forecast(peer: string, horizonSteps: (typeof FORECAST_HORIZONS)[number] = 1): Forecast | undefined {
    const s = this.#peers.get(peer)?.scorings[FORECAST_HORIZONS.indexOf(horizonSteps)];
    const bytesPerSec = s?.forecast();
    if (!s || bytesPerSec === undefined) return undefined;
    return { bytesPerSec, predictor: s.best().name, horizonSteps };
  }

  view(peer: string): PeerForecastView | undefined {
    const p = this.#peers.get(peer);
    if (!p) return undefined;
    return {
      binMs: FORECAST_BIN_MS,
      samples: p.ring.length,
      history: p.ring.samples(VIEW_SAMPLES),
      horizons: p.scorings.map((s) => ({
        horizonSteps: s.horizonSteps,
        chosen: s.best().name,
        forecasts: s.predictors.map((pr) => ({
          predictor: pr.name,
          bytesPerSec: pr.predict(p.ring.values(s.historySteps), s.horizonSteps),
        })),
        scoring: s.snapshot(),
      })),
    };
  }

  peers(): string[] {
    return [...this.#peers.keys()];
  }

  /** The histories, for the agent to persist. */
  toJSON(): Record<string, SampleRingJson> {
    return Object.fromEntries([...this.#peers].map(([peer, p]) => [peer, p.ring.toJSON()]));
  }

  /** Rebuilds a book from persisted histories, replaying each through the scorings. */
  static fromJSON(data: unknown, predictorsFor: PredictorsFor = baselinesOnly): ForecastBook {
    if (typeof data !== "object" || data === null || Array.isArray(data)) {
      throw new RangeError("forecast histories must be an object of peer → sample ring");
    }
    const book = new ForecastBook(predictorsFor);
    for (const [peer, ring] of Object.entries(data)) {
      for (const s of SampleRing.fromJSON(ring, HISTORY_CAPACITY).samples()) {
        book.observe(peer, s.atMs, s.bytesPerSec);
      }
    }
    return book;
  }
}
