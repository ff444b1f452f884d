/**
 * Stream mode end to end, in one process over real loopback TCP: a producer (standing in for a QEMU
 * migration source) writes pseudo-random bytes into a unix socket that a StreamSource reads; an
 * OutgoingTransfer sends them over several streams to a DataServer, whose StreamSink writes them into
 * another unix socket that a consumer (standing in for QEMU -incoming) reads and hashes. Then the same with
 * a lost stream, a corrupted byte, a slow consumer (backpressure), a consumer that quits, and a sink name
 * nobody registered.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { type CodecName, CODECS } from "../../ffi/codec.ts";
import { Roots } from "../../src/agent/roots.ts";
import { TransferProgress, type TransferSnapshot } from "../../src/obs/progress.ts";
import { StreamSource } from "../../src/transport/chunk_source.ts";
import type { PeerIdentity } from "../../src/transport/handshake.ts";
import { DataServer } from "../../src/transport/receiver.ts";
import { OutgoingTransfer, type PeerAddress, TransferError } from "../../src/transport/sender.ts";
import { SinkTable } from "../../src/transport/sink_table.ts";
import { type Duplex, PeerError, writeAll } from "../../src/transport/wire.ts";
import { type Fault, TcpProxy } from "../support/tcp_proxy.ts";
import { mulberry32, randInt } from "./prng.ts";

const KiB = 1024, MiB = 1024 * KiB;
const SECRET = "a-shared-secret-of-enough-length";
const senderId: PeerIdentity = { agentId: "alice", capabilities: { codecs: [...CODECS], rdma: false } };
const receiverId: PeerIdentity = { agentId: "bob", capabilities: { codecs: [...CODECS], rdma: false } };
const SINK = "vm-42-incoming";
const STREAMS = 4, WINDOW = 4, CHUNK_BYTES = 256 * KiB;
/** Generous: only a broken transfer waits this long for an ack, and the tests check the code it fails with. */
const STALL_MS = 10_000;
const TOTAL = 64 * MiB;

/** Deterministic pseudo-random bytes and their SHA-256; the last one made is kept for the next test. */
const datasets = new Map<number, { data: Uint8Array; sha: string }>();
function dataset(seed: number): { data: Uint8Array; sha: string } {
  let d = datasets.get(seed);
  if (!d) {
    datasets.clear();
    const rand = mulberry32(seed);
    const words = new Uint32Array(TOTAL / 4);
    for (let i = 0; i < words.length; i++) words[i] = Math.floor(rand() * 0x1_0000_0000);
    const data = new Uint8Array(words.buffer);
    d = { data, sha: createHash("sha256").update(data).digest("hex") };
    datasets.set(seed, d);
  }
  return d;
}

/** Two connected ends of a unix socket (small kernel buffers: what the producer is ahead is visible). */
async function socketPair(path: string): Promise<[Deno.UnixConn, Deno.UnixConn]> {
  const listener = Deno.listen({ transport: "unix", path });
  try {
    const [a, b] = await Promise.all([Deno.connect({ transport: "unix", path }), listener.accept()]);
    return [a, b];
  } finally {
    listener.close();
  }
}

