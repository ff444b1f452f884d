/**
 * Page deltas for file transfers (HDE over AMST). A transfer may name a base: an older version of the
 * file that the receiver holds at the destination. The peers agree on it by content, never by name or
 * trust: the sender hashes its copy of the base and names {hash, sizeBytes} in `open`; the receiver
 * hashes the file at the destination and answers whether it is that base. While the data moves, the
 * sender encodes each chunk against its base's bytes at the same offset (src/encoding/page_delta.ts) and
 * the receiver decodes against its own. The checksum of the raw bytes decides, as for every chunk, so a
 * delta that decodes to the wrong bytes (a base changed since it was hashed) is NACKed, and the sender
 * resends that chunk whole and never as a delta again.
 *
 * The base hash is XXH3-128, folded over 1 MiB pieces, then the byte count. Not SHA-256, because the hash
 * only says which bytes the deltas are taken against, while correctness rests on each chunk's checksum
 * and the commit digest; it must therefore catch accidents (a 2^-128 chance of two versions colliding),
 * and it must be fast: it reads the whole base at both ends before the first byte moves. Here XXH3 hashes
 * about 17 GB/s from memory against SHA-256's 1.7 GB/s (node:crypto, with SHA extensions); reading a file
 * from the page cache in 1 MiB pieces and folding them runs at 2.5 to 3 GB/s, the reads setting the pace,
 * where SHA-256 would set it at under 1.7. Hashes are cached by path, device, inode, size, mtime and
 * ctime, so a second transfer against an unchanged file does not read it again.
 */
import { xxh3_128Fold } from "../../ffi/delta.ts";
import { type CodecPicker, PAGE_BYTES } from "../encoding/chunk_codec.ts";
import {
  DELTA_SHARE_256,
  DeltaDecoder,
  type DeltaEncoded,
  DeltaEncoder,
  FLAG_DELTA,
  type PageCounts,
} from "../encoding/page_delta.ts";
import type { LoadedChunk } from "./chunk_source.ts";
import type { FrameHeader } from "./frame.ts";
import type { BaseAnswer, BaseRef } from "./messages.ts";
import { closeQuietly } from "./wire.ts";

const HASH_PIECE_BYTES = 1 << 20;
const HASH_CACHE_ENTRIES = 256;

/** The file's identity for the cache: a change to any of these means its bytes may have changed. */
function statKey(path: string, st: Deno.FileInfo): string {
  return [path, st.dev, st.ino, st.size, st.mtime?.getTime(), st.ctime?.getTime()].join("\0");
}

const hex = (bytes: Uint8Array) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

/**
 * A file changed this recently is hashed but its hash is not kept: timestamps can be as coarse as a
 * filesystem tick (a jiffy, or 1 to 2 s on some filesystems), so a second change of the same size within
 * that tick would leave every field of the key as it was.
 */
const RACY_MS = 2000;

/** Hashes of files, by path and stat identity; bounded, the least recently used dropped first. */
export class FileHashCache {
  readonly #entries = new Map<string, BaseRef>();
  #hashedBytes = 0;

  constructor(readonly maxEntries = HASH_CACHE_ENTRIES, readonly racyMs = RACY_MS) {}

  /** Bytes read to compute hashes so far (a cached answer reads none). */
  get hashedBytes(): number {
    return this.#hashedBytes;
  }

