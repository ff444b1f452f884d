/**
 * src/migration/qmp.ts against a real QEMU with no guest (q35, -S: it waits paused, so STOP/RESUME and
 * migrations are under the test's control), plus line framing and reply matching over an in-memory
 * connection that delivers bytes in random pieces.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  LineSplitter,
  QmpClient,
  QmpClosedError,
  QmpConnectError,
  QmpError,
  type QmpEvent,
  QmpProtocolError,
  QmpTimeoutError,
} from "../../src/migration/qmp.ts";
import { duplexPair, type MemoryConn } from "../transport/memory_duplex.ts";
import { BareQemu, connected } from "../support/bare_qemu.ts";

Deno.test("connect: greeting version and query-status of a paused QEMU", async () => {
  await using q = await BareQemu.start();
  await using c = await connected(q);
  assert.equal(c.version.major, 7);
  assert.equal(c.version.minor, 2);
  const st = await c.queryStatus();
  assert.deepEqual(st, { status: "prelaunch", running: false });
});

Deno.test("connect: waits for QEMU to create the socket, which it does only once started", async () => {
  const dir = await Deno.makeTempDir({ prefix: "dwcp-qmp-" });
  const connecting = QmpClient.connect(join(dir, "qmp.sock"), { timeoutMs: 30_000 });
  await using q = await BareQemu.start([], dir);
  const c = await connecting;
  assert.equal(c.version.major, 7, `QEMU pid ${q.child.pid}`);
  assert.equal((await c.queryStatus()).status, "prelaunch");
  c.close();
});

Deno.test("connect: a socket that never appears fails naming the path and the fix", async () => {
  const dir = await Deno.makeTempDir({ prefix: "dwcp-qmp-" });
  const path = join(dir, "none.sock");
  await assert.rejects(QmpClient.connect(path, { timeoutMs: 50 }), (err: Error) => {
    assert.ok(err instanceof QmpConnectError);
    assert.match(err.message, new RegExp(path.replaceAll("/", "\\/")));
    assert.match(err.message, /-qmp unix:/);
    return true;
  });
  await Deno.remove(dir, { recursive: true });
});

Deno.test("connect: an aborted signal stops the retries", async () => {
  const ac = new AbortController();
  const connecting = QmpClient.connect("/nonexistent/dwcp/qmp.sock", {
    timeoutMs: 60_000,
    signal: ac.signal,
  });
  ac.abort(new Error("QEMU exited"));
  await assert.rejects(
    connecting,
    (err: Error) => err instanceof QmpConnectError && /abandoned/.test(err.message),
  );
});

Deno.test("execute: an unknown command is a QmpError with QEMU's class and the command's name", async () => {
  await using q = await BareQemu.start();
  await using c = await connected(q);
  await assert.rejects(c.execute("dwcp-no-such-command"), (err: Error) => {
    assert.ok(err instanceof QmpError);
    assert.equal(err.errorClass, "CommandNotFound");
    assert.equal(err.command, "dwcp-no-such-command");
    assert.match(err.message, /dwcp-no-such-command/);
    return true;
  });
  // The connection is still usable afterwards.
  assert.equal((await c.queryStatus()).running, false);
});

Deno.test("execute: bad arguments are a QmpError (GenericError)", async () => {
  await using q = await BareQemu.start();
  await using c = await connected(q);
  await assert.rejects(
    c.setParameters({ "downtime-limit": -5 }),
    (err: Error) => err instanceof QmpError && err.command === "migrate-set-parameters",
  );
});

Deno.test("events: cont gives RESUME, stop gives STOP; handlers, waiters, recentEvents", async () => {
  await using q = await BareQemu.start();
  await using c = await connected(q);
  const seen: string[] = [];
  const offAll = c.on("*", (ev) => seen.push(ev.event));
  const stops: QmpEvent[] = [];
  const offStop = c.on("STOP", (ev) => stops.push(ev));

  const resumed = c.waitForEvent("RESUME");
  await c.cont();
  const ev = await resumed;
  assert.equal(ev.event, "RESUME");
  assert.equal(typeof ev.timestamp?.seconds, "number");
  assert.deepEqual(await c.queryStatus(), { status: "running", running: true });

  const stopped = c.waitForEvent("STOP");
  await c.stop();
  await stopped;
  assert.equal(stops.length, 1);
  assert.deepEqual(await c.queryStatus(), { status: "paused", running: false });

  // Unsubscribed handlers see nothing more.
  offStop();
  offAll();
  const resumedAgain = c.waitForEvent("RESUME");
  await c.cont();
  await resumedAgain;
  assert.equal(stops.length, 1);
  assert.deepEqual(seen, ["RESUME", "STOP"]);
  assert.deepEqual(c.recentEvents.map((e) => e.event), ["RESUME", "STOP", "RESUME"]);
});

Deno.test("waitForEvent: a predicate skips events it rejects", async () => {
  await using q = await BareQemu.start();
  await using c = await connected(q);
  // The second RESUME is the one wanted: the first is seen, rejected, and waiting goes on.
  let n = 0;
  const second = c.waitForEvent("RESUME", () => ++n === 2);
  await c.cont();
  await c.stop();
  await c.cont();
  const ev = await second;
  assert.equal(ev.event, "RESUME");
  assert.equal(n, 2);
});

Deno.test("timeouts: a command and an event wait that get no answer fail with QmpTimeoutError", async () => {
  await using q = await BareQemu.start();
  await using c = await connected(q);
  // A frozen QEMU cannot answer: the timeout is certain, not a race.
  q.signal("SIGSTOP");
  await assert.rejects(c.execute("query-status", undefined, { timeoutMs: 50 }), (err: Error) => {
    assert.ok(err instanceof QmpTimeoutError);
    assert.match(err.message, /"query-status"/);
    return true;
  });
  await assert.rejects(
    c.waitForEvent("RESUME", undefined, { timeoutMs: 10 }),
    (err: Error) => err instanceof QmpTimeoutError && /RESUME/.test(err.message),
  );
  q.signal("SIGCONT");
  // The late reply to the timed-out command is matched by id and dropped, not given to the next one.
  const st = await c.execute<{ status: string }>("query-status");
  assert.equal(st.status, "prelaunch");
  const version = await c.execute<{ qemu: { major: number } }>("query-version");
  assert.equal(version.qemu.major, 7);
});

Deno.test("closed: QEMU killed while a command waits rejects it with QmpClosedError", async () => {
  await using q = await BareQemu.start();
  const c = await QmpClient.connect(q.qmpSocket);
  q.signal("SIGSTOP");
  const pending = c.execute("query-status");
  const waiting = c.waitForEvent("RESUME");
  q.signal("SIGKILL");
  await assert.rejects(pending, (err: Error) => {
    assert.ok(err instanceof QmpClosedError);
    assert.match(err.message, /QEMU closed the QMP connection \(did it exit\?\)/);
    return true;
  });
  await assert.rejects(waiting, QmpClosedError);
  await c.closed;
  assert.equal(c.isClosed, true);
  await assert.rejects(c.execute("query-status"), QmpClosedError);
});

Deno.test("quit: QEMU exits cleanly and the client sees the connection close", async () => {
  await using q = await BareQemu.start();
  const c = await QmpClient.connect(q.qmpSocket);
  const shutdown = c.waitForEvent("SHUTDOWN");
  await c.quit();
  assert.equal((await shutdown).data?.reason, "host-qmp-quit");
  assert.equal(c.isClosed, true);
  assert.equal((await q.exited).code, 0);
  // quit on a closed connection is still fine.
  await c.quit();
});

Deno.test("migration helpers: capabilities, parameters, migrate to -incoming defer, query-migrate", async () => {
  await using src = await BareQemu.start();
  await using dst = await BareQemu.start(["-incoming", "defer"]);
  await using s = await connected(src);
  await using d = await connected(dst);
  assert.equal((await d.queryStatus()).status, "inmigrate");
  assert.deepEqual(await s.queryMigrate(), {});

  await s.setCapabilities({ events: true });
  await d.setCapabilities({ events: true });
  await s.setParameters({ "downtime-limit": 200, "max-bandwidth": 1024 * 1024 * 1024 });
  const params = await s.queryParameters();
  assert.equal(params["downtime-limit"], 200);
  assert.equal(params["max-bandwidth"], 1024 * 1024 * 1024);
  const caps = await s.execute<{ capability: string; state: boolean }[]>("query-migrate-capabilities");
  assert.equal(caps.find((c) => c.capability === "events")?.state, true);

  const uri = `unix:${join(dst.dir, "migrate.sock")}`;
  await d.migrateIncoming(uri);
  const done = (c: QmpClient) => c.waitForEvent("MIGRATION", (ev) => ev.data?.status === "completed");
  const srcDone = done(s), dstDone = done(d);
  await s.migrate(uri);
  await Promise.all([srcDone, dstDone]);

  const info = await s.queryMigrate();
  assert.equal(info.status, "completed");
  assert.ok(info.ram && info.ram.transferred > 0 && info.ram.total > 0);
  assert.equal(typeof info["total-time"], "number");
  assert.equal(typeof info.downtime, "number");
  // QEMU sets the source's run state to postmigrate just after it reports completion (no event).
  let status = (await s.queryStatus()).status;
  for (let i = 0; i < 500 && status === "finish-migrate"; i++) {
    await new Promise((r) => setTimeout(r, 10));
    status = (await s.queryStatus()).status;
  }
  assert.equal(status, "postmigrate");
  // The destination was started with -S, so it waits paused for cont.
  assert.equal((await d.queryStatus()).running, false);
  await d.cont();
  assert.equal((await d.queryStatus()).status, "running");
  // Cancelling when nothing is in flight is harmless.
  await s.migrateCancel();
});

// --- framing and matching over an in-memory connection ----------------------------------------------

const enc = new TextEncoder();

Deno.test("LineSplitter: partial reads, several lines per read, CRLF, and a line over the limit", () => {
  const s = new LineSplitter(32);
  assert.deepEqual(s.push(enc.encode('{"a":')), []);
  assert.equal(s.buffered, 5);
  assert.deepEqual(s.push(enc.encode('1}\r\n{"b":2}\n{"c"')), ['{"a":1}', '{"b":2}']);
  assert.deepEqual(s.push(enc.encode(":3}\r")), []);
  assert.deepEqual(s.push(enc.encode("\n")), ['{"c":3}']);
  assert.equal(s.buffered, 0);
  // Multi-byte UTF-8 split across reads decodes whole.
  const e = enc.encode('"é"\n');
  assert.deepEqual([...s.push(e.subarray(0, 2)), ...s.push(e.subarray(2))], ['"é"']);
  assert.throws(() => s.push(new Uint8Array(33).fill(0x41)), QmpProtocolError);
  const t = new LineSplitter(32);
  t.push(new Uint8Array(20).fill(0x41));
  assert.throws(() => t.push(enc.encode("A".repeat(20) + "\n")), /over the 32-byte limit/);
});

/** A scripted QMP server on the other end of an in-memory pair. */
class FakeQmp {
  readonly splitter = new LineSplitter();
  readonly received: Record<string, unknown>[] = [];

