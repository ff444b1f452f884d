/**
 * src/migration/machine.ts as transcripts: each scenario feeds events at given times and states, line
 * by line, the phase the machine is in afterwards and the actions it asked for (a report is written
 * `report:<phase>`). Then a seeded fuzz throws random event sequences at it and checks the safety rules
 * from the machine's doc comment: the source is quit only once the destination runs the guest, resumed
 * only when the destination cannot be running it, never both, and nothing happens after the end.
 */
import assert from "node:assert/strict";
import {
  DEFAULT_POLICY,
  initialState,
  isTerminal,
  type MigrationAction,
  type MigrationEvent,
  type MigrationPolicy,
  type MigrationState,
  type Phase,
  step,
} from "../../src/migration/machine.ts";
import { mulberry32, pick, randInt } from "../transport/prng.ts";

// ── Events, named so that transcripts read as prose ──────────────────────────────────────────────────

const start: MigrationEvent = { type: "start" };
const prepared: MigrationEvent = { type: "destinationPrepared" };
const started: MigrationEvent = { type: "sourceStarted" };
const running: MigrationEvent = { type: "destinationRunning" };
const aborted: MigrationEvent = { type: "destinationAborted" };
const cancel: MigrationEvent = { type: "cancel" };
const postcopyStarted: MigrationEvent = { type: "postcopyStarted" };
const destCompleted: MigrationEvent = { type: "destinationCompleted" };
const tick: MigrationEvent = { type: "tick" };

/** What query-migrate on the source said. */
function progress(status: string, passes = 0, remainingBytes = 0): MigrationEvent {
  return { type: "sourceProgress", progress: { status, passes, remainingBytes } };
}

function failure(code: string, message = `${code} happened`): MigrationEvent {
  return { type: "failure", code, message };
}

function label(ev: MigrationEvent): string {
  switch (ev.type) {
    case "sourceProgress":
      return `progress(${ev.progress.status},${ev.progress.passes})`;
    case "failure":
      return `failure(${ev.code})`;
    default:
      return ev.type;
  }
}

function actionLabel(a: MigrationAction): string {
  return a.type === "report" ? `report:${a.phase}` : a.type;
}

// ── The driver ───────────────────────────────────────────────────────────────────────────────────────

/** One line of a transcript: at this time, this event; afterwards this phase, and these actions. */
type Line = [atMs: number, event: MigrationEvent, phase: Phase, actions: string[]];

interface Played {
  state: MigrationState;
  /** Every action, in order, with the time of the event that caused it. */
  actions: { atMs: number; action: MigrationAction }[];
}

/** A machine started at t=0 that events are fed to one at a time. */
class Machine {
  state: MigrationState;
  readonly actions: { atMs: number; action: MigrationAction }[] = [];

  constructor(readonly policy: MigrationPolicy = DEFAULT_POLICY, startMs = 0, postcopyAllowed = false) {
    this.state = initialState(startMs, { postcopyAllowed });
  }

  feed(atMs: number, ev: MigrationEvent): MigrationAction[] {
    const { state, actions } = step(this.state, ev, atMs, this.policy);
    this.state = state;
    for (const action of actions) this.actions.push({ atMs, action });
    return actions;
  }

  get phase(): Phase {
    return this.state.phase;
  }

  /** The reports' messages, in order. */
  reports(): string[] {
    return this.actions.flatMap(({ action }) => action.type === "report" ? [action.message] : []);
  }

  count(type: MigrationAction["type"]): number {
    return this.actions.filter(({ action }) => action.type === type).length;
  }
}

function format(atMs: number, ev: MigrationEvent, phase: Phase, actions: string[]): string {
  return `t=${atMs} ${label(ev)} → ${phase} [${actions.join(", ")}]`;
}

/**
 * Feeds the transcript's events to `m` and asserts the whole transcript at once, so that a failure
 * shows the expected and the actual transcript side by side.
 */
function play(m: Machine, lines: Line[]): Played {
  const expected: string[] = [];
  const actual: string[] = [];
  for (const [atMs, ev, phase, actions] of lines) {
    expected.push(format(atMs, ev, phase, actions));
    const out = m.feed(atMs, ev);
    actual.push(format(atMs, ev, m.phase, out.map(actionLabel)));
  }
  assert.deepEqual(actual, expected);
  return { state: m.state, actions: m.actions };
}

/** The common opening: the destination is prepared and the source is sending, at t=30. */
function inPrecopy(policy: MigrationPolicy = DEFAULT_POLICY, postcopyAllowed = false): Machine {
  const m = new Machine(policy, 0, postcopyAllowed);
  play(m, [
    [0, start, "prepare", ["prepareDestination"]],
    [10, prepared, "prepare", ["startSource"]],
    [30, started, "precopy", ["report:precopy"]],
  ]);
  return m;
}

