/** `dwcp send FILE --to PEER[:PATH]`: starts a transfer through the local agent and follows it. */
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { CODEC_SETTINGS } from "../encoding/codec_policy.ts";
import { TERMINAL_STATES } from "../obs/progress.ts";
import { LIMITS } from "../transport/receiver.ts";
import type { ApiClient, TransferSnapshot } from "./client.ts";
import {
  apiClient,
  CLIENT_OPTIONS,
  CLIENT_OPTIONS_HELP,
  exactlyOne,
  oneOf,
  UsageError,
  wholeNumber,
} from "./common.ts";
import { runJob } from "./follow_job.ts";
import { parsePeerSpec } from "./peer_spec.ts";
import { stderrReporter, summary } from "./progress_bar.ts";

export const SEND_USAGE = `usage: dwcp send FILE --to PEER[:PATH] [options]

Sends FILE (a path inside one of the agent's roots) to PEER through the local agent, shows progress
on stderr and a summary when it ends. Ctrl-C cancels the transfer.

  --to PEER[:PATH]       PEER: a configured peer name or HOST:PORT of its data port; PATH: where the
                         file goes there (relative to its first root; default: FILE's name)
                         e.g. b:/srv/images/disk.img, 10.0.0.2:7701, 10.0.0.2:7701:images/
  --streams N            parallel TCP streams, 1..${LIMITS.maxStreams} (default: the agent's setting)
  --codec NAME           ${CODEC_SETTINGS.join(" | ")} (default: the agent's setting; auto: chosen per chunk)
  --overwrite            replace PATH if it exists on the peer
  --base OLDFILE         an older version of FILE (inside the agent's roots) that the peer holds at
                         PATH: pages travel as deltas against it if the peer's copy has the same
                         content hash, else whole; a PATH that is this base is replaced without
                         --overwrite
  --no-wait              print the transfer id and exit without following it

${CLIENT_OPTIONS_HELP}

exit status: 0 completed, 1 failed or cancelled (or the agent refused), 2 usage error, 130 interrupted`;

const isTerminal = (s: TransferSnapshot) => TERMINAL_STATES.includes(s.state);

/**
 * Follows the event stream to the end, drawing progress on stderr (unless `show` is false); a stream that
 * breaks early is settled with one GET.
 */
async function follow(
  client: ApiClient,
  first: TransferSnapshot,
  show: boolean,
  signal: AbortSignal,
): Promise<TransferSnapshot> {
  const reporter = stderrReporter();
  const onUpdate = (s: TransferSnapshot) => {
    if (show) reporter.update(s);
  };
  try {
    let last = first;
    onUpdate(last);
    for await (const s of client.follow(first.id, signal)) onUpdate(last = s);
    if (!isTerminal(last)) last = await client.getTransfer(first.id);
    if (!isTerminal(last)) {
      throw new Error(
        `the event stream of transfer ${first.id} ended while it was ${last.state}; ` +
          `follow it with \`dwcp status ${first.id}\``,
      );
    }
    return last;
  } finally {
    reporter.end();
  }
}

export async function sendCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      ...CLIENT_OPTIONS,
      to: { type: "string" },
      streams: { type: "string" },
      codec: { type: "string" },
      overwrite: { type: "boolean" },
      base: { type: "string" },
      "no-wait": { type: "boolean" },
    },
  });
  if (values.help) {
    console.log(SEND_USAGE);
    return 0;
  }
  const file = exactlyOne(positionals, "FILE to send");
  if (!values.to) throw new UsageError("--to PEER[:PATH] is required");
  const { peer, path } = parsePeerSpec(values.to);
  const streams = wholeNumber("--streams", values.streams, 1, LIMITS.maxStreams);
  const codec = oneOf("--codec", values.codec, CODEC_SETTINGS);
  const client = apiClient(values);
  return await runJob({
    kind: "transfer",
    json: values.json,
    start: () =>
      client.startTransfer({
        source: resolve(file),
        peer,
        destination: path,
        streams,
        codec,
        overwrite: values.overwrite,
        base: values.base === undefined ? undefined : resolve(values.base),
      }),
    onStart: (started, signal) => {
      if (!values["no-wait"] || signal.aborted) return;
      console.log(values.json ? JSON.stringify(started) : started.id);
      return 0;
    },
    follow: (started, signal) => follow(client, started, !values.json, signal),
    cancel: (id) => client.cancelTransfer(id),
    report: summary,
    succeeded: (s) => s.state === "completed",
  });
}
