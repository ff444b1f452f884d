/**
 * The source side of live migrations: checks the request, prepares the destination, then drives the
 * state machine (machine.ts) with what QEMU, the transport and the destination report, and carries
 * out its actions. QEMU migrates into a unix socket this agent listens on; the bytes travel as a
 * stream transfer over N TCP streams into the sink the destination prepared, with backpressure all
 * the way, so QEMU's bandwidth and downtime estimates reflect the real end-to-end rate.
 */
import { join } from "node:path";
import type { Logger } from "../obs/log.ts";
import { TransferProgress, type TransferSnapshot } from "../obs/progress.ts";
import { StreamSource } from "../transport/chunk_source.ts";
import { dial, type PeerAddress, TransferError } from "../transport/dial.ts";
import type { PeerIdentity } from "../transport/handshake.ts";
import { OutgoingTransfer } from "../transport/sender.ts";
import { closeQuietly, expectMessage, PeerError, receiveMessage, sendMessage } from "../transport/wire.ts";
import type { VmManager } from "../vm/manager.ts";
import type { MigrationInfo, QmpClient } from "./qmp.ts";
import {
  DEFAULT_POLICY,
  initialState,
  isTerminal,
  type MigrationAction,
  type MigrationEvent,
  type MigrationPolicy,
  type MigrationState,
  type Phase,
  step,
} from "./machine.ts";
import type { PreparedMessage, PrepareMessage } from "./messages.ts";

export interface MigrationRequest {
  vm: string;
  peer: string;
  streams?: number;
  downtimeLimitMs?: number;
  /** QEMU's bandwidth cap for the migration, bytes/s; default: unlimited (the agents' streams pace it). */
  maxBytesPerSec?: number;
  autoConverge?: boolean;
}

export interface MigrationSnapshot {
  id: string;
  vm: string;
  peer: string;
  phase: Phase;
  startedAt: string;
  elapsedMs: number;
  /** Bytes of QEMU's migration stream carried so far, and the current rate. */
  bytesSent: number;
  bytesPerSec: number;
  /** From QEMU: memory left to send, how fast the guest dirties it, and how many passes ran. */
  remainingBytes?: number;
  dirtyBytesPerSec?: number;
  passes?: number;
  expectedDowntimeMs?: number;
  /** QEMU's measured downtime, and the pause as the agents saw it (QEMU's figure plus the handover). */
  downtimeMs?: number;
  observedDowntimeMs?: number;
  totalTimeMs?: number;
  streams: number;
  transfer?: TransferSnapshot;
  events: { at: string; phase: Phase; message: string }[];
  error?: { code: string; message: string };
}

export interface MigrationDeps {
  vms: VmManager;
  identity: PeerIdentity;
  secret: string;
  resolvePeer(peer: string): PeerAddress;
  defaults: { streams: number; windowChunks: number; maxRetries: number; stallTimeoutMs: number };
  log: Logger;
  policy?: MigrationPolicy;
  now?: () => number;
}

export class MigrationError extends Error {
  override name = "MigrationError";
  constructor(readonly status: 400 | 404 | 409, readonly code: string, message: string) {
    super(message);
  }
}

/** Chunks of the migration stream: small enough that the final burst is not held back. */
const STREAM_CHUNK_BYTES = 256 * 1024;
const POLL_MS = 50;
const MAX_EVENTS = 64;
const MAX_FINISHED = 64;

export class MigrationService {
  readonly #all = new Map<string, OutgoingMigration>();

  constructor(readonly deps: MigrationDeps) {}

