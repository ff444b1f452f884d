/**
 * src/mode/policy.ts as scenarios: a simulated link feeds the statistics second by second, and each
 * test reads as the transcript of the mode changes it causes (simulated_link.ts).
 */
import assert from "node:assert/strict";
import { LinkStats } from "../../src/mode/link_stats.ts";
import { type LinkMode, ModePolicy } from "../../src/mode/policy.ts";
import { LAN, METRO, simulate, WAN_LOSSY } from "./simulated_link.ts";

Deno.test("a LAN link is datacenter from its third round trip, and stays so for ten busy minutes", () => {
  assert.deepEqual(simulate([{ seconds: 600, link: LAN, busy: true }]), [
    "2s unmeasured → datacenter: first measurement: min RTT 0.20 ms → datacenter; " +
    "retransmits 0.000 % of 3576.3 MiB → datacenter",
  ]);
});

Deno.test("an idle link is decided by its probes alone, once three have answered", () => {
  assert.deepEqual(simulate([{ seconds: 300, link: WAN_LOSSY, busy: false }]), [
    "20s unmeasured → internet: first measurement: min RTT 50.0 ms → internet",
  ]);
});

Deno.test("a LAN that turns into a 50 ms / 0.5 % loss link goes internet once the dwell time is over", () => {
  // The round trip's 30 s minimum shows the change at 39 s (the loss, averaged over the last minute of
  // traffic, is still mostly the LAN's); the mode, entered at 2 s, is kept for its 60 s dwell.
  assert.deepEqual(
    simulate([{ seconds: 10, link: LAN, busy: true }, { seconds: 100, link: WAN_LOSSY, busy: true }]),
    [
      "2s unmeasured → datacenter: first measurement: min RTT 0.20 ms → datacenter; " +
      "retransmits 0.000 % of 3576.3 MiB → datacenter",
      "62s datacenter → internet: min RTT 50.0 ms → internet; " +
      "retransmits 0.025 % of 12552.7 MiB → hybrid, for 23 s",
    ],
  );
});

Deno.test("a single lost segment is no trend, though it is 0.024 % of the little a slow transfer sent", () => {
  const oneLoss = (s: number) => ({ ...LAN, bytesPerSec: 2e6, lossRatio: s === 1 ? 1448 / 2e6 : 0 });
  assert.deepEqual(simulate([{ seconds: 120, link: oneLoss, busy: true }]), [
    "2s unmeasured → datacenter: first measurement: min RTT 0.20 ms → datacenter",
  ]);
});

Deno.test("a transfer overflowing a LAN's or a metro link's queue itself is no lossy path: modes hold", () => {
  // What the emulated lan and metro links showed with BBR and 4 streams: 0.2 % and 11 % retransmitted
  // while the queue stood at 5 ms and 8 ms. Those losses are the transfer's own, and are shown apart.
  const saturatedLan = { ...LAN, lossRatio: 0.002, queueingMs: 5 };
  const saturatedMetro = { ...METRO, lossRatio: 0.11, queueingMs: 8 };
  assert.deepEqual(simulate([{ seconds: 300, link: saturatedLan, busy: true }]), [
    "2s unmeasured → datacenter: first measurement: min RTT 0.20 ms → datacenter",
  ]);
  assert.deepEqual(simulate([{ seconds: 300, link: saturatedMetro, busy: true }]), [
    "2s unmeasured → hybrid: first measurement: min RTT 10.0 ms → hybrid",
  ]);
  // The same loss without a standing queue is the path's: the metro link goes internet.
  assert.deepEqual(simulate([{ seconds: 300, link: { ...METRO, lossRatio: 0.11 }, busy: true }]), [
    "2s unmeasured → internet: first measurement: min RTT 10.0 ms → hybrid; " +
    "retransmits 11.000 % of 357.6 MiB → internet",
  ]);
});

Deno.test("a round trip jittering about the 20 ms boundary stays hybrid: the minimum does not jitter", () => {
  const jittery = (s: number) => ({ ...METRO, rttMs: 18 + 5 * Math.abs(Math.sin(s)) });
  assert.deepEqual(simulate([{ seconds: 300, link: jittery, busy: false }]), [
    "20s unmeasured → hybrid: first measurement: min RTT 18.0 ms → hybrid",
  ]);
});

