/**
 * A typed forecaster over the shim's ONNX Runtime sessions (c-shim/ort.c): a model with one float32 input
 * [batch, window, features] and one float32 output [batch, outputs], run synchronously (a small model's
 * run takes microseconds, less than a hop to a worker thread would). Buffers for up to maxBatch windows are
 * allocated at open, so a call allocates nothing on the JS side.
 *
 * Failures carry a reason a caller can act on: "runtime-missing" (no shim or no ONNX Runtime) and
 * "model-missing" mean "use the baselines"; "model-invalid" means the file is there but is not a
 * forecaster model (corrupt, or another shape).
 */
import { check, native, ShimError } from "./library.ts";
import { onnxRuntime, ortPath } from "./system.ts";

export type ForecasterFailure = "runtime-missing" | "model-missing" | "model-invalid";

export class ForecasterError extends Error {
  override name = "ForecasterError";
  constructor(readonly reason: ForecasterFailure, message: string) {
    super(message);
  }
}

export interface ForecasterOptions {
  /** ONNX Runtime's threads within one run; 1 suits a small model (more only adds hand-offs). */
  intraOpThreads?: number;
  /** Largest batch one predict() takes: the size of the preallocated output. */
  maxBatch?: number;
  /** Where ONNX Runtime is loaded from, when this process has not loaded it yet. */
  ortPath?: string;
}

export const FORECASTER_DEFAULTS = { intraOpThreads: 1, maxBatch: 64 };
const MAX_BATCH_LIMIT = 1 << 20;

const registry = new FinalizationRegistry<number>((handle) => native().dwcp_ort_session_free(handle));

export class Forecaster {
  readonly windowSamples: number;
  readonly features: number;
  readonly outputs: number;
  readonly maxBatch: number;
  #handle: number;
  readonly #out: Float32Array;
  /** One window, for predictOne. */
  readonly #one: Float32Array;

  private constructor(handle: number, readonly source: string, maxBatch: number) {
    this.#handle = handle;
    const shape = new Int32Array(3);
    check(native().dwcp_ort_session_shape(handle, shape), `reading the shape of ${source}`);
    [this.windowSamples, this.features, this.outputs] = shape;
    this.maxBatch = maxBatch;
    this.#out = new Float32Array(maxBatch * this.outputs);
    this.#one = new Float32Array(this.windowSamples * this.features);
    registry.register(this, handle, this);
  }

  /** Opens a model from a .onnx file path or its bytes. Throws ForecasterError. */
  static open(model: string | Uint8Array, options: ForecasterOptions = {}): Forecaster {
    const { intraOpThreads, maxBatch } = { ...FORECASTER_DEFAULTS, ...options };
    if (!Number.isInteger(intraOpThreads) || intraOpThreads < 1 || intraOpThreads > 256) {
      throw new RangeError(`intraOpThreads = ${intraOpThreads}; give an integer in 1..256`);
    }
    if (!Number.isInteger(maxBatch) || maxBatch < 1 || maxBatch > MAX_BATCH_LIMIT) {
      throw new RangeError(`maxBatch = ${maxBatch}; give an integer in 1..${MAX_BATCH_LIMIT}`);
    }
    const source = typeof model === "string" ? model : `a ${model.length}-byte model`;
    if (typeof model === "string") {
      let problem: string | undefined;
      try {
        if (!Deno.statSync(model).isFile) problem = "is not a file";
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound)) throw err;
        problem = "does not exist";
      }
      if (problem) {
        throw new ForecasterError(
          "model-missing",
          `forecast model ${model} ${problem}; train one with \`deno task train\` or give the path of a .onnx file`,
        );
      }
    }
    const ort = onnxRuntime(options.ortPath ?? ortPath());
    if (!ort.available) {
      throw new ForecasterError(
        "runtime-missing",
        `${ort.reason}. Install it with \`bash scripts/setup.sh\` or point DWCP_ORT_PATH at libonnxruntime.so.1`,
      );
    }
    const status = typeof model === "string"
      ? native().dwcp_ort_session_open_file(new TextEncoder().encode(model + "\0"), intraOpThreads)
      : native().dwcp_ort_session_open_bytes(model, model.length, intraOpThreads);
    let handle: number;
    try {
      handle = check(status, `opening ${source}`);
    } catch (err) {
      if (err instanceof ShimError) throw new ForecasterError("model-invalid", err.message);
      throw err;
    }
    return new Forecaster(handle, source, maxBatch);
  }

  /**
   * Runs batch windows (batch × windowSamples × features floats, row-major) and returns batch × outputs
   * floats. The result is a view of a buffer reused by the next call: copy it to keep it.
   */
  predict(windows: Float32Array, batch: number): Float32Array {
    const handle = this.#live();
    if (!Number.isInteger(batch) || batch < 1 || batch > this.maxBatch) {
      throw new RangeError(`batch = ${batch}; give an integer in 1..${this.maxBatch} (maxBatch at open)`);
    }
    const perRow = this.windowSamples * this.features;
    if (windows.length !== batch * perRow) {
      throw new RangeError(
        `windows holds ${windows.length} floats; batch ${batch} × window ${this.windowSamples} × features ` +
          `${this.features} needs ${batch * perRow}`,
      );
    }
    const n = check(
      native().dwcp_ort_session_run(handle, windows, windows.length, batch, this.#out, this.#out.length),
      `running ${this.source}`,
    );
    return this.#out.subarray(0, n);
  }

  /** First output for one window of windowSamples × features values. */
  predictOne(window: ArrayLike<number>): number {
    if (window.length !== this.#one.length) {
      throw new RangeError(`window holds ${window.length} values; the model takes ${this.#one.length}`);
    }
    this.#one.set(window);
    return this.predict(this.#one, 1)[0];
  }

  close(): void {
    if (this.#handle === 0) return;
    registry.unregister(this);
    check(native().dwcp_ort_session_free(this.#handle), `closing ${this.source}`);
    this.#handle = 0;
  }

  #live(): number {
    if (this.#handle === 0) throw new Error(`forecaster for ${this.source} is closed`);
    return this.#handle;
  }
}
