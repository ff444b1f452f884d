/**
 * Where a received transfer's chunks go. A file takes chunks in any order, writing each at its offset
 * into a temporary file that is renamed into place on commit. A stream (a QEMU incoming-migration
 * socket) takes them in sequence order: chunks that arrive early wait in a reorder buffer, bounded by
 * what the sender may have in flight, and each is acknowledged only once delivered, so the sender,
 * and the process feeding it, run at the pace the sink consumes.
 */
import { basename, dirname, join } from "node:path";
import { ChunkDigests, RunningDigest } from "./chunk_digest.ts";
import { FrameError, type FrameHeader } from "./frame.ts";
import type { CommitMessage } from "./messages.ts";
import { Signal } from "./signal.ts";
import { closeQuietly, type Duplex, writeAll, writeAllSync } from "./wire.ts";

/** A refusal with a code the sender sees (see docs/wire-format.md). */
export class RefusedError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

export type Ack = (fresh: boolean) => Promise<void>;

export interface ChunkSink {
  /** The resolved destination shown to both ends. */
  readonly label: string;
  /** Total size when known (files). */
  readonly sizeBytes?: number;
  /** Throws FrameError when a frame's position does not fit this sink. */
  check(h: FrameHeader): void;
  /**
   * Takes a verified chunk (data is valid only during the call; allZero when it is all zero pages) and
   * calls ack once the chunk is stored
   * or delivered, with fresh = false for a resend of a chunk it already had; the returned promise
   * settles when the caller may read the next frame. Rejects once the sink has failed.
   */
  accept(h: FrameHeader, data: Uint8Array, ack: Ack, allZero?: boolean): Promise<void>;
  /** Settles with the sink's failure, if it ever fails on its own (a stream's consumer went away). */
  readonly failed: Promise<RefusedError>;
  /** Everything arrived: verify against the sender's commit and make it final. */
  commit(msg: CommitMessage): Promise<void>;
  /** Drop whatever was received. Safe to call more than once. */
  abort(): Promise<void>;
}

export class FileSink implements ChunkSink {
  readonly totalChunks: number;
  readonly #digests: ChunkDigests;
  readonly #file: Deno.FsFile;

  private constructor(
    readonly label: string,
    readonly tempPath: string,
    readonly sizeBytes: number,
    readonly chunkBytes: number,
    readonly fsync: boolean,
    file: Deno.FsFile,
  ) {
    this.totalChunks = Math.ceil(sizeBytes / chunkBytes);
    this.#digests = new ChunkDigests(this.totalChunks);
    this.#file = file;
  }

  /** Creates the temporary file beside finalPath, at its full (sparse) size. */
  static async create(
    finalPath: string,
    transferId: string,
    sizeBytes: number,
    chunkBytes: number,
    fsync: boolean,
  ): Promise<FileSink> {
    const tempPath = join(dirname(finalPath), `.${basename(finalPath)}.dwcp-${transferId.slice(0, 8)}.part`);
    const file = await Deno.open(tempPath, { read: true, write: true, create: true, truncate: true });
    await file.truncate(sizeBytes);
    return new FileSink(finalPath, tempPath, sizeBytes, chunkBytes, fsync, file);
  }

  check(h: FrameHeader): void {
    const expected = h.seq < this.totalChunks
      ? Math.min(this.chunkBytes, this.sizeBytes - h.seq * this.chunkBytes)
      : -1;
    if (expected < 0 || h.offset !== h.seq * this.chunkBytes || h.rawLen !== expected) {
      throw new FrameError(`chunk ${h.seq} at ${h.offset} (${h.rawLen} bytes) is outside the file's layout`);
    }
  }

  /** A file fails only through its stream readers, which report it themselves. */
  readonly failed = new Promise<RefusedError>(() => {});

