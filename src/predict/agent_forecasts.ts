/**
 * The agent's forecasts, the IO edge of peer_forecast.ts: opens the LSTM models when ONNX Runtime and
 * the model files are there (otherwise the baselines forecast alone, as /v1/info says), loads the
 * peers' bandwidth histories from the state directory, and writes them back now and then and at exit.
 */
import { join } from "node:path";
import type { Logger } from "../obs/log.ts";
import { LstmModels } from "./lstm.ts";
import { FORECAST_BIN_MS, ForecastBook, type PredictorsFor } from "./peer_forecast.ts";
import { baselinePredictors } from "./baselines.ts";

/** How often the histories are written while the agent runs. */
const SAVE_EVERY_MS = 60_000;

export interface AgentForecasts {
  book: ForecastBook;
  /** Writes the histories (temp file, then rename). */
  save(): Promise<void>;
  /** Saves, stops the timer and releases the models. */
  close(): Promise<void>;
}

export async function openAgentForecasts(stateDir: string, log: Logger): Promise<AgentForecasts> {
  let models: LstmModels | undefined;
  try {
    models = LstmModels.open(undefined, { maxBatch: 1 });
  } catch (err) {
    log("forecasts: LSTM models not loaded, the baselines forecast alone", {
      reason: (err as Error).message,
    });
  }
  const predictorsFor: PredictorsFor = (h) => {
    const lstm = models?.predictorFor(FORECAST_BIN_MS, h);
    return lstm ? [...baselinePredictors(), lstm] : baselinePredictors();
  };
  const path = join(stateDir, "forecast-history.json");
  let book = new ForecastBook(predictorsFor);
  try {
    book = ForecastBook.fromJSON(JSON.parse(await Deno.readTextFile(path)), predictorsFor);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) {
      // A damaged history costs only the forecasts' warm-up: start afresh rather than refuse to start.
      log("forecasts: history not loaded, starting afresh", { path, reason: (err as Error).message });
    }
  }
  const save = async () => {
    const tmp = `${path}.tmp`;
    await Deno.writeTextFile(tmp, JSON.stringify(book));
    await Deno.rename(tmp, path);
  };
  const timer = setInterval(() => {
    save().catch((err) => log("forecasts: cannot save history", { path, error: (err as Error).message }));
  }, SAVE_EVERY_MS);
  return {
    book,
    save,
    close: async () => {
      clearInterval(timer);
      await save().catch((err) =>
        log("forecasts: cannot save history", { path, error: (err as Error).message })
      );
      models?.close();
    },
  };
}
