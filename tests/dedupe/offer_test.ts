/**
 * The dedupe exchange's state machines, as transcripts: each test plays both sides by hand and checks the
 * messages (chunks named by letter) and what the receiver delivers. Then hostile input, one case at a time.
 */
import assert from "node:assert/strict";
import { fingerprint, hashHex } from "../../src/dedupe/fingerprint.ts";
import {
  decodeMessage,
  type DedupeLimits,
  DedupeProtocolError,
  describeMessage,
  encodeChunks,
  encodeEnd,
  encodeOffer,
  encodeWant,
} from "../../src/dedupe/messages.ts";
import { type DeliverStep, type LookupStep, OfferReceiver, OfferSender } from "../../src/dedupe/offer.ts";
import { randomBytes, xorshift } from "./support.ts";

const LIMITS: DedupeLimits = {
  maxChunkBytes: 64,
  maxChunksPerOffer: 4,
  maxOfferBytes: 200,
  maxOffersInFlight: 2,
};

/** Chunk "A" is 10 bytes of 'A', "B" 20 of 'B', and so on: lengths differ, so transcripts show them. */
const CHUNK: Record<string, Uint8Array> = Object.fromEntries(
  ["A", "B", "C", "D", "E"].map((l, i) => [l, new TextEncoder().encode(l.repeat(10 * (i + 1)))]),
);
const NAME = new Map(Object.entries(CHUNK).map(([l, c]) => [hashHex(fingerprint(c)), l]));
const nameOf = (hash: Uint8Array) => NAME.get(hashHex(hash)) ?? hashHex(hash).slice(0, 8);
const text = (pieces: Uint8Array[]) => pieces.map((p) => new TextDecoder().decode(p)).join("|");

/** Records every message as a line; passes it on unchanged. */
class Transcript {
  lines: string[] = [];
  s(msg: Uint8Array | undefined): Uint8Array {
    assert.ok(msg, "the sender produced no message");
    this.lines.push(`S→R ${describeMessage(decodeMessage(msg, LIMITS), nameOf)}`);
    return msg;
  }
  r(msg: Uint8Array): Uint8Array {
    this.lines.push(`R→S ${describeMessage(decodeMessage(msg, LIMITS), nameOf)}`);
    return msg;
  }
}

function lookup(r: OfferReceiver, msg: Uint8Array): LookupStep {
  const step = r.receive(msg);
  assert.equal(step.kind, "lookup");
  return step as LookupStep;
}

function deliver(r: OfferReceiver, msg: Uint8Array): DeliverStep {
  const step = r.receive(msg);
  assert.equal(step.kind, "deliver");
  return step as DeliverStep;
}

/** A store as the receiver sees it in a lookup: the letters it holds. */
const holding = (letters: string, step: LookupStep) =>
  step.lookups.map((e) => letters.includes(nameOf(e.hash)) ? CHUNK[nameOf(e.hash)] : undefined);

Deno.test("empty store: each distinct chunk travels once, and the stream comes out whole and in order", () => {
  const t = new Transcript();
  const s = new OfferSender(LIMITS);
  const r = new OfferReceiver(LIMITS);
  for (const l of "ABAC") assert.equal(s.add(CHUNK[l]), undefined);
  const offer0 = t.s(s.add(CHUNK.D)); // a fifth chunk does not fit: the batch of four goes
  const step0 = lookup(r, offer0);
  assert.deepEqual(step0.lookups.map((e) => nameOf(e.hash)), ["A", "B", "C"], "A is looked up once");
  const chunks0 = t.s(s.receive(t.r(r.answer(0, holding("", step0)))));
  const got0 = deliver(r, chunks0);
  assert.equal(
    text(got0.pieces),
    "AAAAAAAAAA|BBBBBBBBBBBBBBBBBBBB|AAAAAAAAAA|CCCCCCCCCCCCCCCCCCCCCCCCCCCCCC",
  );
  assert.deepEqual(got0.fresh.map((f) => nameOf(f.hash)), ["A", "B", "C"]);

  const step1 = lookup(r, t.s(s.flush()));
  const got1 = deliver(r, t.s(s.receive(t.r(r.answer(1, holding("", step1))))));
  assert.equal(got1.offsetBytes, 70);
  assert.equal(text(got1.pieces), "D".repeat(40));
  assert.ok(s.idle);
  assert.deepEqual(r.receive(t.s(s.end())), { kind: "end", offers: 2, streamBytes: 110 });

  assert.deepEqual(t.lines, [
    "S→R OFFER #0 @0 [A:10 B:20 A:10 C:30]",
    "R→S WANT #0 @0 1101",
    "S→R CHUNKS #0 @0 3 chunks, 60 bytes",
    "S→R OFFER #1 @70 [D:40]",
    "R→S WANT #1 @70 1",
    "S→R CHUNKS #1 @70 1 chunks, 40 bytes",
    "S→R END after 2 offers, 110 bytes",
  ]);
  assert.deepEqual(r.stats(), {
    offers: 2,
    chunks: 5,
    bytes: 110,
    heldChunks: 0,
    heldBytes: 0,
    repeatChunks: 1,
    repeatBytes: 10,
    wantedChunks: 4,
    wantedBytes: 100,
  });
});

