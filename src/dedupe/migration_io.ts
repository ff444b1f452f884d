/**
 * Deduped live migration streams with their IO (HDE): the two ends of migration_stream.ts's state
 * machines, each shaped as the connection the transport already handles, so ordering, credit and
 * backpressure stay the stream transfer's.
 *
 *   source:       new DedupeSource(qemuSocket)  is the input a StreamSource reads (the carried stream);
 *                 source.want(msg) for each WANT the destination sends back on the migration exchange.
 *   destination:  new DedupeSink(qemuSocket, store, peer)  is the output a StreamSink writes (the carried
 *                 stream); it writes QEMU's exact stream into qemuSocket and sends WANTs through peer.
 *
 * QEMU must never load a wrong byte: every chunk the sink writes was checked against its SHA-256 (chunks
 * from the wire by the decoder, chunks from the store by the store), and anything out of place in the
 * carried stream fails the sink before the bytes in question reach QEMU, and closes QEMU's socket, so the
 * incoming QEMU stops and the source resumes its guest.
 */
import type { Logger } from "../obs/log.ts";
import { Signal } from "../transport/signal.ts";
import { closeQuietly, type Duplex, writeAll } from "../transport/wire.ts";
import type { ChunkStore } from "./chunk_store.ts";
import { DedupeProtocolError } from "./messages.ts";
import { StoreFiller } from "./store_filler.ts";
import {
  type DecoderStats,
  type DedupeStreamOptions,
  type EncoderStats,
  MAX_PUSH_BYTES,
  MigrationStreamDecoder,
  MigrationStreamEncoder,
} from "./migration_stream.ts";

const KiB = 1024;
/** One read of QEMU's socket. */
const READ_BYTES = 256 * KiB;
/** The carried stream the source prepares ahead of the transport's reads. */
const MAX_OUTPUT_BYTES = 1024 * KiB;
/** Chunks a sink may have waiting for the store before it slows the stream down (see store_filler.ts). */
const STORE_SLACK_BYTES = 64 * 1024 * KiB;

/** Reads QEMU's migration stream and serves it re-encoded: the input of the migration's StreamSource. */
export class DedupeSource implements Duplex {
  readonly #encoder: MigrationStreamEncoder;
  readonly #changed = new Signal();
  #failure?: Error;
  #closed = false;

  constructor(readonly qemu: Duplex, opts: DedupeStreamOptions = {}) {
    this.#encoder = new MigrationStreamEncoder(opts);
    this.#pump();
  }

  stats(): EncoderStats {
    return this.#encoder.stats();
  }

