/** src/predict/traces.ts: mahimahi lines to bytes/s per bin, exact on handmade traces. */
import assert from "node:assert/strict";
import { binMahimahi, TraceBinner, TraceFormatError } from "../../src/predict/traces.ts";

Deno.test("a tiny trace bins exactly; repeated timestamps are several packets; the last bin is dropped", () => {
  // 10 ms bins: [0,10) holds 4 packets, [10,20) holds 3; the trace ends inside [20,30).
  const trace = binMahimahi("0\n0\n1\n5\n10\n10\n10\n25\n", 10);
  // 4 × 1500 bytes in 10 ms = 600 000 bytes/s; 3 × 1500 in 10 ms = 450 000 bytes/s.
  assert.deepEqual(trace.bytesPerSec, [600_000, 450_000]);
  assert.equal(trace.packets, 8);
  assert.equal(trace.durationMs, 25);
});

Deno.test("a gap in the trace is empty bins (an outage), not a shorter trace", () => {
  assert.deepEqual(binMahimahi("0\n35\n", 10).bytesPerSec, [150_000, 0, 0]);
});

Deno.test("one packet per ms is 1.5 MB/s (12 Mbit/s) in 1000 ms and in 100 ms bins", () => {
  const text = Array.from({ length: 2_001 }, (_, ms) => String(ms)).join("\n"); // 0 .. 2000
  assert.deepEqual(binMahimahi(text, 1_000).bytesPerSec, [1_500_000, 1_500_000]);
  const fine = binMahimahi(text, 100).bytesPerSec;
  assert.equal(fine.length, 20);
  assert.ok(fine.every((b) => b === 1_500_000));
});

Deno.test("streaming line by line, draining as it goes, gives the same bins as the whole text", () => {
  const text = "0\r\n2\r\n2\r\n7\r\n13\r\n19\r\n19\r\n19\r\n31\r\n44\r\n";
  const binner = new TraceBinner(10);
  const streamed: number[] = [];
  for (const line of text.split("\n")) {
    binner.addLine(line);
    streamed.push(...binner.takeBins());
  }
  assert.deepEqual(streamed, binMahimahi(text, 10).bytesPerSec);
  assert.deepEqual(streamed, [600_000, 600_000, 0, 150_000]);
  assert.deepEqual(binMahimahi(text.split("\n"), 10).bytesPerSec, streamed);
  assert.deepEqual(binner.takeBins(), []);
});

Deno.test("a bad line or a trace out of order is refused with its line number", () => {
  assert.throws(() => binMahimahi("0\n1\nabc\n", 10), (e: unknown) => {
    assert.ok(e instanceof TraceFormatError);
    assert.match(e.message, /^line 3: "abc" is not a millisecond timestamp/);
    return true;
  });
  assert.throws(() => binMahimahi("0\n5\n4\n", 10), /line 3: timestamp 4 comes after 5/);
  assert.throws(() => binMahimahi("1.5\n", 10), /line 1/);
  assert.throws(() => new TraceBinner(0), /binMs = 0/);
});

const sharedTrace = new URL("../../../shared/traces/mahimahi/Verizon-LTE-short.down", import.meta.url);
const haveShared = (() => {
  try {
    return Deno.statSync(sharedTrace).isFile;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "a real trace: every line is one packet, 140 s gives 140 one-second bins",
  ignore: !haveShared,
  fn: async () => {
    const text = await Deno.readTextFile(sharedTrace);
    const lines = text.split("\n").filter((l) => l.trim() !== "").length;
    const trace = binMahimahi(text, 1_000);
    assert.equal(trace.packets, lines);
    assert.equal(trace.durationMs, 140_000);
    assert.equal(trace.bytesPerSec.length, 140);
    // Every packet but the one at 140 000 ms (in the dropped, partial bin) is counted.
    const counted = trace.bytesPerSec.reduce((s, b) => s + b, 0) / 1_500;
    assert.equal(counted, lines - 1);
  },
});