Deno.test("a store holding B and C: only A and D travel, the held chunks are spliced in place", () => {
  const t = new Transcript();
  const s = new OfferSender(LIMITS);
  const r = new OfferReceiver(LIMITS);
  for (const l of "BACD") s.add(CHUNK[l]);
  const step = lookup(r, t.s(s.flush()));
  const got = deliver(r, t.s(s.receive(t.r(r.answer(0, holding("BC", step))))));
  assert.equal(text(got.pieces), ["B".repeat(20), "A".repeat(10), "C".repeat(30), "D".repeat(40)].join("|"));
  assert.deepEqual(got.fresh.map((f) => nameOf(f.hash)), ["A", "D"]);
  assert.deepEqual(t.lines, [
    "S→R OFFER #0 @0 [B:20 A:10 C:30 D:40]",
    "R→S WANT #0 @0 0101",
    "S→R CHUNKS #0 @0 2 chunks, 50 bytes",
  ]);
  assert.equal(s.stats().bytesSent, 50);
});

Deno.test("pipelined: two offers in flight; a chunk repeated in the second is asked once, in the first", () => {
  const t = new Transcript();
  const s = new OfferSender(LIMITS);
  const r = new OfferReceiver(LIMITS);
  for (const l of "AB") s.add(CHUNK[l]);
  const offer0 = t.s(s.flush());
  for (const l of "CA") s.add(CHUNK[l]);
  const offer1 = t.s(s.flush());
  assert.ok(s.windowFull);
  assert.throws(() => s.add(CHUNK.E), /2 offers await an answer \(maxOffersInFlight\); wait for a WANT/);

  // The receiver sees both offers before either is answered: A is looked up for the first only.
  const step0 = lookup(r, offer0);
  const step1 = lookup(r, offer1);
  assert.deepEqual(step1.lookups.map((e) => nameOf(e.hash)), ["C", "A"]);
  const want0 = t.r(r.answer(0, holding("", step0)));
  const want1 = t.r(r.answer(1, holding("", step1)));
  const chunks0 = t.s(s.receive(want0));
  const chunks1 = t.s(s.receive(want1));
  assert.equal(text(deliver(r, chunks0).pieces), "AAAAAAAAAA|BBBBBBBBBBBBBBBBBBBB");
  assert.equal(text(deliver(r, chunks1).pieces), "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCC|AAAAAAAAAA");
  assert.deepEqual(t.lines, [
    "S→R OFFER #0 @0 [A:10 B:20]",
    "S→R OFFER #1 @30 [C:30 A:10]",
    "R→S WANT #0 @0 11",
    "R→S WANT #1 @30 10",
    "S→R CHUNKS #0 @0 2 chunks, 30 bytes",
    "S→R CHUNKS #1 @30 1 chunks, 30 bytes",
  ]);
});

Deno.test("a chunk on its way when an offer arrives but delivered before it is answered is asked again", () => {
  const s = new OfferSender(LIMITS);
  const r = new OfferReceiver(LIMITS);
  s.add(CHUNK.A);
  const step0 = lookup(r, s.flush()!);
  const want0 = r.answer(0, holding("", step0));
  s.add(CHUNK.A);
  const step1 = lookup(r, s.flush()!);
  assert.deepEqual(step1.lookups, [], "A is on its way");
  deliver(r, s.receive(want0)); // A arrives and is handed over; the caller may not have stored it yet
  const want1 = r.answer(1, []);
  assert.equal(describeMessage(decodeMessage(want1, LIMITS), nameOf), "WANT #1 @10 1");
  assert.equal(text(deliver(r, s.receive(want1)).pieces), "AAAAAAAAAA");
});