/** Precopy, then QEMU finished sending at t=120: the source is paused, the destination has it all. */
function sourceCompleted(policy: MigrationPolicy = DEFAULT_POLICY): Machine {
  const m = inPrecopy(policy);
  play(m, [
    [100, progress("device", 3), "switchover", ["report:switchover"]],
    [120, progress("completed", 3), "switchover", ["report:switchover"]],
  ]);
  assert.equal(m.state.sourceCompleted, true);
  return m;
}

// ── Happy path ───────────────────────────────────────────────────────────────────────────────────────

Deno.test("happy path: prepare, precopy, switchover, then the source is quit once the destination runs", () => {
  const m = new Machine();
  const { state } = play(m, [
    [0, start, "prepare", ["prepareDestination"]],
    [10, prepared, "prepare", ["startSource"]],
    [30, started, "precopy", ["report:precopy"]],
    [1_000, progress("active", 1, 900), "precopy", []],
    [2_000, progress("active", 2, 300), "precopy", []],
    [3_000, progress("active", 3, 40), "precopy", []],
    [3_100, progress("device", 3, 10), "switchover", ["report:switchover"]],
    [3_200, progress("completed", 3), "switchover", ["report:switchover"]],
    [3_250, progress("completed", 3), "switchover", []],
    [3_300, progress("completed", 3), "switchover", []],
    [3_400, tick, "switchover", []],
    [3_500, running, "completed", ["quitSource", "finishDestination", "report:completed"]],
  ]);
  assert.equal(state.sourceCompleted, true);
  assert.equal(state.autoConverge, false);
  assert.equal(state.failure, undefined);
  assert.equal(m.count("resumeSource"), 0);
  assert.equal(m.reports().at(-1), "the guest runs on the destination");
});

Deno.test("happy path: QEMU's 'completed' is reported once however often it is seen", () => {
  const m = inPrecopy();
  for (let t = 100; t < 1_000; t += 100) m.feed(t, progress("completed", 2));
  const switchoverReports = m.actions.filter(({ action }) =>
    action.type === "report" && action.phase === "switchover"
  );
  assert.equal(switchoverReports.length, 1);
  assert.equal(m.phase, "switchover");
  assert.equal(m.state.sourceCompleted, true);
});

Deno.test("happy path: the source is not quit before the destination reports the guest running", () => {
  const m = inPrecopy();
  play(m, [
    [100, progress("device", 2), "switchover", ["report:switchover"]],
    [150, progress("pre-switchover", 2), "switchover", []],
    [200, progress("completed", 2), "switchover", ["report:switchover"]],
    [300, tick, "switchover", []],
  ]);
  assert.equal(m.count("quitSource"), 0);
  play(m, [[400, running, "completed", ["quitSource", "finishDestination", "report:completed"]]]);
  // quitSource comes first, then the destination is told the guest is its own.
  assert.deepEqual(m.actions.slice(-3).map(({ action }) => action.type), [
    "quitSource",
    "finishDestination",
    "report",
  ]);
});

Deno.test("destinationRunning outside switchover does nothing (no quitSource in prepare or precopy)", () => {
  const m = new Machine();
  play(m, [
    [0, start, "prepare", ["prepareDestination"]],
    [5, running, "prepare", []],
    [10, prepared, "prepare", ["startSource"]],
    [30, started, "precopy", ["report:precopy"]],
    [40, running, "precopy", []],
    [50, progress("active", 1), "precopy", []],
  ]);
  assert.equal(m.count("quitSource"), 0);
});

Deno.test("the opening ignores out-of-order events: start, destinationPrepared and sourceStarted only in prepare", () => {
  const m = inPrecopy();
  play(m, [
    [40, start, "precopy", []],
    [50, prepared, "precopy", []],
    [60, started, "precopy", []],
  ]);
  assert.equal(m.state.phaseSinceMs, 30, "a repeated sourceStarted does not restart the precopy clock");
});

// ── Cancel ───────────────────────────────────────────────────────────────────────────────────────────

Deno.test("cancel during precopy: stop the source's migration and the destination, resume once it confirms", () => {
  const m = inPrecopy();
  const { state } = play(m, [
    [1_000, progress("active", 1), "precopy", []],
    [1_500, cancel, "rollback", ["report:rollback", "cancelSource", "abortDestination"]],
    [1_600, progress("cancelling", 1), "rollback", []],
    [1_700, cancel, "rollback", []],
    [1_800, aborted, "cancelled", ["resumeSource", "report:cancelled"]],
  ]);
  assert.equal(state.failure?.code, "cancelled");
  assert.equal(state.failure?.cancelled, true);
  assert.match(m.reports().at(-1)!, /the guest runs on the source/);
});

