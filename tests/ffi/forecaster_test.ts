/** ffi/forecaster.ts over c-shim/ort.c: opening, shape checks, batching, and the failures callers fall back on. */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { Forecaster, ForecasterError } from "../../ffi/forecaster.ts";
import { native } from "../../ffi/library.ts";
import { ortPath } from "../../ffi/system.ts";
import { exportLstmOnnx, seededLstmWeights } from "../../src/predict/lstm_onnx.ts";
import { encodeOnnxModel, ONNX_FLOAT } from "../../src/predict/onnx_proto.ts";

const hasOrt = existsSync(ortPath());
const scale = { floorBytesPerSec: 1500, logMean: Math.log(1e6), logStd: 1.5 };

function model(windowSamples = 10, units = 32, seed = 1): Uint8Array {
  return exportLstmOnnx(seededLstmWeights(units, seed), { windowSamples, scale });
}

/** Windows of capacity-like values, log-uniform over 10 kB/s..10 MB/s. */
function windows(count: number, windowSamples: number): Float32Array {
  return Float32Array.from({ length: count * windowSamples }, (_, i) => 10_000 * 1000 ** ((i * 0.618) % 1));
}

async function tempFile(bytes: Uint8Array): Promise<string> {
  const path = await Deno.makeTempFile({ suffix: ".onnx" });
  await Deno.writeFile(path, bytes);
  return path;
}

function openRejects(model: string | Uint8Array, reason: string, message: RegExp): void {
  assert.throws(() => Forecaster.open(model), (err: unknown) => {
    assert.ok(err instanceof ForecasterError, String(err));
    assert.equal(err.reason, reason);
    assert.match(err.message, message);
    return true;
  });
}

Deno.test({
  name: "a model opens from bytes and from a file, reports its shape, and forecasts the same from both",
  ignore: !hasOrt,
  async fn() {
    const bytes = model(10);
    const path = await tempFile(bytes);
    const a = Forecaster.open(bytes);
    const b = Forecaster.open(path, { intraOpThreads: 2 });
    try {
      assert.deepEqual([a.windowSamples, a.features, a.outputs], [10, 1, 1]);
      const x = windows(3, 10);
      const fromBytes = Array.from(a.predict(x, 3));
      assert.deepEqual(Array.from(b.predict(x, 3)), fromBytes);
      for (const y of fromBytes) assert.ok(Number.isFinite(y) && y > 0, `forecast ${y}`);
    } finally {
      a.close();
      b.close();
      await Deno.remove(path);
    }
  },
});

Deno.test({
  name: "batch > 1 gives each row what batch 1 gives it",
  ignore: !hasOrt,
  fn() {
    const f = Forecaster.open(model(10), { maxBatch: 8 });
    try {
      const x = windows(8, 10);
      const batched = Array.from(f.predict(x, 8));
      for (let i = 0; i < 8; i++) {
        assert.equal(f.predictOne(x.subarray(i * 10, (i + 1) * 10)), batched[i], `row ${i}`);
      }
    } finally {
      f.close();
    }
  },
});

Deno.test({
  name: "wrong input shapes are refused, naming what the model needs",
  ignore: !hasOrt,
  fn() {
    const f = Forecaster.open(model(10), { maxBatch: 4 });
    try {
      assert.throws(
        () => f.predict(windows(2, 10), 3),
        /holds 20 floats; batch 3 × window 10 × features 1 needs 30/,
      );
      assert.throws(
        () => f.predict(windows(1, 9), 1),
        /holds 9 floats; batch 1 × window 10 × features 1 needs 10/,
      );
      assert.throws(() => f.predict(windows(5, 10), 5), /batch = 5; give an integer in 1\.\.4/);
      assert.throws(() => f.predict(new Float32Array(0), 0), /batch = 0/);
      assert.throws(() => f.predictOne([1, 2, 3]), /window holds 3 values; the model takes 10/);
    } finally {
      f.close();
    }
  },
});

