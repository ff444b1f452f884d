/**
 * Side-by-side: a live migration done by QEMU alone (source QEMU → unix socket → destination QEMU)
 * against the same migration carried by two real dwcp agents (POST /v1/migrations, default streams).
 *
 *   deno run --allow-all bench/migration_vs_qemu.ts [--sizes 256,1024] [--runs 3] [--dirty 0,32]
 *     [--settle-ms 2000] [--hb-ms 20] [--multifd K] [--channel auto|direct|streams] [--out results.json]
 *
 * For each guest size (memory, MiB) and dirty rate (MiB/s the guest rewrites), `--runs` times, one
 * native migration and one through the agents, interleaved. Both boot the test guest
 * (tests/support/guest_image.ts) with the same QEMU command line (src/vm/qemu_args.ts, TCG) and the
 * same migration settings the agents use (auto-converge on, downtime-limit 300 ms, max-bandwidth
 * 64 GiB/s); the guest holds about half its memory as data (at most memory − 80 MiB), waits for its
 * "ready" line, then dirties for --settle-ms before the migration starts. The heartbeat monitor follows
 * the guest's console across the switch; its gap is the pause as the guest's own output shows it.
 *
 * Native figures: QEMU's total-time, downtime and ram.transferred (query-migrate on the source once
 * completed). Agent figures: QEMU's total-time and downtime from the final snapshot, the agents'
 * observedDowntimeMs, the wall time from POST to "completed" (it includes starting the destination
 * QEMU, which the native run does beforehand), and bytesSent (the whole migration stream, device state
 * included, where ram.transferred counts RAM pages only). Tables show medians and agents/native ratios.
 * Progress goes to stderr, tables to stdout. `--multifd K` has the agents' requests ask for K QEMU
 * multifd channels (each its own stream transfer; 0: one channel; default: what the link mode gives), to
 * compare the agents with and without multifd against the same single-channel native run. `--channel`
 * sets the requests' channel: auto (default; direct on a datacenter link, src/migration/direct_channel.ts),
 * direct, or streams (carried by the agents).
 */
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { type MigrationInfo, QmpClient } from "../src/migration/qmp.ts";
import { qemuArgs, type VmSocketPaths } from "../src/vm/qemu_args.ts";
import { parseVmSpec, type VmSpec } from "../src/vm/spec.ts";
import { startAgent, type TestAgent } from "../tests/support/agents.ts";
import { guestAppend, type GuestImage, guestImage } from "../tests/support/guest_image.ts";
import { HeartbeatMonitor, switchGap } from "../tests/support/heartbeat.ts";
import { intArg, log } from "./cli_args.ts";

const MiB = 1024 * 1024;
const QEMU = "qemu-system-x86_64";
/** What the agents set on the source QEMU (src/migration/service.ts #startSource), unless a request overrides it. */
const DOWNTIME_LIMIT_MS = 300;
const MAX_BANDWIDTH = 64 * 1024 * MiB;
/** Longest a migration may take before the run counts as failed. */
const MIGRATION_TIMEOUT_MS = 10 * 60_000;
/** A's name for agent B (a configured peer). */
const PEER_B = "b";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    sizes: { type: "string", default: "256,1024" },
    runs: { type: "string", default: "3" },
    dirty: { type: "string", default: "0,32" },
    "settle-ms": { type: "string", default: "2000" },
    "hb-ms": { type: "string", default: "20" },
    multifd: { type: "string" },
    channel: { type: "string", default: "auto" },
    out: { type: "string" },
  },
  strict: true,
});

const list = (name: string, text: string, min: number) =>
  text.split(",").map((s) => intArg(name, s.trim(), min));

