/**
 * A QMP (QEMU Machine Protocol) client over QEMU's unix control socket: JSON commands matched to
 * their replies by id, asynchronous events with a bounded recent-event log, and thin typed helpers for
 * the commands live migration needs. QMP sends one JSON object per line; replies come in order, but
 * every command carries an id so a late reply to a timed-out command cannot be taken for another's.
 */
import type { Logger } from "../obs/log.ts";
import { silentLogger } from "../obs/log.ts";

/** The byte stream a client talks over: a Deno.Conn, or an in-memory pair in tests. */
export interface QmpConnection {
  read(p: Uint8Array): Promise<number | null>;
  write(p: Uint8Array): Promise<number>;
  close(): void;
}

export const QMP_LIMITS = {
  /** One QMP line (a reply or an event); query-qmp-schema is the largest real one at ~200 KiB. */
  maxLineBytes: 16 * 1024 * 1024,
  /** Commands awaiting a reply at once; more is a caller bug, not load to absorb. */
  maxPendingCommands: 256,
  /** Events kept for `recentEvents`. */
  recentEvents: 64,
  /** Concurrent waitForEvent calls. */
  maxEventWaiters: 256,
} as const;

export const QMP_DEFAULTS = {
  connectTimeoutMs: 10_000,
  commandTimeoutMs: 30_000,
  eventTimeoutMs: 30_000,
} as const;

/** QEMU answered a command with {"error": {"class", "desc"}}. */
export class QmpError extends Error {
  override name = "QmpError";
  constructor(readonly command: string, readonly errorClass: string, readonly desc: string) {
    super(`QMP command "${command}" failed: ${errorClass}: ${desc}`);
  }
}

/** No reply (or no event) within the time allowed. */
export class QmpTimeoutError extends Error {
  override name = "QmpTimeoutError";
  constructor(readonly what: string, readonly timeoutMs: number, detail = "") {
    super(`QMP ${what} got no answer within ${timeoutMs} ms${detail}`);
  }
}

/** The connection is gone: every pending command and event wait fails with this. */
export class QmpClosedError extends Error {
  override name = "QmpClosedError";
  constructor(detail?: string) {
    super(`QEMU closed the QMP connection (did it exit?)${detail ? `: ${detail}` : ""}`);
  }
}

/** The QMP socket could not be reached, or QEMU spoke something that is not QMP. */
export class QmpConnectError extends Error {
  override name = "QmpConnectError";
}

export class QmpProtocolError extends Error {
  override name = "QmpProtocolError";
}

