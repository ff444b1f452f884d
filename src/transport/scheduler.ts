/**
 * AMST stripe scheduler: which chunk each stream sends next, under per-stream credit. Sans-IO and
 * deterministic; the sender's stream workers call it and do the IO. It deals in chunk sequence numbers
 * only; what a chunk holds is the chunk source's business.
 *
 * The source offers chunks as they become available (a file offers all at once, a live stream as it is
 * read) and ends the offer when it has no more. A fresh chunk goes out on a stream holding fewer than
 * `windowChunks` unacknowledged chunks (its credit) and, when `transferWindowChunks` is set, while the
 * transfer holds fewer than that over all its streams. Chunks of a lost stream and chunks the receiver
 * rejected are requeued at the front and go out next on any live stream, credit or not: a receiver that
 * delivers in order may be holding the other streams' chunks until exactly those arrive. A chunk
 * rejected more than `maxRetries` times fails the transfer.
 */

export interface SchedulerOptions {
  streams: number;
  windowChunks: number;
  /** Unacknowledged chunks over all streams past which no fresh one goes out; unset: no such limit. */
  transferWindowChunks?: number;
  maxRetries: number;
}

export class SchedulerError extends Error {
  override name = "SchedulerError";
}

export class StripeScheduler {
  #offered = 0;
  #ended = false;
  #nextFresh = 0;
  readonly #requeued: number[] = [];
  readonly #inflight: Set<number>[];
  readonly #alive: boolean[];
  readonly #retries = new Map<number, number>();
  #acked = 0;
  /** Chunks in flight on all streams together. */
  #inflightTotal = 0;

  constructor(readonly opts: SchedulerOptions) {
    if (!(opts.streams > 0) || !(opts.windowChunks > 0) || !((opts.transferWindowChunks ?? 1) > 0)) {
      throw new RangeError("streams, windowChunks and transferWindowChunks must be positive");
    }
    this.#inflight = Array.from({ length: opts.streams }, () => new Set<number>());
    this.#alive = Array(opts.streams).fill(true);
  }

  /** count more chunks (the next sequence numbers) can be sent. */
  offer(count = 1): void {
    if (this.#ended) throw new SchedulerError("chunks offered after the end of the source");
    this.#offered += count;
  }

  /** The source has no more chunks; done once every offered chunk is acknowledged. */
  end(): void {
    this.#ended = true;
  }

  get offered(): number {
    return this.#offered;
  }

  /** The next chunk for stream, or undefined when it has no credit or nothing is ready to send. */
  next(stream: number): number | undefined {
    if (!this.#alive[stream]) return undefined;
    const inflight = this.#inflight[stream];
    let seq = this.#requeued.shift();
    if (seq === undefined) {
      if (
        inflight.size >= this.opts.windowChunks || this.#nextFresh >= this.#offered ||
        this.#inflightTotal >= (this.opts.transferWindowChunks ?? Infinity)
      ) {
        return undefined;
      }
      seq = this.#nextFresh++;
    }
    inflight.add(seq);
    this.#inflightTotal++;
    return seq;
  }

  /** The receiver took seq. Acks for chunks not in flight on stream are ignored. */
  ack(stream: number, seq: number): boolean {
    if (!this.#inflight[stream]?.delete(seq)) return false;
    this.#inflightTotal--;
    this.#acked++;
    return true;
  }

  /** The receiver rejected seq (checksum or decode failure): send it again, on any stream. */
  nack(stream: number, seq: number): void {
    if (!this.#inflight[stream]?.delete(seq)) return;
    this.#inflightTotal--;
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
    this.#inflightTotal -= this.#inflight[stream].size;
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
    return this.#ended && this.#acked === this.#offered;
  }
}
