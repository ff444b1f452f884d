/**
 * Watches the test guest's serial console (tests/support/guest/init.sh) and keeps what migration tests
 * assert on: the boot id, the heartbeat counter, the host time of every heartbeat, the largest gap
 * between consecutive heartbeats, and whether the counter ever went backwards or the boot id changed.
 *
 * QEMU serves the console as a unix socket (`-chardev socket,id=ser0,path=SOCK,server=on,wait=off
 * -serial chardev:ser0`); it drops console output while no client is connected, so connect before the
 * guest matters. To follow a VM across a live migration:
 *
 *     const mon = await HeartbeatMonitor.follow(sourceSock);
 *     await mon.waitForReady();
 *     await mon.switchTo(destSock);   // connect to the destination's console, best before migrating
 *     ...migrate...
 *     await mon.waitForCounter(before + 20);
 *     mon.switches[0].ms              // the gap across the switch: the time the guest was paused
 *
 * The destination's console is silent until the migrated guest runs there; its first output means
 * the source has stopped for good, so the monitor then drains what the source had still sent, retires
 * it and carries on with the destination (a line the guest was half-way through continues there).
 */

export interface Heartbeat {
  counter: number;
  /** The guest's uptime in seconds, as it printed it. */
  uptime: number;
  /** Host time (performance.now()) at which the line arrived. */
  at: number;
  /** 0 for the first console, 1 after the first switchTo, and so on. */
  segment: number;
}

export interface HeartbeatGap {
  /** Host milliseconds between the two heartbeats. */
  ms: number;
  /** The counter of the heartbeat before the gap and of the one after it. */
  before: number;
  after: number;
}

export interface ReadyInfo {
  bootId: string;
  memMib: number;
  at: number;
}

export interface MonitorOptions {
  /** How long to keep retrying while the socket does not exist or refuses (default 30 s). */
  connectTimeoutMs?: number;
  /** Characters of console output kept for error messages (default 16 KiB, plus the first 16 KiB). */
  tailChars?: number;
  /** Heartbeats kept in `heartbeats` (default 200 000; older ones are dropped, the stats still count). */
  maxKept?: number;
}

