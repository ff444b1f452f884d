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
 */
import type { VmSpec } from "../vm/spec.ts";

export interface PrepareMessage {
  type: "migrate-prepare";
  migrationId: string;
  vm: VmSpec;
}

export interface PreparedMessage {
  type: "prepared";
  sink: string;
}

export interface RunningMessage {
  type: "running";
}

export interface AbortMessage {
  type: "abort";
  reason: string;
}
