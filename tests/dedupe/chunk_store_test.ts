/** ChunkStore on a real directory: LRU under a budget, restarts, crashes, torn logs, corrupt chunks, races. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ChunkHashMismatch, ChunkStore } from "../../src/dedupe/chunk_store.ts";
import { fingerprint, hashHex } from "../../src/dedupe/fingerprint.ts";
import { randomBytes } from "./support.ts";

const BLOCK = 4096;

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "dwcp-store-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Distinct chunks of one block each, so the budget counts them one for one. */
const blockChunk = (i: number) => randomBytes(BLOCK, 1000 + i);

function chunkPath(dir: string, bytes: Uint8Array): string {
  const hex = hashHex(fingerprint(bytes));
  return join(dir, "chunks", hex.slice(0, 2), hex);
}

async function filesOnDisk(dir: string): Promise<{ count: number; bytes: number }> {
  let count = 0;
  let bytes = 0;
  for await (const sub of Deno.readDir(join(dir, "chunks"))) {
    for await (const f of Deno.readDir(join(dir, "chunks", sub.name))) {
      count++;
      bytes += (await Deno.stat(join(dir, "chunks", sub.name, f.name))).size;
    }
  }
  return { count, bytes };
}

Deno.test("put returns the SHA-256, get returns the bytes, a second put writes nothing", async () => {
  await withDir(async (dir) => {
    const store = await ChunkStore.open({ dir, budgetBytes: 1 << 20 });
    const bytes = randomBytes(10_000, 1);
    const hash = await store.put(bytes);
    assert.deepEqual(hash, fingerprint(bytes));
    assert.ok(store.has(hash));
    assert.deepEqual(await store.get(hash), bytes);
    assert.deepEqual(await store.put(bytes), hash);
    await Promise.all([store.put(bytes), store.put(bytes)]);
    assert.equal(store.stats().writes, 1);
    assert.equal(store.stats().diskBytes, 3 * BLOCK, "10 000 bytes take three 4 KiB blocks");
    assert.equal(await store.get(fingerprint(randomBytes(10, 2))), undefined);
    await store.close();
  });
});

Deno.test("the least recently used chunk is evicted first, and the files never exceed the budget", async () => {
  await withDir(async (dir) => {
    const store = await ChunkStore.open({ dir, budgetBytes: 4 * BLOCK });
    const c = [0, 1, 2, 3, 4, 5].map(blockChunk);
    for (const x of c.slice(0, 4)) await store.put(x);
    await store.get(fingerprint(c[0])); // c0 is now the most recently used; c1 the least
    await store.put(c[4]);
    assert.deepEqual(c.map((x) => store.has(fingerprint(x))), [true, false, true, true, true, false]);
    await store.put(c[2]); // a put of a stored chunk counts as a use too: c3 is now the least recent
    await store.put(c[5]);
    assert.deepEqual(c.map((x) => store.has(fingerprint(x))), [true, false, true, false, true, true]);
    assert.equal(store.stats().evictions, 2);
    await store.close();
    const disk = await filesOnDisk(dir);
    assert.equal(disk.count, 4);
    assert.ok(disk.bytes <= 4 * BLOCK);
  });
});

Deno.test("the index and its LRU order survive a restart; a lower budget evicts the oldest at open", async () => {
  await withDir(async (dir) => {
    const c = [0, 1, 2, 3].map(blockChunk);
    const first = await ChunkStore.open({ dir, budgetBytes: 8 * BLOCK });
    for (const x of c) await first.put(x);
    await first.get(fingerprint(c[0]));
    await first.close();

    const notes: string[] = [];
    const second = await ChunkStore.open({ dir, budgetBytes: 2 * BLOCK, log: (m) => notes.push(m) });
    assert.deepEqual(notes, []);
    // Order was c1 c2 c3 c0: the two least recent go.
    assert.deepEqual(c.map((x) => second.has(fingerprint(x))), [true, false, false, true]);
    assert.deepEqual(await second.get(fingerprint(c[3])), c[3]);
    await second.close();
  });
});

