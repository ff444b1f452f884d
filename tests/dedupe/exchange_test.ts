/** Both sides of the dedupe exchange over an in-memory pipe, with a real chunk store in a temp directory. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ChunkStore } from "../../src/dedupe/chunk_store.ts";
import { receiveDeduped, sendDeduped } from "../../src/dedupe/exchange.ts";
import { type DedupeLimits, DEFAULT_DEDUPE_LIMITS } from "../../src/dedupe/messages.ts";
import { memoryChannels, randomBytes, xorshift } from "./support.ts";

const MiB = 1 << 20;

/** Reads of 1 byte to 300 KiB, each a fresh buffer (the sender keeps them until answered). */
async function* reads(data: Uint8Array, seed: number): AsyncGenerator<Uint8Array> {
  const next = xorshift(seed);
  for (let off = 0; off < data.length;) {
    const n = Math.min(data.length - off, next() % 4 === 0 ? 1 + (next() % 100) : 1 + (next() % 300_000));
    yield data.slice(off, off + n);
    off += n;
  }
}

/** Runs one transfer; returns what came out of the sink and both sides' figures. */
async function transfer(data: Uint8Array, store: ChunkStore, seed: number, limits?: DedupeLimits) {
  const [a, b] = memoryChannels();
  const out = new Uint8Array(data.length);
  let at = 0;
  const sink = (bytes: Uint8Array) => {
    out.set(bytes, at);
    at += bytes.length;
    return Promise.resolve();
  };
  const [sent, received] = await Promise.all([
    sendDeduped(reads(data, seed), a, { limits }),
    receiveDeduped(b, store, sink, { limits }),
  ]);
  assert.equal(at, data.length);
  return { out, sent, received, wireBytes: a.sentBytes + b.sentBytes };
}

async function withStore(budgetBytes: number, fn: (store: ChunkStore, dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "dwcp-exchange-test-" });
  const store = await ChunkStore.open({ dir, budgetBytes });
  try {
    await fn(store, dir);
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** 6 MiB like memory: random data, a zero run, and a region that repeats another. */
function firstImage(): Uint8Array {
  const data = randomBytes(6 * MiB, 1);
  data.fill(0, MiB, MiB + 700_000);
  data.copyWithin(4 * MiB, 2 * MiB, 3 * MiB);
  return data;
}

/** The first image edited: bytes inserted, a region rewritten, new data appended. */
function secondImage(first: Uint8Array): Uint8Array {
  const out = new Uint8Array(first.length + 1000 + 512 * 1024);
  out.set(first.subarray(0, MiB + 800_000));
  out.set(randomBytes(1000, 2), MiB + 800_000);
  out.set(first.subarray(MiB + 800_000), MiB + 801_000);
  out.set(randomBytes(100_000, 3), 3 * MiB);
  out.set(randomBytes(512 * 1024, 4), first.length + 1000);
  return out;
}

Deno.test("a second, similar stream sends only what the store lacks; both come out exact", async () => {
  await withStore(64 * MiB, async (store) => {
    const first = firstImage();
    const one = await transfer(first, store, 1);
    assert.deepEqual(one.out, first);
    // Within the first stream, the repeated MiB and the zero run travel once (less the chunks at their edges).
    assert.ok(
      one.sent.bytesSent < first.length - 1.25 * MiB,
      `first stream sent ${one.sent.bytesSent} bytes`,
    );
    assert.equal(one.received.heldBytes, 0);

    const second = secondImage(first);
    const two = await transfer(second, store, 2);
    assert.deepEqual(two.out, second);
    // New: 1000 + 100 000 + 512 KiB, plus the chunks around each edit (up to 64 KiB each side).
    assert.ok(two.sent.bytesSent < 1 * MiB, `second stream sent ${two.sent.bytesSent} bytes`);
    assert.ok(two.received.heldBytes > 5 * MiB, `only ${two.received.heldBytes} bytes came from the store`);
    // Offers cost 36 bytes a chunk: everything on the wire is the sent chunks plus a few percent.
    assert.ok(
      two.wireBytes < two.sent.bytesSent + 0.01 * second.length,
      `${two.wireBytes} bytes on the wire`,
    );
  });
});

Deno.test("a store smaller than the stream evicts during the transfer and the stream still comes out exact", async () => {
  await withStore(2 * MiB, async (store) => {
    const first = firstImage();
    const one = await transfer(first, store, 3);
    assert.deepEqual(one.out, first);
    assert.ok(store.stats().diskBytes <= 2 * MiB);
    assert.ok(store.stats().evictions > 0);
    const again = await transfer(first, store, 4);
    assert.deepEqual(again.out, first);
  });
});

Deno.test("a chunk corrupted in the store is asked for again, not spliced in", async () => {
  await withStore(64 * MiB, async (store, dir) => {
    const data = randomBytes(2 * MiB, 5);
    await transfer(data, store, 5);
    let damaged = 0;
    for await (const sub of Deno.readDir(join(dir, "chunks"))) {
      for await (const f of Deno.readDir(join(dir, "chunks", sub.name))) {
        if (damaged++ > 0) break;
        const path = join(dir, "chunks", sub.name, f.name);
        const bytes = await Deno.readFile(path);
        bytes[100] ^= 0xff;
        await Deno.writeFile(path, bytes);
      }
    }
    const again = await transfer(data, store, 6);
    assert.deepEqual(again.out, data);
    assert.equal(again.received.wantedChunks, 1);
    assert.equal(store.stats().corrupt, 1);
  });
});

Deno.test("small limits: offers of few chunks, one in flight, still exact", async () => {
  const limits: DedupeLimits = { ...DEFAULT_DEDUPE_LIMITS, maxChunksPerOffer: 3, maxOffersInFlight: 1 };
  await withStore(64 * MiB, async (store) => {
    const data = firstImage().subarray(0, 2 * MiB);
    const { out, sent } = await transfer(data, store, 7, limits);
    assert.deepEqual(out, data);
    assert.ok(sent.offers >= sent.chunksOffered / 3);
  });
});

Deno.test("a side that goes away mid-stream fails the other with a clear error", async () => {
  await withStore(64 * MiB, async (store) => {
    const data = randomBytes(3 * MiB, 8);
    const [a, b] = memoryChannels();
    // The sender stops after its first OFFER: the receiver must not wait forever or report success.
    await a.send(await sendFirstOffer(data));
    a.close();
    await assert.rejects(
      receiveDeduped(b, store, () => Promise.resolve()),
      /dedupe sender closed before END/,
    );

    const [c, d] = memoryChannels();
    d.close(); // a receiver that never answers
    await assert.rejects(sendDeduped(reads(data, 9), c), /dedupe receiver closed with 1 offers unanswered/);
  });
});

/** The first OFFER a sender makes for data. */
async function sendFirstOffer(data: Uint8Array): Promise<Uint8Array> {
  const [a, b] = memoryChannels();
  const sending = sendDeduped(reads(data, 10), a).catch(() => {});
  const offer = (await b.receive())!;
  b.close();
  await sending;
  return offer;
}
