/**
 * PBA LSTM predictor: the trained ONNX models (src/predict/model/, listed in models.json) run through
 * ffi/forecaster.ts, behind the same Predictor interface as the baselines, so the online scoring can
 * weigh them side by side. Each model forecasts one horizon at one bin size; a host without ONNX Runtime
 * or without the model files keeps to the baselines, and forecastStatus() says which.
 */
import { fileURLToPath } from "node:url";
import { Forecaster, ForecasterError, type ForecasterOptions } from "../../ffi/forecaster.ts";
import { baselinePredictors, type Predictor } from "./baselines.ts";

export interface LstmModelEntry {
  /** File name inside the model directory. */
  file: string;
  binMs: number;
  horizonSteps: number;
  windowSamples: number;
  units: number;
}

/** models.json: what the trainer wrote, and on which traces. */
export interface LstmManifest {
  version: 1;
  trainTraces: string[];
  heldOutTraces: string[];
  models: LstmModelEntry[];
}

export const MANIFEST_FILE = "models.json";

/** DWCP_MODEL_DIR, else src/predict/model/ of this checkout (or of a compiled binary's embedded tree). */
export function modelDir(): string {
  return Deno.env.get("DWCP_MODEL_DIR") ?? fileURLToPath(new URL("./model/", import.meta.url));
}

function positiveInt(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= 1;
}

/** Reads and checks models.json; a missing or malformed one is a ForecasterError("model-missing"). */
export function readManifest(dir: string = modelDir()): LstmManifest {
  const path = `${dir.replace(/\/?$/, "/")}${MANIFEST_FILE}`;
  let data: unknown;
  try {
    data = JSON.parse(Deno.readTextFileSync(path));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new ForecasterError(
        "model-missing",
        `no forecast models: ${path} does not exist; run \`deno task train\` or set DWCP_MODEL_DIR`,
      );
    }
    if (err instanceof SyntaxError) {
      throw new ForecasterError(
        "model-missing",
        `${path} is not JSON (${err.message}); run \`deno task train\``,
      );
    }
    throw err;
  }
  const m = data as Partial<LstmManifest>;
  const badEntry = Array.isArray(m.models)
    ? m.models.findIndex((e) =>
      typeof e?.file !== "string" || !/^[\w.-]+\.onnx$/.test(e.file) || !positiveInt(e.binMs) ||
      !positiveInt(e.horizonSteps) || !positiveInt(e.windowSamples) || !positiveInt(e.units)
    )
    : 0;
  if (m.version !== 1 || badEntry >= 0 || !Array.isArray(m.trainTraces) || !Array.isArray(m.heldOutTraces)) {
    const what = m.version !== 1
      ? `version ${JSON.stringify(m.version)} (expected 1)`
      : `models[${badEntry}]`;
    throw new ForecasterError(
      "model-missing",
      `${path}: ${what} is not valid; run \`deno task train\` again`,
    );
  }
  return m as LstmManifest;
}

/**
 * A Predictor over one model. The model looks at its last windowSamples samples; a shorter history is
 * padded on the left with its oldest sample, as if the link had held that rate. It forecasts only the
 * horizon it was trained for: asking for another is an error, not a silent reuse.
 */
export function lstmPredictor(forecaster: Forecaster, entry: LstmModelEntry): Predictor {
  const w = forecaster.windowSamples;
  if (w !== entry.windowSamples || forecaster.features !== 1) {
    throw new ForecasterError(
      "model-invalid",
      `${entry.file} takes [${w}, ${forecaster.features}] windows; models.json says [${entry.windowSamples}, 1]`,
    );
  }
  const window = new Float64Array(w);
  const name = `lstm(w${w})`;
  return {
    name,
    predict(history, horizonSteps) {
      if (history.length === 0) throw new RangeError(`${name}: history is empty; give at least one sample`);
      if (horizonSteps !== entry.horizonSteps) {
        throw new RangeError(
          `${name} (${entry.file}) forecasts ${entry.horizonSteps} steps ahead, asked for ${horizonSteps}; ` +
            "use the model trained for that horizon",
        );
      }
      const from = history.length - w;
      for (let k = 0; k < w; k++) window[k] = history[Math.max(0, from + k)];
      return forecaster.predictOne(window);
    },
  };
}

