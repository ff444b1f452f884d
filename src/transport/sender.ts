/**
 * AMST sending side: one control connection and N stream connections to the peer's data port. The
 * stream workers pull chunks from the StripeScheduler under credit, load them from the chunk source (a
 * file, or a live stream such as a QEMU migration socket), encode them, and write frames;
 * acknowledgements come back on each stream, return credit and release the source's copy. The
 * transfer completes only when the receiver has committed.
 */
import { ChunkEncoder } from "../encoding/chunk_codec.ts";
import {
  CODEC_BIAS,
  type CodecBias,
  CodecPolicy,
  type CodecSetting,
  UNMEASURED_LINK_BYTES_PER_SEC,
} from "../encoding/codec_policy.ts";
import type { TransferProgress } from "../obs/progress.ts";
import { type ChunkSource, SourceError } from "./chunk_source.ts";
import { DeltaSending, type SendBase } from "./delta_base.ts";
import { dial, type DialObserver, type PeerAddress, type PeerConn, TransferError } from "./dial.ts";
import {
  CHECKSUM_OFFSET,
  decodeHeader,
  encodeHeader,
  FRAME_HEADER_BYTES,
  FrameType,
  uuidToBytes,
} from "./frame.ts";
import type { PeerIdentity } from "./handshake.ts";
import type {
  AcceptedMessage,
  AttachedMessage,
  CancelledMessage,
  CommitMessage,
  CommittedMessage,
  OpenMessage,
  OpenTarget,
} from "./messages.ts";
import { TokenBucket } from "./pacer.ts";
import { SchedulerError, StripeScheduler } from "./scheduler.ts";
import { Signal } from "./signal.ts";
import {
  closeQuietly,
  ConnectionClosed,
  type ErrorMessage,
  expectMessage,
  PeerError,
  readFull,
  receiveMessage,
  sendMessage,
  writeAll,
} from "./wire.ts";

export { type PeerAddress, TransferError };

export interface SendOptions {
  transferId: string;
  peer: PeerAddress;
  /** What the receiver is asked to take: a file at a destination, or a stream into a named sink. */
  target: OpenTarget;
  /** This side's copy of the base a file target names: chunks go as page deltas if the peer holds it too. */
  base?: SendBase;
  streams: number;
  chunkBytes: number;
  codec: CodecSetting;
  /** How "auto" weighs CPU against wire bytes (the link's mode); datacenter unless told. */
  codecBias?: CodecBias;
  /**
   * What "auto" assumes the link carries until this transfer has measured it: the link's mode knows
   * (src/mode/parameters.ts streams.linkBytesPerSec). Without it the policy assumes a fast link and
   * sends each stream's first chunks raw: on the emulated wan (bench/wan.ts) that took a VM-memory image's
   * wire ratio from 6.9 down to 5.3.
   */
  linkBytesPerSecHint?: number;
  /**
   * The most the transfer keeps unacknowledged over all its streams (the link's mode says, in the
   * datacenter: src/mode/parameters.ts); never less than one stream's window. Unset: each stream's window.
   */
  transferWindowBytes?: number;
  maxRetries: number;
  /** Fail when no acknowledgement arrives for this long. */
  stallTimeoutMs: number;
  /** Bandwidth cap over all streams together; undefined sends as fast as the link allows. */
  maxBytesPerSec?: number;
  secret: string;
  identity: PeerIdentity;
  /** Told of each connection to the peer (link probing: round trips, and sockets to sample). */
  observer?: DialObserver;
}

/** How fast the link estimate forgets a peak: it halves over about 140 chunks without a new one. */
const PEAK_DECAY_PER_CHUNK = 0.995;

/** How long a cancel waits for the receiver to confirm that it dropped the partial file. */
const CANCEL_WAIT_MS = 5000;

export class OutgoingTransfer {
  readonly #opts: SendOptions;
  readonly #source: ChunkSource;
  readonly #progress: TransferProgress;
  readonly #control: PeerConn;
  readonly #windowChunks: number;
  readonly #streams: PeerConn[] = [];
  readonly #wake = new Signal();
  #failure?: TransferError;
  #cancelled = false;
  #lastAckMs = Date.now();
  #pendingCommit?: PromiseWithResolvers<CommittedMessage>;
  #pendingCancel?: PromiseWithResolvers<void>;
  readonly #bucket?: TokenBucket;
  /** The adaptive codec policy, shared by the streams, when the codec is "auto". */
  readonly #policy?: CodecPolicy;
  /** Page deltas against the base, when the transfer named one. */
  readonly #delta?: DeltaSending;
  #peakLinkBytesPerSec = 0;
  /**
   * Frame buffers for file chunks, shared by the streams and reused last-freed first: a buffer is busy
   * only from reading its chunk until the socket took it, so the streams mostly pass between them the one
   * still in the caches, where a buffer per stream went cold in turn (1 GiB on loopback, 4 to 16 streams:
   * 3 to 9 % less CPU, paired medians 1.01 to 1.07 × as fast, faster in 9 to 11 of 15 runs).
   */
  readonly #frames: Uint8Array[] = [];

