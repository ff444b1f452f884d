/** src/transport/frame.ts: header round trips, limits, rejects, and a fuzz of random headers. */
import assert from "node:assert/strict";
import {
  CHECKSUM_OFFSET,
  decodeHeader,
  encodeHeader,
  FRAME_HEADER_BYTES,
  FrameError,
  type FrameHeader,
  FrameType,
  KNOWN_FLAGS,
  MAX_FRAME_PAYLOAD_BYTES,
  uuidToBytes,
} from "../../src/transport/frame.ts";
import { mulberry32 } from "./prng.ts";

const ID = "0f8fad5b-d9cb-469f-a165-70867728950e";

function header(over: Partial<FrameHeader> = {}): FrameHeader {
  return {
    type: FrameType.Data,
    codec: 2,
    flags: 0,
    seq: 7,
    transferId: uuidToBytes(ID),
    offset: 7 * 1024 * 1024,
    rawLen: 1024 * 1024,
    encLen: 1000,
    checksum: Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8),
    ...over,
  };
}

function encoded(h: FrameHeader): Uint8Array {
  const buf = new Uint8Array(FRAME_HEADER_BYTES);
  encodeHeader(h, buf);
  return buf;
}

/** decodeHeader's byte fields alias the buffer; copy them to compare with plain arrays. */
function plain(h: FrameHeader) {
  return { ...h, transferId: [...h.transferId], checksum: [...h.checksum] };
}

function assertRoundTrip(h: FrameHeader): void {
  assert.deepEqual(plain(decodeHeader(encoded(h))), plain(h));
}

Deno.test("a data header survives encode and decode", () => {
  assertRoundTrip(header());
});

Deno.test("ack and nack headers without payload round trip", () => {
  assertRoundTrip(header({ type: FrameType.Ack, encLen: 0, rawLen: 0 }));
  assertRoundTrip(header({ type: FrameType.Nack, encLen: 0, rawLen: 4096 }));
});

Deno.test("offsets beyond 2^32 keep every bit, up to 2^53 - 1", () => {
  for (
    const offset of [2 ** 32, 2 ** 32 + 1, 5 * 2 ** 32 + 12345, 2 ** 40 + 2 ** 31, Number.MAX_SAFE_INTEGER]
  ) {
    assert.equal(decodeHeader(encoded(header({ offset }))).offset, offset, `offset ${offset}`);
  }
});

Deno.test("field maxima round trip", () => {
  assertRoundTrip(header({
    codec: 255,
    seq: 0xffff_ffff,
    offset: Number.MAX_SAFE_INTEGER,
    rawLen: MAX_FRAME_PAYLOAD_BYTES,
    encLen: MAX_FRAME_PAYLOAD_BYTES,
    transferId: new Uint8Array(16).fill(0xff),
    checksum: new Uint8Array(8).fill(0xff),
  }));
});

Deno.test("the header is little-endian at the documented offsets", () => {
  const buf = encoded(header({ seq: 0x01020304, offset: 2 ** 32 + 5 }));
  assert.equal(buf[0], FrameType.Data);
  assert.equal(buf[1], 2);
  assert.deepEqual([...buf.subarray(4, 8)], [4, 3, 2, 1]);
  assert.deepEqual([...buf.subarray(24, 32)], [5, 0, 0, 0, 1, 0, 0, 0]);
  assert.deepEqual([...buf.subarray(CHECKSUM_OFFSET, CHECKSUM_OFFSET + 8)], [1, 2, 3, 4, 5, 6, 7, 8]);
});

Deno.test("encoding into a buffer at a non-zero byteOffset writes only its 48 bytes", () => {
  const big = new Uint8Array(FRAME_HEADER_BYTES + 20).fill(0xee);
  const out = big.subarray(10, 10 + FRAME_HEADER_BYTES);
  encodeHeader(header(), out);
  assert.deepEqual(plain(decodeHeader(out)), plain(header()));
  assert.ok(big.subarray(0, 10).every((b) => b === 0xee));
  assert.ok(big.subarray(10 + FRAME_HEADER_BYTES).every((b) => b === 0xee));
});

Deno.test("a checksum that already aliases the output's checksum field is kept", () => {
  // The sender computes the checksum straight into the header buffer, then encodes the rest around it.
  const buf = new Uint8Array(FRAME_HEADER_BYTES);
  const checksum = buf.subarray(CHECKSUM_OFFSET, CHECKSUM_OFFSET + 8);
  checksum.set([9, 8, 7, 6, 5, 4, 3, 2]);
  encodeHeader(header({ checksum }), buf);
  assert.deepEqual([...decodeHeader(buf).checksum], [9, 8, 7, 6, 5, 4, 3, 2]);

  // Re-encoding a decoded header into its own buffer (every field aliases it) changes nothing.
  const before = buf.slice();
  encodeHeader(decodeHeader(buf), buf);
  assert.deepEqual(buf, before);
});

Deno.test("a checksum living elsewhere in the same buffer is copied, not assumed in place", () => {
  const backing = new Uint8Array(FRAME_HEADER_BYTES + 8);
  const out = backing.subarray(0, FRAME_HEADER_BYTES);
  const checksum = backing.subarray(FRAME_HEADER_BYTES);
  checksum.set([11, 12, 13, 14, 15, 16, 17, 18]);
  encodeHeader(header({ checksum }), out);
  assert.deepEqual([...decodeHeader(out).checksum], [11, 12, 13, 14, 15, 16, 17, 18]);
});