Deno.test("cancel in prepare: the source migration is cancelled too, in case startSource was under way", () => {
  const m = new Machine();
  play(m, [
    [0, start, "prepare", ["prepareDestination"]],
    [10, cancel, "rollback", ["report:rollback", "cancelSource", "abortDestination"]],
    [20, aborted, "cancelled", ["resumeSource", "report:cancelled"]],
  ]);
});

Deno.test("cancel after the source completed is ignored: the switchover is under way", () => {
  const m = sourceCompleted();
  play(m, [
    [200, cancel, "switchover", []],
    [300, running, "completed", ["quitSource", "finishDestination", "report:completed"]],
  ]);
  assert.equal(m.count("cancelSource"), 0);
  assert.equal(m.count("abortDestination"), 0);
  assert.equal(m.count("resumeSource"), 0);
});

Deno.test("cancel in switchover before QEMU completed still rolls back (the source has not sent everything)", () => {
  const m = inPrecopy();
  play(m, [
    [100, progress("device", 3), "switchover", ["report:switchover"]],
    [110, cancel, "rollback", ["report:rollback", "cancelSource", "abortDestination"]],
    [200, aborted, "cancelled", ["resumeSource", "report:cancelled"]],
  ]);
});

// ── Failures ─────────────────────────────────────────────────────────────────────────────────────────

Deno.test("failure during precopy: rollback, then the destination confirms and the source resumes", () => {
  const m = inPrecopy();
  const { state } = play(m, [
    [1_000, progress("active", 1), "precopy", []],
    [1_200, failure("transfer_failed", "the migration stream failed"), "rollback", [
      "report:rollback",
      "cancelSource",
      "abortDestination",
    ]],
    [1_300, failure("late_echo"), "failed", ["resumeSource", "report:failed"]],
  ]);
  // The second failure arrived in rollback before the destination answered; the source never completed,
  // so the destination cannot have the whole state and resuming is safe.
  assert.equal(state.failure?.code, "transfer_failed");
  assert.equal(state.failure?.cancelled, false);
});

Deno.test("failure during precopy, destination confirms it stopped: failed, with resumeSource", () => {
  const m = inPrecopy();
  const { state } = play(m, [
    [1_200, failure("transfer_failed", "the migration stream failed"), "rollback", [
      "report:rollback",
      "cancelSource",
      "abortDestination",
    ]],
    [1_400, aborted, "failed", ["resumeSource", "report:failed"]],
  ]);
  assert.equal(state.failure?.code, "transfer_failed");
  assert.equal(state.failure?.message, "the migration stream failed; the guest runs on the source");
});

Deno.test("failure during rollback, source NOT completed: failed WITH resumeSource", () => {
  const m = inPrecopy();
  play(m, [
    [500, progress("device", 2), "switchover", ["report:switchover"]],
    [600, failure("destination_failed"), "rollback", ["report:rollback", "cancelSource", "abortDestination"]],
    [700, failure("destination_lost"), "failed", ["resumeSource", "report:failed"]],
  ]);
  assert.equal(m.state.sourceCompleted, false);
  assert.match(m.reports().at(-1)!, /the guest runs on the source/);
});

Deno.test("failure during rollback, source HAD completed: failed WITHOUT resumeSource, the source stays paused", () => {
  const m = sourceCompleted();
  const { state } = play(m, [
    [200, failure("destination_failed", "the destination QEMU crashed"), "rollback", [
      "report:rollback",
      "abortDestination", // no cancelSource: QEMU has already finished sending
    ]],
    [300, failure("destination_lost"), "failed", ["report:failed"]],
  ]);
  assert.equal(m.count("resumeSource"), 0);
  assert.equal(m.count("cancelSource"), 0);
  assert.match(state.failure!.message, /^the destination QEMU crashed; /);
  assert.match(state.failure!.message, /source stays paused/);
  assert.match(state.failure!.message, /resume the source by hand/);
  assert.equal(m.reports().at(-1), state.failure!.message);
});

Deno.test("failure during rollback, source HAD completed, destination confirms later: nothing more happens", () => {
  const m = sourceCompleted();
  play(m, [
    [200, failure("destination_failed"), "rollback", ["report:rollback", "abortDestination"]],
    [300, failure("destination_lost"), "failed", ["report:failed"]],
    [400, aborted, "failed", []],
  ]);
  assert.equal(m.count("resumeSource"), 0);
});

Deno.test("source completed, then destination confirms it stopped its copy: resuming the source is safe", () => {
  const m = sourceCompleted();
  play(m, [
    [200, failure("destination_failed"), "rollback", ["report:rollback", "abortDestination"]],
    [300, aborted, "failed", ["resumeSource", "report:failed"]],
  ]);
});

Deno.test("source QEMU status 'failed' in precopy: rollback with code source_failed", () => {
  const m = inPrecopy();
  const { state } = play(m, [
    [1_000, progress("active", 1), "precopy", []],
    [2_000, progress("failed", 1), "rollback", ["report:rollback", "cancelSource", "abortDestination"]],
    [2_100, aborted, "failed", ["resumeSource", "report:failed"]],
  ]);
  assert.equal(state.failure?.code, "source_failed");
  assert.match(state.failure!.message, /the source QEMU migration failed/);
});

