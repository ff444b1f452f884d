/**
 * The dedupe exchange as two pure state machines (HDE): messages in, messages and actions out, no IO.
 * exchange.ts drives them over a message channel with a real ChunkStore.
 *
 * Sender:
 *   const s = new OfferSender(limits);
 *   each chunk in stream order, while !s.windowFull:  send(s.add(chunk))    (an OFFER, or nothing yet)
 *   when the source pauses or ends:                   send(s.flush())
 *   each message from the receiver (a WANT):          send(s.receive(msg))  (the CHUNKS it asks for)
 *   once s.idle at the end:                           send(s.end())
 *
 * Receiver:
 *   const r = new OfferReceiver(limits);
 *   const step = r.receive(msg);
 *   "lookup"  (an OFFER):  read step.lookups from the store (verified, or undefined),
 *                          then send(r.answer(step.offerId, held))
 *   "deliver" (a CHUNKS):  write step.pieces to the sink in order, put step.fresh into the store
 *   "end":                 the stream is complete (every offer delivered, its length checked)
 *
 * Both sides must see the sender's messages in the order sent (one ordered channel each way). The receiver
 * reads the chunks it holds when it answers, so eviction cannot take them away before delivery; a chunk
 * offered twice while the first copy is still on its way is asked for once. What each side holds is
 * bounded by maxOffersInFlight × maxOfferBytes.
 */
import { fingerprint, hashHex, sameHash } from "./fingerprint.ts";
import {
  bitmapBytes,
  decodeMessage,
  type DedupeLimits,
  DedupeProtocolError,
  DEFAULT_DEDUPE_LIMITS,
  encodeChunks,
  encodeEnd,
  encodeOffer,
  encodeWant,
  HEADER_BYTES,
  isWanted,
  type OfferEntry,
  validateDedupeLimits,
} from "./messages.ts";

const MAX_OFFER_ID = 2 ** 32 - 1;

export interface SenderStats {
  offers: number;
  chunksOffered: number;
  bytesOffered: number;
  chunksSent: number;
  bytesSent: number;
  /** Every message byte the sender produced: OFFER, CHUNKS and END, headers included. */
  wireBytes: number;
}

interface SentOffer {
  offerId: number;
  offsetBytes: number;
  chunks: Uint8Array[];
}

