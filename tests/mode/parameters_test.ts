/** src/mode/parameters.ts: what each mode sets on the links of issue 5's emulator profiles, and why. */
import assert from "node:assert/strict";
import type { LinkMeasurements } from "../../src/mode/link_stats.ts";
import { type HostFacts, modeParameters, STREAM_BUFFER_BUDGET_BYTES } from "../../src/mode/parameters.ts";
import type { LinkMode } from "../../src/mode/policy.ts";

const MiB = 1024 * 1024;
const DEFAULTS = { streams: 4, chunkBytes: 1 * MiB, windowChunks: 4 };

function host(
  defaultCongestionControl: string,
  available = ["reno", "cubic", "bbr"],
  cpuCount = 8,
): HostFacts {
  return {
    availableCongestionControl: available,
    defaultCongestionControl,
    tcpWindowBytes: 3 * MiB,
    cpuCount,
  };
}

/** A link measured over 256 MiB (64 MiB for cellular), as a few busy minutes would leave it. */
function measured(
  minRttMs: number,
  smoothedRttMs: number,
  lossRatio: number,
  bytesPerSec: number,
  sample = 256 * MiB,
) {
  return {
    rttSamples: 100,
    minRttMs,
    smoothedRttMs,
    retransmitRatio: lossRatio,
    retransmitSampleSegments: sample / 1448,
    retransmitSampleBytes: sample,
    queuedSampleSegments: 0,
    maxDeliveredBytesPerSec: bytesPerSec,
  } satisfies LinkMeasurements;
}

/** The emulator's profiles (tests/support), as the agent would measure them, and the mode each gets. */
const PROFILES: Record<string, [LinkMode, LinkMeasurements]> = {
  lan: ["datacenter", measured(0.2, 0.25, 0, 1.1e9)],
  metro: ["hybrid", measured(10, 11, 0, 110e6)],
  wan: ["internet", measured(50, 55, 0.001, 11e6)],
  intercontinental: ["internet", measured(150, 160, 0.005, 5.5e6)],
  cellular: ["internet", measured(80, 120, 0.002, 2e6, 64 * MiB)],
};

/** profile: mode, streams (for BDP / for loss), chunk MiB, codec bias, TLS, congestion control, downtime ms */
function table(h: HostFacts): string[] {
  return Object.entries(PROFILES).map(([name, [mode, m]]) => {
    const p = modeParameters(mode, m, h, DEFAULTS);
    const s = p.streams;
    return `${name}: ${mode}, ${s.count} streams (${s.forBdp} / ${s.forLoss}), ${p.chunkBytes / MiB} MiB, ` +
      `${p.codecBias}, tls ${p.tls}, ${p.congestionControl}, downtime ${p.migration.downtimeLimitMs} ms`;
  });
}

/** A kernel without BBR: every stream runs cubic. */
const NO_BBR = ["reno", "cubic"];

Deno.test("the profiles' parameters where the kernel has no BBR: loss decides cubic's stream count", () => {
  assert.deepEqual(table(host("cubic", NO_BBR)), [
    "lan: datacenter, 4 streams (1 / 1), 1 MiB, datacenter, tls false, cubic, downtime 300 ms",
    "metro: hybrid, 4 streams (1 / 1), 16 MiB, internet, tls false, cubic, downtime 344 ms",
    "wan: internet, 13 streams (1 / 13), 16 MiB, internet, tls true, cubic, downtime 520 ms",
    "intercontinental: internet, 64 streams (1 / 80), 4 MiB, internet, tls true, cubic, downtime 940 ms",
    "cellular: internet, 38 streams (1 / 38), 4 MiB, internet, tls true, cubic, downtime 780 ms",
  ]);
});

Deno.test("the profiles' parameters with BBR, whatever the host's default: random loss holds no stream back", () => {
  // The agent sets each stream's congestion control, so a cubic default changes nothing.
  assert.deepEqual(table(host("cubic")), table(host("bbr")));
  assert.deepEqual(table(host("bbr")), [
    "lan: datacenter, 4 streams (1 / 1), 1 MiB, datacenter, tls false, cubic, downtime 300 ms",
    "metro: hybrid, 4 streams (1 / 1), 16 MiB, internet, tls false, bbr, downtime 344 ms",
    "wan: internet, 8 streams (1 / 1), 16 MiB, internet, tls true, bbr, downtime 520 ms",
    "intercontinental: internet, 8 streams (1 / 1), 16 MiB, internet, tls true, bbr, downtime 940 ms",
    "cellular: internet, 8 streams (1 / 1), 16 MiB, internet, tls true, bbr, downtime 780 ms",
  ]);
});

