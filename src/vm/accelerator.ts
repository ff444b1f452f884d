/**
 * Choosing KVM or TCG. On these hosts /dev/kvm can exist while KVM guests hang once the kernel starts,
 * so "auto" does not trust the device: it boots the VM's own kernel under KVM, with no root disk and
 * panic=-1 -no-reboot, and takes KVM only if the kernel printed its banner and reached the expected
 * "Kernel panic" within a bound. Anything else means TCG, with the reason kept for the API and logs.
 * Results are cached per process, per QEMU binary and kernel.
 */
import type { Logger } from "../obs/log.ts";
import { silentLogger } from "../obs/log.ts";
import { OutputCapture } from "./output_capture.ts";
import { type Accelerator, BASE_ARGS, machineArgs } from "./qemu_args.ts";
import type { RequestedAccelerator } from "./spec.ts";

export interface AcceleratorChoice {
  accelerator: Accelerator;
  reason: string;
}

export interface ProbeRequest {
  qemuBinary: string;
  args: string[];
  timeoutMs: number;
}

/** What one probe run saw. */
export interface ProbeOutcome {
  /** Serial console and QEMU's own messages together (bounded: head and tail). */
  output: string;
  /** Exit code, or null when it was killed at the time limit. */
  exitCode: number | null;
  timedOut: boolean;
  elapsedMs: number;
  /** Set when QEMU could not be started at all. */
  spawnError?: string;
}

export type ProbeRunner = (req: ProbeRequest) => Promise<ProbeOutcome>;

export const PROBE_DEFAULTS = {
  timeoutMs: 20_000,
  memoryMiB: 256,
  /** Distinct (QEMU binary, kernel) results kept. */
  cacheEntries: 32,
} as const;

/** What a booting Linux kernel prints first, and what it prints when it finds no root file system. */
export const BANNER_MARKER = "Linux version";
export const PANIC_MARKER = "Kernel panic";

export function probeArgs(kernel: string, memoryMiB: number = PROBE_DEFAULTS.memoryMiB): string[] {
  return [
    ...machineArgs("kvm"),
    "-m",
    `${memoryMiB}M`,
    "-smp",
    "1",
    ...BASE_ARGS,
    "-serial",
    "stdio",
    "-kernel",
    kernel,
    "-append",
    "console=ttyS0 panic=-1",
    "-no-reboot",
  ];
}

function firstLines(text: string, n: number): string {
  return text.split("\n").map((l) => l.trim()).filter((l) => l !== "").slice(0, n).join(" | ");
}

/** The decision from one probe run. Pure. */
export function judgeProbe(o: ProbeOutcome, timeoutMs: number): AcceleratorChoice {
  const took = `${Math.round(o.elapsedMs)} ms`;
  if (o.spawnError !== undefined) {
    return { accelerator: "tcg", reason: `KVM probe could not start QEMU (${o.spawnError}); using TCG` };
  }
  const banner = o.output.includes(BANNER_MARKER);
  const panic = o.output.includes(PANIC_MARKER);
  if (banner && panic) {
    return {
      accelerator: "kvm",
      reason: `KVM probe booted the kernel to its expected root-mount panic in ${took}; using KVM`,
    };
  }
  if (!banner) {
    const said = firstLines(o.output, 2);
    if (o.timedOut) {
      return {
        accelerator: "tcg",
        reason: `KVM probe guest printed no kernel banner within ${timeoutMs} ms (KVM guests hang on ` +
          `this host)${said ? `; QEMU said: ${said}` : ""}; using TCG`,
      };
    }
    return {
      accelerator: "tcg",
      reason: `KVM probe QEMU exited with code ${o.exitCode} after ${took} before the kernel started` +
        `${said ? `: ${said}` : ""}; using TCG`,
    };
  }
  if (o.timedOut) {
    return {
      accelerator: "tcg",
      reason: `KVM probe kernel started but did not reach the end of its boot within ${timeoutMs} ms ` +
        `(KVM guests hang after the kernel starts on this host); using TCG`,
    };
  }
  return {
    accelerator: "tcg",
    reason: `KVM probe kernel started but QEMU exited with code ${o.exitCode} after ${took} without ` +
      `the expected panic; using TCG`,
  };
}

