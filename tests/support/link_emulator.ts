/**
 * Emulated network links for tests and benchmarks (issue 5): two or more hosts as network namespaces,
 * joined through `linkem` (tests/support/linkem/linkem.c), a userspace forwarder on TUN devices that
 * applies, per direction, one-way delay, jitter, a rate limit with a bounded drop-tail queue, random loss,
 * or the capacity of a mahimahi trace. This kernel has no netem, hence the forwarder. Kernel TCP runs end
 * to end through it, so windows, slow start and loss recovery behave as on a real path.
 *
 * ```ts
 * await using link = await LinkEmulator.start({ profile: "wan", seed: 7 });
 * const [a, b] = link.hosts;                      // { name: "a", netns: "dwcp-lem-…-a", ip: "10.77.0.1" }
 * const server = link.spawn(b, ["iperf3", "-s", "-1"]);
 * await link.exec(a, ["ping", "-c", "3", b.ip]);
 * await link.setProfile("intercontinental");      // live, under running traffic
 * await link.blackout(2000);                      // every packet dropped for 2 s
 * console.log(await link.counters());
 * ```
 *
 * Semantics (what the numbers in a profile mean):
 * - `delayMs` is added to the path on top of what forwarding itself costs (about 0.05 ms each way here, as
 *   netem adds its delay on top of the stack). Jitter is uniform in ±`jitterMs` and never reorders: a
 *   packet waits for the one before it, as with netem plus a rate limit.
 * - `rateBitsPerSec` counts IP bytes (headers included, no link-layer framing). TCP goodput is therefore
 *   at most (MTU − 52) / MTU of it: 96.5 % at MTU 1500.
 * - The queue is drop-tail, bounded by `queueMs` (no packet waits longer than that for the bottleneck,
 *   its own transmission included) and/or `queueBytes`. The fixed-rate profiles size it at one
 *   bandwidth-delay product in time (the base RTT), the classic rule that lets one loss-based TCP flow
 *   fill the link; `lan` gets 1 ms instead, since one BDP there (0.2 ms) would be four jumbo frames, and
 *   `cellular` 200 ms, since cellular networks buffer deeply.
 * - Packets may leave up to a timer's lateness early (about 0.03 ms here): the forwarder wakes that much
 *   ahead of the next due packet, so that on average packets leave on time.
 * - `trace` names a mahimahi file: each line, a millisecond timestamp, is one opportunity to deliver 1500
 *   bytes; the trace loops. It replaces `rateBitsPerSec`.
 * - Loss is drawn per packet from a PRNG seeded by `seed`, independently per direction.
 * - The MTU is fixed per emulator (from the start profile, or `mtuBytes`); `setProfile` keeps it.
 *   `lan` uses 65000 bytes: a real 10 Gbit/s NIC hands the stack 64 KB segments through TSO/GRO, and a
 *   forwarder that moved 1500-byte packets would top out near 1-2 Gbit/s on two cores. `metro` uses 9000
 *   (jumbo frames on a datacenter interconnect); the internet profiles use 1500.
 * - Checksums are offloaded between the namespaces (virtio headers on the TUN), as between veth ends;
 *   a packet capture inside a namespace shows TCP checksums as unfilled.
 *
 * Each instance gets its own namespaces (`dwcp-lem-<pid>-<n>-<host>`) and addresses 10.77.0.<i+1>/24,
 * so tests can run in parallel. `close()` (idempotent) kills what `spawn` started and the forwarder and
 * removes the namespaces; the same happens synchronously if the process ends on an uncaught error. A run
 * that was killed outright leaves namespaces behind: the next `start()` in any process removes those
 * whose creating process is gone, with what still runs inside them.
 *
 * Self-check: `deno run -A tests/support/link_emulator.ts --check [profile ...]` prints, per profile, the
 * measured RTT and throughput against what was asked (see `checkProfile` for what exactly is measured).
 */
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const SOURCE = fileURLToPath(new URL("./linkem/linkem.c", import.meta.url));
const NETNS_PREFIX = "dwcp-lem-";
const SUBNET_PREFIX = "10.77.0.";
const TUN_DEVICE = "tun0";
const MAX_HOSTS = 8;

/** One direction of a path between two hosts. */
export interface PathSpec {
  /** One-way delay added to every packet. */
  delayMs: number;
  /** Uniform jitter, ± this much; never reorders. */
  jitterMs?: number;
  /** Bottleneck rate in IP bits per second; unlimited when omitted (and no trace). */
  rateBitsPerSec?: number;
  /** Drop-tail limit: the longest a packet may wait for the bottleneck, its transmission included. */
  queueMs?: number;
  /** Drop-tail limit in bytes queued for the bottleneck. */
  queueBytes?: number;
  /** Probability that a packet is dropped, 0..1. */
  lossRate?: number;
  /** A mahimahi trace file (1500-byte delivery opportunities at ms timestamps); replaces the rate. */
  trace?: string;
}

