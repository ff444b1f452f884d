/**
 * `dwcp demo`: a self-contained live-migration demonstration on one host. Starts two agents (a and b) as
 * child processes on loopback, boots a small guest on a, watches its heartbeat on the serial console,
 * migrates it a → b and back b → a with the same follow/report code as `dwcp migrate`, checks that the
 * heartbeat carried on (same boot, counter never going backwards), and removes everything it made, also
 * when interrupted.
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
// The demo guest (a Debian kernel plus a busybox initramfs printing a heartbeat) and its console reader
// are test support code. Importing them here is acceptable for a demonstration, which is what they were
// built for; nothing else in src/ depends on tests/.
import { guestAppend, guestImage } from "../../tests/support/guest_image.ts";
import { HeartbeatMonitor } from "../../tests/support/heartbeat.ts";
import { VM_LIMITS } from "../vm/spec.ts";
import { ApiClient, type MigrationSnapshot } from "./client.ts";
import { noArguments, wholeNumber } from "./common.ts";
import { formatDuration } from "./format.ts";
import { formatMs, migrationReport, watchMigration } from "./migrate.ts";
import { type Accelerator, parseAccel } from "./vm.ts";

const MAIN = fileURLToPath(new URL("../../main.ts", import.meta.url));
const VM_NAME = "demo";
const DEFAULT_MEMORY_MIB = 256;
const DEFAULT_DIRTY_MIBPS = 8;
const MEMORY_RANGE = `${VM_LIMITS.minMemoryMiB}..${VM_LIMITS.maxMemoryMiB}`;
/** Guest memory its kernel and initramfs need besides the data: with less, the guest runs out of memory. */
const GUEST_OVERHEAD_MIB = 80;
/** Heartbeats the destination must print after a migration before the direction counts as good. */
const BEATS_AFTER = 25;

export const DEMO_USAGE = `usage: dwcp demo [options]

A self-contained live-migration demonstration on this host: starts two agents (a and b) on loopback
ports with fresh state directories, boots a small guest on a (a Debian kernel and a busybox initramfs,
built from Debian packages on first use and cached in .cache/guest), waits for its heartbeat on the
serial console, live-migrates it a → b and then b → a, and checks that the heartbeat went on with the
same boot and a counter that never went backwards. Everything it starts is stopped at the end, also on
Ctrl-C. Needs qemu-system-x86_64; uses KVM when it works, else TCG.

  --memory MiB           guest memory, ${MEMORY_RANGE} (default ${DEFAULT_MEMORY_MIB});
                         the guest fills half of it with data (at most all but ${GUEST_OVERHEAD_MIB} MiB)
  --dirty MIBPS          MiB per second of that data the guest re-writes (default ${DEFAULT_DIRTY_MIBPS})
  --accel auto|kvm|tcg   accelerator for the guest (default auto)
  -h, --help             show this help

exit status: 0 both migrations completed and the heartbeat checks held, 1 otherwise, 2 usage error,
130 interrupted`;

/** MiB of data the guest holds: half its memory, less where its kernel would run short. */
export function dataMib(memoryMiB: number): number {
  return Math.max(1, Math.min(Math.floor(memoryMiB / 2), memoryMiB - GUEST_OVERHEAD_MIB));
}

