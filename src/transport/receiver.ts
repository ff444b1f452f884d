/**
 * AMST receiving side: the data-port server. Each connection authenticates, then either opens a
 * transfer (control connection) or attaches to one as a stream. Stream readers verify each chunk's
 * checksum, write it at its offset into a temporary file beside the destination, and acknowledge it;
 * on commit the chunk table is checked against the sender's digest, the file synced and renamed into
 * place. Any failure before that removes the temporary file: a partial file is never left as complete.
 */
import { basename, dirname, join } from "node:path";
import { Codec, codecName, xxh3Into } from "../../ffi/codec.ts";
import { PathError, type Roots } from "../agent/roots.ts";
import { TransferProgress } from "../obs/progress.ts";
import { ChunkDigests } from "./chunk_digest.ts";
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
import type {
  AcceptedMessage,
  AttachMessage,
  CommitMessage,
  CommittedMessage,
  OpenMessage,
} from "./messages.ts";
import {
  ConnectionClosed,
  type Duplex,
  readFull,
  receiveMessage,
  sendMessage,
  writeAll,
  writeAllSync,
} from "./wire.ts";

export const LIMITS = {
  minChunkBytes: 4096,
  maxChunkBytes: 16 * 1024 * 1024,
  maxStreams: 64,
  maxTransfers: 16,
  /** An unauthenticated connection gets this long to finish the handshake. */
  handshakeTimeoutMs: 10_000,
} as const;

export interface ReceiverOptions {
  secret: string;
  identity: PeerIdentity;
  roots: Roots;
  windowChunks: number;
  fsync: boolean;
  /** Called for each accepted incoming transfer, so the agent can list and show it. */
  onIncoming(progress: TransferProgress): void;
  log(msg: string, fields?: Record<string, unknown>): void;
}

class RefusedError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

function closeQuietly(c: { close(): void }): void {
  try {
    c.close();
  } catch { /* already closed */ }
}

function validateOpen(m: OpenMessage): void {
  const fail = (msg: string) => {
    throw new RefusedError("invalid_request", msg);
  };
  if (typeof m.transferId !== "string") fail("transferId missing");
  uuidToBytes(m.transferId);
  if (typeof m.destination !== "string") fail("destination must be a string");
  if (!Number.isSafeInteger(m.sizeBytes) || m.sizeBytes < 0) {
    fail(`sizeBytes ${m.sizeBytes} is not a valid size`);
  }
  if (
    !Number.isInteger(m.chunkBytes) || m.chunkBytes < LIMITS.minChunkBytes ||
    m.chunkBytes > LIMITS.maxChunkBytes
  ) {
    fail(`chunkBytes ${m.chunkBytes} is outside ${LIMITS.minChunkBytes}..${LIMITS.maxChunkBytes}`);
  }
  if (!Number.isInteger(m.streams) || m.streams < 1 || m.streams > LIMITS.maxStreams) {
    fail(`streams ${m.streams} is outside 1..${LIMITS.maxStreams}`);
  }
  if (!["none", "lz4", "zstd", "snappy"].includes(m.codec)) fail(`codec "${m.codec}" is not supported`);
}

class IncomingTransfer {
  readonly totalChunks: number;
  readonly digests: ChunkDigests;
  readonly transferIdBytes: Uint8Array;
  readonly streams = new Set<Duplex>();
  readonly progress: TransferProgress;
  #finished = false;

  constructor(
    readonly open: OpenMessage,
    readonly peer: string,
    readonly finalPath: string,
    readonly tempPath: string,
    readonly opts: ReceiverOptions,
  ) {
    this.totalChunks = Math.ceil(open.sizeBytes / open.chunkBytes);
    this.digests = new ChunkDigests(this.totalChunks);
    this.transferIdBytes = uuidToBytes(open.transferId);
    this.progress = new TransferProgress({
      id: open.transferId,
      direction: "receive",
      source: open.sourceName,
      peer,
      destination: finalPath,
      sizeBytes: open.sizeBytes,
      codec: open.codec,
      chunkBytes: open.chunkBytes,
      streams: open.streams,
    });
  }

