/**
 * The source side of live migrations: checks the request, prepares the destination, then drives the
 * state machine (machine.ts) with what QEMU, the transport and the destination report, and carries
 * out its actions. QEMU migrates into a unix socket this agent listens on; the bytes travel as a
 * stream transfer over N TCP streams into the sink the destination prepared, with backpressure all
 * the way, so QEMU's bandwidth and downtime estimates reflect the real end-to-end rate. With dedupe,
 * a DedupeSource between QEMU's socket and the transfer sends the pages the destination's chunk store
 * lacks; the destination's WANTs come back on the migration exchange.
 *
 * Postcopy: both QEMUs get the postcopy-ram and return-path capabilities; what the incoming QEMU writes
 * back on its migration socket (page requests, acknowledgements) comes back on the exchange as
 * `return-path` messages and is written into the socket the source QEMU migrates into, which is duplex.
 * The exchange, not a reverse stream transfer, because those messages are a few dozen bytes and each
 * holds up a vCPU of the running guest: one small message on a connection that already runs that way and
 * is already read adds no chunking, acknowledgement or credit round to the wait (docs/wire-format.md §5).
 *
 * Multifd: with K channels QEMU opens 1 + K connections to the socket, the main channel first; each is
 * carried as its own stream transfer into the sink the destination named for that channel, in order.
 *
 * The direct channel (direct_channel.ts), on a datacenter link where nothing needs the streams: QEMU
 * migrates on an authenticated connection to the destination's data port that each agent hands to its own
 * QEMU; the agents then only drive the state machine, and QEMU's counters are the progress.
 */
import { join } from "node:path";
import type { Logger } from "../obs/log.ts";
import { TransferProgress, type TransferSnapshot } from "../obs/progress.ts";
import { StreamSource } from "../transport/chunk_source.ts";
import { dial, type PeerAddress, type PeerConn, TransferError } from "../transport/dial.ts";
import type { PeerIdentity } from "../transport/handshake.ts";
import { OutgoingTransfer } from "../transport/sender.ts";
import {
  closeQuietly,
  type Duplex,
  expectMessage,
  PeerError,
  receiveMessage,
  sendMessage,
  writeAll,
} from "../transport/wire.ts";
import type { VmManager } from "../vm/manager.ts";
import type { PeerLinks } from "../mode/links.ts";
import type { ModeParameters } from "../mode/parameters.ts";
import { tuneForForecast } from "./tuning.ts";
import { channelBufferBytes, directChannelBlocker, startDirectSource } from "./direct_channel.ts";
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
import type { DedupeWantMessage, PreparedMessage, PrepareMessage, ReturnPathMessage } from "./messages.ts";
import {
  dedupeSnapshot,
  DedupeSource,
  type MigrationDedupeSnapshot,
  wantOf,
} from "../dedupe/migration_io.ts";

export interface MigrationRequest {
  vm: string;
  peer: string;
  streams?: number;
  downtimeLimitMs?: number;
  /** QEMU's bandwidth cap for the migration, bytes/s; default: unlimited (the agents' streams pace it). */
  maxBytesPerSec?: number;
  autoConverge?: boolean;
  /** Send only the pages the destination's chunk store lacks (see wantsDedupe). */
  dedupe?: boolean;
  /** Allows postcopy when precopy does not converge even with auto-converge. */
  postcopy?: boolean;
  /** QEMU multifd channels; default: the link mode's (0: one channel). Never with postcopy. */
  multifdChannels?: number;
  /**
   * How QEMU's stream travels: "streams", carried by the agents over their N streams (with codec, dedupe,
   * TLS, multifd); "direct", QEMU writes into an authenticated agent connection handed to it
   * (direct_channel.ts); "auto" (default): direct on a datacenter link when nothing asked needs the agents.
   */
  channel?: MigrationChannel;
}

export const MIGRATION_CHANNELS = ["auto", "direct", "streams"] as const;
export type MigrationChannel = typeof MIGRATION_CHANNELS[number];

