/**
 * A QEMU migration stream re-encoded for dedupe (HDE; docs/wire-format.md §6, "Deduped migration
 * streams"), as two pure state machines: the encoder turns QEMU's bytes into the carried stream that a
 * stream transfer moves, the decoder turns the carried stream back into QEMU's bytes, exactly.
 *
 * The parser (qemu_stream.ts) splits QEMU's stream into RAW bytes and 4 KiB PAGE contents. RAW bytes
 * travel as they are; each page leaves a PAGES mark at its place, and the pages, concatenated into a page
 * stream, go through content-defined chunking and the OFFER / WANT / CHUNKS exchange (offer.ts), so that
 * only chunks the receiver's store lacks travel. The sender's OFFER, CHUNKS and END ride in the carried
 * stream beside RAW and PAGES, in order; the receiver's WANTs go back another way (the migration
 * exchange). The decoder writes RAW bytes as soon as every page before them is there, and the page
 * stream's bytes into the places the PAGES marks hold.
 *
 *   encoder: push(qemuBytes) while canPush; want(msg) for each WANT; finish() at QEMU's end;
 *            read(buf) drains the carried stream; done once END is out and read.
 *   decoder: push(carriedBytes) → steps: write (to QEMU, in order), lookup (read the store, then
 *            answer() and send the WANT), store (verified chunks worth keeping), end.
 *
 * Bounds. The receiver holds RAW bytes only while pages before them are still on their way; the encoder
 * keeps that under RAW_SYNC_BYTES plus one push by cutting the open chunk and flushing its offer when it
 * is reached (a sync), and the decoder refuses more than MAX_WAITING_RAW_BYTES. Pages announced and not yet
 * sent are bounded by the offer window (maxOffersInFlight × maxOfferBytes) plus one push; the decoder
 * refuses more than MAX_WAITING_PAGE_BYTES.
 */
import { type CdcSizes, StreamChunker, VM_MEMORY_CDC } from "./cdc.ts";
import {
  type DedupeLimits,
  DedupeProtocolError,
  DEFAULT_DEDUPE_LIMITS,
  maxMessageBytes,
  type OfferEntry,
} from "./messages.ts";
import { OfferReceiver, OfferSender, type ReceiverStats, type SenderStats } from "./offer.ts";
import { type PassThrough, QEMU_PAGE_BYTES, QemuStreamParser, type StreamRecord } from "./qemu_stream.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

/** "DWMS", version, three reserved bytes: the first bytes of a carried stream. */
export const STREAM_MAGIC = new Uint8Array([0x44, 0x57, 0x4d, 0x53]);
export const STREAM_VERSION = 1;
export const STREAM_HEADER_BYTES = 8;
/** u8 kind, u32 (little-endian) length or count. */
export const FRAME_HEADER_BYTES = 5;
export const FrameKind = { RAW: 1, PAGES: 2, DEDUPE: 3 } as const;

/** The longest RAW frame; longer runs are split. */
export const MAX_RAW_FRAME_BYTES = 1 * MiB;
/** The most QEMU bytes one push may take: part of the bound on what the receiver holds. */
export const MAX_PUSH_BYTES = 1 * MiB;
/** The encoder syncs when the RAW bytes it has sent behind unsent pages reach this. */
export const RAW_SYNC_BYTES = 4 * MiB;
/** The decoder refuses to hold more RAW bytes than this behind pages it has not yet received. */
export const MAX_WAITING_RAW_BYTES = RAW_SYNC_BYTES + MAX_PUSH_BYTES + MAX_RAW_FRAME_BYTES;
/** The decoder refuses more announced and unsent page bytes than this (the defaults need at most 10 MiB). */
export const MAX_WAITING_PAGE_BYTES = 64 * MiB;
/** Small frames are gathered into output pieces of this size. */
const OUTPUT_PIECE_BYTES = 64 * KiB;
/** Small pieces of QEMU's stream are gathered into writes of this size. */
const WRITE_GATHER_BYTES = 256 * KiB;

