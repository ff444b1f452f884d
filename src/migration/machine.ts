/**
 * The live-migration state machine, sans IO: events in (what QEMU, the transport and the destination
 * agent report, and ticks of time), actions out (what the orchestrator must do). Deterministic, so a
 * scenario test can replay any sequence without QEMU.
 *
 *   prepare ──▶ precopy ──▶ switchover ──▶ commit ──▶ completed
 *      │           │  │         │
 *      │           │  └──▶ postcopy ──────────────────▶ completed | failed (fatal: no rollback)
 *      └───────────┴────────────┴──▶ rollback ──▶ failed | cancelled
 *
 * Safety: the source guest is paused by QEMU at switchover and only resumed (rollback) when the
 * destination cannot be running it: either the source never finished sending its state, or the
 * destination confirmed it stopped its copy. Otherwise the source stays paused and the failure says so.
 * The source is quit only after the destination reports the guest running.
 *
 * Postcopy changes the invariant. Once `migrate-start-postcopy` is accepted the destination may run the
 * guest while the source still holds the pages it has not sent: neither copy alone is the guest. So from
 * then on the machine never resumes the source nor stops the destination on its own account; a failure
 * is fatal for the guest (QEMU's postcopy recovery is not driven by the agents) and the error says so.
 * One exception, decided by QEMU: a failure while QEMU was still switching leaves its migration `failed`
 * (QEMU 7.2 pauses a postcopy that runs, `postcopy-paused`; it fails one only when postcopy_start did
 * not get the device state out, and then resumes the source itself), so the machine waits for that
 * verdict and rolls back on `failed`. The source is quit only once the destination's QEMU reports the
 * incoming migration completed: it holds every page then.
 */

export type Phase =
  | "prepare"
  | "precopy"
  | "switchover"
  | "postcopy"
  | "commit"
  | "rollback"
  | "completed"
  | "failed"
  | "cancelled";

export interface MigrationPolicy {
  /** Dirty-bitmap passes after which auto-converge (vCPU throttling) is switched on. */
  autoConvergeAfterPasses: number;
  /**
   * Passes after which a migration that still has not converged switches to postcopy, where the request
   * allows it; below abortAfterPasses, so that postcopy is tried before the abort.
   */
  postcopyAfterPasses: number;
  /** Passes after which a migration that still has not converged is aborted. */
  abortAfterPasses: number;
  /** Longest precopy before abort, whatever the passes. */
  maxPrecopyMs: number;
  /** Longest wait for the destination to prepare, and for it to run the guest after switchover. */
  prepareTimeoutMs: number;
  switchoverTimeoutMs: number;
}

export const DEFAULT_POLICY: MigrationPolicy = {
  autoConvergeAfterPasses: 4,
  postcopyAfterPasses: 8,
  abortAfterPasses: 30,
  maxPrecopyMs: 10 * 60_000,
  prepareTimeoutMs: 60_000,
  switchoverTimeoutMs: 60_000,
};

/** What query-migrate on the source says, reduced to what the machine decides on. */
export interface SourceProgress {
  status: string;
  passes: number;
  remainingBytes: number;
}

export type MigrationEvent =
  | { type: "start" }
  | { type: "destinationPrepared" }
  | { type: "sourceStarted" }
  | { type: "sourceProgress"; progress: SourceProgress }
  | { type: "destinationRunning" }
  /** QEMU accepted migrate-start-postcopy: from here the destination may run the guest. */
  | { type: "postcopyStarted" }
  /** The destination's QEMU has the whole state (every page): under postcopy, the end of the copy. */
  | { type: "destinationCompleted" }
  | { type: "destinationAborted" }
  | { type: "failure"; code: string; message: string }
  | { type: "cancel" }
  | { type: "tick" };

export type MigrationAction =
  /** Ask the destination agent to start the incoming VM and a sink for the stream. */
  | { type: "prepareDestination" }
  /** Open the stream transfer and tell the source QEMU to migrate into it. */
  | { type: "startSource" }
  | { type: "enableAutoConverge" }
  /** migrate-start-postcopy; the orchestrator answers postcopyStarted once QEMU accepted it. */
  | { type: "startPostcopy" }
  /**
   * Under postcopy, after a failure: close the socket the source QEMU migrates into, so that QEMU rules
   * at once (a running postcopy pauses, a switch under way fails) rather than block on a full socket.
   */
  | { type: "closeSourceChannel" }
  /** Stop the source QEMU's migration (it keeps or resumes running). */
  | { type: "cancelSource" }
  /** Tell the destination to stop its incoming VM; it answers destinationAborted. */
  | { type: "abortDestination" }
  | { type: "resumeSource" }
  | { type: "quitSource" }
  /** Tell the destination the source is gone: the guest is its own now. */
  | { type: "finishDestination" }
  | { type: "report"; phase: Phase; message: string };

