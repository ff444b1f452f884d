/**
 * The test guest boots under QEMU (TCG), fills its memory, heartbeats on the serial console, and the
 * HeartbeatMonitor follows it across a live migration done by QEMU alone (unix socket, inline QMP).
 */
import assert from "node:assert/strict";
import { guestAppend, guestImage } from "../support/guest_image.ts";
import { HeartbeatMonitor } from "../support/heartbeat.ts";

const QEMU = "qemu-system-x86_64";

/** A QEMU process with its serial console and QMP sockets in `dir`. */
class Qemu {
  #stderr = "";
  readonly exited: Promise<Deno.CommandStatus>;

  private constructor(readonly child: Deno.ChildProcess, readonly serial: string, readonly qmp: string) {
    this.exited = child.status;
    child.stderr.pipeThrough(new TextDecoderStream()).pipeTo(
      new WritableStream({ write: (s) => void (this.#stderr = (this.#stderr + s).slice(-8_000)) }),
    ).catch(() => {});
  }

  static start(
    dir: string,
    name: string,
    image: { kernel: string; initrd: string },
    extra: string[] = [],
  ): Qemu {
    const serial = `${dir}/${name}.ser`;
    const qmp = `${dir}/${name}.qmp`;
    const args = [
      ...["-accel", "tcg", "-machine", "q35", "-cpu", "max", "-m", "256", "-smp", "1"],
      ...["-nographic", "-nodefaults", "-no-user-config", "-display", "none"],
      ...["-kernel", image.kernel, "-initrd", image.initrd],
      ...["-append", guestAppend({ memMib: 64, dirtyMibps: 4 })],
      ...["-chardev", `socket,id=ser0,path=${serial},server=on,wait=off`, "-serial", "chardev:ser0"],
      ...["-qmp", `unix:${qmp},server=on,wait=off`],
      ...extra,
    ];
    const child = new Deno.Command(QEMU, { args, stdin: "null", stdout: "null", stderr: "piped" }).spawn();
    return new Qemu(child, serial, qmp);
  }

  get stderr(): string {
    return this.#stderr;
  }

  async kill(): Promise<void> {
    try {
      this.child.kill("SIGKILL");
    } catch { /* already gone */ }
    await this.exited;
  }
}

/** Just enough QMP: greeting, qmp_capabilities, then one command at a time (events are skipped). */
class Qmp {
  #lines: string[] = [];
  #buf = "";
  #decoder = new TextDecoder();

  private constructor(readonly conn: Deno.UnixConn) {}

  static async open(path: string): Promise<Qmp> {
    let conn: Deno.UnixConn | undefined;
    for (let i = 0; !conn; i++) {
      try {
        conn = await Deno.connect({ transport: "unix", path });
      } catch (err) {
        if (i > 1500) throw err;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    const qmp = new Qmp(conn);
    const greeting = await qmp.#message();
    assert.ok("QMP" in greeting, `not a QMP greeting: ${JSON.stringify(greeting)}`);
    await qmp.execute("qmp_capabilities");
    return qmp;
  }

  async execute(command: string, args?: Record<string, unknown>): Promise<Record<string, unknown>> {
    const msg = args ? { execute: command, arguments: args } : { execute: command };
    await this.conn.write(new TextEncoder().encode(JSON.stringify(msg) + "\n"));
    for (;;) {
      const reply = await this.#message();
      if ("event" in reply) continue;
      if ("error" in reply) throw new Error(`QMP ${command}: ${JSON.stringify(reply.error)}`);
      return reply.return as Record<string, unknown>;
    }
  }

  async #message(): Promise<Record<string, unknown>> {
    const buf = new Uint8Array(65_536);
    while (this.#lines.length === 0) {
      const n = await this.conn.read(buf);
      if (n === null) throw new Error("QMP connection closed");
      const parts = (this.#buf + this.#decoder.decode(buf.subarray(0, n), { stream: true })).split("\n");
      this.#buf = parts.pop() ?? "";
      this.#lines.push(...parts.filter((l) => l.trim()));
    }
    return JSON.parse(this.#lines.shift()!);
  }

  close(): void {
    try {
      this.conn.close();
    } catch { /* already closed */ }
  }
}

Deno.test("guest image boots, heartbeats, and the monitor follows it across a QEMU live migration", async () => {
  const image = await guestImage();
  const dir = await Deno.makeTempDir({ prefix: "dwcp-guest-" });
  const qemus: Qemu[] = [];
  const closers: (() => void | Promise<void>)[] = [];
  try {
    const t0 = performance.now();
    const src = Qemu.start(dir, "src", image);
    qemus.push(src);
    const mon = await HeartbeatMonitor.follow(src.serial);
    closers.push(() => mon.close());

    const ready = await mon.waitForReady().catch((err) => {
      throw new Error(`${err.message}\n--- qemu stderr ---\n${src.stderr}`);
    });
    console.log(`guest ready after ${(performance.now() - t0).toFixed(0)} ms (TCG, mem_mib=${ready.memMib})`);
    assert.equal(ready.memMib, 64);
    assert.match(ready.bootId, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    assert.deepEqual(mon.guestErrors, []);

    await mon.waitForCounter(25);
    const first = mon.heartbeats.slice();
    assert.ok(first.length >= 20, `only ${first.length} heartbeats`);
    for (let i = 1; i < first.length; i++) assert.equal(first[i].counter, first[i - 1].counter + 1);
    assert.equal(first[0].counter, 1);
    assert.equal(mon.bootId, ready.bootId);
    assert.equal(mon.wentBackwards, false);
    assert.equal(mon.bootIdChanged, false);

    // A plain QEMU live migration to a second QEMU over a unix socket.
    const migSock = `${dir}/mig.sock`;
    const dst = Qemu.start(dir, "dst", image, ["-incoming", `unix:${migSock}`]);
    qemus.push(dst);
    // Connect to the destination's console before migrating so none of its output is dropped.
    await mon.switchTo(dst.serial);
    const srcQmp = await Qmp.open(src.qmp);
    closers.push(() => srcQmp.close());
    const dstQmp = await Qmp.open(dst.qmp);
    closers.push(() => dstQmp.close());

    const before = mon.lastCounter;
    await srcQmp.execute("migrate", { uri: `unix:${migSock}` });
    let info: Record<string, unknown>;
    for (;;) {
      info = await srcQmp.execute("query-migrate");
      if (info.status === "completed") break;
      assert.ok(
        !["failed", "cancelled"].includes(info.status as string),
        `migration ${info.status}: ${JSON.stringify(info)}\n${src.stderr}\n${dst.stderr}`,
      );
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal((await dstQmp.execute("query-status")).status, "running");
    const stoppedAt = mon.lastCounter;

    // The series continues on the destination: same boot, counter past its pre-migration value.
    const after = await mon.waitForCounter(stoppedAt + 20);
    assert.equal(mon.switching, false);
    assert.equal(mon.path, dst.serial);
    assert.equal(after.segment, 1);
    assert.ok(mon.lastCounter > before);
    assert.equal(mon.bootId, ready.bootId);
    assert.equal(mon.bootIdChanged, false);
    assert.equal(mon.wentBackwards, false);
    assert.equal(mon.skipped, 0, `console lost heartbeats: ${mon.summary()}`);
    assert.equal(mon.switches.length, 1);
    const sw = mon.switches[0];
    assert.equal(sw.after, sw.before + 1);
    const hbs = mon.heartbeats;
    for (let i = 1; i < hbs.length; i++) {
      assert.equal(hbs[i].counter, hbs[i - 1].counter + 1);
      assert.ok(hbs[i].uptime >= hbs[i - 1].uptime, `guest uptime went back at ${hbs[i].counter}`);
    }
    const ram = info.ram as Record<string, number> | undefined;
    console.log(
      `migration: total ${info["total-time"]} ms, downtime ${info.downtime} ms (QEMU), ` +
        `${ram ? (ram.transferred / 2 ** 20).toFixed(1) : "?"} MiB sent; ` +
        `heartbeat gap across the switch ${
          sw.ms.toFixed(1)
        } ms (${sw.before} -> ${sw.after}); ${mon.summary()}`,
    );
  } finally {
    for (const c of closers.reverse()) await c();
    for (const q of qemus) await q.kill();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

// --- HeartbeatMonitor against scripted consoles (no QEMU) ---------------------------------------------

const ID = "0b7c6a3e-1d2f-4c5b-8a9e-0123456789ab";

/** A unix socket server standing in for a QEMU console: accepts one client and writes to it. */
class FakeConsole {
  #conn?: Deno.Conn;
  readonly accepted: Promise<Deno.Conn>;

  constructor(readonly listener: Deno.Listener, readonly path: string) {
    this.accepted = listener.accept().then((c) => (this.#conn = c));
  }

  static listen(path: string): FakeConsole {
    return new FakeConsole(Deno.listen({ transport: "unix", path }), path);
  }

  async write(text: string): Promise<void> {
    const conn = await this.accepted;
    await conn.write(new TextEncoder().encode(text));
  }

  close(): void {
    this.listener.close();
    try {
      this.#conn?.close();
    } catch { /* already closed */ }
  }
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "dwcp-hb-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

Deno.test("monitor: a line cut by the migration continues on the destination's console", async () => {
  await withDir(async (dir) => {
    const src = FakeConsole.listen(`${dir}/src`);
    const mon = await HeartbeatMonitor.follow(src.path);
    let dst: FakeConsole | undefined;
    try {
      await src.write(
        `\x1b[2Jdwcp-guest ready boot=${ID} mem_mib=8\r\nhb ${ID} 1 0.10\r\nhb ${ID} 2 0.12\r\n`,
      );
      assert.equal((await mon.waitForReady()).memMib, 8);
      await mon.waitForCounter(2);
      // The source stops half-way through heartbeat 3.
      await src.write(`hb ${ID} 3 0.`);
      // The destination's socket does not exist yet: switchTo retries until it does.
      const switching = mon.switchTo(`${dir}/dst`);
      await new Promise((r) => setTimeout(r, 100));
      dst = FakeConsole.listen(`${dir}/dst`);
      await switching;
      assert.equal(mon.switching, true);
      await dst.write(`14\r\nhb ${ID} 4 0.16\r\n`);
      const hb = await mon.waitForCounter(4);
      assert.equal(hb.segment, 1);
      assert.deepEqual(mon.heartbeats.map((h) => [h.counter, h.uptime, h.segment]), [
        [1, 0.1, 0],
        [2, 0.12, 0],
        [3, 0.14, 1],
        [4, 0.16, 1],
      ]);
      assert.equal(mon.path, dst.path);
      assert.equal(mon.switches.length, 1);
      assert.deepEqual([mon.switches[0].before, mon.switches[0].after], [2, 3]);
      assert.equal(mon.wentBackwards, false);
      assert.equal(mon.bootIdChanged, false);
      assert.equal(mon.skipped, 0);
    } finally {
      await mon.close();
      src.close();
      dst?.close();
    }
  });
});

Deno.test("monitor: a destination that closes before printing leaves it on the source", async () => {
  await withDir(async (dir) => {
    const src = FakeConsole.listen(`${dir}/src`);
    const dst = FakeConsole.listen(`${dir}/dst`);
    const mon = await HeartbeatMonitor.follow(src.path);
    try {
      await src.write(`hb ${ID} 1 0.1\n`);
      await mon.waitForCounter(1);
      await mon.switchTo(dst.path);
      (await dst.accepted).close(); // the migration failed and the destination QEMU quit
      while (mon.switching) await new Promise((r) => setTimeout(r, 10));
      await src.write(`hb ${ID} 2 0.2\n`);
      await mon.waitForCounter(2);
      assert.equal(mon.path, src.path);
      assert.equal(mon.switches.length, 0);
      assert.match(mon.tail, /closed before output/);
    } finally {
      await mon.close();
      src.close();
      dst.close();
    }
  });
});

Deno.test("monitor: flags a counter going backwards, a new boot id, skipped beats, and a panic", async () => {
  await withDir(async (dir) => {
    const con = FakeConsole.listen(`${dir}/con`);
    const mon = await HeartbeatMonitor.follow(con.path);
    try {
      const other = ID.replace("0b7c", "ffff");
      await con.write(`hb ${ID} 1 0.1\nhb ${ID} 2 0.2\nhb ${ID} 5 0.3\nhb ${other} 1 0.1\n`);
      await mon.waitForCounter(5);
      while (mon.count < 4) await new Promise((r) => setTimeout(r, 10));
      assert.equal(mon.skipped, 2);
      assert.equal(mon.wentBackwards, true);
      assert.equal(mon.bootIdChanged, true);
      assert.equal(mon.bootId, ID);
      const waiting = mon.waitForCounter(100);
      await con.write(
        "dwcp-guest error: filled only 3 of 8 MiB\nKernel panic - not syncing: Attempted to kill init!\n",
      );
      await assert.rejects(waiting, /guest panicked: Kernel panic - not syncing/);
      assert.deepEqual(mon.guestErrors, ["filled only 3 of 8 MiB"]);
    } finally {
      await mon.close();
      con.close();
    }
  });
});

Deno.test("monitor: waits fail with the console tail when the console closes", async () => {
  await withDir(async (dir) => {
    const con = FakeConsole.listen(`${dir}/con`);
    const mon = await HeartbeatMonitor.follow(con.path);
    try {
      const waiting = mon.waitForReady();
      await con.write("Booting the kernel.\n");
      con.close();
      await assert.rejects(waiting, /console .* closed[\s\S]*Booting the kernel/);
      assert.equal(mon.closed, true);
    } finally {
      await mon.close();
    }
  });
});
