/** The agent's transfers, outgoing and incoming: start, look up, follow, cancel. Bounded history. */
import { CODEC_BIAS, type CodecBias, type CodecSetting } from "../encoding/codec_policy.ts";
import type { LinkHooks } from "../mode/links.ts";
import { TransferProgress, type TransferSnapshot } from "../obs/progress.ts";
import type { PeerIdentity } from "../transport/handshake.ts";
import type { AgentTls } from "../transport/tls.ts";
import { basename } from "node:path";
import { FileSource } from "../transport/chunk_source.ts";
import { FileHashCache, type SendBase } from "../transport/delta_base.ts";
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
  /** How "auto" weighs CPU against wire bytes: the link's mode. */
  codecBias?: CodecBias;
  chunkBytes?: number;
  overwrite?: boolean;
  maxBytesPerSec?: number;
  /**
   * An older version of the source that the peer holds at the destination (a path inside the roots): the
   * chunks then travel as page deltas against it, if the peer's file has the same content hash.
   */
  base?: string;
}

export class UnknownPeerError extends Error {
  override name = "UnknownPeerError";
}

export class TransferService {
  readonly #records = new Map<string, TransferProgress>();
  readonly #outgoing = new Map<string, { transfer: OutgoingTransfer; done: Promise<void> }>();
  /** Hashes of bases sent against, so the same base is read once while it stays unchanged. */
  readonly #hashes = new FileHashCache();

  constructor(
    readonly config: AgentConfig,
    readonly roots: Roots,
    readonly identity: PeerIdentity,
    /** Link probing: the peer's mode picks the stream count, and the transfer feeds the measurements. */
    readonly links?: LinkHooks,
    /** Which peers are reached over TLS, and how their certificates are checked; plain TCP without it. */
    readonly tls?: AgentTls,
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
    return {
      ...splitHostPort(address),
      tls: this.tls?.forPeer(peer, Object.hasOwn(this.config.peers, peer)),
    };
  }

  /** Validates, connects and gets the peer's acceptance; then the data moves in the background. */
  async start(req: TransferRequest): Promise<TransferSnapshot> {
    const peer = this.resolvePeer(req.peer);
    const source = await this.roots.source(req.source);
    const base = req.base === undefined ? undefined : await this.#base(req.base);
    const t = this.config.transfer;
    const id = crypto.randomUUID();
    // The link's mode fills in what the request leaves open: beyond the datacenter the link, not the
    // CPU, is the limit, so the codec policy runs with the internet bias.
    const mode = this.links?.parametersFor(req.peer);
    const streams = req.streams ?? mode?.streams.count ?? t.streams;
    const codec = req.codec ?? (mode && mode.mode !== "datacenter" ? "auto" : t.codec);
    const codecBias = req.codecBias ?? mode?.codecBias ?? "datacenter";
    // The mode's chunk fits its stream count into a memory budget; without a mode, the bias's own.
    const chunkBytes = req.chunkBytes ?? mode?.chunkBytes ??
      (codec === "auto" ? CODEC_BIAS[codecBias].chunkBytes : undefined) ?? t.chunkBytes;
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
            base: base && { hash: base.hash, sizeBytes: base.sizeBytes },
          },
          streams,
          chunkBytes,
          codec,
          codecBias,
          linkBytesPerSecHint: mode?.streams.linkBytesPerSec,
          transferWindowBytes: mode?.streams.transferWindowBytes,
          maxRetries: t.maxRetries,
          stallTimeoutMs: t.stallTimeoutMs,
          maxBytesPerSec: req.maxBytesPerSec,
          base,
          secret: this.config.secret,
          identity: this.identity,
          observer: this.links?.observer(req.peer),
        },
        fileSource,
        progress,
      );
    } catch (err) {
      fileSource.close();
      throw err;
    }
    this.#add(progress);
    this.links?.transferStarted(req.peer, progress);
    progress.forecast = () => this.links?.forecast(req.peer);
    const done = transfer.run().finally(() => this.#outgoing.delete(id));
    this.#outgoing.set(id, { transfer, done });
    return progress.snapshot();
  }

  /** The base file inside the roots, with its content hash (cached while the file is unchanged). */
  async #base(path: string): Promise<SendBase> {
    const file = await this.roots.source(path);
    return { path: file.path, ...await this.#hashes.hash(file.path) };
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
