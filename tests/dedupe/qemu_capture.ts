/**
 * Real QEMU migration streams for the dedupe tests: boots the test guest (tests/support/guest_image.ts)
 * under TCG, lets it run, and migrates it into a file with QMP `migrate "exec:cat > FILE"`, which is
 * byte for byte what QEMU writes into the agent's socket. QEMU is killed afterwards.
 *
 *   const capture = await cachedCapture({ memoryMiB: 128, memMib: 8 });
 *
 * A capture takes about 10 s under TCG, so cachedCapture keeps it in <repo>/.cache/qemu-streams/, keyed
 * by the guest image, the QEMU version and the options: a new kernel, init script or QEMU makes a new one.
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { QmpClient } from "../../src/migration/qmp.ts";
import { qemuArgs } from "../../src/vm/qemu_args.ts";
import { parseVmSpec } from "../../src/vm/spec.ts";
import { REPO } from "../support/agents.ts";
import { guestAppend, guestImage } from "../support/guest_image.ts";
import { HeartbeatMonitor } from "../support/heartbeat.ts";

export interface CaptureOptions {
  /** Where the sockets and the stream file go. */
  dir: string;
  name?: string;
  memoryMiB: number;
  /** MiB of data the guest workload holds (tests/support/guest/init.sh). */
  memMib: number;
  /** MiB/s the workload re-writes while QEMU migrates: pages dirtied again travel in later passes. */
  dirtyMibps?: number;
  /** QEMU's migration capabilities, such as { xbzrle: true }. */
  capabilities?: Record<string, boolean>;
  /** QEMU's bandwidth cap in bytes/s: a slow migration lets a dirtying guest make several passes. */
  maxBytesPerSec?: number;
}

export interface Capture {
  path: string;
  bytes: number;
  /** query-migrate's counters once completed. */
  passes: number;
  normalPages: number;
  duplicatePages: number;
  xbzrlePages: number;
}

/** Boots a guest, migrates it into dir/NAME.qemu-stream, and returns what QEMU reports about it. */
export async function captureMigration(opts: CaptureOptions): Promise<Capture> {
  const name = opts.name ?? "capture";
  const image = await guestImage();
  const spec = parseVmSpec({
    name,
    memoryMiB: opts.memoryMiB,
    vcpus: 1,
    kernel: image.kernel,
    initrd: image.initrd,
    cmdline: guestAppend({ memMib: opts.memMib, dirtyMibps: opts.dirtyMibps }),
    accelerator: "tcg",
  });
  const paths = { qmpSocket: join(opts.dir, `${name}.qmp`), serialSocket: join(opts.dir, `${name}.ser`) };
  const path = join(opts.dir, `${name}.qemu-stream`);
  let output = "";
  const qemu = new Deno.Command("qemu-system-x86_64", {
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
  let monitor: HeartbeatMonitor | undefined;
  let qmp: QmpClient | undefined;
  try {
    monitor = await HeartbeatMonitor.connect(paths.serialSocket);
    await monitor.waitForReady();
    qmp = await QmpClient.connect(paths.qmpSocket);
    if (opts.capabilities) await qmp.setCapabilities(opts.capabilities);
    if (opts.maxBytesPerSec) await qmp.setParameters({ "max-bandwidth": opts.maxBytesPerSec });
    await qmp.migrate(`exec:cat > ${path}`);
    for (;;) {
      const info = await qmp.queryMigrate();
      if (info.status === "completed") {
        const ram = info.ram as Record<string, number> | undefined;
        const xbzrle = (info as Record<string, unknown>)["xbzrle-cache"] as
          | Record<string, number>
          | undefined;
        return {
          path,
          bytes: (await Deno.stat(path)).size,
          passes: ram?.["dirty-sync-count"] ?? 0,
          normalPages: ram?.normal ?? 0,
          duplicatePages: ram?.duplicate ?? 0,
          xbzrlePages: xbzrle?.pages ?? 0,
        };
      }
      if (info.status === "failed" || info.status === "cancelled") {
        throw new Error(`QEMU's migration into ${path} ${info.status}: ${JSON.stringify(info)}\n${output}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  } finally {
    qmp?.close();
    await monitor?.close().catch(() => {});
    try {
      qemu.kill("SIGKILL");
    } catch { /* already gone */ }
    await qemu.status.catch(() => {});
  }
}

/** A capture made once and kept in <repo>/.cache/qemu-streams/ (see the module comment). */
export async function cachedCapture(opts: Omit<CaptureOptions, "dir" | "name">): Promise<Capture> {
  const image = await guestImage();
  const version = await new Deno.Command("qemu-system-x86_64", { args: ["--version"], stdout: "piped" })
    .output();
  const key = createHash("sha256")
    .update(JSON.stringify({ image, qemu: new TextDecoder().decode(version.stdout), opts }))
    .digest("hex").slice(0, 16);
  const cacheDir = `${REPO}.cache/qemu-streams`;
  const meta = join(cacheDir, `${key}.json`);
  try {
    return JSON.parse(await Deno.readTextFile(meta));
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  await Deno.mkdir(cacheDir, { recursive: true });
  const tmp = await Deno.makeTempDir({ dir: cacheDir, prefix: ".capture-" });
  try {
    const capture = await captureMigration({ ...opts, dir: tmp, name: key });
    const path = join(cacheDir, `${key}.qemu-stream`);
    await Deno.rename(capture.path, path);
    const kept = { ...capture, path };
    // The description last, by rename: it names a complete stream file.
    await Deno.writeTextFile(join(tmp, "meta.json"), JSON.stringify(kept, null, 2));
    await Deno.rename(join(tmp, "meta.json"), meta);
    return kept;
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}
