/** src/transport/handshake.ts: both ends over an in-memory connection, and hand-made misbehaving peers. */
import assert from "node:assert/strict";
import {
  clientHandshake,
  type PeerIdentity,
  PROTOCOL_VERSION,
  serverHandshake,
} from "../../src/transport/handshake.ts";
import {
  ConnectionClosed,
  expectMessage,
  PeerError,
  ProtocolError,
  receiveMessage,
  sendMessage,
  writeAll,
} from "../../src/transport/wire.ts";
import { duplexPair } from "./memory_duplex.ts";

const SECRET = "a-shared-secret-of-enough-length";
const alice: PeerIdentity = { agentId: "alice", capabilities: { codecs: ["none", "zstd"], rdma: false } };
const bob: PeerIdentity = { agentId: "bob", capabilities: { codecs: ["none", "lz4"], rdma: true } };

function preamble(version: number, magic = "DWCP"): Uint8Array {
  const out = new Uint8Array(8);
  out.set(new TextEncoder().encode(magic).subarray(0, 4));
  new DataView(out.buffer).setUint16(4, version, true);
  return out;
}

/** Settles a promise into a value or the error, so both ends of a handshake can be awaited together. */
function settle<T>(p: Promise<T>): Promise<{ ok: T } | { err: unknown }> {
  return p.then((ok) => ({ ok }), (err) => ({ err }));
}

Deno.test("with the same secret each side learns the other's identity", async () => {
  for (const seed of [1, 2, 3]) {
    const [c, s] = duplexPair(seed);
    const [server, client] = await Promise.all([
      serverHandshake(s, SECRET, bob),
      clientHandshake(c, SECRET, alice),
    ]);
    assert.deepEqual(server, alice);
    assert.deepEqual(client, bob);
    // Nothing is left over: the connection is ready for the first real message.
    assert.equal(c.incoming.buffered + s.incoming.buffered, 0);
  }
});

Deno.test("with different secrets the client refuses with auth_failed, and the server does not accept", async () => {
  const [c, s] = duplexPair(4);
  // As the sender's dial() does: a failed client handshake closes the connection.
  const clientSide = clientHandshake(c, "another-secret-also-long-enough", alice).catch((err) => {
    c.close();
    throw err;
  });
  const [server, client] = await Promise.all([settle(serverHandshake(s, SECRET, bob)), settle(clientSide)]);
  assert.ok("err" in client, "client must not accept the server");
  assert.ok(client.err instanceof PeerError, String(client.err));
  assert.equal(client.err.code, "auth_failed");
  assert.match(client.err.message, /"bob" does not hold this agent's secret/);
  // The client checks the server's proof first and hangs up, so the server sees the connection close.
  assert.ok("err" in server, "server must not accept the client");
  assert.ok(
    server.err instanceof ConnectionClosed ||
      server.err instanceof PeerError && server.err.code === "auth_failed",
    String(server.err),
  );
});

Deno.test("a client that answers with a wrong proof gets auth_failed from the server", async () => {
  const [c, s] = duplexPair(5);
  const server = settle(serverHandshake(s, SECRET, bob));
  await writeAll(c, preamble(PROTOCOL_VERSION));
  await sendMessage(c, { type: "hello", ...alice, nonce: "00".repeat(32) });
  const challenge = await expectMessage<{ type: "challenge"; agentId: string }>(c, "challenge");
  assert.equal(challenge.agentId, "bob");
  await sendMessage(c, { type: "auth", proof: "ab".repeat(32) });

  const refusal = await receiveMessage<{ type: string; code: string }>(c);
  assert.equal(refusal.type, "error");
  assert.equal(refusal.code, "auth_failed");
  const result = await server;
  assert.ok("err" in result && result.err instanceof PeerError, JSON.stringify(result));
  assert.equal(result.err.code, "auth_failed");
  assert.match(result.err.message, /"alice"/);
});

Deno.test("a client replaying the server's own proof as its answer is refused", async () => {
  // The proofs are bound to a role, so a reflected server proof is not a valid client proof.
  const [c, s] = duplexPair(6);
  const server = settle(serverHandshake(s, SECRET, bob));
  await writeAll(c, preamble(PROTOCOL_VERSION));
  await sendMessage(c, { type: "hello", ...alice, nonce: "11".repeat(32) });
  const challenge = await expectMessage<{ type: "challenge"; proof: string }>(c, "challenge");
  await sendMessage(c, { type: "auth", proof: challenge.proof });
  const result = await server;
  assert.ok("err" in result && result.err instanceof PeerError && result.err.code === "auth_failed");
});

Deno.test("an empty or non-hex proof is refused, not accepted", async () => {
  for (const proof of ["", "zz", 42]) {
    const [c, s] = duplexPair(7);
    const server = settle(serverHandshake(s, SECRET, bob));
    await writeAll(c, preamble(PROTOCOL_VERSION));
    await sendMessage(c, { type: "hello", ...alice, nonce: "22".repeat(32) });
    await expectMessage(c, "challenge");
    await sendMessage(c, { type: "auth", proof });
    const result = await server;
    assert.ok("err" in result && result.err instanceof PeerError, `proof ${JSON.stringify(proof)}`);
  }
});

Deno.test("a connection that does not start with the DWCP magic is a ProtocolError", async () => {
  const [c, s] = duplexPair(8);
  const server = serverHandshake(s, SECRET, bob);
  await writeAll(c, new TextEncoder().encode("GET / HTTP/1.1\r\n"));
  await assert.rejects(server, new ProtocolError("not a DWCP connection (bad magic)"));
});

Deno.test("a client of another protocol version gets version_mismatch", async () => {
  const [c, s] = duplexPair(9);
  const server = settle(serverHandshake(s, SECRET, bob));
  await writeAll(c, preamble(PROTOCOL_VERSION + 1));
  await sendMessage(c, { type: "hello", ...alice, nonce: "33".repeat(32) });

  const err = await expectMessage(c, "challenge").then(() => undefined, (e) => e);
  assert.ok(err instanceof PeerError, String(err));
  assert.equal(err.code, "version_mismatch");
  assert.match(err.message, new RegExp(`protocol ${PROTOCOL_VERSION}, the peer ${PROTOCOL_VERSION + 1}`));
  const result = await server;
  assert.ok("err" in result && result.err instanceof ProtocolError, JSON.stringify(result));
});

Deno.test("a client talking to a server that hangs up mid-handshake gets ConnectionClosed", async () => {
  const [c, s] = duplexPair(10);
  const client = clientHandshake(c, SECRET, alice);
  s.close();
  await assert.rejects(client, (e) => e instanceof ConnectionClosed || e instanceof Deno.errors.BrokenPipe);
});
