/**
 * `dwcp migrate VM --to PEER`: live-migrates a VM of the local agent to a peer, follows it with a progress
 * line and its phase events, and prints a report when it ends. The follow and report code is shared with
 * `dwcp demo`.
 */
import { parseArgs } from "node:util";
import { MAX_MULTIFD_CHANNELS } from "../migration/incoming.ts";
import { isTerminal } from "../migration/machine.ts";
import { LIMITS } from "../transport/receiver.ts";
import type { ApiClient, MigrationRequest, MigrationSnapshot } from "./client.ts";
import { MIGRATION_CHANNELS, type MigrationChannel } from "../migration/service.ts";
import {
  apiClient,
  CLIENT_OPTIONS,
  CLIENT_OPTIONS_HELP,
  exactlyOne,
  UsageError,
  wholeNumber,
} from "./common.ts";
import { runJob } from "./follow_job.ts";
import { formatBytes, formatDuration, formatRate } from "./format.ts";
import { ProgressReporter, stderrReporter } from "./progress_bar.ts";

export const MIGRATE_USAGE = `usage: dwcp migrate VM --to PEER [options]

Live-migrates VM (a guest running on the local agent) to PEER: the peer's agent starts an incoming copy,
memory is copied while the guest runs, then the guest pauses for the final copy and resumes there.
Progress and the migration's phase events go to stderr, a report to stdout when it ends. Ctrl-C cancels
the migration (the guest keeps running here), unless it is already switching over.

  --to PEER              a configured peer name or HOST:PORT of the peer's data port
  --streams N            parallel TCP streams, 1..${LIMITS.maxStreams} (default: the agent's setting)
  --downtime-limit MS    the longest pause QEMU may plan for the switchover, 1..60000 (default 300)
  --max-rate MBPS        cap QEMU's migration rate, in MB/s (10^6 bytes/s; default: no cap)
  --no-auto-converge     never throttle the guest's vCPUs to make a busy guest converge
  --postcopy             if precopy does not converge even throttled, switch to postcopy (the guest runs
                         on PEER and fetches pages it still lacks; the source is then never resumed)
  --multifd N            QEMU multifd channels, 0..${MAX_MULTIFD_CHANNELS} (default: the link mode's); not with
                         --postcopy
  --dedupe, --no-dedupe  send only the pages PEER's chunk store lacks, or never (default: on internet links)
  --channel MODE         how QEMU's stream travels: direct (QEMU writes into the agents' authenticated
                         connection), streams (the agents carry it; needed for dedupe, postcopy, multifd
                         and TLS), or auto (default: direct on a datacenter link when nothing needs streams)

${CLIENT_OPTIONS_HELP}

exit status: 0 completed, 1 failed or cancelled (or the agent refused), 2 usage error, 130 interrupted`;

/** The server's floor for maxBytesPerSec. */
const MIN_RATE_BYTES = 1024 * 1024;

/** --max-rate in MB/s (decimal, as the rates are shown) to bytes per second. */
export function parseMaxRate(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const mbps = /^\d+(\.\d+)?$/.test(text) ? Number(text) : NaN;
  const bytes = Math.round(mbps * 1e6);
  if (!(bytes >= MIN_RATE_BYTES)) {
    throw new UsageError(
      `--max-rate "${text}" must be a number of MB/s, at least ${(MIN_RATE_BYTES / 1e6).toFixed(2)}`,
    );
  }
  return bytes;
}

/** Milliseconds as "12 ms" below 10 s, as formatDuration above. */
export function formatMs(ms: number): string {
  return ms < 10_000 ? `${Math.round(ms)} ms` : formatDuration(ms);
}

const optBytes = (n: number | undefined) => n === undefined ? "-" : formatBytes(n);
const optRate = (n: number | undefined) => n === undefined ? "-" : formatRate(n);

/**
 * The live status line: phase, bytes sent, rate, memory left, how fast the guest dirties it, pass. QEMU's
 * figures show "-" until it reports them. Numbers are padded so the line keeps its length; on a narrow
 * terminal the dirty rate, then the memory left, are left out.
 */
export function migrationProgressLine(s: MigrationSnapshot, columns = Infinity): string {
  const phase = s.phase.padEnd(10);
  const sent = `${formatBytes(s.bytesSent).padStart(9)} sent`;
  const rate = formatRate(s.bytesPerSec).padStart(10);
  const left = `${optBytes(s.remainingBytes).padStart(9)} left`;
  const dirty = `dirty ${optRate(s.dirtyBytesPerSec).padStart(10)}`;
  const pass = `pass ${s.passes ?? "-"}`;
  const candidates = [[phase, sent, rate, left, dirty, pass], [phase, sent, rate, left, pass], [
    phase,
    sent,
    rate,
    pass,
  ]];
  const lines = candidates.map((fields) => fields.join("  "));
  return lines.find((l) => l.length < columns) ?? lines[lines.length - 1];
}

/** One entry of the migration's events, timed from its start: "   +1.23 s  precopy     copying memory". */
export function migrationEventLine(e: MigrationSnapshot["events"][number], startedAt: string): string {
  const since = Math.max(0, Date.parse(e.at) - Date.parse(startedAt));
  return `  ${`+${formatDuration(since)}`.padStart(8)}  ${e.phase.padEnd(10)}  ${e.message}`;
}

