/**
 * dwcp on emulated WAN links (issue 5): for each link profile (tests/support/link_emulator.ts), in one
 * run, two real agents in the emulator's host namespaces (tests/support/wan_agents.ts), and
 *   1. iperf3 a → b with 1 stream, and with the stream count dwcp chose for the peer (GET /v1/peers/b
 *      once the mode is settled);
 *   2. a dwcp transfer of a VM-memory image (a snapshot of the test guest's RAM, BenchGuest, half of it
 *      holding the guest workload's data), no codec asked, so the link's mode picks codec and streams:
 *      effective throughput = payload bytes / wall time from POST to completed, and its ratio to the
 *      link rate and to single-stream iperf3;
 *   3. a live migration of a dirtying guest, natively (source QEMU in host a migrating to `tcp:` on host
 *      b's QEMU started with -incoming, over the emulated link) and through the agents
 *      (POST /v1/migrations): total time, downtime (QEMU's, and the gap in the guest's heartbeat across
 *      the switch), and agents/native ratios.
 *
 *   deno run --allow-all bench/wan.ts [--profiles wan,intercontinental] [--image-mib 1024] [--image FILE]
 *     [--guest-mib 512] [--dirty-mibps 8] [--iperf-seconds 10] [--migration-timeout-s 300]
 *     [--tls off|auto] [--parts iperf,transfer,migration] [--seed 1] [--out results.json]
 *
 * The native migration uses the agents' QEMU settings (auto-converge on, downtime-limit 300 ms,
 * max-bandwidth unlimited) and QEMU's plain stream otherwise; a native migration over a lossy single TCP
 * stream can take minutes, so both kinds are capped at --migration-timeout-s and a capped one is
 * reported as "did not finish in N s" (then cancelled). With --tls auto the agents hold certificates
 * (`dwcp cert init`) and use TLS on internet-mode links, as the mode's parameters ask; with off (the
 * default) the data moves in plain TCP. Needs root, gcc, iperf3, QEMU. Progress on stderr, tables on
 * stdout; the table's "CPU" column is the agents' CPU time over the transfer's wall time (2.0 = both
 * cores busy), "link busy" the share of the a → b path's capacity the emulator delivered meanwhile.
 */
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { BenchGuest } from "./guest_memory.ts";
import { certInit } from "../src/cli/cert.ts";
import { type MigrationInfo, QmpClient } from "../src/migration/qmp.ts";
import { qemuArgs, type VmSocketPaths } from "../src/vm/qemu_args.ts";
import { parseVmSpec, type VmSpec } from "../src/vm/spec.ts";
import { guestAppend, type GuestImage, guestImage } from "../tests/support/guest_image.ts";
import { HeartbeatMonitor, switchGap } from "../tests/support/heartbeat.ts";
import {
  type EmulatedHost,
  LinkEmulator,
  type ProfileName,
  PROFILES,
  runIperf3,
  traceMeanBitsPerSec,
} from "../tests/support/link_emulator.ts";
import {
  type PeerView,
  peerView,
  waitForView,
  type WanAgent,
  WanCluster,
} from "../tests/support/wan_agents.ts";

const MiB = 1024 * 1024;
const QEMU = "qemu-system-x86_64";
/** What the agents set on a source QEMU unless the request says otherwise (src/migration/service.ts). */
const DOWNTIME_LIMIT_MS = 300;
const MAX_BANDWIDTH = 64 * 1024 * MiB;
const NATIVE_MIGRATION_PORT = 4444;
const HEARTBEAT_MS = 20;
/** The guest dirties for this long after its ready line before a migration starts. */
const SETTLE_MS = 2000;
/**
 * Short dwell and confirmation times: each profile gets fresh agents, and the bench reads the mode the
 * first measurements give; frequent probes so that happens within a second or two.
 */
const LINK_SETTINGS = { probeIntervalMs: 500, minDwellMs: 5000, confirmMs: 2000 };

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    profiles: { type: "string", default: "lan,metro,wan,intercontinental,cellular" },
    "image-mib": { type: "string", default: "1024" },
    image: { type: "string" },
    "guest-mib": { type: "string", default: "512" },
    "dirty-mibps": { type: "string", default: "8" },
    "iperf-seconds": { type: "string", default: "10" },
    "migration-timeout-s": { type: "string", default: "300" },
    tls: { type: "string", default: "off" },
    parts: { type: "string", default: "iperf,transfer,migration" },
    seed: { type: "string", default: "1" },
    out: { type: "string" },
  },
  strict: true,
});

function int(name: string, text: string, min: number): number {
  const n = Number(text);
  if (text.trim() === "" || !Number.isInteger(n) || n < min) {
    throw new Error(`--${name} ${text}: expected an integer >= ${min}`);
  }
  return n;
}

