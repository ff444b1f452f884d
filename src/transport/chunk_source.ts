/**
 * Where a transfer's chunks come from. A file offers every chunk at once and can read any of them
 * again; a live stream (a QEMU migration socket) offers chunks as it reads them and holds each until
 * the receiver acknowledges it, reading no further while `maxHeldChunks` are held: that is the
 * backpressure that makes the stream's writer see the end-to-end rate.
 */
import { xxh3Into } from "../../ffi/codec.ts";
import { ChunkDigests, RunningDigest } from "./chunk_digest.ts";
import { CHECKSUM_OFFSET, FRAME_HEADER_BYTES } from "./frame.ts";
import type { StripeScheduler } from "./scheduler.ts";
import { Signal } from "./signal.ts";
import { closeQuietly, type Duplex, readFullSync } from "./wire.ts";

export interface LoadedChunk {
  /** FRAME_HEADER_BYTES of room for the header, then the chunk; its checksum is at CHECKSUM_OFFSET. */
  frame: Uint8Array;
  offset: number;
  length: number;
}

export interface ChunkSource {
  /** Total size when known in advance (files); undefined for streams. close() may be called repeatedly. */
  readonly sizeBytes?: number;
  /** Offers chunks to the scheduler until the source ends; wake() tells the stream workers. */
  run(sched: StripeScheduler, wake: () => void): Promise<void>;
  /** Chunk seq with its checksum; a file reads it into scratch, a stream returns the buffer it holds. */
  load(seq: number, scratch: Uint8Array): LoadedChunk;
  /** The receiver has chunk seq; its bytes are no longer needed. */
  release(seq: number): void;
  /** Digest of every chunk checksum, compared by the receiver at commit. */
  digest(): string;
  close(): void;
}

/** Source reads fail the transfer with this (not a stream loss: no other stream would do better). */
export class SourceError extends Error {
  override name = "SourceError";
}

export class FileSource implements ChunkSource {
  readonly totalChunks: number;
  readonly #file: Deno.FsFile;
  readonly #digests: ChunkDigests;

  private constructor(
    readonly path: string,
    readonly sizeBytes: number,
    readonly chunkBytes: number,
    file: Deno.FsFile,
  ) {
    this.totalChunks = Math.ceil(sizeBytes / chunkBytes);
    this.#file = file;
    this.#digests = new ChunkDigests(this.totalChunks);
  }

  static async open(path: string, sizeBytes: number, chunkBytes: number): Promise<FileSource> {
    try {
      return new FileSource(path, sizeBytes, chunkBytes, await Deno.open(path, { read: true }));
    } catch (err) {
      throw new SourceError(`cannot read ${path}: ${(err as Error).message}`);
    }
  }

  run(sched: StripeScheduler, wake: () => void): Promise<void> {
    sched.offer(this.totalChunks);
    sched.end();
    wake();
    return Promise.resolve();
  }

  load(seq: number, scratch: Uint8Array): LoadedChunk {
    const offset = seq * this.chunkBytes;
    const length = Math.min(this.chunkBytes, this.sizeBytes - offset);
    const body = scratch.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + length);
    try {
      // Synchronous: from the page cache a read is a memory copy, cheaper than a hop to a thread.
      this.#file.seekSync(offset, Deno.SeekMode.Start);
      readFullSync(this.#file, body);
    } catch (err) {
      throw new SourceError(`reading ${this.path} at ${offset}: ${(err as Error).message}`);
    }
    const checksum = scratch.subarray(CHECKSUM_OFFSET, CHECKSUM_OFFSET + 8);
    xxh3Into(body, checksum);
    this.#digests.record(seq, checksum);
    return { frame: scratch, offset, length };
  }

  release(): void {}

  digest(): string {
    return this.#digests.digest();
  }

  close(): void {
    closeQuietly(this.#file);
  }
}

export class StreamSource implements ChunkSource {
  readonly sizeBytes = undefined;
  readonly #held = new Map<number, LoadedChunk>();
  readonly #free: Uint8Array[] = [];
  readonly #released = new Signal();
  readonly #digest = new RunningDigest();
  #closed = false;

  constructor(readonly input: Duplex, readonly chunkBytes: number, readonly maxHeldChunks: number) {}

  async run(sched: StripeScheduler, wake: () => void): Promise<void> {
    let offset = 0;
    for (let seq = 0;; seq++) {
      while (this.#held.size >= this.maxHeldChunks && !this.#closed) await this.#released.wait();
      if (this.#closed) return;
      const frame = this.#free.pop() ?? new Uint8Array(FRAME_HEADER_BYTES + this.chunkBytes);
      let n: number | null;
      try {
        // One read is one chunk: a fast writer fills chunks, a slow one is not kept waiting for a full one.
        n = await this.input.read(frame.subarray(FRAME_HEADER_BYTES));
      } catch (err) {
        if (this.#closed) return;
        throw new SourceError(`reading the stream: ${(err as Error).message}`);
      }
      if (this.#closed) return; // closed while the read was pending: not the stream's end
      if (n === null) break;
      const checksum = frame.subarray(CHECKSUM_OFFSET, CHECKSUM_OFFSET + 8);
      xxh3Into(frame.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + n), checksum);
      this.#digest.fold(checksum);
      this.#held.set(seq, { frame, offset, length: n });
      offset += n;
      sched.offer();
      wake();
    }
    sched.end();
    wake();
  }

  load(seq: number): LoadedChunk {
    const chunk = this.#held.get(seq);
    if (!chunk) throw new Error(`chunk ${seq} is not held; it was acknowledged already`);
    return chunk;
  }

  release(seq: number): void {
    const chunk = this.#held.get(seq);
    if (!chunk) return;
    this.#held.delete(seq);
    if (this.#free.length < this.maxHeldChunks) this.#free.push(chunk.frame);
    this.#released.notify();
  }

  digest(): string {
    return this.#digest.digest();
  }

  close(): void {
    this.#closed = true;
    closeQuietly(this.input); // unblocks a pending read
    this.#released.notify();
  }
}