function shorten(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max - 3)}...` : text;
}

/** Settles as `p`, or rejects with the signal's reason once it aborts. */
function until<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/** Settles as `p`, or with undefined after ms. */
async function within<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([p, new Promise<undefined>((r) => timer = setTimeout(() => r(undefined), ms))]);
  } finally {
    clearTimeout(timer);
  }
}

/** A loopback port the OS handed out, free a moment ago. */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  listener.close();
  return listener.addr.port;
}

function randomHex(bytes: number): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, "0"))
    .join("");
}

/** Reads a stream (an agent's log) to its end, handing each piece of text to `keep`. */
function drainInto(stream: ReadableStream<Uint8Array>, keep: (text: string) => void): void {
  stream.pipeThrough(new TextDecoderStream()).pipeTo(new WritableStream({ write: keep })).catch(() => {});
}

/** An agent started as a child process of the demo. */
class DemoAgent {
  #log = "";
  #api?: ApiClient;
  readonly exited: Promise<Deno.CommandStatus>;

  private constructor(
    readonly id: string,
    readonly child: Deno.ChildProcess,
    readonly stateDir: string,
    readonly dataAddr: string,
  ) {
    this.exited = child.status;
  }

  /** Whether the agent has reported its API address. */
  get ready(): boolean {
    return this.#api !== undefined;
  }

  get api(): ApiClient {
    if (!this.#api) throw new Error(`agent ${this.id} has not started`);
    return this.#api;
  }

  get log(): string {
    return this.#log;
  }

  /**
   * Spawns `main.ts agent` and resolves once it reports its addresses. The child is handed to `track` at
   * once, so it is stopped even if this fails half-way.
   */
  static async start(
    opts: {
      id: string;
      stateDir: string;
      dataPort: number;
      roots: string[];
      peers: string[];
      secret: string;
    },
    track: (agent: DemoAgent) => void,
    signal: AbortSignal,
  ): Promise<DemoAgent> {
    // Only the demo's own settings: DWCP_* variables of this shell (a config, a token, peers) stay out.
    const env = Object.fromEntries(
      Object.entries(Deno.env.toObject()).filter(([k]) => !k.startsWith("DWCP_")),
    );
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-all",
        "--quiet",
        MAIN,
        "agent",
        "--id",
        opts.id,
        "--api",
        "127.0.0.1:0",
        "--data",
        `127.0.0.1:${opts.dataPort}`,
        "--state-dir",
        opts.stateDir,
        ...opts.roots.flatMap((r) => ["--root", r]),
        ...opts.peers.flatMap((p) => ["--peer", p]),
      ],
      clearEnv: true,
      env: { ...env, DWCP_SECRET: opts.secret, NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const agent = new DemoAgent(opts.id, child, opts.stateDir, `127.0.0.1:${opts.dataPort}`);
    track(agent);
    drainInto(child.stderr, (s) => void (agent.#log = (agent.#log + s).slice(-20_000)));
    let seen = "";
    const ready = (async () => {
      const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
      while (!/data port \S+:\d+/.test(seen)) {
        const { value, done } = await reader.read();
        if (done) break;
        seen += value;
      }
      // Whatever the agent prints later is drained, so it never blocks on a full pipe.
      (async () => {
        while (!(await reader.read()).done) { /* drain */ }
      })().catch(() => {});
      return /API (http:\/\/\S+?),/.exec(seen)?.[1];
    })();
    const api = await until(within(ready, 60_000), signal);
    if (!api) {
      const status = await within(agent.exited, 100);
      const what = status ? `exited with code ${status.code}` : "did not report its address in 60 s";
      throw new Error(`agent ${opts.id} ${what}:\n${seen}${agent.log}`);
    }
    agent.#api = new ApiClient(api);
    return agent;
  }

  /** SIGTERM (the agent stops its guests and exits); SIGKILL if it has not exited in 20 s. */
  async stop(): Promise<void> {
    try {
      this.child.kill("SIGTERM");
    } catch { /* already gone */ }
    if (await within(this.exited, 20_000)) return;
    try {
      this.child.kill("SIGKILL");
    } catch { /* already gone */ }
    await this.exited;
  }
}

interface Direction {
  from: string;
  to: string;
  migration?: MigrationSnapshot;
  /** The heartbeat gap across the switch from the source's console to the destination's. */
  gapMs?: number;
  /** Why this direction did not pass; undefined when it did. */
  problem?: string;
}

class Demo {
  readonly agents: DemoAgent[] = [];
  dir?: string;
  monitor?: HeartbeatMonitor;
  /** QEMU pids seen, so that none outlives the demo if an agent had to be killed. */
  readonly qemuPids = new Set<number>();

  constructor(
    readonly opts: { memoryMiB: number; dirtyMibps: number; accel: Accelerator },
    readonly signal: AbortSignal,
  ) {}

  async run(): Promise<number> {
    const { memoryMiB, dirtyMibps, accel } = this.opts;
    const memMib = dataMib(memoryMiB);
    const say = (text: string) => console.log(text);
    say(
      `dwcp demo: two agents on this host, a guest with ${memoryMiB} MiB of memory (${memMib} MiB of data, ` +
        `${dirtyMibps} MiB/s re-written), live-migrated a → b and back`,
    );

    say("guest image: getting it (built from Debian packages on first use, then cached)");
    const image = await until(guestImage(), this.signal);
    const cacheDir = dirname(dirname(image.kernel));
    say(`guest image: ${dirname(image.kernel)}`);

    this.dir = await Deno.makeTempDir({ prefix: "dwcp-demo-" });
    const secret = randomHex(32);
    const ports = { a: freePort(), b: freePort() };
    for (const [id, other] of [["a", "b"], ["b", "a"]] as const) {
      const stateDir = join(this.dir, id);
      const agent = await DemoAgent.start(
        {
          id,
          stateDir,
          dataPort: ports[id],
          roots: [cacheDir, join(stateDir, "files")],
          peers: [`${other}=127.0.0.1:${ports[other]}`],
          secret,
        },
        (agent) => this.agents.push(agent),
        this.signal,
      );
      say(`agent ${id}: API ${agent.api.baseUrl}, data port ${agent.dataAddr}, state ${stateDir}`);
    }
    const [a, b] = this.agents;

    const vm = await until(
      a.api.startVm({
        name: VM_NAME,
        memoryMiB,
        vcpus: 1,
        kernel: image.kernel,
        initrd: image.initrd,
        cmdline: guestAppend({ memMib, dirtyMibps }),
        accelerator: accel,
      }),
      this.signal,
    );
    if (vm.pid !== undefined) this.qemuPids.add(vm.pid);
    say(
      `VM ${vm.name} started on a: pid ${vm.pid ?? "?"}, accelerator ${vm.accelerator ?? "?"}` +
        (vm.acceleratorReason ? ` (${shorten(vm.acceleratorReason.split(": ")[0], 100)})` : ""),
    );
    const mon = this.monitor = await until(HeartbeatMonitor.follow(vm.serialSocket), this.signal);
    say(`waiting for the guest to boot and fill ${memMib} MiB (its heartbeat starts then)`);
    const first = await until(mon.waitForCounter(1, 600_000), this.signal);
    say(
      `guest runs: boot id ${mon.bootId}, heartbeat ${first.counter} at uptime ${first.uptime.toFixed(2)} s`,
    );

    const directions: Direction[] = [];
    for (const [from, to] of [[a, b], [b, a]]) {
      const d = await this.migrate(from, to);
      directions.push(d);
      if (d.problem) break;
    }

    say("\nsummary");
    for (const d of directions) {
      const m = d.migration;
      const figures = m
        ? `${m.phase} in ${formatDuration(m.elapsedMs)}, downtime ${
          m.downtimeMs === undefined ? "-" : formatMs(m.downtimeMs)
        } (QEMU) / ${m.observedDowntimeMs === undefined ? "-" : formatMs(m.observedDowntimeMs)} observed`
        : "not started";
      const gap = d.gapMs === undefined ? "" : `, heartbeat gap ${formatMs(d.gapMs)}`;
      say(`  ${d.from} → ${d.to}  ${figures}${gap}${d.problem ? `: ${d.problem}` : ""}`);
    }
    const heartbeatOk = !mon.wentBackwards && !mon.bootIdChanged;
    say(
      `  heartbeat: ${mon.count} beats, counter 1..${mon.lastCounter}` +
        (mon.wentBackwards ? ", WENT BACKWARDS" : ", never went backwards") +
        (mon.bootIdChanged ? `, BOOT ID CHANGED (first ${mon.bootId})` : `, same boot id ${mon.bootId}`) +
        (mon.skipped ? ` (${mon.skipped} heartbeats lost on the console)` : ""),
    );
    const passed = directions.length === 2 && directions.every((d) => !d.problem) && heartbeatOk;
    say(passed ? "demo passed" : "demo FAILED");
    return passed ? 0 : 1;
  }

  /** Migrates the guest from → to, follows it, then checks the heartbeat carries on at the destination. */
  async migrate(from: DemoAgent, to: DemoAgent): Promise<Direction> {
    const mon = this.monitor!;
    const d: Direction = { from: from.id, to: to.id };
    console.log(`\nmigrating ${from.id} → ${to.id}`);
    const switchesBefore = mon.switches.length;
    const started = await until(from.api.startMigration({ vm: VM_NAME, peer: to.id }), this.signal);
    // The destination's QEMU runs (waiting for the stream) once the migration is accepted: follow its
    // console too, so the heartbeat monitor moves over when the guest first prints there.
    const incoming = (await until(to.api.listVms(), this.signal)).find((v) =>
      v.name === VM_NAME && v.state !== "stopped"
    );
    if (incoming?.pid !== undefined) this.qemuPids.add(incoming.pid);
    if (incoming) await until(mon.switchTo(incoming.serialSocket, { connectTimeoutMs: 10_000 }), this.signal);
    const final = d.migration = await watchMigration(from.api, started, { signal: this.signal, show: true });
    console.log(migrationReport(final));
    if (final.phase !== "completed") {
      d.problem = final.error ? `${final.error.code}: ${final.error.message}` : final.phase;
      console.error(`error ${d.problem}`);
      return d;
    }
    const target = mon.lastCounter + BEATS_AFTER;
    try {
      await until(mon.waitForCounter(target, 60_000), this.signal);
    } catch (err) {
      if (this.signal.aborted) throw err;
      d.problem = `no heartbeat from ${to.id} after the migration: ${(err as Error).message.split("\n")[0]}`;
      return d;
    }
    const sw = mon.switches.length > switchesBefore ? mon.switches[mon.switches.length - 1] : undefined;
    d.gapMs = sw?.ms;
    if (!sw) d.problem = `the heartbeat did not move to ${to.id}'s console`;
    else if (mon.wentBackwards) d.problem = "the heartbeat counter went backwards";
    else if (mon.bootIdChanged) d.problem = "the guest's boot id changed (it rebooted)";
    console.log(
      sw
        ? `heartbeat on ${to.id}: ${sw.before} on ${from.id}, then ${sw.after} on ${to.id} ${
          formatMs(sw.ms)
        } later; now at ${mon.lastCounter}, boot id ${mon.bootIdChanged ? "CHANGED" : "unchanged"}`
        : `heartbeat: ${d.problem}`,
    );
    return d;
  }

  /** Stops the guest, the agents and any QEMU left behind, and removes the state directories. */
  async cleanup(): Promise<void> {
    if (this.agents.length) console.error("stopping the guest and the agents");
    await this.monitor?.close().catch(() => {});
    await Promise.all(this.agents.map(async (agent) => {
      const vms = agent.ready ? await within(agent.api.listVms().catch(() => []), 5_000) ?? [] : [];
      for (const vm of vms.filter((v) => v.state !== "stopped")) {
        if (vm.pid !== undefined) this.qemuPids.add(vm.pid);
        await within(agent.api.stopVm(vm.name).catch(() => {}), 15_000);
      }
      await agent.stop();
    }));
    // An agent killed after 20 s may have left its QEMU running: end those of this demo (their command
    // lines name sockets in the demo's directory), and nothing else.
    for (const pid of this.qemuPids) {
      const cmdline = await Deno.readTextFile(`/proc/${pid}/cmdline`).catch(() => "");
      if (!this.dir || !cmdline.includes(this.dir)) continue;
      try {
        Deno.kill(pid, "SIGKILL");
      } catch { /* gone */ }
    }
    if (this.dir) await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }

  /** The end of each agent's log, for a failure message. */
  logs(): string {
    return this.agents.map((a) => {
      const lines = a.log.trimEnd().split("\n").slice(-15).join("\n");
      return `--- agent ${a.id} log (last lines) ---\n${lines}`;
    }).join("\n");
  }
}