/** The models of one directory, opened; close() releases every session. */
export class LstmModels {
  private constructor(
    readonly manifest: LstmManifest,
    readonly entries: { entry: LstmModelEntry; forecaster: Forecaster; predictor: Predictor }[],
  ) {}

  /**
   * Opens every model in models.json; throws ForecasterError when the runtime or a model is missing. The
   * files are read here and handed over as bytes: in a `deno compile` binary they live in the embedded
   * tree, which Deno's file API reads but ONNX Runtime's own file loading cannot.
   */
  static open(dir: string = modelDir(), options: ForecasterOptions = {}): LstmModels {
    const manifest = readManifest(dir);
    const opened: LstmModels["entries"] = [];
    try {
      for (const entry of manifest.models) {
        const path = `${dir.replace(/\/?$/, "/")}${entry.file}`;
        let bytes: Uint8Array;
        try {
          bytes = Deno.readFileSync(path);
        } catch (err) {
          if (!(err instanceof Deno.errors.NotFound)) throw err;
          throw new ForecasterError("model-missing", `${path}, listed in ${MANIFEST_FILE}, does not exist`);
        }
        let forecaster: Forecaster;
        try {
          forecaster = Forecaster.open(bytes, options);
        } catch (err) {
          if (!(err instanceof ForecasterError)) throw err;
          throw new ForecasterError(err.reason, `${path}: ${err.message}`);
        }
        try {
          opened.push({ entry, forecaster, predictor: lstmPredictor(forecaster, entry) });
        } catch (err) {
          forecaster.close();
          throw err;
        }
      }
    } catch (err) {
      for (const o of opened) o.forecaster.close();
      throw err;
    }
    return new LstmModels(manifest, opened);
  }

  /** The predictor for samples binMs apart forecasting horizonSteps ahead, if one was trained. */
  predictorFor(binMs: number, horizonSteps: number): Predictor | undefined {
    return this.entries.find((e) => e.entry.binMs === binMs && e.entry.horizonSteps === horizonSteps)
      ?.predictor;
  }

  close(): void {
    for (const e of this.entries) e.forecaster.close();
  }
}

export type ForecastStatus =
  | {
    model: "loaded";
    models: { file: string; binMs: number; horizonSteps: number; windowSamples: number }[];
  }
  | { model: "unavailable"; reason: string; fallback: string };

/**
 * For GET /v1/info: opens every model, has each forecast once (a steady 1 MB/s link must give a finite,
 * positive rate), and closes them again; or says why not and what forecasts instead.
 */
export function forecastStatus(dir: string = modelDir()): ForecastStatus {
  try {
    const models = LstmModels.open(dir, { maxBatch: 1 });
    try {
      for (const { entry, predictor } of models.entries) {
        const f = predictor.predict(Array(entry.windowSamples).fill(1e6), entry.horizonSteps);
        if (!(Number.isFinite(f) && f > 0)) {
          throw new ForecasterError("model-invalid", `${entry.file} forecasts ${f} for a steady 1 MB/s link`);
        }
      }
      return {
        model: "loaded",
        models: models.entries.map(({ entry: { file, binMs, horizonSteps, windowSamples } }) => ({
          file,
          binMs,
          horizonSteps,
          windowSamples,
        })),
      };
    } finally {
      models.close();
    }
  } catch (err) {
    if (!(err instanceof ForecasterError)) throw err;
    const names = baselinePredictors().map((p) => p.name);
    return {
      model: "unavailable",
      reason: err.message,
      fallback: `baselines only: the online choice scores ${names.join(", ")} per peer and starts with ${
        names[0]
      }`,
    };
  }
}