export interface LinkProfile {
  name: string;
  /** From a lower-numbered host to a higher one (a → b): the "up" direction of a cellular trace. */
  forward: PathSpec;
  /** From a higher-numbered host to a lower one (b → a). */
  reverse: PathSpec;
  mtuBytes: number;
}

export type ProfileName = "lan" | "metro" | "wan" | "intercontinental" | "cellular";

/** Where the mahimahi traces live: DWCP_TRACES_DIR, else the shared folder beside the checkout. */
export function tracesDir(): string {
  const fromEnv = Deno.env.get("DWCP_TRACES_DIR");
  if (fromEnv) return fromEnv;
  for (const dir of [`${REPO}../shared/traces/mahimahi`, `${REPO}shared/traces/mahimahi`]) {
    try {
      if (Deno.statSync(dir).isDirectory) return dir;
    } catch { /* try the next */ }
  }
  return `${REPO}../shared/traces/mahimahi`;
}

function symmetric(name: string, mtuBytes: number, spec: PathSpec): LinkProfile {
  return { name, mtuBytes, forward: spec, reverse: spec };
}

/** The standard profiles of issue 5. Queue sizes: about one base RTT of the rate (see module comment). */
export const PROFILES: Record<ProfileName, LinkProfile> = {
  lan: symmetric("lan", 65000, { delayMs: 0.1, rateBitsPerSec: 10e9, queueMs: 1 }),
  metro: symmetric("metro", 9000, { delayMs: 5, rateBitsPerSec: 1e9, queueMs: 10 }),
  wan: symmetric("wan", 1500, { delayMs: 25, rateBitsPerSec: 100e6, queueMs: 50, lossRate: 0.001 }),
  intercontinental: symmetric("intercontinental", 1500, {
    delayMs: 75,
    rateBitsPerSec: 50e6,
    queueMs: 150,
    lossRate: 0.005,
  }),
  // T-Mobile LTE, stationary: 13.3 Mbit/s up, 16.7 Mbit/s down on average over its 140 s, with dips.
  // Cellular networks buffer deeply; 200 ms is at the low end of what they show.
  cellular: {
    name: "cellular",
    mtuBytes: 1500,
    forward: { delayMs: 40, trace: `${tracesDir()}/TMobile-LTE-short.up`, queueMs: 200 },
    reverse: { delayMs: 40, trace: `${tracesDir()}/TMobile-LTE-short.down`, queueMs: 200 },
  },
};

export interface EmulatedHost {
  index: number;
  /** "a", "b", ... */
  name: string;
  netns: string;
  ip: string;
}

export interface EmulatorOptions {
  profile: ProfileName | LinkProfile;
  /** Seeds loss and jitter; the same seed gives the same drop pattern for the same packet sequence. */
  seed?: number;
  /** Number of hosts, 2..8; every ordered pair is an independent path (default 2). */
  hostCount?: number;
  /** Overrides the profile's MTU. */
  mtuBytes?: number;
}

export interface PathCounters {
  from: number;
  to: number;
  rxPackets: number;
  rxBytes: number;
  txPackets: number;
  txBytes: number;
  dropLoss: number;
  dropQueue: number;
  dropBlackout: number;
  /** Dropped because the forwarder's own buffer for the path was full (should stay 0). */
  dropOverflow: number;
  writeErrors: number;
  backlogBytes: number;
  inFlightPackets: number;
  /** Bytes the path could have carried since its parameters were set (rate × time, or the trace). */
  capacityBytes: number;
  paramsAgeMs: number;
  /** How late, on average and at worst, packets were written compared with their due time. */
  lateUsMean: number;
  lateUsMax: number;
}

export interface Counters {
  /** The forwarder's monotonic clock. */
  nowMs: number;
  blackoutLeftMs: number;
  /** Packets that were not IPv4 to another host (IPv6 neighbour chatter, say), per source host. */
  unroutable: number[];
  paths: PathCounters[];
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  /** Return a non-zero exit instead of throwing. */
  allowFailure?: boolean;
  stdin?: string;
}

export interface SpawnOptions {
  stdout?: "piped" | "null" | "inherit";
  stderr?: "piped" | "null" | "inherit";
  stdin?: "piped" | "null";
}

// ---- validation ----

function checkNumber(where: string, key: string, value: unknown, min: number, max: number): void {
  if (typeof value !== "number" || !Number.isFinite(value) || value < min || value > max) {
    throw new RangeError(`${where}.${key} = ${String(value)}: expected a number in [${min}, ${max}]`);
  }
}

