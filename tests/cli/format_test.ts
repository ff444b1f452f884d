import assert from "node:assert/strict";
import type { AgentInfo, TransferSnapshot } from "../../src/cli/client.ts";
import { formatBytes, formatDuration, formatEta, formatRate, table } from "../../src/cli/format.ts";
import { infoText } from "../../src/cli/info.ts";
import { progressLine, ProgressReporter, summary } from "../../src/cli/progress_bar.ts";
import { transferDetails, transfersTable } from "../../src/cli/status.ts";

const MiB = 1024 * 1024;

function snap(over: Partial<TransferSnapshot> = {}): TransferSnapshot {
  return {
    id: "3f2a9c1e-0000-4000-8000-000000000000",
    direction: "send",
    state: "running",
    source: "/data/a/disk.img",
    peer: "b",
    destination: "images/disk.img",
    sizeBytes: 32 * MiB,
    bytesDone: 8 * MiB,
    wireBytes: 4 * MiB,
    ratio: 2,
    bytesPerSec: 4e6,
    averageBytesPerSec: 2e6,
    eta: { ms: (24 * MiB * 1000) / 4e6, basis: "current" },
    percent: 25,
    codec: "zstd",
    chunkBytes: MiB,
    streams: [0, 1].map((index) => ({
      index,
      state: "open" as const,
      bytes: 4 * MiB,
      wireBytes: 2 * MiB,
      frames: 4,
      bytesPerSec: 2e6,
    })),
    retransmits: 0,
    startedAt: "2025-01-01T00:00:00.000Z",
    elapsedMs: 4000,
    ...over,
  };
}

Deno.test("formatBytes uses binary units", () => {
  assert.equal(formatBytes(0), "0 B");
  assert.equal(formatBytes(1023), "1023 B");
  assert.equal(formatBytes(1536), "1.5 KiB");
  assert.equal(formatBytes(13.5 * MiB), "13.5 MiB");
  assert.equal(formatBytes(1.25 * 1024 * MiB), "1.25 GiB");
});

Deno.test("formatRate uses decimal MB/s; formatDuration scales its unit", () => {
  assert.equal(formatRate(118_250_000), "118.3 MB/s");
  assert.equal(formatRate(0), "0.0 MB/s");
  assert.equal(formatDuration(410), "0.41 s");
  assert.equal(formatDuration(12_345), "12.3 s");
  assert.equal(formatDuration(125_000), "2m05s");
  assert.equal(formatDuration(3_720_000), "1h02m");
});

Deno.test("formatEta: the agent's time left, unknown without one", () => {
  assert.equal(formatEta(snap({ eta: { ms: 60_000, basis: "current" } })), "1:00");
  assert.equal(formatEta(snap({ eta: { ms: 4_000_000, basis: "forecast", predictor: "last" } })), "1:06:40");
  assert.equal(formatEta(snap({ eta: undefined })), "--:--");
});

