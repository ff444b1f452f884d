/**
 * `dwcp migrate`, `dwcp vm` and `dwcp demo`: the progress line, event lines and report as pure functions,
 * the event-stream follower against a stand-in agent, usage errors, and the real demo end to end (two
 * agents, a guest booted under QEMU and migrated there and back).
 */
import assert from "node:assert/strict";
import type { MigrationSnapshot } from "../../src/cli/client.ts";
import { dataMib } from "../../src/cli/demo.ts";
import {
  formatMs,
  migrationEventLine,
  migrationProgressLine,
  migrationReport,
  parseMaxRate,
  watchMigration,
} from "../../src/cli/migrate.ts";
import { ProgressReporter } from "../../src/cli/progress_bar.ts";
import { deadApiUrl, runCli, withClient } from "./support.ts";

const MiB = 1024 * 1024;
const ID = "8405120f-fcdf-4b17-ae7b-3a69b635eda1";

function snap(over: Partial<MigrationSnapshot> = {}): MigrationSnapshot {
  return {
    id: ID,
    vm: "demo",
    peer: "b",
    phase: "precopy",
    startedAt: "2025-01-01T00:00:00.000Z",
    elapsedMs: 1500,
    bytesSent: 40 * MiB,
    bytesPerSec: 150e6,
    remainingBytes: 60 * MiB,
    dirtyBytesPerSec: 1.5e6,
    passes: 2,
    streams: 4,
    events: [{ at: "2025-01-01T00:00:01.260Z", phase: "precopy", message: "copying memory" }],
    ...over,
  };
}

const COMPLETED = snap({
  phase: "completed",
  elapsedMs: 2010,
  bytesSent: 114.1 * MiB,
  bytesPerSec: 0,
  remainingBytes: 0,
  passes: 3,
  expectedDowntimeMs: 200,
  downtimeMs: 231,
  observedDowntimeMs: 267,
  totalTimeMs: 720,
});

Deno.test("migrationProgressLine: phase, sent, rate, left, dirty rate, pass; '-' before QEMU reports", () => {
  assert.equal(
    migrationProgressLine(snap()),
    "precopy      40.0 MiB sent  150.0 MB/s   60.0 MiB left  dirty   1.5 MB/s  pass 2",
  );
  const early = snap({
    phase: "prepare",
    bytesSent: 0,
    bytesPerSec: 0,
    remainingBytes: undefined,
    dirtyBytesPerSec: undefined,
    passes: undefined,
  });
  assert.equal(
    migrationProgressLine(early),
    "prepare           0 B sent    0.0 MB/s          - left  dirty          -  pass -",
  );
  // The same length whatever the figures, so a redrawn line does not jitter.
  assert.equal(migrationProgressLine(early).length, migrationProgressLine(snap()).length);
});

Deno.test("migrationProgressLine leaves out the dirty rate, then the memory left, on narrow terminals", () => {
  const full = migrationProgressLine(snap(), Infinity);
  assert.match(full, /dirty/);
  const narrower = migrationProgressLine(snap(), full.length);
  assert.doesNotMatch(narrower, /dirty/);
  assert.match(narrower, /left {2}pass 2$/);
  const narrowest = migrationProgressLine(snap(), 40);
  assert.equal(narrowest, "precopy      40.0 MiB sent  150.0 MB/s  pass 2");
});

Deno.test("migrationEventLine: time since the start, phase, message", () => {
  const s = snap();
  assert.equal(migrationEventLine(s.events[0], s.startedAt), "   +1.26 s  precopy     copying memory");
  assert.equal(
    migrationEventLine(
      { at: "2025-01-01T00:01:05.000Z", phase: "switchover", message: "paused" },
      s.startedAt,
    ),
    "    +1m05s  switchover  paused",
  );
});

