/**
 * An in-memory connection pair implementing wire.ts's Duplex. Reads return random-size pieces and
 * writes accept random-size prefixes (seeded), so code under test must handle short reads and writes
 * the way it must on a real socket.
 */
import type { Duplex } from "../../src/transport/wire.ts";
import { mulberry32, randInt } from "./prng.ts";

/** One direction: bytes written at one end, read at the other. */
class Pipe {
  readonly #queue: Uint8Array[] = [];
  #closed = false;
  #wake?: () => void;
  /** Bytes taken out by read() so far. */
  consumed = 0;

  constructor(readonly rand: () => number, readonly maxPiece: number) {}

  push(p: Uint8Array): number {
    if (this.#closed) throw new Deno.errors.BrokenPipe("write on a closed in-memory connection");
    const n = randInt(this.rand, 1, Math.min(p.length, this.maxPiece));
    this.#queue.push(p.slice(0, n));
    this.#wakeReader();
    return n;
  }

  async pull(p: Uint8Array): Promise<number | null> {
    while (this.#queue.length === 0) {
      if (this.#closed) return null;
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
    const head = this.#queue[0];
    const n = Math.min(p.length, head.length, randInt(this.rand, 1, this.maxPiece));
    p.set(head.subarray(0, n));
    if (n === head.length) this.#queue.shift();
    else this.#queue[0] = head.subarray(n);
    this.consumed += n;
    return n;
  }

  /** Bytes written but not read yet. */
  get buffered(): number {
    return this.#queue.reduce((sum, b) => sum + b.length, 0);
  }

  close(): void {
    this.#closed = true;
    this.#wakeReader();
  }

  #wakeReader(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}

export class MemoryConn implements Duplex {
  closed = false;

  constructor(readonly incoming: Pipe, readonly outgoing: Pipe) {}

  read(p: Uint8Array): Promise<number | null> {
    if (p.length === 0) return Promise.resolve(0);
    return this.incoming.pull(p);
  }

  write(p: Uint8Array): Promise<number> {
    if (p.length === 0) return Promise.resolve(0);
    return Promise.resolve(this.outgoing.push(p));
  }

  /** Closes both directions: the peer reads end-of-stream after the buffered bytes, and so do we. */
  close(): void {
    this.closed = true;
    this.outgoing.close();
    this.incoming.close();
  }
}

/** Two connected ends. maxPiece bounds the size of every read and write piece. */
export function duplexPair(seed = 1, maxPiece = 7): [MemoryConn, MemoryConn] {
  const rand = mulberry32(seed);
  const ab = new Pipe(rand, maxPiece), ba = new Pipe(rand, maxPiece);
  return [new MemoryConn(ba, ab), new MemoryConn(ab, ba)];
}