interface Waiter {
  done: () => boolean;
  resolve: () => void;
  reject: (err: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

interface Chunk {
  text: string;
  at: number;
}

const HB_RE = /hb ([0-9a-f-]{36}) (\d+) (\d+(?:\.\d+)?)\s*$/;
const READY_RE = /dwcp-guest ready boot=(\S+) mem_mib=(\d+)/;
const ERROR_RE = /dwcp-guest error: (.*)$/;
const PANIC_RE = /Kernel panic[^\n]*/;

export class HeartbeatMonitor {
  /** The boot id of the first heartbeat (or ready line). */
  bootId?: string;
  lastCounter = 0;
  lastUptime = 0;
  /** Heartbeats seen in total (including any dropped from `heartbeats`). */
  count = 0;
  readonly heartbeats: Heartbeat[] = [];
  /** The largest gap between consecutive heartbeats. */
  maxGap?: HeartbeatGap;
  /** The gap across each switchTo: last heartbeat from the old console to the first from the new. */
  readonly switches: HeartbeatGap[] = [];
  /** A heartbeat counter was not larger than the one before it. */
  wentBackwards = false;
  /** A heartbeat or ready line carried a different boot id. */
  bootIdChanged = false;
  /** Counter values missing between consecutive heartbeats (lost console output). */
  skipped = 0;
  ready?: ReadyInfo;
  /** `dwcp-guest error:` lines. */
  readonly guestErrors: string[] = [];
  panic?: string;
  /** The console is gone (EOF or close()) and no switch can bring it back. */
  closed = false;

  #opts: Required<MonitorOptions>;
  #head = "";
  #tail = "";
  #partial = "";
  #segment = 0;
  #current: Deno.UnixConn;
  #currentPath: string;
  #currentLastData = 0;
  #currentEnded = false;
  #next?: { conn: Deno.UnixConn; path: string; pending: Chunk[]; cutting: boolean; ended: boolean };
  #waiters = new Set<Waiter>();
  #tasks = new Set<Promise<void>>();
  #userClosed = false;

  private constructor(conn: Deno.UnixConn, path: string, opts: Required<MonitorOptions>) {
    this.#current = conn;
    this.#currentPath = path;
    this.#opts = opts;
    this.#track(this.#readLoop(conn, path));
  }

  /** Connects to a console socket, retrying while it does not exist yet. */
  static async connect(path: string, opts: MonitorOptions = {}): Promise<HeartbeatMonitor> {
    const full: Required<MonitorOptions> = {
      connectTimeoutMs: opts.connectTimeoutMs ?? 30_000,
      tailChars: opts.tailChars ?? 16_384,
      maxKept: opts.maxKept ?? 200_000,
    };
    const conn = await connectUnix(path, full.connectTimeoutMs);
    return new HeartbeatMonitor(conn, path, full);
  }

  /** Starts following a VM on its (source) console; `switchTo` moves to the destination's console. */
  static follow(sourceSock: string, opts: MonitorOptions = {}): Promise<HeartbeatMonitor> {
    return HeartbeatMonitor.connect(sourceSock, opts);
  }

  /**
   * Connects to the destination's console and resolves once connected. The monitor keeps reading the
   * current console until the destination prints (the migrated guest runs), then continues the same
   * series from the destination. Call it before or after starting the migration; before loses nothing.
   * If the destination's console closes before printing (a failed migration), the switch is dropped
   * and the monitor stays on the current console.
   */
  async switchTo(destSock: string, opts: { connectTimeoutMs?: number } = {}): Promise<void> {
    if (this.closed) throw new Error(`monitor closed; cannot switch to ${destSock}`);
    if (this.#next) throw new Error(`already switching to ${this.#next.path}`);
    const conn = await connectUnix(destSock, opts.connectTimeoutMs ?? this.#opts.connectTimeoutMs);
    if (this.closed) {
      conn.close();
      throw new Error(`monitor closed; cannot switch to ${destSock}`);
    }
    this.#next = { conn, path: destSock, pending: [], cutting: false, ended: false };
    this.#track(this.#readLoop(conn, destSock));
  }

  /** Whether a switchTo is still waiting for the destination to print. */
  get switching(): boolean {
    return this.#next !== undefined;
  }

  /** The console socket now being followed. */
  get path(): string {
    return this.#currentPath;
  }

  /** The start of the console output and its most recent part, for error messages. */
  get tail(): string {
    return this.#head.length < this.#opts.tailChars
      ? this.#head + this.#tail
      : `${this.#head}\n[...]\n${this.#tail}`;
  }

  waitForReady(timeoutMs = 120_000): Promise<ReadyInfo> {
    return this.#wait(() => this.ready !== undefined, timeoutMs, "the ready line").then(() => this.ready!);
  }

  /** Resolves with the first heartbeat whose counter is at least `n`. */
  waitForCounter(n: number, timeoutMs = 60_000): Promise<Heartbeat> {
    return this.#wait(() => this.lastCounter >= n, timeoutMs, `heartbeat ${n}`).then(() => {
      let i = this.heartbeats.length - 1;
      while (i > 0 && this.heartbeats[i - 1].counter >= n) i--;
      return this.heartbeats[i];
    });
  }

  /** A one-line summary for logs and failure messages. */
  summary(): string {
    const gap = this.maxGap
      ? `${this.maxGap.ms.toFixed(1)} ms (${this.maxGap.before}->${this.maxGap.after})`
      : "-";
    const sw = this.switches.map((s) => `${s.ms.toFixed(1)} ms (${s.before}->${s.after})`).join(", ") || "-";
    return `boot=${this.bootId ?? "?"} heartbeats=${this.count} last=${this.lastCounter} max_gap=${gap} ` +
      `switches=${sw} backwards=${this.wentBackwards} boot_changed=${this.bootIdChanged} skipped=${this.skipped}`;
  }

  async close(): Promise<void> {
    this.#userClosed = true;
    this.#setClosed(new Error("monitor closed"));
    try {
      this.#current.close();
    } catch { /* already closed */ }
    try {
      this.#next?.conn.close();
    } catch { /* already closed */ }
    this.#next = undefined;
    while (this.#tasks.size) await Promise.allSettled([...this.#tasks]);
  }

  // --- internals -------------------------------------------------------------------------------------

  #track(p: Promise<void>): void {
    const t = p.catch(() => {}).finally(() => this.#tasks.delete(t));
    this.#tasks.add(t);
  }

  async #readLoop(conn: Deno.UnixConn, path: string): Promise<void> {
    const decoder = new TextDecoder();
    const buf = new Uint8Array(65_536);
    let error: unknown;
    try {
      for (;;) {
        const n = await conn.read(buf);
        if (n === null) break;
        this.#onChunk(conn, {
          text: decoder.decode(buf.subarray(0, n), { stream: true }),
          at: performance.now(),
        });
      }
    } catch (err) {
      error = err;
    }
    this.#onEnd(conn, path, error);
  }