/**
 * Whether a migration's stream travels deduped: the one switch point. The request decides; left open, an
 * internet link gets it, where bytes cost more than the CPU and the store's disk writes (on loopback a
 * cold-store dedupe ran 4.8 s against 0.8 s plain: bench/dedupe_migrations.ts). It was off by default for a
 * while after deduped guests crashed on arrival under stress; that was QEMU 7.2 losing TCG guests' writes
 * (src/vm/qemu_args.ts), which dedupe's longer migrations only met more often: with the fix, 9 deduped
 * internet-mode migrations left no page of the destination's RAM different from the source's, where without
 * it the same test found 735 and 2555.
 */
export function wantsDedupe(req: MigrationRequest, mode?: ModeParameters): boolean {
  if (req.dedupe !== undefined) return req.dedupe;
  // Never where the request asked for what dedupe cannot go with: QEMU's own socket, or multifd channels.
  return mode?.mode === "internet" && req.channel !== "direct" && !((req.multifdChannels ?? 0) > 0);
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
  /** How QEMU's stream travels (MigrationRequest.channel); optional for snapshots of older agents. */
  channel?: "direct" | "streams";
  /**
   * Whether postcopy is allowed, and the multifd channels in use (0: QEMU's single channel). Optional
   * because the CLI reads snapshots with this type from agents that may predate them.
   */
  postcopy?: boolean;
  multifdChannels?: number;
  /** Under postcopy: pages the destination asked for over the return path (QEMU's count). */
  postcopyRequests?: number;
  /** The main channel's transfer; with multifd, bytesSent and bytesPerSec add up every channel's. */
  transfer?: TransferSnapshot;
  /** With dedupe asked for: what it saved, or why it is off. bytesSent counts the deduped stream. */
  dedupe?: MigrationDedupeSnapshot;
  events: { at: string; phase: Phase; message: string }[];
  error?: { code: string; message: string };
}

/** What a migration asks of link probing: the peer's mode and forecast, and its traffic as a sample. */
export type MigrationLinks = Pick<PeerLinks, "forecast" | "parametersFor" | "transferStarted">;