  get finished(): boolean {
    return this.#finished;
  }

  async runStream(conn: Duplex, stream: number): Promise<void> {
    this.streams.add(conn);
    const head = new Uint8Array(FRAME_HEADER_BYTES);
    const ack = new Uint8Array(FRAME_HEADER_BYTES);
    const raw = new Uint8Array(this.open.chunkBytes);
    // Senders compress a chunk only when that makes it smaller, so a chunk-sized buffer holds any payload.
    const encoded = new Uint8Array(this.open.chunkBytes);
    const checksum = new Uint8Array(8);
    const codecs = new Map<number, Codec>();
    using file = await Deno.open(this.tempPath, { write: true });
    try {
      while (!this.#finished) {
        try {
          await readFull(conn, head);
        } catch (err) {
          if (err instanceof ConnectionClosed) return; // the sender closes streams once all is acknowledged
          throw err;
        }
        const h = decodeHeader(head);
        const expected = h.seq < this.totalChunks
          ? Math.min(this.open.chunkBytes, this.open.sizeBytes - h.seq * this.open.chunkBytes)
          : -1;
        if (
          h.type !== FrameType.Data || !sameBytes(h.transferId, this.transferIdBytes) || expected < 0 ||
          h.offset !== h.seq * this.open.chunkBytes || h.rawLen !== expected ||
          (h.codec === 0 ? h.encLen !== h.rawLen : h.encLen >= h.rawLen) || codecName(h.codec) === undefined
        ) {
          throw new FrameError(`stream ${stream} sent an inconsistent frame (seq ${h.seq}, type ${h.type})`);
        }
        const body = h.codec === 0 ? raw.subarray(0, h.rawLen) : encoded.subarray(0, h.encLen);
        await readFull(conn, body);
        const good = await this.#decode(h.codec, body, raw, h.rawLen, codecs) &&
          (xxh3Into(raw.subarray(0, h.rawLen), checksum), sameBytes(checksum, h.checksum));
        if (good) {
          file.seekSync(h.offset, Deno.SeekMode.Start);
          writeAllSync(file, raw.subarray(0, h.rawLen));
          this.digests.record(h.seq, checksum);
          this.progress.chunkDone(stream, h.rawLen, FRAME_HEADER_BYTES + h.encLen);
        } else {
          this.progress.retransmits++;
        }
        encodeHeader({
          type: good ? FrameType.Ack : FrameType.Nack,
          codec: 0,
          seq: h.seq,
          transferId: this.transferIdBytes,
          offset: h.offset,
          rawLen: h.rawLen,
          encLen: 0,
          checksum,
        }, ack);
        await writeAll(conn, ack);
      }
    } finally {
      for (const c of codecs.values()) c.close();
      this.streams.delete(conn);
      closeQuietly(conn);
    }
  }

  /** Decodes body into raw; false when the data is corrupt (the chunk is then asked for again). */
  async #decode(
    codecId: number,
    body: Uint8Array,
    raw: Uint8Array,
    rawLen: number,
    codecs: Map<number, Codec>,
  ) {
    if (codecId === 0) return true;
    let codec = codecs.get(codecId);
    if (!codec) codecs.set(codecId, codec = new Codec(codecName(codecId)!));
    try {
      return await codec.decompressAsync(body, raw.subarray(0, rawLen)) === rawLen;
    } catch {
      return false;
    }
  }

  /** Checks that every chunk arrived with the checksums the sender sent, syncs and renames into place. */
  async commit(msg: CommitMessage): Promise<CommittedMessage> {
    if (msg.chunks !== this.totalChunks || !this.digests.complete) {
      throw new RefusedError(
        "incomplete",
        `commit with ${this.digests.recorded} of ${this.totalChunks} chunks received; the transfer is incomplete`,
      );
    }
    if (msg.digest !== this.digests.digest()) {
      throw new RefusedError(
        "digest_mismatch",
        "the chunk checksums received differ from the sender's; resend",
      );
    }
    if (this.opts.fsync) {
      using f = await Deno.open(this.tempPath, { write: true });
      await f.sync();
    }
    await Deno.rename(this.tempPath, this.finalPath);
    this.#finished = true;
    this.progress.setState("completed");
    return { type: "committed", path: this.finalPath, bytes: this.open.sizeBytes };
  }

  /** Drops the partial file and closes every stream. Safe to call more than once. */
  async abort(state: "failed" | "cancelled", error?: { code: string; message: string }): Promise<void> {
    if (this.#finished) return;
    this.#finished = true;
    for (const s of this.streams) closeQuietly(s);
    await Deno.remove(this.tempPath).catch(() => {});
    this.progress.setState(state, error);
  }
}

