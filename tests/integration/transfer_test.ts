/**
 * File transfers between two real agent processes over loopback TCP: integrity at size, codecs,
 * cancel, faults on the path (lost stream, corrupted bytes, dead peer), authentication, bad requests.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  sha256File,
  startAgent,
  type TestAgent,
  waitForTransfer,
  writeRandomFile,
} from "../support/agents.ts";
import { listDir, send, sendAndWait, type TransferJson, untilTransfer } from "../support/transfers.ts";
import { TcpProxy } from "../support/tcp_proxy.ts";

const MiB = 1024 * 1024;
const opts = { sanitizeResources: false, sanitizeOps: false };

type Snapshot = TransferJson;

/** Sends from a to b with the peer pinned to mode for this one transfer (the pin is lifted after). */
async function sendPinned(
  a: TestAgent,
  b: TestAgent,
  mode: string,
  body: Record<string, unknown>,
): Promise<Snapshot> {
  const pin = await a.json(`/v1/peers/${b.dataAddr}/pin`, { method: "PUT", body: JSON.stringify({ mode }) });
  assert.equal(pin.status, 200, JSON.stringify(pin.body));
  const snap = await sendAndWait(a, { ...body, peer: b.dataAddr });
  assert.equal((await a.json(`/v1/peers/${b.dataAddr}/pin`, { method: "DELETE" })).status, 200);
  return snap;
}

