/**
 * Fills a chunk store behind a deduped migration (HDE): chunks that arrive are kept without holding the
 * migration to the store's pace, up to a bound of bytes waiting to be written; beyond it, the caller
 * waits, so no chunk is ever skipped and memory stays bounded.
 *
 * Creating a chunk file (one per chunk, chunk_store.ts) costs 0.5 to 0.8 ms on this build machine's disk,
 * so a store fills at 10 to 20 MB/s: slower than a loopback migration, faster than an internet link. And
 * the writes compete with the migration for the machine, so they wait until half the bound is queued or
 * the stream has ended (flush): measured on a cold store and a 256 MiB guest (bench/dedupe_migrations.ts),
 * the migration took 4.6 to 6.5 s writing as chunks arrived and 3.2 to 3.4 s with the writes deferred.
 */
import type { Logger } from "../obs/log.ts";
import type { ChunkStore } from "./chunk_store.ts";
import { hashHex } from "./fingerprint.ts";

/** Puts running at once: enough to keep the file system's queue busy. */
const PUTS_IN_FLIGHT = 8;

export interface Fresh {
  hash: Uint8Array;
  bytes: Uint8Array;
}

export class StoreFiller {
  readonly #queue: Fresh[] = [];
  /** Chunks queued or being written, by hex hash: found here until the store has them. */
  readonly #pending = new Map<string, Uint8Array>();
  /** Bytes queued or being written. */
  #pendingBytes = 0;
  #running = 0;
  #failed = false;
  /** The stream has ended: write everything now. */
  #flushing = false;
  #roomWaiters: (() => void)[] = [];

  constructor(readonly store: ChunkStore, readonly maxPendingBytes: number, readonly log: Logger) {}

  get pendingBytes(): number {
    return this.#pendingBytes;
  }

  /** The stream has ended: writes start now, whatever is queued. */
  flush(): void {
    this.#flushing = true;
    this.#pump();
  }

  /** Writes everything queued (flush) and resolves once it is written, or the store failed. */
  async drained(): Promise<void> {
    this.flush();
    while (this.#pendingBytes > 0 && !this.#failed) {
      await new Promise<void>((resolve) => this.#roomWaiters.push(resolve));
    }
  }

  /** A chunk waiting to be written (its hash was checked when it arrived), or undefined. */
  pending(hash: Uint8Array): Uint8Array | undefined {
    return this.#pending.get(hashHex(hash));
  }

  /** Queues chunks for the store; resolves once the bytes waiting are back under the bound. */
  async add(fresh: readonly Fresh[]): Promise<void> {
    if (this.#failed) return;
    for (const f of fresh) {
      this.#queue.push(f);
      this.#pending.set(hashHex(f.hash), f.bytes);
      this.#pendingBytes += f.bytes.length;
    }
    this.#pump();
    while (this.#pendingBytes > this.maxPendingBytes && !this.#failed) {
      await new Promise<void>((resolve) => this.#roomWaiters.push(resolve));
    }
  }

  #pump(): void {
    // Writes wait for half the bound, or for the end of the stream (see the module comment).
    if (!this.#flushing && this.#pendingBytes < this.maxPendingBytes / 2) return;
    while (this.#running < PUTS_IN_FLIGHT && this.#queue.length > 0) {
      const f = this.#queue.shift()!;
      this.#running++;
      this.store.put(f.bytes, f.hash).catch((err) => {
        // A store that cannot be written (disk full, closed at shutdown) costs later migrations their
        // savings, not this one its bytes: stop filling it.
        if (!this.#failed) {
          this.log("dedupe store write failed; this migration goes on without filling it", {
            error: String(err),
          });
        }
        this.#failed = true;
        for (const q of this.#queue) {
          this.#pendingBytes -= q.bytes.length;
          this.#pending.delete(hashHex(q.hash));
        }
        this.#queue.length = 0;
      }).finally(() => {
        this.#running--;
        this.#pendingBytes -= f.bytes.length;
        this.#pending.delete(hashHex(f.hash));
        const waiters = this.#roomWaiters;
        this.#roomWaiters = [];
        for (const wake of waiters) wake();
        this.#pump();
      });
    }
  }
}