export interface MigrationState {
  phase: Phase;
  startedAtMs: number;
  phaseSinceMs: number;
  /** The source QEMU finished sending: from here the destination may run the guest. */
  sourceCompleted: boolean;
  autoConverge: boolean;
  /** The request allows postcopy (both QEMUs carry the postcopy-ram and return-path capabilities). */
  postcopyAllowed: boolean;
  /** startPostcopy was asked for, and not yet answered. */
  postcopyRequested: boolean;
  /** Under postcopy: what the destination has reported. */
  destinationRunning: boolean;
  destinationCompleted: boolean;
  /** A failure under postcopy that waits for the source QEMU's verdict: paused (fatal) or failed. */
  postcopyFailure?: { code: string; message: string; atMs: number };
  lastProgress?: SourceProgress;
  /** Why a rollback happened, and whether it was a cancel. */
  failure?: { code: string; message: string; cancelled: boolean };
}

export function initialState(nowMs: number, opts: { postcopyAllowed?: boolean } = {}): MigrationState {
  return {
    phase: "prepare",
    startedAtMs: nowMs,
    phaseSinceMs: nowMs,
    sourceCompleted: false,
    autoConverge: false,
    postcopyAllowed: opts.postcopyAllowed ?? false,
    postcopyRequested: false,
    destinationRunning: false,
    destinationCompleted: false,
  };
}

/** Why a failure under postcopy cannot be rolled back, appended to its message. */
const POSTCOPY_FATAL = "the migration was in postcopy: the guest runs on the destination and the " +
  "source holds pages it has not sent, so neither copy can go on alone and the guest is lost; both QEMUs " +
  "are left as they are for inspection (the source is not resumed, to never run two copies)";

const TERMINAL: Phase[] = ["completed", "failed", "cancelled"];

export function isTerminal(phase: Phase): boolean {
  return TERMINAL.includes(phase);
}

export interface Step {
  state: MigrationState;
  actions: MigrationAction[];
}

function enter(s: MigrationState, phase: Phase, nowMs: number): MigrationState {
  return { ...s, phase, phaseSinceMs: nowMs };
}

/** Starts a rollback: the destination is stopped first, the source resumed only once that is safe. */
function rollback(s: MigrationState, nowMs: number, code: string, message: string, cancelled: boolean): Step {
  if (s.phase === "rollback" || isTerminal(s.phase)) return { state: s, actions: [] };
  const state = { ...enter(s, "rollback", nowMs), failure: { code, message, cancelled } };
  const actions: MigrationAction[] = [{ type: "report", phase: "rollback", message }];
  // Even in prepare: startSource may be under way. Cancelling a migration that never started is harmless.
  if (!s.sourceCompleted) actions.push({ type: "cancelSource" });
  actions.push({ type: "abortDestination" });
  return { state, actions };
}

/** A failure once postcopy started: no rollback is possible, so the migration fails as it stands. */
function failPostcopy(s: MigrationState, nowMs: number, code: string, message: string): Step {
  const full = `${message}; ${POSTCOPY_FATAL}`;
  return {
    state: { ...enter(s, "failed", nowMs), failure: { code, message: full, cancelled: false } },
    actions: [{ type: "report", phase: "failed", message: full }],
  };
}

/**
 * A failure under postcopy: fatal at once when the source already sent everything, otherwise recorded
 * until the source QEMU says whether postcopy had really started (see the module comment).
 */
function onPostcopyFailure(s: MigrationState, nowMs: number, code: string, message: string): Step {
  if (s.sourceCompleted) return failPostcopy(s, nowMs, code, message);
  if (s.postcopyFailure) return { state: s, actions: [] };
  return {
    state: { ...s, postcopyFailure: { code, message, atMs: nowMs } },
    actions: [
      { type: "closeSourceChannel" },
      {
        type: "report",
        phase: "postcopy",
        message: `${message}; waiting for the source QEMU to tell whether postcopy had started`,
      },
    ],
  };
}

/** Under postcopy the copy ends when the destination runs the guest and its QEMU holds every page. */
function completePostcopy(s: MigrationState, nowMs: number): Step {
  if (!s.destinationRunning || !s.destinationCompleted) return { state: s, actions: [] };
  return {
    state: enter(s, "completed", nowMs),
    actions: [
      { type: "quitSource" },
      { type: "finishDestination" },
      { type: "report", phase: "completed", message: "postcopy done: the guest runs on the destination" },
    ],
  };
}

