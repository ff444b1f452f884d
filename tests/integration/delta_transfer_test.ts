/**
 * Page deltas between two real agent processes: a file sent once, then a newer version of it sent with
 * the old one named as its base (over the API and with `dwcp send --base`); a receiver that lacks the
 * base; bases shorter and longer than the new version. Every arrival is checked by SHA-256.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { MAIN, sha256File, startAgent, type TestAgent, writeRandomFile } from "../support/agents.ts";
import { sendAndWait as sendAndWaitJson, type TransferJson } from "../support/transfers.ts";
import { mulberry32, randInt } from "../transport/prng.ts";

const MiB = 1024 * 1024;
const PAGE = 4096;
const SIZE = 32 * MiB;
const opts = { sanitizeResources: false, sanitizeOps: false };

interface DeltaStatus {
  held: boolean;
  detail: string;
  pages: { unchanged: number; zero: number; delta: number; whole: number };
  chunks: { delta: number; other: number; resentWhole: number };
  bytesSaved: number;
}

type Snapshot = TransferJson & { wireBytes: number; bytesDone: number; delta?: DeltaStatus };

const sendAndWait = async (a: TestAgent, body: Record<string, unknown>) =>
  await sendAndWaitJson(a, body) as Snapshot;

/** Copies src to dst with a few bytes changed in `fraction` of its pages (picked at random, fixed seed). */
async function modifyPages(src: string, dst: string, fraction: number, seed: number): Promise<number> {
  const data = await Deno.readFile(src);
  const pages = Math.floor(data.length / PAGE);
  const rand = mulberry32(seed);
  const changed = new Set<number>();
  while (changed.size < Math.round(pages * fraction)) changed.add(randInt(rand, 0, pages - 1));
  for (const page of changed) {
    for (let k = 0; k < 16; k++) data[page * PAGE + randInt(rand, 0, PAGE - 1)] ^= 1 + randInt(rand, 0, 254);
  }
  await Deno.writeFile(dst, data);
  return changed.size;
}

