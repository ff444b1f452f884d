/** Dedupe messages: layouts round-trip; random, truncated and bit-flipped input is refused, never crashes. */
import assert from "node:assert/strict";
import { fingerprint } from "../../src/dedupe/fingerprint.ts";
import {
  decodeMessage,
  DedupeProtocolError,
  DEFAULT_DEDUPE_LIMITS,
  encodeChunks,
  encodeEnd,
  encodeOffer,
  encodeWant,
  ENTRY_BYTES,
  HEADER_BYTES,
  maxMessageBytes,
  validateDedupeLimits,
} from "../../src/dedupe/messages.ts";
import { randomBytes, xorshift } from "./support.ts";

const LIMITS = DEFAULT_DEDUPE_LIMITS;

const entries = [1, 2, 3].map((i) => {
  const bytes = randomBytes(1000 * i, i);
  return { hash: fingerprint(bytes), lengthBytes: bytes.length };
});

Deno.test("each message decodes to what was encoded; offsets up to 2^53 survive", () => {
  const big = 2 ** 53 - 1;
  assert.deepEqual(decodeMessage(encodeOffer(7, big, entries), LIMITS), {
    type: "offer",
    offerId: 7,
    offsetBytes: big,
    entries,
  });
  const want = decodeMessage(encodeWant(7, 4096, 3, new Uint8Array([0b101])), LIMITS);
  assert.deepEqual(want, {
    type: "want",
    offerId: 7,
    offsetBytes: 4096,
    count: 3,
    wanted: new Uint8Array([5]),
  });
  const chunks = decodeMessage(encodeChunks(7, 4096, [new Uint8Array([1, 2]), new Uint8Array([3])]), LIMITS);
  assert.deepEqual(chunks, {
    type: "chunks",
    offerId: 7,
    offsetBytes: 4096,
    count: 2,
    body: new Uint8Array([1, 2, 3]),
  });
  assert.deepEqual(decodeMessage(encodeEnd(9, 123), LIMITS), { type: "end", offerId: 9, offsetBytes: 123 });
  assert.equal(encodeOffer(0, 0, entries).length, HEADER_BYTES + 3 * ENTRY_BYTES);
});

Deno.test("header and body faults are refused by name", () => {
  const offer = encodeOffer(0, 0, entries);
  const refuse = (msg: Uint8Array, text: RegExp) =>
    assert.throws(() => decodeMessage(msg, LIMITS), (err: unknown) => {
      assert.ok(err instanceof DedupeProtocolError);
      assert.match(err.message, text);
      return true;
    });
  const patched = (at: number, value: number, msg = offer) => {
    const copy = msg.slice();
    copy[at] = value;
    return copy;
  };
  refuse(offer.subarray(0, 10), /message of 10 bytes: shorter than the 24-byte header/);
  refuse(patched(1, 2), /version 2, this side speaks 1/);
  refuse(patched(2, 1), /reserved bytes 2\.\.4 are 1, must be 0/);
  refuse(patched(0, 9), /unknown type 9 \(1 OFFER, 2 WANT, 3 CHUNKS, 4 END\)/);
  refuse(patched(15, 1), /offset high word 16777216 puts it past 2\^53/);
  refuse(offer.subarray(0, offer.length - 1), /header announces a 108-byte body, 107 bytes follow it/);
  refuse(patched(16, 2), /an offer of 2 chunks needs a 72-byte body/);
  refuse(encodeOffer(0, 0, []), /count 0 is outside 1\.\.256 \(maxChunksPerOffer\)/);
  refuse(
    encodeOffer(0, 0, [{ hash: entries[0].hash, lengthBytes: 65537 }]),
    /offer 0 chunk 0 is 65537 bytes, outside 1\.\.65536 \(maxChunkBytes\)/,
  );
  refuse(
    encodeOffer(0, 0, Array.from({ length: 17 }, () => ({ hash: entries[0].hash, lengthBytes: 65536 }))),
    /offer 0 names 1114112 bytes of chunks, over maxOfferBytes 1048576/,
  );
  refuse(encodeWant(0, 0, 9, new Uint8Array([0xff, 0x02])), /want bitmap sets bits past chunk 9/);
  refuse(patched(20, 1, encodeEnd(0, 0)), /announces a 1-byte body/);
});

Deno.test("random, truncated and bit-flipped messages never crash the decoder", () => {
  const next = xorshift(77);
  const valid = [
    encodeOffer(3, 1 << 20, entries),
    encodeWant(3, 1 << 20, 3, new Uint8Array([6])),
    encodeChunks(3, 1 << 20, [randomBytes(3000, 1)]),
    encodeEnd(4, 5 << 20),
  ];
  let refused = 0;
  const tryDecode = (msg: Uint8Array) => {
    try {
      decodeMessage(msg, LIMITS);
    } catch (err) {
      if (!(err instanceof DedupeProtocolError)) throw err;
      refused++;
    }
  };
  for (const msg of valid) {
    for (let n = 0; n < msg.length; n++) tryDecode(msg.subarray(0, n));
    for (let i = 0; i < 2000; i++) {
      const copy = msg.slice();
      copy[next() % copy.length] ^= 1 << (next() % 8);
      tryDecode(copy);
    }
  }
  for (let i = 0; i < 2000; i++) tryDecode(randomBytes(next() % 200, i + 1));
  assert.ok(refused > 2000, `only ${refused} refused`);
});

Deno.test("limits are checked once, with the range and the default", () => {
  assert.throws(
    () => validateDedupeLimits({ ...LIMITS, maxOffersInFlight: 0 }),
    /dedupe maxOffersInFlight 0: must be an integer in 1\.\.256 \(default 8\)/,
  );
  assert.throws(
    () => validateDedupeLimits({ ...LIMITS, maxChunkBytes: 2 << 20 }),
    /maxChunkBytes 2097152 exceeds maxOfferBytes 1048576: an offer must hold at least one chunk/,
  );
  assert.equal(maxMessageBytes(LIMITS), HEADER_BYTES + (1 << 20));
});
