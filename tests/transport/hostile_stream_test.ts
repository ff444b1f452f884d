/**
 * Hostile input over whole connections, against a real DataServer on loopback: random bytes before the
 * handshake, random control messages after it, and random, truncated and lying frames on an attached
 * stream of an accepted file transfer (random headers, every flag and codec, payloads that are garbage
 * for the zero-page, codec and delta decoders). Whatever arrives, the server must answer by refusing
 * or closing: it keeps serving (a real transfer afterwards arrives intact), leaves no file behind, and
 * its memory stays bounded. Seeded: a failure names its seed and reproduces.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { CODECS } from "../../ffi/codec.ts";
import { TransferProgress } from "../../src/obs/progress.ts";
import { FileSource } from "../../src/transport/chunk_source.ts";
import { dial } from "../../src/transport/dial.ts";
import {
  encodeHeader,
  FRAME_HEADER_BYTES,
  FrameType,
  KNOWN_FLAGS,
  MAX_FRAME_PAYLOAD_BYTES,
  uuidToBytes,
} from "../../src/transport/frame.ts";
import type { PeerIdentity } from "../../src/transport/handshake.ts";
import type { AcceptedMessage, OpenMessage } from "../../src/transport/messages.ts";
import { OutgoingTransfer } from "../../src/transport/sender.ts";
import { closeQuietly, expectMessage, sendMessage, writeAll } from "../../src/transport/wire.ts";
import { type LoopbackServer, startLoopbackServer } from "../support/data_server.ts";
import { mulberry32, pick, randInt } from "./prng.ts";

const KiB = 1024, MiB = 1024 * KiB;
const SECRET = "a-shared-secret-of-enough-length";
const clientId: PeerIdentity = { agentId: "mallory", capabilities: { codecs: [...CODECS], rdma: false } };
const serverId: PeerIdentity = { agentId: "bob", capabilities: { codecs: [...CODECS], rdma: false } };
const CHUNK_BYTES = 256 * KiB;
const FILE_BYTES = 4 * MiB;
/** What the server may grow by over a whole scenario; unbounded allocation would blow far past it. */
const RSS_GROWTH_LIMIT_BYTES = 256 * MiB;

type Rand = () => number;

function randomBytes(rand: Rand, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(rand() * 256);
  return out;
}

/** Half-closes our side, then reads until the server closes its own: it has dealt with what we sent. */
async function finish(conn: Deno.TcpConn): Promise<void> {
  await conn.closeWrite().catch(() => {});
  const buf = new Uint8Array(64 * KiB);
  try {
    while (await conn.read(buf) !== null) { /* the server's answers, if any */ }
  } catch { /* reset by the server: also an answer */ }
  closeQuietly(conn);
}

/** Every incoming transfer has ended (the server noticed the hostile peer is gone). */
async function settled(s: LoopbackServer): Promise<void> {
  while (s.incoming.some((p) => !p.terminal)) await new Promise((r) => setTimeout(r, 5));
}

function listFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(dir)) {
    if (e.isDirectory) out.push(...listFiles(join(dir, e.name)).map((f) => `${e.name}/${f}`));
    else out.push(e.name);
  }
  return out.sort();
}

/** A real transfer through the same server: it still serves, and delivers the exact bytes. */
async function assertStillServes(s: LoopbackServer, seed: number): Promise<void> {
  const src = join(s.dir, "good.src");
  const data = randomBytes(mulberry32(seed), FILE_BYTES);
  await Deno.writeFile(src, data);
  const id = crypto.randomUUID();
  const progress = new TransferProgress({
    id,
    direction: "send",
    source: src,
    peer: "server",
    destination: "good.bin",
    sizeBytes: FILE_BYTES,
    codec: "zstd",
    chunkBytes: CHUNK_BYTES,
    streams: 2,
  });
  const source = await FileSource.open(src, FILE_BYTES, CHUNK_BYTES);
  const transfer = await OutgoingTransfer.open(
    {
      transferId: id,
      peer: { host: "127.0.0.1", port: s.port },
      target: {
        mode: "file",
        destination: "good.bin",
        sourceName: "good.src",
        sizeBytes: FILE_BYTES,
        overwrite: false,
      },
      streams: 2,
      chunkBytes: CHUNK_BYTES,
      codec: "zstd",
      maxRetries: 3,
      stallTimeoutMs: 30_000,
      secret: SECRET,
      identity: clientId,
    },
    source,
    progress,
  );
  await transfer.run();
  assert.equal(progress.snapshot().state, "completed", JSON.stringify(progress.snapshot().error));
  const got = await Deno.readFile(join(s.dir, "good.bin"));
  const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
  assert.equal(sha(got), sha(data), "the good transfer after the hostile ones arrives intact");
  await Deno.remove(src);
  await Deno.remove(join(s.dir, "good.bin"));
}

