/**
 * src/mode/links.ts, the IO edge of link probing, against a real peer on loopback (a listener that runs
 * the real server handshake) and the kernel's real TCP_INFO; only the clock is the test's.
 */
import assert from "node:assert/strict";
import { ShimError } from "../../ffi/library.ts";
import { type TcpEndpoints, tcpInfo } from "../../ffi/tcp_info.ts";
import { splitHostPort } from "../../src/agent/config.ts";
import {
  dialProbe,
  rateProbeBytes,
  type RateProbing,
  readHostFacts,
  UnknownLinkError,
} from "../../src/mode/links.ts";
import { TransferProgress } from "../../src/obs/progress.ts";
import { ForecastBook } from "../../src/predict/peer_forecast.ts";
import { LinkStats } from "../../src/mode/link_stats.ts";
import type { RateSample } from "../../src/transport/rate_probe.ts";
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
    // The 2 MiB count towards the path's loss, or apart when the socket had a queue as it was sampled.
    const m = view.measurements;
    const segments = m.retransmitSampleSegments + m.queuedSampleSegments;
    assert.ok(m.mssBytes! > 0 && segments >= (2 * 1024 * 1024) / m.mssBytes!, JSON.stringify(m));
    assert.equal(m.retransmitRatio ?? 0, 0);
    assert.equal(m.queuedRetransmitRatio ?? 0, 0);
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

/** Connects to peer as a transfer's stream does, through links' observer for "b". */
async function streamTo(peer: { address: string }, links: ReturnType<typeof harness>["links"]) {
  const [host, port] = peer.address.split(":");
  return await dial({ host, port: Number(port) }, SECRET, ME, links.observer("b"));
}

Deno.test("a new connection gets its mode's congestion control where TCP_INFO shows another, not where they match", async () => {
  const peer = startPeer();
  try {
    const calls: string[] = [];
    let running = "reno";
    const { links } = harness({ b: peer.address }, {
      pins: { b: "datacenter" },
      tcpInfo: (conn) => ({ ...tcpInfo(conn)!, congestion: running }),
      setCongestion: (_conn: TcpEndpoints, name: string) => {
        calls.push(name);
        return true;
      },
    });
    assert.equal(links.parametersFor("b")!.congestionControl, "cubic");
    const first = await streamTo(peer, links);
    assert.deepEqual(calls, ["cubic"]);
    running = "cubic";
    const second = await streamTo(peer, links);
    assert.deepEqual(calls, ["cubic"], "a socket that runs it already is left alone");
    assert.equal(links.view("b")!.socketsSampled, 2);
    first.close();
    second.close();
  } finally {
    await peer.close();
  }
});

Deno.test("no mode, no TCP_INFO: a connection's congestion control is left as it is", async () => {
  const peer = startPeer();
  try {
    const calls: string[] = [];
    const setCongestion = (_conn: TcpEndpoints, name: string) => {
      calls.push(name);
      return true;
    };
    const unpinned = harness({ b: peer.address }, { setCongestion });
    (await streamTo(peer, unpinned.links)).close();
    const blind = harness({ b: peer.address }, {
      pins: { b: "internet" },
      tcpInfo: () => undefined,
      setCongestion,
    });
    (await streamTo(peer, blind.links)).close();
    assert.deepEqual(calls, []);
  } finally {
    await peer.close();
  }
});

Deno.test("a congestion control the kernel refuses is logged once per kind; the connections still count", async () => {
  const peer = startPeer();
  try {
    const statuses = [-5, -5, -8, -8];
    const { links, logs } = harness({ b: peer.address }, {
      pins: { b: "internet" },
      tcpInfo: (conn) => ({ ...tcpInfo(conn)!, congestion: "reno" }),
      setCongestion: () => {
        throw new ShimError(statuses.shift()!, "refused");
      },
    });
    const conns = [];
    for (let i = 0; i < 4; i++) conns.push(await streamTo(peer, links));
    const said = logs.filter((l) => l.msg.startsWith("congestion control not set"));
    assert.equal(said.length, 2, "one per kind: unavailable, not permitted");
    assert.equal(said[0].fields?.wanted, links.parametersFor("b")!.congestionControl);
    assert.equal(said[0].fields?.running, "reno");
    assert.equal(links.view("b")!.socketsSampled, 4);
    for (const c of conns) c.close();
  } finally {
    await peer.close();
  }
});

Deno.test({
  name: "end to end: a datacenter link's connection runs cubic, whatever the host's default",
  // Root may set any available algorithm; others only net.ipv4.tcp_allowed_congestion_control's.
  ignore: Deno.uid() !== 0 || !readHostFacts().availableCongestionControl.includes("cubic"),
  fn: async () => {
    const peer = startPeer();
    try {
      const { links, logs } = harness({ b: peer.address }, { pins: { b: "datacenter" } });
      const conn = await streamTo(peer, links);
      assert.equal(tcpInfo(conn)!.congestion, "cubic");
      assert.deepEqual(logs.filter((l) => l.msg.startsWith("congestion control")), []);
      conn.close();
    } finally {
      await peer.close();
    }
  },
});

