import assert from "node:assert/strict";
import type { ChunkStore } from "../../src/dedupe/chunk_store.ts";
import { fingerprint } from "../../src/dedupe/fingerprint.ts";
import { StoreFiller } from "../../src/dedupe/store_filler.ts";
import { randomBytes } from "./support.ts";

/** A store whose puts finish only when the test lets them. */
class GatedStore {
  readonly started: { bytes: Uint8Array; finish: (err?: Error) => void }[] = [];
  put(bytes: Uint8Array): Promise<Uint8Array> {
    const { promise, resolve, reject } = Promise.withResolvers<Uint8Array>();
    this.started.push({ bytes, finish: (err) => err ? reject(err) : resolve(fingerprint(bytes)) });
    return promise;
  }
}

const chunk = (seed: number) => {
  const bytes = randomBytes(1000, seed);
  return { hash: fingerprint(bytes), bytes };
};

/** Lets queued callbacks run. */
const settle = () => new Promise((r) => setTimeout(r, 0));

Deno.test("the filler writes in the background, holds back only past its bound, and finds what waits", async () => {
  const store = new GatedStore();
  const logs: string[] = [];
  const filler = new StoreFiller(store as unknown as ChunkStore, 2500, (m) => logs.push(m));
  const [a, b, c] = [chunk(1), chunk(2), chunk(3)];

  await filler.add([a, b]); // 2000 bytes waiting: under the bound, so no wait
  assert.equal(store.started.length, 2);
  assert.deepEqual(filler.pending(a.hash), a.bytes);

  let admitted = false;
  const adding = filler.add([c]).then(() => admitted = true);
  await settle();
  assert.equal(admitted, false, "3000 bytes waiting is past the bound: the caller waits");
  store.started[0].finish();
  await adding;
  assert.equal(filler.pending(a.hash), undefined, "written chunks are the store's to find");
  assert.deepEqual(filler.pending(c.hash), c.bytes);

  let drained = false;
  const draining = filler.drained().then(() => drained = true);
  store.started[1].finish();
  await settle();
  assert.equal(drained, false);
  store.started[2].finish();
  await draining;
  assert.equal(filler.pendingBytes, 0);
  assert.equal(logs.length, 0);
});

Deno.test("a store that fails a write is given up on: nobody waits for it, once logged", async () => {
  const store = new GatedStore();
  const logs: string[] = [];
  const filler = new StoreFiller(store as unknown as ChunkStore, 1500, (m) => logs.push(m));
  const adding = filler.add([chunk(1), chunk(2), chunk(3)]);
  store.started[0].finish(new Error("No space left on device"));
  await adding;
  await filler.drained();
  store.started[1].finish(new Error("No space left on device"));
  store.started[2].finish(new Error("No space left on device"));
  await settle();
  assert.equal(logs.length, 1);
  assert.match(logs[0], /store write failed/);
  await filler.add([chunk(4)]);
  assert.equal(store.started.length, 3, "nothing more is written");
});

Deno.test("writes wait for half the bound or the end of the stream, leaving the machine to the migration", async () => {
  const store = new GatedStore();
  const filler = new StoreFiller(store as unknown as ChunkStore, 4000, () => {});
  await filler.add([chunk(1)]);
  assert.equal(store.started.length, 0);
  await filler.add([chunk(2)]); // 2000 bytes: half the bound
  assert.equal(store.started.length, 2);
  store.started.forEach((s) => s.finish());
  await settle();
  await filler.add([chunk(3)]);
  assert.equal(store.started.length, 2);
  filler.flush();
  assert.equal(store.started.length, 3);
});
