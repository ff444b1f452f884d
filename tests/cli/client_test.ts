import assert from "node:assert/strict";
import {
  AgentUnreachableError,
  ApiClient,
  ApiRequestError,
  readServerSentEvents,
  type TransferSnapshot,
} from "../../src/cli/client.ts";
import { apiClient, UsageError } from "../../src/cli/common.ts";
import { deadApiUrl, withServer } from "./support.ts";

function streamOf(...pieces: string[]): ReadableStream<Uint8Array> {
  const enc = new TextEncoder();
  return ReadableStream.from(pieces.map((p) => enc.encode(p)));
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

Deno.test("readServerSentEvents: events split across chunks, CRLF, comments and multi-line data", async () => {
  const events = await collect(readServerSentEvents(streamOf(
    'event: progress\ndata: {"a"',
    ":1}\n\n: a comment\r\nid: 7\r\nevent: completed\r\ndata: x\r\ndata: y\r\n\r\n",
    "data: no event name\n\ndata: unterminated",
  )));
  assert.deepEqual(events, [
    { event: "progress", data: '{"a":1}' },
    { event: "completed", data: "x\ny" },
    { event: "message", data: "no event name" },
  ]);
});

Deno.test("readServerSentEvents refuses an event without end", async () => {
  const big = "data: " + "x".repeat(1 << 20);
  await assert.rejects(collect(readServerSentEvents(streamOf(big, big))), /exceeds/);
});

Deno.test("ApiClient maps the agent's error body to ApiRequestError and sends the token", async () => {
  const seen: string[] = [];
  await withServer((req) => {
    seen.push(`${req.method} ${new URL(req.url).pathname} ${req.headers.get("authorization")}`);
    return Response.json({ error: { code: "unauthorized", message: "missing or wrong bearer token" } }, {
      status: 401,
    });
  }, async (url) => {
    const err = await new ApiClient(url, "secret-token").cancelTransfer("t1").catch((e) => e);
    assert.ok(err instanceof ApiRequestError);
    assert.equal(err.status, 401);
    assert.equal(err.code, "unauthorized");
    assert.match(err.message, /^missing or wrong bearer token; pass --token or set DWCP_TOKEN$/);
  });
  assert.deepEqual(seen, ["DELETE /v1/transfers/t1 Bearer secret-token"]);
});

Deno.test("ApiClient: a failure that is not the agent's error shape keeps the HTTP status", async () => {
  await withServer(() => new Response("bad gateway", { status: 502 }), async (url) => {
    const err = await new ApiClient(url).info().catch((e) => e);
    assert.ok(err instanceof ApiRequestError);
    assert.equal(err.code, "http_502");
    assert.equal(err.message, "bad gateway");
  });
});

Deno.test("ApiClient.follow yields snapshots from the event stream", async () => {
  const snap = (state: string) => ({ id: "t1", state }) as TransferSnapshot;
  await withServer(
    () =>
      new Response(
        ["running", "completed"].map((s) => `event: ${s}\ndata: ${JSON.stringify(snap(s))}\n\n`).join(""),
        { headers: { "content-type": "text/event-stream" } },
      ),
    async (url) => {
      const states = (await collect(new ApiClient(url).follow("t1"))).map((s) => s.state);
      assert.deepEqual(states, ["running", "completed"]);
    },
  );
});

Deno.test("ApiClient: nothing listening is AgentUnreachableError naming the URL and `dwcp agent`", async () => {
  const url = deadApiUrl();
  const err = await new ApiClient(url).listTransfers().catch((e) => e);
  assert.ok(err instanceof AgentUnreachableError);
  assert.match(
    err.message,
    new RegExp(`^cannot reach the dwcp agent at ${url}: .*refused.*; start it with \`dwcp agent\`$`),
  );
});

Deno.test("apiClient: --api, then DWCP_API_URL, then the default; a bad URL is a usage error", () => {
  assert.equal(apiClient({}, {}).baseUrl, "http://127.0.0.1:7700");
  assert.equal(apiClient({}, { DWCP_API_URL: "http://h:1/" }).baseUrl, "http://h:1");
  assert.equal(apiClient({ api: "http://x:2" }, { DWCP_API_URL: "http://h:1" }).baseUrl, "http://x:2");
  assert.equal(apiClient({}, { DWCP_TOKEN: "t" }).token, "t");
  assert.equal(apiClient({ token: "u" }, { DWCP_TOKEN: "t" }).token, "u");
  assert.throws(() => apiClient({ api: "127.0.0.1:7700" }, {}), UsageError);
});