Deno.test("the loss term is Mathis's rate per stream: MSS / RTT × sqrt(3/2 / p)", () => {
  const [mode, m] = PROFILES.wan;
  const s = modeParameters(mode, m, host("cubic", NO_BBR), DEFAULTS).streams;
  // 1448 B / 55 ms × sqrt(1.5 / 0.001) = 26 327 B/s × 38.73 ≈ 1.02 MB/s; 12.5 MB/s (the internet floor,
  // above the 11 MB/s delivered) needs 13 such streams.
  assert.equal(Math.round(s.perStreamBytesPerSecUnderLoss!), Math.round((1448 / 0.055) * Math.sqrt(1500)));
  assert.equal(s.linkBytesPerSec, 12.5e6);
  assert.equal(s.rttMs, 55);
  assert.equal(s.lossRatio, 0.001);
  assert.equal(s.forLoss, 13);
  assert.equal(s.congestionControl, "cubic");
});

Deno.test("a fast long link needs streams for its bandwidth-delay product", () => {
  // 10 Gbit/s delivered at 50 ms: a 62.5 MB product over 3 MiB windows is 20 streams.
  const s = modeParameters("internet", measured(50, 50, 0, 1.25e9), host("bbr"), DEFAULTS).streams;
  assert.equal(s.forBdp, Math.ceil(1.25e9 * 0.05 / (3 * MiB)));
  assert.equal(s.count, 20);
  // A window of 4 chunks of 256 KiB is smaller than TCP's: it then limits each stream.
  const small = modeParameters("datacenter", measured(1, 1, 0, 1.25e9), host("bbr"), {
    ...DEFAULTS,
    chunkBytes: 256 * 1024,
  });
  assert.equal(small.streams.perStreamWindowBytes, 1 * MiB);
  assert.equal(small.streams.forBdp, 2);
});

Deno.test("in the datacenter a transfer keeps twice the bandwidth-delay product in flight; elsewhere no cap", () => {
  // 2.5 GB/s delivered at 0.2 ms at least: a 500 kB product. The smoothed 2 ms is the queue's doing.
  const dc = modeParameters("datacenter", measured(0.2, 2, 0, 2.5e9), host("cubic"), DEFAULTS).streams;
  assert.equal(dc.transferWindowBytes, 1e6);
  // Unmeasured, the mode's assumption: 10 Gbit/s at 0.5 ms.
  const unmeasured = {
    rttSamples: 0,
    retransmitSampleSegments: 0,
    retransmitSampleBytes: 0,
    queuedSampleSegments: 0,
  };
  const assumed = modeParameters("datacenter", unmeasured, host("cubic"), DEFAULTS).streams;
  assert.equal(assumed.transferWindowBytes, 2 * 1.25e9 * 0.5 / 1000);
  for (const mode of ["hybrid", "internet"] as const) {
    const s = modeParameters(mode, measured(20, 20, 0, 125e6), host("bbr"), DEFAULTS).streams;
    assert.equal(s.transferWindowBytes, undefined, mode);
  }
});

Deno.test("the forecast is the rate the streams fill; the mode's assumption stays the floor", () => {
  // 1 Gbit/s measured once at 50 ms; the forecast says the next seconds carry 2 Gbit/s: twice the streams
  // for the bandwidth-delay product. A forecast under the internet assumption (100 Mbit/s) changes nothing.
  const m = measured(50, 50, 0, 125e6);
  const plain = modeParameters("internet", m, host("bbr"), DEFAULTS).streams;
  const fast = modeParameters("internet", m, host("bbr"), DEFAULTS, 250e6).streams;
  assert.equal(plain.linkBytesPerSec, 125e6);
  assert.equal(plain.forecastBytesPerSec, undefined);
  assert.equal(fast.linkBytesPerSec, 250e6);
  assert.equal(fast.forecastBytesPerSec, 250e6);
  assert.equal(fast.forBdp, Math.ceil((250e6 * 0.05) / fast.perStreamWindowBytes));
  assert.ok(fast.forBdp > plain.forBdp, `${fast.forBdp} vs ${plain.forBdp}`);
  const slow = modeParameters("internet", m, host("bbr"), DEFAULTS, 1e6).streams;
  assert.equal(slow.linkBytesPerSec, 12.5e6);
  assert.throws(() => modeParameters("internet", m, host("bbr"), DEFAULTS, NaN), /forecastBytesPerSec = NaN/);
});