function finishRollback(s: MigrationState, nowMs: number, resumed: boolean): Step {
  const f = s.failure!;
  const phase: Phase = f.cancelled ? "cancelled" : "failed";
  const message = resumed
    ? `${f.message}; the guest runs on the source`
    : `${f.message}; the destination could not confirm it stopped the guest, so the source stays paused ` +
      `to avoid two running copies: check the destination, then resume the source by hand`;
  return {
    state: { ...enter(s, phase, nowMs), failure: { ...f, message } },
    actions: [...(resumed ? [{ type: "resumeSource" } as const] : []), { type: "report", phase, message }],
  };
}

export function step(s: MigrationState, ev: MigrationEvent, nowMs: number, policy = DEFAULT_POLICY): Step {
  if (isTerminal(s.phase)) return { state: s, actions: [] };
  switch (ev.type) {
    case "start":
      return s.phase === "prepare"
        ? { state: s, actions: [{ type: "prepareDestination" }] }
        : { state: s, actions: [] };
    case "destinationPrepared":
      if (s.phase !== "prepare") return { state: s, actions: [] };
      return { state: s, actions: [{ type: "startSource" }] };
    case "sourceStarted":
      if (s.phase !== "prepare") return { state: s, actions: [] };
      return {
        state: enter(s, "precopy", nowMs),
        actions: [{ type: "report", phase: "precopy", message: "copying memory" }],
      };
    case "sourceProgress":
      return onProgress({ ...s, lastProgress: ev.progress }, ev.progress, nowMs, policy);
    case "postcopyStarted":
      return enterPostcopy(s, nowMs);
    case "destinationCompleted":
      if (s.phase !== "postcopy") return { state: s, actions: [] };
      return completePostcopy({ ...s, destinationCompleted: true }, nowMs);
    case "destinationRunning":
      if (s.phase === "postcopy") return completePostcopy({ ...s, destinationRunning: true }, nowMs);
      if (s.phase !== "switchover") return { state: s, actions: [] };
      return {
        state: enter(s, "completed", nowMs),
        actions: [
          { type: "quitSource" },
          { type: "finishDestination" },
          { type: "report", phase: "completed", message: "the guest runs on the destination" },
        ],
      };
    case "destinationAborted":
      // The destination confirmed its copy is stopped: resuming the source is safe.
      return s.phase === "rollback" ? finishRollback(s, nowMs, true) : { state: s, actions: [] };
    case "failure":
      if (s.phase === "postcopy") return onPostcopyFailure(s, nowMs, ev.code, ev.message);
      if (s.phase === "rollback") {
        // The destination cannot confirm it stopped: resume only if it never got the whole state.
        return finishRollback(s, nowMs, !s.sourceCompleted);
      }
      return rollback(s, nowMs, ev.code, ev.message, false);
    case "cancel":
      // Too late once the switchover or postcopy is under way: the destination may run the guest.
      if (s.sourceCompleted || s.phase === "postcopy") return { state: s, actions: [] };
      return rollback(s, nowMs, "cancelled", "cancelled by request", true);
    case "tick":
      return onTick(s, nowMs, policy);
  }
}

