/** /v1/peers through app.request(): the links are real (probes to a loopback peer), the clock the test's. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadConfig } from "../../src/agent/config.ts";
import { Roots } from "../../src/agent/roots.ts";
import { TransferService } from "../../src/agent/transfers.ts";
import { createApp } from "../../src/api/app.ts";
import { MigrationService } from "../../src/migration/service.ts";
import type { PeerView } from "../../src/mode/links.ts";
import { silentLogger } from "../../src/obs/log.ts";
import { TransferProgress } from "../../src/obs/progress.ts";
import { ForecastBook, type PeerForecastView } from "../../src/predict/peer_forecast.ts";
import { VmManager } from "../../src/vm/manager.ts";
import { closedAddress, type Harness, harness, PROBE_INTERVAL_MS, startPeer } from "../mode/link_harness.ts";

interface Env extends Harness {
  app: ReturnType<typeof createApp>;
  peerAddress: string;
}

/** The app with two configured peers: "b" answers on loopback, "gone" does not. */
async function withApp(body: (env: Env) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "dwcp-peers-api-" });
  const peer = startPeer();
  try {
    const peers = { b: peer.address, gone: closedAddress() };
    const config = await loadConfig({ stateDir: join(dir, "state"), root: [join(dir, "root")] }, {});
    const roots = new Roots(config.roots);
    const identity = { agentId: "a", capabilities: { codecs: ["none"], rdma: false } };
    const h = harness(peers, { forecasts: new ForecastBook() });
    const transfers = new TransferService({ ...config, peers }, roots, identity, h.links);
    const vms = new VmManager({ runDir: join(dir, "run") });
    const migrations = new MigrationService({
      vms,
      identity,
      secret: config.secret,
      resolvePeer: (p) => transfers.resolvePeer(p),
      defaults: config.transfer,
      log: silentLogger,
    });
    const app = createApp({ transfers, vms, migrations, roots, links: h.links, info: () => ({}) });
    await body({ ...h, app, peerAddress: peer.address });
  } finally {
    await peer.close();
    await Deno.remove(dir, { recursive: true });
  }
}

async function json<T>(res: Response | Promise<Response>, status = 200): Promise<T> {
  const r = await res;
  const text = await r.text();
  assert.equal(r.status, status, text);
  return JSON.parse(text);
}

/** Three probe rounds, one interval apart: enough round trips for a first decision. */
async function probeThrice({ links, clock }: Harness): Promise<void> {
  for (let i = 0; i < 3; i++) {
    await links.tick();
    clock.ms += PROBE_INTERVAL_MS;
  }
}

Deno.test("GET /v1/peers lists the configured peers, unmeasured at first", () =>
  withApp(async ({ app }) => {
    const { peers } = await json<{ peers: PeerView[] }>(app.request("/v1/peers"));
    assert.deepEqual(peers.map((p) => [p.id, p.configured, p.mode.current, p.parameters]), [
      ["b", true, null, null],
      ["gone", true, null, null],
    ]);
    assert.equal(peers[0].mode.reason, "no measurements yet");
    assert.equal(peers[0].probe.intervalMs, PROBE_INTERVAL_MS);
    assert.equal(peers[0].probe.lastRateBytesPerSec, null);
    assert.deepEqual(peers[0].received, { latestBytesPerSec: null, at: null, transfersRunning: 0 });
  }));

Deno.test("GET /v1/peers/:id shows the measurements, the mode, why, and its parameters", () =>
  withApp(async (env) => {
    await probeThrice(env);
    const b = await json<PeerView>(env.app.request("/v1/peers/b"));
    assert.equal(b.address, env.peerAddress);
    assert.equal(b.measurements.rttSamples, 3);
    assert.equal(b.measurements.lastRttSource, "probe");
    assert.equal(b.mode.current, "datacenter");
    assert.match(b.mode.reason, /^first measurement: min RTT \d+\.\d\d ms → datacenter$/);
    assert.equal(b.mode.byRtt, "datacenter");
    assert.equal(b.mode.minDwellMs, 60_000);
    assert.equal(b.parameters!.streams.count, 4);
    assert.equal(b.parameters!.tls, false);
    assert.equal(b.parameters!.migration.downtimeLimitMs, 300);
    // The same link, asked for by the peer's address.
    assert.equal((await json<PeerView>(env.app.request(`/v1/peers/${env.peerAddress}`))).id, "b");
    const gone = await json<PeerView>(env.app.request("/v1/peers/gone"));
    assert.match(gone.probe.error!, /cannot reach peer/);
    assert.equal(gone.mode.current, null);
  }));

