/**
 * A token bucket shared by a transfer's streams, for an operator's bandwidth cap. Sans-IO: the caller
 * passes the time and sleeps for the delay it gets back.
 */
export class TokenBucket {
  #tokens: number;
  #lastMs: number;

  constructor(readonly bytesPerSec: number, readonly burstBytes: number, nowMs: number) {
    if (!(bytesPerSec > 0) || !(burstBytes > 0)) {
      throw new RangeError("bytesPerSec and burstBytes must be positive");
    }
    this.#tokens = burstBytes;
    this.#lastMs = nowMs;
  }

  /** Takes bytes from the bucket; returns how many ms the caller must wait before sending them. */
  reserve(nowMs: number, bytes: number): number {
    this.#tokens = Math.min(
      this.burstBytes,
      this.#tokens + ((nowMs - this.#lastMs) * this.bytesPerSec) / 1000,
    );
    this.#lastMs = nowMs;
    this.#tokens -= bytes;
    return this.#tokens >= 0 ? 0 : (-this.#tokens * 1000) / this.bytesPerSec;
  }
}
