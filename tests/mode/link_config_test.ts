/** The agent config's `link` settings (src/agent/config.ts): defaults, pins, and errors that name the value. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ConfigError, loadConfig } from "../../src/agent/config.ts";

/** loadConfig from a config file holding content, in a fresh state dir; never the real environment. */
async function load(content: unknown) {
  const dir = await Deno.makeTempDir({ prefix: "dwcp-link-config-" });
  try {
    const path = join(dir, "dwcp.json");
    await Deno.writeTextFile(path, JSON.stringify(content));
    return await loadConfig({ stateDir: dir, config: path }, {});
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function configError(content: unknown): Promise<string> {
  const err = await load(content).then(() => "accepted", (e) => e);
  assert.ok(err instanceof ConfigError, `expected ConfigError, got ${err}`);
  return err.message;
}

Deno.test("link defaults: probes every 10 s, rate probes every 5 min, a 60 s dwell, 10 s to confirm, no pins", async () => {
  assert.deepEqual((await load({})).link, {
    probeIntervalMs: 10_000,
    rateProbeIntervalMs: 300_000,
    minDwellMs: 60_000,
    confirmMs: 10_000,
    pins: {},
  });
});

Deno.test("pins name configured peers or HOST:PORT, and a mode", async () => {
  const c = await load({
    peers: { b: "10.0.0.2:7701" },
    link: { pins: { b: "internet", "10.0.0.3:7701": "hybrid" }, minDwellMs: 5000 },
  });
  assert.deepEqual(c.link.pins, { b: "internet", "10.0.0.3:7701": "hybrid" });
  assert.equal(c.link.minDwellMs, 5000);
  assert.equal(c.link.probeIntervalMs, 10_000, "the other link settings keep their defaults");
});

Deno.test("a pin for an unknown peer, or to an unknown mode, stops the agent naming it", async () => {
  assert.match(
    await configError({ peers: { b: "10.0.0.2:7701" }, link: { pins: { c: "internet" } } }),
    /link\.pins names "c": pin a configured peer \(b\) or a HOST:PORT/,
  );
  assert.match(
    await configError({ link: { pins: { "10.0.0.3:7701": "wan" } } }),
    /link\.pins\.10\.0\.0\.3:7701 = "wan"/,
  );
  assert.match(await configError({ link: { probeIntervalMs: 5 } }), /link\.probeIntervalMs = 5/);
});

Deno.test("rate probes: 0 turns them off; an interval under the 1 s tick is refused, naming the value and the fix", async () => {
  assert.equal((await load({ link: { rateProbeIntervalMs: 0 } })).link.rateProbeIntervalMs, 0);
  assert.equal((await load({ link: { rateProbeIntervalMs: 1000 } })).link.rateProbeIntervalMs, 1000);
  assert.match(
    await configError({ link: { rateProbeIntervalMs: 500 } }),
    /link\.rateProbeIntervalMs = 500: give 0 \(no rate probes: rates come from transfers only\) or at least 1000 ms/,
  );
  assert.match(await configError({ link: { rateProbeIntervalMs: -1 } }), /link\.rateProbeIntervalMs = -1/);
});
