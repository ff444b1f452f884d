/**
 * src/transport/tls.ts and its settings: the "tls" config section, the checks on the certificate files
 * (made by `dwcp cert init` with the real openssl), which peers get TLS, and dial() against each kind of
 * data port over real loopback sockets.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ConfigError, type ConfigFlags, loadConfig } from "../../src/agent/config.ts";
import { certInit } from "../../src/cli/cert.ts";
import { UsageError } from "../../src/cli/common.ts";
import { dial, type PeerAddress, TransferError } from "../../src/transport/dial.ts";
import { type PeerIdentity, serverHandshake } from "../../src/transport/handshake.ts";
import { AgentTls, type DataListener, loadTlsMaterial } from "../../src/transport/tls.ts";
import { closeQuietly, expectMessage, receiveMessage, sendMessage } from "../../src/transport/wire.ts";

const SECRET = "0123456789abcdef-shared";
const identity = (agentId: string): PeerIdentity => ({
  agentId,
  capabilities: { codecs: ["none"], rdma: false },
});
/** Connections linger in the relay's pipes for a moment after close; the socket tests do not count them. */
const sockets = { sanitizeResources: false, sanitizeOps: false };

async function withDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "dwcp-tls-" });
  try {
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Asserts the promise rejects with an error of this class and returns its message. */
async function rejection(p: Promise<unknown>, type: new (...a: never[]) => Error): Promise<string> {
  const err = await p.then(() => "no error", (e) => e);
  assert.ok(err instanceof type, `expected ${type.name}, got ${err}`);
  return err.message;
}

// ---- the "tls" config section ------------------------------------------------------------------------

function load(dir: string, flags: ConfigFlags = {}, env: Record<string, string> = {}) {
  return loadConfig({ stateDir: dir, id: "a", ...flags }, { DWCP_SECRET: SECRET, ...env });
}

Deno.test("tls is off by default", () =>
  withDir(async (dir) => {
    const c = await load(dir);
    assert.deepEqual(c.tls, { mode: "off", peers: [] });
  }));

Deno.test("tls settings come from the file, then the environment, then flags", () =>
  withDir(async (dir) => {
    const file = join(dir, "dwcp.json");
    await Deno.writeTextFile(
      file,
      JSON.stringify({
        peers: { b: "10.0.0.2:7701", c: "10.0.0.3:7701" },
        tls: { mode: "auto", cert: "f.crt", key: "f.key", ca: "f-ca.crt", peers: ["b"] },
      }),
    );
    const fromFile = await load(dir, { config: file });
    assert.deepEqual(fromFile.tls, {
      mode: "auto",
      cert: "f.crt",
      key: "f.key",
      ca: "f-ca.crt",
      peers: ["b"],
    });

    const env = { DWCP_TLS: "on", DWCP_TLS_CERT: "e.crt", DWCP_TLS_PEERS: "b,c" };
    const fromEnv = await load(dir, { config: file }, env);
    assert.deepEqual(fromEnv.tls, {
      mode: "on",
      cert: "e.crt",
      key: "f.key",
      ca: "f-ca.crt",
      peers: ["b", "c"],
    });

    const flags = { config: file, tls: "auto", tlsKey: "x.key", tlsCa: "x-ca.crt", tlsPeer: ["c"] };
    const fromFlags = await load(dir, flags, env);
    assert.deepEqual(fromFlags.tls, {
      mode: "auto",
      cert: "e.crt",
      key: "x.key",
      ca: "x-ca.crt",
      peers: ["c"],
    });
  }));

Deno.test("a tls mode that does not exist is named in the error", () =>
  withDir(async (dir) => {
    const msg = await rejection(load(dir, { tls: "maybe" }), ConfigError);
    assert.match(msg, /tls\.mode = "maybe"/);
    assert.match(msg, /"off"|off/);
  }));

Deno.test("tls on without its files names each missing setting and its flag", () =>
  withDir(async (dir) => {
    const msg = await rejection(load(dir, { tls: "on", tlsCert: "a.crt" }), ConfigError);
    assert.match(msg, /tls\.mode = "on" needs tls\.key, tls\.ca/);
    assert.match(msg, /--tls-key FILE, --tls-ca FILE/);
    assert.match(msg, /dwcp cert init/);
  }));

Deno.test("tls.peers may name only configured peers", () =>
  withDir(async (dir) => {
    const flags = { tls: "auto", tlsCert: "a.crt", tlsKey: "a.key", tlsCa: "ca.crt" };
    const msg = await rejection(
      load(dir, { ...flags, peer: ["b=10.0.0.2:7701"], tlsPeer: ["c"] }),
      ConfigError,
    );
    assert.match(msg, /tls\.peers names "c", not among the configured peers \(b\)/);
  }));

// ---- certificates: dwcp cert init and the checks at start ---------------------------------------------

interface Cluster {
  dir: string;
  ca: string;
  cert(id: string): string;
  key(id: string): string;
  /** A second cluster, with its own CA and an agent "a". */
  other: { ca: string; cert: string; key: string };
}

/** Runs body with two test clusters made by cert init: agents a and b under one CA, a under another. */
async function withCluster(body: (c: Cluster) => Promise<void>): Promise<void> {
  await withDir(async (dir) => {
    const main = await certInit({ dir: join(dir, "main"), ids: ["a", "b"] });
    const other = await certInit({ dir: join(dir, "other"), ids: ["a"] });
    await body({
      dir,
      ca: main.ca,
      cert: (id) => join(dir, "main", `${id}.crt`),
      key: (id) => join(dir, "main", `${id}.key`),
      other: { ca: other.ca, cert: other.agents[0].cert, key: other.agents[0].key },
    });
  });
}

const settings = (
  c: { ca: string },
  cert: string,
  key: string,
  mode: "on" | "auto" = "on",
  peers: string[] = [],
) => ({
  mode,
  cert,
  key,
  ca: c.ca,
  peers,
});

Deno.test("cert init makes a CA and per-agent files that pass the checks at start", () =>
  withCluster(async (c) => {
    const m = await loadTlsMaterial(settings(c, c.cert("a"), c.key("a")), "a");
    assert.ok(m);
    assert.match(m.certPem, /BEGIN CERTIFICATE/);
    assert.match(m.keyPem, /BEGIN PRIVATE KEY/);
    assert.equal(m.caPem, await Deno.readTextFile(c.ca));
    assert.equal((await Deno.stat(c.key("a"))).mode! & 0o777, 0o600, "keys are private");
    assert.equal((await Deno.stat(join(c.dir, "main", "ca.key"))).mode! & 0o777, 0o600);
  }));

Deno.test("cert init adds agents under an existing CA, and overwrites nothing", () =>
  withCluster(async (c) => {
    const before = await Deno.readTextFile(c.ca);
    const added = await certInit({ dir: join(c.dir, "main"), ids: ["c"] });
    assert.equal(added.reusedCa, true);
    assert.equal(await Deno.readTextFile(c.ca), before);
    assert.ok(await loadTlsMaterial(settings(c, c.cert("c"), c.key("c")), "c"));

    const aBefore = await Deno.readTextFile(c.cert("a"));
    const msg = await rejection(certInit({ dir: join(c.dir, "main"), ids: ["d", "a"] }), UsageError);
    assert.match(msg, /a\.crt exists; remove it or choose another --dir/);
    assert.equal(await Deno.readTextFile(c.cert("a")), aBefore);
    await assert.rejects(Deno.stat(c.cert("d")), Deno.errors.NotFound, "nothing is made when one id clashes");
  }));

Deno.test("cert init refuses ids that cannot be DNS names", () =>
  withDir(async (dir) => {
    const msg = await rejection(certInit({ dir, ids: ["ok", "not_a_name", "-x"] }), UsageError);
    assert.match(msg, /"not_a_name", "-x"/);
    assert.deepEqual(await Array.fromAsync(Deno.readDir(dir)), [], "nothing was made");
  }));

Deno.test("a missing tls file is named with its setting", () =>
  withCluster(async (c) => {
    const missing = join(c.dir, "nope.crt");
    const msg = await rejection(loadTlsMaterial(settings(c, missing, c.key("a")), "a"), ConfigError);
    assert.match(msg, new RegExp(`tls\\.cert = "${missing}": cannot read it`));
  }));

Deno.test("a key that is not the certificate's is refused", () =>
  withCluster(async (c) => {
    const msg = await rejection(loadTlsMaterial(settings(c, c.cert("a"), c.key("b")), "a"), ConfigError);
    assert.match(msg, /tls\.key = ".*b\.key" does not match the certificate in tls\.cert = ".*a\.crt"/);
  }));

Deno.test("a key file that holds no key is refused", () =>
  withCluster(async (c) => {
    const msg = await rejection(loadTlsMaterial(settings(c, c.cert("a"), c.cert("a")), "a"), ConfigError);
    assert.match(msg, /tls\.key = ".*a\.crt" is not a PEM private key/);
  }));

Deno.test("a certificate made out to another agent is refused", () =>
  withCluster(async (c) => {
    const msg = await rejection(loadTlsMaterial(settings(c, c.cert("b"), c.key("b")), "a"), ConfigError);
    assert.match(msg, /is made out to DNS:b, not to this agent's id "a"/);
  }));

Deno.test("a certificate from another CA is refused", () =>
  withCluster(async (c) => {
    const msg = await rejection(loadTlsMaterial(settings(c, c.other.cert, c.other.key), "a"), ConfigError);
    assert.match(msg, /is not signed by the CA in tls\.ca/);
  }));

Deno.test("a CA file holding an agent's certificate is refused", () =>
  withCluster(async (c) => {
    const notCa = { ca: c.cert("b") };
    const msg = await rejection(loadTlsMaterial(settings(notCa, c.cert("a"), c.key("a")), "a"), ConfigError);
    assert.match(msg, /tls\.ca = ".*b\.crt": certificate 1 \(CN=b\) is not a CA/);
  }));

// ---- which peers get TLS ------------------------------------------------------------------------------

Deno.test("off never, on always, auto for listed peers and where the mode policy says so", () =>
  withCluster(async (c) => {
    const off = await AgentTls.load({ mode: "off", peers: [] }, "a");
    assert.equal(off.forPeer("b", true), undefined);
    assert.equal(off.forPeer("10.0.0.2:7701", false), undefined);

    const on = await AgentTls.load(settings(c, c.cert("a"), c.key("a")), "a");
    assert.deepEqual(on.forPeer("b", true), { name: "b", caPem: await Deno.readTextFile(c.ca) });

    const internet = new Set(["c"]);
    const auto = await AgentTls.load(
      settings(c, c.cert("a"), c.key("a"), "auto", ["b"]),
      "a",
      (peer) => internet.has(peer),
    );
    assert.equal(auto.forPeer("b", true)?.name, "b", "listed");
    assert.equal(auto.forPeer("c", true)?.name, "c", "the policy says internet");
    assert.equal(auto.forPeer("d", true), undefined, "neither");
    assert.equal(auto.forPeer("10.0.0.9:7701", false), undefined, "an address the policy does not flag");
  }));

Deno.test("a peer given only as HOST:PORT cannot be checked, so TLS refuses it", () =>
  withCluster(async (c) => {
    const on = await AgentTls.load(settings(c, c.cert("a"), c.key("a")), "a");
    assert.throws(
      () => on.forPeer("10.0.0.2:7701", false),
      (err) =>
        err instanceof TransferError && err.code === "unknown_peer" &&
        /add it as --peer ID=10\.0\.0\.2:7701/.test(err.message),
    );
  }));

// ---- dial() against each kind of data port ------------------------------------------------------------

/**
 * A data port that authenticates each connection and echoes one message back with the peer's id and the
 * address it saw; the failures of connections it refused are collected.
 */
function echoServer(listener: DataListener, id: string) {
  const refusals: string[] = [];
  const serving = (async () => {
    while (true) {
      let conn;
      try {
        conn = await listener.accept();
      } catch {
        return; // closed
      }
      (async () => {
        try {
          const peer = await serverHandshake(conn, SECRET, identity(id));
          const msg = await receiveMessage<{ type: string; text: string }>(conn);
          const { hostname, port } = conn.remoteAddr;
          await sendMessage(conn, {
            type: "echo",
            text: msg.text,
            from: peer.agentId,
            remote: { hostname, port },
          });
        } catch (err) {
          refusals.push((err as Error).message);
        } finally {
          closeQuietly(conn);
        }
      })();
    }
  })();
  return {
    address: (tls?: PeerAddress["tls"]): PeerAddress => ({
      host: "127.0.0.1",
      port: listener.addr.port,
      tls,
    }),
    refusals,
    async close() {
      listener.close();
      await serving;
    },
  };
}

/** Dials, sends one message and returns the echo. */
async function roundTrip(address: PeerAddress, me: string, text: string) {
  const conn = await dial(address, SECRET, identity(me));
  try {
    await sendMessage(conn, { type: "say", text });
    const echo = await expectMessage<{ type: "echo"; text: string; from: string; remote: Deno.NetAddr }>(
      conn,
      "echo",
    );
    return { echo, local: conn.localAddr };
  } finally {
    closeQuietly(conn);
  }
}

/** Waits until the server has recorded a refusal (it notices after the client has given up). */
async function refusal(server: { refusals: string[] }): Promise<string> {
  while (server.refusals.length === 0) await new Promise((r) => setTimeout(r, 10));
  return server.refusals[0];
}

Deno.test(
  { name: "a TLS-only data port: the right peer gets in, the others get reasons", ...sockets },
  () =>
    withCluster(async (c) => {
      const b = await AgentTls.load(settings(c, c.cert("b"), c.key("b")), "b");
      const a = await AgentTls.load(settings(c, c.cert("a"), c.key("a")), "a");
      const server = echoServer(b.listen("127.0.0.1", 0), "b");
      try {
        const { echo, local } = await roundTrip(server.address(a.forPeer("b", true)), "a", "over tls");
        assert.equal(echo.text, "over tls");
        assert.equal(echo.from, "a");
        assert.deepEqual(echo.remote, { hostname: local.hostname, port: local.port });
        assert.equal(local.transport, "tcp", "the TLS connection reports its socket's addresses");

        const plain = await rejection(roundTrip(server.address(), "a", "plain"), TransferError);
        assert.match(plain, /answered with TLS: its data port takes TLS only; set tls\.mode "on"/);
        assert.match(await refusal(server), /the peer speaks plain DWCP/);

        const wrongName = await rejection(
          roundTrip(server.address({ ...a.forPeer("b", true)!, name: "a" }), "a", ""),
          TransferError,
        );
        assert.match(wrongName, /TLS with peer "a" at 127\.0\.0\.1:\d+ failed: .*not valid for name "a"/);
        assert.match(wrongName, /not made out to "a"/);

        const otherCa = { name: "b", caPem: await Deno.readTextFile(c.other.ca) };
        const stranger = await rejection(roundTrip(server.address(otherCa), "a", ""), TransferError);
        assert.match(stranger, /UnknownIssuer; its certificate is not signed by this agent's tls\.ca/);
      } finally {
        await server.close();
      }
    }),
);

Deno.test(
  { name: "a TLS client to a plain data port is told the peer may not speak TLS", ...sockets },
  () =>
    withCluster(async (c) => {
      const b = await AgentTls.load({ mode: "off", peers: [] }, "b");
      const a = await AgentTls.load(settings(c, c.cert("a"), c.key("a")), "a");
      const server = echoServer(b.listen("127.0.0.1", 0), "b");
      try {
        const msg = await rejection(roundTrip(server.address(a.forPeer("b", true)), "a", ""), TransferError);
        assert.match(
          msg,
          /TLS with peer "b" .* failed: .*it may not speak TLS: set tls\.mode "on" or "auto" on "b"/,
        );
        assert.equal((await roundTrip(server.address(), "a", "plain")).echo.text, "plain");
      } finally {
        await server.close();
      }
    }),
);

Deno.test(
  { name: "an auto data port takes plain and TLS connections on one port", ...sockets },
  () =>
    withCluster(async (c) => {
      const b = await AgentTls.load(settings(c, c.cert("b"), c.key("b"), "auto"), "b");
      const a = await AgentTls.load(settings(c, c.cert("a"), c.key("a")), "a");
      const server = echoServer(b.listen("127.0.0.1", 0), "b");
      try {
        // Long enough that the message spans many TLS records and reads.
        const text = "x".repeat(40_000);
        const overTls = await roundTrip(server.address(a.forPeer("b", true)), "a", text);
        assert.equal(overTls.echo.text, text);
        assert.deepEqual(
          overTls.echo.remote,
          { hostname: overTls.local.hostname, port: overTls.local.port },
          "the server sees the peer's own address, not the relay's",
        );
        const plain = await roundTrip(server.address(), "p", text);
        assert.equal(plain.echo.text, text);
        assert.equal(plain.echo.from, "p");

        const otherCa = { name: "b", caPem: await Deno.readTextFile(c.other.ca) };
        assert.match(
          await rejection(roundTrip(server.address(otherCa), "a", ""), TransferError),
          /UnknownIssuer/,
        );
        assert.match(await refusal(server), /TLS handshake with 127\.0\.0\.1:\d+ failed: .*UnknownCA/);
      } finally {
        await server.close();
      }
    }),
);
