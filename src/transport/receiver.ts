/**
 * AMST receiving side: the data-port server. Each connection authenticates, then either opens a
 * transfer (control connection), attaches to one as a stream, sends a rate probe (rate_probe.ts), or
 * starts an exchange that another part of the agent registered (a migration's preparation). Stream
 * readers verify each chunk's checksum and hand it to the transfer's sink (a file, or a live stream such
 * as a QEMU incoming socket), which acknowledges it once stored or delivered. Any failure before commit
 * drops what was received.
 */
import { codecName, xxh3Into } from "../../ffi/codec.ts";
import { CODEC_SETTINGS } from "../encoding/codec_policy.ts";
import { ChunkDecoder } from "../encoding/chunk_codec.ts";
import { FLAG_DELTA } from "../encoding/page_delta.ts";
import { PathError, type Roots } from "../agent/roots.ts";
import { TransferProgress } from "../obs/progress.ts";
import { type ChunkSink, FileSink, RefusedError, StreamSink } from "./chunk_sink.ts";
import { DeltaReceiving, FileHashCache, matchBase } from "./delta_base.ts";
import {
  decodeHeader,
  encodeHeader,
  FRAME_HEADER_BYTES,
  FrameError,
  FrameType,
  sameBytes,
  uuidToBytes,
} from "./frame.ts";
import { type PeerIdentity, serverHandshake } from "./handshake.ts";
import type { DataConn, DataListener } from "./tls.ts";
import type {
  AcceptedMessage,
  AttachMessage,
  CommitMessage,
  OpenMessage,
  RateProbeMessage,
} from "./messages.ts";
import { answerRateProbe } from "./rate_probe.ts";
import {
  closeQuietly,
  ConnectionClosed,
  type Duplex,
  readFull,
  receiveMessage,
  sendMessage,
  writeAll,
} from "./wire.ts";

export { RefusedError };

export const LIMITS = {
  minChunkBytes: 4096,
  maxChunkBytes: 16 * 1024 * 1024,
  maxStreams: 64,
  maxTransfers: 16,
  /** An unauthenticated connection gets this long to finish the handshake. */
  handshakeTimeoutMs: 10_000,
} as const;

/** Handles a connection whose first message has this type; the agent registers these (migrations). */
export type ExchangeHandler = (
  conn: DataConn,
  first: { type: string },
  peer: PeerIdentity,
) => Promise<void>;

/** Live-stream sinks, registered under a name before the sender opens a stream transfer into them. */
export interface SinkRegistry {
  /** Hands over the sink's output (once); undefined when no such sink waits. */
  take(name: string): Duplex | undefined;
}

export interface ReceiverOptions {
  secret: string;
  identity: PeerIdentity;
  roots: Roots;
  windowChunks: number;
  fsync: boolean;
  sinks: SinkRegistry;
  exchanges: Record<string, ExchangeHandler>;
  /**
   * Called for each accepted incoming transfer, so the agent can list and show it. from: the sender as its
   * handshake named itself (the secret proves it is an agent of the cluster, not which one).
   */
  onIncoming(progress: TransferProgress, from: PeerIdentity): void;
  log(msg: string, fields?: Record<string, unknown>): void;
}

function validateOpen(m: OpenMessage): void {
  const fail = (msg: string) => {
    throw new RefusedError("invalid_request", msg);
  };
  if (typeof m.transferId !== "string") fail("transferId missing");
  uuidToBytes(m.transferId);
  if (
    !Number.isInteger(m.chunkBytes) || m.chunkBytes < LIMITS.minChunkBytes ||
    m.chunkBytes > LIMITS.maxChunkBytes
  ) {
    fail(`chunkBytes ${m.chunkBytes} is outside ${LIMITS.minChunkBytes}..${LIMITS.maxChunkBytes}`);
  }
  if (!Number.isInteger(m.streams) || m.streams < 1 || m.streams > LIMITS.maxStreams) {
    fail(`streams ${m.streams} is outside 1..${LIMITS.maxStreams}`);
  }
  if (!CODEC_SETTINGS.includes(m.codec)) fail(`codec "${m.codec}" is not supported`);
  const t = m.target;
  if (t?.mode === "file") {
    if (typeof t.destination !== "string") fail("destination must be a string");
    if (!Number.isSafeInteger(t.sizeBytes) || t.sizeBytes < 0) {
      fail(`sizeBytes ${t.sizeBytes} is not a valid size`);
    }
    const b = t.base;
    if (
      b !== undefined &&
      (typeof b?.hash !== "string" || !/^[0-9a-f]{32}$/.test(b.hash) || !Number.isSafeInteger(b.sizeBytes) ||
        b.sizeBytes < 0)
    ) {
      fail(`base ${JSON.stringify(b)} must be {hash: 32 lowercase hex digits, sizeBytes: a size}`);
    }
  } else if (t?.mode === "stream") {
    if (typeof t.sink !== "string") fail("sink must be a string");
  } else {
    fail(`target mode must be "file" or "stream"`);
  }
}