/** The closing report (several lines); the error, if any, is for the caller to show. */
export function migrationReport(s: MigrationSnapshot): string {
  const qemu = s.totalTimeMs === undefined ? "" : ` (QEMU ${formatDuration(s.totalTimeMs)})`;
  const downtime = s.downtimeMs === undefined && s.observedDowntimeMs === undefined
    ? "-"
    : `${s.downtimeMs === undefined ? "-" : formatMs(s.downtimeMs)} (QEMU), ` +
      `${s.observedDowntimeMs === undefined ? "-" : formatMs(s.observedDowntimeMs)} observed`;
  const seconds = (s.totalTimeMs ?? s.elapsedMs) / 1000;
  const average = seconds > 0 ? `, average ${formatRate(s.bytesSent / seconds)}` : "";
  return [
    `${s.phase}: VM ${s.vm} → ${s.peer} in ${formatDuration(s.elapsedMs)}${qemu}`,
    `  migration    ${s.id}`,
    `  downtime     ${downtime}`,
    `  sent         ${formatBytes(s.bytesSent)}${average}`,
    `  passes       ${s.passes ?? "-"}`,
    `  streams      ${s.streams}${
      s.channel === "direct" ? " (direct channel: QEMU writes the connection)" : ""
    }`,
  ].join("\n");
}

/**
 * Follows a migration's event stream to its end: draws the progress line and prints each new event on
 * stderr (unless `show` is false). A stream that breaks early is settled with one GET. Throws when
 * `signal` aborts.
 */
export async function watchMigration(
  client: ApiClient,
  first: MigrationSnapshot,
  opts: { signal: AbortSignal; show: boolean; write?: (text: string) => void },
): Promise<MigrationSnapshot> {
  const reporter = opts.write ? new ProgressReporter(opts.write, { tty: false }) : stderrReporter();
  const tty = reporter.opts.tty;
  // The agent keeps the latest 64 events, so they are told apart by content rather than position.
  const seen = new Set<string>();
  const onUpdate = (s: MigrationSnapshot) => {
    if (!opts.show) return;
    for (const e of s.events) {
      const key = `${e.at}\n${e.phase}\n${e.message}`;
      if (seen.has(key)) continue;
      seen.add(key);
      reporter.print(migrationEventLine(e, s.startedAt));
    }
    // Logs get the whole line, and none before bytes move (their lines are throttled, so each should tell).
    if (isTerminal(s.phase) || (!tty && s.bytesSent === 0)) return;
    reporter.draw((columns) => tty ? migrationProgressLine(s, columns) : migrationProgressLine(s));
  };
  let last = first;
  try {
    onUpdate(last);
    for await (const s of client.followMigration(first.id, opts.signal)) onUpdate(last = s);
    if (!isTerminal(last.phase)) onUpdate(last = await client.getMigration(first.id));
  } finally {
    reporter.end();
  }
  if (!isTerminal(last.phase)) {
    throw new Error(
      `the event stream of migration ${first.id} ended while it was in ${last.phase}; ` +
        `see GET /v1/migrations/${first.id}`,
    );
  }
  return last;
}

/** --channel: one of MIGRATION_CHANNELS, or undefined (the agent's default, auto). */
function channelChoice(text: string | undefined): MigrationChannel | undefined {
  if (text === undefined) return undefined;
  const channel = MIGRATION_CHANNELS.find((c) => c === text);
  if (!channel) throw new UsageError(`--channel "${text}" is not one of ${MIGRATION_CHANNELS.join(", ")}`);
  return channel;
}

/** --dedupe / --no-dedupe: asked for, refused, or left to the link's mode (undefined). */
function dedupeChoice(on: boolean | undefined, off: boolean | undefined): boolean | undefined {
  if (on && off) throw new UsageError("give --dedupe or --no-dedupe, not both");
  return on ? true : off ? false : undefined;
}

export async function migrateCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      ...CLIENT_OPTIONS,
      to: { type: "string" },
      streams: { type: "string" },
      "downtime-limit": { type: "string" },
      "max-rate": { type: "string" },
      "no-auto-converge": { type: "boolean" },
      postcopy: { type: "boolean" },
      multifd: { type: "string" },
      dedupe: { type: "boolean" },
      "no-dedupe": { type: "boolean" },
      channel: { type: "string" },
    },
  });
  if (values.help) {
    console.log(MIGRATE_USAGE);
    return 0;
  }
  const vm = exactlyOne(positionals, "VM to migrate");
  if (!values.to?.trim()) throw new UsageError("--to PEER is required");
  const req: MigrationRequest = {
    vm,
    peer: values.to,
    streams: wholeNumber("--streams", values.streams, 1, LIMITS.maxStreams),
    downtimeLimitMs: wholeNumber("--downtime-limit", values["downtime-limit"], 1, 60_000),
    maxBytesPerSec: parseMaxRate(values["max-rate"]),
    autoConverge: values["no-auto-converge"] ? false : undefined,
    postcopy: values.postcopy || undefined,
    multifdChannels: wholeNumber("--multifd", values.multifd, 0, MAX_MULTIFD_CHANNELS),
    dedupe: dedupeChoice(values.dedupe, values["no-dedupe"]),
    channel: channelChoice(values.channel),
  };
  const client = apiClient(values);
  return await runJob({
    kind: "migration",
    json: values.json,
    start: () => client.startMigration(req),
    onStart: (started) => {
      if (!values.json) {
        console.error(
          `migration ${started.id}: VM ${started.vm} → ${started.peer}, ${started.streams} streams`,
        );
      }
    },
    follow: (started, signal) => watchMigration(client, started, { signal, show: !values.json }),
    cancel: (id) => client.cancelMigration(id),
    report: migrationReport,
    succeeded: (s) => s.phase === "completed",
  });
}
