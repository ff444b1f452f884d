/**
 * The migration exchange between two agents, on its own authenticated connection to the destination's
 * data port (docs/wire-format.md §5). The QEMU migration stream itself travels as a stream transfer
 * into the sink the destination names in `prepared`.
 *
 *   source → dest  migrate-prepare {migrationId, vm}     dest starts the incoming VM and a sink
 *   dest → source  prepared {sink}
 *   dest → source  running                                the migrated guest runs on the destination
 *   source → dest  finish                                 the source VM is gone: the guest is yours
 *   dest → source  finished
 *   source → dest  abort {reason}                         stop the incoming VM (any time before finish)
 *   dest → source  aborted
 *
 * With dedupe (`dedupe: true` in migrate-prepare, `dedupe: true` in prepared when the destination keeps a
 * chunk store) the stream transfer carries QEMU's stream re-encoded (src/dedupe/migration_stream.ts), and
 *   dest → source  dedupe-want {want}                     a WANT of the dedupe exchange, base64
 *
 * With postcopy (`postcopy: true` in migrate-prepare, confirmed by `postcopy: true` in prepared once the
 * incoming QEMU took the postcopy-ram and return-path capabilities), QEMU's return path travels back here:
 *   dest → source  return-path {data}                     bytes the incoming QEMU wrote, base64
 *   dest → source  incoming-completed                      the incoming QEMU holds every page
 *
 * With multifd (`multifdChannels: K` in migrate-prepare), `prepared` names one sink per multifd channel in
 * `channels`; each of QEMU's K + 1 connections travels as its own stream transfer.
 *
 * With the direct channel (`direct: true` in migrate-prepare, confirmed by `direct: true` in prepared, which
 * then names no sink), QEMU's stream travels on a connection of its own that both agents hand to their
 * QEMU (direct_channel.ts), opened by the source on the destination's data port:
 *   source → dest  migrate-channel {migrationId, bufferBytes}   first message after the handshake
 *   dest → source  channel-ready                          the incoming QEMU reads this socket now
 */
import type { VmSpec } from "../vm/spec.ts";

export interface PrepareMessage {
  type: "migrate-prepare";
  migrationId: string;
  vm: VmSpec;
  /** Asks for the stream deduped against the destination's chunk store. */
  dedupe?: boolean;
  /** Asks for postcopy: the destination sets postcopy-ram and return-path before migrate-incoming. */
  postcopy?: boolean;
  /** QEMU multifd channels besides the main one; 0 or absent: one channel. */
  multifdChannels?: number;
  /** Asks for the direct channel; only without dedupe, postcopy and multifd. */
  direct?: boolean;
}

export interface PreparedMessage {
  type: "prepared";
  /** The stream sink for QEMU's stream (main channel); empty with the direct channel. */
  sink: string;
  /** The destination waits for the direct channel; absent or false: QEMU's stream goes to `sink`. */
  direct?: boolean;
  /** The sink takes the deduped stream; absent or false: QEMU's stream as it is. */
  dedupe?: boolean;
  /** The incoming QEMU is set for postcopy and this agent carries its return path. */
  postcopy?: boolean;
  /** With multifd: the sinks for QEMU's channels 1..K, in order (`sink` takes the main channel). */
  channels?: string[];
}

/** Opens the direct channel of a prepared migration (the connection's first message). */
export interface ChannelMessage {
  type: "migrate-channel";
  migrationId: string;
  /** The socket buffer each end sets (direct_channel.ts channelBufferBytes); absent: the kernel's own. */
  bufferBytes?: number;
}

/** Bytes the incoming QEMU wrote on its migration socket (its return path), base64. */
export interface ReturnPathMessage {
  type: "return-path";
  data: string;
}

/**
 * Return-path bytes per message: QEMU's return-path messages are a few to a few dozen bytes (a page
 * request is 20 to 40); base64 of this much stays well under the exchange's 64 KiB message limit.
 */
export const RETURN_PATH_MAX_BYTES = 32 * 1024;

/** A WANT (docs/wire-format.md §6), base64: at most 56 bytes, one per offer of up to 1 MiB of pages. */
export interface DedupeWantMessage {
  type: "dedupe-want";
  want: string;
}

export interface RunningMessage {
  type: "running";
}

export interface AbortMessage {
  type: "abort";
  reason: string;
}
