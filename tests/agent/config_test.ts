/** src/agent/config.ts: defaults → file → env → flags, validated once, with errors that name the value. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { type AgentConfig, ConfigError, type ConfigFlags, loadConfig } from "../../src/agent/config.ts";

const SECRET = "0123456789abcdef-shared";

/** Runs body with a fresh temporary state directory, removed afterwards. */
async function withStateDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "dwcp-config-" });
  try {
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** loadConfig with an explicit environment: never the real one. */
function load(dir: string, flags: ConfigFlags = {}, env: Record<string, string> = {}): Promise<AgentConfig> {
  return loadConfig({ stateDir: dir, ...flags }, env);
}

async function writeConfigFile(dir: string, content: unknown): Promise<string> {
  const path = join(dir, "dwcp.json");
  await Deno.writeTextFile(path, typeof content === "string" ? content : JSON.stringify(content));
  return path;
}

/** Asserts the promise rejects with ConfigError and returns its message. */
async function configError(p: Promise<unknown>): Promise<string> {
  const err = await p.then(() => "no error: the configuration was accepted", (e) => e);
  assert.ok(err instanceof ConfigError, `expected ConfigError, got ${err}`);
  return err.message;
}

Deno.test("defaults: loopback API, four streams, roots and secret under the state dir", () =>
  withStateDir(async (dir) => {
    const c = await load(dir);
    assert.equal(c.api.listen, "127.0.0.1:7700");
    assert.equal(c.api.token, undefined);
    assert.equal(c.data.listen, "0.0.0.0:7701");
    assert.equal(c.transfer.streams, 4);
    assert.equal(c.transfer.codec, "none");
    assert.equal(c.stateDir, dir);
    assert.deepEqual(c.roots, [join(dir, "files")]);
    assert.deepEqual(c.peers, {});
    assert.ok(c.agentId.length > 0);
  }));

Deno.test("the secret is created once with mode 0600 and reused on the next load", () =>
  withStateDir(async (dir) => {
    const first = await load(dir);
    assert.match(first.secret, /^[0-9a-f]{64}$/);
    const st = await Deno.stat(join(dir, "secret"));
    assert.equal(st.mode! & 0o777, 0o600);
    assert.equal((await Deno.readTextFile(join(dir, "secret"))).trim(), first.secret);

    const second = await load(dir);
    assert.equal(second.secret, first.secret);
  }));

Deno.test("a state dir that does not exist yet is created for the secret", () =>
  withStateDir(async (dir) => {
    const nested = join(dir, "a", "b");
    const c = await load(nested);
    assert.equal((await Deno.readTextFile(join(nested, "secret"))).trim(), c.secret);
  }));

Deno.test("DWCP_SECRET and --secret-file take precedence over the state dir's secret", () =>
  withStateDir(async (dir) => {
    assert.equal((await load(dir, {}, { DWCP_SECRET: SECRET })).secret, SECRET);
    assert.equal(await Deno.lstat(join(dir, "secret")).then(() => true, () => false), false);
    const file = join(dir, "my-secret");
    await Deno.writeTextFile(file, "from-a-file-0123456789\n");
    assert.equal(
      (await load(dir, { secretFile: file }, { DWCP_SECRET: SECRET })).secret,
      "from-a-file-0123456789",
    );
  }));

Deno.test("layers: file < environment < flags, merged field by field", () =>
  withStateDir(async (dir) => {
    const config = await writeConfigFile(dir, {
      agentId: "from-file",
      api: { listen: "127.0.0.1:8000" },
      data: { listen: "127.0.0.1:9000" },
      transfer: { streams: 8 },
      peers: { c: "10.0.0.3:7701" },
    });
    const c = await load(dir, { config, api: "127.0.0.1:8002" }, {
      DWCP_ID: "from-env",
      DWCP_API: "127.0.0.1:8001",
      DWCP_PEERS: "a=10.0.0.1:7701,b=10.0.0.2:7701",
    });
    assert.equal(c.api.listen, "127.0.0.1:8002", "flag beats env and file");
    assert.equal(c.agentId, "from-env", "env beats file");
    assert.equal(c.data.listen, "127.0.0.1:9000", "file beats default");
    assert.equal(c.transfer.streams, 8);
    assert.equal(c.transfer.chunkBytes, 1024 * 1024, "other transfer defaults survive");
    assert.deepEqual(c.peers, { a: "10.0.0.1:7701", b: "10.0.0.2:7701", c: "10.0.0.3:7701" });
  }));

Deno.test("DWCP_CONFIG names the file when --config is not given; --config wins", () =>
  withStateDir(async (dir) => {
    const envFile = await writeConfigFile(dir, { agentId: "env-file" });
    const flagFile = join(dir, "other.json");
    await Deno.writeTextFile(flagFile, JSON.stringify({ agentId: "flag-file" }));
    assert.equal((await load(dir, {}, { DWCP_CONFIG: envFile })).agentId, "env-file");
    assert.equal((await load(dir, { config: flagFile }, { DWCP_CONFIG: envFile })).agentId, "flag-file");
  }));

Deno.test("--peer adds to and overrides the peers from env and file", () =>
  withStateDir(async (dir) => {
    const c = await load(dir, { peer: ["b=10.9.9.9:7701", "d=host-d:7701"] }, {
      DWCP_PEERS: "a=10.0.0.1:7701,b=10.0.0.2:7701",
    });
    assert.deepEqual(c.peers, { a: "10.0.0.1:7701", b: "10.9.9.9:7701", d: "host-d:7701" });
  }));

Deno.test("roots come from DWCP_ROOTS (colon-separated) or --root, flags first", () =>
  withStateDir(async (dir) => {
    assert.deepEqual((await load(dir, {}, { DWCP_ROOTS: "/srv/a:/srv/b" })).roots, ["/srv/a", "/srv/b"]);
    assert.deepEqual((await load(dir, { root: ["/x"] }, { DWCP_ROOTS: "/srv/a" })).roots, ["/x"]);
  }));

Deno.test("an invalid number names the field and the value", () =>
  withStateDir(async (dir) => {
    const config = await writeConfigFile(dir, { transfer: { streams: 0 } });
    const msg = await configError(load(dir, { config }));
    assert.match(msg, /transfer\.streams = 0/);
  }));

Deno.test("an invalid address names the field, the value and the expected form", () =>
  withStateDir(async (dir) => {
    const msg = await configError(load(dir, { api: "nope" }));
    assert.match(msg, /api\.listen = "nope"/);
    assert.match(msg, /HOST:PORT/);
    assert.match(await configError(load(dir, {}, { DWCP_DATA: "1.2.3.4" })), /data\.listen = "1\.2\.3\.4"/);
  }));

Deno.test("every invalid field is reported at once", () =>
  withStateDir(async (dir) => {
    const config = await writeConfigFile(dir, {
      transfer: { streams: 0, codec: "gzip", windowChunks: 1000 },
    });
    const msg = await configError(load(dir, { config }));
    assert.match(msg, /transfer\.streams = 0/);
    assert.match(msg, /transfer\.codec = "gzip"/);
    assert.match(msg, /transfer\.windowChunks = 1000/);
  }));

Deno.test("a port above 65535 is refused", () =>
  withStateDir(async (dir) => {
    assert.match(
      await configError(load(dir, { api: "127.0.0.1:70000" })),
      /api\.listen = "127\.0\.0\.1:70000"/,
    );
    assert.match(await configError(load(dir, { data: "0.0.0.0:99999" })), /data\.listen/);
  }));

Deno.test("a short secret is refused without printing it", () =>
  withStateDir(async (dir) => {
    const msg = await configError(load(dir, {}, { DWCP_SECRET: "short-one" }));
    assert.match(msg, /secret = \(hidden\)/);
    assert.ok(!msg.includes("short-one"), msg);
  }));

Deno.test("an unknown key in the config file is named, and the secret and token are not printed", () =>
  withStateDir(async (dir) => {
    const config = await writeConfigFile(dir, { agentID: "typo", api: { token: "token-token-token-1" } });
    const msg = await configError(load(dir, { config }, { DWCP_SECRET: SECRET }));
    assert.match(msg, /agentID/);
    assert.ok(!msg.includes(SECRET), `the secret leaks into the error: ${msg}`);
    assert.ok(!msg.includes("token-token-token-1"), `the token leaks into the error: ${msg}`);
  }));

Deno.test("a non-loopback API without a token is refused, naming DWCP_TOKEN", () =>
  withStateDir(async (dir) => {
    const msg = await configError(load(dir, { api: "0.0.0.0:7700" }));
    assert.match(msg, /api\.listen = "0\.0\.0\.0:7700"/);
    assert.match(msg, /DWCP_TOKEN/);
    await configError(load(dir, { api: "10.1.2.3:7700" }));
  }));

Deno.test("a non-loopback API with a token is accepted; a short token is not, and is not printed", () =>
  withStateDir(async (dir) => {
    const c = await load(dir, { api: "0.0.0.0:7700" }, { DWCP_TOKEN: "a-long-enough-token" });
    assert.equal(c.api.token, "a-long-enough-token");
    const msg = await configError(load(dir, { api: "0.0.0.0:7700" }, { DWCP_TOKEN: "tiny-tok" }));
    assert.match(msg, /api\.token = \(hidden\)/);
    assert.ok(!msg.includes("tiny-tok"), msg);
  }));

Deno.test("loopback API addresses need no token", () =>
  withStateDir(async (dir) => {
    for (const api of ["127.0.0.1:7700", "127.3.4.5:1", "localhost:7700", "[::1]:7700"]) {
      assert.equal((await load(dir, { api })).api.listen, api);
    }
  }));

Deno.test("--peer entries that are not NAME=HOST:PORT are refused", () =>
  withStateDir(async (dir) => {
    for (const bad of ["just-a-name", "=10.0.0.2:7701"]) {
      const msg = await configError(load(dir, { peer: [bad] }));
      assert.ok(msg.includes(`--peer: "${bad}" is not NAME=HOST:PORT`), msg);
    }
    assert.match(await configError(load(dir, { peer: ["b=nowhere"] })), /peers\.b = "nowhere"/);
    assert.match(await configError(load(dir, { peer: ["bad name=1.2.3.4:5"] })), /peers/);
  }));

Deno.test("DWCP_PEERS entries that are not NAME=HOST:PORT are refused, naming DWCP_PEERS", () =>
  withStateDir(async (dir) => {
    const msg = await configError(load(dir, {}, { DWCP_PEERS: "a=1.2.3.4:5,oops" }));
    assert.ok(msg.includes('DWCP_PEERS: "oops"'), msg);
  }));

Deno.test("a config file that is missing or not a JSON object is a ConfigError naming it", () =>
  withStateDir(async (dir) => {
    const missing = join(dir, "missing.json");
    assert.ok((await configError(load(dir, { config: missing }))).includes(missing));
    for (const content of ["{not json", "[1,2]", "null", "42"]) {
      const path = await writeConfigFile(dir, content);
      const msg = await configError(load(dir, { config: path }));
      assert.ok(msg.includes(path) && msg.includes("not a JSON object"), msg);
    }
  }));

Deno.test("a missing --secret-file is a ConfigError naming it", () =>
  withStateDir(async (dir) => {
    const path = join(dir, "no-such-secret");
    const msg = await configError(load(dir, { secretFile: path }));
    assert.ok(msg.includes(path), msg);
  }));