async function scenario(name: string, run: (s: LoopbackServer) => Promise<void>): Promise<void> {
  const s = await startLoopbackServer(SECRET, serverId);
  try {
    const rssBefore = Deno.memoryUsage().rss;
    await run(s);
    await settled(s);
    assert.deepEqual(listFiles(s.dir), [], `${name}: nothing is left behind`);
    const growth = Deno.memoryUsage().rss - rssBefore;
    assert.ok(growth < RSS_GROWTH_LIMIT_BYTES, `${name}: RSS grew by ${(growth / MiB).toFixed(0)} MiB`);
    await assertStillServes(s, 99);
    assert.ok(s.incoming.at(-1)?.snapshot().state === "completed");
  } finally {
    await s.close();
  }
}

Deno.test("hostile: random bytes before the handshake, including lying length prefixes", async () => {
  await scenario("pre-handshake", async (s) => {
    const rand = mulberry32(1);
    for (let i = 0; i < 40; i++) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: s.port });
      const bytes = randomBytes(rand, randInt(rand, 0, 64 * KiB));
      // Every third one starts with the real magic, so the parser gets past the first check.
      if (i % 3 === 0 && bytes.length >= 8) bytes.set([0x44, 0x57, 0x43, 0x50, 1, 0, 0, 0]);
      await writeAll(conn, bytes).catch(() => {});
      await finish(conn);
    }
  });
});

Deno.test("hostile: authenticated peer sends random and malformed control messages", async () => {
  await scenario("control", async (s) => {
    const rand = mulberry32(2);
    const opens: unknown[] = [
      { type: "open" },
      { type: "open", transferId: "not-a-uuid", chunkBytes: CHUNK_BYTES, streams: 1, codec: "none" },
      { type: "open", transferId: crypto.randomUUID(), chunkBytes: 2 ** 40, streams: 1, codec: "none" },
      { type: "open", transferId: crypto.randomUUID(), chunkBytes: CHUNK_BYTES, streams: 1e9, codec: "none" },
      {
        type: "open",
        transferId: crypto.randomUUID(),
        chunkBytes: CHUNK_BYTES,
        streams: 1,
        codec: "brotli",
        target: { mode: "file", destination: "x", sourceName: "x", sizeBytes: 1, overwrite: false },
      },
      {
        type: "open",
        transferId: crypto.randomUUID(),
        chunkBytes: CHUNK_BYTES,
        streams: 1,
        codec: "none",
        target: {
          mode: "file",
          destination: "../../etc/passwd",
          sourceName: "x",
          sizeBytes: 1,
          overwrite: true,
        },
      },
      {
        type: "open",
        transferId: crypto.randomUUID(),
        chunkBytes: CHUNK_BYTES,
        streams: 1,
        codec: "none",
        target: { mode: "file", destination: "huge", sourceName: "x", sizeBytes: 2 ** 60, overwrite: false },
      },
      { type: "attach", transferId: crypto.randomUUID(), stream: 0 },
      { type: "attach", transferId: crypto.randomUUID(), stream: -1 },
      { type: "commit", chunks: 1, bytes: 1, digest: "00" },
      { type: "rate-probe", bytes: 2 ** 40 },
      { type: "rate-probe", bytes: 16 * MiB }, // then the connection ends: the server drops the probe
      { type: 42 },
      [1, 2, 3],
      "just a string",
      null,
    ];
    for (const msg of opens) {
      const conn = await dial({ host: "127.0.0.1", port: s.port }, SECRET, clientId);
      await sendMessage(conn, msg as object).catch(() => {});
      await finish(conn);
    }
    // Length-prefixed garbage: not JSON, or a prefix that lies about the length.
    for (let i = 0; i < 20; i++) {
      const conn = await dial({ host: "127.0.0.1", port: s.port }, SECRET, clientId);
      const body = randomBytes(rand, randInt(rand, 0, 4 * KiB));
      const head = new Uint8Array(4);
      new DataView(head.buffer).setUint32(0, i % 2 ? body.length : randInt(rand, 0, 0xffff_ffff), true);
      await writeAll(conn, head).catch(() => {});
      await writeAll(conn, body).catch(() => {});
      await finish(conn);
    }
  });
});

