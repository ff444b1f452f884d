/** Starting and following transfers through an agent's API, for the integration tests. */
import assert from "node:assert/strict";
import { type TestAgent, waitForTransfer } from "./agents.ts";

/** A transfer snapshot as GET /v1/transfers/:id returns it (docs/api.md); tests read what they need. */
export type TransferJson = Record<string, unknown> & {
  id: string;
  state: string;
  error?: { code: string; message: string };
};

/** POST /v1/transfers: the status and the body (a snapshot, or an error). */
export async function send(
  a: TestAgent,
  body: Record<string, unknown>,
): Promise<{ status: number; body: TransferJson }> {
  return await a.json<TransferJson>("/v1/transfers", { method: "POST", body: JSON.stringify(body) });
}

/** Starts a transfer, which must be accepted, and waits for its end. */
export async function sendAndWait(a: TestAgent, body: Record<string, unknown>): Promise<TransferJson> {
  const res = await send(a, body);
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return await waitForTransfer(a, res.body.id) as TransferJson;
}

/** Waits until the predicate holds on the agent's view of the transfer (no time limit: tests have none). */
export async function untilTransfer(
  a: TestAgent,
  id: string,
  ok: (s: TransferJson) => boolean,
): Promise<TransferJson> {
  while (true) {
    const { body } = await a.json<TransferJson>(`/v1/transfers/${id}`);
    if (ok(body)) return body;
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The names in a directory, sorted. */
export async function listDir(dir: string): Promise<string[]> {
  return (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
}
