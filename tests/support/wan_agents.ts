/**
 * Real dwcp agents on emulated links (issue 5): each agent runs inside a host namespace of a
 * LinkEmulator (tests/support/link_emulator.ts), its data port on the host's emulated address, so
 * agent-to-agent traffic crosses the emulated link, and its HTTP API on a control path that does not:
 * a veth pair from the root namespace into the host's namespace on a /30 of its own (10.99.0.0/16), the
 * API listening on the namespace's end with a bearer token. The test process calls the API over that
 * veth with fetch; the emulated link carries only what the agents send each other.
 *
 * ```ts
 * await using cluster = await WanCluster.start({ profile: "wan", link: { minDwellMs: 2000 } });
 * const [a, b] = cluster.agents;                 // a on 10.77.0.1, peer "b" = 10.77.0.2:7701
 * const peer = await waitForModeDecided(a, "b");   // peer.mode.current: "internet"
 * await cluster.link.setProfile("lan");          // live, under running transfers
 * ```
 *
 * Each agent gets its own state directory, root and config file (secret and API token in it, mode
 * 0600); `WanAgent.stop()` ends it with SIGTERM, kills any QEMU it left (TestAgent.stop) and removes its
 * veth. `WanCluster.close()` (idempotent, also `await using`) stops every agent, then closes the
 * emulator. If the process dies on an uncaught error, the emulator kills what it spawned (the agents)
 * and removes the namespaces, which takes the veths with them; a hook here kills the agents' QEMUs.
 * The /30s are claimed by lock files in /run/dwcp-wan-agents holding the claimer's pid, so parallel
 * runs never share one; the first claim of a process removes those whose process is gone (a run killed
 * outright by SIGKILL or SIGTERM, which runs no exit hook), with their veths.
 */
import { join } from "node:path";
import { type EmulatedHost, LinkEmulator, type LinkProfile, type ProfileName } from "./link_emulator.ts";
import { MAIN, TEST_SECRET, TestAgent } from "./agents.ts";

/** Where agents listen inside their namespace: one agent per namespace, so fixed ports do. */
export const DATA_PORT = 7701;
export const API_PORT = 7700;

const LOCK_DIR = "/run/dwcp-wan-agents";
/** 10.99.0.0/16 in /30s: 16384 control paths. */
const SLOT_COUNT = 16384;
/** The veth's name inside each host namespace (names are per namespace, so one name serves all). */
const NS_DEVICE = "ctl0";
/** How long an agent may take to report its addresses before the harness gives up (a hang guard). */
const AGENT_START_TIMEOUT_MS = 60_000;

// ---- running commands -------------------------------------------------------------------------------