export class OfferSender {
  readonly limits: DedupeLimits;
  #batch: Uint8Array[] = [];
  #batchEntries: OfferEntry[] = [];
  #batchBytes = 0;
  #nextOfferId = 0;
  #offsetBytes = 0;
  readonly #inFlight: SentOffer[] = [];
  #ended = false;
  readonly #stats: SenderStats = {
    offers: 0,
    chunksOffered: 0,
    bytesOffered: 0,
    chunksSent: 0,
    bytesSent: 0,
    wireBytes: 0,
  };

  constructor(limits: DedupeLimits = DEFAULT_DEDUPE_LIMITS) {
    this.limits = validateDedupeLimits(limits);
  }

  /** No chunk may be added until a WANT answers the oldest offer. */
  get windowFull(): boolean {
    return this.#inFlight.length >= this.limits.maxOffersInFlight;
  }

  /** Nothing batched and nothing awaiting an answer. */
  get idle(): boolean {
    return this.#batch.length === 0 && this.#inFlight.length === 0;
  }

  get inFlight(): number {
    return this.#inFlight.length;
  }

  stats(): SenderStats {
    return { ...this.#stats };
  }

  /**
   * Adds the stream's next chunk (kept, not copied, until its offer is answered). Returns an OFFER when
   * the chunk does not fit the open batch, which it then closes. Throws when the window is full.
   */
  add(chunk: Uint8Array, hash: Uint8Array = fingerprint(chunk)): Uint8Array | undefined {
    if (this.#ended) throw new Error("dedupe sender: add after end()");
    if (chunk.length < 1 || chunk.length > this.limits.maxChunkBytes) {
      throw new RangeError(
        `dedupe sender: chunk of ${chunk.length} bytes, limits allow 1..${this.limits.maxChunkBytes}`,
      );
    }
    if (this.windowFull) {
      throw new Error(
        `dedupe sender: ${this.#inFlight.length} offers await an answer (maxOffersInFlight); wait for a WANT`,
      );
    }
    const full = this.#batch.length === this.limits.maxChunksPerOffer ||
      this.#batchBytes + chunk.length > this.limits.maxOfferBytes;
    const offer = full ? this.#close() : undefined;
    this.#batch.push(chunk);
    this.#batchEntries.push({ hash, lengthBytes: chunk.length });
    this.#batchBytes += chunk.length;
    return offer;
  }

  /** Closes the open batch, if any, and returns its OFFER. Throws when the window is full. */
  flush(): Uint8Array | undefined {
    if (this.#batch.length === 0) return undefined;
    if (this.windowFull) {
      throw new Error(
        `dedupe sender: flush with ${this.#inFlight.length} offers unanswered; wait for a WANT`,
      );
    }
    return this.#close();
  }

  /** Handles a WANT from the receiver and returns the CHUNKS it asks for (possibly none). */
  receive(bytes: Uint8Array): Uint8Array {
    const msg = decodeMessage(bytes, this.limits);
    if (msg.type !== "want") {
      throw new DedupeProtocolError(`dedupe sender: got ${msg.type.toUpperCase()}, expected WANT`);
    }
    const oldest = this.#inFlight[0];
    if (!oldest) {
      throw new DedupeProtocolError(`dedupe sender: WANT #${msg.offerId} but no offer awaits an answer`);
    }
    if (msg.offerId !== oldest.offerId) {
      throw new DedupeProtocolError(
        `dedupe sender: WANT #${msg.offerId} out of order; offer #${oldest.offerId} is the oldest unanswered`,
      );
    }
    if (msg.count !== oldest.chunks.length || msg.offsetBytes !== oldest.offsetBytes) {
      throw new DedupeProtocolError(
        `dedupe sender: WANT #${msg.offerId} is for ${msg.count} chunks at ${msg.offsetBytes}; ` +
          `the offer had ${oldest.chunks.length} at ${oldest.offsetBytes}`,
      );
    }
    this.#inFlight.shift();
    const wanted = oldest.chunks.filter((_, i) => isWanted(msg.wanted, i));
    const out = encodeChunks(oldest.offerId, oldest.offsetBytes, wanted);
    this.#stats.chunksSent += wanted.length;
    this.#stats.bytesSent += out.length - HEADER_BYTES;
    this.#stats.wireBytes += out.length;
    return out;
  }

  /** The END message, once every offer is answered. */
  end(): Uint8Array {
    if (!this.idle) {
      throw new Error(
        `dedupe sender: end() with ${this.#batch.length} chunks unflushed and ${this.#inFlight.length} offers unanswered`,
      );
    }
    this.#ended = true;
    const out = encodeEnd(this.#nextOfferId, this.#offsetBytes);
    this.#stats.wireBytes += out.length;
    return out;
  }

  #close(): Uint8Array {
    if (this.#nextOfferId > MAX_OFFER_ID) {
      throw new Error(`dedupe sender: ${MAX_OFFER_ID} offers is the most one stream may make`);
    }
    const offer: SentOffer = {
      offerId: this.#nextOfferId++,
      offsetBytes: this.#offsetBytes,
      chunks: this.#batch,
    };
    const out = encodeOffer(offer.offerId, offer.offsetBytes, this.#batchEntries);
    this.#inFlight.push(offer);
    this.#offsetBytes += this.#batchBytes;
    this.#stats.offers++;
    this.#stats.chunksOffered += this.#batch.length;
    this.#stats.bytesOffered += this.#batchBytes;
    this.#stats.wireBytes += out.length;
    this.#batch = [];
    this.#batchEntries = [];
    this.#batchBytes = 0;
    return out;
  }
}

export interface ReceiverStats {
  offers: number;
  chunks: number;
  /** Stream bytes delivered. */
  bytes: number;
  /** Chunks (and bytes) found in the store. */
  heldChunks: number;
  heldBytes: number;
  /** Chunks repeated within the offers in flight, asked for once. */
  repeatChunks: number;
  repeatBytes: number;
  /** Chunks (and bytes) asked of the sender. */
  wantedChunks: number;
  wantedBytes: number;
}

/**
 * An OFFER: the caller reads each of lookups from the store, then calls answer(). lookups are the offer's
 * distinct chunks, less those already on their way for an earlier offer.
 */
export interface LookupStep {
  kind: "lookup";
  offerId: number;
  lookups: OfferEntry[];
}

/** A CHUNKS that completes an offer: pieces are the stream's bytes from offsetBytes, in order. */
export interface DeliverStep {
  kind: "deliver";
  offerId: number;
  offsetBytes: number;
  pieces: Uint8Array[];
  /** Chunks that came over the wire (hash checked here): worth putting into the store. */
  fresh: { hash: Uint8Array; bytes: Uint8Array }[];
}

export interface EndStep {
  kind: "end";
  offers: number;
  streamBytes: number;
}

export type ReceiverStep = LookupStep | DeliverStep | EndStep;

interface PendingOffer {
  offerId: number;
  offsetBytes: number;
  entries: OfferEntry[];
  hex: string[];
  answered: boolean;
  /** What the caller was asked to look up, as the LookupStep said. */
  lookups: OfferEntry[];
  /** Bytes found in the store, per entry. */
  held: (Uint8Array | undefined)[];
  /** Entries asked of the sender. */
  wanted: number[];
}

/** A chunk asked for once and used by entries of the offers in flight. */
interface Expected {
  lengthBytes: number;
  bytes?: Uint8Array;
  /** Entries (the one that asked included) still to be delivered. */
  uses: number;
}

export class OfferReceiver {
  readonly limits: DedupeLimits;
  readonly #pending: PendingOffer[] = [];
  readonly #expected = new Map<string, Expected>();
  #nextOfferId = 0;
  #offeredBytes = 0;
  #deliveredBytes = 0;
  #ended = false;
  readonly #stats: ReceiverStats = {
    offers: 0,
    chunks: 0,
    bytes: 0,
    heldChunks: 0,
    heldBytes: 0,
    repeatChunks: 0,
    repeatBytes: 0,
    wantedChunks: 0,
    wantedBytes: 0,
  };

  constructor(limits: DedupeLimits = DEFAULT_DEDUPE_LIMITS) {
    this.limits = validateDedupeLimits(limits);
  }

  stats(): ReceiverStats {
    return { ...this.#stats };
  }

  /** Handles one message from the sender. Throws DedupeProtocolError on anything out of place. */
  receive(bytes: Uint8Array): ReceiverStep {
    function fail(what: string): never {
      throw new DedupeProtocolError(`dedupe receiver: ${what}`);
    }
    if (this.#ended) fail("message after END");
    const msg = decodeMessage(bytes, this.limits);
    switch (msg.type) {
      case "offer": {
        if (msg.offerId !== this.#nextOfferId) fail(`OFFER #${msg.offerId}, expected #${this.#nextOfferId}`);
        if (msg.offsetBytes !== this.#offeredBytes) {
          fail(
            `OFFER #${msg.offerId} starts at ${msg.offsetBytes}, the previous offers end at ${this.#offeredBytes}`,
          );
        }
        if (this.#pending.length >= this.limits.maxOffersInFlight) {
          fail(`OFFER #${msg.offerId} exceeds maxOffersInFlight ${this.limits.maxOffersInFlight}`);
        }
        const hex = msg.entries.map((e) => hashHex(e.hash));
        // One hash, one length: otherwise a repeat would splice bytes of another length into the stream.
        const lengths = new Map<string, number>();
        const lookups: OfferEntry[] = [];
        msg.entries.forEach((e, i) => {
          const inFlight = this.#expected.get(hex[i])?.lengthBytes;
          const known = lengths.get(hex[i]) ?? inFlight;
          if (known !== undefined && known !== e.lengthBytes) {
            fail(
              `OFFER #${msg.offerId} chunk ${i} names ${
                hex[i]
              } with ${e.lengthBytes} bytes, before with ${known}`,
            );
          }
          if (known === undefined) lookups.push(e);
          lengths.set(hex[i], e.lengthBytes);
        });
        this.#nextOfferId++;
        this.#offeredBytes += msg.entries.reduce((n, e) => n + e.lengthBytes, 0);
        this.#pending.push({
          offerId: msg.offerId,
          offsetBytes: msg.offsetBytes,
          entries: msg.entries,
          hex,
          answered: false,
          lookups,
          held: [],
          wanted: [],
        });
        return { kind: "lookup", offerId: msg.offerId, lookups };
      }
      case "chunks": {
        const offer = this.#pending[0];
        if (!offer || !offer.answered) {
          fail(`CHUNKS #${msg.offerId} before the WANT that asks for them`);
        }
        if (msg.offerId !== offer.offerId || msg.offsetBytes !== offer.offsetBytes) {
          fail(
            `CHUNKS #${msg.offerId} at ${msg.offsetBytes}; expected #${offer.offerId} at ${offer.offsetBytes}`,
          );
        }
        const need = offer.wanted.reduce((n, i) => n + offer.entries[i].lengthBytes, 0);
        if (msg.count !== offer.wanted.length || msg.body.length !== need) {
          fail(
            `CHUNKS #${msg.offerId} carries ${msg.count} chunks in ${msg.body.length} bytes; ` +
              `the WANT asked for ${offer.wanted.length} in ${need}`,
          );
        }
        return this.#deliver(offer, msg.body);
      }
      case "end": {
        if (this.#pending.length > 0) fail(`END with ${this.#pending.length} offers undelivered`);
        if (msg.offerId !== this.#nextOfferId || msg.offsetBytes !== this.#deliveredBytes) {
          fail(
            `END says ${msg.offerId} offers and ${msg.offsetBytes} bytes; ` +
              `${this.#nextOfferId} offers and ${this.#deliveredBytes} bytes arrived`,
          );
        }
        this.#ended = true;
        return { kind: "end", offers: msg.offerId, streamBytes: msg.offsetBytes };
      }
      default:
        return fail(`got ${msg.type.toUpperCase()}, a message only the receiver sends`);
    }
  }

  /**
   * Answers the oldest unanswered offer with what the store holds: held[i] is the bytes of its LookupStep's
   * lookups[i] as read (and verified) from the store, or undefined. Returns the WANT to send.
   */
  answer(offerId: number, held: readonly (Uint8Array | undefined)[]): Uint8Array {
    const offer = this.#pending.find((p) => !p.answered);
    if (!offer || offer.offerId !== offerId) {
      throw new Error(
        `dedupe receiver: answer for offer #${offerId}; the oldest unanswered is #${offer?.offerId}`,
      );
    }
    if (held.length !== offer.lookups.length) {
      throw new Error(
        `dedupe receiver: ${held.length} lookups for offer #${offerId}, which asked for ${offer.lookups.length}`,
      );
    }
    const found = new Map<string, Uint8Array>();
    offer.lookups.forEach((e, j) => {
      const bytes = held[j];
      if (!bytes) return;
      if (bytes.length !== e.lengthBytes) {
        // The store's bytes hash to this name, so the offer lied about the length.
        throw new DedupeProtocolError(
          `dedupe receiver: OFFER #${offerId} names ${hashHex(e.hash)} with ${e.lengthBytes} bytes; ` +
            `the chunk of that hash has ${bytes.length}`,
        );
      }
      found.set(hashHex(e.hash), bytes);
    });
    const wanted = new Uint8Array(bitmapBytes(offer.entries.length));
    offer.entries.forEach((e, i) => {
      const hex = offer.hex[i];
      const bytes = found.get(hex);
      const expected = this.#expected.get(hex);
      if (bytes) {
        offer.held[i] = bytes;
        this.#stats.heldChunks++;
        this.#stats.heldBytes += e.lengthBytes;
      } else if (expected) {
        expected.uses++;
        this.#stats.repeatChunks++;
        this.#stats.repeatBytes += e.lengthBytes;
      } else {
        this.#expected.set(hex, { lengthBytes: e.lengthBytes, uses: 1 });
        offer.wanted.push(i);
        wanted[i >> 3] |= 1 << (i & 7);
        this.#stats.wantedChunks++;
        this.#stats.wantedBytes += e.lengthBytes;
      }
    });
    offer.answered = true;
    return encodeWant(offerId, offer.offsetBytes, offer.entries.length, wanted);
  }

  #deliver(offer: PendingOffer, body: Uint8Array): DeliverStep {
    const fresh: DeliverStep["fresh"] = [];
    let at = 0;
    for (const i of offer.wanted) {
      const entry = offer.entries[i];
      const bytes = body.subarray(at, at + entry.lengthBytes);
      at += entry.lengthBytes;
      const hash = fingerprint(bytes);
      if (!sameHash(hash, entry.hash)) {
        throw new DedupeProtocolError(
          `dedupe receiver: CHUNKS #${offer.offerId} chunk ${i} hashes to ${hashHex(hash)}, offered as ${
            offer.hex[i]
          }`,
        );
      }
      this.#expected.get(offer.hex[i])!.bytes = bytes;
      fresh.push({ hash, bytes });
    }
    const pieces = offer.entries.map((_, i) => {
      const held = offer.held[i];
      if (held) return held;
      const hex = offer.hex[i];
      // Asked for by this offer or an earlier one, all of which have delivered by now: in order.
      const expected = this.#expected.get(hex)!;
      if (--expected.uses === 0) this.#expected.delete(hex);
      return expected.bytes!;
    });
    this.#pending.shift();
    const streamBytes = offer.entries.reduce((n, e) => n + e.lengthBytes, 0);
    this.#deliveredBytes += streamBytes;
    this.#stats.offers++;
    this.#stats.chunks += offer.entries.length;
    this.#stats.bytes += streamBytes;
    return { kind: "deliver", offerId: offer.offerId, offsetBytes: offer.offsetBytes, pieces, fresh };
  }
}