Deno.test("loss flapping between 0.05 % and 0.2 % every 20 s stays in the band about 0.1 %: hybrid holds", () => {
  const flapping = (s: number) => ({ ...METRO, lossRatio: Math.floor(s / 20) % 2 ? 0.002 : 0.0005 });
  assert.deepEqual(simulate([{ seconds: 600, link: flapping, busy: true }]), [
    "2s unmeasured → hybrid: first measurement: min RTT 10.0 ms → hybrid; " +
    "retransmits 0.050 % of 357.6 MiB → hybrid",
  ]);
});

Deno.test("a link flipping between LAN and lossy WAN every 40 s changes mode at most once a minute", () => {
  const flipping = (s: number) => Math.floor(s / 40) % 2 ? WAN_LOSSY : LAN;
  const transcript = simulate([{ seconds: 400, link: flipping, busy: true }]);
  assert.deepEqual(transcript, [
    "2s unmeasured → datacenter: first measurement: min RTT 0.20 ms → datacenter; " +
    "retransmits 0.000 % of 3576.3 MiB → datacenter",
    "79s datacenter → internet: min RTT 50.0 ms → internet; retransmits 0.008 % of 29087.1 MiB → datacenter, " +
    "for 10 s",
    "139s internet → datacenter: min RTT 0.20 ms → datacenter; retransmits 0.003 % of 47969.8 MiB → " +
    "datacenter, for 59 s",
    "238s datacenter → internet: min RTT 50.0 ms → internet; retransmits 0.008 % of 29075.1 MiB → datacenter, " +
    "for 10 s",
    "298s internet → datacenter: min RTT 0.20 ms → datacenter; retransmits 0.003 % of 47957.9 MiB → " +
    "datacenter, for 58 s",
    "397s datacenter → internet: min RTT 50.0 ms → internet; retransmits 0.008 % of 29063.2 MiB → datacenter, " +
    "for 10 s",
  ]);
  const seconds = transcript.map((line) => parseInt(line));
  for (let i = 2; i < seconds.length; i++) assert.ok(seconds[i] - seconds[i - 1] >= 60, transcript[i]);
});

Deno.test("a pin overrides the measurements at once, and lifting it returns to them at once", () => {
  assert.deepEqual(simulate([{ seconds: 200, link: LAN, busy: true }], { 20: "internet", 150: "unpin" }), [
    "2s unmeasured → datacenter: first measurement: min RTT 0.20 ms → datacenter; " +
    "retransmits 0.000 % of 3576.3 MiB → datacenter",
    "20s datacenter → internet: pinned by the operator",
    "150s internet → datacenter: pin lifted: min RTT 0.20 ms → datacenter; " +
    "retransmits 0.000 % of 73909.8 MiB → datacenter",
  ]);
});

Deno.test("a pin before any measurement holds; lifting it without measurements leaves the link unmeasured", () => {
  const policy = new ModePolicy();
  assert.deepEqual(policy.pin(0, "hybrid"), {
    atMs: 0,
    from: undefined,
    to: "hybrid",
    reason: "pinned by the operator",
  });
  const stats = new LinkStats();
  for (let s = 0; s < 5; s++) stats.addRtt(s * 1000, 0.1, "probe");
  assert.equal(policy.step(5000, stats.measurements(5000)), undefined, "measurements do not move a pin");
  assert.equal(policy.state.byRtt, "datacenter", "but the state shows what they say");
  assert.equal(policy.state.pinned, "hybrid");

  const fresh = new ModePolicy();
  fresh.pin(0, "internet");
  assert.equal(fresh.pin(1000, undefined), undefined);
  assert.equal(fresh.state.mode, undefined);
  assert.equal(fresh.state.reason, "pin lifted; no measurements yet");
});

Deno.test("bad inputs are refused, naming the value", () => {
  assert.throws(() => new ModePolicy({ minDwellMs: -1, confirmMs: 0 }), /minDwellMs = -1/);
  assert.throws(
    () => new ModePolicy().pin(0, "lan" as string as LinkMode),
    /mode "lan" is not one of datacenter, hybrid, internet/,
  );
});
