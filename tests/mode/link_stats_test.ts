/** src/mode/link_stats.ts: per-peer round trips, delivered rate and retransmit ratio, with time passed in. */
import assert from "node:assert/strict";
import type { TcpInfo } from "../../ffi/tcp_info.ts";
import { LinkStats } from "../../src/mode/link_stats.ts";

const MiB = 1024 * 1024;

/** A 1 KiB segment, so that 1 MiB is 1024 segments. */
const MSS = 1024;

/** A socket's TCP_INFO after sending sentMiB, retransSegments of its segments again, with rttUs. */
function info(
  sentMiB: number,
  retransSegments: number,
  rttUs = 50_000,
  extra: Partial<TcpInfo> = {},
): TcpInfo {
  return {
    state: 1,
    congestion: "cubic",
    rttUs,
    minRttUs: rttUs,
    sndMssBytes: MSS,
    segsOut: sentMiB * 1024,
    totalRetransSegments: retransSegments,
    bytesSent: sentMiB * MiB,
    bytesRetrans: retransSegments * MSS,
    ...extra,
  };
}

Deno.test("nothing measured: only the zero counts", () => {
  assert.deepEqual(JSON.parse(JSON.stringify(new LinkStats().measurements(0))), {
    rttSamples: 0,
    retransmitSampleSegments: 0,
    retransmitSampleBytes: 0,
    queuedSampleSegments: 0,
  });
});

Deno.test("round trips: smoothed as RFC 6298 does, and the minimum over its window", () => {
  const s = new LinkStats();
  s.addRtt(0, 10, "probe");
  let m = s.measurements(0);
  assert.equal(m.smoothedRttMs, 10);
  assert.equal(m.rttVariationMs, 5, "the first deviation is half the sample");
  s.addRtt(6000, 18, "handshake");
  m = s.measurements(6000);
  assert.equal(m.rttVariationMs, 5 + (8 - 5) / 4);
  assert.equal(m.smoothedRttMs, 10 + 8 / 8);
  assert.equal(m.minRttMs, 10);
  assert.equal(m.latestRttMs, 18);
  assert.equal(m.lastRttSource, "handshake");
  assert.equal(m.lastRttAtMs, 6000);
  assert.equal(m.rttSamples, 2);
  // The window is kept in 3 s buckets: at 35 s the 10 ms sample's bucket (0 s) has left the 30 s window.
  s.addRtt(20_000, 30, "probe");
  s.addRtt(35_000, 25, "probe");
  assert.equal(s.measurements(35_000).minRttMs, 18);
  assert.equal(s.measurements(60_000).minRttMs, 25);
  assert.equal(s.measurements(100_000).minRttMs, undefined, "no sample in the window: no minimum");
  assert.equal(s.measurements(100_000).smoothedRttMs! > 10, true, "the smoothed figure stays");
});

Deno.test("a bad round trip is refused with the value", () => {
  assert.throws(() => new LinkStats().addRtt(0, -1, "probe"), /rttMs = -1/);
  assert.throws(() => new LinkStats().addRtt(0, NaN, "probe"), /rttMs = NaN/);
  assert.throws(() => new LinkStats().addDelivered(0, Infinity), /bytesPerSec = Infinity/);
});

Deno.test("delivered rate: the latest, and the greatest of the last five minutes", () => {
  const s = new LinkStats();
  s.addDelivered(0, 100e6);
  s.addDelivered(60_000, 40e6);
  let m = s.measurements(60_000);
  assert.equal(m.latestDeliveredBytesPerSec, 40e6);
  assert.equal(m.maxDeliveredBytesPerSec, 100e6, "a slower transfer does not lower the link's estimate");
  s.addDelivered(320_000, 30e6);
  m = s.measurements(320_000);
  assert.equal(m.maxDeliveredBytesPerSec, 40e6, "the 100 MB/s sample is older than the window");
});

Deno.test("TCP_INFO: counters add only their growth since the socket's last sample", () => {
  const s = new LinkStats();
  s.addTcpInfo(0, "a", info(10, 10));
  s.addTcpInfo(1000, "a", info(20, 20));
  s.addTcpInfo(1000, "b", info(20, 0));
  const m = s.measurements(1000);
  assert.equal(m.retransmitSampleBytes, 40 * MiB);
  assert.equal(m.retransmitSampleSegments, 40 * 1024);
  assert.equal(m.retransmitRatio, 20 / (40 * 1024));
  assert.equal(m.mssBytes, MSS);
  assert.equal(m.congestion, "cubic");
  assert.equal(m.rttSamples, 3, "each sample's round trip counts");
  assert.equal(m.minRttMs, 50);
});