Deno.test({ name: "page deltas between two agents", ...opts }, async (t) => {
  const a = await startAgent({ id: "a" });
  const b = await startAgent({ id: "b" });
  const v1 = join(a.root, "v1.img"), v2 = join(a.root, "v2.img");
  try {
    await writeRandomFile(v1, SIZE);
    const first = await sendAndWait(a, { source: v1, peer: b.dataAddr, destination: "img" });
    assert.equal(first.state, "completed", JSON.stringify(first.error));
    assert.equal(first.delta, undefined, "no base named, no delta figures");
    const changedPages = await modifyPages(v1, v2, 0.01, 1);

    await t.step("v2 with v1 as its base: a small fraction of the bytes on the wire", async () => {
      const snap = await sendAndWait(a, { source: v2, peer: b.dataAddr, destination: "img", base: v1 });
      assert.equal(snap.state, "completed", JSON.stringify(snap.error));
      assert.equal(await sha256File(join(b.root, "img")), await sha256File(v2));
      const d = snap.delta!;
      assert.equal(d.held, true, d.detail);
      assert.equal(d.pages.delta, changedPages, JSON.stringify(d.pages));
      assert.equal(d.pages.unchanged, SIZE / PAGE - changedPages);
      assert.equal(d.chunks.resentWhole, 0);
      assert.ok(snap.wireBytes < SIZE / 100, `${snap.wireBytes} bytes on the wire for ${SIZE}`);
      assert.ok(d.bytesSaved > SIZE * 0.99, `saved ${d.bytesSaved}`);
      const received = (await b.json<Snapshot>(`/v1/transfers/${snap.id}`)).body;
      assert.deepEqual(received.delta?.pages, d.pages, "the receiver shows the same pages");
      const names = (await Array.fromAsync(Deno.readDir(b.root))).map((e) => e.name);
      assert.deepEqual(names, ["img"], "the base was replaced, no temporary file left behind");
    });

    await t.step("dwcp send --base: the CLI names the base, the same way", async () => {
      const v3 = join(a.root, "v3.img");
      await modifyPages(v2, v3, 0.01, 2);
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "--allow-all", MAIN, "send", v3, "--to", `${b.dataAddr}:img`, "--base", v2]
          .concat(["--api", a.apiUrl, "--json"]),
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout);
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      const snap = JSON.parse(text) as Snapshot;
      assert.equal(snap.delta?.held, true, text);
      assert.ok(snap.wireBytes < SIZE / 100, `${snap.wireBytes} bytes on the wire`);
      assert.equal(await sha256File(join(b.root, "img")), await sha256File(v3));
      await Deno.copyFile(v3, v2); // the receiver holds v3 now: later steps use it as v2
    });

    await t.step("a receiver that lacks the base says so and gets the file whole", async () => {
      const snap = await sendAndWait(a, { source: v2, peer: b.dataAddr, destination: "fresh", base: v1 });
      assert.equal(snap.state, "completed", JSON.stringify(snap.error));
      assert.equal(snap.delta?.held, false);
      assert.match(snap.delta!.detail, /no file/);
      assert.equal(snap.delta!.chunks.delta, 0);
      assert.ok(snap.wireBytes >= SIZE, "every byte travelled");
      assert.equal(await sha256File(join(b.root, "fresh")), await sha256File(v2));
    });

    await t.step(
      "a destination with other content is not replaced without overwrite; with it, whole",
      async () => {
        const refused = await a.json<{ error: { code: string } }>("/v1/transfers", {
          method: "POST",
          body: JSON.stringify({ source: v1, peer: b.dataAddr, destination: "fresh", base: v1 }),
        });
        assert.equal(refused.body.error?.code, "exists", JSON.stringify(refused.body));
        const snap = await sendAndWait(a, {
          source: v1,
          peer: b.dataAddr,
          destination: "fresh",
          base: v1,
          overwrite: true,
        });
        assert.equal(snap.state, "completed", JSON.stringify(snap.error));
        assert.match(snap.delta!.detail, /differs from the base/);
        assert.equal(await sha256File(join(b.root, "fresh")), await sha256File(v1));
      },
    );

    await t.step("a longer new version: pages past the base's end travel whole", async () => {
      const longer = join(a.root, "longer.img");
      await Deno.copyFile(v2, longer);
      {
        using f = await Deno.open(longer, { append: true });
        const tail = new Uint8Array(3 * MiB + 100);
        crypto.getRandomValues(tail.subarray(0, 65536));
        await f.write(tail);
      }
      const snap = await sendAndWait(a, { source: longer, peer: b.dataAddr, destination: "img", base: v2 });
      assert.equal(snap.state, "completed", JSON.stringify(snap.error));
      assert.equal(snap.delta?.held, true, snap.delta?.detail);
      assert.equal(snap.delta!.pages.delta, 0);
      assert.ok(snap.wireBytes < 4 * MiB, `${snap.wireBytes}: about the 3 MiB appended`);
      assert.equal(await sha256File(join(b.root, "img")), await sha256File(longer));
      await Deno.copyFile(longer, v2);
    });

    await t.step("a shorter new version against a longer base", async () => {
      const shorter = join(a.root, "shorter.img");
      const data = await Deno.readFile(v2);
      await Deno.writeFile(shorter, data.subarray(0, 20 * MiB + 1234));
      const snap = await sendAndWait(a, { source: shorter, peer: b.dataAddr, destination: "img", base: v2 });
      assert.equal(snap.state, "completed", JSON.stringify(snap.error));
      assert.equal(snap.delta?.held, true);
      assert.equal(snap.delta!.chunks.other, 0, "every chunk lies within the base");
      assert.ok(snap.wireBytes < 64 * 1024, `${snap.wireBytes} bytes on the wire`);
      assert.equal(await sha256File(join(b.root, "img")), await sha256File(shorter));
    });

    await t.step("a base outside the roots is refused with the reason", async () => {
      const res = await a.json<{ error: { code: string; message: string } }>("/v1/transfers", {
        method: "POST",
        body: JSON.stringify({ source: v2, peer: b.dataAddr, destination: "img", base: "/etc/hostname" }),
      });
      assert.equal(res.status, 403, JSON.stringify(res.body));
      assert.equal(res.body.error.code, "path_outside_roots");
    });
  } finally {
    await a.stop();
    await b.stop();
  }
});