export interface DedupeStreamOptions {
  sizes?: CdcSizes;
  limits?: DedupeLimits;
}

export interface EncoderStats extends SenderStats {
  /** QEMU's stream bytes taken, and the carried stream's bytes produced. */
  streamBytes: number;
  encodedBytes: number;
  /** PAGE records, and the bytes sent as RAW. */
  pages: number;
  rawBytes: number;
  /** Page-stream bytes of the offers the receiver has answered: those it wanted (bytesSent) or held. */
  answeredBytes: number;
  /** Times the encoder cut its open chunk so that the receiver need not hold more RAW bytes. */
  syncs: number;
  /** Where and why the parser stopped finding pages (device state at the end is the usual place). */
  passThrough?: PassThrough;
}

/** A FIFO of byte pieces with a read that copies out as much as fits. */
class OutputQueue {
  #pieces: Uint8Array[] = [];
  #head = 0;
  #staging = new Uint8Array(OUTPUT_PIECE_BYTES);
  #stagingLen = 0;
  bytes = 0;

  /** Appends bytes, copying small ones together; large ones are kept as they are (not copied). */
  append(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    this.bytes += bytes.length;
    if (bytes.length <= OUTPUT_PIECE_BYTES / 4) {
      if (this.#stagingLen + bytes.length > OUTPUT_PIECE_BYTES) this.#flushStaging();
      this.#staging.set(bytes, this.#stagingLen);
      this.#stagingLen += bytes.length;
      return;
    }
    this.#flushStaging();
    this.#pieces.push(bytes);
  }

  read(into: Uint8Array): number {
    if (this.#pieces.length === 0) this.#flushStaging();
    let n = 0;
    while (n < into.length && this.#pieces.length > 0) {
      const piece = this.#pieces[0];
      const take = Math.min(piece.length - this.#head, into.length - n);
      into.set(piece.subarray(this.#head, this.#head + take), n);
      n += take;
      this.#head += take;
      if (this.#head === piece.length) {
        this.#pieces.shift();
        this.#head = 0;
        if (this.#pieces.length === 0) this.#flushStaging();
      }
    }
    this.bytes -= n;
    return n;
  }

  #flushStaging(): void {
    if (this.#stagingLen === 0) return;
    this.#pieces.push(this.#staging.subarray(0, this.#stagingLen));
    this.#staging = new Uint8Array(OUTPUT_PIECE_BYTES);
    this.#stagingLen = 0;
  }
}

/**
 * A first-in first-out queue with O(1) shift: the queues here hold an entry per page in flight, thousands
 * at a time, where Array.prototype.shift would move them all on every page.
 */
class Fifo<T> {
  #items: T[] = [];
  #head = 0;

  get length(): number {
    return this.#items.length - this.#head;
  }

  get first(): T | undefined {
    return this.#items[this.#head];
  }

  push(item: T): void {
    this.#items.push(item);
  }

  shift(): T | undefined {
    if (this.#head >= this.#items.length) return undefined;
    const item = this.#items[this.#head++];
    if (this.#head >= 1024 && this.#head * 2 >= this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return item;
  }
}

function frameHeader(kind: number, n: number): Uint8Array {
  const h = new Uint8Array(FRAME_HEADER_BYTES);
  h[0] = kind;
  new DataView(h.buffer).setUint32(1, n, true);
  return h;
}

export class MigrationStreamEncoder {
  readonly #parser = new QemuStreamParser();
  readonly #chunker: StreamChunker;
  readonly #sender: OfferSender;
  readonly #out = new OutputQueue();
  /** Chunks cut and not yet taken by the sender, whose offer window is full. */
  #chunks: Uint8Array[] = [];
  /** Pages announced in the carried stream, as page-stream bytes. */
  #announcedBytes = 0;
  /** Page-stream bytes whose CHUNKS are in the carried stream: the receiver has these pages. */
  #sentBytes = 0;
  /** Page-stream bytes handed to the sender, and where each offer in flight ends. */
  #addedBytes = 0;
  readonly #offerEnds: number[] = [];
  /** RAW frames behind unsent pages: [announced bytes when sent, RAW bytes], and their sum. */
  readonly #waitingRaw = new Fifo<[number, number]>();
  #waitingRawBytes = 0;
  /** A sync or the end asked for the open batch to be offered. */
  #flushBatch = false;
  #finished = false;
  #done = false;
  #encodedBytes = 0;
  #syncs = 0;

  constructor(opts: DedupeStreamOptions = {}) {
    this.#chunker = new StreamChunker(opts.sizes ?? VM_MEMORY_CDC);
    this.#sender = new OfferSender(opts.limits ?? DEFAULT_DEDUPE_LIMITS);
    const header = new Uint8Array(STREAM_HEADER_BYTES);
    header.set(STREAM_MAGIC);
    header[4] = STREAM_VERSION;
    this.#append(header);
  }

  /** Whether push() may take more of QEMU's stream now; if not, a WANT is needed first. */
  get canPush(): boolean {
    return !this.#finished && this.#chunks.length === 0 && !this.#flushBatch &&
      this.#waitingRawBytes < RAW_SYNC_BYTES;
  }

  /** Carried-stream bytes ready to read. */
  get outputBytes(): number {
    return this.#out.bytes;
  }

  /** END is out and every byte of the carried stream was read. */
  get done(): boolean {
    return this.#done && this.#out.bytes === 0;
  }

  stats(): EncoderStats {
    const parsed = this.#parser.stats();
    return {
      ...this.#sender.stats(),
      streamBytes: parsed.bytes,
      encodedBytes: this.#encodedBytes,
      pages: parsed.pages,
      rawBytes: parsed.rawBytes,
      answeredBytes: this.#sentBytes,
      syncs: this.#syncs,
      passThrough: this.#parser.passThrough,
    };
  }

  /**
   * Takes the next bytes of QEMU's stream (at most MAX_PUSH_BYTES, and only while canPush). Page
   * contents are copied; RAW bytes are kept as views until read, so data must not change afterwards.
   */
  push(data: Uint8Array): void {
    if (!this.canPush) {
      throw new Error(
        this.#finished ? "dedupe encoder: push after finish()" : "dedupe encoder: push while !canPush",
      );
    }
    if (data.length > MAX_PUSH_BYTES) {
      throw new RangeError(`dedupe encoder: push of ${data.length} bytes, at most ${MAX_PUSH_BYTES}`);
    }
    this.#records(this.#parser.push(data));
    if (this.#waitingRawBytes >= RAW_SYNC_BYTES) {
      // Cut the open chunk and offer the open batch, so every page announced so far gets sent.
      this.#syncs++;
      const last = this.#chunker.finish();
      if (last) this.#chunks.push(last);
      this.#flushBatch = true;
    }
    this.#feed();
  }

  /** Handles a WANT from the receiver; throws DedupeProtocolError when it does not answer the oldest offer. */
  want(msg: Uint8Array): void {
    const chunks = this.#sender.receive(msg);
    this.#dedupe(chunks);
    this.#sentBytes = this.#offerEnds.shift()!;
    while (this.#waitingRaw.length > 0 && this.#waitingRaw.first![0] <= this.#sentBytes) {
      this.#waitingRawBytes -= this.#waitingRaw.shift()![1];
    }
    this.#feed();
  }

  /** QEMU's stream ended: the rest is offered, and END follows once every offer is answered. */
  finish(): void {
    if (this.#finished) return;
    this.#records(this.#parser.finish());
    const last = this.#chunker.finish();
    if (last) this.#chunks.push(last);
    this.#finished = true;
    this.#flushBatch = true;
    this.#feed();
  }

  /** Copies carried-stream bytes into buf; returns how many (0 when none are ready). */
  read(buf: Uint8Array): number {
    return this.#out.read(buf);
  }

  #records(records: StreamRecord[]): void {
    const pageCount = records.reduce((n, r) => n + (r.kind === "page" ? 1 : 0), 0);
    // One buffer for this push's pages: the chunker returns views of it, which the sender keeps.
    const pages = new Uint8Array(pageCount * QEMU_PAGE_BYTES);
    let pagesAt = 0;
    let run = 0;
    const announce = () => {
      if (run === 0) return;
      this.#append(frameHeader(FrameKind.PAGES, run));
      this.#announcedBytes += run * QEMU_PAGE_BYTES;
      run = 0;
    };
    for (const rec of records) {
      if (rec.kind === "page") {
        pages.set(rec.bytes, pagesAt);
        pagesAt += QEMU_PAGE_BYTES;
        run++;
        continue;
      }
      announce();
      for (let off = 0; off < rec.bytes.length; off += MAX_RAW_FRAME_BYTES) {
        const piece = rec.bytes.subarray(off, off + MAX_RAW_FRAME_BYTES);
        this.#append(frameHeader(FrameKind.RAW, piece.length));
        this.#append(piece);
        if (this.#announcedBytes > this.#sentBytes) {
          this.#waitingRaw.push([this.#announcedBytes, piece.length]);
          this.#waitingRawBytes += piece.length;
        }
      }
    }
    announce();
    if (pages.length > 0) this.#chunks.push(...this.#chunker.push(pages));
  }

  /** Hands waiting chunks to the sender while its window has room; offers the batch or ends when due. */
  #feed(): void {
    while (this.#chunks.length > 0 && !this.#sender.windowFull) {
      const chunk = this.#chunks.shift()!;
      const before = this.#addedBytes;
      const offer = this.#sender.add(chunk);
      this.#addedBytes += chunk.length;
      if (offer) {
        this.#offerEnds.push(before);
        this.#dedupe(offer);
      }
    }
    if (this.#chunks.length > 0 || this.#sender.windowFull || !this.#flushBatch) return;
    const offer = this.#sender.flush();
    if (offer) {
      this.#offerEnds.push(this.#addedBytes);
      this.#dedupe(offer);
    }
    if (!this.#finished) {
      this.#flushBatch = false;
    } else if (this.#sender.idle && !this.#done) {
      this.#dedupe(this.#sender.end());
      this.#done = true;
    }
  }

  #dedupe(msg: Uint8Array): void {
    this.#append(frameHeader(FrameKind.DEDUPE, msg.length));
    this.#append(msg);
  }

  #append(bytes: Uint8Array): void {
    this.#encodedBytes += bytes.length;
    this.#out.append(bytes);
  }
}

export interface DecoderStats extends ReceiverStats {
  /** Bytes of QEMU's stream written, of which RAW. */
  streamBytes: number;
  rawBytes: number;
  pages: number;
}

/** Write bytes to QEMU, in order. Valid only until the next push. */
export interface WriteStep {
  kind: "write";
  bytes: Uint8Array;
}
/** An OFFER: read each of lookups from the store (verified, or undefined), then answer() and send the WANT. */
export interface LookupStep {
  kind: "lookup";
  offerId: number;
  lookups: OfferEntry[];
}
/** Chunks that came over the wire, their hash checked: worth keeping in the store. */
export interface StoreStep {
  kind: "store";
  fresh: { hash: Uint8Array; bytes: Uint8Array }[];
}
export interface EndStep {
  kind: "end";
}
export type DecoderStep = WriteStep | LookupStep | StoreStep | EndStep;

type Waiting = { raw: Uint8Array } | { pageBytes: number };

export class MigrationStreamDecoder {
  readonly #receiver: OfferReceiver;
  readonly #maxMessageBytes: number;
  /** The stream header, then frame headers, gathered here. */
  #head = new Uint8Array(STREAM_HEADER_BYTES);
  #headLen = 0;
  #started = false;
  /** The frame being read: its kind and how many payload bytes are still to come. */
  #kind = 0;
  #left = 0;
  /** A DEDUPE message being gathered. */
  #message?: Uint8Array;
  #messageLen = 0;
  /** What waits for pages: always a page entry first, then RAW bytes and more pages. */
  readonly #waiting = new Fifo<Waiting>();
  #waitingRawBytes = 0;
  #waitingPageBytes = 0;
  #ended = false;
  #streamBytes = 0;
  #rawBytes = 0;
  #pages = 0;
  #gathered = new Uint8Array(WRITE_GATHER_BYTES);
  #gatheredLen = 0;

  constructor(opts: Pick<DedupeStreamOptions, "limits"> = {}) {
    this.#receiver = new OfferReceiver(opts.limits ?? DEFAULT_DEDUPE_LIMITS);
    this.#maxMessageBytes = maxMessageBytes(this.#receiver.limits);
  }

  stats(): DecoderStats {
    return {
      ...this.#receiver.stats(),
      streamBytes: this.#streamBytes,
      rawBytes: this.#rawBytes,
      pages: this.#pages,
    };
  }

  /** Takes carried-stream bytes (any split); throws DedupeProtocolError on anything out of place. */
  push(data: Uint8Array): DecoderStep[] {
    const steps: DecoderStep[] = [];
    let pos = 0;
    while (pos < data.length) {
      if (this.#ended) this.#fail(`${data.length - pos} bytes after END`);
      if (this.#left === 0) {
        const want = this.#started ? FRAME_HEADER_BYTES : STREAM_HEADER_BYTES;
        const take = Math.min(want - this.#headLen, data.length - pos);
        this.#head.set(data.subarray(pos, pos + take), this.#headLen);
        this.#headLen += take;
        pos += take;
        if (this.#headLen < want) break;
        this.#headLen = 0;
        if (this.#started) this.#frame();
        else this.#start();
        continue;
      }
      const take = Math.min(this.#left, data.length - pos);
      const part = data.subarray(pos, pos + take);
      pos += take;
      this.#left -= take;
      if (this.#kind === FrameKind.RAW) {
        this.#raw(part, steps);
      } else {
        this.#message!.set(part, this.#messageLen);
        this.#messageLen += take;
        if (this.#left === 0) this.#dedupe(steps);
      }
    }
    this.#flushWrites(steps);
    return steps;
  }

  /** Answers the oldest unanswered offer with what the store holds; returns the WANT to send. */
  answer(offerId: number, held: readonly (Uint8Array | undefined)[]): Uint8Array {
    return this.#receiver.answer(offerId, held);
  }

  /** The carried stream ended: throws unless it ended with END and every page was placed. */
  finish(): void {
    if (!this.#ended) {
      this.#fail(
        `the stream ended before END (${this.#streamBytes} bytes written, ${this.#waitingPageBytes} page ` +
          `bytes still expected)`,
      );
    }
  }

  #fail(what: string): never {
    throw new DedupeProtocolError(`deduped migration stream: ${what}`);
  }

  #start(): void {
    const h = this.#head;
    if (!STREAM_MAGIC.every((b, i) => h[i] === b) || h[4] !== STREAM_VERSION || h[5] || h[6] || h[7]) {
      this.#fail(
        `it starts ${[...h].map((b) => b.toString(16).padStart(2, "0")).join(" ")}, not "DWMS" version ` +
          `${STREAM_VERSION}; do both agents run the same dwcp version?`,
      );
    }
    this.#started = true;
    this.#head = new Uint8Array(FRAME_HEADER_BYTES);
  }

  #frame(): void {
    const kind = this.#head[0];
    const n = new DataView(this.#head.buffer).getUint32(1, true);
    switch (kind) {
      case FrameKind.RAW:
        if (n < 1 || n > MAX_RAW_FRAME_BYTES) {
          this.#fail(`a RAW frame of ${n} bytes (1..${MAX_RAW_FRAME_BYTES})`);
        }
        break;
      case FrameKind.PAGES:
        if (n < 1 || this.#waitingPageBytes + n * QEMU_PAGE_BYTES > MAX_WAITING_PAGE_BYTES) {
          this.#fail(
            `PAGES ${n} with ${this.#waitingPageBytes} page bytes announced and unsent ` +
              `(at most ${MAX_WAITING_PAGE_BYTES})`,
          );
        }
        this.#pages += n;
        this.#waitingPageBytes += n * QEMU_PAGE_BYTES;
        this.#waiting.push({ pageBytes: n * QEMU_PAGE_BYTES });
        return;
      case FrameKind.DEDUPE:
        if (n < 1 || n > this.#maxMessageBytes) {
          this.#fail(`a dedupe message of ${n} bytes (1..${this.#maxMessageBytes})`);
        }
        this.#message = new Uint8Array(n);
        this.#messageLen = 0;
        break;
      default:
        this.#fail(`frame kind ${kind} (1 RAW, 2 PAGES, 3 DEDUPE)`);
    }
    this.#kind = kind;
    this.#left = n;
  }

  #raw(part: Uint8Array, steps: DecoderStep[]): void {
    this.#rawBytes += part.length;
    if (this.#waiting.length === 0) {
      this.#write(part, steps);
      return;
    }
    this.#waitingRawBytes += part.length;
    if (this.#waitingRawBytes > MAX_WAITING_RAW_BYTES) {
      this.#fail(
        `${this.#waitingRawBytes} RAW bytes wait behind pages not yet sent (at most ${MAX_WAITING_RAW_BYTES})`,
      );
    }
    this.#waiting.push({ raw: part.slice() });
  }

  #dedupe(steps: DecoderStep[]): void {
    const step = this.#receiver.receive(this.#message!);
    this.#message = undefined;
    switch (step.kind) {
      case "lookup":
        this.#flushWrites(steps);
        steps.push({ kind: "lookup", offerId: step.offerId, lookups: step.lookups });
        return;
      case "deliver":
        if (step.fresh.length > 0) steps.push({ kind: "store", fresh: step.fresh });
        for (const piece of step.pieces) this.#placePages(piece, steps);
        return;
      case "end":
        if (this.#waiting.length > 0) {
          this.#fail(`END with ${this.#waitingPageBytes} announced page bytes never sent`);
        }
        this.#ended = true;
        this.#flushWrites(steps);
        steps.push({ kind: "end" });
        return;
    }
  }

  /** Writes page-stream bytes into the places PAGES marks hold, and the RAW bytes they free. */
  #placePages(bytes: Uint8Array, steps: DecoderStep[]): void {
    let at = 0;
    while (at < bytes.length) {
      const head = this.#waiting.first;
      if (!head || !("pageBytes" in head)) {
        this.#fail(`${bytes.length - at} bytes of pages arrived that no PAGES frame announced`);
      }
      const take = Math.min(head.pageBytes, bytes.length - at);
      this.#write(bytes.subarray(at, at + take), steps);
      at += take;
      head.pageBytes -= take;
      this.#waitingPageBytes -= take;
      if (head.pageBytes > 0) continue;
      this.#waiting.shift();
      while (this.#waiting.length > 0 && "raw" in this.#waiting.first!) {
        const raw = (this.#waiting.shift() as { raw: Uint8Array }).raw;
        this.#waitingRawBytes -= raw.length;
        this.#write(raw, steps);
      }
    }
  }

  /**
   * Adds bytes to the next write step. Pieces are mostly a page or a page header, so small ones are
   * gathered into one buffer: a write per piece would cost a system call per 8 bytes.
   */
  #write(bytes: Uint8Array, steps: DecoderStep[]): void {
    this.#streamBytes += bytes.length;
    if (bytes.length >= WRITE_GATHER_BYTES / 4) {
      this.#flushWrites(steps);
      steps.push({ kind: "write", bytes });
      return;
    }
    if (this.#gatheredLen + bytes.length > WRITE_GATHER_BYTES) this.#flushWrites(steps);
    this.#gathered.set(bytes, this.#gatheredLen);
    this.#gatheredLen += bytes.length;
  }

  #flushWrites(steps: DecoderStep[]): void {
    if (this.#gatheredLen === 0) return;
    steps.push({ kind: "write", bytes: this.#gathered.subarray(0, this.#gatheredLen) });
    // A fresh buffer: the step's bytes stay valid until the caller has written them.
    this.#gathered = new Uint8Array(WRITE_GATHER_BYTES);
    this.#gatheredLen = 0;
  }
}
