/** The agent's transfers, outgoing and incoming: start, look up, follow, cancel. Bounded history. */
import { AUTO_CHUNK_BYTES, type CodecSetting } from "../encoding/codec_policy.ts";
import { TransferProgress, type TransferSnapshot } from "../obs/progress.ts";
import type { PeerIdentity } from "../transport/handshake.ts";
import { basename } from "node:path";
import { FileSource } from "../transport/chunk_source.ts";
import { OutgoingTransfer, type PeerAddress } from "../transport/sender.ts";
import { type AgentConfig, isHostPort, splitHostPort } from "./config.ts";
import type { Roots } from "./roots.ts";

/** Finished transfers kept for GET after they end; the oldest are dropped first. */
const MAX_FINISHED = 256;

export interface TransferRequest {
  source: string;
  peer: string;
  destination?: string;
  streams?: number;
  codec?: CodecSetting;
  chunkBytes?: number;
  overwrite?: boolean;
  maxBytesPerSec?: number;
}

export class UnknownPeerError extends Error {
  override name = "UnknownPeerError";
}

export class TransferService {
  readonly #records = new Map<string, TransferProgress>();
  readonly #outgoing = new Map<string, { transfer: OutgoingTransfer; done: Promise<void> }>();

  constructor(
    readonly config: AgentConfig,
    readonly roots: Roots,
    readonly identity: PeerIdentity,
  ) {}

  /** A configured peer name, or a literal HOST:PORT. */
  resolvePeer(peer: string): PeerAddress {
    const address = this.config.peers[peer] ?? (isHostPort(peer) ? peer : undefined);
    if (!address) {
      const known = Object.keys(this.config.peers);
      throw new UnknownPeerError(
        `unknown peer "${peer}"; use one of the configured peers (${
          known.length ? known.join(", ") : "none"
        }) ` +
          `or HOST:PORT of a peer's data port`,
      );
    }
    return splitHostPort(address);
  }

  /** Validates, connects and gets the peer's acceptance; then the data moves in the background. */
  async start(req: TransferRequest): Promise<TransferSnapshot> {
    const peer = this.resolvePeer(req.peer);
    const source = await this.roots.source(req.source);
    const t = this.config.transfer;
    const id = crypto.randomUUID();
    const streams = req.streams ?? t.streams;
    const codec = req.codec ?? t.codec;
    const chunkBytes = req.chunkBytes ?? (codec === "auto" ? AUTO_CHUNK_BYTES : t.chunkBytes);
    const progress = new TransferProgress({
      id,
      direction: "send",
      source: source.path,
      peer: req.peer,
      destination: req.destination ?? "",
      sizeBytes: source.sizeBytes,
      codec,
      chunkBytes,
      streams,
    });
    const fileSource = await FileSource.open(source.path, source.sizeBytes, chunkBytes);
    let transfer: OutgoingTransfer;
    try {
      transfer = await OutgoingTransfer.open(
        {
          transferId: id,
          peer,
          target: {
            mode: "file",
            destination: req.destination ?? "",
            sourceName: basename(source.path),
            sizeBytes: source.sizeBytes,
            overwrite: req.overwrite ?? false,
          },
          streams,
          chunkBytes,
          codec,
          maxRetries: t.maxRetries,
          stallTimeoutMs: t.stallTimeoutMs,
          maxBytesPerSec: req.maxBytesPerSec,
          secret: this.config.secret,
          identity: this.identity,
        },
        fileSource,
        progress,
      );
    } catch (err) {
      fileSource.close();
      throw err;
    }
    this.#add(progress);
    const done = transfer.run().finally(() => this.#outgoing.delete(id));
    this.#outgoing.set(id, { transfer, done });
    return progress.snapshot();
  }

  /** Incoming transfers are registered by the data server as it accepts them. */
  addIncoming(progress: TransferProgress): void {
    this.#add(progress);
  }

  get(id: string): TransferProgress | undefined {
    return this.#records.get(id);
  }

  list(): TransferSnapshot[] {
    return [...this.#records.values()].map((p) => p.snapshot());
  }

  /**
   * Cancels an outgoing transfer and resolves once the receiver has dropped its partial file and the
   * transfer has stopped; false when it is not running here (unknown, finished or incoming).
   */
  async cancel(id: string, reason = "cancelled by request"): Promise<boolean> {
    const running = this.#outgoing.get(id);
    if (!running) return false;
    await running.transfer.cancel(reason);
    await running.done;
    return true;
  }

  /** Cancels every running outgoing transfer, for shutdown. */
  async cancelAll(): Promise<void> {
    await Promise.all([...this.#outgoing.keys()].map((id) => this.cancel(id, "the sending agent shut down")));
  }

  #add(progress: TransferProgress): void {
    this.#records.set(progress.info.id, progress);
    const finished = [...this.#records.values()].filter((p) => p.terminal);
    for (const p of finished.slice(0, Math.max(0, finished.length - MAX_FINISHED))) {
      this.#records.delete(p.info.id);
    }
  }
}