export interface QemuVersion {
  major: number;
  minor: number;
  micro: number;
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export type QmpEventHandler = (ev: QmpEvent) => void;

/** query-status. `status` is QEMU's RunState: "running", "paused", "inmigrate", "postmigrate", ... */
export interface QmpStatus {
  status: string;
  running: boolean;
}

/** QEMU 7.2 MigrationStatus. */
export type MigrationStatus =
  | "none"
  | "setup"
  | "cancelling"
  | "cancelled"
  | "active"
  | "postcopy-active"
  | "postcopy-paused"
  | "postcopy-recover"
  | "completed"
  | "failed"
  | "colo"
  | "pre-switchover"
  | "device"
  | "wait-unplug";

/** QEMU 7.2 MigrationStats (the `ram` member of query-migrate). Byte counts unless named otherwise. */
export interface MigrationRamStats {
  transferred: number;
  remaining: number;
  total: number;
  /** Pages found to be all zero (sent as a flag, not data). */
  duplicate: number;
  skipped: number;
  /** Pages sent in full. */
  normal: number;
  "normal-bytes": number;
  /** Pages dirtied per second, as QEMU last measured it. */
  "dirty-pages-rate": number;
  /** Throughput in megabits per second. */
  mbps: number;
  /** Dirty-bitmap syncs so far: 1 after the first pass, +1 per further iteration. */
  "dirty-sync-count": number;
  "postcopy-requests": number;
  "page-size": number;
  "multifd-bytes": number;
  "pages-per-second": number;
  "precopy-bytes"?: number;
  "downtime-bytes"?: number;
  "postcopy-bytes"?: number;
}

/** QEMU 7.2 MigrationInfo (query-migrate). Every member is optional; which appear depends on status. */
export interface MigrationInfo {
  status?: MigrationStatus;
  ram?: MigrationRamStats;
  /** Milliseconds since the migration started (final once completed). */
  "total-time"?: number;
  /** QEMU's downtime estimate in ms while active. */
  "expected-downtime"?: number;
  /** The real downtime in ms, once completed. */
  downtime?: number;
  /** Milliseconds spent in setup. */
  "setup-time"?: number;
  "cpu-throttle-percentage"?: number;
  /** Why it failed, when status is "failed". */
  "error-desc"?: string;
  /** Why migration is not possible right now (e.g. a device that cannot migrate). */
  "blocked-reasons"?: string[];
}

/** migrate-set-capabilities names in QEMU 7.2 (any other string is passed through as given). */
export type MigrationCapability =
  | "xbzrle"
  | "auto-converge"
  | "zero-blocks"
  | "compress"
  | "events"
  | "postcopy-ram"
  | "release-ram"
  | "block"
  | "return-path"
  | "pause-before-switchover"
  | "multifd"
  | "dirty-bitmaps"
  | "late-block-activate"
  | "x-ignore-shared"
  | "validate-uuid"
  | "zero-copy-send"
  | "postcopy-preempt";

/** migrate-set-parameters: the members dwcp sets. Units as QEMU defines them. */
export interface MigrationParameters {
  /** Largest pause of the guest QEMU may plan for at switchover, ms (QEMU default 300). */
  "downtime-limit"?: number;
  /** Bandwidth cap, bytes per second (QEMU default 128 MiB/s: set it, or migration is throttled). */
  "max-bandwidth"?: number;
  /** Parallel migration channels when the "multifd" capability is on (QEMU default 2). */
  "multifd-channels"?: number;
  "multifd-compression"?: "none" | "zlib" | "zstd";
  "multifd-zlib-level"?: number;
  "multifd-zstd-level"?: number;
  /** Bytes of page cache for the "xbzrle" capability. */
  "xbzrle-cache-size"?: number;
  /** Percent of vCPU time taken at the first auto-converge throttle step. */
  "cpu-throttle-initial"?: number;
  "cpu-throttle-increment"?: number;
  "max-cpu-throttle"?: number;
  "max-postcopy-bandwidth"?: number;
}

/**
 * Splits a byte stream into lines. Lines end with "\n" ("\r\n" from QEMU; the "\r" is dropped); a
 * line longer than maxLineBytes is an error rather than a reason to keep allocating.
 */
export class LineSplitter {
  #parts: Uint8Array[] = [];
  #buffered = 0;
  readonly #decoder = new TextDecoder();

  constructor(readonly maxLineBytes: number = QMP_LIMITS.maxLineBytes) {}

  /** Bytes held for a line not finished yet. */
  get buffered(): number {
    return this.#buffered;
  }

  /** Feeds bytes in; returns the lines they complete (possibly none). Throws QmpProtocolError. */
  push(chunk: Uint8Array): string[] {
    const lines: string[] = [];
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl < 0) break;
      lines.push(this.#finish(chunk.subarray(start, nl)));
      start = nl + 1;
    }
    const rest = chunk.subarray(start);
    if (rest.length > 0) {
      if (this.#buffered + rest.length > this.maxLineBytes) this.#tooLong(this.#buffered + rest.length);
      this.#parts.push(rest.slice());
      this.#buffered += rest.length;
    }
    return lines;
  }

  #finish(tail: Uint8Array): string {
    const total = this.#buffered + tail.length;
    if (total > this.maxLineBytes) this.#tooLong(total);
    let bytes = tail;
    if (this.#parts.length > 0) {
      bytes = new Uint8Array(total);
      let off = 0;
      for (const p of this.#parts) {
        bytes.set(p, off);
        off += p.length;
      }
      bytes.set(tail, off);
      this.#parts = [];
      this.#buffered = 0;
    }
    const end = bytes.length > 0 && bytes[bytes.length - 1] === 0x0d ? bytes.length - 1 : bytes.length;
    return this.#decoder.decode(bytes.subarray(0, end));
  }

