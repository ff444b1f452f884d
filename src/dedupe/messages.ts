/**
 * The dedupe exchange's messages (HDE; docs/wire-format.md, "Dedupe exchange"): the sender OFFERs the
 * hashes and lengths of its next chunks, the receiver answers with a WANT bitmap of those it lacks, the
 * sender sends those chunks' bytes as CHUNKS, and END closes the stream. Every message is a 24-byte header
 * and a body whose size the limits bound, so a reader can refuse an oversized message before buffering it.
 *
 * Decoding checks everything that can be checked without protocol state and throws DedupeProtocolError
 * naming the bad field; the state machines in offer.ts check the rest (order, ids, offsets, hashes).
 */
import { HASH_BYTES, hashHex } from "./fingerprint.ts";

export const DEDUPE_VERSION = 1;
export const HEADER_BYTES = 24;
/** A SHA-256 and a u32 length per offered chunk. */
export const ENTRY_BYTES = HASH_BYTES + 4;

export const MessageType = { OFFER: 1, WANT: 2, CHUNKS: 3, END: 4 } as const;

export interface DedupeLimits {
  /** The largest chunk an offer may name (the chunker's maxBytes). */
  maxChunkBytes: number;
  /** Chunks per OFFER. */
  maxChunksPerOffer: number;
  /** Bytes of chunks per OFFER, and so the largest CHUNKS body. */
  maxOfferBytes: number;
  /** OFFERs sent and not yet answered by CHUNKS: what each side holds is at most this × maxOfferBytes. */
  maxOffersInFlight: number;
}

/**
 * Chunks up to 64 KiB (twice VM_MEMORY_CDC's max, so a sender may chunk coarser), offers of up to 1 MiB
 * of chunks (the transport's chunk size), 8 offers in flight.
 */
export const DEFAULT_DEDUPE_LIMITS: DedupeLimits = {
  maxChunkBytes: 64 * 1024,
  maxChunksPerOffer: 256,
  maxOfferBytes: 1024 * 1024,
  maxOffersInFlight: 8,
};

/** What any setting may reach: keeps the largest message at 64 MiB, the transport's frame limit. */
const LIMIT_CAPS: DedupeLimits = {
  maxChunkBytes: 16 * 1024 * 1024,
  maxChunksPerOffer: 65536,
  maxOfferBytes: 64 * 1024 * 1024 - HEADER_BYTES,
  maxOffersInFlight: 256,
};

export function validateDedupeLimits(limits: DedupeLimits): DedupeLimits {
  for (const key of Object.keys(LIMIT_CAPS) as (keyof DedupeLimits)[]) {
    const v = limits[key];
    if (!Number.isSafeInteger(v) || v < 1 || v > LIMIT_CAPS[key]) {
      throw new RangeError(
        `dedupe ${key} ${v}: must be an integer in 1..${LIMIT_CAPS[key]} (default ${
          DEFAULT_DEDUPE_LIMITS[key]
        })`,
      );
    }
  }
  if (limits.maxChunkBytes > limits.maxOfferBytes) {
    throw new RangeError(
      `dedupe maxChunkBytes ${limits.maxChunkBytes} exceeds maxOfferBytes ${limits.maxOfferBytes}: ` +
        `an offer must hold at least one chunk`,
    );
  }
  return { ...limits };
}

/** The largest message these limits allow: an OFFER's or a CHUNKS's. */
export function maxMessageBytes(limits: DedupeLimits): number {
  return HEADER_BYTES + Math.max(limits.maxOfferBytes, limits.maxChunksPerOffer * ENTRY_BYTES);
}

export interface OfferEntry {
  hash: Uint8Array;
  lengthBytes: number;
}