Deno.test("source QEMU status 'cancelled' in switchover (before completion): rollback with code source_failed", () => {
  const m = inPrecopy();
  play(m, [
    [100, progress("device", 2), "switchover", ["report:switchover"]],
    [200, progress("cancelled", 2), "rollback", ["report:rollback", "cancelSource", "abortDestination"]],
  ]);
  assert.equal(m.state.failure?.code, "source_failed");
});

// ── Non-convergence ──────────────────────────────────────────────────────────────────────────────────

const SMALL: MigrationPolicy = {
  autoConvergeAfterPasses: 3,
  postcopyAfterPasses: 5,
  abortAfterPasses: 6,
  maxPrecopyMs: 5_000,
  prepareTimeoutMs: 1_000,
  switchoverTimeoutMs: 2_000,
};

Deno.test("non-convergence: auto-converge is switched on exactly once, at autoConvergeAfterPasses", () => {
  const m = inPrecopy(SMALL);
  play(m, [
    [100, progress("active", 1), "precopy", []],
    [200, progress("active", 2), "precopy", []],
    [300, progress("active", 3), "precopy", ["enableAutoConverge", "report:precopy"]],
    [400, progress("active", 3), "precopy", []],
    [500, progress("active", 4), "precopy", []],
    [600, progress("active", 5), "precopy", []],
  ]);
  assert.equal(m.count("enableAutoConverge"), 1);
  assert.equal(m.state.autoConverge, true);
  assert.match(m.reports().at(-1)!, /not converged after 3 passes/);
  assert.equal(m.state.phaseSinceMs, 30, "auto-converge does not restart the precopy clock");
});

Deno.test("non-convergence: at abortAfterPasses the migration rolls back with code not_converging", () => {
  const m = inPrecopy(SMALL);
  const { state } = play(m, [
    [300, progress("active", 3), "precopy", ["enableAutoConverge", "report:precopy"]],
    [500, progress("active", 5, 7_000), "precopy", []],
    [600, progress("active", 6, 6_000), "rollback", ["report:rollback", "cancelSource", "abortDestination"]],
    [700, progress("active", 7, 6_000), "rollback", []],
    [800, aborted, "failed", ["resumeSource", "report:failed"]],
  ]);
  assert.equal(state.failure?.code, "not_converging");
  assert.match(state.failure!.message, /after 6 passes \(6000 bytes remaining\)/);
  assert.equal(m.count("enableAutoConverge"), 1);
});

// ── Postcopy ─────────────────────────────────────────────────────────────────────────────────────────

/** Precopy with postcopy allowed, auto-converge on at t=300 and postcopy asked for at t=500. */
function postcopyAsked(): Machine {
  const m = inPrecopy(SMALL, true);
  play(m, [
    [300, progress("active", 3), "precopy", ["enableAutoConverge", "report:precopy"]],
    [500, progress("active", 5, 9_000), "precopy", ["startPostcopy", "report:precopy"]],
  ]);
  return m;
}

Deno.test("postcopy: auto-converge first, then postcopy at postcopyAfterPasses instead of the abort", () => {
  const m = postcopyAsked();
  const { state } = play(m, [
    [550, progress("active", 6, 9_000), "precopy", []], // abortAfterPasses: postcopy is under way instead
    [560, postcopyStarted, "postcopy", ["report:postcopy"]],
    [600, progress("postcopy-active", 6), "postcopy", []],
    [620, running, "postcopy", []], // the guest runs there, but the source still holds pages
    [900, progress("completed", 6), "postcopy", []],
    [950, destCompleted, "completed", ["quitSource", "finishDestination", "report:completed"]],
  ]);
  assert.equal(state.failure, undefined);
  assert.equal(m.count("startPostcopy"), 1);
  assert.match(m.reports()[2], /not converged after 5 passes.*switching to postcopy/);
  assert.match(m.reports()[3], /a failure cannot be rolled back and is fatal for the guest/);
});

Deno.test("postcopy: QEMU reporting postcopy-active is as good as the answer to migrate-start-postcopy", () => {
  const m = postcopyAsked();
  play(m, [
    [600, progress("postcopy-active", 6), "postcopy", ["report:postcopy"]],
    [610, postcopyStarted, "postcopy", []],
    [700, destCompleted, "postcopy", []], // not running yet: the source is not quit
    [720, running, "completed", ["quitSource", "finishDestination", "report:completed"]],
  ]);
});