Deno.test("GET /v1/peers/:id of an unknown peer is 404, naming it", () =>
  withApp(async ({ app }) => {
    const body = await json<{ error: { code: string; message: string } }>(
      app.request("/v1/peers/nobody"),
      404,
    );
    assert.equal(body.error.code, "not_found");
    assert.match(body.error.message, /no link to "nobody"/);
  }));

Deno.test("PUT /v1/peers/:id/pin pins a mode and its parameters; DELETE returns to the measured one", () =>
  withApp(async (env) => {
    await probeThrice(env);
    const pin = (mode: unknown) =>
      env.app.request("/v1/peers/b/pin", {
        method: "PUT",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ mode }),
      });
    const pinned = await json<PeerView>(pin("internet"));
    assert.equal(pinned.mode.current, "internet");
    assert.equal(pinned.mode.pinned, "internet");
    assert.equal(pinned.mode.byRtt, "datacenter", "what the link measures is still shown");
    assert.equal(pinned.parameters!.tls, true);
    assert.equal(pinned.parameters!.streams.count, 8);
    assert.equal(
      env.links.parametersFor("b")?.streams.count,
      8,
      "transfers without a stream count get the pinned mode's",
    );

    const bad = await json<{ error: { code: string; message: string } }>(pin("lan"), 400);
    assert.equal(bad.error.code, "invalid_request");
    assert.match(bad.error.message, /mode = "lan": mode must be one of datacenter, hybrid, internet/);

    const lifted = await json<PeerView>(env.app.request("/v1/peers/b/pin", { method: "DELETE" }));
    assert.equal(lifted.mode.current, "datacenter");
    assert.equal(lifted.mode.pinned, null);
    assert.match(lifted.mode.reason, /^pin lifted: min RTT/);

    const unknown = await json<{ error: { code: string } }>(
      env.app.request("/v1/peers/nobody/pin", { method: "DELETE" }),
      404,
    );
    assert.equal(unknown.error.code, "not_found");
  }));

Deno.test("GET /v1/peers/:id/forecast: 404 before traffic, then the history and every predictor's forecast", () =>
  withApp(async (env) => {
    const { app, links, clock } = env;
    const none = await json<{ error: { code: string } }>(app.request("/v1/peers/b/forecast"), 404);
    assert.equal(none.error.code, "no_history");
    await json(app.request("/v1/peers/nobody/forecast"), 404);
    // A transfer to b runs for three seconds at 2 MB/s of wire bytes: one sample per tick.
    const progress = new TransferProgress({
      id: "t",
      direction: "send",
      source: "x",
      peer: "b",
      destination: "x",
      sizeBytes: 1e9,
      codec: "none",
      chunkBytes: 1e6,
      streams: 1,
    }, () => clock.ms);
    progress.setState("running");
    links.transferStarted("b", progress);
    for (let s = 0; s < 3; s++) {
      for (let i = 0; i < 4; i++) {
        clock.ms += 250;
        progress.chunkDone(0, 5e5, 5e5);
      }
      await links.tick();
    }
    const view = await json<PeerForecastView>(app.request("/v1/peers/b/forecast"));
    assert.equal(view.samples, 3);
    assert.ok(view.history.every((h) => h.bytesPerSec > 1e6 && h.bytesPerSec <= 2.1e6), JSON.stringify(view));
    assert.deepEqual(view.horizons.map((h) => h.horizonSteps), [1, 10]);
    assert.deepEqual(view.horizons[0].forecasts.map((f) => f.predictor).slice(0, 4), [
      "last",
      "ewma(0.3)",
      "harmonic(5)",
      "holt(0.5,0.1)",
    ]);
    assert.equal(links.forecast("b")?.predictor, view.horizons[0].chosen);
  }));