Deno.test({ name: "transfers between two agents", ...opts }, async (t) => {
  const a = await startAgent({ id: "a" });
  const b = await startAgent({ id: "b" });
  try {
    await t.step("a 256 MiB random file arrives intact over 4 streams", async () => {
      await writeRandomFile(join(a.root, "random.bin"), 256 * MiB);
      const snap = await sendAndWait(a, {
        source: "random.bin",
        peer: b.dataAddr,
        destination: "r/random.bin",
      });
      assert.equal(snap.state, "completed", JSON.stringify(snap.error));
      assert.equal(snap.bytesDone, 256 * MiB);
      const streams = snap.streams as { bytes: number; frames: number }[];
      assert.equal(streams.length, 4);
      assert.equal(streams.reduce((s, x) => s + x.bytes, 0), 256 * MiB);
      assert.ok(streams.every((s) => s.frames > 0), "every stream carried chunks");
      assert.equal(
        await sha256File(join(b.root, "r/random.bin")),
        await sha256File(join(a.root, "random.bin")),
      );
      const incoming = (await b.json<{ transfers: Snapshot[] }>("/v1/transfers")).body.transfers;
      assert.ok(
        incoming.some((x) => x.id === snap.id && x.direction === "receive" && x.state === "completed"),
      );
      assert.deepEqual(await listDir(join(b.root, "r")), ["random.bin"], "no temporary file is left behind");
    });

    await t.step("a 1 GiB sparse file arrives intact over 8 streams", async () => {
      const src = join(a.root, "sparse.img");
      await Deno.writeFile(src, new TextEncoder().encode("boot sector"));
      await Deno.truncate(src, 1024 * MiB);
      using f = await Deno.open(src, { write: true });
      await f.seek(700 * MiB + 12345, Deno.SeekMode.Start);
      await f.write(new TextEncoder().encode("data in the middle"));
      const snap = await sendAndWait(a, {
        source: src,
        peer: b.dataAddr,
        destination: "sparse.img",
        streams: 8,
      });
      assert.equal(snap.state, "completed", JSON.stringify(snap.error));
      assert.equal(await sha256File(join(b.root, "sparse.img")), await sha256File(src));
    });

    await t.step("in datacenter mode the transfer, not only each stream, has a window", async () => {
      const snap = await sendPinned(a, b, "datacenter", {
        source: "random.bin",
        destination: "r/random-16.bin",
        streams: 16,
      });
      assert.equal(snap.state, "completed", JSON.stringify(snap.error));
      // Twice a loopback's bandwidth-delay product is far under 16 streams' credit of 4 chunks each.
      const window = snap.window as { streamChunks: number; transferChunks?: number };
      assert.equal(window.streamChunks, 4);
      assert.ok(
        window.transferChunks !== undefined && window.transferChunks >= 4 && window.transferChunks < 16 * 4,
        JSON.stringify(window),
      );
      assert.equal(
        await sha256File(join(b.root, "r/random-16.bin")),
        await sha256File(join(a.root, "random.bin")),
      );
    });

    for (const codec of ["lz4", "zstd", "snappy"]) {
      await t.step(`codec ${codec}: compressible data shrinks on the wire and arrives intact`, async () => {
        const text = Array.from({ length: 200_000 }, (_, i) => `line ${i} status=ok host=h${i % 17}\n`).join(
          "",
        );
        await Deno.writeTextFile(join(a.root, "log.txt"), text);
        const snap = await sendAndWait(a, {
          source: "log.txt",
          peer: b.dataAddr,
          destination: `log-${codec}.txt`,
          codec,
          chunkBytes: 256 * 1024,
        });
        assert.equal(snap.state, "completed", JSON.stringify(snap.error));
        assert.ok((snap.ratio as number) > 2, `ratio ${snap.ratio} shows compression`);
        assert.equal(await Deno.readTextFile(join(b.root, `log-${codec}.txt`)), text);
      });
    }

    await t.step(
      "codec auto: on a slow internet link the policy spends CPU for ratio, and shows why",
      async () => {
        const text = Array.from({ length: 400_000 }, (_, i) => `line ${i} status=ok host=h${i % 17}\n`).join(
          "",
        );
        await Deno.writeTextFile(join(a.root, "auto.txt"), text);
        // Loopback measures as datacenter, where "auto" risks no CPU on a link it has not seen 64 MiB of;
        // the operator's pin makes it an internet link, whose bias is to spend CPU for ratio.
        const snap = await sendPinned(a, b, "internet", {
          source: "auto.txt",
          codec: "auto",
          streams: 4,
          chunkBytes: 256 * 1024,
          maxBytesPerSec: 4 * MiB,
        });
        assert.equal(snap.state, "completed", JSON.stringify(snap.error));
        const encoding = snap.encoding as { chosen: Record<string, number>; linkBytesPerSec: number };
        const zstdChunks = Object.entries(encoding.chosen).filter(([k]) => k.startsWith("zstd"));
        assert.ok(zstdChunks.reduce((sum, [, n]) => sum + n, 0) > 0, JSON.stringify(encoding));
        assert.ok(encoding.linkBytesPerSec < 16 * MiB, `the link was measured: ${encoding.linkBytesPerSec}`);
        assert.ok((snap.ratio as number) > 2, `ratio ${snap.ratio}`);
        assert.equal(await Deno.readTextFile(join(b.root, "auto.txt")), text);
      },
    );

    await t.step("an empty file arrives as an empty file", async () => {
      await Deno.writeFile(join(a.root, "empty"), new Uint8Array());
      const snap = await sendAndWait(a, { source: "empty", peer: b.dataAddr });
      assert.equal(snap.state, "completed");
      assert.equal((await Deno.stat(join(b.root, "empty"))).size, 0);
    });

    await t.step("cancel mid-transfer leaves no file at the destination", async () => {
      await writeRandomFile(join(a.root, "slow.bin"), 64 * MiB);
      const res = await send(a, {
        source: "slow.bin",
        peer: b.dataAddr,
        destination: "cancelled/slow.bin",
        maxBytesPerSec: 16 * MiB,
      });
      assert.equal(res.status, 201);
      await untilTransfer(a, res.body.id, (s) => (s.bytesDone as number) > 4 * MiB);
      const del = await a.json<Snapshot>(`/v1/transfers/${res.body.id}`, { method: "DELETE" });
      assert.equal(del.status, 200, JSON.stringify(del.body));
      assert.equal(del.body.state, "cancelled");
      assert.deepEqual(await listDir(join(b.root, "cancelled")), [], "neither the file nor a partial one");
      const incoming = await untilTransfer(b, res.body.id, (s) => s.state !== "running");
      assert.equal(incoming.state, "cancelled");
      const again = await a.json(`/v1/transfers/${res.body.id}`, { method: "DELETE" });
      assert.equal(again.status, 409);
    });

    await t.step("a stream lost mid-transfer: its chunks move to the other streams", async () => {
      // Connection 0 is the control connection; 1..4 are the streams. Cut one after 3 MiB.
      const proxy = TcpProxy.start(b.dataAddr, { 2: { dropAfterBytes: 3 * MiB } });
      try {
        const snap = await sendAndWait(a, {
          source: "random.bin",
          peer: proxy.addr,
          destination: "lost-stream.bin",
          overwrite: true,
        });
        assert.equal(snap.state, "completed", JSON.stringify(snap.error));
        const streams = snap.streams as { state: string }[];
        assert.equal(streams.filter((s) => s.state === "lost").length, 1);
        assert.equal(
          await sha256File(join(b.root, "lost-stream.bin")),
          await sha256File(join(a.root, "random.bin")),
        );
      } finally {
        proxy.close();
      }
    });

    await t.step("a corrupted chunk is caught by its checksum and sent again", async () => {
      const proxy = TcpProxy.start(b.dataAddr, { 1: { corruptByteAt: 100_000 } });
      try {
        const snap = await sendAndWait(a, {
          source: "random.bin",
          peer: proxy.addr,
          destination: "corrupted.bin",
          streams: 1,
        });
        assert.equal(snap.state, "completed", JSON.stringify(snap.error));
        assert.equal(snap.retransmits, 1);
        assert.equal(
          await sha256File(join(b.root, "corrupted.bin")),
          await sha256File(join(a.root, "random.bin")),
        );
      } finally {
        proxy.close();
      }
    });

    await t.step("losing every stream fails the transfer cleanly", async () => {
      const proxy = TcpProxy.start(b.dataAddr, {
        1: { dropAfterBytes: MiB },
        2: { dropAfterBytes: 2 * MiB },
      });
      try {
        const snap = await sendAndWait(a, {
          source: "random.bin",
          peer: proxy.addr,
          destination: "all-lost.bin",
          streams: 2,
        });
        assert.equal(snap.state, "failed");
        assert.equal(snap.error?.code, "stream_failure");
        assert.ok(!(await listDir(b.root)).some((n) => n.includes("all-lost")), "no file, partial or whole");
      } finally {
        proxy.close();
      }
    });

    await t.step("bad requests get 4xx with messages naming the value", async () => {
      const cases: [Record<string, unknown>, number, string, RegExp][] = [
        [{ source: "missing.bin", peer: b.dataAddr }, 404, "not_found", /missing\.bin/],
        [{ source: "/etc/passwd", peer: b.dataAddr }, 403, "path_outside_roots", /\/etc\/passwd/],
        [{ source: "random.bin", peer: "nobody" }, 400, "unknown_peer", /"nobody"/],
        [{ source: "random.bin", peer: b.dataAddr, streams: 0 }, 400, "invalid_request", /streams = 0/],
        [
          { source: "random.bin", peer: b.dataAddr, destination: "../x" },
          403,
          "path_outside_roots",
          /\.\.\/x/,
        ],
        [{ source: "random.bin", peer: b.dataAddr, destination: "r/random.bin" }, 409, "exists", /overwrite/],
      ];
      for (const [body, status, code, message] of cases) {
        const res = await a.json<{ error: { code: string; message: string } }>("/v1/transfers", {
          method: "POST",
          body: JSON.stringify(body),
        });
        assert.equal(res.status, status, JSON.stringify(res.body));
        assert.equal(res.body.error.code, code);
        assert.match(res.body.error.message, message);
      }
    });
  } finally {
    await a.stop();
    await b.stop();
  }
});