Deno.test("migrationReport: phase, times, both downtimes, bytes, passes, streams", () => {
  assert.equal(
    migrationReport(COMPLETED),
    [
      "completed: VM demo → b in 2.01 s (QEMU 0.72 s)",
      `  migration    ${ID}`,
      "  downtime     231 ms (QEMU), 267 ms observed",
      "  sent         114.1 MiB, average 166.2 MB/s",
      "  passes       3",
      "  streams      4",
    ].join("\n"),
  );
  const failed = migrationReport(snap({
    phase: "failed",
    passes: undefined,
    error: { code: "destination_lost", message: "gone" },
  }));
  assert.match(failed, /^failed: VM demo → b in 1\.50 s\n/);
  assert.match(failed, /downtime {5}-\n/);
  assert.match(failed, /sent {9}40\.0 MiB, average 28\.0 MB\/s\n/);
  assert.match(failed, /passes {7}-\n/);
  assert.doesNotMatch(failed, /destination_lost/); // the caller shows the error on stderr
});

Deno.test("formatMs, parseMaxRate and the demo's data size", () => {
  assert.equal(formatMs(12.4), "12 ms");
  assert.equal(formatMs(9999), "9999 ms");
  assert.equal(formatMs(12_300), "12.3 s");
  assert.equal(parseMaxRate(undefined), undefined);
  assert.equal(parseMaxRate("100"), 100e6);
  assert.equal(parseMaxRate("2.5"), 2.5e6);
  for (const bad of ["1", "0", "-5", "fast", "1e9", ""]) {
    assert.throws(() => parseMaxRate(bad), { name: "UsageError" }, bad);
  }
  assert.equal(dataMib(256), 128);
  assert.equal(dataMib(128), 48); // half would leave the guest's kernel short of memory
  assert.equal(dataMib(64), 1);
  assert.equal(dataMib(1024), 512);
});

Deno.test("ProgressReporter.print puts a line between redraws on a terminal, plain lines elsewhere", () => {
  let out = "";
  const tty = new ProgressReporter((t) => void (out += t), { tty: true, columns: 40 });
  tty.print("first");
  tty.draw(() => "status 1");
  tty.print("event");
  tty.draw((columns) => `status ${columns}`);
  tty.end();
  assert.equal(out, "first\n\rstatus 1\x1b[K\r\x1b[Kevent\n\rstatus 40\x1b[K\n");

  out = "";
  let now = 0;
  const log = new ProgressReporter((t) => void (out += t), { tty: false, now: () => now, everyMs: 1000 });
  log.draw((columns) => `status ${columns}`);
  log.print("event");
  now = 500;
  log.draw(() => "throttled");
  now = 1000;
  log.draw(() => "status again");
  log.end();
  assert.equal(out, "status 80\nevent\nstatus again\n");
});

function sse(snaps: MigrationSnapshot[]): Response {
  const body = snaps.map((s) => `event: ${s.phase}\ndata: ${JSON.stringify(s)}\n\n`).join("");
  return new Response(body, { headers: { "content-type": "text/event-stream" } });
}

Deno.test("watchMigration prints each event once, draws progress, and returns the terminal snapshot", async () => {
  const switchover = { at: "2025-01-01T00:00:01.970Z", phase: "switchover" as const, message: "paused" };
  const done = { at: "2025-01-01T00:00:02.000Z", phase: "completed" as const, message: "runs there" };
  const first = snap({ phase: "prepare", events: [], bytesSent: 0 });
  const stream = [
    snap({ bytesSent: 0, bytesPerSec: 0 }),
    snap(),
    snap({ bytesSent: 80 * MiB }),
    snap({ phase: "switchover", events: [...snap().events, switchover] }),
    { ...COMPLETED, events: [...snap().events, switchover, done] },
  ];
  const paths: string[] = [];
  await withClient((req) => {
    paths.push(new URL(req.url).pathname);
    return sse(stream);
  }, async (client) => {
    let out = "";
    const final = await watchMigration(client, first, {
      signal: new AbortController().signal,
      show: true,
      write: (t) => void (out += t),
    });
    assert.equal(final.phase, "completed");
    assert.equal(final.downtimeMs, 231);
    const lines = out.trimEnd().split("\n");
    assert.deepEqual(lines, [
      // not on a terminal: no progress line before bytes move, then one (throttled) for precopy
      "   +1.26 s  precopy     copying memory",
      migrationProgressLine(snap()),
      "   +1.97 s  switchover  paused",
      "   +2.00 s  completed   runs there",
    ]);
  });
  assert.deepEqual(paths, [`/v1/migrations/${ID}/events`]);
});