Deno.test("postcopy: without permission the machine aborts at abortAfterPasses and says postcopy would help", () => {
  const m = inPrecopy(SMALL);
  const { state } = play(m, [
    [300, progress("active", 3), "precopy", ["enableAutoConverge", "report:precopy"]],
    [500, progress("active", 5), "precopy", []],
    [600, progress("active", 6, 100), "rollback", ["report:rollback", "cancelSource", "abortDestination"]],
  ]);
  assert.equal(m.count("startPostcopy"), 0);
  assert.match(state.failure!.message, /or allow postcopy/);
});

Deno.test("postcopy: migrate-start-postcopy refused by QEMU rolls back like any precopy failure", () => {
  const m = postcopyAsked();
  play(m, [
    [510, failure("migration_failed"), "rollback", ["report:rollback", "cancelSource", "abortDestination"]],
    [600, aborted, "failed", ["resumeSource", "report:failed"]],
  ]);
});

Deno.test("postcopy: once QEMU pauses a running postcopy, a failure is fatal: nothing is undone", () => {
  const m = postcopyAsked();
  const { state } = play(m, [
    [560, postcopyStarted, "postcopy", ["report:postcopy"]],
    [600, cancel, "postcopy", []], // too late to cancel
    [700, failure("destination_lost"), "postcopy", ["closeSourceChannel", "report:postcopy"]], // QEMU has not told yet
    [720, failure("transfer_failed"), "postcopy", []],
    [750, progress("postcopy-paused", 6), "failed", ["report:failed"]],
    [800, aborted, "failed", []],
  ]);
  assert.equal(state.failure?.code, "destination_lost");
  assert.match(state.failure!.message, /the guest is lost/);
  assert.match(state.failure!.message, /the source is not resumed/);
  assert.match(m.reports().at(-2)!, /waiting for the source QEMU to tell whether postcopy had started/);
});

Deno.test("postcopy: QEMU pausing by itself, or a failure after the source sent everything, is fatal at once", () => {
  for (
    const lines of [
      [[700, progress("postcopy-paused", 6), "failed", ["report:failed"]]],
      [
        [700, progress("completed", 6), "postcopy", []],
        [750, failure("destination_lost"), "failed", ["report:failed"]],
      ],
    ] as Line[][]
  ) {
    const m = postcopyAsked();
    const { state } = play(m, [[560, postcopyStarted, "postcopy", ["report:postcopy"]], ...lines]);
    assert.match(state.failure!.message, /the guest is lost/);
  }
});

Deno.test("postcopy: QEMU failing the switch itself means postcopy never started: a rollback", () => {
  const m = postcopyAsked();
  const { state } = play(m, [
    [560, postcopyStarted, "postcopy", ["report:postcopy"]],
    [700, failure("destination_lost"), "postcopy", ["closeSourceChannel", "report:postcopy"]],
    [750, progress("failed", 6), "rollback", ["report:rollback", "cancelSource", "abortDestination"]],
    [800, failure("destination_lost"), "failed", ["resumeSource", "report:failed"]],
  ]);
  assert.equal(state.failure?.code, "destination_lost");
  assert.match(state.failure!.message, /postcopy had not started.*the guest runs on the source/);
});

Deno.test("postcopy: a failure QEMU never rules on is fatal after switchoverTimeoutMs", () => {
  const m = postcopyAsked();
  const { state } = play(m, [
    [560, postcopyStarted, "postcopy", ["report:postcopy"]],
    [700, failure("destination_lost"), "postcopy", ["closeSourceChannel", "report:postcopy"]],
    [2_700, tick, "postcopy", []],
    [2_701, tick, "failed", ["report:failed"]],
  ]);
  assert.match(state.failure!.message, /did not tell within 2000 ms.*the guest is lost/);
});

Deno.test("postcopy: maxPrecopyMs starts postcopy where allowed; a postcopy past it again is fatal", () => {
  const m = inPrecopy(SMALL, true);
  const { state } = play(m, [
    [5_031, tick, "precopy", ["startPostcopy", "report:precopy"]],
    [5_040, tick, "precopy", []],
    [5_050, postcopyStarted, "postcopy", ["report:postcopy"]],
    [10_050, tick, "postcopy", []],
    [10_051, tick, "failed", ["report:failed"]],
  ]);
  assert.equal(state.failure?.code, "postcopy_timeout");
});

Deno.test("non-convergence: passes are not counted outside precopy", () => {
  const m = inPrecopy(SMALL);
  play(m, [
    [100, progress("device", 2), "switchover", ["report:switchover"]],
    [200, progress("device", 9), "switchover", []],
  ]);
  assert.equal(m.count("enableAutoConverge"), 0);
});

// ── Timeouts ─────────────────────────────────────────────────────────────────────────────────────────

