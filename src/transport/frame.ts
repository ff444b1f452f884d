/**
 * AMST data-stream frames (DWCP v3 multi-stream transport). Every frame has a fixed 48-byte
 * little-endian header; DATA frames are followed by encLen payload bytes. docs/wire-format.md is the spec.
 */

export const FRAME_HEADER_BYTES = 48;

export const FrameType = {
  /** A chunk of the transfer: payload of encLen bytes follows. */
  Data: 1,
  /** Receiver → sender: chunk seq is verified and written; returns one credit. */
  Ack: 2,
  /** Receiver → sender: chunk seq failed its checksum or decode; resend it. Returns one credit. */
  Nack: 3,
} as const;
export type FrameType = typeof FrameType[keyof typeof FrameType];

/** Largest payload a frame may declare; a peer announcing more is broken or hostile. */
export const MAX_FRAME_PAYLOAD_BYTES = 64 * 1024 * 1024;

export interface FrameHeader {
  type: FrameType;
  codec: number;
  /** HDE payload flags (chunk_codec.ts, page_delta.ts); absent or 0 for a plain or codec-only payload. */
  flags?: number;
  seq: number;
  /** 16 raw bytes of the transfer's UUID. */
  transferId: Uint8Array;
  offset: number;
  rawLen: number;
  encLen: number;
  /** XXH3-64 of the raw (decoded) bytes, big-endian, 8 bytes. */
  checksum: Uint8Array;
}

/**
 * Flag bits a frame may carry; any other bit is refused. Bit 0 PAGES (src/encoding/chunk_codec.ts), bit 1
 * DELTA (src/encoding/page_delta.ts).
 */
export const KNOWN_FLAGS = 0x3;

const OFF_TYPE = 0,
  OFF_CODEC = 1,
  OFF_FLAGS = 2,
  OFF_SEQ = 4,
  OFF_ID = 8,
  OFF_OFFSET = 24,
  OFF_RAW = 32,
  OFF_ENC = 36;
export const CHECKSUM_OFFSET = 40;

export function uuidToBytes(id: string): Uint8Array {
  const hex = id.replaceAll("-", "");
  if (!/^[0-9a-f]{32}$/i.test(hex)) throw new RangeError(`"${id}" is not a UUID`);
  return Uint8Array.from({ length: 16 }, (_, i) => parseInt(hex.slice(2 * i, 2 * i + 2), 16));
}

/** Writes a header into out[0..48). The checksum bytes are copied unless they already alias out. */
export function encodeHeader(h: FrameHeader, out: Uint8Array): void {
  const view = new DataView(out.buffer, out.byteOffset, FRAME_HEADER_BYTES);
  view.setUint8(OFF_TYPE, h.type);
  view.setUint8(OFF_CODEC, h.codec);
  view.setUint16(OFF_FLAGS, h.flags ?? 0, true);
  view.setUint32(OFF_SEQ, h.seq, true);
  out.set(h.transferId, OFF_ID);
  // Offsets go up to 2^53 as two u32 halves: no BigInt on the hot path.
  view.setUint32(OFF_OFFSET, h.offset % 0x1_0000_0000, true);
  view.setUint32(OFF_OFFSET + 4, Math.floor(h.offset / 0x1_0000_0000), true);
  view.setUint32(OFF_RAW, h.rawLen, true);
  view.setUint32(OFF_ENC, h.encLen, true);
  if (h.checksum.buffer !== out.buffer || h.checksum.byteOffset !== out.byteOffset + CHECKSUM_OFFSET) {
    out.set(h.checksum, CHECKSUM_OFFSET);
  }
}

export class FrameError extends Error {
  override name = "FrameError";
}

/** Parses and validates a header; the returned byte fields alias buf. Throws FrameError on bad input. */
export function decodeHeader(buf: Uint8Array): FrameHeader {
  if (buf.length < FRAME_HEADER_BYTES) throw new FrameError(`frame header needs 48 bytes, got ${buf.length}`);
  const view = new DataView(buf.buffer, buf.byteOffset, FRAME_HEADER_BYTES);
  const type = view.getUint8(OFF_TYPE);
  if (type !== FrameType.Data && type !== FrameType.Ack && type !== FrameType.Nack) {
    throw new FrameError(`unknown frame type ${type}`);
  }
  const flags = view.getUint16(OFF_FLAGS, true);
  if (flags & ~KNOWN_FLAGS) throw new FrameError(`frame has unknown flags 0x${flags.toString(16)}`);
  const hi = view.getUint32(OFF_OFFSET + 4, true);
  if (hi >= 0x20_0000) throw new FrameError(`frame offset exceeds 2^53`);
  const h: FrameHeader = {
    type: type as FrameType,
    codec: view.getUint8(OFF_CODEC),
    flags,
    seq: view.getUint32(OFF_SEQ, true),
    transferId: buf.subarray(OFF_ID, OFF_ID + 16),
    offset: hi * 0x1_0000_0000 + view.getUint32(OFF_OFFSET, true),
    rawLen: view.getUint32(OFF_RAW, true),
    encLen: view.getUint32(OFF_ENC, true),
    checksum: buf.subarray(CHECKSUM_OFFSET, CHECKSUM_OFFSET + 8),
  };
  if (h.rawLen > MAX_FRAME_PAYLOAD_BYTES || h.encLen > MAX_FRAME_PAYLOAD_BYTES) {
    throw new FrameError(
      `frame declares ${Math.max(h.rawLen, h.encLen)} bytes, limit ${MAX_FRAME_PAYLOAD_BYTES}`,
    );
  }
  if (type !== FrameType.Data && h.encLen !== 0) {
    throw new FrameError(`control frame type ${type} carries a payload`);
  }
  return h;
}

export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