Deno.test("progressLine: bar, percent, bytes, rate, ETA, streams; the state when not running", () => {
  assert.equal(
    progressLine(snap(), 80),
    "[###------------]  25.0%    8.0 MiB / 32.0 MiB    4.0 MB/s  ETA 0:07  2 streams",
  );
  assert.equal(progressLine(snap(), 80).length, 79);
  const committing = progressLine(snap({ state: "committing", percent: 100 }), 200);
  assert.match(committing, /^committing {2}\[#{30}\] 100\.0%/);
  assert.ok(!committing.includes("ETA"), committing);
  const lost = snap({ streams: [snap().streams[0], { ...snap().streams[1], state: "lost" }] });
  assert.match(progressLine(lost), /1\/2 streams$/);
  assert.match(progressLine(snap({ percent: 0 }), 20), /^\[-{10}\]/); // the bar keeps its least width
});

Deno.test("summary of a completed transfer: state, bytes, time, average rate, ratio, destination, streams", () => {
  const text = summary(snap({ state: "completed", bytesDone: 32 * MiB, percent: 100 }));
  const [first, ...rest] = text.split("\n");
  assert.equal(first, "completed: 32.0 MiB in 4.00 s, average 2.0 MB/s, ratio 2.00 (codec zstd)");
  assert.ok(rest.includes("  destination  b:images/disk.img"), text);
  assert.ok(rest.includes("  streams      #0 4.0 MiB, #1 4.0 MiB"), text);
  assert.ok(!text.includes("retransmits"));
});

Deno.test("summary of a failed transfer shows how far it got; default destination is the source's name", () => {
  const text = summary(snap({ state: "failed", destination: "", retransmits: 3 }));
  assert.match(text, /^failed: 8\.0 MiB of 32\.0 MiB in 4\.00 s/);
  assert.match(text, /destination {2}b:disk\.img$/m);
  assert.match(text, /retransmits {2}3$/m);
});

Deno.test("ProgressReporter off a terminal prints a line at most every everyMs", () => {
  let now = 0;
  const out: string[] = [];
  const r = new ProgressReporter((t) => out.push(t), { tty: false, now: () => now, everyMs: 2000 });
  for (now = 0; now <= 5000; now += 500) r.update(snap());
  r.end();
  assert.equal(out.length, 3); // at 0, 2000 and 4000
  assert.ok(out.every((l) => l.endsWith("\n") && !l.includes("\r")));
});

Deno.test("ProgressReporter on a terminal redraws one line and ends it once", () => {
  const out: string[] = [];
  const r = new ProgressReporter((t) => out.push(t), { tty: true, columns: 40 });
  r.update(snap());
  r.update(snap({ percent: 50 }));
  r.end();
  r.end();
  assert.equal(out.length, 3);
  assert.ok(
    out.slice(0, 2).every((l) => l.startsWith("\r") && l.endsWith("\x1b[K") && l.length === 1 + 39 + 3),
  );
  assert.equal(out[2], "\n");
});

Deno.test("table pads every column but the last", () => {
  assert.equal(table([["a", "bb", "c"], ["ccc", "d", "e"]]), "a    bb  c\nccc  d   e");
});

Deno.test("transfersTable: short ids and one row per transfer", () => {
  assert.equal(transfersTable([]), "no transfers");
  const lines = transfersTable([snap(), snap({ id: "abcdef12-x", direction: "receive", state: "completed" })])
    .split("\n");
  assert.equal(lines.length, 3);
  assert.match(lines[0], /^ID\s+DIR\s+STATE\s+DONE\s+RATE\s+PEER\s+FILE$/);
  assert.match(
    lines[1],
    /^3f2a9c1e\s+send\s+running\s+25\.0%\s+4\.0 MB\/s\s+b\s+\/data\/a\/disk\.img → images\/disk\.img$/,
  );
  assert.match(lines[2], /^abcdef12\s+receive\s+completed\s+25\.0%\s+2\.0 MB\/s/); // average rate once finished
});

Deno.test("transferDetails lists the streams and the error", () => {
  const text = transferDetails(
    snap({ state: "failed", error: { code: "peer_unreachable", message: "gone" } }),
  );
  assert.match(text, /^stream 1\s+open, 4\.0 MiB in 4 frames, 2\.0 MB\/s$/m);
  assert.match(text, /^error\s+peer_unreachable: gone$/m);
});

Deno.test("infoText: capabilities, and the reasons for absent ones", () => {
  const info: AgentInfo = {
    version: "0.1.0",
    agentId: "a",
    protocolVersion: 1,
    api: "127.0.0.1:7700",
    data: "0.0.0.0:7701",
    roots: ["/srv/a"],
    peers: { b: "10.0.0.2:7701" },
    defaults: { streams: 4, chunkBytes: MiB, codec: "none" },
    libraries: { zstd: "1.5.4", lz4: "1.9.4" },
    codecs: ["none", "lz4"],
    rdma: { available: false, devices: [], reason: "no RDMA device found" },
    onnxRuntime: { available: false, reason: "libonnxruntime.so.1 not found", path: "/x" },
  };
  const text = infoText(info);
  for (
    const want of [
      /^agent\s+a, version 0\.1\.0, protocol 1$/m,
      /^peers\s+b=10\.0\.0\.2:7701$/m,
      /^codecs\s+none, lz4$/m,
      /^libraries\s+zstd 1\.5\.4, lz4 1\.9\.4$/m,
      /^rdma\s+none: no RDMA device found$/m,
      /^onnx runtime\s+unavailable: libonnxruntime\.so\.1 not found$/m,
    ]
  ) assert.match(text, want);
  const rich = infoText({
    ...info,
    rdma: {
      available: true,
      devices: [{
        name: "mlx5_0",
        maxMrSize: 1,
        ports: [{ port: 1, linkLayer: "Ethernet", state: "active", activeMtu: 4096 }],
      }],
    },
    onnxRuntime: { available: true, version: "1.30.0", path: "/ort.so" },
  });
  assert.match(rich, /^rdma\s+mlx5_0 \(port 1 active\)$/m);
  assert.match(rich, /^onnx runtime\s+1\.30\.0 \(\/ort\.so\)$/m);
});
