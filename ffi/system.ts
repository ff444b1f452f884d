/** What the native side offers this host: library versions, RDMA devices, ONNX Runtime. */
import { fileURLToPath } from "node:url";
import { native, readText, ShimError } from "./library.ts";

export interface RdmaPort {
  port: number;
  linkLayer: "InfiniBand" | "Ethernet" | "unspecified";
  state: string;
  activeMtu: number;
}

export interface RdmaDevice {
  name: string;
  maxMrSize: number;
  ports: RdmaPort[];
}

export function libraryVersions(): { zstd: string; lz4: string; xxhash: string } {
  return JSON.parse(readText((o, c) => native().dwcp_lib_versions(o, c), "library versions"));
}

/** RDMA devices libibverbs can open; an empty list on hosts without any (the TCP path is used then). */
export function rdmaDevices(): RdmaDevice[] {
  return JSON.parse(readText((o, c) => native().dwcp_rdma_devices(o, c), "listing RDMA devices", 65536));
}

/** Where ONNX Runtime is looked for: DWCP_ORT_PATH, else the copy scripts/setup.sh unpacks. */
export function ortPath(): string {
  return Deno.env.get("DWCP_ORT_PATH") ??
    fileURLToPath(new URL("../.tools/onnxruntime/lib/libonnxruntime.so.1", import.meta.url));
}

export type OrtStatus = { available: true; version: string; path: string } | {
  available: false;
  reason: string;
  path: string;
};

/** Where ONNX Runtime was loaded from; the shim loads it once per process and keeps that copy. */
let ortLoadedFrom: string | undefined;

/**
 * Loads ONNX Runtime on first use; a missing runtime is reported, not thrown. Once loaded, later calls
 * report the copy in use (its path), whatever path they ask for.
 */
export function onnxRuntime(path: string = ortPath()): OrtStatus {
  try {
    const status = native().dwcp_ort_load(new TextEncoder().encode(path + "\0"));
    if (status < 0) readText(() => status, "loading ONNX Runtime");
    ortLoadedFrom ??= path;
    const version = readText((o, c) => native().dwcp_ort_version(o, c), "ORT version");
    return { available: true, version, path: ortLoadedFrom };
  } catch (err) {
    if (err instanceof ShimError) return { available: false, reason: err.message, path };
    throw err;
  }
}