Deno.test({
  name: "the shim itself checks lengths and handles, whatever the wrapper does",
  ignore: !hasOrt,
  fn() {
    const f = Forecaster.open(model(10));
    const lib = native();
    const out = new Float32Array(4);
    const errorText = () => {
      const buf = new Uint8Array(512);
      return new TextDecoder().decode(buf.subarray(0, lib.dwcp_last_error(buf, buf.length)));
    };
    try {
      // The handle of the first open session in this process is not known here; an unused one is.
      assert.ok(lib.dwcp_ort_session_run(63, windows(1, 10), 10, 1, out, 4) < 0);
      assert.match(errorText(), /forecaster session 63 is not open/);
      assert.ok(lib.dwcp_ort_session_free(0) < 0);
    } finally {
      f.close();
    }
  },
});

Deno.test({
  name: "a missing model file is 'model-missing', with how to make one",
  ignore: !hasOrt,
  fn() {
    openRejects(
      "/nonexistent/pba.onnx",
      "model-missing",
      /\/nonexistent\/pba\.onnx does not exist; .*deno task train/,
    );
    openRejects(Deno.cwd(), "model-missing", /is not a file/);
  },
});

Deno.test({
  name: "a corrupt or empty model is 'model-invalid', with ONNX Runtime's reason",
  ignore: !hasOrt,
  async fn() {
    const corrupt = model(10).slice(0, 200);
    const path = await tempFile(corrupt);
    try {
      openRejects(path, "model-invalid", /loading the model/);
      openRejects(corrupt, "model-invalid", /loading the model/);
      openRejects(new Uint8Array(0), "model-invalid", /0 bytes long/);
    } finally {
      await Deno.remove(path);
    }
  },
});

Deno.test({
  name: "a valid ONNX model of the wrong shape is 'model-invalid', naming the shape it has",
  ignore: !hasOrt,
  fn() {
    // Identity on [batch, 3]: a fine model, but not [batch, window, features] → [batch, outputs].
    const identity = encodeOnnxModel({
      irVersion: 8,
      opsetVersion: 17,
      producerName: "test",
      producerVersion: "1",
      doc: "",
      graphName: "identity",
      nodes: [{ name: "id", op_type: "Identity", input: ["x"], output: ["y"] }],
      initializers: [],
      inputs: [{ name: "x", elemType: ONNX_FLOAT, shape: ["batch", 3] }],
      outputs: [{ name: "y", elemType: ONNX_FLOAT, shape: ["batch", 3] }],
      metadata: {},
    });
    openRejects(identity, "model-invalid", /input is a rank-2 tensor .* expected rank 3 float32/);
  },
});

Deno.test({
  name: "a closed forecaster refuses to run; closing twice is harmless",
  ignore: !hasOrt,
  fn() {
    const f = Forecaster.open(model(10));
    f.close();
    f.close();
    assert.throws(() => f.predictOne(new Float32Array(10)), /is closed/);
  },
});

Deno.test("a missing ONNX Runtime is 'runtime-missing', naming the path and the fix", async () => {
  const url = new URL("../../ffi/forecaster.ts", import.meta.url).href;
  const code = `import { Forecaster } from "${url}";
    try { Forecaster.open(new Uint8Array(8)); console.log("null"); }
    catch (e) { console.log(JSON.stringify({ name: e.name, reason: e.reason, message: e.message })); }`;
  const { success, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--quiet", code],
    env: { DWCP_ORT_PATH: "/nonexistent/libonnxruntime.so.1" },
  }).output();
  assert.ok(success, new TextDecoder().decode(stderr));
  const failure = JSON.parse(new TextDecoder().decode(stdout));
  assert.equal(failure.name, "ForecasterError");
  assert.equal(failure.reason, "runtime-missing");
  assert.match(failure.message, /cannot load ONNX Runtime from \/nonexistent\/libonnxruntime\.so\.1/);
  assert.match(failure.message, /DWCP_ORT_PATH/);
});