/** A receiver that has been through the first offer of [A B] with nothing held, awaiting CHUNKS #0. */
function receiverAwaitingChunks(): { r: OfferReceiver; s: OfferSender; want: Uint8Array } {
  const s = new OfferSender(LIMITS);
  const r = new OfferReceiver(LIMITS);
  s.add(CHUNK.A);
  s.add(CHUNK.B);
  const step = lookup(r, s.flush()!);
  return { r, s, want: r.answer(0, holding("", step)) };
}

function rejects(fn: () => unknown, text: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof DedupeProtocolError, `${err}`);
    assert.equal(err.code, "dedupe_protocol");
    assert.match(err.message, text);
    return true;
  });
}

const entry = (l: string) => ({ hash: fingerprint(CHUNK[l]), lengthBytes: CHUNK[l].length });

Deno.test("hostile sender: the receiver refuses out-of-order, overlapping, oversized and forged messages", () => {
  const fresh = () => new OfferReceiver(LIMITS);
  rejects(() => fresh().receive(encodeOffer(1, 0, [entry("A")])), /OFFER #1, expected #0/);
  rejects(
    () => fresh().receive(encodeOffer(0, 5, [entry("A")])),
    /OFFER #0 starts at 5, the previous offers end at 0/,
  );
  rejects(
    () => fresh().receive(encodeOffer(0, 0, [entry("A"), { hash: entry("A").hash, lengthBytes: 11 }])),
    /chunk 1 names [0-9a-f]{64} with 11 bytes, before with 10/,
  );
  {
    const r = fresh();
    r.receive(encodeOffer(0, 0, [entry("A")]));
    r.receive(encodeOffer(1, 10, [entry("B")]));
    rejects(() => r.receive(encodeOffer(2, 30, [entry("C")])), /OFFER #2 exceeds maxOffersInFlight 2/);
  }
  {
    const r = fresh();
    r.receive(encodeOffer(0, 0, [entry("A")]));
    rejects(() => r.receive(encodeChunks(0, 0, [CHUNK.A])), /CHUNKS #0 before the WANT that asks for them/);
  }
  rejects(
    () => receiverAwaitingChunks().r.receive(encodeChunks(1, 0, [CHUNK.A, CHUNK.B])),
    /CHUNKS #1 at 0; expected #0 at 0/,
  );
  rejects(
    () => receiverAwaitingChunks().r.receive(encodeChunks(0, 0, [CHUNK.A])),
    /CHUNKS #0 carries 1 chunks in 10 bytes; the WANT asked for 2 in 30/,
  );
  {
    const forged = CHUNK.B.slice();
    forged[3] = 0x21;
    rejects(
      () => receiverAwaitingChunks().r.receive(encodeChunks(0, 0, [CHUNK.A, forged])),
      new RegExp(`CHUNKS #0 chunk 1 hashes to [0-9a-f]{64}, offered as ${hashHex(fingerprint(CHUNK.B))}`),
    );
  }
  rejects(() => receiverAwaitingChunks().r.receive(encodeEnd(1, 30)), /END with 1 offers undelivered/);
  {
    const { r, s, want } = receiverAwaitingChunks();
    r.receive(s.receive(want));
    rejects(
      () => r.receive(encodeEnd(1, 31)),
      /END says 1 offers and 31 bytes; 1 offers and 30 bytes arrived/,
    );
    r.receive(encodeEnd(1, 30));
    rejects(() => r.receive(encodeEnd(1, 30)), /message after END/);
  }
  rejects(
    () => fresh().receive(encodeWant(0, 0, 1, new Uint8Array([1]))),
    /got WANT, a message only the receiver sends/,
  );
  {
    // The offer says A is 10 bytes; the store's chunk of A's hash has 10. An offer claiming 12 is a lie.
    const r = fresh();
    const step = lookup(r, encodeOffer(0, 0, [{ hash: entry("A").hash, lengthBytes: 12 }]));
    rejects(
      () => r.answer(step.offerId, [CHUNK.A]),
      /names [0-9a-f]{64} with 12 bytes; the chunk of that hash has 10/,
    );
  }
});

Deno.test("hostile receiver: the sender refuses WANTs for other offers, other counts, or before any offer", () => {
  const sender = () => {
    const s = new OfferSender(LIMITS);
    s.add(CHUNK.A);
    s.add(CHUNK.B);
    s.flush();
    s.add(CHUNK.C);
    s.flush();
    return s;
  };
  rejects(
    () => new OfferSender(LIMITS).receive(encodeWant(0, 0, 1, new Uint8Array([1]))),
    /WANT #0 but no offer awaits an answer/,
  );
  rejects(
    () => sender().receive(encodeWant(1, 30, 1, new Uint8Array([1]))),
    /WANT #1 out of order; offer #0 is the oldest unanswered/,
  );
  rejects(
    () => sender().receive(encodeWant(0, 0, 3, new Uint8Array([7]))),
    /WANT #0 is for 3 chunks at 0; the offer had 2 at 0/,
  );
  rejects(
    () => sender().receive(encodeWant(0, 0, 2, new Uint8Array([4]))),
    /want bitmap sets bits past chunk 2/,
  );
  rejects(() => sender().receive(encodeOffer(0, 0, [entry("A")])), /got OFFER, expected WANT/);
  assert.throws(() => sender().end(), /end\(\) with 0 chunks unflushed and 2 offers unanswered/);
  assert.throws(
    () => new OfferSender(LIMITS).add(new Uint8Array(65)),
    /chunk of 65 bytes, limits allow 1\.\.64/,
  );
});

Deno.test("mangled sender messages end in a protocol error or in the exact stream, never anything else", () => {
  const next = xorshift(99);
  let completed = 0;
  let refused = 0;
  for (let run = 0; run < 300; run++) {
    const data = randomBytes(2000 + (next() % 3000), run + 1);
    const s = new OfferSender(LIMITS);
    const r = new OfferReceiver(LIMITS);
    const out: number[] = [];
    let ended = false;
    // In odd runs, one message in 50 the sender makes is bit-flipped, truncated, repeated or dropped.
    const mangle = (msg: Uint8Array): Uint8Array[] => {
      const roll = run % 2 === 0 ? -1 : next() % 200;
      if (roll === 0) {
        const copy = msg.slice();
        copy[next() % copy.length] ^= 1 << (next() % 8);
        return [copy];
      }
      if (roll === 1) return [msg.subarray(0, next() % msg.length)];
      if (roll === 2) return [msg, msg];
      if (roll === 3) return [];
      return [msg];
    };
    const toReceiver: Uint8Array[] = [];
    const pump = () => {
      while (toReceiver.length > 0) {
        const step = r.receive(toReceiver.shift()!);
        if (step.kind === "lookup") {
          const want = r.answer(step.offerId, step.lookups.map(() => undefined));
          toReceiver.push(...mangle(s.receive(want)));
        } else if (step.kind === "deliver") {
          for (const p of step.pieces) out.push(...p);
        } else {
          ended = true;
        }
      }
    };
    try {
      for (let off = 0; off < data.length;) {
        const n = Math.min(data.length - off, 1 + (next() % LIMITS.maxChunkBytes));
        while (s.windowFull) {
          const before = s.inFlight;
          pump();
          if (s.inFlight === before) throw new DedupeProtocolError("stalled: a message was dropped");
        }
        const offer = s.add(data.subarray(off, off + n));
        if (offer) toReceiver.push(...mangle(offer));
        off += n;
      }
      pump();
      const last = s.flush();
      if (last) toReceiver.push(...mangle(last));
      pump();
      if (!s.idle) throw new DedupeProtocolError("stalled: a message was dropped");
      toReceiver.push(...mangle(s.end()));
      pump();
    } catch (err) {
      assert.ok(err instanceof DedupeProtocolError, `run ${run}: ${err}`);
      refused++;
      continue;
    }
    if (ended) {
      assert.deepEqual(new Uint8Array(out), data, `run ${run} ended with other bytes`);
      completed++;
    }
  }
  assert.ok(completed > 30 && refused > 30, `${completed} completed, ${refused} refused`);
});