function closeQuietly(c: { close(): void }): void {
  try {
    c.close();
  } catch { /* closed already */ }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Scenario {
  seed?: number;
  faults?: Record<number, Fault>;
  /** The consumer sleeps this long after each read of at most 64 KiB. */
  consumerPauseMs?: number;
  /** The consumer hangs up after reading this many bytes... */
  consumerQuitsAfter?: number;
  /** ...having stopped reading for this long first (the sender's windows fill up meanwhile). */
  consumerStopsBeforeQuitMs?: number;
  sink?: string;
  codec?: CodecName;
}

interface Outcome {
  sent: TransferSnapshot;
  received?: TransferSnapshot;
  expectedSha: string;
  produced: number;
  consumed: number;
  consumedSha: string;
  /** Largest produced − consumed seen after any producer write. */
  maxAhead: number;
  samples: number;
}

/** Bytes on the control and stream connections before the first frame: preamble, hello, auth, attach. */
function streamPreambleBytes(transferId: string): number {
  const msg = (o: object) => 4 + new TextEncoder().encode(JSON.stringify(o)).length;
  return 8 + msg({ type: "hello", ...senderId, nonce: "0".repeat(64) }) +
    msg({ type: "auth", proof: "0".repeat(64) }) + msg({ type: "attach", transferId, stream: 0 });
}

/** Runs one stream transfer through everything, returns what each party saw, and cleans up. */
async function streamTransfer(s: Scenario, transferId = crypto.randomUUID()): Promise<Outcome> {
  const { data, sha: expectedSha } = dataset(s.seed ?? 1);
  const dir = await Deno.makeTempDir();
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const sinks = new SinkTable();
  const incoming: TransferProgress[] = [];
  const server = new DataServer(listener, {
    secret: SECRET,
    identity: receiverId,
    roots: new Roots([dir]),
    windowChunks: WINDOW,
    fsync: false,
    sinks,
    exchanges: {},
    onIncoming: (p) => incoming.push(p),
    log: () => {},
  });
  const serving = server.serve();
  const proxy = s.faults ? TcpProxy.start(`127.0.0.1:${server.addr.port}`, s.faults) : undefined;
  const peer: PeerAddress = proxy
    ? { host: "127.0.0.1", port: Number(proxy.addr.split(":")[1]) }
    : { host: "127.0.0.1", port: server.addr.port };
  const conns: Duplex[] = [];
  try {
    const [sinkOutput, consumerEnd] = await socketPair(join(dir, "consumer.sock"));
    const [producerEnd, sourceInput] = await socketPair(join(dir, "producer.sock"));
    conns.push(sinkOutput, consumerEnd, producerEnd, sourceInput);
    const withdraw = sinks.register(SINK, sinkOutput);

    let produced = 0, consumed = 0, maxAhead = 0, samples = 0;
    const consumer = (async () => {
      const hash = createHash("sha256");
      const buf = new Uint8Array(64 * KiB);
      try {
        while (true) {
          const n = await consumerEnd.read(buf);
          if (n === null) break;
          hash.update(buf.subarray(0, n));
          consumed += n;
          if (s.consumerQuitsAfter !== undefined && consumed >= s.consumerQuitsAfter) {
            if (s.consumerStopsBeforeQuitMs) await sleep(s.consumerStopsBeforeQuitMs);
            break;
          }
          if (s.consumerPauseMs) await sleep(s.consumerPauseMs);
        }
      } finally {
        closeQuietly(consumerEnd);
      }
      return hash.digest("hex");
    })();
    const producer = (async () => {
      const rand = mulberry32((s.seed ?? 1) + 1000);
      try {
        while (produced < data.length) {
          // Mostly large writes, some tiny: a migration stream writes pages and small headers.
          const n = Math.min(
            data.length - produced,
            rand() < 0.2 ? randInt(rand, 1, 100) : randInt(rand, 1, 1 * MiB),
          );
          await writeAll(producerEnd, data.subarray(produced, produced + n));
          produced += n;
          maxAhead = Math.max(maxAhead, produced - consumed);
          samples++;
        }
      } finally {
        closeQuietly(producerEnd); // end of the migration stream
      }
    })();
    // Both end with an error when the test closes their sockets under them (a failed transfer).
    producer.catch(() => {});
    consumer.catch(() => {});

    const progress = new TransferProgress({
      id: transferId,
      direction: "send",
      source: "stream",
      peer: `${peer.host}:${peer.port}`,
      destination: "",
      sizeBytes: 0,
      codec: s.codec ?? "none",
      chunkBytes: CHUNK_BYTES,
      streams: STREAMS,
    });
    const source = new StreamSource(sourceInput, CHUNK_BYTES, STREAMS * WINDOW);
    let transfer: OutgoingTransfer;
    try {
      transfer = await OutgoingTransfer.open(
        {
          transferId,
          peer,
          target: { mode: "stream", sink: s.sink ?? SINK },
          streams: STREAMS,
          chunkBytes: CHUNK_BYTES,
          codec: s.codec ?? "none",
          maxRetries: 3,
          stallTimeoutMs: STALL_MS,
          secret: SECRET,
          identity: senderId,
        },
        source,
        progress,
      );
    } catch (err) {
      source.close();
      withdraw();
      throw err;
    }
    assert.equal(progress.info.destination, SINK, "the receiver names the sink it delivers into");
    assert.equal(sinks.take(SINK), undefined, "the transfer took the sink");
    await transfer.run();
    const sent = progress.snapshot();
    if (sent.state !== "completed") closeQuietly(sourceInput); // a failed transfer leaves the producer stuck
    const consumedSha = await consumer;
    await producer.catch(() => {});
    // The receiver ends its side on its own once the sender is gone (no time limit: a test has none).
    const receiving = incoming[0];
    while (receiving && !receiving.terminal) await sleep(5);
    return {
      sent,
      received: receiving?.snapshot(),
      expectedSha,
      produced,
      consumed,
      consumedSha,
      maxAhead,
      samples,
    };
  } finally {
    conns.forEach(closeQuietly);
    proxy?.close();
    await server.close();
    await serving;
    await Deno.remove(dir, { recursive: true });
  }
}

function assertDelivered(o: Outcome): void {
  assert.equal(o.sent.state, "completed", JSON.stringify(o.sent.error));
  assert.equal(o.produced, TOTAL);
  assert.equal(o.consumed, TOTAL, "the consumer got every byte");
  assert.equal(o.consumedSha, o.expectedSha, "the consumer got exactly the produced bytes, in order");
  assert.equal(o.sent.bytesDone, TOTAL, "sender's progress");
  assert.equal(o.sent.streams.reduce((n, x) => n + x.bytes, 0), TOTAL, "sender's streams add up");
  assert.ok(o.received, "the receiver registered the incoming transfer");
  assert.equal(o.received.state, "completed", JSON.stringify(o.received.error));
  assert.equal(o.received.destination, SINK);
  assert.equal(o.received.bytesDone, o.sent.bytesDone, "receiver's and sender's progress agree on bytes");
}

Deno.test("stream transfer: 64 MiB over 4 streams arrive in order, byte for byte", async () => {
  const o = await streamTransfer({});
  assertDelivered(o);
  assert.ok(o.sent.streams.every((x) => x.frames > 0), "every stream carried chunks");
  assert.equal(o.sent.retransmits, 0);
  assert.ok(o.sent.streams.every((x) => x.state === "open"));
});

Deno.test("stream transfer: a compressing codec changes nothing in what arrives", async () => {
  const o = await streamTransfer({ seed: 2, codec: "lz4" });
  assertDelivered(o);
  assert.ok(o.sent.wireBytes >= TOTAL, "random bytes travel raw");
});

Deno.test("stream transfer: a stream connection dropped mid-way; the others finish it", async () => {
  const o = await streamTransfer({ faults: { 2: { dropAfterBytes: 5 * MiB } } });
  assertDelivered(o);
  assert.deepEqual(
    o.sent.streams.map((x) => x.state).filter((x) => x === "lost"),
    ["lost"],
    "one stream lost",
  );
});

Deno.test("stream transfer: a stream dropped while its chunks wait in the reorder buffer", async () => {
  // A slow consumer keeps chunks waiting for their turn, unacknowledged, when the stream dies: they are
  // delivered later, their acks go nowhere, the sender resends them and the receiver acks them again.
  const o = await streamTransfer({ seed: 6, consumerPauseMs: 1, faults: { 3: { dropAfterBytes: 7 * MiB } } });
  assertDelivered(o);
  assert.equal(o.sent.streams.filter((x) => x.state === "lost").length, 1);
});

Deno.test("stream transfer: a corrupted byte is caught and the chunk sent again", async () => {
  const transferId = crypto.randomUUID();
  // The second payload byte of the first frame on the stream connection: never a header byte.
  const at = streamPreambleBytes(transferId) + 48 + 1;
  // Seed 5's producer starts with large writes, so the first chunks are longer than two bytes.
  const o = await streamTransfer({ seed: 5, faults: { 3: { corruptByteAt: at } } }, transferId);
  assertDelivered(o);
  assert.ok(o.sent.retransmits >= 1, `sender saw ${o.sent.retransmits} retransmits`);
  assert.ok((o.received?.retransmits ?? 0) >= 1, "the receiver asked for it again");
  assert.ok(o.sent.streams.every((x) => x.state === "open"), "a bad chunk does not cost the stream");
});

Deno.test("stream transfer: a slow consumer slows the producer (backpressure end to end)", async () => {
  const o = await streamTransfer({ seed: 3, consumerPauseMs: 2 });
  assertDelivered(o);
  // Ahead of the consumer: chunks the sender holds until acknowledged, plus what the two unix sockets
  // buffer (a few hundred KiB each here) and one producer write in flight. Without backpressure the
  // producer would be tens of MiB ahead.
  const bound = STREAMS * WINDOW * CHUNK_BYTES + 1 * MiB + 4 * MiB;
  assert.ok(o.samples > 100, `${o.samples} samples`);
  assert.ok(
    o.maxAhead <= bound,
    `the producer got ${o.maxAhead} bytes ahead of the consumer; bound ${bound}`,
  );
});

function assertSinkFailed(o: Outcome): void {
  assert.equal(o.sent.state, "failed");
  assert.ok(o.sent.error, "the failure has a code");
  assert.ok(o.sent.bytesDone < TOTAL);
  assert.ok(o.consumed < TOTAL);
  assert.notEqual(
    o.sent.error.code,
    "peer_stalled",
    `the sender only noticed by its watchdog: ${o.sent.error.message}`,
  );
  assert.equal(o.received?.state, "failed", "the receiver dropped the transfer too");
  assert.equal(o.sent.error.code, "sink_failed", o.sent.error.message);
}

Deno.test("stream transfer: a consumer that quits while reading fails the transfer with sink_failed", async () => {
  assertSinkFailed(await streamTransfer({ seed: 4, consumerQuitsAfter: 8 * MiB }));
});

Deno.test("stream transfer: a consumer that stops reading, then quits, fails the transfer with sink_failed", async () => {
  // While it does not read, every window fills and nothing more is sent: then it hangs up.
  assertSinkFailed(
    await streamTransfer({ seed: 5, consumerQuitsAfter: 8 * MiB, consumerStopsBeforeQuitMs: 300 }),
  );
});

Deno.test("stream transfer: an unknown sink name is refused at open with unknown_sink", async () => {
  await assert.rejects(streamTransfer({ sink: "nobody-registered-this" }), (err) => {
    assert.ok(err instanceof PeerError || err instanceof TransferError, String(err));
    assert.equal(err.code, "unknown_sink", err.message);
    assert.match(err.message, /nobody-registered-this/);
    return true;
  });
});