/** Runs QEMU, collects its output, and kills it at the time limit. */
export const runProbe: ProbeRunner = async ({ qemuBinary, args, timeoutMs }) => {
  const started = performance.now();
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(qemuBinary, { args, stdin: "null", stdout: "piped", stderr: "piped" })
      .spawn();
  } catch (err) {
    return { output: "", exitCode: null, timedOut: false, elapsedMs: 0, spawnError: (err as Error).message };
  }
  const capture = new OutputCapture(16 * 1024, 16 * 1024);
  const drained = Promise.all([capture.drain(child.stdout), capture.drain(child.stderr)]);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, timeoutMs);
  const status = await child.status;
  clearTimeout(timer);
  await drained;
  return {
    output: capture.text(),
    exitCode: timedOut ? null : status.code,
    timedOut,
    elapsedMs: performance.now() - started,
  };
};

export interface ResolveOptions {
  qemuBinary?: string;
  /** Bound on the probe boot. Default 20 s. */
  timeoutMs?: number;
  runner?: ProbeRunner;
  log?: Logger;
  /** Where results are kept; defaults to one cache per process. */
  cache?: AcceleratorCache;
}

/** Probe results by (QEMU binary, kernel), at most maxEntries, oldest dropped first. */
export class AcceleratorCache {
  readonly #entries = new Map<string, Promise<AcceleratorChoice>>();

  constructor(readonly maxEntries: number = PROBE_DEFAULTS.cacheEntries) {}

  get size(): number {
    return this.#entries.size;
  }

  get(key: string): Promise<AcceleratorChoice> | undefined {
    return this.#entries.get(key);
  }

  set(key: string, value: Promise<AcceleratorChoice>): void {
    this.#entries.delete(key);
    this.#entries.set(key, value);
    while (this.#entries.size > this.maxEntries) this.#entries.delete(this.#entries.keys().next().value!);
  }

  delete(key: string): void {
    this.#entries.delete(key);
  }

  clear(): void {
    this.#entries.clear();
  }
}

const processCache = new AcceleratorCache();

/**
 * The accelerator for a VM: "kvm" and "tcg" are taken as asked; "auto" probes (once per process for a
 * QEMU binary and kernel; concurrent callers share the probe).
 */
export async function resolveAccelerator(
  requested: RequestedAccelerator,
  kernel: string,
  opts: ResolveOptions = {},
): Promise<AcceleratorChoice> {
  if (requested === "kvm") return { accelerator: "kvm", reason: "requested in the VM spec" };
  if (requested === "tcg") return { accelerator: "tcg", reason: "requested in the VM spec" };
  const qemuBinary = opts.qemuBinary ?? "qemu-system-x86_64";
  const timeoutMs = opts.timeoutMs ?? PROBE_DEFAULTS.timeoutMs;
  const runner = opts.runner ?? runProbe;
  const log = opts.log ?? silentLogger;
  const cache = opts.cache ?? processCache;
  const key = `${qemuBinary}\0${kernel}`;
  const cached = cache.get(key);
  if (cached) return await cached;

  const probe = (async () => {
    // A kernel that cannot be read would make KVM look broken and stick in the cache: refuse it here.
    const st = await Deno.stat(kernel).catch((err: Error) => {
      throw new Error(`kernel "${kernel}" cannot be read (${err.message}); give the path of a Linux bzImage`);
    });
    if (!st.isFile) {
      throw new Error(`kernel "${kernel}" is not a regular file; give the path of a Linux bzImage`);
    }
    const args = probeArgs(kernel);
    const outcome = await runner({ qemuBinary, args, timeoutMs });
    const choice = judgeProbe(outcome, timeoutMs);
    log("accelerator probe", {
      kernel,
      qemuBinary,
      timeoutMs,
      elapsedMs: Math.round(outcome.elapsedMs),
      exitCode: outcome.exitCode,
      timedOut: outcome.timedOut,
      sawBanner: outcome.output.includes(BANNER_MARKER),
      sawPanic: outcome.output.includes(PANIC_MARKER),
      accelerator: choice.accelerator,
      reason: choice.reason,
    });
    // A QEMU that could not start says nothing about KVM: do not keep that answer.
    if (outcome.spawnError !== undefined) cache.delete(key);
    return choice;
  })();
  cache.set(key, probe);
  probe.catch(() => cache.delete(key));
  return await probe;
}