function validatePath(where: string, spec: PathSpec): void {
  checkNumber(where, "delayMs", spec.delayMs, 0, 60_000);
  if (spec.jitterMs !== undefined) checkNumber(where, "jitterMs", spec.jitterMs, 0, 60_000);
  if (spec.rateBitsPerSec !== undefined) checkNumber(where, "rateBitsPerSec", spec.rateBitsPerSec, 1, 1e12);
  if (spec.queueMs !== undefined) checkNumber(where, "queueMs", spec.queueMs, 0, 60_000);
  if (spec.queueBytes !== undefined) checkNumber(where, "queueBytes", spec.queueBytes, 0, 1e12);
  if (spec.lossRate !== undefined) checkNumber(where, "lossRate", spec.lossRate, 0, 1);
  if (spec.trace !== undefined) {
    if (spec.rateBitsPerSec !== undefined) {
      throw new RangeError(`${where}: give either rateBitsPerSec or trace, not both (a trace sets the rate)`);
    }
    try {
      Deno.statSync(spec.trace);
    } catch {
      throw new Deno.errors.NotFound(
        `${where}.trace = ${spec.trace}: no such file (set DWCP_TRACES_DIR to the mahimahi traces folder)`,
      );
    }
  }
}

function resolveProfile(profile: ProfileName | LinkProfile): LinkProfile {
  if (typeof profile !== "string") return profile;
  const found = PROFILES[profile];
  if (!found) {
    throw new RangeError(
      `unknown link profile "${profile}": expected one of ${Object.keys(PROFILES).join(", ")}`,
    );
  }
  return found;
}

function pathCommand(from: number | "*", to: number | "*", spec: PathSpec): string {
  const parts = [`path ${from} ${to}`, `delay_us=${spec.delayMs * 1000}`];
  if (spec.jitterMs) parts.push(`jitter_us=${spec.jitterMs * 1000}`);
  if (spec.rateBitsPerSec !== undefined) parts.push(`rate_bps=${spec.rateBitsPerSec}`);
  if (spec.queueMs !== undefined) parts.push(`queue_us=${spec.queueMs * 1000}`);
  if (spec.queueBytes !== undefined) parts.push(`queue_bytes=${spec.queueBytes}`);
  if (spec.lossRate) parts.push(`loss=${spec.lossRate}`);
  if (spec.trace !== undefined) {
    if (/\s/.test(spec.trace)) {
      throw new RangeError(`trace path "${spec.trace}" contains white space; move it`);
    }
    parts.push(`trace=${spec.trace}`);
  }
  return parts.join(" ");
}

// ---- building the forwarder ----

