/**
 * Real agent processes for integration tests and benchmarks: each runs `main.ts agent` on ports the
 * OS picks, with its own state directory and root, and is stopped (or killed) by the test.
 */
import { fileURLToPath } from "node:url";

export const REPO = fileURLToPath(new URL("../../", import.meta.url));
export const MAIN = `${REPO}main.ts`;
export const TEST_SECRET = "test-secret-0123456789abcdef";

export interface AgentOptions {
  id: string;
  /** Root directory for files; a fresh temporary one when omitted. */
  root?: string;
  /** More roots (read-only use in tests: the guest image cache, say). */
  extraRoots?: string[];
  secret?: string;
  /** Transfer settings layered over the defaults through a config file. */
  transfer?: Record<string, unknown>;
  peers?: Record<string, string>;
  /** The config file's "tls" section: mode, cert, key, ca, peers. */
  tls?: Record<string, unknown>;
  /** The config file's "link" section: probe intervals, dwell, pins. */
  link?: Record<string, unknown>;
  /** The data port's HOST:PORT; one the OS picks when omitted. */
  dataListen?: string;
  env?: Record<string, string>;
}

export class TestAgent {
  #stderr = "";
  readonly exited: Promise<Deno.CommandStatus>;

  constructor(
    readonly id: string,
    readonly child: Deno.ChildProcess,
    readonly apiUrl: string,
    readonly dataAddr: string,
    readonly root: string,
    readonly stateDir: string,
    stderr: ReadableStream<Uint8Array>,
    /** Directories the harness made for this agent, removed when it stops. */
    readonly ownedDirs: string[],
  ) {
    this.exited = child.status;
    // Drain stderr so the agent never blocks on a full pipe; keep a bounded tail for failure messages.
    stderr.pipeThrough(new TextDecoderStream()).pipeTo(
      new WritableStream({ write: (s) => void (this.#stderr = (this.#stderr + s).slice(-20_000)) }),
    ).catch(() => {});
  }

  get logs(): string {
    return this.#stderr;
  }

  get pid(): number {
    return this.child.pid;
  }

  async api(path: string, init: RequestInit = {}): Promise<Response> {
    return await fetch(`${this.apiUrl}${path}`, init);
  }

  async json<T = Record<string, unknown>>(
    path: string,
    init: RequestInit = {},
  ): Promise<{ status: number; body: T }> {
    const res = await this.api(path, {
      ...init,
      headers: { "content-type": "application/json", ...init.headers },
    });
    return { status: res.status, body: await res.json() as T };
  }

  /** Peak resident set size so far (VmHWM), in bytes. */
  async peakRssBytes(): Promise<number> {
    const status = await Deno.readTextFile(`/proc/${this.pid}/status`);
    const kb = Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1]);
    return kb * 1024;
  }

  /**
   * SIGTERM and wait (the agent cancels its transfers, stops its VMs and exits), then kill any QEMU it
   * left behind (an agent killed earlier cannot stop its VMs) and remove its directories.
   */
  async stop(): Promise<void> {
    await this.#signal("SIGTERM");
    // Every QEMU an agent starts has its sockets under stateDir/run, so its command line names stateDir.
    await new Deno.Command("pkill", { args: ["-KILL", "-f", this.stateDir], stdout: "null", stderr: "null" })
      .output().catch(() => {});
    for (const dir of this.ownedDirs) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }

  /** SIGKILL: the agent dies without cleaning up, as in a crash. Call stop() later to remove its files. */
  async kill(): Promise<void> {
    await this.#signal("SIGKILL");
  }

  async #signal(signal: Deno.Signal): Promise<void> {
    try {
      this.child.kill(signal);
    } catch { /* already gone */ }
    await this.exited;
  }
}

/** Starts an agent and resolves once it reports its addresses. */
export async function startAgent(opts: AgentOptions): Promise<TestAgent> {
  const stateDir = await Deno.makeTempDir({ prefix: `dwcp-${opts.id}-state-` });
  const root = opts.root ?? await Deno.makeTempDir({ prefix: `dwcp-${opts.id}-root-` });
  const config = `${stateDir}/config.json`;
  await Deno.writeTextFile(
    config,
    JSON.stringify({
      transfer: opts.transfer ?? {},
      peers: opts.peers ?? {},
      tls: opts.tls ?? {},
      link: opts.link ?? {},
    }),
  );
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", MAIN, "agent", "--config", config, "--id", opts.id, "--api", "127.0.0.1:0"]
      .concat(["--data", opts.dataListen ?? "127.0.0.1:0", "--state-dir", stateDir, "--root", root])
      .concat((opts.extraRoots ?? []).flatMap((r) => ["--root", r])),
    env: { DWCP_SECRET: opts.secret ?? TEST_SECRET, NO_COLOR: "1", ...opts.env },
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  const [stdout, stdoutRest] = child.stdout.pipeThrough(new TextDecoderStream()).tee();
  stdoutRest.pipeTo(new WritableStream()).catch(() => {});
  const reader = stdout.getReader();
  let seen = "";
  while (!/data port \S+:\d+/.test(seen)) {
    const { value, done } = await reader.read();
    if (done) {
      const err = await new Response(child.stderr).text();
      throw new Error(`agent ${opts.id} exited before it started:\n${seen}\n${err}`);
    }
    seen += value;
  }
  reader.releaseLock();
  stdout.cancel().catch(() => {});
  const api = /API (http:\/\/\S+?),/.exec(seen)![1];
  const data = /data port (\S+:\d+)/.exec(seen)![1];
  const owned = opts.root ? [stateDir] : [stateDir, root];
  return new TestAgent(opts.id, child, api, data, root, stateDir, child.stderr, owned);
}

/** Polls a transfer until it reaches a terminal state; returns the final snapshot. */
export async function waitForTransfer(
  agent: TestAgent,
  id: string,
  pollMs = 50,
): Promise<Record<string, unknown>> {
  while (true) {
    const { body } = await agent.json(`/v1/transfers/${id}`);
    if (["completed", "failed", "cancelled"].includes(body.state as string)) return body;
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

export async function sha256File(path: string): Promise<string> {
  const { createHash } = await import("node:crypto");
  const hash = createHash("sha256");
  using file = await Deno.open(path);
  for await (const chunk of file.readable) hash.update(chunk);
  return hash.digest("hex");
}

/** Writes sizeBytes of random data in 1 MiB pieces (bounded memory). */
export async function writeRandomFile(path: string, sizeBytes: number): Promise<void> {
  using file = await Deno.open(path, { write: true, create: true, truncate: true });
  const buf = new Uint8Array(1 << 20);
  for (let done = 0; done < sizeBytes; done += buf.length) {
    const n = Math.min(buf.length, sizeBytes - done);
    for (let i = 0; i < n; i += 65536) crypto.getRandomValues(buf.subarray(i, Math.min(i + 65536, n)));
    let off = 0;
    while (off < n) off += await file.write(buf.subarray(off, n));
  }
}