Deno.test("the streams are derived for the mode's congestion control, which the agent sets, not the host's", () => {
  // A host defaulting to cubic: internet's streams are still derived for BBR, which their sockets get.
  const host = { ...readHostFacts(), defaultCongestionControl: "cubic" };
  const { links } = harness({ b: closedAddress() }, { pins: { b: "internet" }, host });
  const p = links.parametersFor("b")!;
  assert.equal(p.streams.congestionControl, p.congestionControl);
});

Deno.test("a peer's parameters count its streams for its 10 s bandwidth forecast", () => {
  const forecasts = new ForecastBook();
  const { links } = harness({ b: closedAddress() }, { pins: { b: "internet" }, forecasts });
  assert.equal(links.parametersFor("b")!.streams.forecastBytesPerSec, undefined, "no history yet");
  for (let s = 0; s < 30; s++) forecasts.observe("b", s * 1000, 200e6);
  const p = links.parametersFor("b")!;
  assert.equal(p.streams.forecastBytesPerSec, forecasts.forecast("b", 10)!.bytesPerSec);
  assert.equal(p.streams.linkBytesPerSec, 200e6);
});

const MiB = 1024 * 1024;
const RATE_INTERVAL_MS = 60_000;
/** Round-trip probes that answer at once: the rate probes' scheduling is the subject, without IO. */
const instantRtt = () => Promise.resolve({ rttMs: 0.1 });

/** A rate probe that records each call and answers as a link of bytesPerSec would, or as answer says. */
function fakeRateProbe(bytesPerSec = 10e6, answer?: (bytes: number) => Promise<RateSample>) {
  const calls: { peer: string; bytes: number }[] = [];
  const rateProbe: RateProbing = {
    intervalMs: RATE_INTERVAL_MS,
    probe: (peer, bytes) => {
      calls.push({ peer, bytes });
      const elapsedMs = (bytes * 1000) / bytesPerSec;
      return answer?.(bytes) ?? Promise.resolve({ bytes, elapsedMs, receiveMs: elapsedMs - 1 });
    },
  };
  return { calls, rateProbe };
}

function progressOf(clock: { ms: number }, direction: "send" | "receive", peer = "b"): TransferProgress {
  const info = { id: crypto.randomUUID(), direction, source: "f", peer, destination: "f", sizeBytes: 30e6 };
  return new TransferProgress({ ...info, codec: "none", chunkBytes: 1e6, streams: 1 }, () => clock.ms);
}

Deno.test("rate probes: an idle peer is probed once per interval, after its round trip, sized by its rate; the figure feeds the measurements, not the forecasts", async () => {
  const { calls, rateProbe } = fakeRateProbe();
  const forecasts = new ForecastBook();
  const { links, clock } = harness({ b: closedAddress() }, { probe: instantRtt, rateProbe, forecasts });
  await links.tick();
  assert.equal(calls.length, 0, "the round trip first: never both probes at once");
  clock.ms += 1000;
  await links.tick();
  assert.deepEqual(calls, [{ peer: "b", bytes: MiB }], "no rate known yet: 1 MiB");
  let view = links.view("b")!;
  assert.equal(Math.round(view.probe.lastRateBytesPerSec!), 10e6);
  assert.equal(view.probe.lastRateBytes, MiB);
  assert.equal(view.probe.lastRateReceiveMs, (MiB * 1000) / 10e6 - 1);
  assert.equal(view.probe.lastRateAt, new Date(clock.ms).toISOString());
  assert.equal(view.probe.rateError, null);
  assert.equal(view.probe.rateIntervalMs, RATE_INTERVAL_MS);
  assert.equal(Math.round(view.measurements.latestDeliveredBytesPerSec!), 10e6);
  assert.equal(links.forecastView("b"), undefined, "a probe's burst is no busy second of the link");
  for (let i = 0; i < 5; i++) {
    clock.ms += 1000;
    await links.tick();
  }
  assert.equal(calls.length, 1, "within the interval: no second rate probe");
  clock.ms += RATE_INTERVAL_MS;
  await links.tick(); // the round trip is due too, and goes first
  await links.tick();
  assert.deepEqual(calls.map((c) => c.bytes), [MiB, 2_500_000], "250 ms at 10 MB/s");
  view = links.view("b")!;
  assert.equal(view.probe.rateProbing, false);
});

Deno.test("rate probes: none while a transfer to the peer runs; after it, the interval counts from its last sample", async () => {
  const { calls, rateProbe } = fakeRateProbe();
  const { links, clock } = harness({ b: closedAddress() }, { probe: instantRtt, rateProbe });
  await links.tick(); // the round trip
  const progress = progressOf(clock, "send");
  links.transferStarted("b", progress);
  progress.setState("running");
  for (let i = 0; i < 3; i++) {
    clock.ms += RATE_INTERVAL_MS;
    progress.chunkDone(0, 1e6, 1e6);
    await links.tick();
  }
  assert.equal(calls.length, 0, "the transfer measures the rate itself");
  progress.setState("completed");
  await links.tick();
  clock.ms += RATE_INTERVAL_MS - 1000;
  await links.tick();
  assert.equal(calls.length, 0, "the transfer's rate is recent");
  clock.ms += 1000;
  await links.tick();
  assert.equal(calls.length, 1);
});