Deno.test("timeout: the destination does not get ready within prepareTimeoutMs", () => {
  const m = new Machine(SMALL);
  const { state } = play(m, [
    [0, start, "prepare", ["prepareDestination"]],
    [500, tick, "prepare", []],
    [1_000, tick, "prepare", []], // the limit itself is still in time
    [1_001, tick, "rollback", ["report:rollback", "cancelSource", "abortDestination"]],
    [1_100, aborted, "failed", ["resumeSource", "report:failed"]],
  ]);
  assert.equal(state.failure?.code, "prepare_timeout");
  assert.match(state.failure!.message, /within 1000 ms/);
});

Deno.test("timeout: precopy longer than maxPrecopyMs rolls back with not_converging", () => {
  const m = inPrecopy(SMALL);
  const { state } = play(m, [
    [2_000, progress("active", 1), "precopy", []],
    [5_030, tick, "precopy", []],
    [5_031, tick, "rollback", ["report:rollback", "cancelSource", "abortDestination"]],
    [5_100, aborted, "failed", ["resumeSource", "report:failed"]],
  ]);
  assert.equal(state.failure?.code, "not_converging");
  assert.match(state.failure!.message, /within 5000 ms/);
});

Deno.test("timeout: the destination does not run the guest within switchoverTimeoutMs", () => {
  const m = sourceCompleted(SMALL); // switchover since t=120
  const { state } = play(m, [
    [2_120, tick, "switchover", []],
    [2_121, tick, "rollback", ["report:rollback", "abortDestination"]],
    [2_200, aborted, "failed", ["resumeSource", "report:failed"]],
  ]);
  assert.equal(state.failure?.code, "switchover_timeout");
  assert.equal(m.count("cancelSource"), 0);
});

Deno.test("timeout: stuck in switchover before QEMU completed also cancels the source's migration", () => {
  const m = inPrecopy(SMALL);
  play(m, [
    [100, progress("device", 2), "switchover", ["report:switchover"]],
    [2_101, tick, "rollback", ["report:rollback", "cancelSource", "abortDestination"]],
  ]);
  assert.equal(m.state.failure?.code, "switchover_timeout");
});

Deno.test("timeout: a rollback that never hears back resumes the source only if it had not completed", () => {
  const notCompleted = inPrecopy(SMALL);
  play(notCompleted, [
    [1_000, failure("transfer_failed"), "rollback", ["report:rollback", "cancelSource", "abortDestination"]],
    [2_000, tick, "rollback", []],
    [2_001, tick, "failed", ["resumeSource", "report:failed"]],
  ]);

  const completed = sourceCompleted(SMALL);
  play(completed, [
    [1_000, failure("destination_failed"), "rollback", ["report:rollback", "abortDestination"]],
    [2_000, tick, "rollback", []],
    [2_001, tick, "failed", ["report:failed"]],
  ]);
  assert.equal(completed.count("resumeSource"), 0);
  assert.match(completed.state.failure!.message, /source stays paused/);
});

// ── Terminal phases ──────────────────────────────────────────────────────────────────────────────────

const EVERY_EVENT: MigrationEvent[] = [
  start,
  prepared,
  started,
  progress("active", 50),
  progress("device", 1),
  progress("completed", 1),
  progress("failed", 1),
  running,
  aborted,
  failure("late"),
  cancel,
  tick,
];

function assertInert(m: Machine, fromMs: number): void {
  const before = m.state;
  for (const [i, ev] of EVERY_EVENT.entries()) {
    const out = m.feed(fromMs + i * 1_000_000, ev);
    assert.deepEqual(out, [], `${label(ev)} after ${before.phase}`);
    assert.equal(m.state, before, `${label(ev)} after ${before.phase} changed the state`);
  }
}

Deno.test("terminal: after completed, failed or cancelled no event produces an action", () => {
  const done = sourceCompleted();
  done.feed(200, running);
  assert.equal(done.phase, "completed");
  assertInert(done, 300);

  const failed = inPrecopy();
  failed.feed(100, failure("transfer_failed"));
  failed.feed(200, aborted);
  assert.equal(failed.phase, "failed");
  assertInert(failed, 300);

  const cancelled = inPrecopy();
  cancelled.feed(100, cancel);
  cancelled.feed(200, aborted);
  assert.equal(cancelled.phase, "cancelled");
  assertInert(cancelled, 300);
});

// ── Races around the source's completion ─────────────────────────────────────────────────────────────

Deno.test("rollback: QEMU reports 'completed' after the rollback began; the source must stay paused if the destination never confirms", () => {
  // The switchover timed out while QEMU was still sending device state, so the rollback asked it to
  // cancel; but QEMU finished first and says so (the service keeps polling query-migrate in rollback).
  // The destination now may hold the whole state. It then goes silent: resuming the source could give
  // two running copies of the guest.
  const m = inPrecopy(SMALL);
  play(m, [
    [100, progress("device", 2), "switchover", ["report:switchover"]],
    [2_101, tick, "rollback", ["report:rollback", "cancelSource", "abortDestination"]],
  ]);
  m.feed(2_200, progress("completed", 2));
  m.feed(2_300, failure("destination_lost"));
  assert.equal(m.phase, "failed");
  assert.equal(m.count("resumeSource"), 0, "the source was resumed though QEMU had sent everything");
  assert.match(m.state.failure!.message, /source stays paused/);
});

