/**
 * The live-migration state machine, sans IO: events in (what QEMU, the transport and the destination
 * agent report, and ticks of time), actions out (what the orchestrator must do). Deterministic, so a
 * scenario test can replay any sequence without QEMU.
 *
 *   prepare ──▶ precopy ──▶ switchover ──▶ commit ──▶ completed
 *      │           │            │
 *      └───────────┴────────────┴──▶ rollback ──▶ failed | cancelled
 *
 * Safety: the source guest is paused by QEMU at switchover and only resumed (rollback) when the
 * destination cannot be running it: either the source never finished sending its state, or the
 * destination confirmed it stopped its copy. Otherwise the source stays paused and the failure says so.
 * The source is quit only after the destination reports the guest running.
 */

export type Phase =
  | "prepare"
  | "precopy"
  | "switchover"
  | "commit"
  | "rollback"
  | "completed"
  | "failed"
  | "cancelled";

export interface MigrationPolicy {
  /** Dirty-bitmap passes after which auto-converge (vCPU throttling) is switched on. */
  autoConvergeAfterPasses: number;
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
  lastProgress?: SourceProgress;
  /** Why a rollback happened, and whether it was a cancel. */
  failure?: { code: string; message: string; cancelled: boolean };
}

export function initialState(nowMs: number): MigrationState {
  return {
    phase: "prepare",
    startedAtMs: nowMs,
    phaseSinceMs: nowMs,
    sourceCompleted: false,
    autoConverge: false,
  };
}

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
    case "destinationRunning":
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
      if (s.phase === "rollback") {
        // The destination cannot confirm it stopped: resume only if it never got the whole state.
        return finishRollback(s, nowMs, !s.sourceCompleted);
      }
      return rollback(s, nowMs, ev.code, ev.message, false);
    case "cancel":
      if (s.sourceCompleted) return { state: s, actions: [] }; // too late: the switchover is under way
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
  if (s.phase !== "precopy") return { state: s, actions: [] };
  if (p.passes >= policy.abortAfterPasses) {
    return rollback(
      s,
      nowMs,
      "not_converging",
      `memory still being dirtied faster than it can be sent after ${p.passes} passes ` +
        `(${p.remainingBytes} bytes remaining), even with auto-converge; raise downtimeLimitMs or the bandwidth`,
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
  if (s.phase === "rollback" && inPhase > policy.prepareTimeoutMs) {
    return finishRollback(s, nowMs, !s.sourceCompleted);
  }
  return { state: s, actions: [] };
}