const profiles = args.profiles.split(",").map((p) => p.trim()).filter(Boolean) as ProfileName[];
for (const p of profiles) {
  if (!(p in PROFILES)) {
    throw new Error(
      `--profiles: unknown profile "${p}"; expected some of ${Object.keys(PROFILES).join(",")}`,
    );
  }
}
const imageMib = int("image-mib", args["image-mib"], 64);
const guestMib = int("guest-mib", args["guest-mib"], 128);
const dirtyMibps = int("dirty-mibps", args["dirty-mibps"], 0);
const iperfSeconds = int("iperf-seconds", args["iperf-seconds"], 2);
const migrationTimeoutMs = int("migration-timeout-s", args["migration-timeout-s"], 10) * 1000;
const seed = int("seed", args.seed, 0);
if (args.tls !== "off" && args.tls !== "auto") throw new Error(`--tls ${args.tls}: expected off or auto`);
const tlsMode = args.tls;
const PARTS = ["iperf", "transfer", "migration"] as const;
const parts = new Set(args.parts.split(",").map((p) => p.trim()));
for (const p of parts) {
  if (!(PARTS as readonly string[]).includes(p)) {
    throw new Error(`--parts: unknown part "${p}"; expected some of ${PARTS.join(",")}`);
  }
}
/** The guest holds about half its memory as data, leaving at least 80 MiB to its kernel. */
const guestDataMib = Math.min(Math.floor(guestMib / 2), guestMib - 80);

// ---- helpers ----------------------------------------------------------------------------------------

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const log = (msg: string) => console.error(`[${new Date().toISOString().slice(11, 19)}] ${msg}`);
const errText = (err: unknown) => err instanceof Error ? err.message : String(err);

/** The bottleneck a → b in bits per second: the profile's rate, or its trace's mean. */
function linkBitsPerSec(profile: ProfileName): number {
  const fwd = PROFILES[profile].forward;
  return fwd.trace ? traceMeanBitsPerSec(fwd.trace) : fwd.rateBitsPerSec!;
}

/** User plus system CPU seconds a process has used (/proc/PID/stat, clock ticks of 1/100 s). */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** The a → b path's delivered and possible bytes, to say how busy the link was over an interval. */
async function pathBytes(link: LinkEmulator): Promise<{ tx: number; capacity: number }> {
  const p = LinkEmulator.path(await link.counters(), 0, 1);
  return { tx: p.txBytes, capacity: p.capacityBytes };
}

/** A QEMU the benchmark runs itself inside a host namespace; the emulator kills it if the bench dies. */
class NativeQemu {
  #output = "";
  readonly child: Deno.ChildProcess;