/** Opens a real file transfer and attaches stream 0: the frames that follow are the hostile part. */
async function attachedStream(
  s: LoopbackServer,
): Promise<{ control: Deno.TcpConn; stream: Deno.TcpConn; id: string }> {
  const id = crypto.randomUUID();
  const control = await dial({ host: "127.0.0.1", port: s.port }, SECRET, clientId);
  await sendMessage(
    control,
    {
      type: "open",
      transferId: id,
      chunkBytes: CHUNK_BYTES,
      streams: 1,
      codec: "none",
      target: {
        mode: "file",
        destination: `victim-${id}.bin`,
        sourceName: "x",
        sizeBytes: FILE_BYTES,
        overwrite: false,
      },
    } satisfies OpenMessage,
  );
  await expectMessage<AcceptedMessage>(control, "accepted");
  const stream = await dial({ host: "127.0.0.1", port: s.port }, SECRET, clientId);
  await sendMessage(stream, { type: "attach", transferId: id, stream: 0 });
  await expectMessage(stream, "attached");
  return { control, stream, id };
}

/** One hostile frame: a random header, or a plausible one that lies in one field, with a garbage payload. */
function hostileFrame(rand: Rand, transferId: Uint8Array): Uint8Array {
  const kind = randInt(rand, 0, 5);
  if (kind === 0) return randomBytes(rand, randInt(rand, 1, FRAME_HEADER_BYTES + 4 * KiB));
  const rawLen = kind === 1 ? randInt(rand, 0, MAX_FRAME_PAYLOAD_BYTES) : randInt(rand, 1, CHUNK_BYTES);
  const encLen = kind === 2
    ? randInt(rand, 0, MAX_FRAME_PAYLOAD_BYTES)
    : randInt(rand, 0, Math.min(rawLen, 64 * KiB));
  const header = new Uint8Array(FRAME_HEADER_BYTES);
  encodeHeader({
    type: kind === 3 ? pick(rand, [FrameType.Ack, FrameType.Nack]) : FrameType.Data,
    codec: randInt(rand, 0, kind === 4 ? 255 : 4),
    flags: randInt(rand, 0, KNOWN_FLAGS),
    seq: kind === 5 ? randInt(rand, 0, 0xffff_ffff) : randInt(rand, 0, FILE_BYTES / CHUNK_BYTES - 1),
    transferId: kind === 5 && rand() < 0.5 ? randomBytes(rand, 16) : transferId,
    offset: randInt(rand, 0, FILE_BYTES / CHUNK_BYTES - 1) * CHUNK_BYTES,
    rawLen,
    encLen: kind === 3 ? 0 : encLen,
    checksum: randomBytes(rand, 8),
  }, header);
  // The payload may stop short of encLen: the connection then ends mid-frame.
  const payload = randomBytes(rand, Math.min(encLen, randInt(rand, 0, 64 * KiB)));
  const out = new Uint8Array(header.length + payload.length);
  out.set(header);
  out.set(payload, header.length);
  return out;
}

Deno.test("hostile: random, truncated and lying frames on an attached stream of a file transfer", async () => {
  await scenario("frames", async (s) => {
    const rand = mulberry32(3);
    for (let round = 0; round < 60; round++) {
      const { control, stream, id } = await attachedStream(s);
      const tid = uuidToBytes(id);
      // A few frames per connection: the server may take several before one makes it hang up.
      for (let i = randInt(rand, 1, 4); i > 0; i--) {
        const ok = await writeAll(stream, hostileFrame(rand, tid)).then(() => true, () => false);
        if (!ok) break;
      }
      await finish(stream);
      await finish(control);
    }
    await settled(s);
    const states = s.incoming.map((p) => p.snapshot().state);
    assert.equal(states.length, 60, "every hostile transfer was accepted, so its frames were read");
    assert.ok(states.every((st) => st !== "completed"), `none of them completed: ${states}`);
  });
});