export type DedupeMessage =
  | { type: "offer"; offerId: number; offsetBytes: number; entries: OfferEntry[] }
  /** wanted: bit i (LSB first) set when the receiver wants chunk i of the offer. */
  | { type: "want"; offerId: number; offsetBytes: number; count: number; wanted: Uint8Array }
  /** body: the wanted chunks' bytes, concatenated in offer order. */
  | { type: "chunks"; offerId: number; offsetBytes: number; count: number; body: Uint8Array }
  /** offerId: the number of offers; offsetBytes: the stream's length. */
  | { type: "end"; offerId: number; offsetBytes: number };

export class DedupeProtocolError extends Error {
  override name = "DedupeProtocolError";
  readonly code = "dedupe_protocol";
}

export function bitmapBytes(count: number): number {
  return Math.ceil(count / 8);
}

export function isWanted(wanted: Uint8Array, i: number): boolean {
  return (wanted[i >> 3] >> (i & 7) & 1) === 1;
}

function header(
  type: number,
  offerId: number,
  offsetBytes: number,
  count: number,
  bodyBytes: number,
): Uint8Array {
  const msg = new Uint8Array(HEADER_BYTES + bodyBytes);
  const view = new DataView(msg.buffer);
  view.setUint8(0, type);
  view.setUint8(1, DEDUPE_VERSION);
  view.setUint32(4, offerId, true);
  view.setUint32(8, offsetBytes % 2 ** 32, true);
  view.setUint32(12, Math.floor(offsetBytes / 2 ** 32), true);
  view.setUint32(16, count, true);
  view.setUint32(20, bodyBytes, true);
  return msg;
}

export function encodeOffer(
  offerId: number,
  offsetBytes: number,
  entries: readonly OfferEntry[],
): Uint8Array {
  const msg = header(MessageType.OFFER, offerId, offsetBytes, entries.length, entries.length * ENTRY_BYTES);
  const view = new DataView(msg.buffer);
  entries.forEach((e, i) => {
    const at = HEADER_BYTES + i * ENTRY_BYTES;
    msg.set(e.hash, at);
    view.setUint32(at + HASH_BYTES, e.lengthBytes, true);
  });
  return msg;
}

export function encodeWant(
  offerId: number,
  offsetBytes: number,
  count: number,
  wanted: Uint8Array,
): Uint8Array {
  const msg = header(MessageType.WANT, offerId, offsetBytes, count, bitmapBytes(count));
  msg.set(wanted.subarray(0, bitmapBytes(count)), HEADER_BYTES);
  return msg;
}

export function encodeChunks(
  offerId: number,
  offsetBytes: number,
  chunks: readonly Uint8Array[],
): Uint8Array {
  const body = chunks.reduce((n, c) => n + c.length, 0);
  const msg = header(MessageType.CHUNKS, offerId, offsetBytes, chunks.length, body);
  let at = HEADER_BYTES;
  for (const c of chunks) {
    msg.set(c, at);
    at += c.length;
  }
  return msg;
}

export function encodeEnd(offers: number, streamBytes: number): Uint8Array {
  return header(MessageType.END, offers, streamBytes, 0, 0);
}

