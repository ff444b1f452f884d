/**
 * Starts and stops QEMU guests from VM specs. Each VM gets runDir/<name>/ with its QMP and serial
 * sockets; QEMU's own output goes to a bounded capture, its exit is watched (a VM that exits on its
 * own is marked stopped), and its state follows QEMU's run state through QMP events. The manager adopts
 * nothing: a QEMU it did not start is not its business, and a stale run directory is cleared.
 */
import { join, resolve } from "node:path";
import type { Logger } from "../obs/log.ts";
import { silentLogger } from "../obs/log.ts";
import { QmpClient } from "../migration/qmp.ts";
import { type AcceleratorChoice, resolveAccelerator, type ResolveOptions } from "./accelerator.ts";
import { OutputCapture } from "./output_capture.ts";
import { type Accelerator, qemuArgs } from "./qemu_args.ts";
import { parseVmSpec, type VmSpec, type VmSpecInput } from "./spec.ts";
import { processUsing } from "./stale.ts";

export type VmState =
  | "starting"
  /** vCPUs run. */
  | "running"
  /** vCPUs stopped (by `stop`, an error, or the switchover of a migration). */
  | "paused"
  /** Started with -incoming and waiting for (or receiving) a migration. */
  | "incoming"
  /**
   * The source after a completed outgoing migration: paused for good, the guest lives elsewhere. Seen
   * through the MIGRATION event (enable the "events" migration capability) or `refresh`.
   */
  | "migrated"
  | "stopping"
  | "stopped";

export interface VmInfo {
  name: string;
  spec: VmSpec;
  /** QEMU's pid once spawned. */
  pid?: number;
  state: VmState;
  /** QEMU's run state as last reported by query-status ("running", "inmigrate", "postmigrate", ...). */
  qemuStatus?: string;
  accelerator?: Accelerator;
  acceleratorReason?: string;
  runDir: string;
  qmpSocket: string;
  serialSocket: string;
  /** The QMP monitor through which sockets are handed to QEMU (src/vm/qemu_args.ts). */
  fdMonitorSocket: string;
  /** ISO time the start was asked for. */
  startedAt: string;
  stoppedAt?: string;
  /** How QEMU ended, once it has. */
  exit?: { code: number; signal: string | null };
}

export type VmErrorCode = "vm_exists" | "vm_not_found" | "vm_not_running" | "vm_start_failed";

export class VmError extends Error {
  override name = "VmError";
  constructor(readonly code: VmErrorCode, message: string, readonly details?: Record<string, unknown>) {
    super(message);
  }
}

export interface VmManagerOptions {
  /** Parent of the per-VM directories holding the sockets. Unix socket paths are limited to 107 bytes. */
  runDir: string;
  qemuBinary?: string;
  log?: Logger;
  /** How long QEMU gets to open its QMP socket and answer. Default 10 s. */
  startTimeoutMs?: number;
  /** How long QEMU gets to exit after `quit` before it is killed. Default 10 s. */
  stopTimeoutMs?: number;
  /** VMs not stopped at once. Default 64. */
  maxVms?: number;
  /** Passed to resolveAccelerator (probe runner, time limit, cache). */
  accelerator?: Omit<ResolveOptions, "qemuBinary" | "log">;
}

export interface StopOptions {
  /**
   * true: ask the guest to power off (ACPI) and wait up to timeoutMs before quitting QEMU. false
   * (default): quit QEMU at once; the guest does not get to shut down, but QEMU flushes its disks.
   */
  graceful?: boolean;
  /** Bound on the graceful wait. Default 30 s. */
  timeoutMs?: number;
}

/** Unix socket paths (sun_path) hold 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;
/** Stopped VMs still listed (state "stopped") after exiting on their own. */
const MAX_STOPPED_KEPT = 64;
/** Lines of QEMU output put in an error message (all of the bounded capture goes in details). */
const MESSAGE_TAIL_CHARS = 2000;
/** After a QMP failure during start, how long QEMU gets to exit so its own message can be reported. */
const EXIT_GRACE_MS = 5000;
/** QMP events after which the VM's run state is read again. */
const STATE_EVENTS = new Set(["STOP", "RESUME", "MIGRATION", "SUSPEND", "WAKEUP", "GUEST_PANICKED"]);