export async function demoCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      memory: { type: "string" },
      dirty: { type: "string" },
      accel: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(DEMO_USAGE);
    return 0;
  }
  noArguments(positionals);
  const memoryMiB = wholeNumber("--memory", values.memory, VM_LIMITS.minMemoryMiB, VM_LIMITS.maxMemoryMiB) ??
    DEFAULT_MEMORY_MIB;
  const dirtyMibps = wholeNumber("--dirty", values.dirty, 0, 100_000) ?? DEFAULT_DIRTY_MIBPS;
  const accel = parseAccel(values.accel);

  // Ctrl-C (or SIGTERM) stops the demo and cleans up; a second Ctrl-C quits at once.
  const interrupt = new AbortController();
  const onSignal = () => {
    if (interrupt.signal.aborted) Deno.exit(130);
    console.error("\ninterrupted: cleaning up (Ctrl-C again to quit at once)");
    interrupt.abort(new Error("interrupted"));
  };
  const signals = ["SIGINT", "SIGTERM"] as const;
  for (const s of signals) Deno.addSignalListener(s, onSignal);
  const demo = new Demo({ memoryMiB, dirtyMibps, accel }, interrupt.signal);
  try {
    return await demo.run();
  } catch (err) {
    if (interrupt.signal.aborted) return 130;
    console.error(`demo failed: ${(err as Error).message}`);
    if (demo.agents.length) console.error(demo.logs());
    return 1;
  } finally {
    await demo.cleanup();
    for (const s of signals) Deno.removeSignalListener(s, onSignal);
  }
}