async function ip(args: string[], stdin?: string): Promise<void> {
  const child = new Deno.Command("ip", {
    args,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  if (out.code !== 0) {
    throw new Error(
      `ip ${args.join(" ")} failed (needs root): ${new TextDecoder().decode(out.stderr).trim()}`,
    );
  }
}

function processAlive(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

// ---- the control path -------------------------------------------------------------------------------

/** A veth pair from the root namespace into one host's namespace, on a /30 of 10.99.0.0/16. */
export class ControlPath {
  #closed = false;

  private constructor(
    readonly slot: number,
    /** The veth's root-namespace end. */
    readonly device: string,
    /** The root namespace's address on it, and the host namespace's (where the API listens). */
    readonly rootIp: string,
    readonly hostIp: string,
    readonly lockFile: string,
  ) {}

  static async open(host: EmulatedHost): Promise<ControlPath> {
    const { slot, lockFile } = await claimSlot();
    const base = (slot & 63) * 4;
    const prefix = `10.99.${slot >> 6}.`;
    const path = new ControlPath(
      slot,
      `dwcw${slot}`,
      `${prefix}${base + 1}`,
      `${prefix}${base + 2}`,
      lockFile,
    );
    live.add(path);
    try {
      await ip(["link", "add", path.device, "type", "veth", "peer", "name", NS_DEVICE, "netns", host.netns]);
      await ip(
        ["-batch", "-"],
        `addr add ${path.rootIp}/30 dev ${path.device}\nlink set ${path.device} up\n`,
      );
      await ip(
        ["-n", host.netns, "-batch", "-"],
        `addr add ${path.hostIp}/30 dev ${NS_DEVICE}\nlink set ${NS_DEVICE} up\n`,
      );
    } catch (err) {
      await path.close();
      throw err;
    }
    return path;
  }

  /** Removes the veth (both ends) and frees the /30. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    live.delete(this);
    // Gone already when the host's namespace was removed first: deleting a namespace deletes its veths.
    await ip(["link", "del", this.device]).catch(() => {});
    await Deno.remove(this.lockFile).catch(() => {});
  }

  /** For process exit, when no promise runs any more. */
  closeSync(): void {
    this.#closed = true;
    live.delete(this);
    new Deno.Command("ip", { args: ["link", "del", this.device], stdout: "null", stderr: "null" })
      .outputSync();
    try {
      Deno.removeSync(this.lockFile);
    } catch { /* already gone */ }
  }
}

let swept = false;

/**
 * Frees the /30s of runs that were killed outright: a lock file whose process is gone is removed, with
 * the veth of its slot if that still exists (its namespace may not have been swept yet).
 */
async function sweepStaleSlots(): Promise<void> {
  for (const entry of Deno.readDirSync(LOCK_DIR)) {
    const lockFile = join(LOCK_DIR, entry.name);
    const owner = Number((await Deno.readTextFile(lockFile).catch(() => "")).trim());
    if (!(owner > 0) || processAlive(owner)) continue;
    await ip(["link", "del", `dwcw${entry.name}`]).catch(() => {});
    await Deno.remove(lockFile).catch(() => {});
  }
}

/** Claims a free /30 by creating its lock file (createNew is the arbiter between parallel runs). */
async function claimSlot(): Promise<{ slot: number; lockFile: string }> {
  await Deno.mkdir(LOCK_DIR, { recursive: true });
  if (!swept) {
    swept = true;
    await sweepStaleSlots();
  }
  // Start at a place that depends on the pid, so parallel runs rarely contend for the same files.
  const start = (Deno.pid * 64) % SLOT_COUNT;
  for (let i = 0; i < SLOT_COUNT; i++) {
    const slot = (start + i) % SLOT_COUNT;
    const lockFile = join(LOCK_DIR, String(slot));
    try {
      await Deno.writeTextFile(lockFile, `${Deno.pid}\n`, { createNew: true });
      return { slot, lockFile };
    } catch (err) {
      if (!(err instanceof Deno.errors.AlreadyExists)) throw err;
    }
  }
  throw new Error(
    `no free control subnet in 10.99.0.0/16: ${LOCK_DIR} holds ${SLOT_COUNT} claims; remove the files ` +
      `of runs that are no longer running`,
  );
}

// ---- cleanup on process exit ------------------------------------------------------------------------

const live = new Set<ControlPath>();
const liveAgents = new Set<WanAgent>();
/** Directories made for agents that have not been stopped yet (those being started included). */
const liveDirs = new Set<string>();
let exitHooksInstalled = false;

function installExitHooks(): void {
  if (exitHooksInstalled) return;
  exitHooksInstalled = true;
  // Synchronous, as the process ends. The emulator's own hook kills the agents (it spawned them) and
  // removes the namespaces; here, the agents' QEMUs (their command lines name the agent's state
  // directory), the veths and lock files, and the agents' directories.
  const cleanup = () => {
    for (const agent of liveAgents) {
      try {
        agent.child.kill("SIGKILL");
      } catch { /* gone */ }
      new Deno.Command("pkill", { args: ["-KILL", "-f", agent.stateDir], stdout: "null", stderr: "null" })
        .outputSync();
    }
    for (const path of live) path.closeSync();
    for (const dir of liveDirs) {
      try {
        Deno.removeSync(dir, { recursive: true });
      } catch { /* gone */ }
    }
  };
  globalThis.addEventListener("unload", cleanup);
  globalThis.addEventListener("error", cleanup);
  globalThis.addEventListener("unhandledrejection", cleanup);
}

// ---- agents -----------------------------------------------------------------------------------------

export interface WanAgentOptions {
  /** The agent's id; the host's name ("a", "b", ...) by default, which is how its peers name it. */
  id?: string;
  /** Peers by name → data address; by default every other host of the emulator, named by host name. */
  peers?: Record<string, string>;
  /** The config's "transfer" section, layered over the defaults. */
  transfer?: Record<string, unknown>;
  /** The config's "link" section: probeIntervalMs, minDwellMs, confirmMs, pins. */
  link?: Record<string, unknown>;
  /** The config's "tls" section. */
  tls?: Record<string, unknown>;
  /** Root directory for files; a fresh temporary one when omitted. */
  root?: string;
  /** More roots (the guest image cache, a benchmark's image). */
  extraRoots?: string[];
  secret?: string;
}

/** A TestAgent whose API is reached over its control path, with its bearer token. */
export class WanAgent extends TestAgent {
  constructor(
    id: string,
    child: Deno.ChildProcess,
    apiUrl: string,
    dataAddr: string,
    root: string,
    stateDir: string,
    ownedDirs: string[],
    readonly host: EmulatedHost,
    readonly control: ControlPath,
    readonly token: string,
  ) {
    super(id, child, apiUrl, dataAddr, root, stateDir, child.stderr, ownedDirs);
  }

  override async api(path: string, init: RequestInit = {}): Promise<Response> {
    const headers = new Headers(init.headers);
    headers.set("authorization", `Bearer ${this.token}`);
    return await fetch(`${this.apiUrl}${path}`, { ...init, headers });
  }

  /** SIGTERM and wait, kill any QEMU it left, remove its directories, then its veth. */
  override async stop(): Promise<void> {
    await super.stop();
    liveAgents.delete(this);
    for (const dir of this.ownedDirs) liveDirs.delete(dir);
    await this.control.close();
  }
}

function randomToken(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Starts an agent inside host's namespace and resolves once it reports its addresses. */
export async function startWanAgent(
  link: LinkEmulator,
  host: EmulatedHost,
  opts: WanAgentOptions = {},
): Promise<WanAgent> {
  installExitHooks();
  const id = opts.id ?? host.name;
  const peers = opts.peers ??
    Object.fromEntries(link.hosts.filter((h) => h.index !== host.index).map((h) => [h.name, dataAddress(h)]));
  const owned: string[] = [];
  let control: ControlPath | undefined;
  let child: Deno.ChildProcess | undefined;
  try {
    const stateDir = await Deno.makeTempDir({ prefix: `dwcp-wan-${id}-state-` });
    owned.push(stateDir);
    liveDirs.add(stateDir);
    const root = opts.root ?? await Deno.makeTempDir({ prefix: `dwcp-wan-${id}-root-` });
    if (!opts.root) {
      owned.push(root);
      liveDirs.add(root);
    }
    control = await ControlPath.open(host);
    const token = randomToken();
    const config = join(stateDir, "config.json");
    await Deno.writeTextFile(
      config,
      JSON.stringify({
        secret: opts.secret ?? TEST_SECRET,
        api: { listen: `${control.hostIp}:${API_PORT}`, token },
        data: { listen: dataAddress(host) },
        peers,
        transfer: opts.transfer ?? {},
        link: opts.link ?? {},
        tls: opts.tls ?? {},
      }),
      { mode: 0o600 },
    );
    child = link.spawn(
      host,
      [Deno.execPath(), "run", "--allow-all", MAIN, "agent", "--config", config, "--id", id]
        .concat(["--state-dir", stateDir, "--root", root])
        .concat((opts.extraRoots ?? []).flatMap((r) => ["--root", r])),
      { stdout: "piped", stderr: "piped" },
    );
    const seen = await startupLine(child, id);
    const api = /API (http:\/\/\S+?),/.exec(seen)?.[1];
    const data = /data port (\S+:\d+)/.exec(seen)?.[1];
    if (!api || !data) throw new Error(`agent ${id} printed an unexpected start line: ${seen}`);
    const agent = new WanAgent(id, child, api, data, root, stateDir, owned, host, control, token);
    liveAgents.add(agent);
    return agent;
  } catch (err) {
    if (child) {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
      await child.status;
    }
    await control?.close();
    for (const dir of owned) {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      liveDirs.delete(dir);
    }
    throw err;
  }
}

/** The agent's stdout up to its start line ("... data port HOST:PORT ..."); its stderr on failure. */
async function startupLine(child: Deno.ChildProcess, id: string): Promise<string> {
  const [stdout, rest] = child.stdout.pipeThrough(new TextDecoderStream()).tee();
  rest.pipeTo(new WritableStream()).catch(() => {});
  const reader = stdout.getReader();
  let seen = "";
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timedOut = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`agent ${id} did not report its addresses within ${AGENT_START_TIMEOUT_MS} ms`)),
      AGENT_START_TIMEOUT_MS,
    );
  });
  try {
    while (!/data port \S+:\d+/.test(seen)) {
      const { value, done } = await Promise.race([reader.read(), timedOut]);
      if (done) {
        const err = await new Response(child.stderr).text();
        throw new Error(`agent ${id} exited before it started:\n${seen}\n${err}`);
      }
      seen += value;
    }
  } finally {
    clearTimeout(timer);
  }
  reader.releaseLock();
  stdout.cancel().catch(() => {});
  return seen;
}

