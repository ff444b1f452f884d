/** src/transport/wire.ts over an in-memory connection that delivers bytes in random-size pieces. */
import assert from "node:assert/strict";
import {
  ConnectionClosed,
  expectMessage,
  MAX_MESSAGE_BYTES,
  PeerError,
  ProtocolError,
  readFull,
  receiveMessage,
  sendMessage,
  writeAll,
} from "../../src/transport/wire.ts";
import { duplexPair, type MemoryConn } from "./memory_duplex.ts";
import { mulberry32 } from "./prng.ts";

function bytes(n: number, seed: number): Uint8Array {
  const rand = mulberry32(seed);
  return Uint8Array.from({ length: n }, () => Math.floor(rand() * 256));
}

/** A raw length-prefixed frame: u32 little-endian length, then body. */
function rawMessage(body: Uint8Array | string, declaredLength?: number): Uint8Array {
  const b = typeof body === "string" ? new TextEncoder().encode(body) : body;
  const out = new Uint8Array(4 + b.length);
  new DataView(out.buffer).setUint32(0, declaredLength ?? b.length, true);
  out.set(b, 4);
  return out;
}

async function sendRaw(conn: MemoryConn, data: Uint8Array): Promise<void> {
  await writeAll(conn, data);
}

Deno.test("readFull assembles a buffer from many small pieces", async () => {
  for (const seed of [1, 2, 3]) {
    const [a, b] = duplexPair(seed, 5);
    const data = bytes(1000, seed);
    const writing = writeAll(a, data);
    const got = new Uint8Array(1000);
    await readFull(b, got);
    await writing;
    assert.deepEqual(got, data);
    assert.equal(b.incoming.consumed, 1000);
  }
});

Deno.test("readFull reads exactly its buffer and leaves the rest for the next read", async () => {
  const [a, b] = duplexPair(4, 3);
  await writeAll(a, Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8, 9, 10));
  const first = new Uint8Array(4), second = new Uint8Array(6);
  await readFull(b, first);
  assert.equal(b.incoming.consumed, 4);
  await readFull(b, second);
  assert.deepEqual([...first, ...second], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
});

Deno.test("readFull throws ConnectionClosed when the peer closes early, saying how far it got", async () => {
  const [a, b] = duplexPair(5);
  await writeAll(a, bytes(10, 5));
  a.close();
  await assert.rejects(
    readFull(b, new Uint8Array(16)),
    new ConnectionClosed("connection closed after 10 of 16 bytes"),
  );
});

Deno.test("readFull throws ConnectionClosed on a connection closed before any byte", async () => {
  const [a, b] = duplexPair(6);
  const reading = readFull(b, new Uint8Array(1));
  a.close(); // while the read is waiting
  await assert.rejects(reading, ConnectionClosed);
});

Deno.test("messages round trip in order, whatever the piece sizes", async () => {
  const [a, b] = duplexPair(7, 3);
  const sent = [
    { type: "open", transferId: "x", sizeBytes: 2 ** 40, streams: 8 },
    { type: "commit", chunks: 3, digest: "00ff" },
    { type: "cancel", reason: "ünïcödé ✓" },
  ];
  for (const m of sent) await sendMessage(a, m);
  for (const m of sent) assert.deepEqual(await receiveMessage(b), m);
  assert.equal(b.incoming.buffered, 0);
});

Deno.test("a message of exactly MAX_MESSAGE_BYTES is accepted", async () => {
  const [a, b] = duplexPair(8, 4096);
  const skeleton = JSON.stringify({ type: "pad", pad: "" });
  const msg = { type: "pad", pad: "x".repeat(MAX_MESSAGE_BYTES - skeleton.length) };
  assert.equal(JSON.stringify(msg).length, MAX_MESSAGE_BYTES);
  const sending = sendMessage(a, msg);
  assert.deepEqual(await receiveMessage(b), msg);
  await sending;
});

Deno.test("sendMessage refuses a message larger than MAX_MESSAGE_BYTES and writes nothing", async () => {
  const [a, b] = duplexPair(9);
  await assert.rejects(sendMessage(a, { type: "big", pad: "x".repeat(MAX_MESSAGE_BYTES) }), RangeError);
  assert.equal(b.incoming.buffered, 0);
});

Deno.test("an oversized declared length is a ProtocolError before the body is read", async () => {
  for (const declared of [MAX_MESSAGE_BYTES + 1, 0xffff_ffff]) {
    const [a, b] = duplexPair(10);
    // A huge length with only a few bytes behind it: a reader that allocated and waited for the body
    // would fail with ConnectionClosed instead.
    await sendRaw(a, rawMessage('{"type":"x"}', declared));
    a.close();
    await assert.rejects(
      receiveMessage(b),
      new RegExp(`ProtocolError: control message of ${declared} bytes`),
    );
    assert.equal(b.incoming.consumed, 4, "only the length prefix was read");
  }
});

Deno.test("a body that is not JSON is a ProtocolError", async () => {
  const [a, b] = duplexPair(11);
  await sendRaw(a, rawMessage("{not json"));
  await assert.rejects(receiveMessage(b), new ProtocolError("control message is not valid JSON"));
});

Deno.test("a body that is not valid UTF-8 JSON is a ProtocolError", async () => {
  const [a, b] = duplexPair(12);
  await sendRaw(a, rawMessage(Uint8Array.of(0xff, 0xfe, 0x00)));
  await assert.rejects(receiveMessage(b), ProtocolError);
});

Deno.test("JSON without a string type is a ProtocolError", async () => {
  for (const body of ['{"code":"x"}', '{"type":7}', "null", "[]", '"hello"', "42", '["type"]']) {
    const [a, b] = duplexPair(13);
    await sendRaw(a, rawMessage(body));
    await assert.rejects(receiveMessage(b), new ProtocolError("control message has no type"), body);
  }
});

Deno.test("receiveMessage throws ConnectionClosed when the body is cut short", async () => {
  const [a, b] = duplexPair(14);
  await sendRaw(a, rawMessage('{"type":"x"}').subarray(0, 9));
  a.close();
  await assert.rejects(receiveMessage(b), ConnectionClosed);
});

Deno.test("expectMessage returns the expected message", async () => {
  const [a, b] = duplexPair(15);
  await sendMessage(a, { type: "accepted", path: "/x", windowChunks: 4 });
  assert.deepEqual(await expectMessage(b, "accepted"), { type: "accepted", path: "/x", windowChunks: 4 });
});

Deno.test("expectMessage turns a peer's error message into PeerError with its code", async () => {
  const [a, b] = duplexPair(16);
  await sendMessage(a, { type: "error", code: "exists", message: 'destination "f" already exists' });
  const err = await expectMessage(b, "accepted").then(() => undefined, (e) => e);
  assert.ok(err instanceof PeerError, String(err));
  assert.equal(err.code, "exists");
  assert.equal(err.message, 'destination "f" already exists');
});

Deno.test("expectMessage rejects a message of another type with ProtocolError", async () => {
  const [a, b] = duplexPair(17);
  await sendMessage(a, { type: "welcome" });
  await assert.rejects(
    expectMessage(b, "accepted"),
    new ProtocolError('expected "accepted" message, got "welcome"'),
  );
});