  /** The carried stream's next bytes, as soon as there are any; null once it has ended. */
  async read(p: Uint8Array): Promise<number | null> {
    for (;;) {
      if (this.#failure) throw this.#failure;
      const n = this.#encoder.read(p);
      if (n > 0) {
        this.#changed.notify();
        return n;
      }
      if (this.#encoder.done || this.#closed) return null;
      await this.#changed.wait();
    }
  }

  /** A WANT from the destination; throws DedupeProtocolError when it answers no offer in flight. */
  want(msg: Uint8Array): void {
    this.#encoder.want(msg);
    this.#changed.notify();
  }

  /** The connection QEMU writes into also takes writes; the migration sends QEMU nothing. */
  write(p: Uint8Array): Promise<number> {
    return this.qemu.write(p);
  }

  close(): void {
    this.#closed = true;
    closeQuietly(this.qemu);
    this.#changed.notify();
  }

  /** Reads QEMU while the encoder may take more and the transport keeps up. */
  async #pump(): Promise<void> {
    try {
      for (;;) {
        while (!this.#closed && (!this.#encoder.canPush || this.#encoder.outputBytes >= MAX_OUTPUT_BYTES)) {
          await this.#changed.wait();
        }
        if (this.#closed) return;
        // A fresh buffer per read: the encoder keeps views of its RAW bytes until they are read.
        const buf = new Uint8Array(Math.min(READ_BYTES, MAX_PUSH_BYTES));
        const n = await this.qemu.read(buf);
        if (this.#closed) return;
        if (n === null) this.#encoder.finish();
        else this.#encoder.push(buf.subarray(0, n));
        this.#changed.notify();
        if (n === null) return;
      }
    } catch (err) {
      this.#failure = err instanceof Error ? err : new Error(String(err));
      this.#changed.notify();
    }
  }
}

/** How the sink talks to the source agent: WANTs back, and the reason when it fails. */
export interface DedupePeer {
  sendWant(msg: Uint8Array): Promise<void>;
  failed(err: Error): Promise<void>;
}

/** Takes the carried stream and writes QEMU's exact stream into its socket: the output of a StreamSink. */
export class DedupeSink implements Duplex {
  readonly #decoder: MigrationStreamDecoder;
  readonly #filler: StoreFiller;
  #failure?: Error;
  #storeReadFailed = false;

  constructor(
    readonly qemu: Duplex,
    readonly store: ChunkStore,
    readonly peer: DedupePeer,
    readonly log: Logger,
    opts: Pick<DedupeStreamOptions, "limits"> = {},
  ) {
    this.#decoder = new MigrationStreamDecoder(opts);
    this.#filler = new StoreFiller(store, STORE_SLACK_BYTES, log);
  }

  stats(): DecoderStats {
    return this.#decoder.stats();
  }

  /** Decodes p and writes what it completes into QEMU's socket; resolves once written. */
  async write(p: Uint8Array): Promise<number> {
    if (this.#failure) throw this.#failure;
    try {
      for (const step of this.#decoder.push(p)) {
        switch (step.kind) {
          case "write":
            await writeAll(this.qemu, step.bytes);
            break;
          case "lookup": {
            const held = await Promise.all(step.lookups.map((e) => this.#get(e.hash)));
            await this.peer.sendWant(this.#decoder.answer(step.offerId, held));
            break;
          }
          case "store":
            await this.#filler.add(step.fresh);
            break;
          case "end":
            break;
        }
      }
      return p.length;
    } catch (err) {
      this.#failure = err instanceof Error ? err : new Error(String(err));
      // QEMU must not go on with part of a stream: closing its socket makes the incoming side fail.
      closeQuietly(this.qemu);
      await this.peer.failed(this.#failure).catch(() => {});
      throw this.#failure;
    }
  }

  read(p: Uint8Array): Promise<number | null> {
    return this.qemu.read(p);
  }

  /** Resolves once the chunks that arrived so far are in the store (writing them goes on after the stream). */
  stored(): Promise<void> {
    return this.#filler.drained();
  }

  /** Ends QEMU's stream (after the whole carried stream on commit, or early on an abort); the store fills on. */
  close(): void {
    this.#filler.flush();
    closeQuietly(this.qemu);
  }

  /**
   * A chunk from the store (verified by it) or still on its way there; a store that cannot be read only
   * costs the chunk's bytes.
   */
  async #get(hash: Uint8Array): Promise<Uint8Array | undefined> {
    const pending = this.#filler.pending(hash);
    if (pending) return pending;
    try {
      return await this.store.get(hash);
    } catch (err) {
      if (!this.#storeReadFailed) {
        this.log("dedupe store read failed; asking the source", { error: String(err) });
      }
      this.#storeReadFailed = true;
      return undefined;
    }
  }
}

/** Base64 of a WANT: at most 88 characters for the default limits; a longer one is refused unread. */
const MAX_WANT_BASE64_CHARS = 4096;

/**
 * The migration exchange's message for a WANT. The exchange is a stream of small JSON messages; a WANT is
 * at most 56 bytes, one per offer of up to 1 MiB of pages, so base64 in JSON costs nothing that matters
 * and keeps one reader and one format on that connection.
 */
export function wantMessage(want: Uint8Array): { type: "dedupe-want"; want: string } {
  return { type: "dedupe-want", want: want.toBase64() };
}

/** The WANT a dedupe-want message carries; throws DedupeProtocolError when it carries none. */
export function wantOf(msg: { want?: unknown }): Uint8Array {
  if (typeof msg.want !== "string" || msg.want.length > MAX_WANT_BASE64_CHARS) {
    throw new DedupeProtocolError(
      `dedupe-want carries no base64 WANT of at most ${MAX_WANT_BASE64_CHARS} characters`,
    );
  }
  try {
    return Uint8Array.fromBase64(msg.want);
  } catch {
    throw new DedupeProtocolError(`dedupe-want carries "${msg.want.slice(0, 40)}", which is not base64`);
  }
}

/** A migration's dedupe counters, as its API resource shows them. */
export interface MigrationDedupeSnapshot {
  /** Whether QEMU's stream travels deduped; when it was asked for and does not, why. */
  active: boolean;
  reason?: string;
  /** QEMU's stream bytes read so far, and the deduped stream's bytes that the transfer carries for them. */
  streamBytes: number;
  encodedBytes: number;
  /** 4 KiB pages found in QEMU's stream (deduped), and its bytes that travel as they are. */
  pages: number;
  rawBytes: number;
  /**
   * The pages' chunks: offered by hash, wanted (sent) by the destination, and not sent (in its store, or
   * repeated within the stream) among the offers it has answered.
   */
  chunksOffered: number;
  bytesOffered: number;
  chunksWanted: number;
  bytesWanted: number;
  bytesReused: number;
  /** Times the open chunk was cut early so that the destination need not hold more than a few MiB. */
  syncs: number;
  /** Where and why parsing stopped; device state at the end of the stream is the usual place. */
  passThrough?: { atByte: number; reason: string };
}

export function dedupeSnapshot(stats: EncoderStats | undefined, reason?: string): MigrationDedupeSnapshot {
  return {
    active: stats !== undefined,
    reason,
    streamBytes: stats?.streamBytes ?? 0,
    encodedBytes: stats?.encodedBytes ?? 0,
    pages: stats?.pages ?? 0,
    rawBytes: stats?.rawBytes ?? 0,
    chunksOffered: stats?.chunksOffered ?? 0,
    bytesOffered: stats?.bytesOffered ?? 0,
    chunksWanted: stats?.chunksSent ?? 0,
    bytesWanted: stats?.bytesSent ?? 0,
    bytesReused: (stats?.answeredBytes ?? 0) - (stats?.bytesSent ?? 0),
    syncs: stats?.syncs ?? 0,
    passThrough: stats?.passThrough,
  };
}
