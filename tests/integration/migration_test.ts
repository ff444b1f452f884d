/**
 * Live migration of real QEMU guests (TCG) between two real agent processes: the guest's heartbeat
 * proves it is the same boot and never went backwards; failures and cancels leave it running on the
 * source and nothing on the destination.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { dirname, join } from "node:path";
import { startAgent, TEST_SECRET, type TestAgent } from "../support/agents.ts";
import { serverHandshake } from "../../src/transport/handshake.ts";
import { expectMessage, PeerError, receiveMessage, sendMessage } from "../../src/transport/wire.ts";
import { dial } from "../../src/transport/dial.ts";
import { QmpClient } from "../../src/migration/qmp.ts";
import { guestAppend, guestImage } from "../support/guest_image.ts";
import { HeartbeatMonitor } from "../support/heartbeat.ts";
import { sendAndWait } from "../support/transfers.ts";

const opts = { sanitizeResources: false, sanitizeOps: false };

type Migration = Record<string, unknown> & {
  id: string;
  phase: string;
  bytesSent: number;
  error?: { code: string; message: string };
  events: { phase: string; message: string }[];
};
type Vm = { name: string; state: string; serialSocket: string };

interface Pair {
  a: TestAgent;
  b: TestAgent;
  image: { kernel: string; initrd: string };
}

async function withAgents(fn: (p: Pair) => Promise<void>): Promise<void> {
  const image = await guestImage();
  const extraRoots = [dirname(image.kernel)];
  const a = await startAgent({ id: "a", extraRoots });
  const b = await startAgent({ id: "b", extraRoots });
  try {
    await fn({ a, b, image });
  } finally {
    await a.stop();
    await b.stop();
  }
}

async function startGuest(
  agent: TestAgent,
  image: Pair["image"],
  name: string,
  cmdline: string,
): Promise<Vm> {
  const res = await agent.json<Vm>("/v1/vms", {
    method: "POST",
    body: JSON.stringify({
      name,
      memoryMiB: 256,
      vcpus: 1,
      kernel: image.kernel,
      initrd: image.initrd,
      cmdline,
    }),
  });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return res.body;
}

async function migrate(
  from: TestAgent,
  body: Record<string, unknown>,
): Promise<{ status: number; body: Migration }> {
  return await from.json<Migration>("/v1/migrations", { method: "POST", body: JSON.stringify(body) });
}

async function until(agent: TestAgent, id: string, ok: (m: Migration) => boolean): Promise<Migration> {
  while (true) {
    const { body } = await agent.json<Migration>(`/v1/migrations/${id}`);
    if (ok(body)) return body;
    await new Promise((r) => setTimeout(r, 25));
  }
}

const ended = (m: Migration) => ["completed", "failed", "cancelled"].includes(m.phase);

async function vmsOf(agent: TestAgent): Promise<Vm[]> {
  return (await agent.json<{ vms: Vm[] }>("/v1/vms")).body.vms.filter((v) => v.state !== "stopped");
}

/** The VMs an agent runs, once they match: a completed migration quits the source right after. */
async function untilVms(agent: TestAgent, expected: [string, string][]): Promise<void> {
  while (true) {
    const now = (await vmsOf(agent)).map((v) => [v.name, v.state]);
    if (JSON.stringify(now) === JSON.stringify(expected)) return;
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * A data port that speaks the migration exchange as an agent from before postcopy did: it prepares a sink
 * but says nothing of postcopy. Resolves with the messages it received once the source hangs up.
 */
function agentWithoutPostcopy(): { address: string; received: Promise<string[]> } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const received = (async () => {
    const conn = await listener.accept();
    listener.close();
    const types: string[] = [];
    try {
      await serverHandshake(conn, TEST_SECRET, {
        agentId: "old",
        capabilities: { codecs: ["none"], rdma: false },
      });
      types.push((await receiveMessage(conn)).type);
      await sendMessage(conn, { type: "prepared", sink: "migration-old" });
      while (true) types.push((await receiveMessage(conn)).type);
    } catch {
      conn.close();
    }
    return types;
  })();
  return { address: `127.0.0.1:${(listener.addr as Deno.NetAddr).port}`, received };
}

/**
 * Cancels a migration from A once 8 MiB crossed; it must end cancelled, with the guest (named vm) running on
 * A and its heartbeat going on.
 */
async function cancelMidway(a: TestAgent, id: string, hb: HeartbeatMonitor, vm: string): Promise<void> {
  await until(a, id, (m) => m.bytesSent > 8 * 1024 * 1024 || ended(m));
  const del = await a.json<Migration>(`/v1/migrations/${id}`, { method: "DELETE" });
  assert.equal(del.status, 200, JSON.stringify(del.body));
  const done = await until(a, id, ended);
  assert.equal(done.phase, "cancelled", JSON.stringify(done));
  await hb.waitForCounter(hb.lastCounter + 20);
  assert.deepEqual((await vmsOf(a)).map((v) => [v.name, v.state]), [[vm, "running"]]);
}

function serialOf(agent: TestAgent, vm: string): string {
  return join(agent.stateDir, "run", vm, "serial.sock");
}

/** A client of the VM's second QMP monitor, once its QEMU listens there. */
async function monitorOf(agent: TestAgent, vm: string): Promise<QmpClient> {
  const path = join(agent.stateDir, "run", vm, "fd-qmp.sock");
  while (true) {
    try {
      return await QmpClient.connect(path);
    } catch {
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** Waits for a QEMU's run state; fails as soon as the migration (id, from agent) failed instead. */
async function untilStatus(qmp: QmpClient, status: string, agent: TestAgent, id: string): Promise<void> {
  while ((await qmp.queryStatus()).status !== status) {
    const { body } = await agent.json<Migration>(`/v1/migrations/${id}`);
    assert.ok(!ended(body), `waiting for QEMU to be ${status}: ${JSON.stringify(body.error ?? body.events)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The guest-physical addresses of the 4 KiB pages in which two RAM dumps differ. */
function differingPages(a: Uint8Array, b: Uint8Array): string[] {
  assert.equal(a.length, b.length);
  const x = Buffer.from(a.buffer, a.byteOffset, a.length);
  const y = Buffer.from(b.buffer, b.byteOffset, b.length);
  const out: string[] = [];
  for (let at = 0; at < x.length; at += 4096) {
    if (x.compare(y, at, at + 4096, at, at + 4096) !== 0) out.push(`0x${at.toString(16)}`);
  }
  return out;
}

Deno.test({
  name: "a 256 MiB guest migrates A→B on the direct channel and back over the streams, the same boot",
  ...opts,
}, async () => {
  await withAgents(async ({ a, b, image }) => {
    const vm = await startGuest(a, image, "g1", "console=ttyS0 quiet dwcp.mem_mib=96 dwcp.dirty_mibps=2");
    const hb = await HeartbeatMonitor.follow(vm.serialSocket);
    try {
      await hb.waitForReady();
      for (const [from, to, channel] of [[a, b, "direct"], [b, a, "streams"]] as const) {
        const before = hb.lastCounter;
        const res = await migrate(from, { vm: "g1", peer: to.dataAddr, channel });
        assert.equal(res.status, 201, JSON.stringify(res.body));
        // The destination VM exists once the migration is accepted; its console speaks once the guest runs.
        const switching = hb.switchTo(serialOf(to, "g1"));
        const done = await until(from, res.body.id, ended);
        assert.equal(done.phase, "completed", JSON.stringify(done.error));
        assert.equal(done.channel, channel);
        assert.ok(done.bytesSent > 96 * 1024 * 1024, `the guest's memory crossed (${done.bytesSent} bytes)`);
        assert.ok(typeof done.downtimeMs === "number");
        await switching;
        await untilVms(from, []);
        await untilVms(to, [["g1", "running"]]);
        // The source is paused for good: only the guest on the destination can move the counter on.
        await hb.waitForCounter(Math.max(before, hb.lastCounter) + 20);
        assert.equal(hb.switching, false);
      }
      assert.equal(hb.wentBackwards, false, hb.summary());
      assert.equal(hb.bootIdChanged, false, hb.summary());
      assert.equal(hb.switches.length, 2, hb.summary());
    } finally {
      await hb.close();
    }
  });
});

for (const channel of ["streams", "direct"]) {
  Deno.test(
    { name: `the destination agent dies mid-migration (${channel}): the guest keeps running on A`, ...opts },
    async () => {
      await withAgents(async ({ a, b, image }) => {
        const vm = await startGuest(a, image, "g2", "console=ttyS0 quiet dwcp.mem_mib=96");
        const hb = await HeartbeatMonitor.follow(vm.serialSocket);
        try {
          await hb.waitForReady();
          // A bandwidth cap keeps the copy going long enough to kill the destination in the middle of it.
          const res = await migrate(a, {
            vm: "g2",
            peer: b.dataAddr,
            maxBytesPerSec: 16 * 1024 * 1024,
            channel,
          });
          assert.equal(res.status, 201, JSON.stringify(res.body));
          await until(a, res.body.id, (m) => m.bytesSent > 16 * 1024 * 1024 || ended(m));
          await b.kill();
          const done = await until(a, res.body.id, ended);
          assert.equal(done.phase, "failed");
          assert.match(done.error!.message, /runs on the source/);
          const after = hb.lastCounter;
          await hb.waitForCounter(after + 20);
          assert.deepEqual((await vmsOf(a)).map((v) => [v.name, v.state]), [["g2", "running"]]);
          assert.equal(hb.bootIdChanged, false);
          assert.equal(hb.wentBackwards, false);
        } finally {
          await hb.close();
        }
      });
    },
  );
}

Deno.test({ name: "a cancelled migration leaves the guest on A and nothing on B", ...opts }, async () => {
  await withAgents(async ({ a, b, image }) => {
    const vm = await startGuest(a, image, "g3", "console=ttyS0 quiet dwcp.mem_mib=96");
    const hb = await HeartbeatMonitor.follow(vm.serialSocket);
    try {
      await hb.waitForReady();
      const res = await migrate(a, { vm: "g3", peer: b.dataAddr, maxBytesPerSec: 16 * 1024 * 1024 });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      await cancelMidway(a, res.body.id, hb, "g3");
      assert.deepEqual(await vmsOf(b), []);
    } finally {
      await hb.close();
    }
  });
});

Deno.test({
  name: "auto takes the direct channel once the link is datacenter; cancelled, the guest stays on A",
  ...opts,
}, async () => {
  const image = await guestImage();
  const extraRoots = [dirname(image.kernel)];
  const b = await startAgent({ id: "b", extraRoots });
  // A configured peer is probed (here every 100 ms); three round trips decide its mode.
  const a = await startAgent({
    id: "a",
    extraRoots,
    peers: { b: b.dataAddr },
    link: { probeIntervalMs: 100 },
  });
  try {
    const vm = await startGuest(a, image, "g9", "console=ttyS0 quiet dwcp.mem_mib=96");
    const hb = await HeartbeatMonitor.follow(vm.serialSocket);
    try {
      await hb.waitForReady();
      type Peers = { peers: { id: string; mode: { current: string | null } }[] };
      while ((await a.json<Peers>("/v1/peers")).body.peers.find((p) => p.id === "b")?.mode.current === null) {
        await new Promise((r) => setTimeout(r, 50));
      }
      const res = await migrate(a, { vm: "g9", peer: "b", maxBytesPerSec: 16 * 1024 * 1024 });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      assert.equal(res.body.channel, "direct", JSON.stringify(res.body));
      await cancelMidway(a, res.body.id, hb, "g9");
      await untilVms(b, []);
      assert.equal(hb.bootIdChanged, false);
    } finally {
      await hb.close();
    }
  } finally {
    await a.stop();
    await b.stop();
  }
});

Deno.test({
  name: "a guest dirtying memory faster than the link converges by throttling, or aborts cleanly",
  ...opts,
}, async () => {
  await withAgents(async ({ a, b, image }) => {
    const vm = await startGuest(a, image, "g4", "console=ttyS0 quiet dwcp.mem_mib=96 dwcp.dirty_mibps=48");
    const hb = await HeartbeatMonitor.follow(vm.serialSocket);
    try {
      await hb.waitForReady();
      const switching = hb.switchTo(serialOf(b, "g4"));
      const res = await migrate(a, { vm: "g4", peer: b.dataAddr, maxBytesPerSec: 16 * 1024 * 1024 });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      const done = await until(a, res.body.id, ended);
      if (done.phase === "completed") {
        await untilVms(a, []);
        await untilVms(b, [["g4", "running"]]);
        await switching;
      } else {
        assert.equal(done.error?.code, "not_converging", JSON.stringify(done.error));
        await untilVms(a, [["g4", "running"]]);
        await untilVms(b, []);
      }
      await hb.waitForCounter(hb.lastCounter + 10);
      assert.equal(hb.wentBackwards, false);
    } finally {
      await hb.close();
    }
  });
});

/**
 * Migrates a guest in which one process rewrites 16 MiB between context switches, over the streams at
 * 16 MiB/s (body adds to the request), with the destination told to stay paused once loaded; returns the
 * migration's snapshot then and the 4 KiB pages in which the two RAMs differ. QEMU 7.2 left thousands of such
 * pages stale when a TCG guest's RAM was a whole number of 256 KiB (src/vm/qemu_args.ts).
 */
async function migrateAndCompareRam(
  { a, b, image }: Pair,
  vm: string,
  body: Record<string, unknown>,
): Promise<{ migration: Migration; stale: string[] }> {
  const guest = await startGuest(a, image, vm, guestAppend({ memMib: 8, hbMs: 1000, rewriteMib: 16 }));
  const hb = await HeartbeatMonitor.follow(guest.serialSocket);
  const dumps = await Deno.makeTempDir({ prefix: "dwcp-ram-" });
  try {
    await hb.waitForReady();
    // Both QEMUs' second monitors (the agents use them only on the direct channel): the destination is told
    // to stay paused once loaded, so both RAMs hold still to be read.
    const source = await monitorOf(a, vm);
    const res = await migrate(a, {
      vm,
      peer: b.dataAddr,
      channel: "streams",
      maxBytesPerSec: 16 << 20,
      ...body,
    });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    const dest = await monitorOf(b, vm);
    try {
      await dest.execute("stop"); // while it is still loading: no start once loaded
      await untilStatus(source, "postmigrate", a, res.body.id);
      await source.execute("pmemsave", { val: 0, size: 256 << 20, filename: join(dumps, "a.ram") });
      await untilStatus(dest, "paused", a, res.body.id);
      await dest.execute("pmemsave", { val: 0, size: 256 << 20, filename: join(dumps, "b.ram") });
    } finally {
      source.close();
      dest.close();
    }
    const stale = differingPages(
      await Deno.readFile(join(dumps, "a.ram")),
      await Deno.readFile(join(dumps, "b.ram")),
    );
    return { migration: (await a.json<Migration>(`/v1/migrations/${res.body.id}`)).body, stale };
  } finally {
    await hb.close();
    await Deno.remove(dumps, { recursive: true });
  }
}

Deno.test({
  name: "the destination's RAM is the source's, page for page, for a guest rewriting memory under TCG",
  ...opts,
}, async () => {
  await withAgents(async (pair) => {
    const { stale } = await migrateAndCompareRam(pair, "g9", {});
    assert.deepEqual(stale.slice(0, 8), [], `${stale.length} pages differ between source and destination`);
  });
});

Deno.test({
  name: "an internet-mode peer gets a deduped migration unasked, and the same RAM page for page",
  ...opts,
}, async () => {
  await withAgents(async (pair) => {
    const { a, b } = pair;
    // A peer is known, and so can be pinned, once this agent has sent to it.
    await Deno.writeFile(join(a.root, "hello.bin"), new Uint8Array(4096).fill(7));
    const sent = await sendAndWait(a, { source: "hello.bin", peer: b.dataAddr, destination: "hello.bin" });
    assert.equal(sent.state, "completed", JSON.stringify(sent.error));
    const pin = await a.json(`/v1/peers/${b.dataAddr}/pin`, {
      method: "PUT",
      body: JSON.stringify({ mode: "internet" }),
    });
    assert.equal(pin.status, 200, JSON.stringify(pin.body));
    const { migration, stale } = await migrateAndCompareRam(pair, "g10", {});
    const dedupe = migration.dedupe as { active: boolean; pages: number };
    assert.equal(dedupe.active, true, JSON.stringify(migration.dedupe));
    assert.ok(dedupe.pages > 0, JSON.stringify(migration.dedupe));
    assert.deepEqual(stale.slice(0, 8), [], `${stale.length} pages differ between source and destination`);
  });
});

Deno.test({
  name: "postcopy: a guest dirtying memory faster than a capped link completes by postcopy, the same boot",
  ...opts,
}, async () => {
  await withAgents(async ({ a, b, image }) => {
    // 24 MiB re-dirtied at 64 MiB/s against a 16 MiB/s cap: every pass leaves more than the downtime limit
    // allows, and with vCPU throttling off precopy cannot converge, so postcopy has to finish the job.
    const vm = await startGuest(a, image, "g6", "console=ttyS0 quiet dwcp.mem_mib=24 dwcp.dirty_mibps=64");
    const hb = await HeartbeatMonitor.follow(vm.serialSocket);
    try {
      await hb.waitForReady();
      const switching = hb.switchTo(serialOf(b, "g6"));
      const res = await migrate(a, {
        vm: "g6",
        peer: b.dataAddr,
        postcopy: true,
        autoConverge: false,
        maxBytesPerSec: 16 * 1024 * 1024,
      });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      assert.equal(res.body.postcopy, true);
      const done = await until(a, res.body.id, ended);
      assert.equal(done.phase, "completed", JSON.stringify(done.error ?? done.events));
      assert.ok(done.events.some((e) => e.phase === "postcopy"), JSON.stringify(done.events));
      assert.match(done.events.at(-1)!.message, /postcopy done/);
      // The destination's page requests reached the source QEMU: the return path carried them.
      assert.ok((done.postcopyRequests as number) > 0, JSON.stringify(done));
      await switching;
      await untilVms(a, []);
      await untilVms(b, [["g6", "running"]]);
      await hb.waitForCounter(hb.lastCounter + 20);
      assert.equal(hb.wentBackwards, false, hb.summary());
      assert.equal(hb.bootIdChanged, false, hb.summary());
      assert.equal(hb.switches.length, 1, hb.summary());
    } finally {
      await hb.close();
    }
  });
});

Deno.test({
  name:
    "postcopy: the destination dies once postcopy started: a fatal failure, and the source is not resumed",
  ...opts,
}, async () => {
  await withAgents(async ({ a, b, image }) => {
    const vm = await startGuest(a, image, "g8", "console=ttyS0 quiet dwcp.mem_mib=8 dwcp.dirty_mibps=64");
    const hb = await HeartbeatMonitor.follow(vm.serialSocket);
    try {
      await hb.waitForReady();
      // The cap holds for the postcopy phase too, so it lasts long enough to kill the destination in it.
      const res = await migrate(a, {
        vm: "g8",
        peer: b.dataAddr,
        postcopy: true,
        autoConverge: false,
        maxBytesPerSec: 4 * 1024 * 1024,
      });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      // Page requests mean the guest already runs on the destination: postcopy really is under way.
      const inPostcopy = await until(
        a,
        res.body.id,
        (m) => (m.phase === "postcopy" && (m.postcopyRequests as number) > 0) || ended(m),
      );
      assert.equal(inPostcopy.phase, "postcopy", JSON.stringify(inPostcopy.events));
      await b.kill();
      const done = await until(a, res.body.id, ended);
      assert.equal(done.phase, "failed", JSON.stringify(done.events));
      assert.match(done.error!.message, /the guest is lost/);
      assert.match(done.error!.message, /the source is not resumed/);
      const [source] = (await a.json<{ vms: (Vm & { qemuStatus: string })[] }>("/v1/vms")).body.vms;
      assert.notEqual(source.qemuStatus, "running", JSON.stringify(source));
    } finally {
      await hb.close();
    }
  });
});

Deno.test(
  { name: "multifd: two QEMU channels over their own transfers, the same boot", ...opts },
  async () => {
    await withAgents(async ({ a, b, image }) => {
      const vm = await startGuest(a, image, "g7", "console=ttyS0 quiet dwcp.mem_mib=96 dwcp.dirty_mibps=2");
      const hb = await HeartbeatMonitor.follow(vm.serialSocket);
      try {
        await hb.waitForReady();
        const switching = hb.switchTo(serialOf(b, "g7"));
        const res = await migrate(a, { vm: "g7", peer: b.dataAddr, multifdChannels: 2, streams: 3 });
        assert.equal(res.status, 201, JSON.stringify(res.body));
        assert.equal(res.body.multifdChannels, 2);
        const done = await until(a, res.body.id, ended);
        assert.equal(done.phase, "completed", JSON.stringify(done.error ?? done.events));
        assert.ok(done.bytesSent > 96 * 1024 * 1024, `the guest's memory crossed (${done.bytesSent} bytes)`);
        // The pages went over the multifd channels' transfers, not the main channel's.
        const main = (done.transfer as { bytesDone: number }).bytesDone;
        assert.ok(main < done.bytesSent / 2, `main channel ${main} of ${done.bytesSent} bytes`);
        await switching;
        await untilVms(a, []);
        await untilVms(b, [["g7", "running"]]);
        await hb.waitForCounter(hb.lastCounter + 20);
        assert.equal(hb.wentBackwards, false, hb.summary());
        assert.equal(hb.bootIdChanged, false, hb.summary());
      } finally {
        await hb.close();
      }
    });
  },
);

Deno.test({ name: "bad migration requests get clear 4xx/5xx answers", ...opts }, async () => {
  await withAgents(async ({ a, b, image }) => {
    await startGuest(a, image, "g5", "console=ttyS0 quiet dwcp.mem_mib=32");
    const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const downPeer = `127.0.0.1:${closed.addr.port}`;
    closed.close();
    const cases: [Record<string, unknown>, number, string][] = [
      [{ vm: "nope", peer: b.dataAddr }, 404, "vm_not_found"],
      [{ vm: "g5", peer: downPeer }, 502, "peer_unreachable"],
      [{ vm: "g5", peer: "nobody" }, 400, "unknown_peer"],
      [{ vm: "g5", peer: b.dataAddr, postcopy: true, multifdChannels: 2 }, 400, "invalid_request"],
      [{ vm: "g5", peer: b.dataAddr, multifdChannels: 99 }, 400, "invalid_request"],
      [{ vm: "g5", peer: b.dataAddr, postcopy: "yes" }, 400, "invalid_request"],
      [{ vm: "g5", peer: b.dataAddr, streams: 0 }, 400, "invalid_request"],
      [{ vm: "g5", peer: b.dataAddr, channel: "pigeon" }, 400, "invalid_request"],
      [{ vm: "g5", peer: b.dataAddr, channel: "direct", dedupe: true }, 400, "invalid_request"],
      [{ vm: "g5", peer: b.dataAddr, channel: "direct", postcopy: true }, 400, "invalid_request"],
    ];
    for (const [body, status, code] of cases) {
      const res = await a.json<{ error: { code: string; message: string } }>("/v1/migrations", {
        method: "POST",
        body: JSON.stringify(body),
      });
      assert.equal(res.status, status, JSON.stringify(res.body));
      assert.equal(res.body.error.code, code);
    }
    const old = agentWithoutPostcopy();
    const refused = await a.json<{ error: { code: string; message: string } }>("/v1/migrations", {
      method: "POST",
      body: JSON.stringify({ vm: "g5", peer: old.address, postcopy: true }),
    });
    assert.equal(refused.status, 409, JSON.stringify(refused.body));
    assert.equal(refused.body.error.code, "peer_cannot_postcopy");
    assert.match(refused.body.error.message, /migrate without postcopy/);
    // The half-prepared destination is told to stop its incoming VM.
    assert.deepEqual(await old.received, ["migrate-prepare", "abort"]);
    // The same for a direct channel the destination does not offer.
    const older = agentWithoutPostcopy();
    const noDirect = await a.json<{ error: { code: string; message: string } }>("/v1/migrations", {
      method: "POST",
      body: JSON.stringify({ vm: "g5", peer: older.address, channel: "direct" }),
    });
    assert.equal(noDirect.status, 409, JSON.stringify(noDirect.body));
    assert.equal(noDirect.body.error.code, "peer_cannot_direct");
    assert.deepEqual(await older.received, ["migrate-prepare", "abort"]);
    // A direct channel no migration waits for is refused, and nothing is handed to any QEMU.
    const [host, port] = b.dataAddr.split(":");
    const stray = await dial({ host, port: Number(port) }, TEST_SECRET, {
      agentId: "a",
      capabilities: { codecs: ["none"], rdma: false },
    });
    await sendMessage(stray, { type: "migrate-channel", migrationId: "no-such-migration" });
    await assert.rejects(
      expectMessage(stray, "channel-ready"),
      (err) =>
        err instanceof PeerError && err.code === "unknown_migration" && /no-such-migration/.test(err.message),
    );
    stray.close();
    const first = await migrate(a, { vm: "g5", peer: b.dataAddr, maxBytesPerSec: 4 * 1024 * 1024 });
    assert.equal(first.status, 201, JSON.stringify(first.body));
    const second = await a.json<{ error: { code: string } }>("/v1/migrations", {
      method: "POST",
      body: JSON.stringify({ vm: "g5", peer: b.dataAddr }),
    });
    assert.equal(second.status, 409);
    assert.equal(second.body.error.code, "vm_migrating");
    await a.json(`/v1/migrations/${first.body.id}`, { method: "DELETE" });
    await until(a, first.body.id, ended);
  });
});
