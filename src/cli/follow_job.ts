/**
 * What `dwcp send` and `dwcp migrate` share: a long job on the agent (a transfer, a migration) started,
 * followed to its end, reported, and judged into the exit status. Ctrl-C while it runs cancels the job and
 * exits 130; a second Ctrl-C exits at once.
 */
import { ApiRequestError } from "./client.ts";

/** What every job's snapshot has. */
export interface JobSnapshot {
  id: string;
  error?: { code: string; message: string };
}

/** How to start, follow, cancel, report and judge one kind of job. */
export interface Job<S extends JobSnapshot> {
  /** What the job is called in messages: "transfer", "migration". */
  kind: string;
  /** Print snapshots as JSON instead of their report. */
  json?: boolean;
  start(): Promise<S>;
  /** Runs once the job has started, before it is followed; a number ends the command with it. */
  onStart?(started: S, signal: AbortSignal): number | void;
  /** Follows the job to its terminal snapshot; may throw once `signal` aborts. */
  follow(started: S, signal: AbortSignal): Promise<S>;
  cancel(id: string): Promise<S>;
  /** The closing report (text); the error, if any, is shown apart on stderr. */
  report(s: S): string;
  succeeded(s: S): boolean;
}

/**
 * Starts the job and follows it to its end. Exit status: 0 when it succeeded, 1 when it ended otherwise,
 * 130 when Ctrl-C cancelled it.
 */
export async function runJob<S extends JobSnapshot>(job: Job<S>): Promise<number> {
  const print = (s: S) => console.log(job.json ? JSON.stringify(s) : job.report(s));
  // Ctrl-C from here on cancels the job; a second one exits at once.
  const interrupt = new AbortController();
  const onSigint = () => interrupt.signal.aborted ? Deno.exit(130) : interrupt.abort();
  Deno.addSignalListener("SIGINT", onSigint);
  try {
    const started = await job.start();
    const early = job.onStart?.(started, interrupt.signal);
    if (typeof early === "number") return early;
    let final: S | undefined;
    try {
      final = await job.follow(started, interrupt.signal);
    } catch (err) {
      if (!interrupt.signal.aborted) throw err;
    }
    if (!final) return await cancel(job, started.id, print);
    print(final);
    if (job.succeeded(final)) return 0;
    if (final.error) console.error(`error ${final.error.code}: ${final.error.message}`);
    return 1;
  } finally {
    Deno.removeSignalListener("SIGINT", onSigint);
  }
}

async function cancel<S extends JobSnapshot>(
  job: Job<S>,
  id: string,
  print: (s: S) => void,
): Promise<number> {
  console.error(`interrupted: cancelling ${job.kind} ${id}`);
  try {
    print(await job.cancel(id));
  } catch (err) {
    if (!(err instanceof ApiRequestError)) throw err;
    console.error(`error ${err.code}: ${err.message}`);
  }
  return 130;
}