  constructor(readonly conn: MemoryConn) {}

  async send(text: string): Promise<void> {
    const b = enc.encode(text);
    let off = 0;
    while (off < b.length) off += await this.conn.write(b.subarray(off));
  }

  /** The next command the client sent. */
  async next(): Promise<Record<string, unknown>> {
    const buf = new Uint8Array(64);
    while (this.received.length === 0) {
      const n = await this.conn.read(buf);
      if (n === null) throw new Error("client closed");
      for (const line of this.splitter.push(buf.subarray(0, n))) this.received.push(JSON.parse(line));
    }
    return this.received.shift()!;
  }
}

async function fakePair(seed: number, maxPiece = 5): Promise<{ client: QmpClient; server: FakeQmp }> {
  const [a, b] = duplexPair(seed, maxPiece);
  const client = new QmpClient(a);
  const server = new FakeQmp(b);
  const handshake = client.handshake(60_000);
  await server.send(
    '{"QMP": {"version": {"qemu": {"micro": 3, "minor": 1, "major": 9}}, "capabilities": []}}\r\n',
  );
  const caps = await server.next();
  assert.equal(caps.execute, "qmp_capabilities");
  await server.send(JSON.stringify({ return: {}, id: caps.id }) + "\r\n");
  await handshake;
  return { client, server };
}

