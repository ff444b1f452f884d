/**
 * AMST hot-path costs without IO: frame header encode/decode, the stripe scheduler's offer/next/ack
 * cycle, the per-chunk checksum table (record + digest) and the streams' running digest. Run with
 * `deno bench --allow-all bench/`.
 */
import { ChunkDigests, RunningDigest } from "../src/transport/chunk_digest.ts";
import {
  decodeHeader,
  encodeHeader,
  FRAME_HEADER_BYTES,
  type FrameHeader,
  FrameType,
} from "../src/transport/frame.ts";
import { StripeScheduler } from "../src/transport/scheduler.ts";

const header: FrameHeader = {
  type: FrameType.Data,
  codec: 0,
  seq: 123_456,
  transferId: crypto.getRandomValues(new Uint8Array(16)),
  offset: 5 * 2 ** 32 + 12_345,
  rawLen: 1 << 20,
  encLen: 1 << 20,
  checksum: crypto.getRandomValues(new Uint8Array(8)),
};
const headerBuf = new Uint8Array(FRAME_HEADER_BYTES);
encodeHeader(header, headerBuf);

Deno.bench("encodeHeader (48 bytes)", { group: "frame" }, () => encodeHeader(header, headerBuf));
Deno.bench("decodeHeader (48 bytes)", { group: "frame" }, () => void decodeHeader(headerBuf));

const CHUNKS = 1024, STREAMS = 8;

Deno.bench(`StripeScheduler next/ack, ${CHUNKS} chunks, ${STREAMS} streams`, () => {
  const s = new StripeScheduler({ streams: STREAMS, windowChunks: 4, maxRetries: 3 });
  s.offer(CHUNKS);
  s.end();
  // Each round every stream takes what its credit allows, then acks its oldest chunk.
  const pending: number[][] = Array.from({ length: STREAMS }, () => []);
  while (!s.done) {
    for (let i = 0; i < STREAMS; i++) {
      for (let seq = s.next(i); seq !== undefined; seq = s.next(i)) pending[i].push(seq);
      const seq = pending[i].shift();
      if (seq !== undefined) s.ack(i, seq);
    }
  }
});

Deno.bench(`StripeScheduler offer/next/ack as a stream reads, ${CHUNKS} chunks, ${STREAMS} streams`, () => {
  const s = new StripeScheduler({ streams: STREAMS, windowChunks: 4, maxRetries: 3 });
  // A live source offers one chunk at a time; a worker takes it at once and the oldest is acked.
  const pending: number[][] = Array.from({ length: STREAMS }, () => []);
  for (let n = 0; !s.done; n++) {
    if (n < CHUNKS) s.offer();
    else if (n === CHUNKS) s.end();
    const i = n % STREAMS;
    for (let seq = s.next(i); seq !== undefined; seq = s.next(i)) pending[i].push(seq);
    const seq = pending[i].shift();
    if (seq !== undefined) s.ack(i, seq);
  }
});

const RUNNING_CHUNKS = 4096;

const DIGEST_CHUNKS = RUNNING_CHUNKS;
const sums = crypto.getRandomValues(new Uint8Array(DIGEST_CHUNKS * 8));

Deno.bench(`ChunkDigests record + digest, ${DIGEST_CHUNKS} chunks`, () => {
  const d = new ChunkDigests(DIGEST_CHUNKS);
  for (let seq = 0; seq < DIGEST_CHUNKS; seq++) d.record(seq, sums.subarray(seq * 8, seq * 8 + 8));
  if (!d.complete || d.digest().length !== 16) throw new Error("digest table incomplete");
});

Deno.bench(`RunningDigest fold + digest, ${RUNNING_CHUNKS} chunks`, () => {
  const d = new RunningDigest();
  for (let seq = 0; seq < RUNNING_CHUNKS; seq++) d.fold(sums.subarray(seq * 8, seq * 8 + 8));
  if (d.count !== RUNNING_CHUNKS || d.digest().length !== 16) throw new Error("running digest incomplete");
});