async function run(cmd: string, args: string[], stdin?: string): Promise<ExecResult> {
  const child = new Deno.Command(cmd, {
    args,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

let built: Promise<string> | undefined;

/** Compiles linkem.c into .cache/linkem/, named by the source's hash so an edit rebuilds it. */
export function buildForwarder(): Promise<string> {
  built ??= (async () => {
    const source = await Deno.readFile(SOURCE);
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", source));
    const hash = Array.from(digest.slice(0, 6), (b) => b.toString(16).padStart(2, "0")).join("");
    const dir = `${REPO}.cache/linkem`;
    const binary = `${dir}/linkem-${hash}`;
    try {
      await Deno.stat(binary);
      return binary;
    } catch { /* build it */ }
    await Deno.mkdir(dir, { recursive: true });
    // Built under a private name and renamed, so parallel test processes never run a half-written file.
    const partial = `${binary}.${Deno.pid}.tmp`;
    const res = await run("gcc", ["-O2", "-Wall", "-Wextra", "-Werror", "-o", partial, SOURCE]).catch((e) => {
      throw new Error(`cannot run gcc to build ${SOURCE} (${e}); run scripts/setup.sh`);
    });
    if (res.code !== 0) throw new Error(`building ${SOURCE} failed:\n${res.stderr}`);
    await Deno.rename(partial, binary);
    // Builds of earlier sources are of no further use (a process still running one keeps its copy).
    for (const entry of Deno.readDirSync(dir)) {
      if (
        entry.name.startsWith("linkem-") && `${dir}/${entry.name}` !== binary && !entry.name.endsWith(".tmp")
      ) {
        await Deno.remove(`${dir}/${entry.name}`).catch(() => {});
      }
    }
    return binary;
  })();
  built.catch(() => built = undefined);
  return built;
}

// ---- cleanup of this and earlier runs ----

const live = new Set<LinkEmulator>();
let exitHooksInstalled = false;

function installExitHooks(): void {
  if (exitHooksInstalled) return;
  exitHooksInstalled = true;
  // Synchronous: these fire as the process ends, when no promise will run any more.
  const cleanup = () => {
    for (const emulator of live) emulator.closeSync();
  };
  globalThis.addEventListener("unload", cleanup);
  globalThis.addEventListener("error", cleanup);
  globalThis.addEventListener("unhandledrejection", cleanup);
}

function processAlive(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

let swept = false;

/** Removes namespaces left by emulators whose process died without closing them, and what runs in them. */
export async function sweepStaleNamespaces(): Promise<string[]> {
  const removed: string[] = [];
  let entries: Deno.DirEntry[] = [];
  try {
    entries = Array.from(Deno.readDirSync("/run/netns"));
  } catch {
    return removed;
  }
  for (const { name } of entries) {
    const owner = new RegExp(`^${NETNS_PREFIX}(\\d+)-`).exec(name);
    if (!owner || processAlive(Number(owner[1]))) continue;
    const pids = await run("ip", ["netns", "pids", name]);
    for (const pid of pids.stdout.split(/\s+/).filter(Boolean)) {
      try {
        Deno.kill(Number(pid), "SIGKILL");
      } catch { /* already gone */ }
    }
    await run("ip", ["netns", "del", name]);
    removed.push(name);
  }
  return removed;
}

// ---- the emulator ----

let instanceSeq = 0;

export class LinkEmulator {
  readonly hosts: EmulatedHost[];
  readonly mtuBytes: number;
  #profile: LinkProfile;
  readonly #forwarder: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #lines: ReadableStreamDefaultReader<string>;
  #pending = "";
  #stderr = "";
  #commands: Promise<unknown> = Promise.resolve();
  readonly #children = new Set<Deno.ChildProcess>();
  #closed: Promise<void> | undefined;

  private constructor(
    hosts: EmulatedHost[],
    mtuBytes: number,
    profile: LinkProfile,
    forwarder: Deno.ChildProcess,
  ) {
    this.hosts = hosts;
    this.mtuBytes = mtuBytes;
    this.#profile = profile;
    this.#forwarder = forwarder;
    this.#writer = forwarder.stdin.getWriter();
    this.#lines = forwarder.stdout.pipeThrough(new TextDecoderStream()).getReader();
    forwarder.stderr.pipeThrough(new TextDecoderStream()).pipeTo(
      new WritableStream({ write: (s) => void (this.#stderr = (this.#stderr + s).slice(-4000)) }),
    ).catch(() => {});
  }

  static async start(options: EmulatorOptions): Promise<LinkEmulator> {
    const profile = resolveProfile(options.profile);
    validatePath(`profile ${profile.name}.forward`, profile.forward);
    validatePath(`profile ${profile.name}.reverse`, profile.reverse);
    const hostCount = options.hostCount ?? 2;
    checkNumber("options", "hostCount", hostCount, 2, MAX_HOSTS);
    const mtuBytes = options.mtuBytes ?? profile.mtuBytes;
    checkNumber("options", "mtuBytes", mtuBytes, 576, 65535);
    const seed = options.seed ?? 1;
    checkNumber("options", "seed", seed, 0, Number.MAX_SAFE_INTEGER);

    const binary = await buildForwarder();
    if (!swept) {
      swept = true;
      await sweepStaleNamespaces();
    }
    installExitHooks();
    const id = `${NETNS_PREFIX}${Deno.pid}-${++instanceSeq}`;
    const hosts: EmulatedHost[] = Array.from({ length: hostCount }, (_, index) => {
      const name = String.fromCharCode(97 + index);
      return { index, name, netns: `${id}-${name}`, ip: `${SUBNET_PREFIX}${index + 1}` };
    });
    const made: string[] = [];
    const removeNamespaces = () => Promise.all(made.map((ns) => run("ip", ["netns", "del", ns])));
    let emulator: LinkEmulator | undefined;
    try {
      for (const host of hosts) {
        const res = await run("ip", ["netns", "add", host.netns]);
        if (res.code !== 0) {
          throw new Error(`ip netns add ${host.netns} failed (needs root): ${res.stderr.trim()}`);
        }
        made.push(host.netns);
      }
      const forwarder = new Deno.Command(binary, {
        args: ["--seed", String(seed), "--dev", TUN_DEVICE, ...hosts.map((h) => `${h.netns}=${h.ip}`)],
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      emulator = new LinkEmulator(hosts, mtuBytes, profile, forwarder);
      live.add(emulator);
      const ready = await emulator.#readLine();
      if (ready !== "ready") throw new Error(`link emulator did not start: ${ready}`);
      await Promise.all(hosts.map(async (host) => {
        const res = await run(
          "ip",
          ["-n", host.netns, "-batch", "-"],
          [
            "link set lo up",
            `addr add ${host.ip}/24 dev ${TUN_DEVICE}`,
            `link set ${TUN_DEVICE} mtu ${mtuBytes} up`,
            "",
          ].join("\n"),
        );
        if (res.code !== 0) throw new Error(`configuring ${host.netns} failed: ${res.stderr.trim()}`);
      }));
      await emulator.setProfile(profile);
      return emulator;
    } catch (e) {
      if (emulator) await emulator.close();
      else await removeNamespaces();
      throw e;
    }
  }

  get profile(): LinkProfile {
    return this.#profile;
  }

  #host(host: EmulatedHost | number): EmulatedHost {
    const found = typeof host === "number" ? this.hosts[host] : this.hosts[host.index];
    if (!found || (typeof host !== "number" && found.netns !== host.netns)) {
      throw new RangeError(
        `host ${JSON.stringify(host)} is not one of this emulator's ${this.hosts.length} hosts`,
      );
    }
    return found;
  }

  /** Runs a command inside a host's namespace and waits for it; throws on a non-zero exit by default. */
  async exec(host: EmulatedHost | number, cmd: string[], options: ExecOptions = {}): Promise<ExecResult> {
    const h = this.#host(host);
    const res = await run("ip", ["netns", "exec", h.netns, ...cmd], options.stdin);
    if (res.code !== 0 && !options.allowFailure) {
      throw new Error(`${cmd.join(" ")} on host ${h.name} exited ${res.code}: ${res.stderr.trim()}`);
    }
    return res;
  }

  /** Starts a command inside a host's namespace; `close()` kills it if it still runs. */
  spawn(host: EmulatedHost | number, cmd: string[], options: SpawnOptions = {}): Deno.ChildProcess {
    const h = this.#host(host);
    if (this.#closed) throw new Error("spawn on a closed link emulator");
    const child = new Deno.Command("ip", {
      args: ["netns", "exec", h.netns, ...cmd],
      stdin: options.stdin ?? "null",
      stdout: options.stdout ?? "null",
      stderr: options.stderr ?? "null",
    }).spawn();
    this.#children.add(child);
    child.status.finally(() => this.#children.delete(child));
    return child;
  }

  /** Applies a profile to every path, live; packets already queued keep their schedule. */
  async setProfile(profile: ProfileName | LinkProfile): Promise<void> {
    const p = resolveProfile(profile);
    validatePath(`profile ${p.name}.forward`, p.forward);
    validatePath(`profile ${p.name}.reverse`, p.reverse);
    for (let i = 0; i < this.hosts.length; i++) {
      for (let j = 0; j < this.hosts.length; j++) {
        if (i !== j) await this.#command(pathCommand(i, j, i < j ? p.forward : p.reverse));
      }
    }
    this.#profile = p;
  }

  /** Sets one direction between two hosts, live. */
  async setPath(from: EmulatedHost | number, to: EmulatedHost | number, spec: PathSpec): Promise<void> {
    const f = this.#host(from), t = this.#host(to);
    if (f.index === t.index) throw new RangeError(`setPath: from and to are both host ${f.name}`);
    validatePath(`path ${f.name}->${t.name}`, spec);
    await this.#command(pathCommand(f.index, t.index, spec));
  }

  /** Drops every packet, in both directions, arriving or due for delivery in the next `durationMs`. */
  async blackout(durationMs: number): Promise<void> {
    checkNumber("blackout", "durationMs", durationMs, 0, 3_600_000);
    await this.#command(`blackout ${durationMs}`);
  }

  async counters(): Promise<Counters> {
    return JSON.parse(await this.#command("counters")) as Counters;
  }

  /** Counters of the path from one host to another. */
  static path(counters: Counters, from: EmulatedHost | number, to: EmulatedHost | number): PathCounters {
    const f = typeof from === "number" ? from : from.index, t = typeof to === "number" ? to : to.index;
    const found = counters.paths.find((p) => p.from === f && p.to === t);
    if (!found) throw new RangeError(`no path ${f}->${t} in these counters`);
    return found;
  }

  #command(line: string): Promise<string> {
    const reply = this.#commands.then(async () => {
      if (this.#closed) throw new Error(`link emulator is closed (command: ${line})`);
      await this.#writer.write(new TextEncoder().encode(line + "\n"));
      const answer = await this.#readLine();
      if (answer.startsWith("err ")) throw new Error(`link emulator: ${answer.slice(4)} (command: ${line})`);
      return answer;
    });
    this.#commands = reply.catch(() => {});
    return reply;
  }

  async #readLine(): Promise<string> {
    for (;;) {
      const nl = this.#pending.indexOf("\n");
      if (nl >= 0) {
        const line = this.#pending.slice(0, nl);
        this.#pending = this.#pending.slice(nl + 1);
        return line;
      }
      const { value, done } = await this.#lines.read();
      if (done) {
        const status = await this.#forwarder.status;
        throw new Error(`link emulator exited (code ${status.code}): ${this.#stderr.trim() || "no message"}`);
      }
      this.#pending += value;
    }
  }

  /** Kills what `spawn` started and the forwarder, and removes the namespaces. Idempotent. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      live.delete(this);
      await this.#commands;
      await Promise.all([...this.#children].map(async (child) => {
        try {
          child.kill("SIGKILL");
        } catch { /* exited meanwhile */ }
        await child.status;
      }));
      // EOF on stdin ends the forwarder; its TUN devices go with it.
      await this.#writer.close().catch(() => {});
      await this.#forwarder.status;
      await this.#lines.cancel().catch(() => {});
      await Promise.all(this.hosts.map((h) => run("ip", ["netns", "del", h.netns])));
    })();
    return this.#closed;
  }

  /** For process exit, when no promise will run any more. */
  closeSync(): void {
    live.delete(this);
    for (const child of [...this.#children, this.#forwarder]) {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
    }
    for (const h of this.hosts) {
      new Deno.Command("ip", { args: ["netns", "del", h.netns], stdout: "null", stderr: "null" })
        .outputSync();
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

// ---- self-check ----

export interface CheckOptions {
  /** Length of each iperf3 run (default 6 s: several RTTs of the slowest profile past slow start). */
  seconds?: number;
  /** Parallel TCP streams (default 4: enough to fill lan and metro on this machine's two cores). */
  tcpStreams?: number;
  /**
   * Which iperf3 runs to make; default: the one whose result is judged (see `rateMethod`). "unthrottled"
   * is TCP with the rate limit lifted: how fast this machine can forward right now.
   */
  measure?: ("tcp" | "udp" | "unthrottled")[];
  seed?: number;
  /** Called with a line of progress. */
  log?: (line: string) => void;
}

export interface CheckResult {
  profile: string;
  mtuBytes: number;
  /** Forward plus reverse one-way delay. */
  askedRttMs: number;
  /** Median ping RTT through the profile. */
  rttMs: number;
  /** Median ping RTT with the profile's delays set to zero: what forwarding itself costs. */
  baseRttMs: number;
  /** Bottleneck rate a → b: the profile's rate, or what the trace offered during the judged run. */
  askedBitsPerSec: number;
  /** How the rate is judged: TCP goodput where the path is lossless, else UDP sent faster than the link. */
  rateMethod: "tcp" | "udp";
  tcp?: { streams: number; goodputBitsPerSec: number; retransmits: number };
  udp?: { sentBitsPerSec: number; goodputBitsPerSec: number; lostPercent: number };
  /** TCP goodput with the same delays and MTU but no rate limit, when measured. */
  unthrottledBitsPerSec?: number;
  /** IP bytes the emulator delivered a → b per second during the middle of the judged run. */
  deliveredBitsPerSec: number;
  askedLossRate: number;
  /** Drops drawn by the loss PRNG over packets a → b, during the whole check. */
  measuredLossRate: number;
  /** The packets a → b that `measuredLossRate` is over. */
  lossSamplePackets: number;
}

function median(values: number[]): number {
  const s = [...values].sort((x, y) => x - y);
  return s.length === 0
    ? NaN
    : s.length % 2
    ? s[(s.length - 1) / 2]
    : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Median RTT of 50 pings 10 ms apart (the median ignores the odd late wakeup on a busy machine). */
export async function pingRttMs(link: LinkEmulator, from: EmulatedHost, to: EmulatedHost): Promise<number> {
  const res = await link.exec(from, ["ping", "-n", "-c", "50", "-i", "0.01", "-W", "2", to.ip], {
    allowFailure: true,
  });
  const rtts = [...res.stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
  if (rtts.length < 10) {
    throw new Error(`only ${rtts.length} of 50 pings answered: ${res.stdout}${res.stderr}`);
  }
  return median(rtts);
}

/** Mean capacity of a mahimahi trace in bits per second. */
export function traceMeanBitsPerSec(file: string): number {
  const stamps = Deno.readTextFileSync(file).trim().split("\n");
  return stamps.length * 1500 * 8 / (Number(stamps[stamps.length - 1]) / 1000);
}

/** Starts `iperf3 -s -1` on a host and resolves once it listens. */
async function iperfServer(link: LinkEmulator, host: EmulatedHost, port: number): Promise<Deno.ChildProcess> {
  const server = link.spawn(host, ["iperf3", "-s", "-1", "-p", String(port), "--forceflush"], {
    stdout: "piped",
    stderr: "piped",
  });
  const reader = server.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  while (!seen.includes("Server listening")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`iperf3 server on ${host.name} did not start: ${seen}`);
    seen += value;
  }
  // Keep draining so the server never blocks on a full pipe.
  (async () => {
    while (!(await reader.read()).done) { /* discard */ }
  })().catch(() => {});
  server.stderr.cancel().catch(() => {});
  return server;
}

interface Window {
  deliveredBitsPerSec: number;
  capacityBitsPerSec: number;
}

/**
 * Runs `iperf3 -c` from host a to host b (with `-s -1` on b) and returns its JSON report, sampling the
 * a → b path's counters in the middle of the run (after the first second, until 0.5 s before the end).
 */
export async function runIperf3(
  link: LinkEmulator,
  args: string[],
  seconds: number,
): Promise<{ json: Record<string, unknown>; window: Window }> {
  if (!(seconds >= 2)) throw new RangeError(`runIperf3 seconds = ${seconds}: expected at least 2`);
  const [a, b] = link.hosts;
  const port = 5201;
  const server = await iperfServer(link, b, port);
  const client = link.exec(a, [
    "iperf3",
    "-c",
    b.ip,
    "-p",
    String(port),
    "-t",
    String(seconds),
    "--json",
    ...args,
  ], {
    allowFailure: true,
  });
  // Skip the first second (slow start, the queue filling) and stop before the end.
  await new Promise((r) => setTimeout(r, 1000));
  const c0 = await link.counters();
  const first = LinkEmulator.path(c0, a, b);
  await new Promise((r) => setTimeout(r, (seconds - 1.5) * 1000));
  const c1 = await link.counters();
  const last = LinkEmulator.path(c1, a, b);
  const res = await client;
  await server.status;
  if (res.code !== 0) {
    throw new Error(`iperf3 ${args.join(" ")} failed: ${res.stdout.slice(-500)}${res.stderr}`);
  }
  const spanSec = (c1.nowMs - c0.nowMs) / 1000;
  return {
    json: JSON.parse(res.stdout),
    window: {
      deliveredBitsPerSec: (last.txBytes - first.txBytes) * 8 / spanSec,
      capacityBitsPerSec: (last.capacityBytes - first.capacityBytes) * 8 / spanSec,
    },
  };
}

/**
 * Measures one profile, hosts a → b, in a fresh emulator:
 * - RTT: median of 50 pings, once through the profile and once with its delays set to zero (`baseRttMs`,
 *   the cost of forwarding through two TUN devices and waking the processes involved).
 * - Rate: on lossless fixed-rate profiles, TCP goodput of `tcpStreams` iperf3 streams (what an
 *   application gets); on lossy ones, loss-based TCP cannot fill the link by design (that is what dwcp
 *   is for), so UDP is sent at 1.25× the rate and the goodput received is judged; on a trace, UDP at
 *   2.5× the trace's mean, judged against the capacity the trace offered during the run (read from the
 *   emulator's counters, since a trace's rate varies by the second).
 * - `deliveredBitsPerSec`: IP bytes the emulator passed a → b per second in the middle of the judged run.
 */
export async function checkProfile(name: ProfileName, options: CheckOptions = {}): Promise<CheckResult> {
  const profile = PROFILES[name];
  const seconds = options.seconds ?? 6;
  const streams = options.tcpStreams ?? 4;
  const log = options.log ?? (() => {});
  const fwd = profile.forward;
  const lossless = !fwd.lossRate && !profile.reverse.lossRate && fwd.trace === undefined;
  const rateMethod = lossless ? "tcp" : "udp";
  const measure = options.measure ?? [rateMethod];
  await using link = await LinkEmulator.start({ profile: name, seed: options.seed ?? 1 });
  const [a, b] = link.hosts;

  log(`${name}: ping without delay`);
  await link.setProfile({
    ...profile,
    forward: { ...profile.forward, delayMs: 0 },
    reverse: { ...profile.reverse, delayMs: 0 },
  });
  const baseRttMs = await pingRttMs(link, a, b);
  await link.setProfile(profile);
  log(`${name}: ping`);
  const rttMs = await pingRttMs(link, a, b);

  const result: CheckResult = {
    profile: name,
    mtuBytes: link.mtuBytes,
    askedRttMs: profile.forward.delayMs + profile.reverse.delayMs,
    rttMs,
    baseRttMs,
    askedBitsPerSec: fwd.rateBitsPerSec ?? NaN,
    rateMethod,
    deliveredBitsPerSec: NaN,
    askedLossRate: fwd.lossRate ?? 0,
    measuredLossRate: NaN,
    lossSamplePackets: 0,
  };
  for (const method of measure) {
    log(`${name}: iperf3 ${method} for ${seconds} s`);
    if (method === "unthrottled") {
      const unlimited = ({ trace: _t, rateBitsPerSec: _r, queueMs: _q, queueBytes: _b, ...rest }: PathSpec) =>
        rest;
      await link.setProfile({
        ...profile,
        forward: unlimited(profile.forward),
        reverse: unlimited(profile.reverse),
      });
      const { json } = await runIperf3(link, ["-P", String(streams)], seconds);
      result.unthrottledBitsPerSec = (json.end as { sum_received: { bits_per_second: number } }).sum_received
        .bits_per_second;
      await link.setProfile(profile);
    } else if (method === "tcp") {
      const { json, window } = await runIperf3(link, ["-P", String(streams)], seconds);
      const end = json.end as {
        sum_received: { bits_per_second: number };
        sum_sent: { retransmits: number };
      };
      result.tcp = {
        streams,
        goodputBitsPerSec: end.sum_received.bits_per_second,
        retransmits: end.sum_sent.retransmits,
      };
      if (method === rateMethod) result.deliveredBitsPerSec = window.deliveredBitsPerSec;
    } else {
      const meanBitsPerSec = fwd.trace ? traceMeanBitsPerSec(fwd.trace) : fwd.rateBitsPerSec!;
      const sendBitsPerSec = Math.round(meanBitsPerSec * (fwd.trace ? 2.5 : 1.25));
      const datagramBytes = link.mtuBytes - 28;
      const { json, window } = await runIperf3(
        link,
        ["-u", "-b", String(sendBitsPerSec), "-l", String(datagramBytes)],
        seconds,
      );
      const end = json.end as {
        sum_sent: { bits_per_second: number };
        sum_received: { bits_per_second: number; lost_percent: number };
      };
      result.udp = {
        sentBitsPerSec: end.sum_sent.bits_per_second,
        goodputBitsPerSec: end.sum_received.bits_per_second,
        lostPercent: end.sum_received.lost_percent,
      };
      if (method === rateMethod) result.deliveredBitsPerSec = window.deliveredBitsPerSec;
      if (fwd.trace) result.askedBitsPerSec = window.capacityBitsPerSec;
    }
  }
  const path = LinkEmulator.path(await link.counters(), a, b);
  result.lossSamplePackets = path.rxPackets - path.dropBlackout;
  result.measuredLossRate = path.dropLoss / Math.max(1, result.lossSamplePackets);
  return result;
}

/** The goodput the judged run reached, in bits per second. */
export function judgedGoodput(r: CheckResult): number {
  return (r.rateMethod === "tcp" ? r.tcp?.goodputBitsPerSec : r.udp?.goodputBitsPerSec) ?? NaN;
}

function formatRate(bitsPerSec: number | undefined): string {
  if (bitsPerSec === undefined || Number.isNaN(bitsPerSec)) return "-";
  return bitsPerSec >= 1e9 ? `${(bitsPerSec / 1e9).toFixed(2)} G` : `${(bitsPerSec / 1e6).toFixed(1)} M`;
}

export function formatCheckTable(results: CheckResult[]): string {
  const head = [
    "profile",
    "MTU",
    "RTT asked",
    "RTT",
    "base RTT",
    "RTT-base",
    "rate asked",
    "TCP goodput",
    "UDP goodput",
    "delivered",
    "unthrottled",
    "judged/asked",
    "loss asked",
    "loss drawn",
  ];
  const rows = results.map((r) => [
    r.profile,
    String(r.mtuBytes),
    `${r.askedRttMs.toFixed(1)} ms`,
    `${r.rttMs.toFixed(2)} ms`,
    `${r.baseRttMs.toFixed(2)} ms`,
    `${(r.rttMs - r.baseRttMs).toFixed(2)} ms`,
    formatRate(r.askedBitsPerSec),
    r.tcp ? `${formatRate(r.tcp.goodputBitsPerSec)} (${r.tcp.streams}x, ${r.tcp.retransmits} rtx)` : "-",
    r.udp ? `${formatRate(r.udp.goodputBitsPerSec)} (${r.udp.lostPercent.toFixed(1)}% lost)` : "-",
    formatRate(r.deliveredBitsPerSec),
    formatRate(r.unthrottledBitsPerSec),
    `${(judgedGoodput(r) / r.askedBitsPerSec * 100).toFixed(1)}% ${r.rateMethod}`,
    `${(r.askedLossRate * 100).toFixed(2)}%`,
    `${(r.measuredLossRate * 100).toFixed(2)}%`,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  return [head, ...rows].map((row) => row.map((c, i) => c.padEnd(widths[i])).join("  ")).join("\n");
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      check: { type: "boolean" },
      all: { type: "boolean" },
      seconds: { type: "string", default: "6" },
      streams: { type: "string", default: "4" },
    },
  });
  if (!values.check) {
    console.error(
      "usage: deno run -A tests/support/link_emulator.ts --check [--all] [--seconds N] [profile ...]",
    );
    Deno.exit(2);
  }
  const names = (positionals.length ? positionals : Object.keys(PROFILES)) as ProfileName[];
  for (const n of names) resolveProfile(n);
  const results: CheckResult[] = [];
  for (const n of names) {
    results.push(
      await checkProfile(n, {
        seconds: Number(values.seconds),
        tcpStreams: Number(values.streams),
        measure: values.all ? ["tcp", "udp", "unthrottled"] : undefined,
        log: (line) => console.error(line),
      }),
    );
  }
  console.log(formatCheckTable(results));
}
