/**
 * Rate probes (AMST, wire-format §2.1): the delivered rate of an idle link, from a short burst. The
 * prober sends `{type:"rate-probe", bytes}` and that many bytes on an authenticated data connection; the
 * receiver reads and drops them and answers `{type:"rate-probed", bytes, receiveMs}`. The prober's rate
 * is the bytes over the time from its first byte written to the answer read: the burst, one round trip
 * (the last byte's way there, the answer's way back) and TCP's slow start on a fresh connection, so on a
 * link with a large bandwidth-delay product a small burst reads low, a lower bound of what it carries.
 */
import { RefusedError } from "./chunk_sink.ts";
import type { RateProbedMessage, RateProbeMessage } from "./messages.ts";
import {
  closeQuietly,
  ConnectionClosed,
  type Duplex,
  expectMessage,
  ProtocolError,
  sendMessage,
  writeAll,
} from "./wire.ts";

const MiB = 1024 * 1024;

export const RATE_PROBE_LIMITS = {
  /** The most a receiver reads for one probe: more is refused, so a probe cannot become a free data pipe. */
  maxBytes: 16 * MiB,
  /** A probe unfinished after this long is dropped, by either side. */
  timeoutMs: 30_000,
} as const;

/** The receiver reads through one buffer of this size, whatever the probe claims. */
const READ_BUFFER_BYTES = 64 * 1024;
/** The prober writes from one zero-filled buffer of this size (the bytes' content does not matter). */
const ZEROS = new Uint8Array(256 * 1024);

/** What a probe took: the bytes sent, and ms from the first byte written to the receiver's answer. */
export interface RateSample {
  bytes: number;
  elapsedMs: number;
  /** The receiver's ms from the first byte read to the last: without the round trip, as it saw it. */
  receiveMs: number;
}

/** Receiver side: checks the size, reads and drops that many bytes, answers with the count. */
export async function answerRateProbe(conn: Duplex, msg: RateProbeMessage): Promise<void> {
  const bytes = msg.bytes;
  if (!Number.isSafeInteger(bytes) || bytes < 1 || bytes > RATE_PROBE_LIMITS.maxBytes) {
    throw new RefusedError(
      "invalid_request",
      `rate probe of ${JSON.stringify(bytes)} bytes refused: ask for 1..${RATE_PROBE_LIMITS.maxBytes}`,
    );
  }
  const timer = setTimeout(() => closeQuietly(conn), RATE_PROBE_LIMITS.timeoutMs);
  try {
    const receiveMs = await drain(conn, bytes);
    await sendMessage(conn, { type: "rate-probed", bytes, receiveMs } satisfies RateProbedMessage);
  } finally {
    clearTimeout(timer);
  }
}

/** Reads exactly bytes and drops them; resolves with ms from the first byte read to the last. */
async function drain(conn: Duplex, bytes: number): Promise<number> {
  const buf = new Uint8Array(Math.min(READ_BUFFER_BYTES, bytes));
  let got = 0, firstAtMs = 0;
  while (got < bytes) {
    const n = await conn.read(buf.subarray(0, Math.min(buf.length, bytes - got)));
    if (n === null) throw new ConnectionClosed(`rate probe closed after ${got} of ${bytes} bytes`);
    if (got === 0) firstAtMs = performance.now();
    got += n;
  }
  return performance.now() - firstAtMs;
}

/** Prober side, on an authenticated connection to a peer that answers rate probes. */
export async function sendRateProbe(conn: Duplex, bytes: number): Promise<RateSample> {
  await sendMessage(conn, { type: "rate-probe", bytes } satisfies RateProbeMessage);
  const startMs = performance.now();
  for (let sent = 0; sent < bytes; sent += ZEROS.length) {
    await writeAll(conn, ZEROS.subarray(0, Math.min(ZEROS.length, bytes - sent)));
  }
  const answer = await expectMessage<RateProbedMessage>(conn, "rate-probed");
  const elapsedMs = performance.now() - startMs;
  if (answer.bytes !== bytes) {
    throw new ProtocolError(`the peer says it read ${answer.bytes} of the rate probe's ${bytes} bytes`);
  }
  return { bytes, elapsedMs, receiveMs: Number(answer.receiveMs) };
}
