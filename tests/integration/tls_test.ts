/**
 * Agent-to-agent TLS between real agent processes on loopback, with certificates from `dwcp cert init`
 * (the openssl CLI): an intact transfer and a clean cancel over TLS, refusals of a peer from another CA
 * and of a plain-text peer, and an "auto" data port taking TLS and plain peers side by side.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { certInit } from "../../src/cli/cert.ts";
import { sha256File, startAgent, type TestAgent, writeRandomFile } from "../support/agents.ts";
import { listDir, send, sendAndWait, type TransferJson, untilTransfer } from "../support/transfers.ts";

const MiB = 1024 * 1024;
const opts = { sanitizeResources: false, sanitizeOps: false };

type Snapshot = TransferJson;
type Refusal = { error: { code: string; message: string } };

interface Certs {
  /** The "tls" config section of agent `id`, in this mode, from the cluster in `dir`. */
  tls(id: string, mode?: "on" | "auto", peers?: string[]): Record<string, unknown>;
  /** The same for agent "a" of a second cluster, with its own CA. */
  strangerTls: Record<string, unknown>;
}

/** Runs body with two test clusters: a, b and p under one CA, and another "a" under a second CA. */
async function withCerts(body: (certs: Certs) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "dwcp-tls-certs-" });
  try {
    const main = await certInit({ dir: join(dir, "main"), ids: ["a", "b", "p"] });
    const other = await certInit({ dir: join(dir, "other"), ids: ["a"] });
    const files = (ca: string, d: string, id: string) => ({
      ca,
      cert: join(d, `${id}.crt`),
      key: join(d, `${id}.key`),
    });
    await body({
      tls: (id, mode = "on", peers = []) => ({ mode, peers, ...files(main.ca, join(dir, "main"), id) }),
      strangerTls: { mode: "on", ...files(other.ca, join(dir, "other"), "a") },
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Waits until the agent's log holds a line matching re (it logs a refusal after the peer gave up). */
async function logged(agent: TestAgent, re: RegExp): Promise<string> {
  while (true) {
    const line = agent.logs.split("\n").find((l) => re.test(l));
    if (line) return line;
    await new Promise((r) => setTimeout(r, 20));
  }
}

Deno.test({ name: "two agents with TLS on", ...opts }, (t) =>
  withCerts(async (certs) => {
    const b = await startAgent({ id: "b", tls: certs.tls("b") });
    const a = await startAgent({ id: "a", tls: certs.tls("a"), peers: { b: b.dataAddr } });
    try {
      assert.deepEqual((await a.json("/v1/info")).body.tls, { mode: "on", peers: [] });

      await t.step("a 64 MiB random file arrives intact over 4 streams of TLS", async () => {
        await writeRandomFile(join(a.root, "random.bin"), 64 * MiB);
        const snap = await sendAndWait(a, { source: "random.bin", peer: "b", destination: "r/random.bin" });
        assert.equal(snap.state, "completed", JSON.stringify(snap.error));
        assert.equal(snap.bytesDone, 64 * MiB);
        assert.equal(
          await sha256File(join(b.root, "r/random.bin")),
          await sha256File(join(a.root, "random.bin")),
        );
      });

      await t.step("cancel mid-transfer over TLS leaves nothing at the destination", async () => {
        await writeRandomFile(join(a.root, "slow.bin"), 64 * MiB);
        const res = await send(a, {
          source: "slow.bin",
          peer: "b",
          destination: "cancelled/slow.bin",
          maxBytesPerSec: 16 * MiB,
        });
        assert.equal(res.status, 201, JSON.stringify(res.body));
        await untilTransfer(a, res.body.id, (s) => (s.bytesDone as number) > 4 * MiB);
        const del = await a.json<Snapshot>(`/v1/transfers/${res.body.id}`, { method: "DELETE" });
        assert.equal(del.status, 200, JSON.stringify(del.body));
        assert.equal(del.body.state, "cancelled");
        assert.deepEqual(await listDir(join(b.root, "cancelled")), [], "neither the file nor a partial one");
        const incoming = await untilTransfer(b, res.body.id, (s) => s.state !== "running");
        assert.equal(incoming.state, "cancelled");
      });
    } finally {
      await a.stop();
      await b.stop();
    }
  }));

Deno.test(
  { name: "a TLS-only agent refuses a peer from another CA and a plain-text peer", ...opts },
  (t) =>
    withCerts(async (certs) => {
      const b = await startAgent({ id: "b", tls: certs.tls("b") });
      const stranger = await startAgent({ id: "a", tls: certs.strangerTls, peers: { b: b.dataAddr } });
      const plain = await startAgent({ id: "p", peers: { b: b.dataAddr } });
      try {
        await t.step("a peer whose CA is another cluster's cannot connect", async () => {
          await Deno.writeTextFile(join(stranger.root, "f.txt"), "hello");
          const res = await send(stranger, { source: "f.txt", peer: "b" });
          assert.equal(res.status, 502, JSON.stringify(res.body));
          const { error } = res.body as unknown as Refusal;
          assert.equal(error.code, "tls_failed");
          assert.match(
            error.message,
            /TLS with peer "b" at 127\.0\.0\.1:\d+ failed: invalid peer certificate/,
          );
          assert.match(error.message, /its certificate is not signed by this agent's tls\.ca/);
          const line = await logged(b, /does not trust this agent's certificate/);
          assert.match(line, /refused connection.*TLS handshake with 127\.0\.0\.1:\d+ failed/);
          assert.deepEqual(await listDir(b.root), []);
        });

        await t.step("a plain-text peer is told that the port takes TLS only", async () => {
          await Deno.writeTextFile(join(plain.root, "f.txt"), "hello");
          const res = await send(plain, { source: "f.txt", peer: "b" });
          assert.equal(res.status, 502, JSON.stringify(res.body));
          const { error } = res.body as unknown as Refusal;
          assert.equal(error.code, "tls_required");
          assert.match(error.message, /answered with TLS: its data port takes TLS only; set tls\.mode "on"/);
          assert.match(await logged(b, /the peer speaks plain DWCP/), /refused connection/);
          assert.deepEqual(await listDir(b.root), []);
        });
      } finally {
        await stranger.stop();
        await plain.stop();
        await b.stop();
      }
    }),
);

/**
 * A loopback relay in front of a data port that watches what crosses it towards the port for a piece of
 * plain text, so a test can tell encrypted traffic from clear.
 */
class WireTap {
  readonly #listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  readonly #conns = new Set<Deno.TcpConn>();
  readonly #serving: Promise<void>;
  /** Reads towards the port in which the text appeared. */
  sightings = 0;

  constructor(target: string, readonly text: string) {
    this.#serving = this.#serve(target);
  }

  get addr(): string {
    return `127.0.0.1:${this.#listener.addr.port}`;
  }

  async #serve(target: string): Promise<void> {
    const i = target.lastIndexOf(":");
    for await (const client of this.#listener) {
      const server = await Deno.connect({ hostname: target.slice(0, i), port: Number(target.slice(i + 1)) });
      this.#conns.add(client).add(server);
      this.#pump(client, server, true);
      this.#pump(server, client, false);
    }
  }

  async #pump(from: Deno.TcpConn, to: Deno.TcpConn, watch: boolean): Promise<void> {
    const buf = new Uint8Array(256 * 1024);
    const decoder = new TextDecoder("latin1");
    try {
      while (true) {
        const n = await from.read(buf);
        if (n === null) break;
        if (watch && decoder.decode(buf.subarray(0, n)).includes(this.text)) this.sightings++;
        for (let off = 0; off < n;) off += await to.write(buf.subarray(off, n));
      }
    } catch { /* a side went away */ }
    for (const c of [from, to]) {
      try {
        c.close();
      } catch { /* closed already */ }
    }
  }

  async close(): Promise<void> {
    this.#listener.close();
    for (const c of this.#conns) {
      try {
        c.close();
      } catch { /* closed already */ }
    }
    await this.#serving.catch(() => {});
  }
}

Deno.test(
  { name: "an auto data port takes a TLS peer and a plain peer on one port", ...opts },
  () =>
    withCerts(async (certs) => {
      const b = await startAgent({ id: "b", tls: certs.tls("b", "auto") });
      const text = "a line of plain text that only an eavesdropper on a clear link could read\n";
      const tapTls = new WireTap(b.dataAddr, text), tapPlain = new WireTap(b.dataAddr, text);
      // a lists b in tls.peers, so it reaches b over TLS; p has TLS off.
      const a = await startAgent({ id: "a", tls: certs.tls("a", "auto", ["b"]), peers: { b: tapTls.addr } });
      const plain = await startAgent({ id: "p", peers: { b: tapPlain.addr } });
      try {
        const content = text.repeat(Math.ceil(8 * MiB / text.length));
        await Deno.writeTextFile(join(a.root, "secret.txt"), content);
        await Deno.writeTextFile(join(plain.root, "open.txt"), content);
        const [overTls, inClear] = await Promise.all([
          sendAndWait(a, { source: "secret.txt", peer: "b" }),
          sendAndWait(plain, { source: "open.txt", peer: "b" }),
        ]);
        assert.equal(overTls.state, "completed", JSON.stringify(overTls.error));
        assert.equal(inClear.state, "completed", JSON.stringify(inClear.error));
        assert.equal(await Deno.readTextFile(join(b.root, "secret.txt")), content);
        assert.equal(await Deno.readTextFile(join(b.root, "open.txt")), content);
        assert.equal(tapTls.sightings, 0, "the TLS peer's bytes are encrypted on the wire");
        assert.ok(tapPlain.sightings > 0, "the plain peer's bytes cross in the clear");
      } finally {
        await a.stop();
        await plain.stop();
        await b.stop();
        await tapTls.close();
        await tapPlain.close();
      }
    }),
);