Deno.test("chunks shrink before the streams' buffers pass the budget; the mode's ceiling caps the count", () => {
  const p = modeParameters(...PROFILES.intercontinental, host("cubic", NO_BBR), DEFAULTS);
  assert.equal(p.streams.max, 64);
  assert.ok(p.streams.count * p.chunkBytes <= STREAM_BUFFER_BUDGET_BYTES);
  assert.equal(p.chunkBytes, 4 * MiB, "halved once from the internet bias's 8 MiB");
});

Deno.test("until measured, each mode assumes its link: 100 Mbit/s, 50 ms and 0.1 % loss for internet", () => {
  const s = modeParameters(
    "internet",
    { rttSamples: 0, retransmitSampleSegments: 0, retransmitSampleBytes: 0, queuedSampleSegments: 0 },
    host("cubic"),
    DEFAULTS,
  )
    .streams;
  assert.deepEqual([s.linkBytesPerSec, s.rttMs, s.lossRatio], [12.5e6, 50, 0.001]);
  // A retransmit ratio from too small a sample is not used either.
  const few = modeParameters("internet", measured(50, 50, 0.05, 1e6, 1 * MiB), host("cubic"), DEFAULTS);
  assert.equal(few.streams.lossRatio, 0.001);
});

Deno.test("the configured stream count is the floor, and on a LAN the count", () => {
  const lan = PROFILES.lan[1];
  assert.equal(modeParameters("datacenter", lan, host("bbr"), { ...DEFAULTS, streams: 2 }).streams.count, 2);
  assert.equal(
    modeParameters("datacenter", lan, host("bbr"), { ...DEFAULTS, streams: 32 }).streams.count,
    32,
  );
  assert.equal(modeParameters("internet", lan, host("bbr"), { ...DEFAULTS, streams: 12 }).streams.count, 12);
});

Deno.test("BBR only where the kernel offers it", () => {
  const p = modeParameters(...PROFILES.wan, host("cubic", ["reno", "cubic"]), DEFAULTS);
  assert.equal(p.congestionControl, "cubic");
});

Deno.test("QEMU: multifd on the LAN, xbzrle (never with multifd) and a longer downtime limit elsewhere", () => {
  const lan = modeParameters(...PROFILES.lan, host("bbr"), DEFAULTS).migration;
  assert.deepEqual(lan, {
    downtimeLimitMs: 300,
    maxBandwidthBytesPerSec: 64 * 1024 * MiB,
    xbzrle: false,
    xbzrleCacheBytes: 0,
    multifdChannels: 4,
  });
  const wan = modeParameters(...PROFILES.wan, host("bbr"), DEFAULTS).migration;
  assert.deepEqual(wan, {
    downtimeLimitMs: 300 + 4 * 55,
    maxBandwidthBytesPerSec: 64 * 1024 * MiB,
    xbzrle: true,
    xbzrleCacheBytes: 256 * MiB,
    multifdChannels: 0,
  });
  // On two cores the guest's vCPU and QEMU's migration thread already take both: no multifd.
  assert.equal(
    modeParameters(...PROFILES.lan, host("bbr", undefined, 2), DEFAULTS).migration.multifdChannels,
    0,
  );
  assert.equal(
    modeParameters(...PROFILES.lan, host("bbr", undefined, 4), DEFAULTS).migration.multifdChannels,
    2,
  );
  // Long round trips would ask for more than a second; the limit stays at one.
  const far = modeParameters("internet", measured(300, 300, 0, 1e6), host("bbr"), DEFAULTS).migration;
  assert.equal(far.downtimeLimitMs, 1000);
});
