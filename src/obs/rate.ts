/** Throughput over a sliding window of recent samples; time is passed in, so it is deterministic. */
export class RateMeter {
  readonly #samples: { atMs: number; bytes: number }[] = [];
  #total = 0;

  constructor(readonly windowMs = 2000, readonly maxSamples = 256) {}

  add(nowMs: number, bytes: number): void {
    this.#total += bytes;
    const last = this.#samples.at(-1);
    // Samples closer than windowMs/maxSamples merge, so the buffer stays bounded at any event rate.
    if (last && nowMs - last.atMs < this.windowMs / this.maxSamples) last.bytes += bytes;
    else this.#samples.push({ atMs: nowMs, bytes });
    while (
      this.#samples.length > this.maxSamples ||
      (this.#samples[0] && nowMs - this.#samples[0].atMs > this.windowMs)
    ) {
      this.#samples.shift();
    }
  }

  get totalBytes(): number {
    return this.#total;
  }

  /** Bytes per second over the window ending at nowMs; 0 before two samples exist. */
  bytesPerSec(nowMs: number): number {
    const live = this.#samples.filter((s) => nowMs - s.atMs <= this.windowMs);
    if (live.length < 2) return 0;
    const spanMs = Math.max(nowMs - live[0].atMs, 1);
    // The first sample marks the window start; the bytes after it arrived within the span.
    const bytes = live.slice(1).reduce((sum, s) => sum + s.bytes, 0);
    return (bytes * 1000) / spanMs;
  }
}
