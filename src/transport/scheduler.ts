/**
 * AMST stripe scheduler: which chunk each stream sends next, under per-stream credit. Sans-IO and
 * deterministic; the sender's stream workers call it and do the IO.
 *
 * A stream may hold at most `windowChunks` unacknowledged chunks (its credit). Chunks of a lost stream
 * and chunks the receiver rejected go back to the front of the queue, so the surviving streams send
 * them next; a chunk rejected more than `maxRetries` times fails the transfer.
 */

export interface Chunk {
  seq: number;
  offset: number;
  length: number;
}

export interface SchedulerOptions {
  sizeBytes: number;
  chunkBytes: number;
  streams: number;
  windowChunks: number;
  maxRetries: number;
}

export class SchedulerError extends Error {
  override name = "SchedulerError";
}

export class StripeScheduler {
  readonly totalChunks: number;
  #nextFresh = 0;
  readonly #requeued: number[] = [];
  readonly #inflight: Set<number>[];
  readonly #alive: boolean[];
  readonly #retries = new Map<number, number>();
  #acked = 0;

  constructor(readonly opts: SchedulerOptions) {
    if (!(opts.chunkBytes > 0) || !(opts.streams > 0) || !(opts.windowChunks > 0)) {
      throw new RangeError("chunkBytes, streams and windowChunks must be positive");
    }
    this.totalChunks = Math.ceil(opts.sizeBytes / opts.chunkBytes);
    this.#inflight = Array.from({ length: opts.streams }, () => new Set<number>());
    this.#alive = Array(opts.streams).fill(true);
  }

  chunk(seq: number): Chunk {
    const offset = seq * this.opts.chunkBytes;
    return { seq, offset, length: Math.min(this.opts.chunkBytes, this.opts.sizeBytes - offset) };
  }

  /** The next chunk for stream, or undefined when it has no credit or nothing is left to send now. */
  next(stream: number): Chunk | undefined {
    const inflight = this.#inflight[stream];
    if (!this.#alive[stream] || inflight.size >= this.opts.windowChunks) return undefined;
    let seq = this.#requeued.shift();
    if (seq === undefined) {
      if (this.#nextFresh >= this.totalChunks) return undefined;
      seq = this.#nextFresh++;
    }
    inflight.add(seq);
    return this.chunk(seq);
  }

  /** The receiver verified and stored seq. Acks for chunks not in flight on stream are ignored. */
  ack(stream: number, seq: number): void {
    if (this.#inflight[stream]?.delete(seq)) this.#acked++;
  }

  /** The receiver rejected seq (checksum or decode failure): send it again, on any stream. */
  nack(stream: number, seq: number): void {
    if (!this.#inflight[stream]?.delete(seq)) return;
    const tries = (this.#retries.get(seq) ?? 0) + 1;
    if (tries > this.opts.maxRetries) {
      throw new SchedulerError(`chunk ${seq} failed verification ${tries} times; giving up`);
    }
    this.#retries.set(seq, tries);
    this.#requeued.unshift(seq);
  }

  /** Stream is gone: its unacknowledged chunks move to the others. Throws when no stream is left. */
  streamLost(stream: number): void {
    if (!this.#alive[stream]) return;
    this.#alive[stream] = false;
    this.#requeued.unshift(...[...this.#inflight[stream]].sort((a, b) => a - b));
    this.#inflight[stream].clear();
    if (this.liveStreams === 0 && !this.done) throw new SchedulerError("all streams to the peer were lost");
  }

  get liveStreams(): number {
    return this.#alive.filter(Boolean).length;
  }

  isAlive(stream: number): boolean {
    return this.#alive[stream];
  }

  inflight(stream: number): number {
    return this.#inflight[stream].size;
  }

  get ackedChunks(): number {
    return this.#acked;
  }

  get done(): boolean {
    return this.#acked === this.totalChunks;
  }
}
