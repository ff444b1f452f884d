/** The CLI as a user runs it: a subprocess of main.ts talking to real agents. */
import assert from "node:assert/strict";
import { sha256File, startAgent, type TestAgent, writeRandomFile } from "../support/agents.ts";
import { cli, deadApiUrl, runCli } from "./support.ts";

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

Deno.test("dwcp send/status/info against two real agents", async (t) => {
  let a: TestAgent | undefined, b: TestAgent | undefined;
  try {
    a = await startAgent({ id: "a" });
    b = await startAgent({ id: "b" });
    const A = a, B = b;
    const source = `${A.root}/random.bin`;
    await writeRandomFile(source, 32 * 1024 * 1024);
    let transferId = "";

    await t.step("send moves the file, draws progress on stderr and prints a summary", async () => {
      const r = await runCli(
        "send",
        source,
        "--to",
        `${B.dataAddr}:copy.bin`,
        "--streams",
        "4",
        "--api",
        A.apiUrl,
      );
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^completed: 32\.0 MiB in /);
      assert.match(r.stdout, new RegExp(`destination  ${B.dataAddr}:${B.root}/copy\\.bin`));
      assert.match(r.stdout, /streams {6}#0 [\d.]+ [KM]iB, #1 .*, #2 .*, #3 /);
      assert.match(r.stderr, /\[[#-]{10,30}\] +[\d.]+%/); // not a terminal: plain progress lines
      assert.equal(await sha256File(`${B.root}/copy.bin`), await sha256File(source));
      transferId = /transfer +(\S+)/.exec(r.stdout)![1];
    });

    await t.step("status lists the transfer and shows it by short id", async () => {
      const list = await runCli("status", "--api", A.apiUrl);
      assert.equal(list.code, 0, list.stderr);
      assert.match(list.stdout, new RegExp(`^${transferId.slice(0, 8)} +send +completed +100\\.0%`, "m"));
      const one = await runCli("status", transferId.slice(0, 8), "--json", "--api", A.apiUrl);
      assert.equal(one.code, 0, one.stderr);
      const snap = JSON.parse(one.stdout);
      assert.equal(snap.id, transferId);
      assert.equal(snap.bytesDone, 32 * 1024 * 1024);
    });

    await t.step("info --json prints the agent's capabilities", async () => {
      const r = await runCli("info", "--json", "--api", A.apiUrl);
      assert.equal(r.code, 0, r.stderr);
      const info = JSON.parse(r.stdout);
      assert.equal(info.agentId, "a");
      assert.ok(info.codecs.includes("none"), r.stdout);
      const text = await runCli("info", "--api", A.apiUrl);
      assert.match(text.stdout, /^codecs +none, /m);
      assert.match(text.stdout, /^rdma +\S/m);
    });

    await t.step("send of a missing file fails with the agent's error naming it", async () => {
      const r = await runCli("send", `${A.root}/missing.bin`, "--to", B.dataAddr, "--api", A.apiUrl);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /^error not_found: .*missing\.bin/m);
    });

    await t.step("send to an existing destination without --overwrite is refused", async () => {
      const r = await runCli("send", source, "--to", `${B.dataAddr}:copy.bin`, "--api", A.apiUrl);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /^error exists: .*copy\.bin.*already exists/m);
    });

    await t.step(
      "migrate's --postcopy, --multifd, --dedupe and --channel reach the agent, which checks them",
      async () => {
        const cases: [string[], RegExp][] = [
          [["--postcopy", "--multifd", "2"], /cannot combine postcopy with multifd/],
          [["--dedupe", "--multifd", "2"], /multifd carries the pages outside the channel dedupe reads/],
          // Valid flags get as far as the VM lookup.
          [["--postcopy", "--no-dedupe", "--channel", "streams"], /not_found: .*no-such-vm/],
        ];
        for (const [flags, message] of cases) {
          const r = await runCli("migrate", "no-such-vm", "--to", B.dataAddr, ...flags, "--api", A.apiUrl);
          assert.equal(r.code, 1, r.stderr);
          assert.match(r.stderr, message, flags.join(" "));
        }
      },
    );

    await t.step("Ctrl-C while waiting cancels the transfer and exits 130", async () => {
      const proxy = new StallingProxy(B.dataAddr, 2 * 1024 * 1024);
      try {
        const child = cli("send", source, "--to", `${proxy.addr}:stalled.bin`, "--api", A.apiUrl).spawn();
        const stdout = new Response(child.stdout).text();
        const stderrReader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
        let stderr = "";
        // The first progress line means the command is following the transfer with its handler in place.
        for (let r; !stderr.includes("\n") && !(r = await stderrReader.read()).done;) stderr += r.value;
        child.kill("SIGINT");
        for (let r; !(r = await stderrReader.read()).done;) stderr += r.value;
        const { code } = await child.status;
        assert.equal(code, 130, stderr);
        assert.match(stderr, /interrupted: cancelling transfer/);
        assert.match(await stdout, /^cancelled: /);
        const { body } = await A.json<{ transfers: { id: string; state: string; destination: string }[] }>(
          "/v1/transfers",
        );
        assert.equal(
          body.transfers.find((x) => x.destination === `${B.root}/stalled.bin`)?.state,
          "cancelled",
        );
        assert.equal(await exists(`${B.root}/stalled.bin`), false);
      } finally {
        proxy.close();
      }
    });
  } finally {
    await a?.stop();
    await b?.stop();
  }
});

Deno.test("dwcp usage and connection errors", async (t) => {
  await t.step("send --help prints usage and exits 0", async () => {
    const r = await runCli("send", "--help");
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^usage: dwcp send FILE --to PEER\[:PATH\]/);
    assert.match(r.stdout, /--streams N/);
  });

  await t.step("status --help and info --help exit 0", async () => {
    for (const command of ["status", "info"]) {
      const r = await runCli(command, "--help");
      assert.equal(r.code, 0);
      assert.match(r.stdout, new RegExp(`^usage: dwcp ${command}`));
    }
  });

  await t.step("--streams 0 is a usage error naming streams", async () => {
    const r = await runCli("send", "f.bin", "--to", "b", "--streams", "0", "--api", deadApiUrl());
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--streams "0" must be a whole number 1\.\.64/);
  });

  await t.step("send without --to, or with an unknown codec, is a usage error", async () => {
    assert.equal((await runCli("send", "f.bin")).code, 2);
    const r = await runCli("send", "f.bin", "--to", "b", "--codec", "gzip");
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--codec "gzip" is not one of none, lz4, zstd, snappy/);
  });

  await t.step("status with no agent listening says how to start one", async () => {
    const url = deadApiUrl();
    const r = await runCli("status", "--api", url);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      new RegExp(`cannot reach the dwcp agent at ${url}: .*; start it with \`dwcp agent\``),
    );
  });
});