const sizes = list("sizes", args.sizes, 96);
const runs = intArg("runs", args.runs, 1);
const dirtyRates = list("dirty", args.dirty, 0);
const settleMs = intArg("settle-ms", args["settle-ms"], 0);
const hbMs = intArg("hb-ms", args["hb-ms"], 1);
/** Multifd channels the agents are asked for; undefined leaves it to the link mode. */
const multifdChannels = args.multifd === undefined ? undefined : intArg("multifd", args.multifd, 0);
/** How the agents carry QEMU's stream (POST /v1/migrations `channel`). */
const channel = args.channel;
if (!["auto", "direct", "streams"].includes(channel)) {
  throw new Error(`--channel ${channel}: give auto, direct or streams`);
}

/** The data the guest holds: about half its memory, leaving at least 80 MiB to the kernel and the rest. */
const guestMemMib = (sizeMiB: number) => Math.min(Math.floor(sizeMiB / 2), sizeMiB - 80);

// ---- helpers ----------------------------------------------------------------------------------------

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]): number | undefined => {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b), m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const errText = (err: unknown) => err instanceof Error ? err.message : String(err);

/** Boot plus fill under TCG runs at roughly 19 MiB/s with other work around; allow for a quarter of that. */
const readyTimeoutMs = (memMib: number) => 60_000 + memMib * 200;

function vmSpec(name: string, sizeMiB: number, cmdline: string, image: GuestImage): VmSpec {
  return parseVmSpec({
    name,
    memoryMiB: sizeMiB,
    vcpus: 1,
    kernel: image.kernel,
    initrd: image.initrd,
    cmdline,
    // Both the native QEMUs and the agents' skip the KVM probe: KVM does not work on these hosts.
    accelerator: "tcg",
  });
}

/** A QEMU the benchmark runs itself (the native baseline), its output drained into a bounded tail. */
class Qemu {
  #output = "";
  readonly exited: Promise<Deno.CommandStatus>;
  readonly child: Deno.ChildProcess;

