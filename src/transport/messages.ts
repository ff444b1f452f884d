/** AMST control messages (JSON, length-prefixed; see wire.ts and docs/wire-format.md). */
import type { CodecSetting } from "../encoding/codec_policy.ts";

/** What a transfer delivers into: a file at a destination path, or a live stream into a named sink. */
export type OpenTarget =
  | {
    mode: "file";
    /** Where the file goes on the receiver: relative to its first root, or absolute inside a root. */
    destination: string;
    /** Base name of the source, used when destination names a directory. */
    sourceName: string;
    sizeBytes: number;
    overwrite: boolean;
    /**
     * An older version of the file that the receiver may hold at the destination: chunks then travel as
     * page deltas against it. A destination that is this base may be replaced without `overwrite`.
     */
    base?: BaseRef;
  }
  | {
    mode: "stream";
    /** A sink the receiver registered for this stream (a migration's incoming QEMU socket). */
    sink: string;
  };

/** First message on a control connection: asks the receiver to take a file or a stream. */
export interface OpenMessage {
  type: "open";
  transferId: string;
  chunkBytes: number;
  streams: number;
  codec: CodecSetting;
  target: OpenTarget;
}

export interface AcceptedMessage {
  type: "accepted";
  /** The receiver's resolved destination path, or the sink's name. */
  path: string;
  /** Credit per stream: the most unacknowledged chunks a stream may have in flight. */
  windowChunks: number;
  /** Present when the open named a base: whether the destination holds it. */
  base?: BaseAnswer;
}

/** A base for page deltas, named by content. */
export interface BaseRef {
  /** XXH3-128 of the file, folded over 1 MiB pieces then the byte count (delta_base.ts), 32 hex digits. */
  hash: string;
  sizeBytes: number;
}

/** The receiver's answer about a base. */
export interface BaseAnswer {
  held: boolean;
  /** What the receiver found: where it holds the base, or why it does not. */
  detail: string;
}

/** First message on a stream connection: joins an accepted transfer. */
export interface AttachMessage {
  type: "attach";
  transferId: string;
  stream: number;
}

export interface AttachedMessage {
  type: "attached";
}

/** Sender → receiver once every chunk is acknowledged; digest covers every chunk checksum in order. */
export interface CommitMessage {
  type: "commit";
  chunks: number;
  bytes: number;
  digest: string;
}

export interface CommittedMessage {
  type: "committed";
  path: string;
  bytes: number;
}

export interface CancelMessage {
  type: "cancel";
  reason: string;
}

export interface CancelledMessage {
  type: "cancelled";
}

/**
 * First message on a rate-probe connection (wire-format §2.1): `bytes` bytes follow, which the receiver
 * reads and drops. Sent only to a peer whose handshake capabilities say `rateProbe`.
 */
export interface RateProbeMessage {
  type: "rate-probe";
  bytes: number;
}

/** The receiver's answer once it read them all: the count, and its first to last byte in ms. */
export interface RateProbedMessage {
  type: "rate-probed";
  bytes: number;
  receiveMs: number;
}