Deno.test("after a crash, chunks the index never recorded are adopted and all read back intact", async () => {
  await withDir(async (dir) => {
    // A child process stores 60 chunks, appends the index for the first 20 only, and dies without closing.
    const code = `
      import { ChunkStore } from ${
      JSON.stringify(new URL("../../src/dedupe/chunk_store.ts", import.meta.url).href)
    };
      import { randomBytes } from ${JSON.stringify(new URL("./support.ts", import.meta.url).href)};
      const store = await ChunkStore.open({ dir: ${JSON.stringify(dir)}, budgetBytes: 1 << 20 });
      for (let i = 0; i < 60; i++) {
        await store.put(randomBytes(${BLOCK}, 1000 + i));
        if (i === 19) await store.flush();
      }
      Deno.exit(0);`;
    const child = await new Deno.Command(Deno.execPath(), { args: ["eval", code], stderr: "piped" }).output();
    assert.equal(child.code, 0, new TextDecoder().decode(child.stderr));

    const notes: string[] = [];
    const store = await ChunkStore.open({ dir, budgetBytes: 1 << 20, log: (m) => notes.push(m) });
    assert.equal(store.stats().entries, 60);
    assert.match(notes.join("\n"), /adopted 40 chunk files the index lacked/);
    for (let i = 0; i < 60; i++) assert.deepEqual(await store.get(fingerprint(blockChunk(i))), blockChunk(i));
    await store.close();
  });
});

Deno.test("a torn or corrupted index is cut at its first bad record and the chunk files decide", async () => {
  await withDir(async (dir) => {
    const c = [0, 1, 2, 3, 4].map(blockChunk);
    const first = await ChunkStore.open({ dir, budgetBytes: 1 << 20 });
    for (const x of c) await first.put(x);
    await first.close();
    const logPath = join(dir, "index.log");

    // A torn append: half a record at the end.
    const log = await Deno.readFile(logPath);
    await Deno.writeFile(logPath, new Uint8Array([...log, ...log.subarray(8, 30)]));
    let notes: string[] = [];
    let store = await ChunkStore.open({ dir, budgetBytes: 1 << 20, log: (m) => notes.push(m) });
    assert.match(notes.join("\n"), /ignored 22 bytes from offset 228 on \(a torn or corrupted tail\)/);
    assert.equal(store.stats().entries, 5);
    await store.close();

    // A flipped bit in the second record: it and everything after is distrusted; the files are adopted.
    const clean = await Deno.readFile(logPath);
    clean[8 + 44 + 20] ^= 1;
    await Deno.writeFile(logPath, clean);
    // And one chunk file vanished behind the store's back.
    await Deno.remove(chunkPath(dir, c[0]));
    notes = [];
    store = await ChunkStore.open({ dir, budgetBytes: 1 << 20, log: (m) => notes.push(m) });
    assert.match(notes.join("\n"), /ignored 176 bytes from offset 52/);
    assert.match(
      notes.join("\n"),
      /adopted 4 chunk files the index lacked, dropped 1 entries whose file is gone/,
    );
    assert.deepEqual(c.map((x) => store.has(fingerprint(x))), [false, true, true, true, true]);
    await store.close();

    // Not an index at all.
    await Deno.writeTextFile(logPath, "hello");
    notes = [];
    store = await ChunkStore.open({ dir, budgetBytes: 1 << 20, log: (m) => notes.push(m) });
    assert.match(notes.join("\n"), /has no valid header; rebuilding it from the chunk files/);
    assert.equal(store.stats().entries, 4);
    await store.close();
  });
});

