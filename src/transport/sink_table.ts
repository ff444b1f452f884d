/** Named live-stream sinks waiting for a stream transfer (see SinkRegistry in receiver.ts). */
import type { SinkRegistry } from "./receiver.ts";
import type { Duplex } from "./wire.ts";

export class SinkTable implements SinkRegistry {
  readonly #sinks = new Map<string, Duplex>();

  /** Registers output under name; the returned function withdraws it if no transfer took it. */
  register(name: string, output: Duplex): () => void {
    if (this.#sinks.has(name)) throw new Error(`a stream sink named "${name}" is already waiting`);
    this.#sinks.set(name, output);
    return () => this.#sinks.delete(name);
  }

  take(name: string): Duplex | undefined {
    const output = this.#sinks.get(name);
    this.#sinks.delete(name);
    return output;
  }
}
