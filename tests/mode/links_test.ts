/**
 * src/mode/links.ts, the IO edge of link probing, against a real peer on loopback (a listener that runs
 * the real server handshake) and the kernel's real TCP_INFO; only the clock is the test's.
 */
import assert from "node:assert/strict";
import { tcpInfo } from "../../ffi/tcp_info.ts";
import { splitHostPort } from "../../src/agent/config.ts";
import { dialProbe, readHostFacts, UnknownLinkError } from "../../src/mode/links.ts";
import { TransferProgress } from "../../src/obs/progress.ts";
import { dial } from "../../src/transport/dial.ts";
import { writeAll } from "../../src/transport/wire.ts";
import { closedAddress, harness, ME, PROBE_INTERVAL_MS, SECRET, startPeer } from "./link_harness.ts";

Deno.test("an idle peer is probed every interval; three answers give it a mode, and the change is logged", async () => {
  const peer = startPeer();
  try {
    const { links, logs, clock } = harness({ b: peer.address });
    assert.equal(links.view("b")!.mode.current, null);
    assert.equal(
      links.parametersFor("b")?.streams.count,
      undefined,
      "no mode yet: the transfer takes the configured count",
    );
    for (let i = 0; i < 3; i++) {
      await links.tick();
      await links.tick(); // within the interval: no second probe
      clock.ms += PROBE_INTERVAL_MS;
    }
    const view = links.view("b")!;
    assert.equal(view.measurements.rttSamples, 3);
    assert.equal(view.measurements.lastRttSource, "probe");
    assert.ok(
      view.measurements.minRttMs! > 0 && view.measurements.minRttMs! < 2,
      `${view.measurements.minRttMs}`,
    );
    assert.equal(view.probe.error, null);
    assert.ok(view.probe.lastRttMs! > 0);
    assert.equal(view.mode.current, "datacenter");
    assert.equal(view.parameters!.streams.count, 4);
    assert.equal(links.parametersFor("b")?.streams.count, 4);
    const change = logs.find((l) => l.msg === "link mode changed");
    assert.equal(change?.fields?.to, "datacenter");
    assert.equal(change?.fields?.peer, "b");
    assert.ok(change?.fields?.measurements, "the decision's inputs are logged");
  } finally {
    await peer.close();
  }
});

Deno.test("a transfer's connections give handshake round trips, and their TCP_INFO the bytes and retransmits", async () => {
  const peer = startPeer();
  try {
    const { links } = harness({ b: peer.address });
    const [host, port] = peer.address.split(":");
    // Named by its address, the peer is still "b".
    const conn = await dial({ host, port: Number(port) }, SECRET, ME, links.observer(peer.address));
    let view = links.view("b")!;
    assert.equal(view.measurements.lastRttSource, "handshake");
    assert.equal(view.socketsSampled, 1);
    await writeAll(conn, new Uint8Array(2 * 1024 * 1024));
    await peer.received(2 * 1024 * 1024); // sent, not only queued in the socket's buffer
    await links.tick();
    view = links.view("b")!;
    assert.ok(
      view.measurements.retransmitSampleBytes >= 2 * 1024 * 1024,
      `${view.measurements.retransmitSampleBytes}`,
    );
    assert.equal(view.measurements.retransmitRatio, 0);
    assert.equal(view.measurements.congestion, readHostFacts().defaultCongestionControl);
    assert.equal(view.measurements.lastRttSource, "tcp_info");
    conn.close();
    await links.tick();
    assert.equal(links.view("b")!.socketsSampled, 0, "a closed connection is no longer sampled");
  } finally {
    await peer.close();
  }
});