Deno.test("a corrupted or truncated chunk file reads as absent and is removed", async () => {
  await withDir(async (dir) => {
    const store = await ChunkStore.open({ dir, budgetBytes: 1 << 20 });
    const a = randomBytes(20_000, 1);
    const b = randomBytes(20_000, 2);
    await store.put(a);
    await store.put(b);
    const pa = chunkPath(dir, a);
    const bad = await Deno.readFile(pa);
    bad[12_345] ^= 0x40;
    await Deno.writeFile(pa, bad);
    await Deno.truncate(chunkPath(dir, b), 100);

    assert.equal(await store.get(fingerprint(a)), undefined);
    assert.equal(await store.get(fingerprint(b)), undefined);
    assert.equal(store.has(fingerprint(a)), false);
    assert.equal(store.stats().corrupt, 2);
    assert.equal(store.stats().diskBytes, 0);
    await store.flush();
    await assert.rejects(Deno.stat(pa), Deno.errors.NotFound);
    // Sent again, it is stored again.
    await store.put(a);
    assert.deepEqual(await store.get(fingerprint(a)), a);
    await store.close();
  });
});

Deno.test("readers racing writers and evictions get the right bytes or nothing, never wrong bytes", async () => {
  await withDir(async (dir) => {
    const store = await ChunkStore.open({ dir, budgetBytes: 16 * BLOCK });
    const chunks = Array.from({ length: 64 }, (_, i) => randomBytes(BLOCK + (i % 3) * 1000, 500 + i));
    const ops: Promise<unknown>[] = [];
    for (let round = 0; round < 4; round++) {
      for (let i = 0; i < chunks.length; i++) {
        ops.push(store.put(chunks[(i * 7 + round) % chunks.length]));
        const want = chunks[(i * 5 + round * 3) % chunks.length];
        ops.push(
          store.get(fingerprint(want)).then((got) => {
            if (got !== undefined) assert.deepEqual(got, want);
          }),
        );
      }
    }
    await Promise.all(ops);
    const stats = store.stats();
    assert.equal(stats.corrupt, 0);
    assert.ok(stats.diskBytes <= 16 * BLOCK, `${stats.diskBytes} bytes stored over a ${16 * BLOCK} budget`);
    await store.close();
    const disk = await filesOnDisk(dir);
    assert.equal(disk.count, stats.entries);
    for (const c of chunks) {
      if (store.has(fingerprint(c))) assert.deepEqual(await Deno.readFile(chunkPath(dir, c)), c);
    }
  });
});

Deno.test("bad puts, a bad budget and a store held by another process are refused with the fix", async () => {
  await withDir(async (dir) => {
    await assert.rejects(
      ChunkStore.open({ dir, budgetBytes: 100 }),
      /budgetBytes 100: must be an integer of at least 4096/,
    );
    const store = await ChunkStore.open({ dir, budgetBytes: 2 * BLOCK });
    const bytes = randomBytes(5000, 1);
    const other = fingerprint(randomBytes(5000, 2));
    await assert.rejects(store.put(bytes, other), (err: unknown) => {
      assert.ok(err instanceof ChunkHashMismatch);
      assert.match(
        err.message,
        new RegExp(`hashes to ${hashHex(fingerprint(bytes))}, not the ${hashHex(other)}`),
      );
      return true;
    });
    assert.equal(store.stats().entries, 0);
    await assert.rejects(store.put(new Uint8Array(0)), /chunk of 0 bytes: the store takes 1\.\./);
    await assert.rejects(store.put(randomBytes(3 * BLOCK, 3)), /chunk of 12288 bytes.*budget of 8192/);
    await assert.rejects(ChunkStore.open({ dir, budgetBytes: 2 * BLOCK }), /already open in this process/);
    await store.close();
    await assert.rejects(store.get(other), /is closed/);

    // PID 1 is alive and is not us: its claim stands. A dead owner's claim is taken over.
    await Deno.writeTextFile(join(dir, "owner"), "1\n");
    await assert.rejects(
      ChunkStore.open({ dir, budgetBytes: 2 * BLOCK }),
      /in use by process 1; stop it, or if 1/,
    );
    await Deno.writeTextFile(join(dir, "owner"), "999999999\n");
    await (await ChunkStore.open({ dir, budgetBytes: 2 * BLOCK })).close();
  });
});