Deno.test({ name: "an agent with another secret is refused", ...opts }, async () => {
  const a = await startAgent({ id: "a" });
  const b = await startAgent({ id: "stranger", secret: "a-different-secret-0123456789" });
  try {
    await Deno.writeTextFile(join(a.root, "f.txt"), "hello");
    const res = await send(a, { source: "f.txt", peer: b.dataAddr });
    assert.equal(res.status, 502, JSON.stringify(res.body));
    assert.equal((res.body as unknown as { error: { code: string } }).error.code, "auth_failed");
    assert.deepEqual(await listDir(b.root), []);
  } finally {
    await a.stop();
    await b.stop();
  }
});

/**
 * Two fresh agents and a 32 MiB transfer from a to b capped at 8 MiB/s, so that it is still under way
 * when agent `watch` has seen 2 MiB go through; then agent `kill` is killed and `check` runs.
 */
async function killMidTransfer(
  watch: "a" | "b",
  kill: "a" | "b",
  check: (agents: { a: TestAgent; b: TestAgent }, id: string) => Promise<void>,
): Promise<void> {
  const agents = { a: await startAgent({ id: "a" }), b: await startAgent({ id: "b" }) };
  const { a, b } = agents;
  try {
    await writeRandomFile(join(a.root, "f.bin"), 32 * MiB);
    const res = await send(a, { source: "f.bin", peer: b.dataAddr, maxBytesPerSec: 8 * MiB });
    assert.equal(res.status, 201);
    await untilTransfer(agents[watch], res.body.id, (s) => (s.bytesDone as number) > 2 * MiB);
    await agents[kill].kill();
    await check(agents, res.body.id);
  } finally {
    await a.stop();
    await b.stop();
  }
}

Deno.test(
  { name: "a receiver that dies mid-transfer fails it; the sender keeps running", ...opts },
  () =>
    killMidTransfer("a", "b", async ({ a, b }, id) => {
      const snap = await waitForTransfer(a, id) as Snapshot;
      assert.equal(snap.state, "failed");
      assert.ok((snap.bytesDone as number) < 32 * MiB);
      assert.ok(!(await listDir(b.root)).includes("f.bin"), "no file presented as complete");
      assert.equal((await a.json("/v1/health")).status, 200, "the sending agent is still up");
    }),
);

Deno.test(
  { name: "a sender that dies mid-transfer: the receiver drops the partial file", ...opts },
  () =>
    killMidTransfer("b", "a", async ({ b }, id) => {
      const incoming = await waitForTransfer(b, id) as Snapshot;
      assert.equal(incoming.state, "failed");
      assert.equal(incoming.error?.code, "peer_closed");
      assert.deepEqual(await listDir(b.root), []);
    }),
);