interface VmRecord {
  info: VmInfo;
  output: OutputCapture;
  child?: Deno.ChildProcess;
  qmp?: QmpClient;
  /** Settles with the exit status once QEMU has exited and its output is drained. */
  exited?: Promise<Deno.CommandStatus>;
  /** Settles when start() has finished, either way. */
  started: Promise<void>;
  stopping?: Promise<VmInfo>;
  refreshing?: Promise<void>;
  refreshAgain: boolean;
  /** Started with -incoming (a migration destination). */
  incoming: boolean;
  /** The status of the last MIGRATION event (needs the "events" migration capability). */
  migrationStatus?: string;
}

function stateFor(qemuStatus: string, record: VmRecord): VmState {
  // QEMU reports an outgoing migration complete while still in finish-migrate and moves to
  // postmigrate a moment later without an event: the completed MIGRATION event settles it.
  if (qemuStatus === "finish-migrate" && !record.incoming && record.migrationStatus === "completed") {
    return "migrated";
  }
  switch (qemuStatus) {
    case "running":
      return "running";
    case "inmigrate":
      return "incoming";
    case "postmigrate":
      return "migrated";
    case "shutdown":
      return "stopping";
    default:
      // paused, prelaunch, finish-migrate, suspended, io-error, guest-panicked, internal-error, ...
      return "paused";
  }
}

function lastChars(text: string, n: number): string {
  const t = text.trim();
  return t.length > n ? "..." + t.slice(t.length - n) : t;
}