  constructor(link: LinkEmulator, host: EmulatedHost, qemuArgv: string[]) {
    this.child = link.spawn(host, [QEMU, ...qemuArgv], { stdout: "piped", stderr: "piped" });
    for (const s of [this.child.stdout, this.child.stderr]) {
      s.pipeThrough(new TextDecoderStream()).pipeTo(
        new WritableStream({ write: (t) => void (this.#output = (this.#output + t).slice(-8_000)) }),
      ).catch(() => {});
    }
  }

  get output(): string {
    return this.#output;
  }

  async kill(): Promise<void> {
    try {
      this.child.kill("SIGKILL");
    } catch { /* already gone */ }
    await this.child.status;
  }
}

function vmSpec(name: string, image: GuestImage): VmSpec {
  return parseVmSpec({
    name,
    memoryMiB: guestMib,
    vcpus: 1,
    kernel: image.kernel,
    initrd: image.initrd,
    cmdline: guestAppend({ memMib: guestDataMib, dirtyMibps, hbMs: HEARTBEAT_MS }),
    // KVM does not work on these hosts; both sides skip the probe.
    accelerator: "tcg",
  });
}

/** Boot plus fill under TCG runs at roughly 19 MiB/s with other work around; allow for a quarter. */
const readyTimeoutMs = 60_000 + guestDataMib * 200;

/** Waits for the guest's ready line, then lets it dirty its memory for a while. Returns the boot time. */
async function readyAndSettle(hb: HeartbeatMonitor, t0: number): Promise<number> {
  const ready = await hb.waitForReady(readyTimeoutMs);
  const bootMs = performance.now() - t0;
  if (ready.memMib !== guestDataMib || hb.guestErrors.length) {
    log(`    warning: guest holds ${ready.memMib} of ${guestDataMib} MiB; ${hb.guestErrors.join("; ")}`);
  }
  await sleep(SETTLE_MS);
  return bootMs;
}

// ---- what a profile measures ------------------------------------------------------------------------

interface IperfResult {
  streams: number;
  bitsPerSec: number;
  retransmits: number;
}

/** The peer's mode as a step started, and why: traffic on the link may have moved it since the start. */
interface ModeAt {
  mode: string | null;
  reason: string;
  /** The peer's retransmit ratios: the path's, and those under a standing queue (left out of the mode). */
  retransmitRatio?: number;
  queuedRetransmitRatio?: number;
}

async function modeNow(a: WanAgent): Promise<ModeAt> {
  const view = await peerView(a, "b");
  const { retransmitRatio, queuedRetransmitRatio } = view.measurements;
  return { mode: view.mode.current, reason: view.mode.reason, retransmitRatio, queuedRetransmitRatio };
}

interface TransferResult {
  modeAtStart: ModeAt;
  /** The mode once the transfer's own traffic has had the policy's confirmation time to move it. */
  modeAfter: ModeAt;
  payloadBytes: number;
  wireBytes: number;
  wallMs: number;
  /** Payload bytes / wall time. */
  bytesPerSec: number;
  codec: string;
  streams: number;
  chunkBytes: number;
  /** The codec policy's inputs and picks (snapshot `encoding`). */
  encoding?: unknown;
  /** Agents' CPU seconds over the wall time: sender, receiver. */
  cpu: { sender: number; receiver: number };
  /** IP bytes the emulator delivered a → b over what the path could carry, during the transfer. */
  linkBusy: number;
}

interface MigrationResult {
  /** Agents only: the peer's mode as the migration started (it picks streams, codec, xbzrle). */
  modeAtStart?: ModeAt;
  finished: boolean;
  /** When not finished: why, or how far it got. */
  note?: string;
  /** QEMU's total-time and downtime (query-migrate on the source). */
  totalTimeMs?: number;
  downtimeMs?: number;
  /** Heartbeat gap across the switch from the source's console to the destination's. */
  hbGapMs?: number;
  /** Native: migrate command to the completed event. Agents: POST to a completed snapshot. */
  wallMs: number;
  /** Native: ram.transferred. Agents: bytesSent (the whole QEMU stream, before encoding). */
  bytes?: number;
  /** Agents: what crossed the link after encoding, and how. */
  wireBytes?: number;
  codec?: string;
  streams?: number;
  observedDowntimeMs?: number;
  passes?: number;
  bootMs?: number;
  /** Agents: the migration's events that retuned QEMU from the link's bandwidth forecast, "+s: message". */
  forecastEvents?: string[];
}

interface ProfileResult {
  profile: ProfileName;
  linkBitsPerSec: number;
  tls: string;
  mode: string | null;
  modeReason: string;
  parameters: PeerView["parameters"];
  iperf1?: IperfResult;
  iperfN?: IperfResult;
  transfer?: TransferResult;
  native?: MigrationResult;
  agents?: MigrationResult;
  errors: string[];
}

async function iperf(link: LinkEmulator, streams: number): Promise<IperfResult> {
  const { json } = await runIperf3(link, ["-P", String(streams)], iperfSeconds);
  const end = json.end as { sum_received: { bits_per_second: number }; sum_sent: { retransmits: number } };
  return { streams, bitsPerSec: end.sum_received.bits_per_second, retransmits: end.sum_sent.retransmits };
}

type TransferSnapshot = {
  id: string;
  state: string;
  sizeBytes: number;
  wireBytes: number;
  codec: string;
  chunkBytes: number;
  streams: unknown[];
  encoding?: unknown;
  error?: { code: string; message: string };
};

async function transferImage(cluster: WanCluster, image: string): Promise<TransferResult> {
  const [a, b] = cluster.agents;
  const modeAtStart = await modeNow(a);
  const cpu0 = [await cpuSeconds(a.pid), await cpuSeconds(b.pid)];
  const path0 = await pathBytes(cluster.link);
  const t0 = performance.now();
  const res = await a.json<TransferSnapshot>("/v1/transfers", {
    method: "POST",
    body: JSON.stringify({ source: image, peer: "b", destination: "image.bin", overwrite: true }),
  });
  if (res.status !== 201) {
    throw new Error(`POST /v1/transfers answered ${res.status}: ${JSON.stringify(res.body)}`);
  }
  let snap: TransferSnapshot;
  while (true) {
    snap = (await a.json<TransferSnapshot>(`/v1/transfers/${res.body.id}`)).body;
    if (["completed", "failed", "cancelled"].includes(snap.state)) break;
    await sleep(50);
  }
  const wallMs = performance.now() - t0;
  const path1 = await pathBytes(cluster.link);
  const cpu1 = [await cpuSeconds(a.pid), await cpuSeconds(b.pid)];
  if (snap.state !== "completed") {
    throw new Error(`image transfer ${snap.state}: ${JSON.stringify(snap.error)}`);
  }
  await Deno.remove(join(b.root, "image.bin")).catch(() => {});
  await sleep(LINK_SETTINGS.confirmMs + 1000);
  return {
    modeAtStart,
    modeAfter: await modeNow(a),
    payloadBytes: snap.sizeBytes,
    wireBytes: snap.wireBytes,
    wallMs,
    bytesPerSec: snap.sizeBytes / (wallMs / 1000),
    codec: snap.codec,
    streams: snap.streams.length,
    chunkBytes: snap.chunkBytes,
    encoding: snap.encoding,
    cpu: { sender: (cpu1[0] - cpu0[0]) / (wallMs / 1000), receiver: (cpu1[1] - cpu0[1]) / (wallMs / 1000) },
    linkBusy: (path1.tx - path0.tx) / Math.max(1, path1.capacity - path0.capacity),
  };
}

// ---- migrations -------------------------------------------------------------------------------------

const cleanups = new Set<() => Promise<void>>();

async function nativeMigration(link: LinkEmulator, image: GuestImage, dir: string): Promise<MigrationResult> {
  const [a, b] = link.hosts;
  const spec = vmSpec("native", image);
  const paths = (side: string): VmSocketPaths => ({
    qmpSocket: join(dir, `${side}.qmp`),
    serialSocket: join(dir, `${side}.ser`),
  });
  const srcPaths = paths("src"), dstPaths = paths("dst");
  let src: NativeQemu | undefined, dst: NativeQemu | undefined;
  let hb: HeartbeatMonitor | undefined;
  let srcQmp: QmpClient | undefined, dstQmp: QmpClient | undefined;
  const cleanup = async () => {
    srcQmp?.close();
    dstQmp?.close();
    await hb?.close();
    await src?.kill();
    await dst?.kill();
  };
  cleanups.add(cleanup);
  try {
    const t0 = performance.now();
    src = new NativeQemu(link, a, qemuArgs(spec, "tcg", srcPaths));
    hb = await HeartbeatMonitor.follow(srcPaths.serialSocket);
    const bootMs = await readyAndSettle(hb, t0);
    dst = new NativeQemu(link, b, [
      ...qemuArgs(spec, "tcg", dstPaths),
      "-incoming",
      `tcp:${b.ip}:${NATIVE_MIGRATION_PORT}`,
    ]);
    await hb.switchTo(dstPaths.serialSocket);
    srcQmp = await QmpClient.connect(srcPaths.qmpSocket);
    dstQmp = await QmpClient.connect(dstPaths.qmpSocket);
    await srcQmp.setCapabilities({ "auto-converge": true, events: true });
    await srcQmp.setParameters({ "downtime-limit": DOWNTIME_LIMIT_MS, "max-bandwidth": MAX_BANDWIDTH });
    const ended = srcQmp.waitForEvent(
      "MIGRATION",
      (ev) => ["completed", "failed", "cancelled"].includes(String(ev.data?.status)),
      { timeoutMs: migrationTimeoutMs },
    );
    ended.catch(() => {});
    const started = performance.now();
    await srcQmp.migrate(`tcp:${b.ip}:${NATIVE_MIGRATION_PORT}`);
    const ev = await ended.catch(() => undefined);
    const wallMs = performance.now() - started;
    const info: MigrationInfo = await srcQmp.queryMigrate();
    if (!ev) {
      await srcQmp.migrateCancel().catch(() => {});
      return {
        finished: false,
        note: `did not finish in ${migrationTimeoutMs / 1000} s (${info.status}; ` +
          `${((info.ram?.transferred ?? 0) / MiB).toFixed(0)} MiB sent, ` +
          `${((info.ram?.remaining ?? 0) / MiB).toFixed(0)} MiB left, ` +
          `${info.ram?.["dirty-sync-count"] ?? "?"} passes)`,
        wallMs,
        bytes: info.ram?.transferred,
        passes: info.ram?.["dirty-sync-count"],
        bootMs,
      };
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
    return {
      finished: true,
      totalTimeMs: info["total-time"],
      downtimeMs: info.downtime,
      hbGapMs: await switchGap(hb),
      wallMs,
      bytes: info.ram?.transferred,
      passes: info.ram?.["dirty-sync-count"],
      bootMs,
    };
  } finally {
    await cleanup();
    cleanups.delete(cleanup);
  }
}

type MigrationSnapshot = {
  id: string;
  phase: string;
  totalTimeMs?: number;
  downtimeMs?: number;
  observedDowntimeMs?: number;
  bytesSent: number;
  passes?: number;
  streams: number;
  transfer?: { wireBytes: number; codec: string };
  events: { at: string; message: string }[];
  error?: { code: string; message: string };
};

/** The events in which the migration retuned QEMU from the forecast, each as "+seconds: message". */
function forecastEvents(snap: MigrationSnapshot): string[] {
  const t0 = Date.parse(snap.events[0]?.at ?? "");
  return snap.events.filter((e) => / forecast: /.test(e.message))
    .map((e) => `+${((Date.parse(e.at) - t0) / 1000).toFixed(1)} s: ${e.message}`);
}

async function agentsMigration(a: WanAgent, b: WanAgent, image: GuestImage): Promise<MigrationResult> {
  const name = "wan-guest";
  const spec = vmSpec(name, image);
  let hb: HeartbeatMonitor | undefined;
  const cleanup = async () => {
    await hb?.close();
    // The VM ends up on b; after a failure it may be on a. Stop it wherever it is.
    for (const agent of [b, a]) {
      await agent.api(`/v1/vms/${name}`, { method: "DELETE" }).then((r) => r.body?.cancel()).catch(() => {});
    }
  };
  cleanups.add(cleanup);
  try {
    const t0 = performance.now();
    const created = await a.json<{ serialSocket: string }>("/v1/vms", {
      method: "POST",
      body: JSON.stringify(spec),
    });
    if (created.status !== 201) {
      throw new Error(`POST /v1/vms answered ${created.status}: ${JSON.stringify(created.body)}`);
    }
    hb = await HeartbeatMonitor.follow(created.body.serialSocket);
    const bootMs = await readyAndSettle(hb, t0);
    // The destination's console appears once the migration is accepted; switchTo retries until then.
    const switching = hb.switchTo(join(b.stateDir, "run", name, "serial.sock"), { connectTimeoutMs: 60_000 });
    switching.catch(() => {});
    const modeAtStart = await modeNow(a);
    const started = performance.now();
    const res = await a.json<MigrationSnapshot>("/v1/migrations", {
      method: "POST",
      body: JSON.stringify({ vm: name, peer: "b" }),
    });
    if (res.status !== 201) {
      throw new Error(`POST /v1/migrations answered ${res.status}: ${JSON.stringify(res.body)}`);
    }
    let snap: MigrationSnapshot;
    while (true) {
      snap = (await a.json<MigrationSnapshot>(`/v1/migrations/${res.body.id}`)).body;
      if (["completed", "failed", "cancelled"].includes(snap.phase)) break;
      if (performance.now() - started > migrationTimeoutMs) {
        await a.api(`/v1/migrations/${res.body.id}`, { method: "DELETE" }).then((r) => r.body?.cancel());
        return {
          modeAtStart,
          finished: false,
          note: `did not finish in ${migrationTimeoutMs / 1000} s (${snap.phase}; ` +
            `${(snap.bytesSent / MiB).toFixed(0)} MiB sent, ${snap.passes ?? "?"} passes)`,
          wallMs: performance.now() - started,
          bytes: snap.bytesSent,
          streams: snap.streams,
          bootMs,
          forecastEvents: forecastEvents(snap),
        };
      }
      await sleep(20);
    }
    const wallMs = performance.now() - started;
    if (snap.phase !== "completed") throw new Error(`migration ${snap.phase}: ${JSON.stringify(snap.error)}`);
    await switching;
    return {
      modeAtStart,
      finished: true,
      totalTimeMs: snap.totalTimeMs,
      downtimeMs: snap.downtimeMs,
      observedDowntimeMs: snap.observedDowntimeMs,
      hbGapMs: await switchGap(hb),
      wallMs,
      bytes: snap.bytesSent,
      wireBytes: snap.transfer?.wireBytes,
      codec: snap.transfer?.codec,
      streams: snap.streams,
      passes: snap.passes,
      bootMs,
      forecastEvents: forecastEvents(snap),
    };
  } finally {
    await cleanup();
    cleanups.delete(cleanup);
  }
}

// ---- one profile ------------------------------------------------------------------------------------

/** The sender's view of b once the first measurements gave it a mode and nothing else is pending. */
function settledView(a: WanAgent): Promise<PeerView> {
  return waitForView(
    a,
    "b",
    (v) => v.mode.current !== null && v.mode.candidate === null && v.parameters !== null,
  );
}

function describeTransfer(t: TransferResult): string {
  const payloadMbit = (t.bytesPerSec * 8 / 1e6).toFixed(0);
  return `${(t.wallMs / 1000).toFixed(1)} s, ${payloadMbit} Mbit/s payload, ratio ` +
    `${(t.payloadBytes / t.wireBytes).toFixed(2)}, codec ${t.codec}, ${t.streams} streams, CPU ` +
    `${t.cpu.sender.toFixed(2)}+${t.cpu.receiver.toFixed(2)}, link busy ${(t.linkBusy * 100).toFixed(0)} %`;
}

function describeMigration(m: MigrationResult): string {
  if (!m.finished) return m.note ?? "did not finish";
  const fmt = (v?: number) => v === undefined ? "?" : v.toFixed(0);
  return `total ${fmt(m.totalTimeMs)} ms, downtime ${fmt(m.downtimeMs)} ms` +
    (m.observedDowntimeMs === undefined ? "" : ` (observed ${fmt(m.observedDowntimeMs)} ms)`) +
    `, heartbeat gap ${fmt(m.hbGapMs)} ms, wall ${fmt(m.wallMs)} ms, ${
      ((m.bytes ?? 0) / MiB).toFixed(0)
    } MiB` +
    (m.wireBytes === undefined ? "" : ` (${(m.wireBytes / MiB).toFixed(0)} MiB on the wire, ${m.codec})`) +
    `, ${m.passes ?? "?"} passes`;
}

async function runProfile(
  profile: ProfileName,
  image: string,
  guest: GuestImage,
  tls: ((id: string) => Record<string, unknown>) | undefined,
  scratch: string,
): Promise<ProfileResult> {
  const result: ProfileResult = {
    profile,
    linkBitsPerSec: linkBitsPerSec(profile),
    tls: tlsMode,
    mode: null,
    modeReason: "",
    parameters: null,
    errors: [],
  };
  const step: Step = async (what, fn) => {
    try {
      await fn();
    } catch (err) {
      result.errors.push(`${what}: ${errText(err)}`);
      log(`  ${what} FAILED: ${errText(err)}`);
    }
  };
  log(`${profile}: starting the emulator and agents`);
  const cluster = await WanCluster.start({
    profile,
    seed,
    link: LINK_SETTINGS,
    extraRoots: [dirname(image), dirname(guest.kernel)],
    perAgent: (host) => tls ? { tls: tls(host.name) } : {},
  });
  clusters.add(cluster);
  try {
    const [a, b] = cluster.agents;
    const view = await settledView(a);
    result.mode = view.mode.current;
    result.modeReason = view.mode.reason;
    result.parameters = view.parameters;
    const streams = view.parameters!.streams.count;
    log(`  mode ${result.mode} (${result.modeReason}); ${streams} streams, TLS ${view.parameters!.tls}`);
    if (parts.has("iperf")) await iperfBoth(cluster.link, streams, result, step);
    if (parts.has("transfer")) {
      await step("image transfer", async () => {
        log(`  transferring the ${imageMib} MiB VM-memory image`);
        result.transfer = await transferImage(cluster, image);
        log(`  image: ${describeTransfer(result.transfer)}`);
      });
    }
    if (parts.has("migration")) {
      await step("native migration", async () => {
        log(`  native migration of a ${guestMib} MiB guest dirtying ${dirtyMibps} MiB/s`);
        result.native = await nativeMigration(cluster.link, guest, scratch);
        log(`  native: ${describeMigration(result.native)}`);
      });
      await step("agents migration", async () => {
        log("  the same migration through the agents");
        result.agents = await agentsMigration(a, b, guest);
        log(`  agents: ${describeMigration(result.agents)}`);
      });
    }
  } finally {
    await cluster.close();
    clusters.delete(cluster);
  }
  return result;
}

type Step = (what: string, fn: () => Promise<void>) => Promise<void>;

async function iperfBoth(
  link: LinkEmulator,
  streams: number,
  result: ProfileResult,
  step: Step,
): Promise<void> {
  await step("iperf3 1 stream", async () => {
    result.iperf1 = await iperf(link, 1);
    log(`  iperf3 1 stream: ${(result.iperf1.bitsPerSec / 1e6).toFixed(1)} Mbit/s`);
  });
  await step(`iperf3 ${streams} streams`, async () => {
    result.iperfN = await iperf(link, streams);
    log(`  iperf3 ${streams} streams: ${(result.iperfN.bitsPerSec / 1e6).toFixed(1)} Mbit/s`);
  });
}

// ---- report -----------------------------------------------------------------------------------------

const mbit = (bitsPerSec?: number) =>
  bitsPerSec === undefined ? "-" : `${(bitsPerSec / 1e6).toFixed(1)} Mbit/s`;
const ratio = (x?: number, y?: number) =>
  x !== undefined && y !== undefined && y > 0 && Number.isFinite(x) ? x / y : undefined;
const times = (r?: number) => r === undefined ? "-" : `${r.toFixed(2)}x`;
const ms = (v?: number) => v === undefined ? "-" : `${v.toFixed(0)} ms`;

/** The figures the acceptance lines judge, for one profile. */
function judged(r: ProfileResult) {
  const t = r.transfer;
  const payloadBitsPerSec = t ? t.bytesPerSec * 8 : undefined;
  const n = r.native, g = r.agents;
  // Agents: POST to completed (destination QEMU start included); native: migrate to the completed event.
  const timeRatio = n?.finished && g?.finished ? ratio(g.wallMs, n.wallMs) : undefined;
  // The worst of QEMU's downtime, the agents' observed pause and the guest's own heartbeat gap.
  const agentsDowntimeMs = g?.finished
    ? Math.max(...[g.downtimeMs, g.observedDowntimeMs, g.hbGapMs].filter((v): v is number => v !== undefined))
    : undefined;
  return {
    payloadBitsPerSec,
    overLink: ratio(payloadBitsPerSec, r.linkBitsPerSec),
    overIperf1: ratio(payloadBitsPerSec, r.iperf1?.bitsPerSec),
    timeRatio,
    agentsDowntimeMs,
  };
}

/** The mode, and its reason where it differs from the first measurement's (traffic moved it). */
function modeCell(m: ModeAt): string {
  return m.reason.startsWith("first measurement") ? String(m.mode) : `${m.mode} (${m.reason})`;
}

/** The mode with the loss the link showed: the path's, and in parentheses what a standing queue dropped. */
function lossCell(m: ModeAt): string {
  const pct = (r: number | undefined) => r === undefined ? "-" : `${(r * 100).toFixed(3)} %`;
  return `${modeCell(m)}; retransmits ${pct(m.retransmitRatio)} (${pct(m.queuedRetransmitRatio)})`;
}

function migrationCell(m: MigrationResult | undefined, pick: (m: MigrationResult) => string): string {
  if (!m) return "-";
  return m.finished ? pick(m) : "did not finish";
}

function table(r: ProfileResult): string {
  const j = judged(r);
  const t = r.transfer, p = r.parameters, n = r.native, g = r.agents;
  const mib = (bytes?: number) => bytes === undefined ? "-" : `${(bytes / MiB).toFixed(0)} MiB`;
  const wall = (m: MigrationResult) => ms(m.wallMs) + (m.finished ? "" : ` (${m.note})`);
  const rows: [string, string][] = [
    ["mode (reason)", `${r.mode} (${r.modeReason})`],
    [
      "parameters",
      p
        ? `${p.streams.count} streams (BDP ${p.streams.forBdp}, loss ${p.streams.forLoss}, ` +
          `${p.streams.congestionControl}), codec bias ${p.codecBias}, TLS ${
            p.tls ? "asked" : "not asked"
          } ` +
          `(agents run tls.mode ${r.tls})`
        : "-",
    ],
    ["link rate a → b", mbit(r.linkBitsPerSec)],
  ];
  if (parts.has("iperf")) {
    rows.push(
      ["iperf3, 1 stream", mbit(r.iperf1?.bitsPerSec)],
      [`iperf3, ${r.iperfN?.streams ?? "?"} streams`, mbit(r.iperfN?.bitsPerSec)],
    );
  }
  if (parts.has("transfer")) {
    rows.push(
      [
        `dwcp image transfer (${imageMib} MiB)`,
        t
          ? `${mbit(j.payloadBitsPerSec)} payload in ${(t.wallMs / 1000).toFixed(1)} s; codec ${t.codec}, ` +
            `${t.streams} streams, ${(t.chunkBytes / MiB).toFixed(0)} MiB chunks, ${
              mib(t.wireBytes)
            } on the ` +
            `wire (ratio ${(t.payloadBytes / t.wireBytes).toFixed(2)})`
          : "-",
      ],
      [
        "  CPU (sender+receiver), link busy",
        t
          ? `${t.cpu.sender.toFixed(2)}+${t.cpu.receiver.toFixed(2)} cores, ${
            (t.linkBusy * 100).toFixed(0)
          } %`
          : "-",
      ],
      ["  mode at its start", t ? modeCell(t.modeAtStart) : "-"],
      [
        `  mode ${(LINK_SETTINGS.confirmMs + 1000) / 1000} s after it, loss (queued)`,
        t ? lossCell(t.modeAfter) : "-",
      ],
      ["  payload / link rate", times(j.overLink)],
      ["  payload / iperf3 1 stream", times(j.overIperf1)],
    );
  }
  if (parts.has("migration")) {
    rows.push(
      ["migration, native: wall (migrate → completed)", n ? wall(n) : "-"],
      ["  total (QEMU)", migrationCell(n, (m) => ms(m.totalTimeMs))],
      ["  downtime (QEMU), heartbeat gap", migrationCell(n, (m) => `${ms(m.downtimeMs)}, ${ms(m.hbGapMs)}`)],
      ["  RAM sent, passes", n ? `${mib(n.bytes)}, ${n.passes ?? "?"}` : "-"],
      ["migration, agents: wall (POST → completed)", g ? wall(g) : "-"],
      ["  mode at its start", g?.modeAtStart ? modeCell(g.modeAtStart) : "-"],
      ["  total (QEMU)", migrationCell(g, (m) => ms(m.totalTimeMs))],
      [
        "  downtime (QEMU, observed), heartbeat gap",
        migrationCell(g, (m) => `${ms(m.downtimeMs)}, ${ms(m.observedDowntimeMs)}, ${ms(m.hbGapMs)}`),
      ],
      [
        "  QEMU stream / on the wire, passes",
        g
          ? `${mib(g.bytes)} / ${mib(g.wireBytes)}, codec ${g.codec ?? "-"}, ${g.streams ?? "?"} streams, ` +
            `${g.passes ?? "?"} passes`
          : "-",
      ],
      ["  agents / native wall time", times(j.timeRatio)],
      [
        "  QEMU retuned from the forecast",
        g?.forecastEvents ? `${g.forecastEvents.length} times${g.forecastEvents.length ? ":" : ""}` : "-",
      ],
      ...(g?.forecastEvents ?? []).map((e): [string, string] => ["", `    ${e}`]),
    );
  }
  const width = Math.max(...rows.map(([k]) => k.length));
  const lines = rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`);
  for (const e of r.errors) lines.push(`ERROR ${e}`);
  return [`== ${r.profile} ==`, ...lines].join("\n");
}

function acceptance(results: ProfileResult[]): string[] {
  const lines: string[] = [];
  const byName = (p: ProfileName) => results.find((r) => r.profile === p);
  const throughput = (["wan", "intercontinental"] as const).map((p) => ({ p, r: byName(p) }));
  if (throughput.some(({ r }) => r) && parts.has("transfer")) {
    const parts = throughput.filter(({ r }) => r).map(({ p, r }) => {
      const j = judged(r!);
      const ok = (j.overLink ?? 0) >= 4 && (j.overIperf1 ?? 0) >= 2;
      return { ok, text: `${p}: ${times(j.overLink)} the link rate, ${times(j.overIperf1)} iperf3 1 stream` };
    });
    const measured = throughput.every(({ r }) => r);
    lines.push(
      `${measured ? (parts.every((x) => x.ok) ? "HOLDS" : "MISSES") : "PARTLY MEASURED"}: On wan and ` +
        `intercontinental, a dwcp transfer of the VM-memory image delivers >= 4x the link rate in payload ` +
        `bytes per second, and >= 2x single-stream iperf3 (${
          parts.map((x) => `${x.ok ? "ok" : "miss"} ${x.text}`).join("; ")
        })`,
    );
  }
  const wan = byName("wan");
  if (wan && parts.has("migration")) {
    const j = judged(wan);
    const ok = j.timeRatio !== undefined && j.timeRatio <= 0.5 && j.agentsDowntimeMs !== undefined &&
      j.agentsDowntimeMs <= 1000;
    const nativeNote = wan.native && !wan.native.finished ? `; native ${wan.native.note}` : "";
    lines.push(
      `${
        ok ? "HOLDS" : "MISSES"
      }: On wan, live migration through the agents finishes in <= 0.5x the native ` +
        `QEMU time, with downtime <= 1 s (agents/native wall ${times(j.timeRatio)}, worst agents downtime ` +
        `${ms(j.agentsDowntimeMs)}${nativeNote})`,
    );
  }
  return lines;
}

// ---- the run ----------------------------------------------------------------------------------------

const clusters = new Set<WanCluster>();
const tempDirs = new Set<string>();

let cleaning: Promise<void> | undefined;
function cleanup(): Promise<void> {
  return cleaning ??= (async () => {
    await Promise.allSettled([...cleanups].map((c) => c()));
    await Promise.allSettled([...clusters].map((c) => c.close()));
    for (const d of tempDirs) await Deno.remove(d, { recursive: true }).catch(() => {});
  })();
}

const onSignal = () => {
  log("interrupted: cleaning up");
  void cleanup().finally(() => Deno.exit(130));
};
Deno.addSignalListener("SIGINT", onSignal);
Deno.addSignalListener("SIGTERM", onSignal);

async function tempDir(prefix: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix });
  tempDirs.add(dir);
  return dir;
}

/** The VM-memory image: --image as given, else a snapshot of a freshly booted test guest's RAM. */
async function memoryImage(): Promise<{ path: string; note: string }> {
  if (args.image) {
    const abs = await Deno.realPath(args.image).catch((err) => {
      throw new Error(`--image ${args.image}: ${errText(err)}; give an existing file or leave it out`);
    });
    return { path: abs, note: `given image ${abs}` };
  }
  const dir = await tempDir("dwcp-wan-image-");
  const guest = await BenchGuest.boot({ dir, memoryMiB: imageMib, fillMib: Math.floor(imageMib / 2), log });
  try {
    const path = join(dir, "memory.bin");
    await guest.snapshot(path);
    return { path, note: guest.note };
  } finally {
    await guest.close();
  }
}

const results: ProfileResult[] = [];
try {
  log(
    `dwcp on emulated links: profiles ${profiles.join(",")}; image ${args.image ?? `${imageMib} MiB`}; ` +
      `guest ${guestMib} MiB (${guestDataMib} MiB data, ${dirtyMibps} MiB/s dirtied); TLS ${tlsMode}; ` +
      `${navigator.hardwareConcurrency} CPU(s)`,
  );
  const image = await memoryImage();
  log(`image: ${image.note}`);
  const guest = await guestImage();
  const scratch = await tempDir("dwcp-wan-native-");
  let tls: ((id: string) => Record<string, unknown>) | undefined;
  if (tlsMode === "auto") {
    const dir = await tempDir("dwcp-wan-certs-");
    const certs = await certInit({ dir, ids: ["a", "b"] });
    tls = (id) => ({ mode: "auto", ca: certs.ca, cert: join(dir, `${id}.crt`), key: join(dir, `${id}.key`) });
  }
  for (const profile of profiles) {
    try {
      const r = await runProfile(profile, image.path, guest, tls, scratch);
      results.push(r);
      console.log(table(r) + "\n");
    } catch (err) {
      if (cleaning) throw err;
      log(`${profile} FAILED: ${errText(err)}`);
      results.push({
        profile,
        linkBitsPerSec: linkBitsPerSec(profile),
        tls: tlsMode,
        mode: null,
        modeReason: "",
        parameters: null,
        errors: [errText(err)],
      });
    }
  }
  for (const line of acceptance(results)) console.log(line);
  if (args.out) {
    await Deno.writeTextFile(
      args.out,
      JSON.stringify(
        {
          profiles,
          image: { path: args.image ?? null, mib: imageMib, note: image.note },
          guest: { memoryMiB: guestMib, dataMib: guestDataMib, dirtyMibps, heartbeatMs: HEARTBEAT_MS },
          migration: {
            downtimeLimitMs: DOWNTIME_LIMIT_MS,
            autoConverge: true,
            timeoutMs: migrationTimeoutMs,
          },
          tls: tlsMode,
          iperfSeconds,
          seed,
          cpus: navigator.hardwareConcurrency,
          results: results.map((r) => ({ ...r, judged: judged(r) })),
          acceptance: acceptance(results),
        },
        null,
        2,
      ) + "\n",
    );
    log(`results written to ${args.out}`);
  }
  if (results.some((r) => r.errors.length)) Deno.exitCode = 1;
} finally {
  await cleanup();
  Deno.removeSignalListener("SIGINT", onSignal);
  Deno.removeSignalListener("SIGTERM", onSignal);
}