Deno.test("fake QMP: replies matched by id out of order, events between, bytes in random pieces", async () => {
  for (const seed of [1, 2, 3, 4, 5]) {
    const { client, server } = await fakePair(seed);
    assert.deepEqual(client.version, { major: 9, minor: 1, micro: 3 });
    const events: string[] = [];
    client.on("*", (ev) => events.push(ev.event));
    const a = client.execute("query-a", { x: 1 });
    const b = client.execute("query-b");
    const c = client.execute("query-c");
    const ca = await server.next(), cb = await server.next(), cc = await server.next();
    assert.deepEqual([ca.execute, cb.execute, cc.execute], ["query-a", "query-b", "query-c"]);
    assert.deepEqual(ca.arguments, { x: 1 });
    assert.equal(cb.arguments, undefined);
    // All in one write: reply c, an event, reply a, an error for b.
    await server.send(
      JSON.stringify({ return: "C", id: cc.id }) + "\r\n" +
        '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}\r\n' +
        JSON.stringify({ return: { v: "A" }, id: ca.id }) + "\r\n" +
        JSON.stringify({ error: { class: "GenericError", desc: "nope" }, id: cb.id }) + "\r\n",
    );
    assert.equal(await c, "C");
    assert.deepEqual(await a, { v: "A" });
    await assert.rejects(b, (err: Error) => err instanceof QmpError && err.desc === "nope");
    assert.deepEqual(events, ["STOP"]);
    client.close();
  }
});