  /** The file's hash and size; reads the whole file unless it is cached and unchanged. */
  async hash(path: string): Promise<BaseRef> {
    const before = await Deno.stat(path);
    const key = statKey(path, before);
    const cached = this.#entries.get(key);
    if (cached) {
      this.#entries.delete(key); // re-inserted: most recently used last
      this.#entries.set(key, cached);
      return cached;
    }
    const acc = new Uint8Array(16);
    const piece = new Uint8Array(HASH_PIECE_BYTES);
    let sizeBytes = 0;
    {
      using file = await Deno.open(path, { read: true });
      while (true) {
        let got = 0;
        while (got < piece.length) {
          const n = await file.read(piece.subarray(got));
          if (n === null) break;
          got += n;
        }
        if (got === 0) break;
        xxh3_128Fold(acc, piece.subarray(0, got));
        sizeBytes += got;
        if (got < piece.length) break;
      }
    }
    this.#hashedBytes += sizeBytes;
    const size = new Uint8Array(8);
    new DataView(size.buffer).setBigUint64(0, BigInt(sizeBytes), true);
    xxh3_128Fold(acc, size);
    const ref = { hash: hex(acc), sizeBytes };
    // A file written while it was read has no hash worth keeping, nor has one written within a tick.
    const changedMs = Math.max(before.mtime?.getTime() ?? Infinity, before.ctime?.getTime() ?? Infinity);
    if (statKey(path, await Deno.stat(path)) === key && Date.now() - changedMs >= this.racyMs) {
      this.#entries.set(key, ref);
      if (this.#entries.size > this.maxEntries) this.#entries.delete(this.#entries.keys().next().value!);
    }
    return ref;
  }
}

/** A base file held open for the transfer; reads the base's bytes at a chunk's offset. */
export class BaseFile {
  private constructor(readonly path: string, readonly sizeBytes: number, readonly file: Deno.FsFile) {}

  static async open(path: string, sizeBytes: number): Promise<BaseFile> {
    return new BaseFile(path, sizeBytes, await Deno.open(path, { read: true }));
  }

  /**
   * The base's bytes in [offset, offset + length), fewer where the base ends, in buf. Never throws: bytes
   * that cannot be read are left out, so the pages needing them travel whole (sender) or fail their
   * checksum and come again whole (receiver).
   */
  read(offset: number, length: number, buf: Uint8Array): Uint8Array {
    const want = Math.max(0, Math.min(length, this.sizeBytes - offset, buf.length));
    let got = 0;
    try {
      // Synchronous, like FileSource: from the page cache a read is a memory copy.
      this.file.seekSync(offset, Deno.SeekMode.Start);
      while (got < want) {
        const n = this.file.readSync(buf.subarray(got, want));
        if (n === null) break;
        got += n;
      }
    } catch { /* closed or failing: what was read is what there is */ }
    return buf.subarray(0, got);
  }

  close(): void {
    closeQuietly(this.file);
  }
}

/** Page and chunk figures of a transfer with a base, as the API shows them. */
export interface DeltaStatus {
  base: BaseRef & { path?: string };
  /** Whether the receiver holds the base; without it the transfer sends no deltas. */
  held: boolean;
  detail: string;
  /**
   * Pages by how they travelled: in delta frames as unchanged, zero, delta or whole; pages of chunks sent
   * without a delta count as whole.
   */
  pages: PageCounts;
  chunks: {
    /** Chunks acknowledged that went as delta frames. */
    delta: number;
    /** Chunks acknowledged that went without a delta (past the base's end, or no gain). */
    other: number;
    /** Delta frames that failed their checksum at the receiver and were resent whole. */
    resentWhole: number;
  };
  /** Raw bytes of the chunks that went as deltas less their payload bytes on the wire. */
  bytesSaved: number;
}

interface Tally {
  /** The pages of a delta frame, or undefined for a chunk sent without a delta. */
  pages?: PageCounts;
  rawLen: number;
  encLen: number;
}

class DeltaFigures {
  readonly status: DeltaStatus;

  constructor(base: BaseRef & { path?: string }, answer: BaseAnswer) {
    this.status = {
      base,
      ...answer,
      pages: { unchanged: 0, zero: 0, delta: 0, whole: 0 },
      chunks: { delta: 0, other: 0, resentWhole: 0 },
      bytesSaved: 0,
    };
  }

  add(t: Tally): void {
    const s = this.status;
    if (t.pages) {
      for (const k of ["unchanged", "zero", "delta", "whole"] as const) s.pages[k] += t.pages[k];
      s.chunks.delta++;
      s.bytesSaved += t.rawLen - t.encLen;
    } else {
      s.pages.whole += Math.ceil(t.rawLen / PAGE_BYTES);
      s.chunks.other++;
    }
  }

  snapshot(): DeltaStatus {
    return structuredClone(this.status);
  }
}

/** What the sending side knows of its base. */
export interface SendBase extends BaseRef {
  path: string;
}

/** The sending side of a transfer with a base: its figures, the base file, and which chunks go whole. */
export class DeltaSending {
  readonly #figures: DeltaFigures;
  /** One bit per chunk: a delta of it failed at the receiver, so it goes whole from now on. */
  readonly #wholeOnly: Uint8Array;
  /** What each chunk in flight was sent as, until its ACK or NACK. */
  readonly #inFlight = new Map<number, Tally>();