Deno.test("decode rejects a buffer shorter than a header", () => {
  const buf = encoded(header());
  assert.throws(() => decodeHeader(buf.subarray(0, 47)), FrameError);
  assert.throws(() => decodeHeader(new Uint8Array(0)), /needs 48 bytes, got 0/);
});

Deno.test("decode rejects unknown frame types", () => {
  for (const type of [0, 4, 255]) {
    const buf = encoded(header());
    buf[0] = type;
    assert.throws(() => decodeHeader(buf), new FrameError(`unknown frame type ${type}`));
  }
});

Deno.test("decode rejects offsets of 2^53 and above", () => {
  const buf = encoded(header());
  const view = new DataView(buf.buffer);
  view.setUint32(28, 0x20_0000, true); // high half 2^21 → offset 2^53
  view.setUint32(24, 0, true);
  assert.throws(() => decodeHeader(buf), FrameError);
  view.setUint32(28, 0xffff_ffff, true);
  assert.throws(() => decodeHeader(buf), /2\^53/);
  view.setUint32(28, 0x1f_ffff, true);
  view.setUint32(24, 0xffff_ffff, true);
  assert.equal(decodeHeader(buf).offset, Number.MAX_SAFE_INTEGER);
});

Deno.test("decode rejects payload lengths above MAX_FRAME_PAYLOAD_BYTES", () => {
  const tooBig = MAX_FRAME_PAYLOAD_BYTES + 1;
  assert.throws(() => decodeHeader(encoded(header({ encLen: tooBig }))), FrameError);
  assert.throws(() => decodeHeader(encoded(header({ rawLen: tooBig }))), new RegExp(`${tooBig} bytes`));
  assert.throws(() => decodeHeader(encoded(header({ encLen: 0xffff_ffff }))), FrameError);
});

Deno.test("decode rejects an ack or nack that carries a payload", () => {
  assert.throws(
    () => decodeHeader(encoded(header({ type: FrameType.Ack, encLen: 1 }))),
    /control frame type 2 carries a payload/,
  );
  assert.throws(() => decodeHeader(encoded(header({ type: FrameType.Nack, encLen: 4096 }))), FrameError);
});

Deno.test("fuzz: 10k random headers either decode to a valid header or throw FrameError", () => {
  const rand = mulberry32(0xdc0);
  const buf = new Uint8Array(FRAME_HEADER_BYTES);
  const counts = { ok: 0, rejected: 0 };
  for (let i = 0; i < 10_000; i++) {
    for (let j = 0; j < buf.length; j++) buf[j] = Math.floor(rand() * 256);
    // Bias toward plausible headers so the accept path is exercised too.
    if (i % 2 === 0) {
      buf[0] = 1 + (i % 3);
      buf[2] &= KNOWN_FLAGS;
      buf[3] = 0;
      buf[30] &= 0x1f;
      buf[31] = 0;
      buf[35] = 0;
      buf[39] = 0;
      if (buf[0] !== FrameType.Data) buf.fill(0, 36, 40);
    }
    let h: FrameHeader;
    try {
      h = decodeHeader(buf);
    } catch (err) {
      assert.ok(err instanceof FrameError, `case ${i}: threw ${err}`);
      counts.rejected++;
      continue;
    }
    counts.ok++;
    assert.ok(([FrameType.Data, FrameType.Ack, FrameType.Nack] as number[]).includes(h.type));
    assert.ok(Number.isSafeInteger(h.offset) && h.offset >= 0, `case ${i}: offset ${h.offset}`);
    assert.ok(h.rawLen <= MAX_FRAME_PAYLOAD_BYTES && h.encLen <= MAX_FRAME_PAYLOAD_BYTES);
    if (h.type !== FrameType.Data) assert.equal(h.encLen, 0);
    assert.equal(h.transferId.length, 16);
    assert.equal(h.checksum.length, 8);
    assert.equal(h.flags! & ~KNOWN_FLAGS, 0, `case ${i}: flags ${h.flags}`);
    // A header that decodes re-encodes to the same bytes.
    assert.deepEqual(encoded(h), buf, `case ${i}`);
  }
  assert.ok(counts.ok > 1000 && counts.rejected > 1000, JSON.stringify(counts));
});

Deno.test("uuidToBytes parses both dashed and plain UUIDs, any case", () => {
  const expected = [
    0x0f,
    0x8f,
    0xad,
    0x5b,
    0xd9,
    0xcb,
    0x46,
    0x9f,
    0xa1,
    0x65,
    0x70,
    0x86,
    0x77,
    0x28,
    0x95,
    0x0e,
  ];
  assert.deepEqual([...uuidToBytes(ID)], expected);
  assert.deepEqual([...uuidToBytes(ID.toUpperCase())], expected);
  assert.deepEqual([...uuidToBytes(ID.replaceAll("-", ""))], expected);
});

Deno.test("uuidToBytes rejects what is not a UUID", () => {
  for (const bad of ["", "not-a-uuid", ID.slice(0, -1), ID + "0", ID.replace("f", "g")]) {
    assert.throws(() => uuidToBytes(bad), RangeError, `"${bad}"`);
  }
});

Deno.test("a frame with flag bits this version does not know is refused", () => {
  const buf = encoded(header());
  new DataView(buf.buffer).setUint16(2, 0x8001, true);
  assert.throws(() => decodeHeader(buf), FrameError);
});