  async start(req: MigrationRequest): Promise<MigrationSnapshot> {
    const vm = this.deps.vms.list().find((v) => v.name === req.vm && v.state !== "stopped");
    if (!vm) throw new MigrationError(404, "vm_not_found", `no VM named "${req.vm}" runs on this agent`);
    if ([...this.#all.values()].some((m) => m.vm === req.vm && !isTerminal(m.phase))) {
      throw new MigrationError(409, "vm_migrating", `VM "${req.vm}" is already migrating`);
    }
    if (vm.state !== "running") {
      throw new MigrationError(
        409,
        "vm_not_running",
        `VM "${req.vm}" is ${vm.state}; only a running VM can migrate`,
      );
    }
    const peer = this.deps.resolvePeer(req.peer);
    const m = new OutgoingMigration(crypto.randomUUID(), req, peer, this.deps);
    await m.prepare();
    this.#all.set(m.id, m);
    this.#prune();
    m.run();
    return m.snapshot();
  }

  get(id: string): OutgoingMigration | undefined {
    return this.#all.get(id);
  }

  list(): MigrationSnapshot[] {
    return [...this.#all.values()].map((m) => m.snapshot());
  }

  async cancel(id: string): Promise<MigrationSnapshot | undefined> {
    const m = this.#all.get(id);
    if (!m) return undefined;
    await m.cancel();
    return m.snapshot();
  }

  #prune(): void {
    const finished = [...this.#all.values()].filter((m) => isTerminal(m.phase));
    for (const m of finished.slice(0, Math.max(0, finished.length - MAX_FINISHED))) this.#all.delete(m.id);
  }
}

export class OutgoingMigration {
  readonly vm: string;
  readonly #deps: MigrationDeps;
  readonly #policy: MigrationPolicy;
  readonly #now: () => number;
  #state: MigrationState;
  #exchange?: Deno.TcpConn;
  #sink = "";
  #listener?: Deno.Listener;
  #transfer?: OutgoingTransfer;
  #progress?: TransferProgress;
  #info: MigrationInfo = {};
  #completedAtMs?: number;
  #runningAtMs?: number;
  readonly #events: MigrationSnapshot["events"] = [];
  readonly #listeners = new Set<(s: MigrationSnapshot) => void>();
  readonly #finished = Promise.withResolvers<void>();
  #pendingAbort?: PromiseWithResolvers<void>;

  constructor(
    readonly id: string,
    readonly req: MigrationRequest,
    readonly peer: PeerAddress,
    deps: MigrationDeps,
  ) {
    this.vm = req.vm;
    this.#deps = deps;
    this.#policy = deps.policy ?? DEFAULT_POLICY;
    this.#now = deps.now ?? (() => Date.now());
    this.#state = initialState(this.#now());
  }

  get phase(): Phase {
    return this.#state.phase;
  }

  get streams(): number {
    return this.req.streams ?? this.#deps.defaults.streams;
  }

  /** Asks the destination to start the incoming VM; throws (for a 4xx/5xx answer) if it refuses. */
  async prepare(): Promise<void> {
    const vm = this.#deps.vms.get(this.vm)!;
    const conn = await dial(this.peer, this.#deps.secret, this.#deps.identity);
    try {
      await sendMessage(
        conn,
        { type: "migrate-prepare", migrationId: this.id, vm: vm.spec } satisfies PrepareMessage,
      );
      this.#sink = (await expectMessage<PreparedMessage>(conn, "prepared")).sink;
      this.#exchange = conn;
    } catch (err) {
      closeQuietly(conn);
      throw err;
    }
    this.#dispatch({ type: "start" }); // prepare phase: the destination is ready
  }

  /** Runs to a terminal phase; never throws. */
  async run(): Promise<void> {
    this.#readExchange();
    const timer = setInterval(() => this.#poll(), POLL_MS);
    this.#dispatch({ type: "destinationPrepared" });
    await this.#finished.promise;
    clearInterval(timer);
  }

  async cancel(): Promise<void> {
    this.#dispatch({ type: "cancel" });
    if (this.#state.phase === "rollback") await this.#finished.promise;
  }

  subscribe(listener: (s: MigrationSnapshot) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  snapshot(): MigrationSnapshot {
    const ram = this.#info.ram;
    const transfer = this.#progress?.snapshot();
    const observed = this.#completedAtMs !== undefined && this.#runningAtMs !== undefined
      ? (this.#info.downtime ?? 0) + Math.max(0, this.#runningAtMs - this.#completedAtMs)
      : undefined;
    return {
      id: this.id,
      vm: this.vm,
      peer: this.req.peer,
      phase: this.#state.phase,
      startedAt: new Date(this.#state.startedAtMs).toISOString(),
      // A terminal phase is entered once and never left: its entry time is the end.
      elapsedMs: (isTerminal(this.#state.phase) ? this.#state.phaseSinceMs : this.#now()) -
        this.#state.startedAtMs,
      bytesSent: transfer?.bytesDone ?? 0,
      bytesPerSec: transfer?.bytesPerSec ?? 0,
      remainingBytes: ram?.remaining,
      dirtyBytesPerSec: ram ? ram["dirty-pages-rate"] * ram["page-size"] : undefined,
      passes: ram?.["dirty-sync-count"],
      expectedDowntimeMs: this.#info["expected-downtime"],
      downtimeMs: this.#info.downtime,
      observedDowntimeMs: observed,
      totalTimeMs: this.#info["total-time"],
      streams: this.streams,
      transfer,
      events: [...this.#events],
      error: this.#state.failure && isTerminal(this.#state.phase)
        ? { code: this.#state.failure.code, message: this.#state.failure.message }
        : undefined,
    };
  }

  #qmp(): QmpClient {
    return this.#deps.vms.qmp(this.vm);
  }

  #dispatch(ev: MigrationEvent): void {
    const { state, actions } = step(this.#state, ev, this.#now(), this.#policy);
    this.#state = state;
    for (const action of actions) {
      this.#perform(action).catch((err) => {
        this.#deps.log("migration action failed", {
          migration: this.id,
          action: action.type,
          error: String(err),
        });
        this.#dispatch({
          type: "failure",
          code: codeOf(err),
          message: `${action.type}: ${(err as Error).message}`,
        });
      });
    }
    if (isTerminal(state.phase)) this.#finish();
  }

  #finish(): void {
    this.#transfer?.cancel("migration ended").catch(() => {});
    if (this.#listener) closeQuietly(this.#listener);
    this.#deps.log("migration ended", { migration: this.id, vm: this.vm, phase: this.#state.phase });
    this.#notify();
    queueMicrotask(() => {
      if (this.#exchange) closeQuietly(this.#exchange);
      this.#finished.resolve();
    });
  }

  #notify(): void {
    const snap = this.snapshot();
    for (const l of this.#listeners) l(snap);
  }

  async #perform(a: MigrationAction): Promise<void> {
    switch (a.type) {
      case "report":
        this.#events.push({ at: new Date(this.#now()).toISOString(), phase: a.phase, message: a.message });
        if (this.#events.length > MAX_EVENTS) this.#events.shift();
        this.#notify();
        return;
      case "prepareDestination":
        return; // done synchronously in prepare(), so that its refusals answer the API request
      case "startSource":
        return await this.#startSource();
      case "enableAutoConverge":
        // The capability is on from the start; this raises the throttle QEMU applies to the vCPUs.
        return await this.#qmp().setParameters({ "cpu-throttle-initial": 50, "cpu-throttle-increment": 20 });
      case "cancelSource":
        await this.#qmp().migrateCancel().catch(() => {});
        return;
      case "abortDestination":
        return await this.#abortDestination();
      case "resumeSource": {
        const status = await this.#qmp().queryStatus();
        if (!status.running) await this.#qmp().cont();
        return;
      }
      case "quitSource":
        await this.#deps.vms.stop(this.vm);
        return;
      case "finishDestination":
        await sendMessage(this.#exchange!, { type: "finish" });
        await expectMessage(this.#exchange!, "finished").catch(() => {});
        return;
    }
  }

  async #startSource(): Promise<void> {
    const vm = this.#deps.vms.get(this.vm)!;
    const path = join(vm.runDir, `migrate-${this.id.slice(0, 8)}.sock`);
    await Deno.remove(path).catch(() => {});
    const listener = Deno.listen({ transport: "unix", path });
    this.#listener = listener;
    const qmp = this.#qmp();
    await qmp.setCapabilities({ "auto-converge": this.req.autoConverge ?? true, events: true });
    await qmp.setParameters({
      "downtime-limit": this.req.downtimeLimitMs ?? 300,
      // QEMU caps migrations at 128 MiB/s by default; the agents' streams do the pacing instead.
      "max-bandwidth": this.req.maxBytesPerSec ?? 64 * 1024 * 1024 * 1024,
    });
    qmp.on("MIGRATION", (ev) => {
      // QEMU stamps its events with the host's clock: the moment the source handed over its last bytes.
      if (ev.data?.status === "completed" && ev.timestamp) {
        this.#completedAtMs ??= ev.timestamp.seconds * 1000 + ev.timestamp.microseconds / 1000;
      }
      this.#poll();
    });
    await qmp.migrate(`unix:${path}`);
    const input = await listener.accept();
    closeQuietly(listener);
    await Deno.remove(path).catch(() => {});
    const d = this.#deps.defaults;
    const source = new StreamSource(input, STREAM_CHUNK_BYTES, this.streams * d.windowChunks);
    this.#progress = new TransferProgress({
      id: this.id,
      direction: "send",
      source: `vm ${this.vm}`,
      peer: this.req.peer,
      destination: this.#sink,
      sizeBytes: 0,
      codec: "none",
      chunkBytes: STREAM_CHUNK_BYTES,
      streams: this.streams,
    });
    this.#transfer = await OutgoingTransfer.open(
      {
        transferId: this.id,
        peer: this.peer,
        target: { mode: "stream", sink: this.#sink },
        streams: this.streams,
        chunkBytes: STREAM_CHUNK_BYTES,
        codec: "none",
        maxRetries: d.maxRetries,
        stallTimeoutMs: d.stallTimeoutMs,
        secret: this.#deps.secret,
        identity: this.#deps.identity,
      },
      source,
      this.#progress,
    );
    this.#transfer.run().then(() => {
      const snap = this.#progress!.snapshot();
      if (snap.state !== "completed" && !isTerminal(this.#state.phase)) {
        this.#dispatch({
          type: "failure",
          code: snap.error?.code ?? "transfer_failed",
          message: `the migration stream failed: ${snap.error?.message ?? snap.state}`,
        });
      }
    });
    this.#dispatch({ type: "sourceStarted" });
  }

  async #abortDestination(): Promise<void> {
    const conn = this.#exchange;
    if (!conn) return this.#dispatch({ type: "destinationAborted" });
    this.#pendingAbort = Promise.withResolvers();
    await sendMessage(conn, { type: "abort", reason: this.#state.failure?.message ?? "aborted" });
    await this.#pendingAbort.promise;
  }

  async #readExchange(): Promise<void> {
    const conn = this.#exchange!;
    try {
      while (!isTerminal(this.#state.phase)) {
        const msg = await receiveMessage<{ type: string; code?: string; message?: string }>(conn);
        if (msg.type === "running") {
          this.#runningAtMs = this.#now();
          await this.#poll(); // QEMU's final figures (downtime) before the source is quit
          this.#dispatch({ type: "destinationRunning" });
        } else if (msg.type === "aborted") {
          this.#dispatch({ type: "destinationAborted" });
          this.#pendingAbort?.resolve();
        } else if (msg.type === "error") {
          this.#dispatch({
            type: "failure",
            code: msg.code ?? "destination_failed",
            message: String(msg.message),
          });
        }
      }
    } catch {
      if (isTerminal(this.#state.phase)) return;
      this.#pendingAbort?.reject(new TransferError("destination_lost", "the destination agent went away"));
      this.#dispatch({
        type: "failure",
        code: "destination_lost",
        message: "the destination agent closed the migration exchange (did it stop?)",
      });
    }
  }

  async #poll(): Promise<void> {
    if (isTerminal(this.#state.phase) || this.#state.phase === "prepare") {
      this.#dispatch({ type: "tick" });
      return;
    }
    try {
      this.#info = await this.#qmp().queryMigrate();
    } catch {
      return; // QEMU busy or gone; the transfer or the exchange reports the failure
    }
    const status = this.#info.status ?? "none";
    if (status === "completed" && this.#completedAtMs === undefined) this.#completedAtMs = this.#now();
    this.#dispatch({
      type: "sourceProgress",
      progress: {
        status,
        passes: this.#info.ram?.["dirty-sync-count"] ?? 0,
        remainingBytes: this.#info.ram?.remaining ?? 0,
      },
    });
    this.#dispatch({ type: "tick" });
    this.#notify();
  }
}

function codeOf(err: unknown): string {
  return err instanceof TransferError || err instanceof PeerError ? err.code : "migration_failed";
}
