/**
 * Dedupe on live migrations between two real agents (Table 6 of bench/dedupe_bench.ts, or alone):
 * guest 1, then guest 2 booted from the same image, each migrated A→B through the agents
 * (POST /v1/migrations), with `dedupe: true` and without, every series on a fresh pair of agents (so B's
 * chunk store starts empty), with the kernel's address randomization (KASLR) on and off.
 *
 *   deno run --allow-all bench/dedupe_migrations.ts [--memory-mib 256] [--fill-mib 8] [--runs 1]
 *
 * Per migration: QEMU's stream (dedupe.streamBytes, or bytesSent without dedupe), the bytes the agents
 * carried for it (bytesSent: the deduped stream with dedupe), the wall time from POST to "completed"
 * (starting the destination QEMU included), QEMU's total time and downtime. Medians over --runs. The
 * guests (tests/support/guest_image.ts, TCG) hold --fill-mib of data that differs per boot; the rest of
 * their memory is kernel, initramfs and page cache. Each guest is stopped once it has migrated.
 */
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { startAgent, type TestAgent } from "../tests/support/agents.ts";
import { guestAppend, type GuestImage, guestImage } from "../tests/support/guest_image.ts";
import { HeartbeatMonitor } from "../tests/support/heartbeat.ts";

const MiB = 1024 * 1024;
const MIGRATION_TIMEOUT_MS = 10 * 60_000;

export interface MigrationBenchOptions {
  memoryMiB: number;
  fillMib: number;
  runs: number;
  log: (msg: string) => void;
}

interface Measure {
  streamBytes: number;
  wireBytes: number;
  wallMs: number;
  totalTimeMs: number;
  downtimeMs: number;
}

interface Snapshot {
  id: string;
  phase: string;
  bytesSent: number;
  totalTimeMs?: number;
  downtimeMs?: number;
  dedupe?: { active: boolean; streamBytes: number };
  error?: unknown;
}

async function migrateOne(
  a: TestAgent,
  b: TestAgent,
  image: GuestImage,
  o: MigrationBenchOptions,
  name: string,
  cmdline: string,
  dedupe: boolean,
): Promise<Measure> {
  const created = await a.json<{ serialSocket: string }>("/v1/vms", {
    method: "POST",
    body: JSON.stringify({
      name,
      memoryMiB: o.memoryMiB,
      vcpus: 1,
      kernel: image.kernel,
      initrd: image.initrd,
      cmdline,
    }),
  });
  if (created.status !== 201) {
    throw new Error(`POST /v1/vms: ${created.status} ${JSON.stringify(created.body)}`);
  }
  const hb = await HeartbeatMonitor.follow(created.body.serialSocket);
  try {
    await hb.waitForReady(120_000);
    const switching = hb.switchTo(join(b.stateDir, "run", name, "serial.sock"), { connectTimeoutMs: 60_000 });
    switching.catch(() => {});
    const t0 = performance.now();
    const res = await a.json<Snapshot>("/v1/migrations", {
      method: "POST",
      body: JSON.stringify({ vm: name, peer: b.dataAddr, dedupe }),
    });
    if (res.status !== 201) throw new Error(`POST /v1/migrations: ${res.status} ${JSON.stringify(res.body)}`);
    let snap: Snapshot;
    for (;;) {
      snap = (await a.json<Snapshot>(`/v1/migrations/${res.body.id}`)).body;
      if (["completed", "failed", "cancelled"].includes(snap.phase)) break;
      if (performance.now() - t0 > MIGRATION_TIMEOUT_MS) throw new Error(`migration still ${snap.phase}`);
      await new Promise((r) => setTimeout(r, 10));
    }
    const wallMs = performance.now() - t0;
    if (snap.phase !== "completed") throw new Error(`migration ${snap.phase}: ${JSON.stringify(snap.error)}`);
    if (dedupe && !snap.dedupe?.active) {
      throw new Error(`dedupe was not active: ${JSON.stringify(snap.dedupe)}`);
    }
    await switching;
    await hb.waitForCounter(hb.lastCounter + 5);
    if (hb.bootIdChanged || hb.wentBackwards) throw new Error(`the guest did not run on: ${hb.summary()}`);
    return {
      streamBytes: snap.dedupe?.streamBytes ?? snap.bytesSent,
      wireBytes: snap.bytesSent,
      wallMs,
      totalTimeMs: snap.totalTimeMs ?? NaN,
      downtimeMs: snap.downtimeMs ?? NaN,
    };
  } finally {
    await hb.close().catch(() => {});
    // Stopped once migrated: only B's chunk store is meant to carry over to the next guest.
    await b.api(`/v1/vms/${name}`, { method: "DELETE" }).then((r) => r.body?.cancel()).catch(() => {});
  }
}