/** How long a receiver that reported a failure waits for the sender to close before it closes. */
const SENDER_HANGUP_WAIT_MS = 2000;

/** Resolves when the peer closes conn (anything it still sends is dropped), or after waitMs. */
async function hangUp(conn: Duplex, waitMs: number): Promise<void> {
  const timer = setTimeout(() => closeQuietly(conn), waitMs);
  const sink = new Uint8Array(4096);
  try {
    while ((await conn.read(sink)) !== null) { /* drain */ }
  } catch { /* closed */ }
  clearTimeout(timer);
}

class IncomingTransfer {
  readonly transferIdBytes: Uint8Array;
  readonly streams = new Set<Duplex>();
  readonly progress: TransferProgress;
  #finished = false;
  readonly #ended = Promise.withResolvers<void>();

  constructor(
    readonly open: OpenMessage,
    peer: string,
    readonly sink: ChunkSink,
    /** Page deltas, when the open named a base. */
    readonly delta?: DeltaReceiving,
  ) {
    this.transferIdBytes = uuidToBytes(open.transferId);
    this.progress = new TransferProgress({
      id: open.transferId,
      direction: "receive",
      source: open.target.mode === "file" ? open.target.sourceName : "stream",
      peer,
      destination: sink.label,
      sizeBytes: sink.sizeBytes ?? 0,
      codec: open.codec,
      chunkBytes: open.chunkBytes,
      streams: open.streams,
    });
    if (delta) this.progress.delta = () => delta.status();
  }

  get finished(): boolean {
    return this.#finished;
  }

  async runStream(conn: Duplex, stream: number): Promise<void> {
    this.streams.add(conn);
    const head = new Uint8Array(FRAME_HEADER_BYTES);
    const raw = new Uint8Array(this.open.chunkBytes);
    // Senders encode a chunk only when that makes it smaller, so a chunk-sized buffer holds any payload.
    // Made at the first encoded frame: a stream of plain frames never needs it (see ChunkEncoder).
    let encoded: Uint8Array | undefined;
    const checksum = new Uint8Array(8);
    const decoder = new ChunkDecoder(this.open.chunkBytes);
    const deltas = this.delta?.stream(this.open.chunkBytes);
    // Acks come from this reader and, for streams, from the sink's delivery: one write at a time.
    let writes = Promise.resolve();
    const reply = (type: FrameType, h: { seq: number; offset: number; rawLen: number }) => {
      const frame = new Uint8Array(FRAME_HEADER_BYTES);
      encodeHeader(
        { ...h, type, codec: 0, flags: 0, transferId: this.transferIdBytes, encLen: 0, checksum },
        frame,
      );
      writes = writes.then(() => writeAll(conn, frame));
      return writes;
    };
    try {
      while (!this.#finished) {
        try {
          await readFull(conn, head);
        } catch (err) {
          if (err instanceof ConnectionClosed) return; // the sender closes streams once all is acknowledged
          throw err;
        }
        const h = decodeHeader(head);
        const flags = h.flags ?? 0;
        const plain = h.codec === 0 && flags === 0;
        if (
          h.type !== FrameType.Data || !sameBytes(h.transferId, this.transferIdBytes) ||
          h.rawLen > this.open.chunkBytes || codecName(h.codec) === undefined ||
          (plain ? h.encLen !== h.rawLen : h.encLen >= h.rawLen)
        ) {
          throw new FrameError(`stream ${stream} sent an inconsistent frame (seq ${h.seq}, type ${h.type})`);
        }
        this.sink.check(h);
        const data = raw.subarray(0, h.rawLen);
        const body = plain ? data : (encoded ??= new Uint8Array(this.open.chunkBytes)).subarray(0, h.encLen);
        await readFull(conn, body);
        // undefined: the payload does not decode; the checksum then decides nothing and the chunk is resent.
        const allZero = plain ? false : flags & FLAG_DELTA
          ? await deltas?.decode(h, body, data) // no base here: undefined, and the sender resends it whole
          : await decoder.decode(flags, h.codec, body, data);
        const good = allZero !== undefined && (xxh3Into(data, checksum), sameBytes(checksum, h.checksum));
        if (!good) {
          this.progress.retransmits++;
          await reply(FrameType.Nack, h);
          continue;
        }
        const { seq, offset, rawLen, encLen } = h;
        const tally = deltas?.tally(h);
        try {
          const ack = (fresh: boolean) => {
            if (fresh) this.progress.chunkDone(stream, rawLen, FRAME_HEADER_BYTES + encLen);
            if (fresh && tally) this.delta?.add(tally);
            return reply(FrameType.Ack, { seq, offset, rawLen });
          };
          await this.sink.accept(h, data, ack, allZero);
        } catch {
          // The sink failed: the control connection tells the sender why; keep the stream open till then.
          await this.#ended.promise;
          return;
        }
      }
    } finally {
      decoder.close();
      deltas?.close();
      this.streams.delete(conn);
      closeQuietly(conn);
    }
  }

