/** src/api/app.ts and its routes, through app.request(): no sockets, except one to find a closed port. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadConfig } from "../../src/agent/config.ts";
import { Roots } from "../../src/agent/roots.ts";
import { TransferService } from "../../src/agent/transfers.ts";
import { createApp } from "../../src/api/app.ts";
import { MigrationService } from "../../src/migration/service.ts";
import { silentLogger } from "../../src/obs/log.ts";
import { VmManager } from "../../src/vm/manager.ts";
import { MAX_BODY_BYTES } from "../../src/api/validate.ts";

const TOKEN = "test-token-0123456789";

interface Env {
  app: ReturnType<typeof createApp>;
  root: string;
}

/**
 * An app over a real TransferService with a temporary state dir and root; one configured peer "b"
 * whose address is a port nothing listens on. Everything is removed afterwards.
 */
async function withApp(body: (env: Env) => Promise<void>, token?: string): Promise<void> {
  const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "dwcp-api-" }));
  try {
    const root = join(dir, "root");
    const config = await loadConfig(
      { stateDir: join(dir, "state"), root: [root], peer: [`b=127.0.0.1:${await closedPort()}`] },
      {},
    );
    const roots = new Roots(config.roots);
    await roots.ensure();
    const identity = { agentId: "test-agent", capabilities: { codecs: ["none"], rdma: false } };
    const transfers = new TransferService(config, roots, identity);
    const vms = new VmManager({ runDir: join(dir, "run") });
    const migrations = new MigrationService({
      vms,
      identity,
      secret: config.secret,
      resolvePeer: (peer) => transfers.resolvePeer(peer),
      defaults: config.transfer,
      log: silentLogger,
    });
    const app = createApp({
      transfers,
      vms,
      migrations,
      roots,
      token,
      info: () => ({ agentId: "test-agent", version: "test" }),
    });
    await body({ app, root });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A TCP port that was free a moment ago and has nothing listening on it now. */
async function closedPort(): Promise<number> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  await Promise.resolve();
  return port;
}

function post(app: Env["app"], body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return Promise.resolve(app.request("/v1/transfers", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  }));
}

interface ErrorBody {
  error: { code: string; message: string; details?: { field: string; value: unknown }[] };
}

/** Asserts status and error code; returns the error for checks on its message. */
async function expectError(res: Response, status: number, code: string): Promise<ErrorBody["error"]> {
  const text = await res.text();
  assert.equal(res.status, status, text.length > 400 ? text.slice(0, 400) + "..." : text);
  const body = JSON.parse(text) as ErrorBody;
  assert.equal(body.error.code, code, text);
  assert.equal(typeof body.error.message, "string");
  return body.error;
}

Deno.test("GET /v1/health answers ok", () =>
  withApp(async ({ app }) => {
    const res = await app.request("/v1/health");
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { status: "ok" });
  }));

Deno.test("GET /v1/info answers what info() returns", () =>
  withApp(async ({ app }) => {
    const res = await app.request("/v1/info");
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { agentId: "test-agent", version: "test" });
  }));

Deno.test("an unknown route is a 404 not_found error naming the route", () =>
  withApp(async ({ app }) => {
    const err = await expectError(await app.request("/v1/nothing-here"), 404, "not_found");
    assert.match(err.message, /GET \/v1\/nothing-here/);
    await expectError(await app.request("/v1/health", { method: "DELETE" }), 404, "not_found");
  }));

Deno.test("GET /v1/transfers lists nothing at first", () =>
  withApp(async ({ app }) => {
    const res = await app.request("/v1/transfers");
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { transfers: [] });
  }));

Deno.test("GET /v1/transfers/:id of an unknown transfer is 404, naming the id", () =>
  withApp(async ({ app }) => {
    const err = await expectError(await app.request("/v1/transfers/unknown"), 404, "not_found");
    assert.match(err.message, /"unknown"/);
    await expectError(await app.request("/v1/transfers/unknown", { method: "DELETE" }), 404, "not_found");
  }));

Deno.test("POST /v1/transfers with a body that is not JSON is 400 invalid_request", () =>
  withApp(async ({ app }) => {
    await expectError(await post(app, "{source:"), 400, "invalid_request");
    await expectError(await post(app, ""), 400, "invalid_request");
  }));

Deno.test("streams: 0 is a 400 naming the field and the value", () =>
  withApp(async ({ app, root }) => {
    await Deno.writeTextFile(join(root, "f"), "x");
    const err = await expectError(
      await post(app, { source: "f", peer: "b", streams: 0 }),
      400,
      "invalid_request",
    );
    assert.match(err.message, /streams = 0/);
    assert.deepEqual(err.details?.map((d) => [d.field, d.value]), [["streams", 0]]);
  }));

Deno.test("an unknown codec is a 400 that lists the codecs", () =>
  withApp(async ({ app }) => {
    const err = await expectError(
      await post(app, { source: "f", peer: "b", codec: "gzip" }),
      400,
      "invalid_request",
    );
    assert.match(err.message, /codec = "gzip"/);
    assert.match(err.message, /zstd/);
  }));