/** Parses one message, checking it against limits; throws DedupeProtocolError naming what is wrong. */
export function decodeMessage(msg: Uint8Array, limits: DedupeLimits): DedupeMessage {
  const fail = (what: string) => {
    throw new DedupeProtocolError(`dedupe message of ${msg.length} bytes: ${what}`);
  };
  if (msg.length < HEADER_BYTES) fail(`shorter than the ${HEADER_BYTES}-byte header`);
  const view = new DataView(msg.buffer, msg.byteOffset, msg.length);
  const type = view.getUint8(0);
  if (view.getUint8(1) !== DEDUPE_VERSION) {
    fail(`version ${view.getUint8(1)}, this side speaks ${DEDUPE_VERSION}`);
  }
  if (view.getUint16(2, true) !== 0) fail(`reserved bytes 2..4 are ${view.getUint16(2, true)}, must be 0`);
  const offerId = view.getUint32(4, true);
  const high = view.getUint32(12, true);
  if (high >= 2 ** 21) fail(`offset high word ${high} puts it past 2^53`);
  const offsetBytes = high * 2 ** 32 + view.getUint32(8, true);
  const count = view.getUint32(16, true);
  const bodyBytes = view.getUint32(20, true);
  if (bodyBytes !== msg.length - HEADER_BYTES) {
    fail(`header announces a ${bodyBytes}-byte body, ${msg.length - HEADER_BYTES} bytes follow it`);
  }
  const body = msg.subarray(HEADER_BYTES);
  const checkCount = (min: number) => {
    if (count < min || count > limits.maxChunksPerOffer) {
      fail(`count ${count} is outside ${min}..${limits.maxChunksPerOffer} (maxChunksPerOffer)`);
    }
  };
  switch (type) {
    case MessageType.OFFER: {
      checkCount(1);
      if (bodyBytes !== count * ENTRY_BYTES) {
        fail(`an offer of ${count} chunks needs a ${count * ENTRY_BYTES}-byte body`);
      }
      const entries: OfferEntry[] = [];
      let total = 0;
      for (let i = 0; i < count; i++) {
        const at = i * ENTRY_BYTES;
        const lengthBytes = view.getUint32(HEADER_BYTES + at + HASH_BYTES, true);
        if (lengthBytes < 1 || lengthBytes > limits.maxChunkBytes) {
          fail(
            `offer ${offerId} chunk ${i} is ${lengthBytes} bytes, outside 1..${limits.maxChunkBytes} (maxChunkBytes)`,
          );
        }
        total += lengthBytes;
        entries.push({ hash: body.slice(at, at + HASH_BYTES), lengthBytes });
      }
      if (total > limits.maxOfferBytes) {
        fail(`offer ${offerId} names ${total} bytes of chunks, over maxOfferBytes ${limits.maxOfferBytes}`);
      }
      return { type: "offer", offerId, offsetBytes, entries };
    }
    case MessageType.WANT: {
      checkCount(1);
      if (bodyBytes !== bitmapBytes(count)) {
        fail(`a want of ${count} chunks needs a ${bitmapBytes(count)}-byte bitmap`);
      }
      if (count % 8 !== 0 && body[body.length - 1] >> (count % 8) !== 0) {
        fail(`want bitmap sets bits past chunk ${count}`);
      }
      return { type: "want", offerId, offsetBytes, count, wanted: body };
    }
    case MessageType.CHUNKS:
      checkCount(0);
      if (bodyBytes > limits.maxOfferBytes) fail(`chunks body over maxOfferBytes ${limits.maxOfferBytes}`);
      return { type: "chunks", offerId, offsetBytes, count, body };
    case MessageType.END:
      if (count !== 0 || bodyBytes !== 0) {
        fail(`end carries count ${count} and ${bodyBytes} body bytes, must be 0`);
      }
      return { type: "end", offerId, offsetBytes };
    default:
      return fail(`unknown type ${type} (1 OFFER, 2 WANT, 3 CHUNKS, 4 END)`);
  }
}

/** One line per message, for transcripts and logs: `OFFER #3 @1048576 [1a2b3c4d:16384 …]`. */
export function describeMessage(msg: DedupeMessage, name: (hash: Uint8Array) => string = shortHash): string {
  switch (msg.type) {
    case "offer":
      return `OFFER #${msg.offerId} @${msg.offsetBytes} [${
        msg.entries.map((e) => `${name(e.hash)}:${e.lengthBytes}`).join(" ")
      }]`;
    case "want": {
      const bits = Array.from({ length: msg.count }, (_, i) => isWanted(msg.wanted, i) ? "1" : "0").join("");
      return `WANT #${msg.offerId} @${msg.offsetBytes} ${bits}`;
    }
    case "chunks":
      return `CHUNKS #${msg.offerId} @${msg.offsetBytes} ${msg.count} chunks, ${msg.body.length} bytes`;
    case "end":
      return `END after ${msg.offerId} offers, ${msg.offsetBytes} bytes`;
  }
}

function shortHash(hash: Uint8Array): string {
  return hashHex(hash).slice(0, 8);
}