async function waitOrTimeout<T>(p: Promise<T>, timeoutMs: number): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<undefined>((r) => timer = setTimeout(() => r(undefined), timeoutMs));
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export class VmManager {
  readonly runDir: string;
  readonly qemuBinary: string;
  readonly #log: Logger;
  readonly #startTimeoutMs: number;
  readonly #stopTimeoutMs: number;
  readonly #maxVms: number;
  readonly #accelOpts: Omit<ResolveOptions, "qemuBinary" | "log">;
  readonly #vms = new Map<string, VmRecord>();
  #closing = false;

  constructor(opts: VmManagerOptions) {
    this.runDir = resolve(opts.runDir);
    this.qemuBinary = opts.qemuBinary ?? "qemu-system-x86_64";
    this.#log = opts.log ?? silentLogger;
    this.#startTimeoutMs = opts.startTimeoutMs ?? 10_000;
    this.#stopTimeoutMs = opts.stopTimeoutMs ?? 10_000;
    this.#maxVms = opts.maxVms ?? 64;
    this.#accelOpts = opts.accelerator ?? {};
  }

  /**
   * Validates the spec, resolves the accelerator, spawns QEMU and connects to its QMP socket. A normal
   * start must reach QEMU's "running" state; an incoming one ("-incoming defer") waits in "inmigrate"
   * for migrate-incoming. Throws VmSpecError for a bad spec, VmError vm_exists or vm_start_failed.
   */
  async start(input: VmSpecInput, opts: { incoming?: boolean } = {}): Promise<VmInfo> {
    const spec = parseVmSpec(input);
    const existing = this.#vms.get(spec.name);
    if (existing && existing.info.state !== "stopped") {
      throw new VmError(
        "vm_exists",
        `a VM named "${spec.name}" already exists (state ${existing.info.state}` +
          `${existing.info.pid ? `, pid ${existing.info.pid}` : ""}); stop it first or choose another name`,
        { name: spec.name, state: existing.info.state },
      );
    }
    if (this.#closing) {
      throw new VmError("vm_start_failed", `cannot start VM "${spec.name}": the VM manager is shutting down`);
    }
    const active = [...this.#vms.values()].filter((r) => r.info.state !== "stopped").length;
    if (active >= this.#maxVms) {
      throw new VmError(
        "vm_start_failed",
        `cannot start VM "${spec.name}": ${active} VMs are already running, the limit (maxVms) is ` +
          `${this.#maxVms}; stop one first`,
      );
    }
    const dir = join(this.runDir, spec.name);
    const orphan = await processUsing(join(dir, "qmp.sock"));
    if (orphan !== undefined) {
      throw new VmError(
        "vm_exists",
        `a process from an earlier run of this agent (pid ${orphan}, probably its QEMU) still serves VM ` +
          `"${spec.name}" in ${dir}; stop it (kill ${orphan}) or choose another name`,
        { name: spec.name, pid: orphan },
      );
    }
    if (existing) this.#vms.delete(spec.name);

    const record: VmRecord = {
      info: {
        name: spec.name,
        spec,
        state: "starting",
        runDir: dir,
        qmpSocket: join(dir, "qmp.sock"),
        serialSocket: join(dir, "serial.sock"),
        fdMonitorSocket: join(dir, "fd-qmp.sock"),
        startedAt: new Date().toISOString(),
      },
      output: new OutputCapture(),
      started: Promise.resolve(),
      refreshAgain: false,
      incoming: !!opts.incoming,
    };
    this.#vms.set(spec.name, record);
    const run = this.#start(record, !!opts.incoming);
    record.started = run.then(() => {}, () => {});
    return await run;
  }

  async #start(record: VmRecord, incoming: boolean): Promise<VmInfo> {
    const { info } = record;
    const spec = info.spec;
    const abort = new AbortController();
    try {
      await this.#checkFiles(spec);
      for (const p of [info.qmpSocket, info.serialSocket, info.fdMonitorSocket]) {
        if (new TextEncoder().encode(p).length > MAX_SOCKET_PATH_BYTES) {
          throw this.#startError(
            spec.name,
            `socket path ${p} is longer than the ${MAX_SOCKET_PATH_BYTES} bytes a unix socket path may ` +
              `have; configure a shorter runDir`,
          );
        }
      }

      let choice: AcceleratorChoice;
      try {
        choice = await resolveAccelerator(spec.accelerator, spec.kernel, {
          ...this.#accelOpts,
          qemuBinary: this.qemuBinary,
          log: this.#log,
        });
      } catch (err) {
        throw this.#startError(spec.name, `choosing an accelerator failed: ${(err as Error).message}`);
      }
      info.accelerator = choice.accelerator;
      info.acceleratorReason = choice.reason;

      // A directory left by an earlier run (an agent that died) holds only dead sockets.
      await Deno.remove(info.runDir, { recursive: true }).catch(() => {});
      await Deno.mkdir(info.runDir, { recursive: true, mode: 0o700 });

      const args = qemuArgs(spec, choice.accelerator, info, { incoming });
      let child: Deno.ChildProcess;
      try {
        child = new Deno.Command(this.qemuBinary, {
          args,
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).spawn();
      } catch (err) {
        throw this.#startError(
          spec.name,
          `cannot run the QEMU binary "${this.qemuBinary}": ${(err as Error).message}; install ` +
            `qemu-system-x86 or set qemuBinary`,
        );
      }
      record.child = child;
      info.pid = child.pid;
      const drained = Promise.all([record.output.drain(child.stdout), record.output.drain(child.stderr)]);
      record.exited = child.status.then(async (s) => {
        await drained;
        return s;
      });
      record.exited.then((s) => this.#onExit(record, s));
      this.#log("vm spawned", { name: spec.name, pid: child.pid, accelerator: choice.accelerator, args });

      const exitedEarly = record.exited.then((s) => {
        throw this.#startError(
          spec.name,
          `QEMU exited with code ${s.code}${s.signal ? ` (${s.signal})` : ""} during start: ` +
            lastChars(record.output.text(), MESSAGE_TAIL_CHARS),
          { exitCode: s.code, output: record.output.text(), args },
        );
      });
      exitedEarly.catch(() => {});
      const connecting = QmpClient.connect(info.qmpSocket, {
        timeoutMs: this.#startTimeoutMs,
        log: this.#log,
        signal: abort.signal,
      });
      connecting.catch(() => {});
      // A QMP failure while QEMU is exiting is explained best by QEMU's exit and output.
      const preferExit = async (err: unknown, what: string): Promise<never> => {
        if (err instanceof VmError) throw err;
        await waitOrTimeout(exitedEarly, EXIT_GRACE_MS);
        throw this.#startError(
          spec.name,
          `${what}: ${(err as Error).message}; QEMU output: ${this.#tail(record)}`,
          { args },
        );
      };
      let qmp: QmpClient;
      try {
        qmp = await Promise.race([connecting, exitedEarly]);
      } catch (err) {
        return await preferExit(err, "connecting to QMP failed");
      }
      record.qmp = qmp;
      qmp.on("*", (ev) => {
        if (ev.event === "MIGRATION" && typeof ev.data?.status === "string") {
          record.migrationStatus = ev.data.status;
        }
        if (STATE_EVENTS.has(ev.event)) this.#scheduleRefresh(record);
      });

      let status: string;
      try {
        status = (await Promise.race([qmp.queryStatus(), exitedEarly])).status;
      } catch (err) {
        return await preferExit(err, "query-status failed");
      }
      const expected = incoming ? "inmigrate" : "running";
      if (status !== expected) {
        throw this.#startError(
          spec.name,
          `QEMU reports run state "${status}" after start, expected "${expected}"; QEMU output: ` +
            this.#tail(record),
        );
      }
      info.qemuStatus = status;
      info.state = stateFor(status, record);
      // Events that arrived while starting were not acted on; read the state once more.
      if (record.refreshAgain) this.#scheduleRefresh(record);
      this.#log("vm started", {
        name: spec.name,
        pid: info.pid,
        state: info.state,
        accelerator: info.accelerator,
        acceleratorReason: info.acceleratorReason,
        incoming,
      });
      return this.#snapshot(record);
    } catch (err) {
      abort.abort(new Error("start failed"));
      await this.#discard(record);
      this.#log("vm start failed", { name: spec.name, error: (err as Error).message });
      throw err;
    }
  }

  async #checkFiles(spec: VmSpec): Promise<void> {
    const files: [string, string][] = [["kernel", spec.kernel]];
    if (spec.initrd !== undefined) files.push(["initrd", spec.initrd]);
    spec.disks.forEach((d, i) => files.push([`disks.${i}.path`, d.path]));
    for (const [field, path] of files) {
      let st: Deno.FileInfo;
      try {
        st = await Deno.stat(path);
      } catch (err) {
        throw this.#startError(spec.name, `${field} "${path}" cannot be read: ${(err as Error).message}`, {
          field,
          path,
        });
      }
      if (!st.isFile && !(field.startsWith("disks.") && st.isBlockDevice)) {
        throw this.#startError(spec.name, `${field} "${path}" is not a regular file`, { field, path });
      }
    }
  }

  #startError(name: string, why: string, details?: Record<string, unknown>): VmError {
    return new VmError("vm_start_failed", `VM "${name}" failed to start: ${why}`, { name, ...details });
  }

  #tail(record: VmRecord): string {
    return lastChars(record.output.text(), MESSAGE_TAIL_CHARS) || "(none)";
  }

  /** Kills what a failed start left, removes its directory and forgets it. */
  async #discard(record: VmRecord): Promise<void> {
    record.qmp?.close();
    if (record.child && record.exited) {
      try {
        record.child.kill("SIGKILL");
      } catch { /* already exited */ }
      await record.exited;
    }
    record.info.state = "stopped";
    if (this.#vms.get(record.info.name) === record) this.#vms.delete(record.info.name);
    await Deno.remove(record.info.runDir, { recursive: true }).catch(() => {});
  }

  #onExit(record: VmRecord, status: Deno.CommandStatus): void {
    const { info } = record;
    info.exit = { code: status.code, signal: status.signal ?? null };
    info.stoppedAt = new Date().toISOString();
    // stop() and a failed start clean up after themselves; anything else is QEMU ending on its own.
    const unexpected = !record.stopping && info.state !== "starting";
    info.state = "stopped";
    record.qmp?.close();
    if (!unexpected) return;
    this.#log("vm exited on its own", {
      name: info.name,
      pid: info.pid,
      exitCode: status.code,
      signal: status.signal,
      output: lastChars(record.output.text(), MESSAGE_TAIL_CHARS),
    });
    Deno.remove(info.runDir, { recursive: true }).catch(() => {});
    this.#pruneStopped();
  }

  #pruneStopped(): void {
    const stopped = [...this.#vms.values()].filter((r) => r.info.state === "stopped" && !r.stopping);
    for (const r of stopped.slice(0, Math.max(0, stopped.length - MAX_STOPPED_KEPT))) {
      this.#vms.delete(r.info.name);
    }
  }

  /** Re-reads QEMU's run state after an event; one query at a time, repeated if events kept coming. */
  #scheduleRefresh(record: VmRecord): void {
    record.refreshAgain = true;
    if (record.refreshing || record.info.state === "starting") return;
    record.refreshing = (async () => {
      while (record.refreshAgain) {
        record.refreshAgain = false;
        await this.#refreshOnce(record);
      }
    })().finally(() => record.refreshing = undefined);
  }

  async #refreshOnce(record: VmRecord): Promise<void> {
    const { info, qmp } = record;
    if (!qmp || qmp.isClosed || info.state === "stopping" || info.state === "stopped") return;
    try {
      const { status } = await qmp.queryStatus();
      // The VM may have been stopped while the query was out.
      if (record.stopping || qmp.isClosed) return;
      const state = stateFor(status, record);
      if (state !== info.state) {
        this.#log("vm state", { name: info.name, from: info.state, to: state, status });
      }
      info.qemuStatus = status;
      info.state = state;
    } catch (err) {
      if (!qmp.isClosed) {
        this.#log("vm state query failed", { name: info.name, error: (err as Error).message });
      }
    }
  }

  #snapshot(record: VmRecord): VmInfo {
    const info = record.info;
    return { ...info, spec: structuredClone(info.spec), exit: info.exit ? { ...info.exit } : undefined };
  }

  #find(name: string): VmRecord {
    const r = this.#vms.get(name);
    if (!r) {
      throw new VmError(
        "vm_not_found",
        `no VM named "${name}" (known: ${[...this.#vms.keys()].join(", ") || "none"})`,
        { name },
      );
    }
    return r;
  }

  /** The VM's current info; VmError vm_not_found. */
  get(name: string): VmInfo {
    return this.#snapshot(this.#find(name));
  }

  /** Every VM known, including recently stopped ones (oldest first). */
  list(): VmInfo[] {
    return [...this.#vms.values()].map((r) => this.#snapshot(r));
  }

  /** Reads the run state from QEMU now, rather than waiting for the next event. */
  async refresh(name: string): Promise<VmInfo> {
    const r = this.#find(name);
    await this.#refreshOnce(r);
    return this.#snapshot(r);
  }

  /** The VM's connected QMP client (for the migration orchestrator); vm_not_found, vm_not_running. */
  qmp(name: string): QmpClient {
    const r = this.#find(name);
    const s = r.info.state;
    if (!r.qmp || r.qmp.isClosed || s === "starting" || s === "stopping" || s === "stopped") {
      throw new VmError(
        "vm_not_running",
        `VM "${name}" has no QMP connection in state ${s}; wait for start to finish or start it again`,
        { name, state: s },
      );
    }
    return r.qmp;
  }

  /**
   * Stops the VM (see StopOptions), waits for QEMU to exit, kills it if it does not within
   * stopTimeoutMs, removes its run directory and forgets it. Returns its final info.
   */
  async stop(name: string, opts: StopOptions = {}): Promise<VmInfo> {
    let record = this.#find(name);
    if (record.info.state === "starting") {
      await record.started;
      record = this.#find(name);
    }
    record.stopping ??= this.#stop(record, opts);
    return await record.stopping;
  }

  async #stop(record: VmRecord, opts: StopOptions): Promise<VmInfo> {
    const { info } = record;
    if (info.state !== "stopped" && record.child && record.exited) {
      info.state = "stopping";
      const qmp = record.qmp;
      let exited = false;
      if (opts.graceful && qmp && !qmp.isClosed) {
        const timeoutMs = opts.timeoutMs ?? 30_000;
        try {
          await qmp.execute("system_powerdown");
          exited = (await waitOrTimeout(record.exited, timeoutMs)) !== undefined;
          if (!exited) this.#log("vm ignored powerdown", { name: info.name, timeoutMs });
        } catch (err) {
          this.#log("vm powerdown failed", { name: info.name, error: (err as Error).message });
        }
      }
      if (!exited && qmp && !qmp.isClosed) {
        try {
          await qmp.quit({ timeoutMs: this.#stopTimeoutMs });
        } catch (err) {
          this.#log("vm quit failed", { name: info.name, error: (err as Error).message });
        }
      }
      if (!exited) exited = (await waitOrTimeout(record.exited, this.#stopTimeoutMs)) !== undefined;
      if (!exited) {
        this.#log("vm did not exit; killing it", { name: info.name, pid: info.pid });
        try {
          record.child.kill("SIGKILL");
        } catch { /* exited meanwhile */ }
        await record.exited;
      }
    }
    if (record.exited) await record.exited;
    record.qmp?.close();
    info.state = "stopped";
    await Deno.remove(info.runDir, { recursive: true }).catch(() => {});
    if (this.#vms.get(info.name) === record) this.#vms.delete(info.name);
    this.#log("vm stopped", { name: info.name, pid: info.pid, exit: info.exit });
    return this.#snapshot(record);
  }

  /** For agent shutdown: refuses new starts and stops every VM. Resolves when all have exited. */
  async stopAll(opts: StopOptions = {}): Promise<void> {
    this.#closing = true;
    const results = await Promise.allSettled([...this.#vms.keys()].map((n) => this.stop(n, opts)));
    for (const r of results) {
      if (r.status === "rejected" && !(r.reason instanceof VmError && r.reason.code === "vm_not_found")) {
        this.#log("vm stop failed", { error: (r.reason as Error).message });
      }
    }
  }
}
