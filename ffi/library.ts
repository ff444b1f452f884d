/** Loads libdwcp once, from DWCP_SHIM_PATH, beside a compiled binary, or from the checkout's c-shim/. */
import { fileURLToPath } from "node:url";
import { type Shim, symbols } from "./symbols.ts";

/** The ABI this binding was written for; c-shim/dwcp.c dwcp_abi_version must match. */
const ABI_VERSION = 3;

export class ShimError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
    this.name = "ShimError";
  }
}

let shim: Shim | undefined;

/** The path libdwcp is loaded from: the override, else c-shim/libdwcp.so next to this module's tree. */
export function shimPath(): string {
  // In a `deno compile` binary built with `--include c-shim/libdwcp.so`, import.meta.url points into the
  // embedded tree and Deno extracts the included library before dlopen, so the same URL works there.
  return Deno.env.get("DWCP_SHIM_PATH") ?? fileURLToPath(new URL("../c-shim/libdwcp.so", import.meta.url));
}

export function native(): Shim {
  if (shim) return shim;
  const path = shimPath();
  let lib: Deno.DynamicLibrary<typeof symbols>;
  try {
    lib = Deno.dlopen(path, symbols);
  } catch (err) {
    throw new ShimError(
      -5,
      `cannot load the dwcp C shim from ${path}: ${(err as Error).message}. ` +
        `Build it with \`bash scripts/setup.sh\` (or \`make -C c-shim\`), or point DWCP_SHIM_PATH at libdwcp.so.`,
    );
  }
  const abi = lib.symbols.dwcp_abi_version();
  if (abi !== ABI_VERSION) {
    lib.close();
    throw new ShimError(
      -1,
      `${path} has ABI version ${abi}, this build needs ${ABI_VERSION}; rebuild c-shim`,
    );
  }
  shim = lib.symbols;
  return shim;
}

const errorBuf = new Uint8Array(512);
const utf8 = new TextDecoder();

/** Turns a negative status into a ShimError carrying the shim's message; passes others through. */
export function check(status: number, what: string): number {
  if (status >= 0) return status;
  const n = native().dwcp_last_error(errorBuf, errorBuf.length);
  throw new ShimError(status, `${what}: ${utf8.decode(errorBuf.subarray(0, n))}`);
}

/** Calls a shim function that writes text into a caller buffer and returns its length. */
export function readText(call: (out: Uint8Array, cap: number) => number, what: string, cap = 4096): string {
  const out = new Uint8Array(cap);
  const n = check(call(out, cap), what);
  return utf8.decode(out.subarray(0, n));
}
