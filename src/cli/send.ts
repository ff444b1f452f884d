/** `dwcp send FILE --to PEER[:PATH]`: starts a transfer through the local agent and follows it. */
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { type CodecName, CODECS } from "../../ffi/codec.ts";
import { TERMINAL_STATES } from "../obs/progress.ts";
import { LIMITS } from "../transport/receiver.ts";
import { type ApiClient, ApiRequestError, type TransferSnapshot } from "./client.ts";
import { apiClient, CLIENT_OPTIONS, CLIENT_OPTIONS_HELP, UsageError } from "./common.ts";
import { parsePeerSpec } from "./peer_spec.ts";
import { ProgressReporter, summary } from "./progress_bar.ts";

export const SEND_USAGE = `usage: dwcp send FILE --to PEER[:PATH] [options]

Sends FILE (a path inside one of the agent's roots) to PEER through the local agent, shows progress
on stderr and a summary when it ends. Ctrl-C cancels the transfer.

  --to PEER[:PATH]       PEER: a configured peer name or HOST:PORT of its data port; PATH: where the
                         file goes there (relative to its first root; default: FILE's name)
                         e.g. b:/srv/images/disk.img, 10.0.0.2:7701, 10.0.0.2:7701:images/
  --streams N            parallel TCP streams, 1..${LIMITS.maxStreams} (default: the agent's setting)
  --codec NAME           ${CODECS.join(" | ")} (default: the agent's setting)
  --overwrite            replace PATH if it exists on the peer
  --no-wait              print the transfer id and exit without following it

${CLIENT_OPTIONS_HELP}

exit status: 0 completed, 1 failed or cancelled (or the agent refused), 2 usage error, 130 interrupted`;

function parseStreams(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!(n >= 1 && n <= LIMITS.maxStreams)) {
    throw new UsageError(`--streams "${text}" must be a whole number 1..${LIMITS.maxStreams}`);
  }
  return n;
}

function parseCodec(text: string | undefined): CodecName | undefined {
  if (text === undefined || (CODECS as readonly string[]).includes(text)) {
    return text as CodecName | undefined;
  }
  throw new UsageError(`--codec "${text}" is not one of ${CODECS.join(", ")}`);
}

const isTerminal = (s: TransferSnapshot) => TERMINAL_STATES.includes(s.state);

/** Follows the event stream to the end; a stream that breaks early is settled with one GET. */
async function follow(
  client: ApiClient,
  first: TransferSnapshot,
  onUpdate: (s: TransferSnapshot) => void,
  signal: AbortSignal,
): Promise<TransferSnapshot> {
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
      "no-wait": { type: "boolean" },
    },
  });
  if (values.help) {
    console.log(SEND_USAGE);
    return 0;
  }
  if (positionals.length !== 1) {
    throw new UsageError(`give exactly one FILE to send (got ${positionals.length})`);
  }
  if (!values.to) throw new UsageError("--to PEER[:PATH] is required");
  const { peer, path } = parsePeerSpec(values.to);
  const streams = parseStreams(values.streams);
  const codec = parseCodec(values.codec);
  const client = apiClient(values);

  // Ctrl-C from here on cancels the transfer; a second one exits at once.
  const interrupt = new AbortController();
  const onSigint = () => interrupt.signal.aborted ? Deno.exit(130) : interrupt.abort();
  Deno.addSignalListener("SIGINT", onSigint);
  try {
    const started = await client.startTransfer({
      source: resolve(positionals[0]),
      peer,
      destination: path,
      streams,
      codec,
      overwrite: values.overwrite,
    });
    if (values["no-wait"] && !interrupt.signal.aborted) {
      console.log(values.json ? JSON.stringify(started) : started.id);
      return 0;
    }
    const tty = Deno.stderr.isTerminal();
    const reporter = new ProgressReporter((text) => Deno.stderr.writeSync(new TextEncoder().encode(text)), {
      tty,
      columns: tty ? Deno.consoleSize().columns || undefined : undefined, // 0 when the terminal has no size
    });
    let final: TransferSnapshot | undefined;
    try {
      final = await follow(client, started, (s) => {
        if (!values.json) reporter.update(s);
      }, interrupt.signal);
    } catch (err) {
      if (!interrupt.signal.aborted) throw err;
    } finally {
      reporter.end();
    }
    if (!final) return await cancel(client, started.id, values.json);
    console.log(values.json ? JSON.stringify(final) : summary(final));
    if (final.state === "completed") return 0;
    if (final.error) console.error(`error ${final.error.code}: ${final.error.message}`);
    return 1;
  } finally {
    Deno.removeSignalListener("SIGINT", onSigint);
  }
}

async function cancel(client: ApiClient, id: string, json?: boolean): Promise<number> {
  console.error(`interrupted: cancelling transfer ${id}`);
  try {
    const s = await client.cancelTransfer(id);
    console.log(json ? JSON.stringify(s) : summary(s));
  } catch (err) {
    if (!(err instanceof ApiRequestError)) throw err;
    console.error(`error ${err.code}: ${err.message}`);
  }
  return 130;
}