Deno.test("a missing source is a 400 naming the field", () =>
  withApp(async ({ app }) => {
    const err = await expectError(await post(app, { peer: "b" }), 400, "invalid_request");
    assert.deepEqual(err.details?.map((d) => d.field), ["source"]);
  }));

Deno.test("a body with unknown fields or of the wrong shape is a 400", () =>
  withApp(async ({ app }) => {
    const err = await expectError(
      await post(app, { source: "f", peer: "b", strems: 2 }),
      400,
      "invalid_request",
    );
    assert.match(err.message, /strems/);
    await expectError(await post(app, [1, 2]), 400, "invalid_request");
    await expectError(await post(app, { source: "f", peer: "b", chunkBytes: 100 }), 400, "invalid_request");
  }));

Deno.test("an unknown peer name is 400 unknown_peer naming the peer and the known ones", () =>
  withApp(async ({ app, root }) => {
    await Deno.writeTextFile(join(root, "f"), "x");
    const err = await expectError(await post(app, { source: "f", peer: "nosuch" }), 400, "unknown_peer");
    assert.match(err.message, /"nosuch"/);
    assert.match(err.message, /\(b\)/);
  }));

Deno.test("a source outside the roots is 403 path_outside_roots", () =>
  withApp(async ({ app }) => {
    const err = await expectError(
      await post(app, { source: "../../etc/passwd", peer: "b" }),
      403,
      "path_outside_roots",
    );
    assert.match(err.message, /"\.\.\/\.\.\/etc\/passwd"/);
    await expectError(await post(app, { source: "/etc/passwd", peer: "b" }), 403, "path_outside_roots");
  }));

Deno.test("a missing source inside the root is 404 not_found naming the file", () =>
  withApp(async ({ app }) => {
    const err = await expectError(await post(app, { source: "missing.img", peer: "b" }), 404, "not_found");
    assert.match(err.message, /"missing\.img"/);
  }));

Deno.test("a directory as source is 400 not_a_file", () =>
  withApp(async ({ app, root }) => {
    await Deno.mkdir(join(root, "dir"));
    await expectError(await post(app, { source: "dir", peer: "b" }), 400, "not_a_file");
  }));

Deno.test("a peer where nothing listens is 502 peer_unreachable, and no transfer is recorded", () =>
  withApp(async ({ app, root }) => {
    await Deno.writeTextFile(join(root, "f"), "some bytes");
    for (const peer of ["b", `127.0.0.1:${await closedPort()}`]) {
      const err = await expectError(await post(app, { source: "f", peer }), 502, "peer_unreachable");
      assert.match(err.message, /127\.0\.0\.1:\d+/);
    }
    assert.deepEqual(await (await app.request("/v1/transfers")).json(), { transfers: [] });
  }));

Deno.test("a body larger than 64 KiB is 413", () =>
  withApp(async ({ app }) => {
    const body = JSON.stringify({ source: "x".repeat(MAX_BODY_BYTES), peer: "b" });
    await expectError(await post(app, body), 413, "body_too_large");
  }));

Deno.test("the body limit counts bytes, not characters", () =>
  withApp(async ({ app }) => {
    // 40,000 two-byte characters: 80,000 bytes on the wire, 40,000 UTF-16 units.
    const body = JSON.stringify({ source: "é".repeat(40_000), peer: "nosuch" });
    assert.ok(new TextEncoder().encode(body).length > MAX_BODY_BYTES);
    await expectError(await post(app, body), 413, "body_too_large");
  }));

Deno.test("an oversized body is refused without reading all of it", () =>
  withApp(async ({ app }) => {
    // A 16 MiB body in 64 KiB pieces; a bounded reader stops soon after the limit.
    const piece = new TextEncoder().encode("x".repeat(64 * 1024));
    let pulled = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (pulled >= 256) return controller.close();
        pulled++;
        controller.enqueue(piece);
      },
    });
    const res = await app.request("/v1/transfers", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body,
    });
    await expectError(res, 413, "body_too_large");
    assert.ok(pulled <= 4, `the server read ${pulled} pieces of 64 KiB before refusing`);
  }));

Deno.test("with a token, requests without the right bearer are 401; /v1/health stays open", () =>
  withApp(async ({ app }) => {
    await expectError(await app.request("/v1/transfers"), 401, "unauthorized");
    await expectError(
      await app.request("/v1/transfers", { headers: { Authorization: "Bearer wrong-token-0123456789" } }),
      401,
      "unauthorized",
    );
    await expectError(
      await app.request("/v1/transfers", { headers: { Authorization: `Bearer ${TOKEN}x` } }),
      401,
      "unauthorized",
    );
    await expectError(
      await app.request("/v1/info", { headers: { Authorization: "Bearer " } }),
      401,
      "unauthorized",
    );
    await expectError(await post(app, { source: "f", peer: "b" }), 401, "unauthorized");

    const ok = await app.request("/v1/transfers", { headers: { Authorization: `Bearer ${TOKEN}` } });
    assert.equal(ok.status, 200);
    assert.deepEqual(await ok.json(), { transfers: [] });

    const health = await app.request("/v1/health");
    assert.equal(health.status, 200);
  }, TOKEN));

Deno.test("without a token configured, no Authorization header is needed", () =>
  withApp(async ({ app }) => {
    assert.equal((await app.request("/v1/transfers")).status, 200);
  }));
