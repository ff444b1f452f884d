/** Deterministic test data for the dedupe tests: a failure reproduces with the same seed. */

/** xorshift32: a tiny seeded generator. */
export function xorshift(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

export function randomBytes(n: number, seed: number): Uint8Array {
  const next = xorshift(seed);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = next() & 0xff;
  return out;
}

/** Two ends of an in-memory, ordered message pipe; close() ends the other side's receive() with undefined. */
export function memoryChannels(): [MemoryChannel, MemoryChannel] {
  const ab = new MessageQueue();
  const ba = new MessageQueue();
  return [new MemoryChannel(ab, ba), new MemoryChannel(ba, ab)];
}

export class MemoryChannel {
  /** Bytes this end sent, for the tests' accounting of what would travel. */
  sentBytes = 0;

  constructor(private readonly out: MessageQueue, private readonly inbox: MessageQueue) {}

  send(msg: Uint8Array): Promise<void> {
    this.sentBytes += msg.length;
    this.out.push(msg.slice());
    return Promise.resolve();
  }

  receive(): Promise<Uint8Array | undefined> {
    return this.inbox.shift();
  }

  close(): void {
    this.out.close();
  }
}

class MessageQueue {
  #items: Uint8Array[] = [];
  #waiters: ((m: Uint8Array | undefined) => void)[] = [];
  #closed = false;

  push(msg: Uint8Array): void {
    const waiter = this.#waiters.shift();
    if (waiter) waiter(msg);
    else this.#items.push(msg);
  }

  shift(): Promise<Uint8Array | undefined> {
    if (this.#items.length > 0) return Promise.resolve(this.#items.shift());
    if (this.#closed) return Promise.resolve(undefined);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  close(): void {
    this.#closed = true;
    for (const w of this.#waiters.splice(0)) w(undefined);
  }
}