  #onChunk(conn: Deno.UnixConn, chunk: Chunk): void {
    if (conn === this.#current) {
      this.#currentLastData = chunk.at;
      this.#feed(chunk);
    } else if (this.#next && conn === this.#next.conn) {
      this.#next.pending.push(chunk);
      if (!this.#next.cutting) {
        this.#next.cutting = true;
        this.#track(this.#cutOver());
      }
    }
  }

  #onEnd(conn: Deno.UnixConn, path: string, error: unknown): void {
    if (this.#userClosed) return;
    const why = error ? `: ${error instanceof Error ? error.message : String(error)}` : "";
    if (conn === this.#current) {
      this.#currentEnded = true;
      // With a switch pending, the destination may still take over (the source QEMU has quit).
      if (!this.#next) this.#setClosed(new Error(`console ${path} closed${why}`));
    } else if (this.#next && conn === this.#next.conn && this.#next.cutting) {
      this.#next.ended = true; // the cut-over in progress finishes, then closes the monitor
    } else if (this.#next && conn === this.#next.conn) {
      // The destination went away before the guest ran there: stay with the current console.
      this.#next = undefined;
      this.#appendTail(`\n[heartbeat monitor: destination console ${path} closed before output${why}]\n`);
      if (this.#currentEnded) {
        this.#setClosed(new Error(`console ${this.#currentPath} closed and ${path} too`));
      }
    }
  }

  /** The destination has printed: drain the old console, retire it, continue with the destination. */
  async #cutOver(): Promise<void> {
    // The old console can send no new output now, but bytes it sent before stopping may still be on
    // their way through our reader; wait until it has been quiet for a moment.
    const quietMs = 100;
    while (this.#next && !this.#currentEnded && performance.now() - this.#currentLastData < quietMs) {
      await new Promise((r) => setTimeout(r, 10));
    }
    const next = this.#next;
    if (!next || this.closed) return;
    const old = this.#current;
    this.#current = next.conn;
    this.#currentPath = next.path;
    this.#currentEnded = next.ended;
    this.#currentLastData = next.pending[next.pending.length - 1]?.at ?? performance.now();
    this.#next = undefined;
    this.#segment++;
    try {
      old.close();
    } catch { /* already closed */ }
    for (const c of next.pending) this.#feed(c);
    if (next.ended) this.#setClosed(new Error(`console ${next.path} closed`));
  }

  #feed(chunk: Chunk): void {
    this.#appendTail(chunk.text);
    const lines = (this.#partial + chunk.text).split("\n");
    this.#partial = lines.pop() ?? "";
    if (this.#partial.length > 65_536) this.#partial = this.#partial.slice(-65_536);
    // Waiters are checked after every line: a wait for counter n sees heartbeat n even if a later
    // line in the same chunk changes the state again.
    for (const raw of lines) {
      this.#line(raw.replace(/\r/g, ""), chunk.at);
      this.#check();
    }
  }

  #line(line: string, at: number): void {
    let m = HB_RE.exec(line);
    if (m) {
      this.#heartbeat(m[1], Number(m[2]), Number(m[3]), at);
      return;
    }
    m = READY_RE.exec(line);
    if (m) {
      this.#noteBoot(m[1]);
      this.ready ??= { bootId: m[1], memMib: Number(m[2]), at };
      return;
    }
    m = ERROR_RE.exec(line);
    if (m) {
      this.guestErrors.push(m[1]);
      return;
    }
    m = PANIC_RE.exec(line);
    if (m) this.panic ??= m[0];
  }

  #heartbeat(bootId: string, counter: number, uptime: number, at: number): void {
    this.#noteBoot(bootId);
    const prev = this.heartbeats[this.heartbeats.length - 1];
    if (prev) {
      if (counter <= prev.counter) this.wentBackwards = true;
      else if (counter > prev.counter + 1) this.skipped += counter - prev.counter - 1;
      const gap = { ms: at - prev.at, before: prev.counter, after: counter };
      if (!this.maxGap || gap.ms > this.maxGap.ms) this.maxGap = gap;
      if (prev.segment !== this.#segment) this.switches.push(gap);
    }
    this.lastCounter = counter;
    this.lastUptime = uptime;
    this.count++;
    this.heartbeats.push({ counter, uptime, at, segment: this.#segment });
    if (this.heartbeats.length > this.#opts.maxKept * 1.1) {
      this.heartbeats.splice(0, this.heartbeats.length - this.#opts.maxKept);
    }
  }

  #noteBoot(bootId: string): void {
    if (this.bootId === undefined) this.bootId = bootId;
    else if (bootId !== this.bootId) this.bootIdChanged = true;
  }

  #appendTail(text: string): void {
    const max = this.#opts.tailChars;
    if (this.#head.length < max) {
      const take = text.slice(0, max - this.#head.length);
      this.#head += take;
      text = text.slice(take.length);
    }
    if (text) this.#tail = (this.#tail + text).slice(-max);
  }

  #wait(done: () => boolean, timeoutMs: number, what: string): Promise<void> {
    if (done()) return Promise.resolve();
    const failure = this.#failure();
    if (failure) return Promise.reject(this.#error(`waiting for ${what}: ${failure}`));
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = {
        done,
        resolve,
        reject: (err) => reject(this.#error(`waiting for ${what}: ${err.message}`)),
        timer: setTimeout(() => {
          this.#waiters.delete(w);
          reject(this.#error(`timed out after ${timeoutMs} ms waiting for ${what}`));
        }, timeoutMs),
      };
      this.#waiters.add(w);
    });
  }

  #failure(): string | undefined {
    if (this.panic) return `guest panicked: ${this.panic}`;
    if (this.closed) return "console closed";
    return undefined;
  }

  #check(): void {
    const failure = this.#failure();
    for (const w of [...this.#waiters]) {
      if (w.done()) {
        this.#waiters.delete(w);
        clearTimeout(w.timer);
        w.resolve();
      } else if (failure) {
        this.#waiters.delete(w);
        clearTimeout(w.timer);
        w.reject(new Error(failure));
      }
    }
  }

  #setClosed(err: Error): void {
    if (this.closed) return;
    this.closed = true;
    for (const w of [...this.#waiters]) {
      this.#waiters.delete(w);
      clearTimeout(w.timer);
      w.reject(err);
    }
  }

  #error(message: string): Error {
    return new Error(`${message}\n  ${this.summary()}\n--- console (${this.#currentPath}) ---\n${this.tail}`);
  }
}

async function connectUnix(path: string, timeoutMs: number): Promise<Deno.UnixConn> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      return await Deno.connect({ transport: "unix", path });
    } catch (err) {
      const retryable = err instanceof Deno.errors.NotFound || err instanceof Deno.errors.ConnectionRefused;
      if (!retryable || performance.now() >= deadline) {
        throw new Error(
          `cannot connect to console socket ${path}: ${err instanceof Error ? err.message : err}`,
        );
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/**
 * After a migration: the destination must carry the heartbeat on, with one switch, the same boot and no
 * counter going back. Returns the gap across the switch, in ms.
 */
export async function switchGap(hb: HeartbeatMonitor): Promise<number> {
  await hb.waitForCounter(hb.lastCounter + 10, 60_000);
  while (hb.switching) await hb.waitForCounter(hb.lastCounter + 1, 60_000);
  if (hb.switches.length !== 1) throw new Error(`expected one console switch: ${hb.summary()}`);
  if (hb.wentBackwards || hb.bootIdChanged) throw new Error(`heartbeat broken: ${hb.summary()}`);
  return hb.switches[0].ms;
}
