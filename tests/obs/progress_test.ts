/** src/obs/progress.ts: figures, the state machine, and throttled notifications, on an injected clock. */
import assert from "node:assert/strict";
import { TransferProgress, type TransferSnapshot } from "../../src/obs/progress.ts";

const MiB = 1024 * 1024;
const START = Date.UTC(2026, 0, 1, 12, 0, 0);

/** A progress record on a manual clock; advance with clock.ms = ... */
function progress(over: { sizeBytes?: number; streams?: number; notifyEveryMs?: number } = {}) {
  const clock = { ms: START };
  const p = new TransferProgress(
    {
      id: "t1",
      direction: "send",
      source: "/data/disk.img",
      peer: "b",
      destination: "disk.img",
      sizeBytes: over.sizeBytes ?? 8 * MiB,
      codec: "zstd",
      chunkBytes: MiB,
      streams: over.streams ?? 2,
    },
    () => clock.ms,
    over.notifyEveryMs ?? 200,
  );
  return { p, clock };
}

function record(p: TransferProgress): TransferSnapshot[] {
  const seen: TransferSnapshot[] = [];
  p.subscribe((s) => seen.push(s));
  return seen;
}

Deno.test("a new transfer is connecting with nothing done", () => {
  const { p } = progress();
  const s = p.snapshot();
  assert.equal(s.state, "connecting");
  assert.equal(s.bytesDone, 0);
  assert.equal(s.percent, 0);
  assert.equal(s.ratio, 1);
  assert.equal(s.startedAt, new Date(START).toISOString());
  assert.equal(s.finishedAt, undefined);
  assert.deepEqual(s.streams.map((x) => [x.index, x.state, x.bytes]), [[0, "open", 0], [1, "open", 0]]);
});

Deno.test("chunkDone adds up bytes, wire bytes, ratio, percent and per-stream figures", () => {
  const { p, clock } = progress();
  p.setState("running");
  clock.ms += 100;
  p.chunkDone(0, MiB, MiB / 4);
  clock.ms += 100;
  p.chunkDone(1, MiB, MiB / 2);
  clock.ms += 100;
  p.chunkDone(0, MiB, MiB / 4);

  const s = p.snapshot();
  assert.equal(s.bytesDone, 3 * MiB);
  assert.equal(s.wireBytes, MiB);
  assert.equal(s.ratio, 3);
  assert.equal(s.percent, 37.5);
  assert.equal(s.elapsedMs, 300);
  assert.equal(s.averageBytesPerSec, (3 * MiB * 1000) / 300);
  assert.deepEqual(
    s.streams.map((x) => ({ bytes: x.bytes, wireBytes: x.wireBytes, frames: x.frames })),
    [{ bytes: 2 * MiB, wireBytes: MiB / 2, frames: 2 }, { bytes: MiB, wireBytes: MiB / 2, frames: 1 }],
  );
});

Deno.test("a lost stream shows as lost", () => {
  const { p } = progress({ streams: 3 });
  p.streamLost(1);
  assert.deepEqual(p.snapshot().streams.map((s) => s.state), ["open", "lost", "open"]);
});

Deno.test("an empty file is 0% until completed, then 100%", () => {
  const { p } = progress({ sizeBytes: 0 });
  p.setState("running");
  assert.equal(p.snapshot().percent, 0);
  p.setState("completed");
  assert.equal(p.snapshot().percent, 100);
});

Deno.test("a terminal state is final: later states and errors are ignored", () => {
  const { p, clock } = progress();
  p.setState("running");
  p.setState("committing");
  assert.equal(p.terminal, false);
  clock.ms += 5000;
  p.setState("completed");
  assert.equal(p.terminal, true);

  clock.ms += 1000;
  p.setState("failed", { code: "late", message: "too late" });
  p.setState("running");
  const s = p.snapshot();
  assert.equal(s.state, "completed");
  assert.equal(s.error, undefined);
  assert.equal(s.finishedAt, new Date(START + 5000).toISOString());
  assert.equal(s.elapsedMs, 5000, "the clock stops at the end");
});

Deno.test("a failure keeps its error; a later cancel does not replace it", () => {
  const { p } = progress();
  p.setState("running");
  p.setState("failed", { code: "peer_lost", message: "all streams to the peer were lost" });
  p.setState("cancelled", { code: "cancelled", message: "by request" });
  assert.equal(p.snapshot().state, "failed");
  assert.deepEqual(p.snapshot().error, { code: "peer_lost", message: "all streams to the peer were lost" });
});