Deno.test("TCP_INFO: retransmissions the receiver reported as duplicates (D-SACK) are not loss", () => {
  const s = new LinkStats();
  s.addTcpInfo(0, "a", info(10, 10, 50_000, { dsackDups: 4 }));
  assert.equal(s.measurements(0).retransmitRatio, 6 / (10 * 1024));
  // The D-SACKs for the rest arrive by the next sample: those were spurious too.
  s.addTcpInfo(1000, "a", info(11, 10, 50_000, { dsackDups: 10 }));
  assert.equal(s.measurements(1000).retransmitRatio, 0);
});

Deno.test("TCP_INFO: a key that comes back with fewer segments is a new socket, counted from zero", () => {
  const s = new LinkStats();
  s.addTcpInfo(0, "a", info(30, 0));
  s.addTcpInfo(1000, "a", info(5, 50));
  assert.equal(s.measurements(1000).retransmitSampleBytes, 35 * MiB);
  assert.equal(s.measurements(1000).retransmitRatio, 50 / (35 * 1024));
  // After socketClosed the same key starts over too.
  s.socketClosed("a");
  s.addTcpInfo(2000, "a", info(1, 0));
  assert.equal(s.measurements(2000).retransmitSampleBytes, 36 * MiB);
});

Deno.test("TCP_INFO: losses while the socket keeps 3 or more segments queued are congestion, apart", () => {
  const s = new LinkStats();
  // 30 segments in flight over a 10 ms path: at an 11 ms round trip 2.7 are queued (path loss), at
  // 12 ms 5 are (the socket's own queue).
  const at = (rttUs: number) => ({ minRttUs: 10_000, sndCwndSegments: 30, rttUs });
  s.addTcpInfo(0, "a", info(10, 10, 11_000, at(11_000)));
  s.addTcpInfo(1000, "a", info(20, 110, 12_000, at(12_000)));
  const m = s.measurements(1000);
  assert.equal(m.retransmitRatio, 10 / (10 * 1024));
  assert.equal(m.retransmitSampleSegments, 10 * 1024);
  assert.equal(m.queuedRetransmitRatio, 100 / (10 * 1024));
  assert.equal(m.queuedSampleSegments, 10 * 1024);
  // Without a window or a minimum round trip the interval cannot be classified: it counts as the path's.
  s.addTcpInfo(2000, "b", info(10, 10, 12_000, { minRttUs: undefined }));
  assert.equal(s.measurements(2000).retransmitRatio, 20 / (20 * 1024));
});

Deno.test("TCP_INFO from kernels without byte counters: segments times the MSS measure the window", () => {
  const s = new LinkStats();
  s.addTcpInfo(0, "a", {
    state: 1,
    rttUs: 1000,
    sndMssBytes: 1000,
    segsOut: 10_000,
    totalRetransSegments: 20,
  });
  const m = s.measurements(0);
  assert.equal(m.retransmitSampleBytes, 10_000_000);
  assert.equal(m.retransmitRatio, 0.002);
});

Deno.test("the retransmit ratio covers the last minute of traffic, then drops what is older", () => {
  const s = new LinkStats();
  // 1 GiB with 10 000 segments lost, then 32 MiB a second without loss: within the minute all counts.
  const lost = 10_000;
  s.addTcpInfo(0, "a", info(1024, lost));
  for (let i = 1; i <= 16; i++) s.addTcpInfo(i * 1000, "a", info(1024 + 32 * i, lost));
  let m = s.measurements(16_000);
  assert.equal(m.retransmitSampleBytes, 1536 * MiB);
  assert.equal(m.retransmitRatio, lost / (1536 * 1024));
  // Past the minute the lossy gigabyte goes, as what is left still holds 256 MiB (and older lossless
  // seconds with it, as long as 256 MiB remain).
  s.addTcpInfo(70_000, "a", info(1568, lost));
  m = s.measurements(70_000);
  assert.equal(m.retransmitRatio, 0);
  assert.ok(m.retransmitSampleBytes >= 256 * MiB && m.retransmitSampleBytes < 1024 * MiB);
});

Deno.test("a slow link's retransmit ratio holds 256 MiB however long they took, and idle, it stands", () => {
  const s = new LinkStats();
  // 1 MiB every 10 s, one segment in 1024 lost: 1000 s for 100 MiB, all of it in the window.
  for (let i = 1; i <= 100; i++) s.addTcpInfo(i * 10_000, "a", info(i, i));
  let m = s.measurements(1_000_000);
  assert.equal(m.retransmitSampleBytes, 100 * MiB);
  assert.equal(m.retransmitRatio, 1 / 1024);
  m = s.measurements(10 * 3600_000);
  assert.equal(m.retransmitRatio, 1 / 1024, "hours later, without traffic");
});