Deno.test("watchMigration settles a stream that ends early with one GET, and says when it cannot", async () => {
  for (
    const [answer, expect] of [[COMPLETED, "completed"], [snap(), /ended while it was in precopy/]] as const
  ) {
    await withClient((req) => {
      const path = new URL(req.url).pathname;
      return path.endsWith("/events") ? sse([snap()]) : Response.json(answer);
    }, async (client) => {
      const follow = watchMigration(client, snap(), { signal: new AbortController().signal, show: false });
      if (typeof expect === "string") assert.equal((await follow).phase, expect);
      else await assert.rejects(follow, expect);
    });
  }
});

Deno.test("CLI usage errors exit 2 and point at --help; --help exits 0", async () => {
  const cases: [string[], RegExp][] = [
    [["migrate", "demo"], /dwcp migrate: --to PEER is required\nRun "dwcp migrate --help"/],
    [["migrate", "--to", "b"], /give exactly one VM to migrate \(got 0\)/],
    [["migrate", "demo", "--to", "b", "--streams", "0"], /--streams "0" must be a whole number 1\.\.64/],
    [["migrate", "demo", "--to", "b", "--max-rate", "0.5"], /--max-rate "0\.5" must be a number of MB\/s/],
    [["migrate", "demo", "--to", "b", "--multifd", "99"], /--multifd "99" must be a whole number 0\.\./],
    [["migrate", "demo", "--to", "b", "--dedupe", "--no-dedupe"], /--dedupe or --no-dedupe, not both/],
    [
      ["migrate", "demo", "--to", "b", "--channel", "pigeon"],
      /--channel "pigeon" is not one of auto, direct/,
    ],
    [["vm", "start", "demo"], /dwcp vm: --kernel FILE is required/],
    [
      ["vm", "start", "demo", "--kernel", "k", "--memory", "12"],
      /--memory "12" must be a whole number 64\.\./,
    ],
    [
      ["vm", "start", "demo", "--kernel", "k", "--accel", "hvf"],
      /--accel "hvf" is not one of auto, kvm, tcg/,
    ],
    [["vm", "start", "Bad_Name", "--kernel", "k"], /"Bad_Name" is not a VM name/],
    [["vm"], /give a subcommand: start, list or stop/],
    [["vm", "stop"], /give exactly one VM NAME to stop/],
    [["demo", "--dirty", "lots"], /--dirty "lots" must be a whole number/],
  ];
  for (const [args, message] of cases) {
    const r = await runCli(...args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, message, args.join(" "));
    assert.equal(r.stdout, "");
  }
  for (
    const args of [["migrate", "--help"], ["vm", "--help"], ["vm", "start", "--help"], ["demo", "--help"]]
  ) {
    const r = await runCli(...args);
    assert.equal(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stdout, /^usage: dwcp /);
  }
});

Deno.test("migrate and vm list against an agent that is not there exit 1 and say so", async () => {
  const api = deadApiUrl();
  for (const args of [["migrate", "demo", "--to", "b"], ["vm", "list"]]) {
    const r = await runCli(...args, "--api", api);
    assert.equal(r.code, 1, r.stderr);
    assert.match(
      r.stderr,
      /cannot reach the dwcp agent at http:\/\/127\.0\.0\.1:\d+: .*start it with `dwcp agent`/,
    );
  }
});

Deno.test("dwcp demo migrates a guest a → b → a with its heartbeat intact (QEMU, slow)", async () => {
  const r = await runCli("demo", "--memory", "128", "--dirty", "1");
  const all = `--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`;
  assert.equal(r.code, 0, all);
  assert.match(r.stdout, /^ {2}a → b {2}completed in /m, all);
  assert.match(r.stdout, /^ {2}b → a {2}completed in /m, all);
  assert.match(r.stdout, /never went backwards, same boot id [0-9a-f-]{36}/, all);
  assert.match(r.stdout, /^demo passed$/m, all);
  // Everything the demo made is gone: its temporary directory names appear in the output.
  for (const dir of new Set(r.stdout.match(/\/\S*dwcp-demo-[^/\s]+/g) ?? [])) {
    assert.equal(await Deno.stat(dir).then(() => true, () => false), false, `${dir} was left behind`);
  }
});
