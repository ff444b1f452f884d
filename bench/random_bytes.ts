/** Deterministic incompressible bytes for benchmarks (xorshift32), so every run measures the same data. */
export function xorshiftBytes(byteLength: number, seed = 0x9e3779b9): Uint8Array {
  const words = new Uint32Array(Math.ceil(byteLength / 4));
  let x = seed >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  return new Uint8Array(words.buffer, 0, byteLength);
}
