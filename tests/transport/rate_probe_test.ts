/**
 * Rate probes (src/transport/rate_probe.ts, wire-format §2.1) against a real DataServer on loopback: a
 * probe is read and answered; sizes outside 1..16 MiB are refused before a byte is read or allocated; a
 * probe cut short is dropped; the server keeps serving; a peer without the capability is not sent one.
 */
import assert from "node:assert/strict";
import { CODECS } from "../../ffi/codec.ts";
import { dialRateProbe } from "../../src/mode/links.ts";
import { dial } from "../../src/transport/dial.ts";
import type { PeerIdentity } from "../../src/transport/handshake.ts";
import { RATE_PROBE_LIMITS, sendRateProbe } from "../../src/transport/rate_probe.ts";
import { closeQuietly, expectMessage, PeerError, sendMessage, writeAll } from "../../src/transport/wire.ts";
import { ME, SECRET, startPeer } from "../mode/link_harness.ts";
import { startLoopbackServer } from "../support/data_server.ts";

const MiB = 1024 * 1024;
const serverId: PeerIdentity = {
  agentId: "b",
  capabilities: { codecs: [...CODECS], rdma: false, rateProbe: true },
};

async function withServer(body: (port: number, logs: string[]) => Promise<void>): Promise<void> {
  const server = await startLoopbackServer(SECRET, serverId);
  try {
    await body(server.port, server.logs);
  } finally {
    await server.close();
  }
}

async function probe(port: number, bytes: number) {
  const conn = await dial({ host: "127.0.0.1", port }, SECRET, ME);
  try {
    return await sendRateProbe(conn, bytes);
  } finally {
    closeQuietly(conn);
  }
}

Deno.test("a rate probe is read, dropped and answered with its count; the prober times it", () =>
  withServer(async (port) => {
    const sample = await probe(port, 4 * MiB);
    assert.equal(sample.bytes, 4 * MiB);
    assert.ok(sample.elapsedMs > 0, `${sample.elapsedMs}`);
    const viaLinks = await dialRateProbe(SECRET, ME, () => ({ host: "127.0.0.1", port }))("b", MiB);
    assert.equal(viaLinks.bytes, MiB);
  }));

Deno.test("hostile: a rate probe claiming a size outside 1..16 MiB is refused before anything is read", () =>
  withServer(async (port, logs) => {
    const rssBefore = Deno.memoryUsage().rss;
    for (const bytes of [2 ** 40, RATE_PROBE_LIMITS.maxBytes + 1, 0, -1, 1.5, "16", null]) {
      const conn = await dial({ host: "127.0.0.1", port }, SECRET, ME);
      try {
        await sendMessage(conn, { type: "rate-probe", bytes });
        await assert.rejects(expectMessage(conn, "rate-probed"), (err: unknown) => {
          assert.ok(err instanceof PeerError, String(err));
          assert.equal(err.code, "invalid_request");
          assert.match(err.message, /rate probe of .* bytes refused: ask for 1\.\.16777216/);
          return true;
        });
      } finally {
        closeQuietly(conn);
      }
    }
    const growth = Deno.memoryUsage().rss - rssBefore;
    assert.ok(growth < 64 * MiB, `RSS grew by ${(growth / MiB).toFixed(0)} MiB`);
    assert.equal(logs.filter((l) => l.includes("invalid_request")).length, 7);
    assert.equal((await probe(port, MiB)).bytes, MiB, "and the server still answers a good one");
  }));

Deno.test("hostile: a rate probe that stops short is dropped without an answer; the server keeps serving", () =>
  withServer(async (port) => {
    const conn = await dial({ host: "127.0.0.1", port }, SECRET, ME);
    await sendMessage(conn, { type: "rate-probe", bytes: RATE_PROBE_LIMITS.maxBytes });
    await writeAll(conn, new Uint8Array(MiB));
    await conn.closeWrite();
    const buf = new Uint8Array(1024);
    assert.equal(await conn.read(buf), null, "no answer for a probe that did not arrive whole");
    closeQuietly(conn);
    assert.equal((await probe(port, 2 * MiB)).bytes, 2 * MiB);
  }));

Deno.test("a peer whose handshake lacks the rateProbe capability is not sent a probe", async () => {
  const peer = startPeer(); // authenticates and reads, as an agent before rate probes would
  try {
    const [host, port] = peer.address.split(":");
    const rateProbe = dialRateProbe(SECRET, ME, () => ({ host, port: Number(port) }));
    await assert.rejects(
      rateProbe("b", MiB),
      /peer "b" \(agent "b"\) does not answer rate probes: its dwcp predates them/,
    );
  } finally {
    await peer.close();
  }
});