Deno.test("switchover: a 'failed' status seen after QEMU reported 'completed' must not make resuming the source look safe", () => {
  // sourceCompleted is a fact: once QEMU has sent everything, the destination may run the guest. A later
  // contradictory status must not undo it, or a lost destination leads to resumeSource. (Whether the
  // status is ignored or starts a rollback is up to the machine; only the safety rule is asserted.)
  const m = sourceCompleted();
  m.feed(200, progress("failed", 3));
  m.feed(300, failure("destination_lost"));
  m.feed(400, failure("destination_lost"));
  m.feed(10_000_000, tick);
  assert.equal(m.phase, "failed");
  assert.equal(m.count("resumeSource"), 0, "the source was resumed though QEMU had sent everything");
  assert.match(m.state.failure!.message, /source stays paused/);
});

// ── Seeded fuzz ──────────────────────────────────────────────────────────────────────────────────────

const STATUSES = [
  "active",
  "active",
  "active",
  "device",
  "pre-switchover",
  "completed",
  "failed",
  "cancelled",
];

/** With postcopy allowed, QEMU's postcopy statuses and the destination's completion join the mix. */
const POSTCOPY_STATUSES = [...STATUSES, "postcopy-active", "postcopy-paused"];

/** One fuzz step as recorded: what was fed, the state before and after, and what came out. */
interface FuzzStep {
  atMs: number;
  event: MigrationEvent;
  before: MigrationState;
  after: MigrationState;
  actions: MigrationAction[];
}

function randomEvent(rand: () => number, passes: number, postcopy: boolean): MigrationEvent {
  const r = rand();
  const statuses = postcopy ? POSTCOPY_STATUSES : STATUSES;
  if (r < 0.35) return progress(pick(rand, statuses), passes, randInt(rand, 0, 1 << 20));
  if (r < 0.5) return tick;
  const events = [start, prepared, started, running, aborted, cancel, failure("random_failure")];
  return pick(rand, postcopy ? [...events, postcopyStarted, destCompleted] : events);
}

/** A random run: mostly the usual opening, then random events at increasing times, some far apart. */
function fuzzRun(seed: number, postcopy = false): FuzzStep[] {
  const rand = mulberry32(seed);
  let state = initialState(0, { postcopyAllowed: postcopy });
  let nowMs = 0;
  let passes = 0;
  const opening = rand() < 0.7 ? [start, prepared, started] : [];
  const steps: FuzzStep[] = [];
  const count = randInt(rand, 1, 40);
  for (let i = 0; i < count; i++) {
    nowMs += rand() < 0.15 ? randInt(rand, 500, 6_000) : randInt(rand, 0, 200);
    if (rand() < 0.3) passes += 1;
    const event = i < opening.length ? opening[i] : randomEvent(rand, passes, postcopy);
    const { state: after, actions } = step(state, event, nowMs, SMALL);
    steps.push({ atMs: nowMs, event, before: state, after, actions });
    state = after;
  }
  return steps;
}

const SEEDS = Array.from({ length: 3_000 }, (_, i) => i + 1);

function transcript(steps: FuzzStep[]): string {
  return steps
    .map((s) => format(s.atMs, s.event, s.after.phase, s.actions.map(actionLabel)))
    .join("\n");
}

/** Checks `violation` on every run; fails with the shortest failing transcript, cut at the violation. */
function checkAll(
  what: string,
  violation: (steps: FuzzStep[]) => number | undefined,
  postcopy = false,
): void {
  let worst: { seed: number; steps: FuzzStep[] } | undefined;
  let failures = 0;
  for (const seed of SEEDS) {
    const steps = fuzzRun(seed, postcopy);
    const at = violation(steps);
    if (at === undefined) continue;
    failures++;
    const cut = steps.slice(0, at + 1);
    if (!worst || cut.length < worst.steps.length) worst = { seed, steps: cut };
  }
  if (worst) {
    assert.fail(
      `${what}: violated in ${failures} of ${SEEDS.length} seeds; shortest, seed ${worst.seed}:\n` +
        transcript(worst.steps),
    );
  }
}

Deno.test("fuzz: the runs reach every phase (the generator exercises the machine)", () => {
  const seen = new Set<Phase>();
  for (const seed of SEEDS) for (const s of fuzzRun(seed)) seen.add(s.after.phase);
  for (const phase of ["prepare", "precopy", "switchover", "rollback", "completed", "failed", "cancelled"]) {
    assert.ok(seen.has(phase as Phase), `no run reached ${phase}`);
  }
});