Deno.test("a finished transfer reports no current rate but keeps its average", () => {
  const { p, clock } = progress();
  p.setState("running");
  for (let i = 0; i < 8; i++) {
    clock.ms += 100;
    p.chunkDone(i % 2, MiB, MiB);
  }
  assert.ok(p.snapshot().bytesPerSec > 0);
  p.setState("completed");
  const s = p.snapshot();
  assert.equal(s.bytesPerSec, 0);
  assert.ok(s.streams.every((x) => x.bytesPerSec === 0));
  assert.equal(s.averageBytesPerSec, (8 * MiB * 1000) / 800);
});

Deno.test("progress notifications are throttled; state changes notify at once", () => {
  const { p, clock } = progress({ notifyEveryMs: 200 });
  const seen = record(p);

  p.setState("running"); // immediate
  assert.deepEqual(seen.map((s) => s.state), ["running"]);

  clock.ms += 50;
  p.chunkDone(0, MiB, MiB); // 50 ms after the last notification: held back
  clock.ms += 100;
  p.chunkDone(1, MiB, MiB); // 150 ms: held back
  assert.equal(seen.length, 1);

  clock.ms += 50;
  p.chunkDone(0, MiB, MiB); // 200 ms: notified, with everything so far
  assert.equal(seen.length, 2);
  assert.equal(seen[1].bytesDone, 3 * MiB);

  clock.ms += 10;
  p.streamLost(1); // immediate
  assert.equal(seen.length, 3);
  assert.equal(seen[2].streams[1].state, "lost");

  clock.ms += 10;
  p.setState("completed"); // immediate, however soon after the last one
  assert.deepEqual(seen.map((s) => s.state), ["running", "running", "running", "completed"]);
});

Deno.test("a flood of chunks gives one notification per interval", () => {
  const { p, clock } = progress({ sizeBytes: 1000 * MiB, notifyEveryMs: 200 });
  p.setState("running");
  const seen = record(p);
  for (let i = 0; i < 1000; i++) {
    clock.ms += 1;
    p.chunkDone(0, MiB, MiB);
  }
  assert.equal(seen.length, 5, "1000 ms of chunks at most every 200 ms");
  assert.deepEqual(seen.map((s) => s.bytesDone), [200, 400, 600, 800, 1000].map((n) => n * MiB));
});

Deno.test("an unsubscribed listener hears nothing more; others still do", () => {
  const { p } = progress();
  const a: string[] = [], b: string[] = [];
  const stopA = p.subscribe((s) => a.push(s.state));
  p.subscribe((s) => b.push(s.state));
  p.setState("running");
  stopA();
  p.setState("completed");
  assert.deepEqual(a, ["running"]);
  assert.deepEqual(b, ["running", "completed"]);
});

Deno.test("setting a state after the end notifies no one", () => {
  const { p } = progress();
  p.setState("cancelled");
  const seen = record(p);
  p.setState("running");
  p.setState("failed", { code: "x", message: "y" });
  assert.equal(seen.length, 0);
});

Deno.test("ETA: bytes left at the current rate, or at the forecast rate scaled by the ratio so far", () => {
  const { p, clock } = progress({ sizeBytes: 8 * MiB });
  assert.equal(p.snapshot().eta, undefined, "not running yet");
  p.setState("running");
  assert.equal(p.snapshot().eta, undefined, "no rate yet");
  clock.ms += 1000;
  p.chunkDone(0, 2 * MiB, MiB); // 2 MiB raw in 1 s, compressed 2:1
  clock.ms += 1000;
  p.chunkDone(1, 2 * MiB, MiB);
  const current = p.snapshot().eta!;
  assert.equal(current.basis, "current");
  assert.equal(Math.round(current.ms), Math.round((4 * MiB * 1000) / p.snapshot().bytesPerSec));
  // The link is forecast to carry 1 MiB/s of wire bytes: 2 MiB/s of raw bytes at this ratio.
  p.forecast = () => ({ bytesPerSec: MiB, predictor: "ewma(0.3)" });
  assert.deepEqual(p.snapshot().eta, { ms: 2000, basis: "forecast", predictor: "ewma(0.3)" });
  p.setState("completed");
  assert.equal(p.snapshot().eta, undefined, "done");
});