  private constructor(
    opts: SendOptions,
    source: ChunkSource,
    progress: TransferProgress,
    control: PeerConn,
    accepted: AcceptedMessage,
    delta?: DeltaSending,
  ) {
    this.#opts = opts;
    this.#source = source;
    this.#progress = progress;
    this.#control = control;
    this.#windowChunks = accepted.windowChunks;
    this.#delta = delta;
    if (delta) progress.delta = () => delta.status();
    if (opts.maxBytesPerSec) this.#bucket = new TokenBucket(opts.maxBytesPerSec, opts.chunkBytes, Date.now());
    const { candidates } = CODEC_BIAS[opts.codecBias ?? "datacenter"];
    // With nothing to choose from (the datacenter bias) "auto" is raw: no policy and no samples, the very
    // path of codec "none".
    if (opts.codec === "auto" && candidates.length > 0) {
      // Compressions run on FFI worker threads, at most one per stream, on the cores the transfer itself
      // (the main thread and the kernel's copies) leaves free: counting every core made "auto" compress
      // on loopback and run at 0.8x of "none" on 2 cores.
      const freeCores = Math.max(1, navigator.hardwareConcurrency - 1);
      const policy = new CodecPolicy(candidates, Math.min(opts.streams, freeCores));
      this.#policy = policy;
      progress.encoding = () => policy.snapshot();
    }
  }

  /**
   * Connects, authenticates and asks the peer to accept the target. Throws if the peer refuses. The
   * transfer owns the source from here: run() closes it.
   */
  static async open(
    opts: SendOptions,
    source: ChunkSource,
    progress: TransferProgress,
  ): Promise<OutgoingTransfer> {
    const control = await dial(opts.peer, opts.secret, opts.identity, opts.observer);
    try {
      await sendMessage(
        control,
        {
          type: "open",
          transferId: opts.transferId,
          chunkBytes: opts.chunkBytes,
          streams: opts.streams,
          codec: opts.codec,
          target: opts.target,
        } satisfies OpenMessage,
      );
      const accepted = await expectMessage<AcceptedMessage>(control, "accepted");
      progress.info.destination = accepted.path;
      const delta = opts.base
        ? await DeltaSending.start(
          opts.base,
          accepted.base,
          opts.chunkBytes,
          source.sizeBytes ?? 0,
          opts.codec !== "none",
        )
        : undefined;
      return new OutgoingTransfer(opts, source, progress, control, accepted, delta);
    } catch (err) {
      closeQuietly(control);
      throw err;
    }
  }