Deno.test("a running transfer's wire rate is sampled, and its average once it completed", async () => {
  const { links, clock } = harness({ b: closedAddress() });
  const progress = new TransferProgress(
    {
      id: "t1",
      direction: "send",
      source: "f",
      peer: "b",
      destination: "f",
      sizeBytes: 30e6,
      codec: "none",
      chunkBytes: 1e6,
      streams: 1,
    },
    () => clock.ms,
  );
  links.transferStarted("b", progress);
  progress.setState("running");
  for (let i = 0; i < 10; i++) {
    clock.ms += 100;
    progress.chunkDone(0, 1e6, 1e6); // 10 MB/s on the wire
  }
  await links.tick();
  let view = links.view("b")!;
  assert.equal(view.transfersRunning, 1);
  assert.equal(Math.round(view.measurements.latestDeliveredBytesPerSec!), 10e6);
  clock.ms += 1000;
  progress.setState("completed");
  await links.tick();
  view = links.view("b")!;
  assert.equal(view.transfersRunning, 0);
  assert.equal(Math.round(view.measurements.latestDeliveredBytesPerSec!), 10e6 / 2, "10 MB in 2 s in all");
  assert.equal(Math.round(view.measurements.maxDeliveredBytesPerSec!), 10e6);
});

Deno.test("a peer that does not answer: the probe's error is shown, the link has no mode", async () => {
  const { links } = harness({ b: closedAddress() });
  await links.tick();
  const view = links.view("b")!;
  assert.match(view.probe.error!, /cannot reach peer at 127\.0\.0\.1:\d+/);
  assert.equal(view.mode.current, null);
  assert.equal(view.parameters, null);
});

Deno.test("pins: from the config at start, and by id; an unknown peer is refused by name", () => {
  const { links } = harness({ b: closedAddress(), c: closedAddress() }, { pins: { b: "internet" } });
  assert.equal(links.view("b")!.mode.current, "internet");
  assert.equal(links.view("b")!.mode.pinned, "internet");
  assert.equal(links.view("b")!.parameters!.tls, true);
  const c = links.pin("c", "hybrid");
  assert.equal(c.mode.current, "hybrid");
  assert.equal(c.mode.reason, "pinned by the operator");
  assert.equal(links.pin("c", undefined).mode.current, null, "unpinned and never measured");
  assert.throws(() => links.pin("nobody", "internet"), (err: unknown) => {
    assert.ok(err instanceof UnknownLinkError);
    assert.match(err.message, /no link to "nobody": pin a configured peer \(b, c\)/);
    return true;
  });
  assert.equal(links.view("nobody"), undefined);
  assert.deepEqual(links.list().map((v) => v.id), ["b", "c"]);
});

Deno.test("host facts come from /proc, with Linux's defaults where a file is missing", () => {
  const facts = readHostFacts((path) =>
    ({
      "/proc/sys/net/ipv4/tcp_available_congestion_control": "reno cubic bbr\n",
      "/proc/sys/net/ipv4/tcp_congestion_control": "bbr\n",
      "/proc/sys/net/ipv4/tcp_rmem": "4096\t131072\t6291456\n",
    })[path]
  );
  assert.deepEqual(facts, {
    availableCongestionControl: ["reno", "cubic", "bbr"],
    defaultCongestionControl: "bbr",
    tcpWindowBytes: 3 * 1024 * 1024,
    cpuCount: navigator.hardwareConcurrency,
  });
  assert.deepEqual(readHostFacts(() => undefined), {
    availableCongestionControl: ["reno", "cubic"],
    defaultCongestionControl: "cubic",
    tcpWindowBytes: 3 * 1024 * 1024,
    cpuCount: navigator.hardwareConcurrency,
  });
});

Deno.test("a probe reads the kernel's round trip of its connection, or times the handshake without TCP_INFO", async () => {
  const peer = startPeer();
  try {
    const resolve = (name: string) => {
      assert.equal(name, "b");
      return splitHostPort(peer.address);
    };
    const kernel = await dialProbe(SECRET, ME, tcpInfo, resolve)("b");
    assert.ok(kernel.rttMs > 0);
    assert.ok(kernel.minRttMs! > 0 && kernel.minRttMs! <= kernel.rttMs);
    const noSockDiag = () => {
      throw new Error("no sock_diag here");
    };
    const timed = await dialProbe(SECRET, ME, noSockDiag, resolve)("b");
    assert.ok(timed.rttMs > 0);
    assert.equal(timed.minRttMs, undefined);
  } finally {
    await peer.close();
  }
});