Deno.test("rate probes: never two at once for a peer, nor a round-trip probe during one", async () => {
  const answer = Promise.withResolvers<RateSample>();
  const { calls, rateProbe } = fakeRateProbe(10e6, () => answer.promise);
  let rttProbes = 0;
  const probe = () => (rttProbes++, instantRtt());
  const { links, clock } = harness({ b: closedAddress() }, { probe, rateProbe });
  await links.tick();
  clock.ms += 1000;
  const first = links.tick(); // starts the rate probe, which hangs
  assert.equal(links.view("b")!.probe.rateProbing, true);
  clock.ms += 2 * RATE_INTERVAL_MS;
  const second = links.tick();
  assert.equal(calls.length, 1);
  assert.equal(rttProbes, 1, "a burst queued on the link would inflate the round trip");
  answer.resolve({ bytes: MiB, elapsedMs: 100, receiveMs: 99 });
  await Promise.all([first, second]);
  assert.equal(links.view("b")!.probe.rateProbing, false);
  assert.equal(Math.round(links.view("b")!.probe.lastRateBytesPerSec!), Math.round(MiB * 10));
});

Deno.test("rate probes: a failure is recorded, not thrown, and retried an interval later", async () => {
  const { calls, rateProbe } = fakeRateProbe(0, () => Promise.reject(new Error("peer went away")));
  const { links, clock } = harness({ b: closedAddress() }, { probe: instantRtt, rateProbe });
  await links.tick();
  clock.ms += 1000;
  await links.tick();
  let view = links.view("b")!;
  assert.equal(view.probe.rateError, "peer went away");
  assert.equal(view.probe.lastRateBytesPerSec, null);
  assert.equal(view.probe.lastRateAt, new Date(clock.ms).toISOString());
  assert.equal(view.measurements.latestDeliveredBytesPerSec, undefined);
  clock.ms += 1000;
  await links.tick();
  assert.equal(calls.length, 1, "a failed probe is not repeated every tick");
  clock.ms += RATE_INTERVAL_MS;
  await links.tick(); // the round trip
  await links.tick();
  assert.equal(calls.length, 2);
  view = links.view("b")!;
  assert.equal(view.probe.rateError, "peer went away");
});

Deno.test("rate probes: without the dependency (link.rateProbeIntervalMs 0) there are none, and the view says 0", async () => {
  const { links, clock } = harness({ b: closedAddress() }, { probe: instantRtt });
  for (let i = 0; i < 3; i++) {
    await links.tick();
    clock.ms += RATE_INTERVAL_MS;
  }
  const view = links.view("b")!;
  assert.equal(view.probe.rateIntervalMs, 0);
  assert.equal(view.probe.lastRateAt, null);
  assert.equal(view.measurements.latestDeliveredBytesPerSec, undefined);
});

Deno.test("rate probe size: 250 ms at the best recent rate, within 256 KiB..4 MiB; 1 MiB without a rate", () => {
  const bytesFor = (...bytesPerSec: number[]) => {
    const stats = new LinkStats();
    bytesPerSec.forEach((rate, i) => stats.addDelivered(i * 1000, rate));
    return rateProbeBytes(stats.measurements(bytesPerSec.length * 1000));
  };
  assert.equal(bytesFor(), MiB);
  assert.equal(bytesFor(10e6), 2_500_000);
  assert.equal(
    bytesFor(10e6, 2e6),
    2_500_000,
    "the best, not the latest: a probe that read low does not shrink the next",
  );
  assert.equal(bytesFor(100e3), 256 * 1024, "a slow link still gets a burst worth timing");
  assert.equal(bytesFor(10e9), 4 * MiB, "a fast one no more than 4 MiB");
});

Deno.test("received transfers show the reverse direction's rate apart, for configured peers only", async () => {
  const { links, clock } = harness({ b: closedAddress() }, { probe: instantRtt });
  const progress = progressOf(clock, "receive");
  links.transferReceived("b", progress);
  links.transferReceived("mallory", progressOf(clock, "receive", "mallory"));
  progress.setState("running");
  for (let i = 0; i < 10; i++) {
    clock.ms += 100;
    progress.chunkDone(0, 1e6, 1e6); // 10 MB/s
  }
  await links.tick();
  let view = links.view("b")!;
  assert.equal(Math.round(view.received.latestBytesPerSec!), 10e6);
  assert.equal(view.received.transfersRunning, 1);
  assert.equal(view.received.at, new Date(clock.ms).toISOString());
  assert.equal(view.measurements.latestDeliveredBytesPerSec, undefined, "not this agent's sending rate");
  assert.equal(view.transfersRunning, 0);
  clock.ms += 1000;
  progress.setState("completed");
  await links.tick();
  view = links.view("b")!;
  assert.equal(Math.round(view.received.latestBytesPerSec!), 10e6 / 2, "10 MB in 2 s in all");
  assert.equal(view.received.transfersRunning, 0);
  assert.equal(links.view("mallory"), undefined, "an agent id that is no configured peer is not tracked");
});