  /** Moves the data and commits. Never throws: the outcome is the progress state and error. */
  async run(): Promise<void> {
    const { streams, chunkBytes, transferWindowBytes } = this.#opts;
    const transferChunks = transferWindowBytes === undefined
      ? undefined
      : Math.max(this.#windowChunks, Math.ceil(transferWindowBytes / chunkBytes));
    this.#progress.window = { streamChunks: this.#windowChunks, transferChunks };
    const sched = new StripeScheduler({
      streams,
      windowChunks: this.#windowChunks,
      transferWindowChunks: transferChunks,
      maxRetries: this.#opts.maxRetries,
    });
    const watchdog = setInterval(() => this.#checkStall(), Math.min(1000, this.#opts.stallTimeoutMs));
    try {
      this.#readControl();
      const attached = await Promise.allSettled(Array.from({ length: streams }, (_, i) => this.#attach(i)));
      const conns = attached.flatMap((r) => r.status === "fulfilled" ? [r.value] : []);
      this.#streams.push(...conns); // closed in finally, even when another stream failed to attach
      const refused = attached.find((r) => r.status === "rejected");
      if (refused) throw refused.reason;
      this.#progress.setState("running");
      this.#lastAckMs = Date.now();
      const producing = this.#source.run(sched, () => this.#wake.notify()).catch((err) => this.#fail(err));
      await Promise.all(conns.map((conn, i) => this.#runStream(conn, i, sched)));
      await producing;
      this.#throwIfStopped();
      this.#progress.setState("committing");
      this.#pendingCommit = Promise.withResolvers();
      this.#pendingCommit.promise.catch(() => {}); // a failure before the await below is reported by #fail
      await sendMessage(
        this.#control,
        {
          type: "commit",
          chunks: sched.offered,
          bytes: this.#progress.snapshot().bytesDone,
          digest: this.#source.digest(),
        } satisfies CommitMessage,
      );
      await this.#pendingCommit.promise;
      this.#progress.setState("completed");
    } catch (err) {
      this.#fail(err);
      if (this.#cancelled) this.#progress.setState("cancelled");
      else this.#progress.setState("failed", { code: this.#failure!.code, message: this.#failure!.message });
    } finally {
      clearInterval(watchdog);
      this.#streams.forEach(closeQuietly);
      closeQuietly(this.#control);
      this.#source.close();
      this.#delta?.close();
    }
  }

  /** Asks the receiver to drop what it received, waits for its word (bounded), and stops the transfer. */
  async cancel(reason = "cancelled by request"): Promise<void> {
    if (this.#progress.terminal || this.#cancelled) return;
    this.#cancelled = true;
    this.#pendingCancel = Promise.withResolvers();
    try {
      await sendMessage(this.#control, { type: "cancel", reason });
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<void>((r) => timer = setTimeout(r, CANCEL_WAIT_MS));
      await Promise.race([this.#pendingCancel.promise, timeout]);
      clearTimeout(timer);
    } catch { /* the control connection is gone: the receiver drops the partial file on its own */ }
    this.#fail(new TransferError("cancelled", reason));
  }

  #fail(err: unknown): void {
    if (!this.#failure) {
      this.#failure = err instanceof TransferError
        ? err
        : err instanceof PeerError
        ? new TransferError(err.code, err.message)
        : err instanceof SchedulerError
        ? new TransferError("stream_failure", err.message)
        : err instanceof SourceError
        ? new TransferError("source_unreadable", err.message)
        : new TransferError("transfer_failed", (err as Error).message ?? String(err));
      this.#pendingCommit?.reject(this.#failure);
      // Closing the sockets and the source unblocks every read and write in flight.
      this.#streams.forEach(closeQuietly);
      closeQuietly(this.#control);
      this.#source.close();
    }
    this.#wake.notify();
  }

  /**
   * The link's capacity as the codec policy sees it: the best recent delivery rate, slowly forgotten.
   * The current rate alone would mislead it: while compression holds the CPU, fewer bytes reach the
   * wire, the link looks slow, and the policy would compress all the more.
   */
  #linkEstimate(): number {
    const now = this.#progress.wireBytesPerSec();
    if (now === 0 && this.#peakLinkBytesPerSec === 0) {
      return this.#opts.linkBytesPerSecHint ?? UNMEASURED_LINK_BYTES_PER_SEC;
    }
    this.#peakLinkBytesPerSec = Math.max(now, this.#peakLinkBytesPerSec * PEAK_DECAY_PER_CHUNK);
    return this.#peakLinkBytesPerSec;
  }

  #throwIfStopped(): void {
    if (this.#failure) throw this.#failure;
  }

  #checkStall(): void {
    // Only data movement is watched: the receiver's commit (fsync of a large file) may take longer.
    if (this.#progress.state === "running" && Date.now() - this.#lastAckMs > this.#opts.stallTimeoutMs) {
      this.#fail(
        new TransferError(
          "peer_stalled",
          `no acknowledgement from the peer for ${this.#opts.stallTimeoutMs} ms; the link or the peer is down`,
        ),
      );
    }
  }

  async #readControl(): Promise<void> {
    try {
      while (true) {
        const msg = await receiveMessage<CommittedMessage | CancelledMessage | ErrorMessage>(this.#control);
        if (msg.type === "committed") this.#pendingCommit?.resolve(msg);
        else if (msg.type === "cancelled") this.#pendingCancel?.resolve();
        else if (msg.type === "error") throw new PeerError(msg.code, msg.message);
      }
    } catch (err) {
      this.#pendingCancel?.resolve();
      if (this.#progress.terminal || this.#failure) return;
      this.#fail(
        err instanceof ConnectionClosed || err instanceof Deno.errors.BadResource
          ? new TransferError(
            "peer_closed",
            "the peer closed the control connection before the transfer committed",
          )
          : err,
      );
    }
  }

  async #attach(stream: number): Promise<PeerConn> {
    const conn = await dial(this.#opts.peer, this.#opts.secret, this.#opts.identity, this.#opts.observer);
    try {
      await sendMessage(conn, { type: "attach", transferId: this.#opts.transferId, stream });
      await expectMessage<AttachedMessage>(conn, "attached");
      return conn;
    } catch (err) {
      closeQuietly(conn);
      throw err;
    }
  }

  async #runStream(conn: PeerConn, stream: number, sched: StripeScheduler): Promise<void> {
    const wireLen = new Map<number, number>(); // seq → bytes it took on the wire, for the progress figures
    const acks = this.#readAcks(conn, stream, sched, wireLen);
    const stop = () => this.#failure !== undefined || !sched.isAlive(stream);
    try {
      await this.#sendChunks(conn, stream, sched, wireLen, stop);
    } catch (err) {
      if (err instanceof SourceError) this.#fail(err); // the source, not the stream, is at fault
      else if (!stop()) this.#loseStream(stream, sched, err);
    }
    await acks;
  }

  async #sendChunks(
    conn: PeerConn,
    stream: number,
    sched: StripeScheduler,
    wireLen: Map<number, number>,
    stop: () => boolean,
  ): Promise<void> {
    const { chunkBytes, codec } = this.#opts;
    const transferId = uuidToBytes(this.#opts.transferId);
    const encoder = new ChunkEncoder(chunkBytes, FRAME_HEADER_BYTES);
    const deltas = this.#delta?.stream(FRAME_HEADER_BYTES);
    const policy = this.#policy;
    let sampleRatio = 1;
    const pick = policy
      ? (body: Uint8Array) => {
        sampleRatio = encoder.sampleRatio(body);
        return policy.choose({ linkBytesPerSec: this.#linkEstimate(), sampleRatio });
      }
      : () => (codec === "auto" ? "none" : codec);
    try {
      while (!stop() && !sched.done) {
        const seq = sched.next(stream);
        if (seq === undefined) {
          await this.#wake.wait();
          continue;
        }
        const scratch = this.#frames.pop() ?? new Uint8Array(FRAME_HEADER_BYTES + chunkBytes);
        try {
          const chunk = this.#source.load(seq, scratch);
          // A delta against the base, else zero pages and the codec shrink the payload; a chunk that gains
          // nothing goes raw.
          const { frame, flags, codec: codecId, encLen, compression: c } =
            await deltas?.encode(seq, chunk, pick) ??
              await encoder.encode(chunk.frame, chunk.length, pick);
          if (c) policy?.observe(c, c.inBytes, c.outBytes, c.elapsedMs, sampleRatio);
          encodeHeader({
            type: FrameType.Data,
            codec: codecId,
            flags,
            seq,
            transferId,
            offset: chunk.offset,
            rawLen: chunk.length,
            encLen,
            checksum: chunk.frame.subarray(CHECKSUM_OFFSET, CHECKSUM_OFFSET + 8),
          }, frame);
          wireLen.set(seq, FRAME_HEADER_BYTES + encLen);
          const delayMs = this.#bucket?.reserve(Date.now(), FRAME_HEADER_BYTES + encLen) ?? 0;
          if (delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
          await writeAll(conn, frame.subarray(0, FRAME_HEADER_BYTES + encLen));
        } finally {
          this.#frames.push(scratch);
        }
      }
    } finally {
      encoder.close();
      deltas?.close();
    }
  }

  async #readAcks(conn: PeerConn, stream: number, sched: StripeScheduler, wireLen: Map<number, number>) {
    const head = new Uint8Array(FRAME_HEADER_BYTES);
    try {
      while (!sched.done && this.#failure === undefined && sched.isAlive(stream)) {
        await readFull(conn, head);
        const h = decodeHeader(head);
        this.#lastAckMs = Date.now();
        if (h.type === FrameType.Ack) {
          if (sched.ack(stream, h.seq)) {
            this.#progress.chunkDone(stream, h.rawLen, wireLen.get(h.seq) ?? 0);
            this.#source.release(h.seq);
            this.#delta?.acked(h.seq, h.rawLen);
          }
        } else if (h.type === FrameType.Nack) {
          this.#progress.retransmits++;
          this.#delta?.nacked(h.seq);
          sched.nack(stream, h.seq);
        }
        wireLen.delete(h.seq);
        if (sched.done) this.#streams.forEach(closeQuietly); // unblocks the other streams' ack readers
        this.#wake.notify();
      }
    } catch (err) {
      if (err instanceof SchedulerError) this.#fail(err);
      else if (this.#failure === undefined && !sched.done) this.#loseStream(stream, sched, err);
    }
  }

  #loseStream(stream: number, sched: StripeScheduler, _cause: unknown): void {
    // During a cancel the receiver closes every stream: that is the end, not a loss to recover from.
    if (!sched.isAlive(stream) || this.#cancelled) return;
    closeQuietly(this.#streams[stream] ?? { close() {} });
    this.#progress.streamLost(stream);
    try {
      sched.streamLost(stream);
    } catch (err) {
      this.#fail(err);
    }
    this.#wake.notify();
  }
}
