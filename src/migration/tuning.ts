/**
 * QEMU migration parameters from the link forecast (PBA), sans IO.
 *
 * QEMU 7.2 switches over when remaining / bandwidth ≤ downtime-limit, with `bandwidth` what it measured
 * over its last iteration. On a link whose rate is about to change that is the wrong rate: a link
 * that is slowing makes the real pause longer than the limit, one that is speeding up holds the
 * migration in precopy longer than needed. So the operator's limit is scaled by forecast / measured:
 * QEMU then switches over exactly when the forecast rate can carry what remains within the operator's
 * limit. The scale is bounded, so one wild forecast cannot stall the migration or blow the pause up.
 *
 * max-bandwidth: the agents pace the stream with backpressure, so QEMU is not capped by default; with a
 * forecast it is capped at a multiple of the forecast, so a burst does not sit in the agents' windows
 * while the link cannot take it (it would be counted as sent and skew QEMU's own rate).
 */

export interface TuningInputs {
  /** The downtime the operator asked for. */
  downtimeLimitMs: number;
  /**
   * Forecast of the stream's rate over the next seconds, in QEMU's stream bytes/s (before the agents'
   * codec: the link's forecast times the codec's ratio), the unit of measuredBytesPerSec and max-bandwidth.
   */
  forecastBytesPerSec: number;
  /** QEMU's own rate over its last iteration (bytes/s); 0 before it has one. */
  measuredBytesPerSec: number;
  /**
   * What the link has been measured to carry, in the same unit (the peer's greatest delivered rate, or
   * its mode's assumed rate): max-bandwidth never goes below the headroom times this. The forecast is of
   * what was carried, and a cap below what the link can carry makes QEMU send less, which lowers the
   * next forecast: without the floor the two spiral down together (on the emulated wan, bench/wan.ts, a
   * migration sank to 0.1 Mbit/s that way). The forecast still sets the downtime-limit.
   */
  linkBytesPerSec?: number;
}

export interface Tuning {
  downtimeLimitMs: number;
  maxBytesPerSec: number;
  /** One line for the migration's events: what was set, from what. */
  reason: string;
}

/** The limit is never scaled beyond these factors of what the operator asked for. */
export const MIN_LIMIT_SCALE = 0.25;
export const MAX_LIMIT_SCALE = 2;
/** QEMU may burst this far above the forecast rate. */
export const BANDWIDTH_HEADROOM = 1.5;
/** QEMU refuses downtime limits outside 1..2000 s (in ms: 2,000,000); 1 ms is its floor. */
const QEMU_MIN_DOWNTIME_MS = 1;

export function tuneForForecast(t: TuningInputs): Tuning {
  if (!(t.forecastBytesPerSec > 0)) {
    throw new RangeError(`forecastBytesPerSec ${t.forecastBytesPerSec}: a forecast must be a positive rate`);
  }
  const floored = (t.linkBytesPerSec ?? 0) > t.forecastBytesPerSec;
  const maxBytesPerSec = Math.ceil(
    (floored ? t.linkBytesPerSec! : t.forecastBytesPerSec) * BANDWIDTH_HEADROOM,
  );
  const mbps = (b: number) => (b * 8 / 1e6).toFixed(1);
  const cap = `max-bandwidth ${mbps(maxBytesPerSec)} Mbit/s` +
    (floored ? ` (from the link's measured ${mbps(t.linkBytesPerSec!)} Mbit/s)` : "");
  if (!(t.measuredBytesPerSec > 0)) {
    return {
      downtimeLimitMs: t.downtimeLimitMs,
      maxBytesPerSec,
      reason: `forecast ${mbps(t.forecastBytesPerSec)} Mbit/s, QEMU has no rate yet: ` +
        `downtime-limit ${t.downtimeLimitMs} ms, ${cap}`,
    };
  }
  const scale = Math.min(
    MAX_LIMIT_SCALE,
    Math.max(MIN_LIMIT_SCALE, t.forecastBytesPerSec / t.measuredBytesPerSec),
  );
  const downtimeLimitMs = Math.max(QEMU_MIN_DOWNTIME_MS, Math.round(t.downtimeLimitMs * scale));
  return {
    downtimeLimitMs,
    maxBytesPerSec,
    reason: `forecast ${mbps(t.forecastBytesPerSec)} vs QEMU's ${mbps(t.measuredBytesPerSec)} Mbit/s: ` +
      `downtime-limit ${downtimeLimitMs} ms (${t.downtimeLimitMs} ms asked × ${scale.toFixed(2)}), ${cap}`,
  };
}