export class DataServer {
  readonly #active = new Map<string, IncomingTransfer>();
  readonly #conns = new Set<Deno.TcpConn>();

  constructor(readonly listener: Deno.TcpListener, readonly opts: ReceiverOptions) {}

  get addr(): Deno.NetAddr {
    return this.listener.addr as Deno.NetAddr;
  }

  /** Accepts until close(); a failed accept (a peer that reset early, no free descriptors) is logged. */
  async serve(): Promise<void> {
    while (true) {
      let conn: Deno.TcpConn;
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

  async #handle(conn: Deno.TcpConn): Promise<void> {
    const remote = conn.remoteAddr as Deno.NetAddr;
    try {
      conn.setNoDelay(true);
      const timer = setTimeout(() => closeQuietly(conn), LIMITS.handshakeTimeoutMs);
      let peer: PeerIdentity;
      try {
        peer = await serverHandshake(conn, this.opts.secret, this.opts.identity);
      } finally {
        clearTimeout(timer);
      }
      const first = await receiveMessage<OpenMessage | AttachMessage>(conn);
      if (first.type === "open") await this.#control(conn, first, `${peer.agentId}@${remote.hostname}`);
      else if (first.type === "attach") await this.#stream(conn, first);
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

  async #control(conn: Deno.Conn, open: OpenMessage, peer: string): Promise<void> {
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
    const finalPath = await this.opts.roots.destination(open.destination, open.sourceName, open.overwrite);
    const tempPath = join(
      dirname(finalPath),
      `.${basename(finalPath)}.dwcp-${open.transferId.slice(0, 8)}.part`,
    );
    {
      using f = await Deno.open(tempPath, { write: true, create: true, truncate: true });
      await f.truncate(open.sizeBytes);
    }
    const t = new IncomingTransfer(open, peer, finalPath, tempPath, this.opts);
    this.#active.set(open.transferId, t);
    this.opts.onIncoming(t.progress);
    t.progress.setState("running");
    try {
      await sendMessage(
        conn,
        {
          type: "accepted",
          path: finalPath,
          windowChunks: this.opts.windowChunks,
        } satisfies AcceptedMessage,
      );
      while (!t.finished) {
        const msg = await receiveMessage<CommitMessage | { type: "cancel"; reason: string }>(conn);
        if (msg.type === "commit") {
          t.progress.setState("committing");
          await sendMessage(conn, await t.commit(msg));
        } else if (msg.type === "cancel") {
          await t.abort("cancelled", { code: "cancelled", message: String(msg.reason) });
          await sendMessage(conn, { type: "cancelled" });
        }
      }
    } catch (err) {
      const closed = err instanceof ConnectionClosed || err instanceof Deno.errors.BadResource ||
        err instanceof Deno.errors.ConnectionReset;
      await t.abort("failed", {
        code: closed ? "peer_closed" : (err as RefusedError).code ?? "receive_failed",
        message: closed ? "the sender went away before committing" : (err as Error).message,
      });
      if (!closed) throw err;
    } finally {
      this.#active.delete(open.transferId);
    }
  }

  async #stream(conn: Deno.Conn, attach: AttachMessage): Promise<void> {
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
