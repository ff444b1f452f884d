/** src/migration/tuning.ts: QEMU's downtime-limit and max-bandwidth from the link forecast. */
import assert from "node:assert/strict";
import {
  BANDWIDTH_HEADROOM,
  MAX_LIMIT_SCALE,
  MIN_LIMIT_SCALE,
  tuneForForecast,
} from "../../src/migration/tuning.ts";

const MB = 1e6;

Deno.test("a link forecast to slow down tightens the limit: the pause fits at the forecast rate", () => {
  // QEMU measured 50 MB/s; the forecast says 25 MB/s. With 300 ms asked, QEMU must switch over when
  // remaining ≤ 25 MB/s × 0.3 s = 7.5 MB, i.e. remaining / 50 MB/s ≤ 150 ms.
  const t = tuneForForecast({
    downtimeLimitMs: 300,
    forecastBytesPerSec: 25 * MB,
    measuredBytesPerSec: 50 * MB,
  });
  assert.equal(t.downtimeLimitMs, 150);
  const remainingAtSwitch = (t.downtimeLimitMs / 1000) * 50 * MB;
  assert.equal(remainingAtSwitch / (25 * MB) * 1000, 300, "the real pause at the forecast rate");
  assert.equal(t.maxBytesPerSec, 25 * MB * BANDWIDTH_HEADROOM);
  assert.match(t.reason, /downtime-limit 150 ms \(300 ms asked × 0\.50\)/);
});

Deno.test("a link forecast to speed up loosens the limit, within bounds", () => {
  const t = tuneForForecast({
    downtimeLimitMs: 300,
    forecastBytesPerSec: 60 * MB,
    measuredBytesPerSec: 40 * MB,
  });
  assert.equal(t.downtimeLimitMs, 450);
  const wild = tuneForForecast({
    downtimeLimitMs: 300,
    forecastBytesPerSec: 1e12,
    measuredBytesPerSec: 1 * MB,
  });
  assert.equal(wild.downtimeLimitMs, 300 * MAX_LIMIT_SCALE);
  const dire = tuneForForecast({
    downtimeLimitMs: 300,
    forecastBytesPerSec: 1,
    measuredBytesPerSec: 100 * MB,
  });
  assert.equal(dire.downtimeLimitMs, 300 * MIN_LIMIT_SCALE);
});

Deno.test("before QEMU has a rate the asked limit stands", () => {
  const t = tuneForForecast({ downtimeLimitMs: 300, forecastBytesPerSec: 10 * MB, measuredBytesPerSec: 0 });
  assert.equal(t.downtimeLimitMs, 300);
  assert.equal(t.maxBytesPerSec, 15 * MB);
});

Deno.test("a forecast that is not a positive rate is refused, naming the value", () => {
  for (const bad of [0, -1, NaN]) {
    assert.throws(
      () => tuneForForecast({ downtimeLimitMs: 300, forecastBytesPerSec: bad, measuredBytesPerSec: MB }),
      /forecastBytesPerSec .*positive rate/,
    );
  }
});

Deno.test("max-bandwidth never drops below what the link has carried, whatever the forecast", () => {
  // A forecast of what was carried falls when QEMU is capped below the link's rate; capping at it again
  // would feed the fall. The floor keeps the cap at the headroom over the link's measured rate, while
  // the forecast still sets the downtime-limit.
  const low = tuneForForecast({
    downtimeLimitMs: 300,
    forecastBytesPerSec: 2 * MB,
    measuredBytesPerSec: 8 * MB,
    linkBytesPerSec: 12 * MB,
  });
  assert.equal(low.maxBytesPerSec, 12 * MB * BANDWIDTH_HEADROOM);
  assert.equal(low.downtimeLimitMs, 300 * MIN_LIMIT_SCALE);
  assert.match(low.reason, /from the link's measured 96\.0 Mbit\/s/);
  const high = tuneForForecast({
    downtimeLimitMs: 300,
    forecastBytesPerSec: 20 * MB,
    measuredBytesPerSec: 16 * MB,
    linkBytesPerSec: 12 * MB,
  });
  assert.equal(high.maxBytesPerSec, 20 * MB * BANDWIDTH_HEADROOM);
});