/**
 * Forwards to target. The first connection (the transfer's control connection) passes freely; later ones
 * (its data streams) stop passing client bytes after stallAfterBytes and hold, like a link that hangs.
 */
class StallingProxy {
  readonly #listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  readonly #conns: Deno.Conn[] = [];

  constructor(target: string, stallAfterBytes: number) {
    const i = target.lastIndexOf(":");
    const to = { hostname: target.slice(0, i), port: Number(target.slice(i + 1)) };
    (async () => {
      for await (const client of this.#listener) {
        const server = await Deno.connect(to);
        this.#conns.push(client, server);
        this.#pump(client, server, this.#conns.length === 2 ? Infinity : stallAfterBytes);
        this.#pump(server, client, Infinity);
      }
    })().catch(() => {});
  }

  get addr(): string {
    return `127.0.0.1:${this.#listener.addr.port}`;
  }

  async #pump(from: Deno.Conn, to: Deno.Conn, limit: number): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    try {
      for (let passed = 0; passed < limit;) {
        const n = await from.read(buf.subarray(0, Math.min(buf.length, limit - passed)));
        if (n === null) break;
        for (let off = 0; off < n;) off += await to.write(buf.subarray(off, n));
        passed += n;
      }
      if (limit !== Infinity) return; // hold: the sender's window fills and it waits
    } catch { /* either side went away */ }
    for (const c of [from, to]) this.#closeQuietly(c);
  }

  #closeQuietly(c: Deno.Conn | Deno.Listener): void {
    try {
      c.close();
    } catch { /* already closed */ }
  }

  close(): void {
    this.#closeQuietly(this.#listener);
    this.#conns.forEach((c) => this.#closeQuietly(c));
  }
}
