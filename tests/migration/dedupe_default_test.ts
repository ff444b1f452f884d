import assert from "node:assert/strict";
import type { ModeParameters } from "../../src/mode/parameters.ts";
import { type MigrationRequest, wantsDedupe } from "../../src/migration/service.ts";

const req: MigrationRequest = { vm: "g", peer: "b" };
const mode = (m: string) => ({ mode: m }) as ModeParameters;

Deno.test("dedupe: asked for or refused, the request decides", () => {
  for (const m of [undefined, mode("datacenter"), mode("internet")]) {
    assert.equal(wantsDedupe({ ...req, dedupe: true }, m), true);
    assert.equal(wantsDedupe({ ...req, dedupe: false }, m), false);
  }
});

Deno.test("dedupe: left open, on for internet links only, and not with the direct channel or multifd", () => {
  assert.equal(wantsDedupe(req, mode("internet")), true);
  assert.equal(wantsDedupe({ ...req, channel: "streams", multifdChannels: 0 }, mode("internet")), true);
  assert.equal(wantsDedupe(req, mode("hybrid")), false);
  assert.equal(wantsDedupe(req, mode("datacenter")), false);
  assert.equal(wantsDedupe(req, undefined), false);
  assert.equal(wantsDedupe({ ...req, channel: "direct" }, mode("internet")), false);
  assert.equal(wantsDedupe({ ...req, multifdChannels: 2 }, mode("internet")), false);
});