/** One series: guest 1 then guest 2 on a fresh pair of agents. */
async function series(image: GuestImage, o: MigrationBenchOptions, kaslr: boolean, dedupe: boolean) {
  const extraRoots = [dirname(image.kernel)];
  const a = await startAgent({ id: "a", extraRoots });
  const b = await startAgent({ id: "b", extraRoots });
  try {
    const cmdline = guestAppend({ memMib: o.fillMib }) + (kaslr ? "" : " nokaslr");
    const out: Measure[] = [];
    for (const name of ["guest-1", "guest-2"]) {
      o.log(`  ${kaslr ? "KASLR" : "nokaslr"}, ${dedupe ? "dedupe" : "plain"}: ${name}`);
      out.push(await migrateOne(a, b, image, o, name, cmdline, dedupe));
    }
    return out;
  } finally {
    await a.stop();
    await b.stop();
  }
}

const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];

/** The table's rows: per KASLR setting, guest and mode, the medians of --runs series. */
export async function migrationTable(
  o: MigrationBenchOptions,
): Promise<{ header: string[]; rows: string[][] }> {
  const image = await guestImage();
  const rows: string[][] = [];
  for (const kaslr of [true, false]) {
    const runs: Record<"plain" | "dedupe", Measure[][]> = { plain: [], dedupe: [] };
    for (let r = 0; r < o.runs; r++) {
      runs.plain.push(await series(image, o, kaslr, false));
      runs.dedupe.push(await series(image, o, kaslr, true));
    }
    for (const g of [0, 1]) {
      const plainWire = median(runs.plain.map((s) => s[g].wireBytes));
      for (const mode of ["plain", "dedupe"] as const) {
        const m = (key: keyof Measure) => median(runs[mode].map((s) => s[g][key]));
        rows.push([
          `${kaslr ? "KASLR" : "nokaslr"}, guest ${g + 1}, ${mode}`,
          (m("streamBytes") / MiB).toFixed(1),
          (m("wireBytes") / MiB).toFixed(1),
          (m("wireBytes") / plainWire).toFixed(2),
          (m("wallMs") / 1000).toFixed(2),
          (m("totalTimeMs") / 1000).toFixed(2),
          m("downtimeMs").toFixed(0),
        ]);
      }
    }
  }
  return {
    header: [
      "migration",
      "QEMU stream MiB",
      "wire MiB",
      "wire vs plain",
      "wall s",
      "QEMU total s",
      "downtime ms",
    ],
    rows,
  };
}

if (import.meta.main) {
  const { values: args } = parseArgs({
    args: Deno.args,
    options: {
      "memory-mib": { type: "string", default: "256" },
      "fill-mib": { type: "string", default: "8" },
      runs: { type: "string", default: "1" },
    },
    strict: true,
  });
  const int = (name: string, text: string, min: number) => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} ${text}: expected an integer >= ${min}`);
    return n;
  };
  const log = (msg: string) => console.error(`[${new Date().toISOString().slice(11, 19)}] ${msg}`);
  const o = {
    memoryMiB: int("memory-mib", args["memory-mib"], 128),
    fillMib: int("fill-mib", args["fill-mib"], 1),
    runs: int("runs", args.runs, 1),
    log,
  };
  const { header, rows } = await migrationTable(o);
  console.log(
    `\n${o.memoryMiB} MiB TCG guests holding ${o.fillMib} MiB of per-boot data, agents on loopback, ` +
      `median of ${o.runs}\n`,
  );
  console.log(`| ${header.join(" | ")} |`);
  console.log(`|${header.map((h, i) => "-".repeat(h.length + 1) + (i === 0 ? "-" : ":")).join("|")}|`);
  for (const r of rows) console.log(`| ${r.join(" | ")} |`);
}