  private constructor(
    base: SendBase,
    answer: BaseAnswer,
    readonly chunkBytes: number,
    totalChunks: number,
    /** Share of a page (in 256ths) its delta must stay below, by whether whole pages get compressed. */
    readonly deltaShare256: number,
    readonly file?: BaseFile,
  ) {
    this.#figures = new DeltaFigures(base, answer);
    this.#wholeOnly = new Uint8Array(Math.ceil(totalChunks / 8));
  }

  /**
   * After `accepted`: opens the base when the receiver holds it. answer is undefined from a receiver that
   * never heard of bases.
   */
  static async start(
    base: SendBase,
    answer: BaseAnswer | undefined,
    chunkBytes: number,
    sizeBytes: number,
    /** Whether whole pages may be compressed (the transfer's codec is not "none"). */
    wholeCompressed: boolean,
  ): Promise<DeltaSending> {
    const a = answer ??
      { held: false, detail: "the receiver does not take bases (an older agent); no deltas" };
    let file: BaseFile | undefined;
    if (a.held) {
      try {
        file = await BaseFile.open(base.path, base.sizeBytes);
      } catch (err) {
        a.held = false;
        a.detail = `the base ${base.path} cannot be read here any more: ${(err as Error).message}; no deltas`;
      }
    }
    const share = wholeCompressed ? DELTA_SHARE_256.wholeCompressed : DELTA_SHARE_256.wholeRaw;
    return new DeltaSending(base, a, chunkBytes, Math.ceil(sizeBytes / chunkBytes), share, file);
  }

  status(): DeltaStatus {
    return this.#figures.snapshot();
  }

  /** A stream's encoder, or undefined when there is no base to encode against. */
  stream(headroom: number): DeltaStreamEncoder | undefined {
    return this.file ? new DeltaStreamEncoder(this, this.file, headroom) : undefined;
  }

  /** Whether chunk seq may go as a delta: within the base, and no delta of it failed before. */
  mayDelta(seq: number, offset: number): boolean {
    return offset < (this.file?.sizeBytes ?? 0) && !(this.#wholeOnly[seq >> 3] >> (seq & 7) & 1);
  }

  /** Chunk seq left on a stream as this. */
  sent(seq: number, tally: Tally): void {
    this.#inFlight.set(seq, tally);
  }

  acked(seq: number, rawLen: number): void {
    this.#figures.add(this.#inFlight.get(seq) ?? { rawLen, encLen: rawLen });
    this.#inFlight.delete(seq);
  }

  /** A NACK: a chunk that went as a delta decoded to the wrong bytes (or not at all): whole from now on. */
  nacked(seq: number): void {
    if (this.#inFlight.get(seq)?.pages) {
      this.#wholeOnly[seq >> 3] |= 1 << (seq & 7);
      this.#figures.status.chunks.resentWhole++;
    }
    this.#inFlight.delete(seq);
  }

  close(): void {
    this.file?.close();
  }
}

/** One per stream: the base's bytes and the delta encoder. */
export class DeltaStreamEncoder {
  readonly #encoder: DeltaEncoder;
  readonly #base: Uint8Array;

  constructor(readonly owner: DeltaSending, readonly file: BaseFile, headroom: number) {
    this.#encoder = new DeltaEncoder(owner.chunkBytes, headroom, { deltaShare256: owner.deltaShare256 });
    this.#base = new Uint8Array(owner.chunkBytes);
  }

