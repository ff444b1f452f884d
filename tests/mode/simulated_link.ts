/**
 * A link for the mode scenarios, simulated second by second: it feeds a LinkStats as the agent's IO edge
 * would (TCP_INFO of one busy stream socket, or an idle probe every 10 s) and steps a ModePolicy, and
 * returns the mode changes as transcript lines "12s datacenter → internet: why".
 */
import { LinkStats } from "../../src/mode/link_stats.ts";
import { type LinkMode, ModePolicy } from "../../src/mode/policy.ts";

export interface Link {
  /** The path's own round trip. */
  rttMs: number;
  lossRatio: number;
  bytesPerSec: number;
  /** Delay of the standing queue a busy transfer keeps at the bottleneck (0 when it keeps none). */
  queueingMs?: number;
}

export const LAN: Link = { rttMs: 0.2, lossRatio: 0, bytesPerSec: 1.25e9 };
export const METRO: Link = { rttMs: 10, lossRatio: 0, bytesPerSec: 125e6 };
export const WAN_LOSSY: Link = { rttMs: 50, lossRatio: 0.005, bytesPerSec: 12.5e6 };

export interface Phase {
  seconds: number;
  /** The link each second of the phase; a function for links that change within it. */
  link: Link | ((second: number) => Link);
  /** A transfer runs (its socket is sampled); otherwise the link is idle and probed every 10 s. */
  busy: boolean;
}

export type Pins = Record<number, LinkMode | "unpin">;

const PROBE_EVERY_S = 10;
const MSS = 1448;

export function simulate(phases: Phase[], pins: Pins = {}, policy = new ModePolicy()): string[] {
  const stats = new LinkStats();
  const transcript: string[] = [];
  let sent = 0, retrans = 0, second = 0;
  for (const phase of phases) {
    for (let i = 0; i < phase.seconds; i++, second++) {
      const now = second * 1000;
      const link = typeof phase.link === "function" ? phase.link(second) : phase.link;
      if (phase.busy) {
        sent += link.bytesPerSec;
        retrans += link.bytesPerSec * link.lossRatio;
        const rttMs = link.rttMs + (link.queueingMs ?? 0);
        stats.addTcpInfo(now, "stream", {
          state: 1,
          rttUs: rttMs * 1000,
          minRttUs: link.rttMs * 1000,
          // The window that keeps the link busy: its rate over the round trip it sees.
          sndCwndSegments: Math.ceil((link.bytesPerSec * rttMs) / 1000 / MSS),
          sndMssBytes: MSS,
          bytesSent: sent,
          bytesRetrans: retrans,
          segsOut: sent / MSS,
          totalRetransSegments: retrans / MSS,
        });
        stats.addDelivered(now, link.bytesPerSec * (1 - link.lossRatio));
      } else if (second % PROBE_EVERY_S === 0) {
        stats.addRtt(now, link.rttMs, "probe");
      }
      const pin = pins[second];
      const change = pin === undefined
        ? policy.step(now, stats.measurements(now))
        : policy.pin(now, pin === "unpin" ? undefined : pin);
      if (change) {
        transcript.push(`${second}s ${change.from ?? "unmeasured"} → ${change.to}: ${change.reason}`);
      }
    }
  }
  return transcript;
}
