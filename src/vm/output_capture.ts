/**
 * Bounded capture of a child's output: the first headBytes and the last tailBytes, with what was
 * dropped in between counted, so a chatty QEMU cannot grow the agent's memory.
 */
export class OutputCapture {
  #head = new Uint8Array(0);
  #tail: Uint8Array[] = [];
  #tailLength = 0;
  #omitted = 0;
  #total = 0;

  constructor(readonly headBytes = 4096, readonly tailBytes = 16 * 1024) {}

  /** Bytes seen in all. */
  get totalBytes(): number {
    return this.#total;
  }

  push(chunk: Uint8Array): void {
    this.#total += chunk.length;
    if (this.#head.length < this.headBytes) {
      const take = Math.min(chunk.length, this.headBytes - this.#head.length);
      const head = new Uint8Array(this.#head.length + take);
      head.set(this.#head);
      head.set(chunk.subarray(0, take), this.#head.length);
      this.#head = head;
      chunk = chunk.subarray(take);
    }
    if (chunk.length === 0) return;
    if (chunk.length >= this.tailBytes) {
      this.#omitted += this.#tailLength + chunk.length - this.tailBytes;
      this.#tail = [chunk.slice(chunk.length - this.tailBytes)];
      this.#tailLength = this.tailBytes;
      return;
    }
    this.#tail.push(chunk.slice());
    this.#tailLength += chunk.length;
    while (this.#tailLength > this.tailBytes) {
      const first = this.#tail[0];
      const excess = this.#tailLength - this.tailBytes;
      if (first.length <= excess) {
        this.#tail.shift();
        this.#tailLength -= first.length;
        this.#omitted += first.length;
      } else {
        this.#tail[0] = first.subarray(excess);
        this.#tailLength -= excess;
        this.#omitted += excess;
      }
    }
  }

  /** Head and tail as text, with a marker where bytes were dropped. */
  text(): string {
    const dec = new TextDecoder();
    const tail = new Uint8Array(this.#tailLength);
    let off = 0;
    for (const t of this.#tail) {
      tail.set(t, off);
      off += t.length;
    }
    const gap = this.#omitted > 0 ? `\n[... ${this.#omitted} bytes omitted ...]\n` : "";
    return dec.decode(this.#head) + gap + dec.decode(tail);
  }

  /** Reads a stream to its end into this capture (the pipe must be drained, or the child blocks). */
  async drain(stream: ReadableStream<Uint8Array>): Promise<void> {
    try {
      for await (const chunk of stream) this.push(chunk);
    } catch { /* the child went away; what was read is kept */ }
  }
}