function onProgress(s: MigrationState, p: SourceProgress, nowMs: number, policy: MigrationPolicy): Step {
  // Once QEMU has handed over the whole state, that stays true whatever else happens (a rollback under
  // way included): the destination may hold a runnable guest from then on.
  if (p.status === "completed" && (s.phase === "rollback" || s.sourceCompleted)) {
    return { state: { ...s, sourceCompleted: true }, actions: [] };
  }
  if (s.phase === "postcopy") {
    const pending = s.postcopyFailure;
    if (p.status === "completed") {
      const state = { ...s, sourceCompleted: true };
      return pending ? failPostcopy(state, nowMs, pending.code, pending.message) : { state, actions: [] };
    }
    // postcopy-paused: postcopy runs and QEMU lost the channel; it waits for a recovery the agents do
    // not drive.
    if (p.status === "postcopy-paused") {
      return failPostcopy(
        s,
        nowMs,
        pending?.code ?? "postcopy_failed",
        pending?.message ?? "the source QEMU's postcopy paused: it lost the destination",
      );
    }
    if ((p.status === "failed" || p.status === "cancelled") && !s.sourceCompleted) {
      return rollback(
        s,
        nowMs,
        pending?.code ?? "postcopy_start_failed",
        `${pending?.message ?? `the source QEMU migration ${p.status}`}; postcopy had not started (QEMU ` +
          `failed the switch before the destination had the guest's state, and resumes the source)`,
        false,
      );
    }
    return { state: s, actions: [] };
  }
  if (s.phase === "precopy" || s.phase === "switchover") {
    if ((p.status === "failed" || p.status === "cancelled") && !s.sourceCompleted) {
      // QEMU gave up before it handed over the whole state: the destination cannot run the guest.
      return rollback(
        s,
        nowMs,
        "source_failed",
        `the source QEMU migration ${p.status}`,
        false,
      );
    }
    if (p.status === "completed" && !s.sourceCompleted) {
      const state = { ...enter(s, "switchover", nowMs), sourceCompleted: true };
      return {
        state,
        actions: [{
          type: "report",
          phase: "switchover",
          message: "state sent; waiting for the destination to run the guest",
        }],
      };
    }
    if (s.phase === "precopy" && (p.status === "device" || p.status === "pre-switchover")) {
      return {
        state: enter(s, "switchover", nowMs),
        actions: [{ type: "report", phase: "switchover", message: "guest paused for the final copy" }],
      };
    }
  }
  if (s.phase === "precopy" && p.status === "postcopy-active") return enterPostcopy(s, nowMs);
  if (s.phase !== "precopy" || s.postcopyRequested) return { state: s, actions: [] };
  if (s.postcopyAllowed && p.passes >= policy.postcopyAfterPasses) {
    return startPostcopy(s, `not converged after ${p.passes} passes, even with auto-converge`);
  }
  if (p.passes >= policy.abortAfterPasses) {
    return rollback(
      s,
      nowMs,
      "not_converging",
      `memory still being dirtied faster than it can be sent after ${p.passes} passes ` +
        `(${p.remainingBytes} bytes remaining), even with auto-converge; raise downtimeLimitMs or the bandwidth, ` +
        `or allow postcopy`,
      false,
    );
  }
  if (!s.autoConverge && p.passes >= policy.autoConvergeAfterPasses) {
    return {
      state: { ...s, autoConverge: true },
      actions: [
        { type: "enableAutoConverge" },
        {
          type: "report",
          phase: "precopy",
          message: `not converged after ${p.passes} passes: throttling vCPUs (auto-converge)`,
        },
      ],
    };
  }
  return { state: s, actions: [] };
}

/** QEMU accepted migrate-start-postcopy (or already reports postcopy-active). */
function enterPostcopy(s: MigrationState, nowMs: number): Step {
  if (s.phase !== "precopy" || !s.postcopyRequested) return { state: s, actions: [] };
  return {
    state: { ...enter(s, "postcopy", nowMs), postcopyRequested: false },
    actions: [{
      type: "report",
      phase: "postcopy",
      message: "postcopy: the guest moves to the destination and fetches the pages it lacks from the " +
        "source; from here a failure cannot be rolled back and is fatal for the guest",
    }],
  };
}

function startPostcopy(s: MigrationState, why: string): Step {
  return {
    state: { ...s, postcopyRequested: true },
    actions: [
      { type: "startPostcopy" },
      { type: "report", phase: "precopy", message: `${why}: switching to postcopy` },
    ],
  };
}

function onTick(s: MigrationState, nowMs: number, policy: MigrationPolicy): Step {
  const inPhase = nowMs - s.phaseSinceMs;
  if (s.phase === "prepare" && inPhase > policy.prepareTimeoutMs) {
    return rollback(
      s,
      nowMs,
      "prepare_timeout",
      `the destination did not get ready within ${policy.prepareTimeoutMs} ms`,
      false,
    );
  }
  if (s.phase === "precopy" && inPhase > policy.maxPrecopyMs) {
    if (s.postcopyRequested) return { state: s, actions: [] };
    if (s.postcopyAllowed) return startPostcopy(s, `not converged within ${policy.maxPrecopyMs} ms`);
    return rollback(
      s,
      nowMs,
      "not_converging",
      `precopy did not converge within ${policy.maxPrecopyMs} ms`,
      false,
    );
  }
  if (s.phase === "switchover" && inPhase > policy.switchoverTimeoutMs) {
    return rollback(
      s,
      nowMs,
      "switchover_timeout",
      `the destination did not report the guest running within ${policy.switchoverTimeoutMs} ms`,
      false,
    );
  }
  const pending = s.postcopyFailure;
  if (s.phase === "postcopy" && pending && nowMs - pending.atMs > policy.switchoverTimeoutMs) {
    return failPostcopy(
      s,
      nowMs,
      pending.code,
      `${pending.message}; the source QEMU did not tell within ${policy.switchoverTimeoutMs} ms`,
    );
  }
  if (s.phase === "postcopy" && inPhase > policy.maxPrecopyMs) {
    return failPostcopy(
      s,
      nowMs,
      "postcopy_timeout",
      `postcopy did not complete within ${policy.maxPrecopyMs} ms`,
    );
  }
  if (s.phase === "rollback" && inPhase > policy.prepareTimeoutMs) {
    return finishRollback(s, nowMs, !s.sourceCompleted);
  }
  return { state: s, actions: [] };
}