Deno.test("fuzz: quitSource only in answer to destinationRunning fed while in switchover", () => {
  checkAll("quitSource before the destination ran the guest", (steps) => {
    const i = steps.findIndex((s) =>
      s.actions.some((a) => a.type === "quitSource") &&
      !(s.event.type === "destinationRunning" && s.before.phase === "switchover")
    );
    return i < 0 ? undefined : i;
  });
});

Deno.test("fuzz: resumeSource never once the source completed, unless the destination confirmed it stopped", () => {
  checkAll("resumeSource after the source completed", (steps) => {
    // Latched: once the machine has seen the source complete, that stays true whatever comes after.
    let completed = false;
    for (const [i, s] of steps.entries()) {
      completed ||= s.before.sourceCompleted;
      const resumed = s.actions.some((a) => a.type === "resumeSource");
      if (resumed && completed && !(s.event.type === "destinationAborted" && s.before.phase === "rollback")) {
        return i;
      }
      completed ||= s.after.sourceCompleted;
    }
    return undefined;
  });
});

Deno.test("fuzz: at most one of quitSource / resumeSource over a whole run, and each at most once", () => {
  checkAll("the source was both quit and resumed, or one of them twice", (steps) => {
    let n = 0;
    for (const [i, s] of steps.entries()) {
      n += s.actions.filter((a) => a.type === "quitSource" || a.type === "resumeSource").length;
      if (n > 1) return i;
    }
    return undefined;
  });
});

Deno.test("fuzz: once terminal, no more actions and no state change", () => {
  checkAll("an action or a change after a terminal phase", (steps) => {
    const i = steps.findIndex((s) =>
      isTerminal(s.before.phase) && (s.actions.length > 0 || s.after !== s.before)
    );
    return i < 0 ? undefined : i;
  });
});

Deno.test("fuzz: a terminal phase is reached only with exactly one final report, and rollback always precedes failed/cancelled", () => {
  checkAll("a terminal transition without its report, or failed/cancelled without rollback", (steps) => {
    for (const [i, s] of steps.entries()) {
      if (isTerminal(s.before.phase) || !isTerminal(s.after.phase)) continue;
      const reports = s.actions.filter((a) => a.type === "report" && a.phase === s.after.phase);
      if (reports.length !== 1) return i;
      if (s.after.phase !== "completed" && s.before.phase !== "rollback") return i;
      if (s.after.phase === "completed" && s.before.phase !== "switchover") return i;
    }
    return undefined;
  });
});

// ── Seeded fuzz with postcopy allowed ────────────────────────────────────────────────────────────────

Deno.test("fuzz postcopy: the runs reach postcopy, and complete and fail from it", () => {
  const seen = new Set<string>();
  for (const seed of SEEDS) {
    for (const s of fuzzRun(seed, true)) {
      if (s.before.phase === "postcopy") seen.add(`postcopy→${s.after.phase}`);
    }
  }
  for (const edge of ["postcopy→postcopy", "postcopy→completed", "postcopy→failed", "postcopy→rollback"]) {
    assert.ok(seen.has(edge), `no run took ${edge}`);
  }
});

Deno.test("fuzz postcopy: from postcopy, only QEMU failing the switch leads to a rollback; never after it paused or completed", () => {
  checkAll("a rollback from postcopy without QEMU's 'failed', or after postcopy really ran", (steps) => {
    let ran = false; // QEMU paused a running postcopy, or sent everything
    for (const [i, s] of steps.entries()) {
      const status = s.event.type === "sourceProgress" ? s.event.progress.status : undefined;
      if (s.before.phase === "postcopy" && s.after.phase === "rollback") {
        if (ran || (status !== "failed" && status !== "cancelled")) return i;
      }
      if (s.before.phase === "postcopy" && (status === "postcopy-paused" || status === "completed")) {
        ran = true;
      }
      const undo = s.actions.some((a) =>
        a.type === "resumeSource" || a.type === "abortDestination" || a.type === "cancelSource"
      );
      if (ran && undo) return i;
    }
    return undefined;
  }, true);
});

Deno.test("fuzz postcopy: the source is quit only once the destination runs the guest and holds every page", () => {
  checkAll("quitSource under postcopy before the destination had it all", (steps) => {
    const i = steps.findIndex((s) =>
      s.actions.some((a) => a.type === "quitSource") && s.before.phase === "postcopy" &&
      !(s.after.destinationRunning && s.after.destinationCompleted)
    );
    return i < 0 ? undefined : i;
  }, true);
});

Deno.test("fuzz postcopy: each of quitSource / resumeSource at most once, never both", () => {
  checkAll("the source was both quit and resumed, or one of them twice", (steps) => {
    let n = 0;
    for (const [i, s] of steps.entries()) {
      n += s.actions.filter((a) => a.type === "quitSource" || a.type === "resumeSource").length;
      if (n > 1) return i;
    }
    return undefined;
  }, true);
});
