/**
 * Real VM memory for the encoding benchmarks: boots the test guest (tests/support/guest_image.ts) under
 * TCG, waits for its ready line, and saves its RAM with QMP `pmemsave` while the vCPU is stopped, as many
 * times as asked (a later snapshot of the same guest is the "newer version" page deltas are measured on).
 *
 *   const guest = await BenchGuest.boot({ dir, memoryMiB: 1024, fillMib: 512, log });
 *   await guest.snapshot(join(dir, "t0.bin"));   // pauses, saves, resumes
 *   await guest.close();
 *
 * The dump is guest-physical 0..memoryMiB, which on q35 is all RAM below MAX_MEMORY_MIB.
 */
import { join } from "node:path";
import { QmpClient } from "../src/migration/qmp.ts";
import { qemuArgs } from "../src/vm/qemu_args.ts";
import { parseVmSpec } from "../src/vm/spec.ts";
import { guestAppend, guestImage } from "../tests/support/guest_image.ts";
import { HeartbeatMonitor, type ReadyInfo } from "../tests/support/heartbeat.ts";

const MiB = 1024 * 1024;
const QEMU = "qemu-system-x86_64";
/** On q35, RAM up to 2816 MiB sits contiguously from physical address 0; above, part moves past 4 GiB. */
export const MAX_MEMORY_MIB = 2560;

export interface BenchGuestOptions {
  /** A directory for the QMP and serial sockets. */
  dir: string;
  /** Guest RAM. */
  memoryMiB: number;
  /** MiB of real data the guest workload holds in memory. */
  fillMib: number;
  /** MiB per second the workload re-writes across that data (default 0). */
  dirtyMibps?: number;
  /** A distinct name per guest booted at once (sockets are named after it). */
  name?: string;
  log: (msg: string) => void;
}

export class BenchGuest {
  #closed = false;

  private constructor(
    private readonly qemu: Deno.ChildProcess,
    private readonly qmp: QmpClient,
    private readonly monitor: HeartbeatMonitor,
    readonly memoryMiB: number,
    readonly ready: ReadyInfo,
    /** Says what the dump holds, for the benchmark's report. */
    readonly note: string,
  ) {}

  static async boot(opts: BenchGuestOptions): Promise<BenchGuest> {
    if (opts.memoryMiB > MAX_MEMORY_MIB) {
      throw new RangeError(`memoryMiB ${opts.memoryMiB}: at most ${MAX_MEMORY_MIB} (contiguous RAM on q35)`);
    }
    const name = opts.name ?? "bench-guest";
    const image = await guestImage();
    const spec = parseVmSpec({
      name,
      memoryMiB: opts.memoryMiB,
      vcpus: 1,
      kernel: image.kernel,
      initrd: image.initrd,
      cmdline: guestAppend({ memMib: opts.fillMib, dirtyMibps: opts.dirtyMibps }),
      accelerator: "tcg",
    });
    const paths = { qmpSocket: join(opts.dir, `${name}.qmp`), serialSocket: join(opts.dir, `${name}.ser`) };
    let output = "";
    const t0 = performance.now();
    const qemu = new Deno.Command(QEMU, {
      args: qemuArgs(spec, "tcg", paths),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    for (const s of [qemu.stdout, qemu.stderr]) {
      s.pipeThrough(new TextDecoderStream()).pipeTo(
        new WritableStream({ write: (t) => void (output = (output + t).slice(-8_000)) }),
      ).catch(() => {});
    }
    const exited = qemu.status.then((st) => {
      throw new Error(
        `QEMU exited (code ${st.code}, signal ${st.signal}) before the guest was ready:\n${output}`,
      );
    });
    exited.catch(() => {});
    let monitor: HeartbeatMonitor | undefined;
    let qmp: QmpClient | undefined;
    try {
      monitor = await Promise.race([HeartbeatMonitor.connect(paths.serialSocket), exited]);
      opts.log(
        `${name}: booting under TCG with ${opts.memoryMiB} MiB, filling ${opts.fillMib} MiB ` +
          `(tens of seconds and more under TCG)`,
      );
      const progress = setInterval(
        () => opts.log(`  still booting/filling: ${((performance.now() - t0) / 1000).toFixed(0)} s`),
        10_000,
      );
      let ready: ReadyInfo;
      try {
        ready = await Promise.race([monitor.waitForReady(120_000 + opts.fillMib * 400), exited]);
      } finally {
        clearInterval(progress);
      }
      opts.log(
        `  ready after ${((performance.now() - t0) / 1000).toFixed(1)} s: guest holds ${ready.memMib} MiB` +
          (monitor.guestErrors.length ? `; guest errors: ${monitor.guestErrors.join("; ")}` : ""),
      );
      qmp = await QmpClient.connect(paths.qmpSocket);
      const v = qmp.version;
      const note = `QEMU ${v.major}.${v.minor}.${v.micro} TCG guest, ${opts.memoryMiB} MiB RAM, ` +
        `${ready.memMib} MiB held as data` + (opts.dirtyMibps ? `, ${opts.dirtyMibps} MiB/s dirtied` : "") +
        `, pmemsave of guest-physical 0..${opts.memoryMiB} MiB (vCPU stopped)`;
      return new BenchGuest(qemu, qmp, monitor, opts.memoryMiB, ready, note);
    } catch (err) {
      qmp?.close();
      await monitor?.close().catch(() => {});
      await kill(qemu);
      throw err;
    }
  }

  /** Stops the vCPU, saves all RAM to path, resumes. Returns the bytes written. */
  async snapshot(path: string): Promise<number> {
    await this.qmp.stop();
    try {
      await this.qmp.execute("pmemsave", { val: 0, size: this.memoryMiB * MiB, filename: path }, {
        timeoutMs: 300_000,
      });
    } finally {
      await this.qmp.cont();
    }
    const bytes = (await Deno.stat(path)).size;
    if (bytes !== this.memoryMiB * MiB) {
      throw new Error(`pmemsave wrote ${bytes} bytes to ${path}, expected ${this.memoryMiB * MiB}`);
    }
    return bytes;
  }

  /** Idempotent: QEMU is killed (the benchmark wants its memory, not a clean shutdown). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.qmp.close();
    await this.monitor.close().catch(() => {});
    await kill(this.qemu);
  }
}

async function kill(qemu: Deno.ChildProcess): Promise<void> {
  try {
    qemu.kill("SIGKILL");
  } catch { /* already gone */ }
  await qemu.status.catch(() => {});
}