  /** The chunk as a delta frame against the base, or undefined when it goes as a plain chunk. */
  async encode(seq: number, chunk: LoadedChunk, pick: CodecPicker): Promise<DeltaEncoded | undefined> {
    let encoded: DeltaEncoded | undefined;
    if (this.owner.mayDelta(seq, chunk.offset)) {
      const base = this.file.read(chunk.offset, chunk.length, this.#base);
      encoded = await this.#encoder.encode(chunk.frame, chunk.length, base, pick);
    }
    this.owner.sent(seq, {
      pages: encoded?.pages,
      rawLen: chunk.length,
      encLen: encoded?.encLen ?? chunk.length,
    });
    return encoded;
  }

  close(): void {
    this.#encoder.close();
  }
}

/** The receiver's verdict on a base named in `open`, with the file held open when it matches. */
export interface BaseMatch extends BaseAnswer {
  file?: BaseFile;
}

/**
 * Whether the file at path (the transfer's destination) is the base ref names. Only a regular file of
 * the same size is hashed; its hash may come from the cache.
 */
export async function matchBase(path: string, ref: BaseRef, hashes: FileHashCache): Promise<BaseMatch> {
  const st = await Deno.lstat(path).catch(() => undefined);
  if (!st) return { held: false, detail: `no file at ${path} to take as the base; no deltas` };
  if (!st.isFile) return { held: false, detail: `${path} is not a regular file; no deltas` };
  if (st.size !== ref.sizeBytes) {
    return { held: false, detail: `${path} has ${st.size} bytes, the base ${ref.sizeBytes}; no deltas` };
  }
  let file: BaseFile | undefined;
  try {
    // A change to the file after it was hashed is not caught here but by the checksums of the chunks.
    file = await BaseFile.open(path, ref.sizeBytes);
    const mine = await hashes.hash(path);
    if (mine.hash === ref.hash && mine.sizeBytes === ref.sizeBytes) {
      return { held: true, detail: `${path} is the base (XXH3-128 ${ref.hash})`, file };
    }
    file.close();
    return {
      held: false,
      detail: `${path} differs from the base (XXH3-128 ${mine.hash}, not ${ref.hash}); no deltas`,
    };
  } catch (err) {
    file?.close();
    return {
      held: false,
      detail: `${path} cannot be read as the base: ${(err as Error).message}; no deltas`,
    };
  }
}

/** The receiving side of a transfer with a base: its figures and, when it holds the base, the base file. */
export class DeltaReceiving {
  readonly #figures: DeltaFigures;

  constructor(ref: BaseRef, readonly match: BaseMatch) {
    this.#figures = new DeltaFigures(ref, { held: match.held, detail: match.detail });
  }

  status(): DeltaStatus {
    return this.#figures.snapshot();
  }

  /** What `accepted` tells the sender. */
  get answer(): BaseAnswer {
    return { held: this.match.held, detail: this.match.detail };
  }

  stream(chunkBytes: number): DeltaStreamDecoder {
    return new DeltaStreamDecoder(chunkBytes, this.match.file);
  }

  /** A verified chunk, counted once (not again when a resend of it arrives). */
  add(tally: Tally): void {
    this.#figures.add(tally);
  }

  close(): void {
    this.match.file?.close();
  }
}

/** One per stream: decodes delta frames against the receiver's base. */
export class DeltaStreamDecoder {
  /** Allocated only with a base to decode against: without one every delta frame is refused. */
  readonly #decoder?: DeltaDecoder;
  readonly #base: Uint8Array;
  #pages?: PageCounts;

  constructor(chunkBytes: number, readonly file?: BaseFile) {
    this.#decoder = file && new DeltaDecoder(chunkBytes);
    this.#base = new Uint8Array(file ? chunkBytes : 0);
  }

  /**
   * Decodes a FLAG_DELTA frame's payload into out: false (a delta frame is never all zero pages), or
   * undefined when it does not decode or no base is held here (the sender then resends it whole).
   */
  async decode(h: FrameHeader, payload: Uint8Array, out: Uint8Array): Promise<false | undefined> {
    this.#pages = undefined;
    if (!this.file || !this.#decoder || h.flags !== FLAG_DELTA) return undefined;
    const base = this.file.read(h.offset, h.rawLen, this.#base);
    this.#pages = await this.#decoder.decode(h.codec, payload, base, out);
    return this.#pages ? false : undefined;
  }

  /** The tally of the frame just verified: its pages if it was a delta frame. */
  tally(h: FrameHeader): Tally {
    return {
      pages: (h.flags ?? 0) & FLAG_DELTA ? this.#pages : undefined,
      rawLen: h.rawLen,
      encLen: h.encLen,
    };
  }

  close(): void {
    this.#decoder?.close();
  }
}