export interface MigrationDeps {
  vms: VmManager;
  links?: MigrationLinks;
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
const DEFAULT_DOWNTIME_LIMIT_MS = 300;
/** How often QEMU's parameters are revisited from a fresh forecast during precopy. */
const RETUNE_EVERY_MS = 2000;
/** A new tuning is applied only when the downtime limit moves by more than this share. */
const RETUNE_MIN_CHANGE = 0.1;
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
  #exchange?: PeerConn;
  #sink = "";
  /** With multifd: the destination's sinks for channels 1..K. */
  #channelSinks: string[] = [];
  #listener?: Deno.Listener;
  /** One transfer per QEMU channel, the main channel's first. */
  readonly #transfers: OutgoingTransfer[] = [];
  readonly #progresses: TransferProgress[] = [];
  /** The socket the source QEMU migrates into (main channel): where the return path is written. */
  #fromQemu?: Duplex;
  /** Return-path writes in arrival order, one after another. */
  #returnPath = Promise.resolve();
  #info: MigrationInfo = {};
  #completedAtMs?: number;
  #runningAtMs?: number;
  readonly #events: MigrationSnapshot["events"] = [];
  readonly #listeners = new Set<(s: MigrationSnapshot) => void>();
  readonly #finished = Promise.withResolvers<void>();
  #pendingAbort?: PromiseWithResolvers<void>;
  /** The exchange's reader ended: nothing more can come from the destination. */
  #exchangeClosed = false;
  /** The link's mode when the migration started: streams, codec, xbzrle. */
  readonly #mode?: ModeParameters;
  #lastTuneMs = 0;
  #tunedDowntimeLimitMs?: number;
  /**
   * With dedupe: whether the destination takes the deduped stream, the encoder between QEMU and the
   * transfer, or why the destination declined.
   */
  #dedupeAccepted = false;
  #dedupe?: DedupeSource;
  #dedupeDeclined?: string;
  /** QEMU's stream goes on the direct channel (the destination agreed). */
  #direct = false;

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
    this.#state = initialState(this.#now(), { postcopyAllowed: req.postcopy === true });
    this.#mode = deps.links?.parametersFor(req.peer);
  }

  /**
   * Multifd channels asked of the destination. None with postcopy (QEMU 7.2 refuses the pair), and by
   * default none on the direct channel or with dedupe: multifd carries the pages outside the main channel,
   * where dedupe never sees them.
   */
  get #multifdAsked(): number {
    if (this.req.postcopy) return 0;
    if (this.req.multifdChannels !== undefined) return this.req.multifdChannels;
    if (this.req.channel === "direct") return 0; // QEMU's fd: migrations have one channel
    return wantsDedupe(this.req, this.#mode) ? 0 : this.#mode?.migration.multifdChannels ?? 0;
  }

  /** Multifd channels in use: those the destination prepared sinks for. */
  get multifdChannels(): number {
    return this.#channelSinks.length;
  }

  get phase(): Phase {
    return this.#state.phase;
  }

  get streams(): number {
    if (this.#direct) return 1;
    return this.req.streams ?? this.#mode?.streams.count ?? this.#deps.defaults.streams;
  }

  /** Whether to ask the destination for the direct channel; throws when "direct" was asked but cannot be. */
  #asksDirect(): boolean {
    const channel = this.req.channel ?? "auto";
    if (channel === "streams") return false;
    const blocker = directChannelBlocker({
      dedupe: wantsDedupe(this.req, this.#mode),
      postcopy: this.req.postcopy === true,
      multifdChannels: this.#multifdAsked,
      tls: this.peer.tls !== undefined,
    });
    if (channel === "direct" && blocker) {
      throw new MigrationError(
        400,
        "invalid_request",
        `channel "direct" is not possible here: ${blocker}; ask for channel "streams" or "auto"`,
      );
    }
    return blocker === undefined && (channel === "direct" || this.#mode?.mode === "datacenter");
  }

  /** Asks the destination to start the incoming VM; throws (for a 4xx/5xx answer) if it refuses. */
  async prepare(): Promise<void> {
    const vm = this.#deps.vms.get(this.vm)!;
    const conn = await dial(this.peer, this.#deps.secret, this.#deps.identity);
    try {
      const dedupe = wantsDedupe(this.req, this.#mode);
      const postcopy = this.req.postcopy === true;
      const multifdChannels = this.#multifdAsked;
      const direct = this.#asksDirect();
      await sendMessage(
        conn,
        {
          type: "migrate-prepare",
          migrationId: this.id,
          vm: vm.spec,
          dedupe,
          postcopy,
          multifdChannels,
          direct,
        } satisfies PrepareMessage,
      );
      const prepared = await expectMessage<PreparedMessage>(conn, "prepared").catch((err) => {
        if (err instanceof PeerError && err.code === "postcopy_unsupported") {
          throw new MigrationError(409, err.code, err.message);
        }
        throw err;
      });
      if (postcopy && prepared.postcopy !== true) {
        await sendMessage(conn, { type: "abort", reason: "the destination cannot carry postcopy" });
        throw new MigrationError(
          409,
          "peer_cannot_postcopy",
          `peer "${this.req.peer}" did not set its incoming VM up for postcopy (an agent without a ` +
            `return path for QEMU): migrate without postcopy, or upgrade that agent`,
        );
      }
      this.#direct = direct && prepared.direct === true;
      if (direct && !this.#direct) {
        if (this.req.channel === "direct") {
          await sendMessage(conn, { type: "abort", reason: "the destination cannot take a direct channel" });
          throw new MigrationError(
            409,
            "peer_cannot_direct",
            `peer "${this.req.peer}" did not agree to a direct channel (an agent from before it): ask for ` +
              `channel "streams" or "auto", or upgrade that agent`,
          );
        }
        this.#event(
          "prepare",
          "direct channel declined by the destination (an older agent): carried instead",
        );
      }
      this.#sink = prepared.sink;
      this.#channelSinks = prepared.channels?.slice(0, multifdChannels) ?? [];
      this.#dedupeAccepted = dedupe && prepared.dedupe === true;
      if (dedupe && !this.#dedupeAccepted) {
        this.#dedupeDeclined = "the destination keeps no chunk store (its dedupe.storeBytes is 0, or the " +
          "store cannot be opened; see its log): QEMU's stream travels as it is";
      }
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
    const transfer = this.#progresses[0]?.snapshot();
    const channels = this.#progresses.map((p) => p.snapshot());
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
      // On the direct channel the agents see none of the stream: QEMU's counters are the figures.
      bytesSent: this.#direct ? ram?.transferred ?? 0 : channels.reduce((sum, c) => sum + c.bytesDone, 0),
      bytesPerSec: this.#direct
        ? ((ram?.mbps ?? 0) * 1e6) / 8
        : channels.reduce((sum, c) => sum + c.bytesPerSec, 0),
      remainingBytes: ram?.remaining,
      dirtyBytesPerSec: ram ? ram["dirty-pages-rate"] * ram["page-size"] : undefined,
      passes: ram?.["dirty-sync-count"],
      expectedDowntimeMs: this.#info["expected-downtime"],
      downtimeMs: this.#info.downtime,
      observedDowntimeMs: observed,
      totalTimeMs: this.#info["total-time"],
      streams: this.streams,
      channel: this.#direct ? "direct" : "streams",
      postcopy: this.req.postcopy === true,
      multifdChannels: this.multifdChannels,
      postcopyRequests: this.req.postcopy ? ram?.["postcopy-requests"] : undefined,
      transfer,
      dedupe: this.#dedupe || this.#dedupeDeclined
        ? dedupeSnapshot(this.#dedupe?.stats(), this.#dedupeDeclined)
        : undefined,
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
    for (const t of this.#transfers) t.cancel("migration ended").catch(() => {});
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
        return this.#event(a.phase, a.message);
      case "prepareDestination":
        return; // done synchronously in prepare(), so that its refusals answer the API request
      case "startSource":
        return await this.#startSource();
      case "enableAutoConverge":
        // The capability is on from the start; this raises the throttle QEMU applies to the vCPUs.
        return await this.#qmp().setParameters({ "cpu-throttle-initial": 50, "cpu-throttle-increment": 20 });
      case "startPostcopy":
        await this.#qmp().migrateStartPostcopy();
        return this.#dispatch({ type: "postcopyStarted" });
      case "closeSourceChannel":
        if (this.#fromQemu) closeQuietly(this.#fromQemu);
        return;
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
    const qmp = this.#qmp();
    const multifd = this.multifdChannels;
    if (multifd === 0 && this.#multifdAsked > 0) {
      this.#event(
        this.#state.phase,
        "multifd off: the destination prepared no channel sinks (an older agent)",
      );
    }
    // On slow links the mode asks QEMU to send pages dirtied again as deltas (xbzrle); QEMU refuses
    // xbzrle together with multifd.
    const xbzrle = multifd === 0 && (this.#mode?.migration.xbzrle ?? false);
    const postcopy = this.req.postcopy === true;
    await qmp.setCapabilities({
      "auto-converge": this.req.autoConverge ?? true,
      events: true,
      xbzrle,
      "postcopy-ram": postcopy,
      "return-path": postcopy,
      multifd: multifd > 0,
    });
    await qmp.setParameters({
      "downtime-limit": this.req.downtimeLimitMs ?? DEFAULT_DOWNTIME_LIMIT_MS,
      // QEMU caps migrations at 128 MiB/s by default; the agents' streams do the pacing instead.
      "max-bandwidth": this.req.maxBytesPerSec ?? 64 * 1024 * 1024 * 1024,
      ...(xbzrle ? { "xbzrle-cache-size": this.#mode!.migration.xbzrleCacheBytes } : {}),
      ...(multifd > 0 ? { "multifd-channels": multifd } : {}),
      // The cap is the migration's: QEMU keeps a separate one for the postcopy phase (0: unlimited).
      ...(postcopy && this.req.maxBytesPerSec ? { "max-postcopy-bandwidth": this.req.maxBytesPerSec } : {}),
    });
    qmp.on("MIGRATION", (ev) => {
      // QEMU stamps its events with the host's clock: the moment the source handed over its last bytes.
      if (ev.data?.status === "completed" && ev.timestamp) {
        this.#completedAtMs ??= ev.timestamp.seconds * 1000 + ev.timestamp.microseconds / 1000;
      }
      this.#poll();
    });
    if (this.#direct) {
      await startDirectSource({
        peer: this.peer,
        secret: this.#deps.secret,
        identity: this.#deps.identity,
        migrationId: this.id,
        fdMonitorSocket: vm.fdMonitorSocket,
        bufferBytes: channelBufferBytes(this.#mode?.streams),
      });
      this.#event("precopy", "QEMU migrates on the direct channel");
      return this.#dispatch({ type: "sourceStarted" });
    }
    const path = join(vm.runDir, `migrate-${this.id.slice(0, 8)}.sock`);
    await Deno.remove(path).catch(() => {});
    const listener = Deno.listen({ transport: "unix", path });
    this.#listener = listener;
    await qmp.migrate(`unix:${path}`);
    // QEMU connects its main channel first, then (with multifd) one connection per channel.
    const fromQemu = await listener.accept();
    this.#fromQemu = fromQemu;
    if (this.#dedupeAccepted) this.#dedupe = new DedupeSource(fromQemu);
    else if (this.#dedupeDeclined) this.#event(this.#state.phase, `dedupe off: ${this.#dedupeDeclined}`);
    const streams = Math.max(1, Math.floor(this.streams / (multifd + 1)));
    await this.#carry(this.#dedupe ?? fromQemu, this.id, this.#sink, streams);
    for (const sink of this.#channelSinks) {
      await this.#carry(await listener.accept(), crypto.randomUUID(), sink, streams);
    }
    closeQuietly(listener);
    await Deno.remove(path).catch(() => {});
    this.#dispatch({ type: "sourceStarted" });
  }

  /** Carries one of QEMU's migration connections as a stream transfer into the destination's sink. */
  async #carry(input: Duplex, transferId: string, sink: string, streams: number): Promise<void> {
    const d = this.#deps.defaults;
    // Beyond the datacenter the link is the limit: the codec policy spends CPU for ratio.
    const compress = this.#mode !== undefined && this.#mode.mode !== "datacenter";
    const codec = compress ? "auto" : "none";
    const source = new StreamSource(input, STREAM_CHUNK_BYTES, streams * d.windowChunks);
    const progress = new TransferProgress({
      id: transferId,
      direction: "send",
      source: `vm ${this.vm}`,
      peer: this.req.peer,
      destination: sink,
      sizeBytes: 0,
      codec,
      chunkBytes: STREAM_CHUNK_BYTES,
      streams,
    });
    const transfer = await OutgoingTransfer.open(
      {
        transferId,
        peer: this.peer,
        target: { mode: "stream", sink },
        streams,
        chunkBytes: STREAM_CHUNK_BYTES,
        codec,
        codecBias: this.#mode?.codecBias,
        maxRetries: d.maxRetries,
        stallTimeoutMs: d.stallTimeoutMs,
        secret: this.#deps.secret,
        identity: this.#deps.identity,
      },
      source,
      progress,
    );
    this.#progresses.push(progress);
    this.#transfers.push(transfer);
    this.#deps.links?.transferStarted(this.req.peer, progress);
    transfer.run().then(() => {
      const snap = progress.snapshot();
      if (snap.state !== "completed" && !isTerminal(this.#state.phase)) {
        this.#dispatch({
          type: "failure",
          code: snap.error?.code ?? "transfer_failed",
          message: `the migration stream failed: ${snap.error?.message ?? snap.state}`,
        });
      }
    });
  }

  async #abortDestination(): Promise<void> {
    const conn = this.#exchange;
    if (!conn) return this.#dispatch({ type: "destinationAborted" });
    // Its `aborted` could never arrive: fail the rollback's wait now rather than at its timeout.
    if (this.#exchangeClosed) throw new TransferError("destination_lost", "the migration exchange is closed");
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
        } else if (msg.type === "dedupe-want") {
          this.#want(msg as DedupeWantMessage);
        } else if (msg.type === "return-path") {
          this.#writeReturnPath(msg as ReturnPathMessage);
        } else if (msg.type === "incoming-completed") {
          await this.#poll(); // QEMU's final figures (page requests) before the source is quit
          this.#dispatch({ type: "destinationCompleted" });
        }
      }
    } catch {
      this.#exchangeClosed = true;
      if (isTerminal(this.#state.phase)) return;
      this.#pendingAbort?.reject(new TransferError("destination_lost", "the destination agent went away"));
      this.#dispatch({
        type: "failure",
        code: "destination_lost",
        message: "the destination agent closed the migration exchange (did it stop?)",
      });
    }
  }

  /**
   * Bytes the incoming QEMU wrote back (postcopy's page requests): into the source QEMU's migration
   * socket, in order. Queued rather than awaited, so a slow write does not hold up the exchange's other
   * messages; the queue is bounded by QEMU reading its return path, which it does on a thread of its own.
   */
  #writeReturnPath(msg: ReturnPathMessage): void {
    const toQemu = this.#fromQemu;
    let data: Uint8Array;
    try {
      if (!toQemu || this.req.postcopy !== true) {
        throw new Error("return-path for a migration without postcopy");
      }
      data = Uint8Array.fromBase64(String(msg.data));
    } catch (err) {
      this.#dispatch({
        type: "failure",
        code: "return_path_protocol",
        message: `the destination's return-path message was refused: ${(err as Error).message}`,
      });
      return;
    }
    this.#returnPath = this.#returnPath.then(() => writeAll(toQemu, data)).catch((err) => {
      if (isTerminal(this.#state.phase)) return;
      this.#dispatch({
        type: "failure",
        code: "return_path_failed",
        message: `writing QEMU's return path into the source QEMU failed: ${(err as Error).message}`,
      });
    });
  }

  /** A WANT from the destination: the chunks it lacks go out next on the stream. */
  #want(msg: DedupeWantMessage): void {
    try {
      if (!this.#dedupe) throw new Error("dedupe-want for a migration whose stream is not deduped");
      this.#dedupe.want(wantOf(msg));
    } catch (err) {
      this.#dispatch({
        type: "failure",
        code: "dedupe_protocol",
        message: `the destination's dedupe answer was refused: ${(err as Error).message}`,
      });
    }
  }

  /**
   * On a link that is not datacenter, sets QEMU's downtime-limit and max-bandwidth from the peer's
   * bandwidth forecast (tuning.ts), so QEMU switches over when the predicted rate can carry what is
   * left within the asked limit. In datacenter mode the link outruns the agents, and QEMU's own
   * measurement is the better guide.
   */
  async #retune(): Promise<void> {
    const now = this.#now();
    if (now - this.#lastTuneMs < RETUNE_EVERY_MS) return;
    this.#lastTuneMs = now;
    const links = this.#deps.links;
    const params = links?.parametersFor(this.req.peer);
    const forecast = links?.forecast(this.req.peer, 1);
    if (!forecast || params === undefined || params.mode === "datacenter") return;
    const mode = params.mode;
    // The forecast and the link's rate are of wire bytes, after the agents' codec; QEMU's rate and
    // max-bandwidth count its stream before it. Unconverted, the cap sits below what the link carries
    // whenever the codec saves bytes (bench/wan.ts).
    const streamPerWireByte = Math.max(1, this.#progresses[0]?.snapshot().ratio ?? 1);
    const t = tuneForForecast({
      downtimeLimitMs: this.req.downtimeLimitMs ?? DEFAULT_DOWNTIME_LIMIT_MS,
      forecastBytesPerSec: forecast.bytesPerSec * streamPerWireByte,
      measuredBytesPerSec: ((this.#info.ram?.mbps ?? 0) * 1e6) / 8,
      linkBytesPerSec: params.streams.linkBytesPerSec * streamPerWireByte,
    });
    const last = this.#tunedDowntimeLimitMs;
    if (last !== undefined && Math.abs(t.downtimeLimitMs - last) <= last * RETUNE_MIN_CHANGE) return;
    await this.#qmp().setParameters({
      "downtime-limit": t.downtimeLimitMs,
      "max-bandwidth": t.maxBytesPerSec,
    });
    this.#tunedDowntimeLimitMs = t.downtimeLimitMs;
    this.#event("precopy", `${mode} link, ${forecast.predictor} forecast: ${t.reason}`);
  }

  #event(phase: Phase, message: string): void {
    this.#events.push({ at: new Date(this.#now()).toISOString(), phase, message });
    if (this.#events.length > MAX_EVENTS) this.#events.shift();
    this.#notify();
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
    if (status === "active") {
      await this.#retune().catch((err) =>
        this.#deps.log("migration retune failed", { migration: this.id, error: String(err) })
      );
    }
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
