/**
 * Link rates between two real agent processes over loopback: an idle peer is rate-probed (a short burst,
 * wire-format §2.1) and the figure shows in GET /v1/peers/:id; the agent that receives a transfer shows
 * the sender's rate as the reverse direction's (`received`).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import type { PeerView } from "../../src/mode/links.ts";
import { startAgent, type TestAgent, writeRandomFile } from "../support/agents.ts";
import { sendAndWait } from "../support/transfers.ts";

const MiB = 1024 * 1024;
const opts = { sanitizeResources: false, sanitizeOps: false };
/** The shortest interval the config takes: the agents probe within seconds of starting. */
const link = { rateProbeIntervalMs: 1000 };

/** A port nothing listens on now, for an agent that must be named in its peer's config before it starts. */
function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = l.addr as Deno.NetAddr;
  l.close();
  return port;
}

/** Polls GET /v1/peers/:id until ok says it shows what the test waits for. */
async function peerWhen(agent: TestAgent, id: string, ok: (v: PeerView) => boolean): Promise<PeerView> {
  while (true) {
    const view = (await agent.json<PeerView>(`/v1/peers/${id}`)).body;
    if (ok(view)) return view;
    await new Promise((r) => setTimeout(r, 100));
  }
}

Deno.test(
  { name: "link rates between two agents: rate probes when idle, received transfers", ...opts },
  async () => {
    const aData = `127.0.0.1:${freePort()}`;
    const b = await startAgent({ id: "b", peers: { a: aData }, link });
    let a: TestAgent | undefined;
    try {
      a = await startAgent({ id: "a", dataListen: aData, peers: { b: b.dataAddr }, link });
      const probed = await peerWhen(a, "b", (v) => v.probe.lastRateBytesPerSec !== null);
      assert.equal(probed.probe.rateError, null);
      assert.equal(probed.probe.rateIntervalMs, 1000);
      assert.equal(probed.probe.lastRateBytes, MiB, "no rate known before: 1 MiB");
      assert.ok(probed.probe.lastRateBytesPerSec! > 0, `${probed.probe.lastRateBytesPerSec} B/s`);
      assert.ok(probed.probe.lastRateReceiveMs! >= 0, "the peer's own time is shown");
      assert.ok(probed.measurements.maxDeliveredBytesPerSec! > 0, "the figure feeds the measurements");
      assert.equal((await a.api("/v1/peers/b/forecast")).status, 404, "and not the forecasts");

      await writeRandomFile(join(a.root, "f.bin"), 32 * MiB);
      const snap = await sendAndWait(a, { source: "f.bin", peer: "b", maxBytesPerSec: 64 * MiB });
      assert.equal(snap.state, "completed", JSON.stringify(snap.error));
      const received = await peerWhen(b, "a", (v) => v.received.latestBytesPerSec !== null);
      // The sender's cap bounds what the receiver can have seen (with room for a burst at the start).
      assert.ok(
        received.received.latestBytesPerSec! > 0 && received.received.latestBytesPerSec! < 1.5 * 64 * MiB,
        `b received at ${received.received.latestBytesPerSec} B/s (sent at most 64 MiB/s)`,
      );
      assert.equal(received.received.transfersRunning, 0);
    } finally {
      await a?.stop();
      await b.stop();
    }
  },
);
