/**
 * The agent's dedupe chunk store (HDE), opened on first use, since most agents never receive a deduped
 * migration and opening scans the store's directories, and closed when the agent stops.
 */
import { ChunkStore, type ChunkStoreOptions } from "./chunk_store.ts";

export class LazyChunkStore {
  #opening?: Promise<ChunkStore>;
  #closed = false;

  constructor(readonly opts: ChunkStoreOptions) {}

  /** The store; a failed open is tried again by the next caller. */
  get(): Promise<ChunkStore> {
    if (this.#closed) return Promise.reject(new Error(`chunk store ${this.opts.dir}: the agent is stopping`));
    if (!this.#opening) {
      const opening = ChunkStore.open(this.opts);
      this.#opening = opening;
      opening.catch(() => {
        if (this.#opening === opening) this.#opening = undefined;
      });
    }
    return this.#opening;
  }

  async close(): Promise<void> {
    this.#closed = true;
    const store = await this.#opening?.catch(() => undefined);
    await store?.close();
  }
}