  #tooLong(bytes: number): never {
    throw new QmpProtocolError(
      `a QMP line reached ${bytes} bytes without ending, over the ${this.maxLineBytes}-byte limit; ` +
        `the peer is not speaking QMP, or raise maxLineBytes`,
    );
  }
}

interface Pending {
  command: string;
  resolve(value: unknown): void;
  reject(err: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

interface EventWaiter {
  name: string;
  predicate?: (ev: QmpEvent) => boolean;
  resolve(ev: QmpEvent): void;
  reject(err: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

export interface QmpConnectOptions {
  /** How long to keep trying while QEMU has not created or opened the socket yet. Default 10 s. */
  timeoutMs?: number;
  log?: Logger;
  /** Gives up at once when aborted (e.g. QEMU exited while dwcp was still connecting). */
  signal?: AbortSignal;
}

/** Resolves after ms, or at once when the signal aborts. */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

export class QmpClient {
  readonly #conn: QmpConnection;
  readonly #log: Logger;
  readonly #splitter = new LineSplitter();
  readonly #encoder = new TextEncoder();
  readonly #pending = new Map<string, Pending>();
  readonly #handlers = new Map<string, Set<QmpEventHandler>>();
  readonly #waiters = new Set<EventWaiter>();
  readonly #recent: QmpEvent[] = [];
  #nextId = 1;
  #writeChain: Promise<void> = Promise.resolve();
  #closedError?: Error;
  readonly #greeting: Promise<QemuVersion>;
  #greetingSettle!: { resolve(v: QemuVersion): void; reject(err: Error): void };
  readonly #closed: Promise<void>;
  #markClosed!: () => void;

  /** QEMU's version from the greeting (0.0.0 until the greeting arrives). */
  version: QemuVersion = { major: 0, minor: 0, micro: 0 };

  /**
   * Wraps an open connection and starts reading. Most callers want `connect`; this is for an existing
   * stream (and tests). Call `handshake()` before sending commands.
   */
  constructor(conn: QmpConnection, opts: { log?: Logger } = {}) {
    this.#conn = conn;
    this.#log = opts.log ?? silentLogger;
    this.#closed = new Promise((r) => this.#markClosed = r);
    this.#greeting = new Promise((resolve, reject) => this.#greetingSettle = { resolve, reject });
    this.#greeting.catch(() => {}); // a connection that closes before anyone asks is not an error
    this.#readLoop();
  }

  /**
   * Connects to QEMU's QMP socket, retrying while QEMU has not created it or is not listening yet,
   * reads the greeting and enters command mode (qmp_capabilities).
   */
  static async connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? QMP_DEFAULTS.connectTimeoutMs;
    const deadline = Date.now() + timeoutMs;
    let delayMs = 5;
    let conn: Deno.UnixConn;
    const aborted = () =>
      new QmpConnectError(
        `connecting to the QMP socket ${path} was abandoned: ${String(opts.signal?.reason)}`,
      );
    for (;;) {
      if (opts.signal?.aborted) throw aborted();
      try {
        conn = await Deno.connect({ transport: "unix", path });
        break;
      } catch (err) {
        const retryable = err instanceof Deno.errors.NotFound || err instanceof Deno.errors.ConnectionRefused;
        if (!retryable || Date.now() + delayMs > deadline) {
          throw new QmpConnectError(
            `cannot connect to the QMP socket ${path} within ${timeoutMs} ms: ${(err as Error).message}; ` +
              `is QEMU running with -qmp unix:${path},server=on,wait=off?`,
          );
        }
        await sleep(delayMs, opts.signal);
        delayMs = Math.min(delayMs * 2, 200);
      }
    }
    const client = new QmpClient(conn, { log: opts.log });
    const onAbort = () => client.close();
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      if (opts.signal?.aborted) throw aborted();
      await client.handshake(Math.max(1, deadline - Date.now()));
    } catch (err) {
      client.close();
      throw opts.signal?.aborted ? aborted() : err;
    } finally {
      opts.signal?.removeEventListener("abort", onAbort);
    }
    return client;
  }

  /** Waits for the greeting and negotiates command mode. */
  async handshake(timeoutMs: number = QMP_DEFAULTS.connectTimeoutMs): Promise<QemuVersion> {
    if (this.#closedError) throw this.#closedError;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const version = await Promise.race([
      this.#greeting,
      new Promise<never>((_, reject) =>
        timer = setTimeout(
          () =>
            reject(
              new QmpTimeoutError(
                "greeting",
                timeoutMs,
                "; is this QEMU's -qmp socket, and is no other client connected (QEMU serves one at a time)?",
              ),
            ),
          timeoutMs,
        )
      ),
    ]).finally(() => clearTimeout(timer));
    this.version = version;
    await this.execute("qmp_capabilities", undefined, { timeoutMs });
    this.#log("qmp connected", { qemu: `${version.major}.${version.minor}.${version.micro}` });
    return version;
  }

  /** Resolves once the connection has closed, for whatever reason. */
  get closed(): Promise<void> {
    return this.#closed;
  }

  get isClosed(): boolean {
    return this.#closedError !== undefined;
  }

  /** The last events received, oldest first (at most QMP_LIMITS.recentEvents). */
  get recentEvents(): readonly QmpEvent[] {
    return [...this.#recent];
  }

  /** Sends a command and resolves with its `return` value; QmpError, QmpTimeoutError, QmpClosedError. */
  execute<T = unknown>(
    command: string,
    args?: Record<string, unknown>,
    opts: { timeoutMs?: number } = {},
  ): Promise<T> {
    if (this.#closedError) return Promise.reject(this.#closedError);
    if (this.#pending.size >= QMP_LIMITS.maxPendingCommands) {
      return Promise.reject(
        new RangeError(
          `QMP command "${command}" refused: ${this.#pending.size} commands already await a reply ` +
            `(limit ${QMP_LIMITS.maxPendingCommands}); wait for replies before sending more`,
        ),
      );
    }
    const timeoutMs = opts.timeoutMs ?? QMP_DEFAULTS.commandTimeoutMs;
    const id = `dwcp-${this.#nextId++}`;
    const msg: Record<string, unknown> = { execute: command, id };
    if (args !== undefined) msg.arguments = args;
    const line = this.#encoder.encode(JSON.stringify(msg) + "\n");
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new QmpTimeoutError(`command "${command}"`, timeoutMs));
      }, timeoutMs);
      this.#pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.#write(line).catch((err) => {
        const p = this.#pending.get(id);
        if (!p) return;
        this.#pending.delete(id);
        clearTimeout(p.timer);
        p.reject(this.#closedError ?? new QmpClosedError(`writing "${command}": ${(err as Error).message}`));
      });
    });
  }

  /** Subscribes to an event by name ("*" for all); returns the function that unsubscribes. */
  on(event: string, handler: QmpEventHandler): () => void {
    let set = this.#handlers.get(event);
    if (!set) this.#handlers.set(event, set = new Set());
    set.add(handler);
    return () => {
      set.delete(handler);
      if (set.size === 0 && this.#handlers.get(event) === set) this.#handlers.delete(event);
    };
  }

  /**
   * Resolves with the next event of this name (that the predicate accepts). Only events arriving after
   * the call count: start waiting before sending the command that causes the event.
   */
  waitForEvent(
    name: string,
    predicate?: (ev: QmpEvent) => boolean,
    opts: { timeoutMs?: number } = {},
  ): Promise<QmpEvent> {
    if (this.#closedError) return Promise.reject(this.#closedError);
    if (this.#waiters.size >= QMP_LIMITS.maxEventWaiters) {
      return Promise.reject(
        new RangeError(`too many waitForEvent calls in flight (limit ${QMP_LIMITS.maxEventWaiters})`),
      );
    }
    const timeoutMs = opts.timeoutMs ?? QMP_DEFAULTS.eventTimeoutMs;
    return new Promise<QmpEvent>((resolve, reject) => {
      const waiter: EventWaiter = {
        name,
        predicate,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.#waiters.delete(waiter);
          reject(new QmpTimeoutError(`event ${name}`, timeoutMs));
        }, timeoutMs),
      };
      this.#waiters.add(waiter);
    });
  }

  // --- typed helpers ---------------------------------------------------------------------------------

  /** query-status: QEMU's run state ("running", "paused", "inmigrate", "postmigrate", ...). */
  async queryStatus(): Promise<QmpStatus> {
    const r = await this.execute<{ status: string; running: boolean }>("query-status");
    return { status: r.status, running: r.running };
  }

  /** query-migrate: the state and counters of the current (or last) outgoing or incoming migration. */
  queryMigrate(): Promise<MigrationInfo> {
    return this.execute<MigrationInfo>("query-migrate");
  }

  /** migrate-set-capabilities, e.g. { multifd: true, "auto-converge": true }. Before `migrate` only. */
  async setCapabilities(caps: Partial<Record<MigrationCapability, boolean>> | Record<string, boolean>) {
    const capabilities = Object.entries(caps).map(([capability, state]) => ({ capability, state }));
    await this.execute("migrate-set-capabilities", { capabilities });
  }

  /** migrate-set-parameters: downtime-limit (ms), max-bandwidth (bytes/s), multifd-channels, ... */
  async setParameters(params: MigrationParameters): Promise<void> {
    await this.execute("migrate-set-parameters", { ...params });
  }

  /** query-migrate-parameters: the values in force. */
  queryParameters(): Promise<Required<MigrationParameters> & Record<string, unknown>> {
    return this.execute("query-migrate-parameters");
  }

  /** Starts an outgoing migration to a QEMU URI ("unix:/path", "tcp:host:port", "fd:name", ...). */
  async migrate(uri: string): Promise<void> {
    await this.execute("migrate", { uri });
  }

  /** On a QEMU started with -incoming defer: listens for the incoming migration at this URI. */
  async migrateIncoming(uri: string): Promise<void> {
    await this.execute("migrate-incoming", { uri });
  }

  /**
   * Switches a running migration (with the postcopy-ram capability on both sides) to postcopy: the
   * source stops the guest, sends its device state, and the destination runs it and fetches the pages
   * it still lacks over the return path.
   */
  async migrateStartPostcopy(): Promise<void> {
    await this.execute("migrate-start-postcopy");
  }

  async migrateCancel(): Promise<void> {
    await this.execute("migrate_cancel");
  }

  /** Resumes the guest's vCPUs. */
  async cont(): Promise<void> {
    await this.execute("cont");
  }

  /** Pauses the guest's vCPUs. */
  async stop(): Promise<void> {
    await this.execute("stop");
  }

  /**
   * Asks QEMU to exit. QEMU may close the socket before its reply arrives, so a closed connection counts
   * as success; resolves once the connection has closed.
   */
  async quit(opts: { timeoutMs?: number } = {}): Promise<void> {
    try {
      await this.execute("quit", undefined, opts);
    } catch (err) {
      if (!(err instanceof QmpClosedError)) throw err;
    }
    const timeoutMs = opts.timeoutMs ?? QMP_DEFAULTS.commandTimeoutMs;
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.#closed,
      new Promise<void>((_, reject) =>
        timer = setTimeout(
          () => reject(new QmpTimeoutError(`quit`, timeoutMs, " (QEMU kept the connection open)")),
          timeoutMs,
        )
      ),
    ]).finally(() => clearTimeout(timer));
  }

  /** Closes the connection; pending commands fail with QmpClosedError. Safe to call twice. */
  close(): void {
    this.#shutdown(new QmpClosedError("closed by dwcp"));
  }

  // --- internals -------------------------------------------------------------------------------------

  #write(bytes: Uint8Array): Promise<void> {
    const next = this.#writeChain.then(async () => {
      let sent = 0;
      while (sent < bytes.length) sent += await this.#conn.write(bytes.subarray(sent));
    });
    this.#writeChain = next.catch(() => {});
    return next;
  }

  async #readLoop(): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    let reason: Error = new QmpClosedError();
    try {
      for (;;) {
        const n = await this.#conn.read(buf);
        if (n === null) break;
        for (const line of this.#splitter.push(buf.subarray(0, n))) {
          if (line.trim() !== "") this.#dispatch(line);
        }
      }
    } catch (err) {
      if (err instanceof QmpProtocolError) {
        reason = err;
        this.#log("qmp protocol error", { error: err.message });
      } else if (!this.#closedError) {
        reason = new QmpClosedError((err as Error).message);
      }
    }
    this.#shutdown(reason);
  }

  #dispatch(line: string): void {
    let msg: Record<string, unknown>;
    try {
      const parsed = JSON.parse(line);
      if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
        throw new Error("not an object");
      }
      msg = parsed;
    } catch {
      throw new QmpProtocolError(`QEMU sent a line that is not a JSON object: ${line.slice(0, 200)}`);
    }
    if ("QMP" in msg) {
      const v = (msg.QMP as { version?: { qemu?: Partial<QemuVersion> } })?.version?.qemu;
      this.#greetingSettle.resolve({ major: v?.major ?? 0, minor: v?.minor ?? 0, micro: v?.micro ?? 0 });
      return;
    }
    if (typeof msg.event === "string") {
      this.#onEvent(msg as unknown as QmpEvent);
      return;
    }
    if ("return" in msg || "error" in msg) {
      this.#onReply(msg);
      return;
    }
    this.#log("qmp message ignored", { line: line.slice(0, 200) });
  }

  #onReply(msg: Record<string, unknown>): void {
    // Every command carries an id; a reply without one (QEMU only does that for errors it could not
    // attribute, such as unparsable input) goes to the oldest pending command, as QMP replies in order.
    let id = typeof msg.id === "string" ? msg.id : undefined;
    if (id === undefined && msg.id === undefined) id = this.#pending.keys().next().value;
    const p = id === undefined ? undefined : this.#pending.get(id);
    if (!p || id === undefined) {
      this.#log("qmp reply for no pending command (timed out earlier?)", { id: msg.id });
      return;
    }
    this.#pending.delete(id);
    clearTimeout(p.timer);
    if ("error" in msg) {
      const e = (msg.error ?? {}) as { class?: string; desc?: string };
      p.reject(new QmpError(p.command, e.class ?? "GenericError", e.desc ?? "no description"));
    } else {
      p.resolve(msg.return);
    }
  }

  #onEvent(ev: QmpEvent): void {
    this.#recent.push(ev);
    if (this.#recent.length > QMP_LIMITS.recentEvents) this.#recent.shift();
    for (const key of [ev.event, "*"]) {
      for (const h of this.#handlers.get(key) ?? []) {
        try {
          h(ev);
        } catch (err) {
          this.#log("qmp event handler threw", { event: ev.event, error: (err as Error).message });
        }
      }
    }
    for (const w of [...this.#waiters]) {
      if (w.name !== ev.event) continue;
      let ok: boolean;
      try {
        ok = w.predicate ? w.predicate(ev) : true;
      } catch (err) {
        this.#waiters.delete(w);
        clearTimeout(w.timer);
        w.reject(err as Error);
        continue;
      }
      if (!ok) continue;
      this.#waiters.delete(w);
      clearTimeout(w.timer);
      w.resolve(ev);
    }
  }

  #shutdown(reason: Error): void {
    if (this.#closedError) return;
    this.#closedError = reason;
    try {
      this.#conn.close();
    } catch { /* already closed */ }
    this.#greetingSettle.reject(reason);
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(reason);
    }
    this.#pending.clear();
    for (const w of this.#waiters) {
      clearTimeout(w.timer);
      w.reject(reason);
    }
    this.#waiters.clear();
    this.#markClosed();
  }
}