  async accept(h: FrameHeader, data: Uint8Array, ack: Ack, allZero = false): Promise<void> {
    // A zero chunk stays a hole: the temporary file starts sparse at its full size.
    if (!allZero) {
      // Synchronous: into the page cache a write is a memory copy, cheaper than a hop to a thread.
      this.#file.seekSync(h.offset, Deno.SeekMode.Start);
      writeAllSync(this.#file, data);
    }
    await ack(this.#digests.record(h.seq, h.checksum));
  }

  async commit(msg: CommitMessage): Promise<void> {
    if (msg.chunks !== this.totalChunks || !this.#digests.complete) {
      throw new RefusedError(
        "incomplete",
        `commit with ${this.#digests.recorded} of ${this.totalChunks} chunks received; the transfer is incomplete`,
      );
    }
    if (msg.digest !== this.#digests.digest()) {
      throw new RefusedError(
        "digest_mismatch",
        "the chunk checksums received differ from the sender's; resend",
      );
    }
    if (this.fsync) await this.#file.sync();
    this.#file.close();
    await Deno.rename(this.tempPath, this.label);
  }

  async abort(): Promise<void> {
    closeQuietly(this.#file);
    await Deno.remove(this.tempPath).catch(() => {});
  }
}

interface Waiting {
  data: Uint8Array;
  checksum: Uint8Array;
  ack: Ack;
  /** For a chunk taken without a copy: settles once written, so the reader may reuse its buffer. */
  written?: PromiseWithResolvers<void>;
}

export class StreamSink implements ChunkSink {
  readonly sizeBytes = undefined;
  readonly #waiting = new Map<number, Waiting>();
  readonly #arrived = new Signal();
  readonly #digest = new RunningDigest();
  #next = 0;
  #deliveredBytes = 0;
  #failure?: RefusedError;
  readonly #failed = Promise.withResolvers<RefusedError>();
  readonly failed = this.#failed.promise;
  #stopped = false;
  readonly #delivering: Promise<void>;

  constructor(readonly label: string, readonly output: Duplex) {
    this.#delivering = this.#deliver();
  }

  check(h: FrameHeader): void {
    if (h.seq < this.#next || this.#waiting.has(h.seq)) return; // a resend of a chunk already here: harmless
    if (h.rawLen === 0) throw new FrameError(`stream chunk ${h.seq} is empty`);
  }

  accept(h: FrameHeader, data: Uint8Array, ack: Ack): Promise<void> {
    if (this.#failure) return Promise.reject(this.#failure);
    if (h.seq < this.#next) return ack(false); // delivered already; its ack was lost with its stream
    const waiting = this.#waiting.get(h.seq);
    if (waiting) {
      // Resent because its first stream died: acknowledge on this one, once delivered.
      waiting.ack = ack;
      return Promise.resolve();
    }
    if (h.seq === this.#next) {
      // Next in line: written from the reader's own buffer, which the reader leaves alone until then.
      const written = Promise.withResolvers<void>();
      this.#waiting.set(h.seq, { data, checksum: h.checksum.slice(), ack, written });
      this.#arrived.notify();
      return written.promise;
    }
    // The stream's buffer is reused for its next frame, so an early chunk is copied to wait its turn.
    this.#waiting.set(h.seq, { data: data.slice(), checksum: h.checksum.slice(), ack });
    this.#arrived.notify();
    return Promise.resolve();
  }

  /** Writes chunks to the output strictly in sequence, acknowledging each once written. */
  async #deliver(): Promise<void> {
    while (!this.#stopped) {
      const chunk = this.#waiting.get(this.#next);
      if (!chunk) {
        await this.#arrived.wait();
        continue;
      }
      try {
        await writeAll(this.output, chunk.data);
      } catch (err) {
        this.#failure = new RefusedError(
          "sink_failed",
          `the stream's consumer stopped reading: ${(err as Error).message}`,
        );
        this.#failed.resolve(this.#failure);
        this.#release(this.#failure);
        this.#arrived.notify();
        return;
      }
      chunk.written?.resolve();
      this.#digest.fold(chunk.checksum);
      this.#waiting.delete(this.#next);
      this.#deliveredBytes += chunk.data.length;
      this.#next++;
      this.#arrived.notify();
      await chunk.ack(true).catch(() => {}); // a stream lost after delivery: its sender resends, we re-ack
    }
  }

  async commit(msg: CommitMessage): Promise<void> {
    // Chunks are acknowledged only once delivered, so a sender commits after the last delivery; still,
    // a commit that overtakes deliveries in progress waits for them, but never for a chunk not here.
    while (this.#next < msg.chunks && this.#waiting.has(this.#next) && !this.#failure && !this.#stopped) {
      await this.#arrived.wait();
    }
    if (this.#failure) throw this.#failure;
    if (this.#next !== msg.chunks || msg.bytes !== this.#deliveredBytes) {
      throw new RefusedError(
        "incomplete",
        `commit of ${msg.chunks} chunks (${msg.bytes} bytes), delivered ${this.#next} (${this.#deliveredBytes} bytes)`,
      );
    }
    if (msg.digest !== this.#digest.digest()) {
      throw new RefusedError("digest_mismatch", "the stream's chunk checksums differ from the sender's");
    }
    this.#stopped = true; // stops the delivery loop; the output ends here
    this.#arrived.notify();
    await this.#delivering;
    closeQuietly(this.output);
  }

  /** Lets every reader waiting on a chunk taken without a copy go on (with the failure, if any). */
  #release(failure?: Error): void {
    for (const w of this.#waiting.values()) failure ? w.written?.reject(failure) : w.written?.resolve();
  }

  async abort(): Promise<void> {
    this.#stopped = true;
    this.#release();
    this.#arrived.notify();
    closeQuietly(this.output);
    await this.#delivering;
  }
}