Deno.test("fake QMP: a line over the limit fails pending commands with QmpProtocolError", async () => {
  const { client, server } = await fakePair(7, 1024 * 1024);
  const pending = client.execute("query-status");
  await server.next();
  // 16 MiB of a line that never ends.
  const mib = "x".repeat(1024 * 1024);
  const writing = (async () => {
    for (let i = 0; i <= 16; i++) await server.send(mib).catch(() => {});
  })();
  await assert.rejects(
    pending,
    (err: Error) => err instanceof QmpProtocolError && /16777216-byte limit/.test(err.message),
  );
  assert.equal(client.isClosed, true);
  await writing;
});

Deno.test("fake QMP: recentEvents keeps the last 64", async () => {
  const { client, server } = await fakePair(9);
  let text = "";
  for (let i = 0; i < 100; i++) text += JSON.stringify({ event: "E", data: { i } }) + "\n";
  const last = client.waitForEvent("E", (ev) => ev.data?.i === 99);
  await server.send(text);
  await last;
  const recent = client.recentEvents;
  assert.equal(recent.length, 64);
  assert.equal(recent[0].data?.i, 36);
  assert.equal(recent[63].data?.i, 99);
  client.close();
});

Deno.test("fake QMP: not JSON is a protocol error that closes the client", async () => {
  const { client, server } = await fakePair(11);
  const pending = client.execute("query-status");
  await server.next();
  await server.send("this is not qmp\n");
  await assert.rejects(pending, QmpProtocolError);
  await client.closed;
});
