/** ffi/system.ts and the shim loader: versions, RDMA enumeration, ONNX Runtime, a missing shim. */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { libraryVersions, onnxRuntime, ortPath, rdmaDevices } from "../../ffi/system.ts";

const moduleUrl = (path: string) => new URL(`../../ffi/${path}`, import.meta.url).href;

/** Runs code in a fresh `deno eval` (so process-wide shim state starts clean) and parses what it prints. */
async function evalJson(code: string, env: Record<string, string> = {}): Promise<unknown> {
  const { success, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--quiet", code],
    env,
  }).output();
  const text = new TextDecoder();
  assert.ok(success, `deno eval failed: ${text.decode(stderr)}`);
  return JSON.parse(text.decode(stdout));
}

Deno.test("libraryVersions names zstd, lz4 and xxhash versions", () => {
  const v = libraryVersions();
  assert.match(v.zstd, /^1\.\d+\.\d+$/);
  assert.match(v.lz4, /^1\.\d+\.\d+$/);
  assert.match(v.xxhash, /^\d+\.\d+\.\d+$/);
  const [major, minor] = v.xxhash.split(".").map(Number);
  assert.ok(major > 0 || minor >= 8, `xxhash ${v.xxhash} has XXH3 (0.8.0 or later)`);
});

Deno.test("rdmaDevices returns a list whose entries describe their ports", () => {
  const devices = rdmaDevices();
  assert.ok(Array.isArray(devices));
  for (const d of devices) {
    assert.equal(typeof d.name, "string");
    assert.ok(d.name.length > 0);
    assert.ok(Array.isArray(d.ports));
    for (const p of d.ports) {
      assert.ok(p.port >= 1);
      assert.ok(["InfiniBand", "Ethernet", "unspecified"].includes(p.linkLayer));
    }
  }
});

const sysfsRdma = "/sys/class/infiniband";
const hostHasRdma = existsSync(sysfsRdma) && [...Deno.readDirSync(sysfsRdma)].length > 0;

Deno.test({
  name: "rdmaDevices is empty on a host without RDMA devices",
  ignore: hostHasRdma,
  fn() {
    assert.deepEqual(rdmaDevices(), []);
  },
});

Deno.test({
  name: "onnxRuntime loads the runtime scripts/setup.sh unpacks (1.30.0)",
  ignore: !existsSync(ortPath()),
  fn() {
    const ort = onnxRuntime();
    assert.deepEqual(ort, { available: true, version: "1.30.0", path: ortPath() });
    // The runtime loads once per process; asking again reports the copy in use.
    assert.deepEqual(onnxRuntime("/nonexistent/libonnxruntime.so.1"), ort);
  },
});

Deno.test("onnxRuntime reports a missing runtime as unavailable, naming the path", async () => {
  const path = "/nonexistent/libonnxruntime.so.1";
  const status = await evalJson(
    `import { onnxRuntime } from "${moduleUrl("system.ts")}";
     console.log(JSON.stringify(onnxRuntime(${JSON.stringify(path)})));`,
  ) as { available: boolean; reason: string; path: string };
  assert.equal(status.available, false);
  assert.equal(status.path, path);
  assert.match(status.reason, /cannot load ONNX Runtime from \/nonexistent\/libonnxruntime\.so\.1/);
});

Deno.test("a shim missing at DWCP_SHIM_PATH fails with the path and how to build it", async () => {
  const path = "/nonexistent/dir/libdwcp.so";
  const failure = await evalJson(
    `import { native } from "${moduleUrl("library.ts")}";
     try { native(); console.log("null"); }
     catch (e) { console.log(JSON.stringify({ name: e.name, status: e.status, message: e.message })); }`,
    { DWCP_SHIM_PATH: path },
  ) as { name: string; status: number; message: string };
  assert.equal(failure.name, "ShimError");
  assert.equal(failure.status, -5);
  assert.ok(failure.message.includes(`cannot load the dwcp C shim from ${path}`), failure.message);
  assert.match(failure.message, /make -C c-shim/);
  assert.match(failure.message, /scripts\/setup\.sh/);
  assert.match(failure.message, /DWCP_SHIM_PATH/);
});
