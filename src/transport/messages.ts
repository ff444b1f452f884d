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
