/**
 * ffi/qmp_fd.ts against real QEMUs: the two ends of a loopback TCP connection, handed to a source and a
 * destination QEMU, carry a whole migration; and each way it can go wrong says what went wrong.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ShimError } from "../../ffi/library.ts";
import { detachTcp, passTcpToQemu, QemuRefusedError } from "../../ffi/qmp_fd.ts";
import { BareQemu, connected } from "../support/bare_qemu.ts";

const opts = { sanitizeResources: false, sanitizeOps: false };

async function tcpPair(): Promise<[Deno.TcpConn, Deno.TcpConn]> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const pair = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: (listener.addr as Deno.NetAddr).port }),
    listener.accept(),
  ]);
  listener.close();
  return pair;
}

Deno.test({ name: "a TCP connection handed to two QEMUs carries a migration", ...opts }, async () => {
  await using src = await BareQemu.start();
  await using dst = await BareQemu.start(["-incoming", "defer"]);
  // Connected: QEMU answers on its main monitor once both monitors are set up.
  await using s = await connected(src);
  await using d = await connected(dst);
  const [client, server] = await tcpPair();
  const done = (c: typeof s) => c.waitForEvent("MIGRATION", (ev) => ev.data?.status === "completed");
  await d.setCapabilities({ events: true });
  await s.setCapabilities({ events: true });
  const srcDone = done(s), dstDone = done(d);

  assert.deepEqual(
    await passTcpToQemu(dst.fdMonitorSocket, server, "m1", {
      execute: "migrate-incoming",
      arguments: { uri: "fd:m1" },
    }),
    {},
  );
  assert.deepEqual(
    await passTcpToQemu(src.fdMonitorSocket, client, "m1", {
      execute: "migrate",
      arguments: { uri: "fd:m1" },
    }),
    {},
  );
  // QEMU holds the sockets now: detached, Deno's connections close without touching them.
  assert.equal(detachTcp(client), true);
  assert.equal(detachTcp(server), true);
  client.close();
  server.close();
  await Promise.all([srcDone, dstDone]);
  const info = await s.queryMigrate();
  assert.equal(info.status, "completed");
  assert.ok(info.ram && info.ram.total >= 64 * 1024 * 1024, JSON.stringify(info.ram));
  assert.equal((await d.queryMigrate()).status, "completed");
});

Deno.test({ name: "handing a socket to QEMU: each failure names its cause", ...opts }, async () => {
  await using q = await BareQemu.start();
  await using _ = await connected(q); // QEMU answers on its main monitor once both are set up
  const [client, server] = await tcpPair();
  try {
    // QEMU refuses the command (this QEMU was not started with -incoming defer): its own words.
    await assert.rejects(
      passTcpToQemu(q.fdMonitorSocket, server, "m2", {
        execute: "migrate-incoming",
        arguments: { uri: "fd:m2" },
      }),
      (err) => err instanceof QemuRefusedError && /migrate-incoming/.test(err.message) && err.desc.length > 0,
    );
    await assert.rejects(
      passTcpToQemu(q.fdMonitorSocket, server, "bad name", { execute: "query-status" }),
      (err) => err instanceof ShimError && err.status === -1 && /"bad name"/.test(err.message),
    );
    const missing = join(q.dir, "no-such.sock");
    await assert.rejects(
      passTcpToQemu(missing, server, "m3", { execute: "query-status" }),
      (err) => err instanceof ShimError && err.message.includes(missing),
    );
  } finally {
    client.close();
    server.close();
  }
  // A connection that is closed is no socket of this process's any more.
  await assert.rejects(
    passTcpToQemu(q.fdMonitorSocket, server, "m4", { execute: "query-status" }),
    (err) => err instanceof ShimError && err.status === -7,
  );
  assert.equal(detachTcp(server), false);
});
