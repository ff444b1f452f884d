/** src/predict/peer_forecast.ts: per-peer histories, forecasts per horizon, online choice, persistence. */
import assert from "node:assert/strict";
import type { Predictor } from "../../src/predict/baselines.ts";
import { ForecastBook, HISTORY_CAPACITY } from "../../src/predict/peer_forecast.ts";

const MB = 1e6;
const T0 = Date.UTC(2026, 10, 28);

/** A link that alternates 10 and 30 MB/s every second: "last" is always wrong, a mean is closer. */
function feedAlternating(book: ForecastBook, peer: string, n: number): void {
  for (let i = 0; i < n; i++) book.observe(peer, T0 + i * 1000, (i % 2 ? 30 : 10) * MB);
}

Deno.test("no forecast before a peer's first sample; then one per horizon", () => {
  const book = new ForecastBook();
  assert.equal(book.forecast("b"), undefined);
  book.observe("b", T0, 20 * MB);
  assert.deepEqual(book.forecast("b", 1), { bytesPerSec: 20 * MB, predictor: "last", horizonSteps: 1 });
  assert.equal(book.forecast("b", 10)?.horizonSteps, 10);
  assert.equal(book.forecast("c"), undefined, "peers are kept apart");
});

Deno.test("the online choice moves to the predictor that scores best on the peer's own samples", () => {
  const book = new ForecastBook();
  feedAlternating(book, "b", 120);
  const f = book.forecast("b", 1)!;
  assert.notEqual(f.predictor, "last", "last is wrong by 200 % or 67 % every second");
  assert.ok(f.bytesPerSec > 10 * MB && f.bytesPerSec < 30 * MB, `a mean-like forecast: ${f.bytesPerSec}`);
  const view = book.view("b")!;
  assert.equal(view.samples, 120);
  assert.equal(view.history.length, 60);
  assert.deepEqual(view.horizons.map((h) => h.horizonSteps), [1, 10]);
  const h1 = view.horizons[0];
  assert.equal(h1.chosen, f.predictor);
  assert.deepEqual(h1.forecasts.map((x) => x.predictor), h1.scoring.scores.map((s) => s.name));
  const last = h1.scoring.scores.find((s) => s.name === "last")!;
  const chosen = h1.scoring.scores.find((s) => s.name === f.predictor)!;
  assert.ok(chosen.mape < last.mape, `${f.predictor} ${chosen.mape} vs last ${last.mape}`);
});

Deno.test("an extra predictor per horizon (the LSTM's place) is scored beside the baselines", () => {
  const asked: number[] = [];
  const constant: Predictor = { name: "always-20", predict: () => 20 * MB };
  const book = new ForecastBook((h) => {
    asked.push(h);
    return [{ name: "last", predict: (hist) => hist[hist.length - 1] }, constant];
  });
  feedAlternating(book, "b", 60);
  assert.deepEqual(asked, [1, 10]);
  assert.equal(book.forecast("b", 1)?.predictor, "always-20");
});

Deno.test("persisted histories replay into the same choice and forecasts", () => {
  const book = new ForecastBook();
  feedAlternating(book, "b", 90);
  book.observe("c", T0, 5 * MB);
  const restored = ForecastBook.fromJSON(JSON.parse(JSON.stringify(book)));
  assert.deepEqual(restored.peers().sort(), ["b", "c"]);
  assert.deepEqual(restored.forecast("b", 1), book.forecast("b", 1));
  assert.deepEqual(restored.forecast("b", 10), book.forecast("b", 10));
  assert.deepEqual(restored.view("c")?.history, [{ atMs: T0, bytesPerSec: 5 * MB }]);
});

Deno.test("a history is bounded, and damaged persisted data is refused with the field named", () => {
  const book = new ForecastBook();
  for (let i = 0; i < HISTORY_CAPACITY + 10; i++) book.observe("b", T0 + i * 1000, MB);
  assert.equal(book.view("b")?.samples, HISTORY_CAPACITY);
  assert.throws(() => ForecastBook.fromJSON([]), /peer → sample ring/);
  assert.throws(() => ForecastBook.fromJSON({ b: { version: 2 } }), /version/);
});