  constructor(args: string[]) {
    this.child = new Deno.Command(QEMU, { args, stdin: "null", stdout: "piped", stderr: "piped" }).spawn();
    this.exited = this.child.status;
    for (const s of [this.child.stdout, this.child.stderr]) {
      s.pipeThrough(new TextDecoderStream()).pipeTo(
        new WritableStream({ write: (t) => void (this.#output = (this.#output + t).slice(-8_000)) }),
      ).catch(() => {});
    }
    qemus.add(this);
  }

  get output(): string {
    return this.#output;
  }

  async kill(): Promise<void> {
    try {
      this.child.kill("SIGKILL");
    } catch { /* already gone */ }
    await this.exited;
    qemus.delete(this);
  }
}

// ---- what a run measures ----------------------------------------------------------------------------

interface Sample {
  /** QEMU's total-time and downtime (query-migrate on the source). */
  totalTimeMs: number;
  downtimeMs: number;
  /** Heartbeat gap across the switch from the source's console to the destination's. */
  hbGapMs: number;
  /** Native: ram.transferred. Agents: bytesSent (the whole migration stream). */
  bytes: number;
  /** Native: migrate command to the "completed" event. Agents: POST to a "completed" snapshot. */
  wallMs: number;
  passes?: number;
  throttlePct?: number;
  /** Agents only. */
  observedDowntimeMs?: number;
  multifdChannels?: number;
  /** How QEMU's stream travelled: "direct" or "streams" (src/migration/direct_channel.ts). */
  channel?: string;
  elapsedMs?: number;
  /** The guest's ready line and its boot time. */
  guestMemMib: number;
  bootMs: number;
  hbSummary: string;
}

interface Failure {
  error: string;
}

const monitors = new Set<HeartbeatMonitor>();
const qmps = new Set<QmpClient>();
const qemus = new Set<Qemu>();
const tempDirs = new Set<string>();
const agents = new Set<TestAgent>();
let qemuVersion = "";

async function follow(serial: string): Promise<HeartbeatMonitor> {
  const hb = await HeartbeatMonitor.follow(serial);
  monitors.add(hb);
  return hb;
}

async function closeMonitor(hb: HeartbeatMonitor | undefined): Promise<void> {
  if (!hb) return;
  await hb.close();
  monitors.delete(hb);
}

/** Waits for the ready line, checks the guest filled what it was asked to, then lets it dirty a while. */
async function readyAndSettle(hb: HeartbeatMonitor, memMib: number, t0: number): Promise<number> {
  const ready = await hb.waitForReady(readyTimeoutMs(memMib));
  const bootMs = performance.now() - t0;
  if (ready.memMib !== memMib || hb.guestErrors.length) {
    log(
      `  warning: guest holds ${ready.memMib} of ${memMib} MiB; errors: ${hb.guestErrors.join("; ") || "-"}`,
    );
  }
  await sleep(settleMs);
  return bootMs;
}

// ---- (a) native: QEMU to QEMU over a unix socket ----------------------------------------------------

async function nativeRun(image: GuestImage, sizeMiB: number, dirty: number, tag: string): Promise<Sample> {
  const memMib = guestMemMib(sizeMiB);
  const dir = await Deno.makeTempDir({ prefix: "dwcp-native-" });
  tempDirs.add(dir);
  const spec = vmSpec(`native-${tag}`, sizeMiB, guestAppend({ memMib, dirtyMibps: dirty, hbMs }), image);
  const paths = (side: string): VmSocketPaths => ({
    qmpSocket: join(dir, `${side}.qmp`),
    serialSocket: join(dir, `${side}.ser`),
  });
  const srcPaths = paths("src"), dstPaths = paths("dst");
  const migSock = join(dir, "mig.sock");
  let src: Qemu | undefined, dst: Qemu | undefined;
  let hb: HeartbeatMonitor | undefined;
  let srcQmp: QmpClient | undefined, dstQmp: QmpClient | undefined;
  try {
    const t0 = performance.now();
    src = new Qemu(qemuArgs(spec, "tcg", srcPaths));
    hb = await follow(srcPaths.serialSocket);
    const bootMs = await readyAndSettle(hb, memMib, t0);

    // The agents' destination runs `-incoming defer` + migrate-incoming on a unix socket; the same
    // machine listening from the command line.
    dst = new Qemu([...qemuArgs(spec, "tcg", dstPaths), "-incoming", `unix:${migSock}`]);
    await hb.switchTo(dstPaths.serialSocket);
    srcQmp = await QmpClient.connect(srcPaths.qmpSocket);
    qmps.add(srcQmp);
    dstQmp = await QmpClient.connect(dstPaths.qmpSocket);
    qmps.add(dstQmp);
    const v = srcQmp.version;
    qemuVersion ||= `${v.major}.${v.minor}.${v.micro}`;
    await srcQmp.setCapabilities({ "auto-converge": true, events: true });
    await srcQmp.setParameters({ "downtime-limit": DOWNTIME_LIMIT_MS, "max-bandwidth": MAX_BANDWIDTH });

    const ended = srcQmp.waitForEvent(
      "MIGRATION",
      (ev) => ["completed", "failed", "cancelled"].includes(String(ev.data?.status)),
      { timeoutMs: MIGRATION_TIMEOUT_MS },
    );
    const started = performance.now();
    await srcQmp.migrate(`unix:${migSock}`);
    const ev = await ended;
    const wallMs = performance.now() - started;
    // QEMU emits "completed" a moment before it fills in total-time and downtime.
    let info: MigrationInfo = await srcQmp.queryMigrate();
    for (let i = 0; i < 100 && info.status === "completed" && !info["total-time"]; i++) {
      await sleep(10);
      info = await srcQmp.queryMigrate();
    }
    if (ev.data?.status !== "completed" || info.status !== "completed") {
      throw new Error(
        `native migration ${info.status}: ${info["error-desc"] ?? ""}\n${src.output}\n${dst.output}`,
      );
    }
    for (const deadline = performance.now() + 30_000; !(await dstQmp.queryStatus()).running;) {
      if (performance.now() > deadline) throw new Error("the destination QEMU did not run the guest");
      await sleep(10);
    }
    const hbGapMs = await switchGap(hb);
    return {
      totalTimeMs: info["total-time"]!,
      downtimeMs: info.downtime!,
      hbGapMs,
      bytes: info.ram?.transferred ?? NaN,
      wallMs,
      passes: info.ram?.["dirty-sync-count"],
      throttlePct: info["cpu-throttle-percentage"],
      guestMemMib: hb.ready!.memMib,
      bootMs,
      hbSummary: hb.summary(),
    };
  } finally {
    await closeMonitor(hb);
    for (const q of [srcQmp, dstQmp]) {
      if (!q) continue;
      q.close();
      qmps.delete(q);
    }
    await src?.kill();
    await dst?.kill();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    tempDirs.delete(dir);
  }
}

/** The mode A's policy chose for the link to B, once it has one (three round trips measured). */
async function linkMode(a: TestAgent): Promise<string> {
  type Peers = { peers: { id: string; mode: { current: string | null; reason: string } }[] };
  for (const deadline = performance.now() + 60_000;;) {
    const peer = (await a.json<Peers>("/v1/peers")).body.peers.find((p) => p.id === PEER_B);
    if (peer?.mode.current) return `${peer.mode.current} (${peer.mode.reason})`;
    if (performance.now() > deadline) throw new Error(`A chose no mode for B: ${peer?.mode.reason}`);
    await sleep(250);
  }
}

// ---- (b) through the agents -------------------------------------------------------------------------

type Snapshot = {
  id: string;
  phase: string;
  totalTimeMs?: number;
  downtimeMs?: number;
  observedDowntimeMs?: number;
  bytesSent: number;
  elapsedMs: number;
  passes?: number;
  multifdChannels?: number;
  channel?: string;
  error?: { code: string; message: string };
};

async function agentsRun(
  a: TestAgent,
  b: TestAgent,
  image: GuestImage,
  sizeMiB: number,
  dirty: number,
  name: string,
): Promise<Sample> {
  const memMib = guestMemMib(sizeMiB);
  const spec = vmSpec(name, sizeMiB, guestAppend({ memMib, dirtyMibps: dirty, hbMs }), image);
  let hb: HeartbeatMonitor | undefined;
  try {
    const t0 = performance.now();
    const created = await a.json<{ serialSocket: string }>("/v1/vms", {
      method: "POST",
      body: JSON.stringify(spec),
    });
    if (created.status !== 201) {
      throw new Error(`POST /v1/vms answered ${created.status}: ${JSON.stringify(created.body)}`);
    }
    hb = await follow(created.body.serialSocket);
    const bootMs = await readyAndSettle(hb, memMib, t0);

    // The destination's console appears once the migration is accepted; switchTo retries until then,
    // so nothing the guest prints there is lost.
    const switching = hb.switchTo(join(b.stateDir, "run", name, "serial.sock"), { connectTimeoutMs: 60_000 });
    switching.catch(() => {});
    const started = performance.now();
    const res = await a.json<Snapshot>("/v1/migrations", {
      method: "POST",
      body: JSON.stringify({ vm: name, peer: PEER_B, multifdChannels, channel }),
    });
    if (res.status !== 201) {
      throw new Error(`POST /v1/migrations answered ${res.status}: ${JSON.stringify(res.body)}`);
    }
    let snap: Snapshot;
    for (const deadline = started + MIGRATION_TIMEOUT_MS;;) {
      snap = (await a.json<Snapshot>(`/v1/migrations/${res.body.id}`)).body;
      if (["completed", "failed", "cancelled"].includes(snap.phase)) break;
      if (performance.now() > deadline) {
        throw new Error(`migration still ${snap.phase} after ${MIGRATION_TIMEOUT_MS} ms`);
      }
      await sleep(100);
    }
    const wallMs = performance.now() - started;
    if (snap.phase !== "completed") {
      throw new Error(`migration ${snap.phase}: ${JSON.stringify(snap.error)}`);
    }
    await switching;
    const hbGapMs = await switchGap(hb);
    return {
      totalTimeMs: snap.totalTimeMs ?? NaN,
      downtimeMs: snap.downtimeMs ?? NaN,
      observedDowntimeMs: snap.observedDowntimeMs,
      hbGapMs,
      bytes: snap.bytesSent,
      wallMs,
      elapsedMs: snap.elapsedMs,
      passes: snap.passes,
      multifdChannels: snap.multifdChannels,
      channel: snap.channel,
      guestMemMib: hb.ready!.memMib,
      bootMs,
      hbSummary: hb.summary(),
    };
  } finally {
    await closeMonitor(hb);
    // The VM ends up on B; after a failure it may be on A. Stop it wherever it is.
    for (const agent of [b, a]) {
      await agent.api(`/v1/vms/${name}`, { method: "DELETE" }).then((r) => r.body?.cancel()).catch(() => {});
    }
  }
}

// ---- cleanup ----------------------------------------------------------------------------------------

let cleaning: Promise<void> | undefined;
/** Closes monitors and QMP, kills the native QEMUs, stops the agents (and their QEMUs), removes temp dirs. */
function cleanup(): Promise<void> {
  return cleaning ??= (async () => {
    for (const q of qmps) q.close();
    await Promise.allSettled([...monitors].map((m) => m.close()));
    await Promise.allSettled([...qemus].map((q) => q.kill()));
    await Promise.allSettled([...agents].map((a) => a.stop()));
    for (const d of tempDirs) await Deno.remove(d, { recursive: true }).catch(() => {});
  })();
}

const onSignal = () => {
  log("interrupted: cleaning up");
  void cleanup().finally(() => Deno.exit(130));
};
Deno.addSignalListener("SIGINT", onSignal);
Deno.addSignalListener("SIGTERM", onSignal);

// ---- report -----------------------------------------------------------------------------------------

interface Combo {
  sizeMiB: number;
  guestMemMib: number;
  dirtyMibps: number;
  native: (Sample | Failure)[];
  agents: (Sample | Failure)[];
}

const ok = (xs: (Sample | Failure)[]) => xs.filter((x): x is Sample => !("error" in x));
const medianOf = (xs: Sample[], key: keyof Sample) =>
  median(xs.map((s) => s[key]).filter((v): v is number => typeof v === "number" && Number.isFinite(v)));

function mediansOf(c: Combo) {
  const n = ok(c.native), a = ok(c.agents);
  const pick = (xs: Sample[]) => ({
    totalTimeMs: medianOf(xs, "totalTimeMs"),
    downtimeMs: medianOf(xs, "downtimeMs"),
    hbGapMs: medianOf(xs, "hbGapMs"),
    bytes: medianOf(xs, "bytes"),
    wallMs: medianOf(xs, "wallMs"),
    passes: medianOf(xs, "passes"),
    observedDowntimeMs: medianOf(xs, "observedDowntimeMs"),
    elapsedMs: medianOf(xs, "elapsedMs"),
    bootMs: medianOf(xs, "bootMs"),
  });
  const native = pick(n), agents = pick(a);
  const ratio = (x?: number, y?: number) => x !== undefined && y !== undefined && y > 0 ? x / y : undefined;
  const diff = (x?: number, y?: number) => x !== undefined && y !== undefined ? x - y : undefined;
  return {
    ok: { native: n.length, agents: a.length },
    native,
    agents,
    ratio: {
      totalTime: ratio(agents.totalTimeMs, native.totalTimeMs),
      downtime: ratio(agents.downtimeMs, native.downtimeMs),
      hbGap: ratio(agents.hbGapMs, native.hbGapMs),
      bytes: ratio(agents.bytes, native.bytes),
    },
    diffMs: {
      downtime: diff(agents.downtimeMs, native.downtimeMs),
      hbGap: diff(agents.hbGapMs, native.hbGapMs),
    },
  };
}

function table(c: Combo): string {
  const m = mediansOf(c);
  const num = (v: number | undefined, d = 0) => v === undefined ? "-" : v.toFixed(d);
  const rows: [string, string, string, string, string][] = [
    [
      "total time (QEMU), ms",
      num(m.native.totalTimeMs),
      num(m.agents.totalTimeMs),
      num(m.ratio.totalTime, 2),
      "",
    ],
    [
      "downtime (QEMU), ms",
      num(m.native.downtimeMs),
      num(m.agents.downtimeMs),
      num(m.ratio.downtime, 2),
      m.diffMs.downtime === undefined
        ? ""
        : `${m.diffMs.downtime >= 0 ? "+" : ""}${num(m.diffMs.downtime)} ms`,
    ],
    ["downtime (agents observed), ms", "-", num(m.agents.observedDowntimeMs), "", ""],
    [
      "heartbeat gap at switch, ms",
      num(m.native.hbGapMs),
      num(m.agents.hbGapMs),
      num(m.ratio.hbGap, 2),
      m.diffMs.hbGap === undefined ? "" : `${m.diffMs.hbGap >= 0 ? "+" : ""}${num(m.diffMs.hbGap)} ms`,
    ],
    [
      "on the wire, MiB",
      num(m.native.bytes === undefined ? undefined : m.native.bytes / MiB, 1),
      num(m.agents.bytes === undefined ? undefined : m.agents.bytes / MiB, 1),
      num(m.ratio.bytes, 3),
      "",
    ],
    ["wall time, ms", num(m.native.wallMs), num(m.agents.wallMs), "", ""],
    ["dirty-bitmap passes", num(m.native.passes), num(m.agents.passes), "", ""],
  ];
  const channels = [...new Set(c.agents.flatMap((s) => "channel" in s && s.channel ? [s.channel] : []))];
  const head = `size ${c.sizeMiB} MiB (guest holds ${c.guestMemMib} MiB), dirty ${c.dirtyMibps} MiB/s: ` +
    `medians of ${m.ok.native}/${c.native.length} native, ${m.ok.agents}/${c.agents.length} agent runs` +
    (channels.length ? ` (agents' channel: ${channels.join(", ")})` : "");
  const cols = ["", "native", "agents", "agents/native", "difference"];
  const widths = [32, 10, 10, 14, 12];
  const line = (cells: string[]) =>
    cells.map((s, i) => i === 0 ? s.padEnd(widths[i]) : s.padStart(widths[i])).join("").trimEnd();
  return [head, line(cols), ...rows.map(line)].join("\n");
}

// ---- the run ----------------------------------------------------------------------------------------

const combos: Combo[] = [];
let failures = 0;
try {
  log(
    `migration: QEMU alone vs through dwcp agents; sizes ${sizes.join(",")} MiB, dirty ${
      dirtyRates.join(",")
    } ` +
      `MiB/s, ${runs} run(s) each, settle ${settleMs} ms, heartbeat ${hbMs} ms, ${navigator.hardwareConcurrency} CPU(s), TCG` +
      `, agents' multifd channels: ${multifdChannels ?? "the mode's"}`,
  );
  const image = await guestImage();
  const extraRoots = [dirname(image.kernel)];
  let seq = 0;
  for (const sizeMiB of sizes) {
    for (const dirty of dirtyRates) {
      const combo: Combo = {
        sizeMiB,
        guestMemMib: guestMemMib(sizeMiB),
        dirtyMibps: dirty,
        native: [],
        agents: [],
      };
      combos.push(combo);
      log(
        `size ${sizeMiB} MiB (guest holds ${combo.guestMemMib} MiB), dirty ${dirty} MiB/s: starting agents`,
      );
      // B is a configured peer of A's, so A probes the link and picks its mode (datacenter on loopback)
      // while the guest boots, as on a real host.
      const b = await startAgent({ id: "bench-b", extraRoots });
      agents.add(b);
      const a = await startAgent({
        id: "bench-a",
        extraRoots,
        peers: { [PEER_B]: b.dataAddr },
        link: { probeIntervalMs: 1000 },
      });
      agents.add(a);
      log(`  A's link to B: ${await linkMode(a)}`);
      try {
        for (let r = 1; r <= runs; r++) {
          const tag = `${sizeMiB}-${dirty}-${r}-${seq++}`;
          for (const mode of ["native", "agents"] as const) {
            log(`  run ${r}/${runs} ${mode}: booting the guest`);
            try {
              const s = mode === "native"
                ? await nativeRun(image, sizeMiB, dirty, tag)
                : await agentsRun(a, b, image, sizeMiB, dirty, `bench-${tag}`);
              combo[mode].push(s);
              log(
                `  run ${r}/${runs} ${mode}: ready after ${
                  (s.bootMs / 1000).toFixed(1)
                } s; total ${s.totalTimeMs} ms, ` +
                  `downtime ${s.downtimeMs} ms` +
                  (s.observedDowntimeMs === undefined ? "" : ` (observed ${s.observedDowntimeMs} ms)`) +
                  `, heartbeat gap ${s.hbGapMs.toFixed(0)} ms, ${(s.bytes / MiB).toFixed(1)} MiB, ` +
                  `wall ${s.wallMs.toFixed(0)} ms, passes ${s.passes ?? "?"}` +
                  (s.multifdChannels === undefined ? "" : `, multifd channels ${s.multifdChannels}`) +
                  (s.channel === undefined ? "" : `, channel ${s.channel}`),
              );
            } catch (err) {
              if (cleaning) throw err; // interrupted: the signal handler cleans up and exits
              failures++;
              combo[mode].push({ error: errText(err) });
              log(`  run ${r}/${runs} ${mode} FAILED: ${errText(err)}`);
              for (const ag of [a, b]) {
                const st = await Promise.race([ag.exited, sleep(100).then(() => undefined)]);
                if (st) log(`agent ${ag.id} exited (${JSON.stringify(st)}); its stderr:\n${ag.logs}`);
              }
            }
          }
        }
      } finally {
        for (const ag of [a, b]) {
          await ag.stop();
          agents.delete(ag);
        }
      }
      console.log(table(combo));
      console.log();
    }
  }

  console.log(
    "Native: QEMU → unix socket → QEMU (bytes = ram.transferred; wall = migrate command to the completed " +
      `event). Agents: POST /v1/migrations, channel ${channel} (bytes = bytesSent, the whole stream; wall = POST ` +
      "to a completed snapshot, destination QEMU start included). Same QEMU arguments, TCG, auto-converge, " +
      `downtime-limit ${DOWNTIME_LIMIT_MS} ms, max-bandwidth 64 GiB/s on both.`,
  );
  if (args.out) {
    await Deno.writeTextFile(
      args.out,
      JSON.stringify(
        {
          sizes,
          dirtyMibps: dirtyRates,
          runs,
          settleMs,
          hbMs,
          cpus: navigator.hardwareConcurrency,
          qemu: qemuVersion,
          accelerator: "tcg",
          migration: { downtimeLimitMs: DOWNTIME_LIMIT_MS, maxBandwidth: MAX_BANDWIDTH, autoConverge: true },
          agentMultifdChannels: multifdChannels ?? "mode",
          results: combos.map((c) => ({ ...c, medians: mediansOf(c) })),
        },
        null,
        2,
      ) + "\n",
    );
    log(`results written to ${args.out}`);
  }
  if (failures) {
    log(`${failures} run(s) failed`);
    Deno.exitCode = 1;
  }
} finally {
  await cleanup();
  Deno.removeSignalListener("SIGINT", onSignal);
  Deno.removeSignalListener("SIGTERM", onSignal);
}
