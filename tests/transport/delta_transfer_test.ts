/**
 * Page deltas for file transfers, in one process over real loopback TCP (src/transport/delta_base.ts):
 * the base hash and its cache, the receiver's verdict on a base, a transfer against a base the receiver
 * holds, and one whose base changes at the receiver after it was matched, so that deltas decode to the
 * wrong bytes: the checksums catch them and the sender resends those chunks whole.
 */
import assert from "node:assert/strict";
import { startLoopbackServer } from "../support/data_server.ts";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { CODECS } from "../../ffi/codec.ts";
import { TransferProgress } from "../../src/obs/progress.ts";
import { FileSource } from "../../src/transport/chunk_source.ts";
import { type DeltaStatus, FileHashCache, matchBase } from "../../src/transport/delta_base.ts";
import type { BaseRef } from "../../src/transport/messages.ts";
import { PeerError } from "../../src/transport/wire.ts";
import type { PeerIdentity } from "../../src/transport/handshake.ts";
import { OutgoingTransfer } from "../../src/transport/sender.ts";
import { mulberry32, randInt } from "./prng.ts";

const KiB = 1024, MiB = 1024 * KiB;
const SECRET = "a-shared-secret-of-enough-length";
const senderId: PeerIdentity = { agentId: "alice", capabilities: { codecs: [...CODECS], rdma: false } };
const receiverId: PeerIdentity = { agentId: "bob", capabilities: { codecs: [...CODECS], rdma: false } };
const CHUNK_BYTES = 256 * KiB;
const PAGE = 4096;

function randomBytes(n: number, seed: number): Uint8Array {
  const rand = mulberry32(seed);
  const words = new Uint32Array(Math.ceil(n / 4));
  for (let i = 0; i < words.length; i++) words[i] = Math.floor(rand() * 0x1_0000_0000);
  return new Uint8Array(words.buffer, 0, n);
}

/** base with 8 bytes changed in each of `pages` pages picked at random. */
function modified(base: Uint8Array, pages: number, seed: number): Uint8Array {
  const rand = mulberry32(seed);
  const out = base.slice();
  for (let n = 0; n < pages; n++) {
    const page = randInt(rand, 0, Math.floor(base.length / PAGE) - 1);
    for (let k = 0; k < 8; k++) out[page * PAGE + randInt(rand, 0, PAGE - 1)] ^= 0x5a;
  }
  return out;
}

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