  async commit(msg: CommitMessage): Promise<void> {
    await this.sink.commit(msg);
    this.#finished = true;
    this.#ended.resolve();
    this.progress.setState("completed");
  }

  /** Drops what was received and closes every stream. Safe to call more than once. */
  async abort(state: "failed" | "cancelled", error?: { code: string; message: string }): Promise<void> {
    if (this.#finished) return;
    this.#finished = true;
    this.#ended.resolve();
    for (const s of this.streams) closeQuietly(s);
    await this.sink.abort();
    this.progress.setState(state, error);
  }
}

export class DataServer {
  readonly #active = new Map<string, IncomingTransfer>();
  readonly #conns = new Set<DataConn>();
  /** Hashes of candidate bases (destination files), so a second transfer need not read them again. */
  readonly #hashes = new FileHashCache();

  /** The listener is plain, TLS, or both on one port (tls.ts); it sets TCP_NODELAY where Deno can. */
  constructor(readonly listener: DataListener, readonly opts: ReceiverOptions) {}

  get addr(): Deno.NetAddr {
    return this.listener.addr;
  }

  /** Accepts until close(); a failed accept (a peer that reset early, no free descriptors) is logged. */
  async serve(): Promise<void> {
    while (true) {
      let conn: DataConn;
      try {
        conn = await this.listener.accept();
      } catch (err) {
        if (err instanceof Deno.errors.BadResource || err instanceof Deno.errors.Interrupted) return;
        this.opts.log("accept failed", { error: (err as Error).message });
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      this.#conns.add(conn);
      this.#handle(conn).finally(() => this.#conns.delete(conn));
    }
  }

  async close(): Promise<void> {
    closeQuietly(this.listener);
    for (const t of this.#active.values()) {
      await t.abort("failed", { code: "agent_stopping", message: "the receiving agent shut down" });
    }
    for (const c of this.#conns) closeQuietly(c);
  }

  async #handle(conn: DataConn): Promise<void> {
    const remote = conn.remoteAddr;
    try {
      const timer = setTimeout(() => closeQuietly(conn), LIMITS.handshakeTimeoutMs);
      let peer: PeerIdentity;
      try {
        peer = await serverHandshake(conn, this.opts.secret, this.opts.identity);
      } finally {
        clearTimeout(timer);
      }
      const first = await receiveMessage<OpenMessage | AttachMessage | RateProbeMessage>(conn);
      const exchange = this.opts.exchanges[first.type];
      if (first.type === "open") await this.#control(conn, first, peer, remote.hostname);
      else if (first.type === "attach") await this.#stream(conn, first);
      else if (first.type === "rate-probe") await answerRateProbe(conn, first);
      else if (exchange) await exchange(conn, first, peer);
      else {throw new RefusedError(
          "protocol",
          `unexpected first message "${(first as { type: string }).type}"`,
        );}
    } catch (err) {
      const code = err instanceof RefusedError || err instanceof PathError ? err.code : "protocol";
      if (code !== "protocol") {
        await sendMessage(conn, { type: "error", code, message: (err as Error).message }).catch(() => {});
      }
      if (!(err instanceof ConnectionClosed)) {
        this.opts.log("refused connection", { remote: remote.hostname, code, error: (err as Error).message });
      }
    } finally {
      closeQuietly(conn);
    }
  }

  /** For a file target that names a base: whether its destination holds that base. */
  async #matchBase(open: OpenMessage): Promise<DeltaReceiving | undefined> {
    const t = open.target;
    if (t.mode !== "file" || !t.base) return undefined;
    const path = await this.opts.roots.destination(t.destination, t.sourceName, true);
    return new DeltaReceiving(t.base, await matchBase(path, t.base, this.#hashes));
  }

  /** baseHeld: the destination is the transfer's base, which it may replace without `overwrite`. */
  async #openSink(open: OpenMessage, baseHeld: boolean): Promise<ChunkSink> {
    const t = open.target;
    if (t.mode === "stream") {
      const output = this.opts.sinks.take(t.sink);
      if (!output) throw new RefusedError("unknown_sink", `no stream sink "${t.sink}" is waiting here`);
      return new StreamSink(t.sink, output);
    }
    const finalPath = await this.opts.roots.destination(t.destination, t.sourceName, t.overwrite || baseHeld);
    return await FileSink.create(finalPath, open.transferId, t.sizeBytes, open.chunkBytes, this.opts.fsync);
  }

  async #control(conn: DataConn, open: OpenMessage, peer: PeerIdentity, host: string): Promise<void> {
    validateOpen(open);
    if (this.#active.size >= LIMITS.maxTransfers) {
      throw new RefusedError(
        "busy",
        `this agent already receives ${LIMITS.maxTransfers} transfers; retry later`,
      );
    }
    if (this.#active.has(open.transferId)) {
      throw new RefusedError("duplicate", `transfer ${open.transferId} exists`);
    }
    const delta = await this.#matchBase(open);
    let sink: ChunkSink;
    try {
      sink = await this.#openSink(open, delta?.answer.held ?? false);
    } catch (err) {
      delta?.close();
      throw err;
    }
    const t = new IncomingTransfer(open, `${peer.agentId}@${host}`, sink, delta);
    this.#active.set(open.transferId, t);
    this.opts.onIncoming(t.progress, peer);
    t.progress.setState("running");
    try {
      await sendMessage(
        conn,
        {
          type: "accepted",
          path: t.sink.label,
          windowChunks: this.opts.windowChunks,
          base: delta?.answer,
        } satisfies AcceptedMessage,
      );
      const sinkFailed = t.sink.failed.then((err) => Promise.reject(err));
      sinkFailed.catch(() => {}); // raced below; unobserved when the sink never fails
      while (!t.finished) {
        const msg = await Promise.race([
          receiveMessage<CommitMessage | { type: "cancel"; reason: string }>(conn),
          sinkFailed,
        ]);
        if (msg.type === "commit") {
          t.progress.setState("committing");
          await t.commit(msg);
          await sendMessage(conn, {
            type: "committed",
            path: t.sink.label,
            bytes: t.progress.snapshot().bytesDone,
          });
        } else if (msg.type === "cancel") {
          await t.abort("cancelled", { code: "cancelled", message: String(msg.reason) });
          await sendMessage(conn, { type: "cancelled" });
        }
      }
    } catch (err) {
      const closed = err instanceof ConnectionClosed || err instanceof Deno.errors.BadResource ||
        err instanceof Deno.errors.ConnectionReset;
      const error = {
        code: closed ? "peer_closed" : (err as RefusedError).code ?? "receive_failed",
        message: closed ? "the sender went away before committing" : (err as Error).message,
      };
      if (!closed) {
        // Tell the sender first and let it hang up: once the streams close it would only see them go.
        await sendMessage(conn, { type: "error", ...error }).catch(() => {});
        await hangUp(conn, SENDER_HANGUP_WAIT_MS);
      }
      await t.abort("failed", error);
      this.opts.log("incoming transfer failed", { transfer: open.transferId, ...error });
    } finally {
      this.#active.delete(open.transferId);
      delta?.close();
    }
  }

  async #stream(conn: DataConn, attach: AttachMessage): Promise<void> {
    const t = this.#active.get(String(attach.transferId));
    if (!t || t.finished) {
      throw new RefusedError("unknown_transfer", `no open transfer ${attach.transferId} here`);
    }
    if (!Number.isInteger(attach.stream) || attach.stream < 0 || attach.stream >= t.open.streams) {
      throw new RefusedError(
        "invalid_request",
        `stream ${attach.stream} is outside 0..${t.open.streams - 1}`,
      );
    }
    await sendMessage(conn, { type: "attached" });
    try {
      await t.runStream(conn, attach.stream);
    } catch (err) {
      // A broken stream is survivable: the sender moves its chunks to the other streams.
      if (!t.finished) {
        this.opts.log("stream lost", { transfer: t.open.transferId, error: (err as Error).message });
      }
    }
  }
}