export function dataAddress(host: EmulatedHost): string {
  return `${host.ip}:${DATA_PORT}`;
}

// ---- a cluster: emulator plus one agent per host ----------------------------------------------------

export interface WanClusterOptions extends Omit<WanAgentOptions, "id" | "peers" | "root"> {
  profile: ProfileName | LinkProfile;
  seed?: number;
  /** Hosts, each with an agent (default 2). */
  hostCount?: number;
  /** Options of one host's agent over the common ones (its own TLS certificate, say). */
  perAgent?: (host: EmulatedHost) => WanAgentOptions;
}

export class WanCluster {
  #closed?: Promise<void>;

  private constructor(readonly link: LinkEmulator, readonly agents: WanAgent[]) {}

  static async start(opts: WanClusterOptions): Promise<WanCluster> {
    const { profile, seed, hostCount, perAgent, ...agentOpts } = opts;
    const link = await LinkEmulator.start({ profile, seed, hostCount });
    const cluster = new WanCluster(link, []);
    try {
      for (const host of link.hosts) {
        cluster.agents.push(await startWanAgent(link, host, { ...agentOpts, ...perAgent?.(host) }));
      }
    } catch (err) {
      await cluster.close();
      throw err;
    }
    return cluster;
  }

  /** Stops every agent (their QEMUs and veths with them), then the emulator. Idempotent. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      await Promise.allSettled(this.agents.map((a) => a.stop()));
      await this.link.close();
    })();
    return this.#closed;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

// ---- the API, as tests and benchmarks read it -------------------------------------------------------

/** The parts of GET /v1/peers/:id that tests and benchmarks read (docs/api.md has them all). */
export interface PeerView {
  id: string;
  mode: { current: string | null; reason: string; candidate: { mode: string } | null };
  measurements: {
    minRttMs?: number;
    smoothedRttMs?: number;
    retransmitRatio?: number;
    queuedRetransmitRatio?: number;
  };
  parameters: {
    mode: string;
    streams: { count: number; forBdp: number; forLoss: number; rttMs: number; congestionControl: string };
    chunkBytes: number;
    codecBias: string;
    tls: boolean;
    migration: { downtimeLimitMs: number; xbzrle: boolean };
  } | null;
}

export async function peerView(agent: TestAgent, peer: string): Promise<PeerView> {
  const { status, body } = await agent.json<PeerView>(`/v1/peers/${peer}`);
  if (status !== 200) {
    throw new Error(`GET /v1/peers/${peer} on ${agent.id} answered ${status}: ${JSON.stringify(body)}`);
  }
  return body;
}

/** Polls the agent's view of peer until pred holds of it; returns that view. */
export async function waitForView(
  agent: TestAgent,
  peer: string,
  pred: (view: PeerView) => boolean,
  pollMs = 100,
): Promise<PeerView> {
  while (true) {
    const view = await peerView(agent, peer);
    if (pred(view)) return view;
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

/** The view once the link has a mode (the first is taken as soon as 3 round trips are measured). */
export function waitForModeDecided(agent: TestAgent, peer: string): Promise<PeerView> {
  return waitForView(agent, peer, (v) => v.mode.current !== null && v.parameters !== null);
}