Deno.test("the base hash: same bytes same hash, any change another; cached until the file changes", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const a = join(dir, "a"), b = join(dir, "b");
    const data = randomBytes(3 * MiB + 5, 1);
    await Deno.writeFile(a, data);
    await Deno.writeFile(b, data);
    // Files written just now are not cached by default (timestamps are coarse): this test sets mtimes itself.
    const cache = new FileHashCache(256, 0);
    const ha = await cache.hash(a);
    assert.match(ha.hash, /^[0-9a-f]{32}$/);
    assert.equal(ha.sizeBytes, data.length);
    assert.deepEqual(await cache.hash(b), ha, "same bytes in another file: same hash");
    assert.equal(cache.hashedBytes, 2 * data.length);
    assert.deepEqual(await cache.hash(a), ha);
    assert.equal(cache.hashedBytes, 2 * data.length, "an unchanged file is not read again");
    data[3 * MiB] ^= 1; // in the last, partial piece
    await Deno.writeFile(a, data);
    await Deno.utime(a, new Date(0), new Date(1000)); // a new mtime even within the same timestamp tick
    assert.notEqual((await cache.hash(a)).hash, ha.hash, "a changed file is hashed again, to another hash");
    await Deno.writeFile(b, data.subarray(0, 3 * MiB));
    assert.notEqual((await cache.hash(b)).hash, ha.hash);
    const fresh = new FileHashCache();
    await fresh.hash(a);
    await fresh.hash(a);
    assert.equal(fresh.hashedBytes, 2 * data.length, "a file changed within the last tick is read each time");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the receiver holds a base only when the destination has its size and content hash", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cache = new FileHashCache();
    const data = randomBytes(100 * KiB, 2);
    await Deno.writeFile(join(dir, "v1"), data);
    const ref = await cache.hash(join(dir, "v1"));
    const held = await matchBase(join(dir, "v1"), ref, cache);
    assert.equal(held.held, true, held.detail);
    held.file?.close();
    const missing = await matchBase(join(dir, "none"), ref, cache);
    assert.deepEqual([missing.held, /no file/.test(missing.detail)], [false, true], missing.detail);
    await Deno.writeFile(join(dir, "short"), data.subarray(1));
    const short = await matchBase(join(dir, "short"), ref, cache);
    assert.match(short.detail, /102399 bytes, the base 102400/);
    data[0] ^= 1;
    await Deno.writeFile(join(dir, "other"), data);
    const other = await matchBase(join(dir, "other"), ref, cache);
    assert.equal(other.held, false);
    assert.match(other.detail, /differs from the base/);
    assert.equal(other.file, undefined, "no file is left open");
    await Deno.mkdir(join(dir, "d"));
    assert.match((await matchBase(join(dir, "d"), ref, cache)).detail, /not a regular file/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

interface Run {
  sent: { state: string; error?: unknown; wireBytes: number; retransmits: number; delta: DeltaStatus };
  received: { delta: DeltaStatus };
  arrived: Uint8Array;
}

/**
 * Sends `next` from the sender's directory to "file" at the receiver, which holds `held` there, naming
 * the sender's `base` as the base. beforeRun runs once the receiver has accepted (its base is matched);
 * named, when given, replaces what the open says of the base.
 */
async function sendAgainstBase(
  next: Uint8Array,
  base: Uint8Array,
  held: Uint8Array,
  beforeRun: (receiverPath: string) => Promise<void> = async () => {},
  named?: BaseRef,
): Promise<Run> {
  const senderDir = await Deno.makeTempDir();
  const receiver = await startLoopbackServer(SECRET, receiverId);
  const receiverDir = receiver.dir, incoming = receiver.incoming;
  try {
    const srcPath = join(senderDir, "next"), basePath = join(senderDir, "base");
    await Deno.writeFile(srcPath, next);
    await Deno.writeFile(basePath, base);
    await Deno.writeFile(join(receiverDir, "file"), held);
    const ref = await new FileHashCache().hash(basePath);
    const transferId = crypto.randomUUID();
    const progress = new TransferProgress({
      id: transferId,
      direction: "send",
      source: srcPath,
      peer: "bob",
      destination: "file",
      sizeBytes: next.length,
      codec: "none",
      chunkBytes: CHUNK_BYTES,
      streams: 2,
    });
    const source = await FileSource.open(srcPath, next.length, CHUNK_BYTES);
    const transfer = await OutgoingTransfer.open(
      {
        transferId,
        peer: { host: "127.0.0.1", port: receiver.port },
        target: {
          mode: "file",
          destination: "file",
          sourceName: "next",
          sizeBytes: next.length,
          overwrite: false,
          base: named ?? ref,
        },
        base: { path: basePath, ...ref },
        streams: 2,
        chunkBytes: CHUNK_BYTES,
        codec: "none",
        maxRetries: 3,
        stallTimeoutMs: 10_000,
        secret: SECRET,
        identity: senderId,
      },
      source,
      progress,
    ).catch((err) => {
      source.close(); // the transfer owns the source only once it is open
      throw err;
    });
    await beforeRun(join(receiverDir, "file"));
    await transfer.run();
    while (!incoming[0]?.terminal) await new Promise((r) => setTimeout(r, 5));
    return {
      sent: progress.snapshot() as unknown as Run["sent"],
      received: incoming[0].snapshot() as unknown as Run["received"],
      arrived: await Deno.readFile(join(receiverDir, "file")),
    };
  } finally {
    await receiver.close();
    await Deno.remove(senderDir, { recursive: true });
  }
}

Deno.test("a file with 1 % of its pages changed travels as deltas against the base the receiver holds", async () => {
  const v1 = randomBytes(4 * MiB, 3);
  const v2 = modified(v1, 10, 4);
  const r = await sendAgainstBase(v2, v1, v1);
  assert.equal(r.sent.state, "completed", JSON.stringify(r.sent.error));
  assert.equal(sha256(r.arrived), sha256(v2));
  const d = r.sent.delta;
  assert.equal(d.held, true, d.detail);
  assert.equal(d.chunks.delta, 16, "every chunk went as a delta");
  assert.ok(d.pages.delta >= 9 && d.pages.delta <= 10, JSON.stringify(d.pages));
  assert.equal(d.pages.unchanged + d.pages.delta, 1024);
  assert.ok(r.sent.wireBytes < 16 * 1024, `${r.sent.wireBytes} wire bytes for 4 MiB`);
  assert.equal(d.bytesSaved, 4 * MiB - (r.sent.wireBytes - 16 * 48), "saved: raw less payload bytes");
  assert.deepEqual(r.received.delta.pages, d.pages, "the receiver counts the same pages");
});

Deno.test("a base that changed at the receiver after it was matched: checksums catch it, chunks go whole", async () => {
  const v1 = randomBytes(2 * MiB, 5);
  const v2 = modified(v1, 20, 6);
  const r = await sendAgainstBase(v2, v1, v1, async (path) => {
    // In place, so the receiver's open base file sees it: one byte in the first page of chunks 0 and 5.
    using f = await Deno.open(path, { write: true });
    for (const at of [100, 5 * CHUNK_BYTES + 100]) {
      f.seekSync(at, Deno.SeekMode.Start);
      f.writeSync(Uint8Array.of(v1[at] ^ 0xff));
    }
  });
  assert.equal(r.sent.state, "completed", JSON.stringify(r.sent.error));
  assert.equal(sha256(r.arrived), sha256(v2), "the file arrives intact all the same");
  const d = r.sent.delta;
  assert.equal(d.chunks.resentWhole, 2, JSON.stringify(d.chunks));
  assert.equal(r.sent.retransmits, 2);
  assert.equal(d.chunks.delta, 6, "the other chunks stayed deltas");
  assert.equal(d.chunks.other, 2, "the two resent chunks went whole");
});

Deno.test("a receiver that lacks the base says why, and the transfer runs without deltas", async () => {
  const v1 = randomBytes(1 * MiB, 7);
  const v2 = modified(v1, 3, 8);
  const other = randomBytes(1 * MiB, 9);
  await assert.rejects(
    () => sendAgainstBase(v2, v1, other),
    /exists/,
    "a destination that is not the base is not replaced without overwrite",
  );
});

Deno.test("a base shorter than the new version: pages past its end travel whole", async () => {
  const v1 = randomBytes(1 * MiB + 3 * PAGE + 10, 10);
  const v2 = new Uint8Array(2 * MiB);
  v2.set(modified(v1, 2, 11));
  v2.set(randomBytes(v2.length - v1.length, 12), v1.length);
  const r = await sendAgainstBase(v2, v1, v1);
  assert.equal(r.sent.state, "completed", JSON.stringify(r.sent.error));
  assert.equal(sha256(r.arrived), sha256(v2));
  const d = r.sent.delta;
  assert.equal(d.chunks.delta, 5, "the chunks the base reaches into");
  assert.equal(d.chunks.other, 3, "the chunks past its end");
  assert.equal(d.pages.whole, 3 * 64 + (64 - 4) + 1, "pages past the base, and the page it ends inside");
});

Deno.test("an open naming a malformed base is refused, naming the field", async () => {
  const v1 = randomBytes(64 * KiB, 13);
  for (
    const named of [{ hash: "00ff", sizeBytes: 1 }, { hash: "A".repeat(32), sizeBytes: 1 }, {
      hash: "0".repeat(32),
      sizeBytes: -1,
    }]
  ) {
    await assert.rejects(
      () => sendAgainstBase(v1, v1, v1, undefined, named),
      (err: PeerError) =>
        err.code === "invalid_request" && /base .* must be \{hash: 32 lowercase hex/.test(err.message),
      JSON.stringify(named),
    );
  }
});
