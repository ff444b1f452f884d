/**
 * The destination side of a live migration: started by a `migrate-prepare` exchange on the data port.
 * Starts the incoming VM from the source's spec, has QEMU listen for the migration stream, connects that
 * socket to a named stream sink, and reports when the migrated guest runs. The incoming VM is stopped
 * unless the exchange reaches `finish`, or the guest already runs here when the source goes silent (the
 * source then never resumes its paused copy, so this one is the only one).
 */
import { join } from "node:path";
import type { Logger } from "../obs/log.ts";
import type { PeerIdentity } from "../transport/handshake.ts";
import { RefusedError } from "../transport/chunk_sink.ts";
import type { SinkTable } from "../transport/sink_table.ts";
import { closeQuietly, receiveMessage, sendMessage } from "../transport/wire.ts";
import type { VmManager } from "../vm/manager.ts";
import { confineVmSpec } from "../vm/confine.ts";
import { parseVmSpec } from "../vm/spec.ts";
import type { AbortMessage, PreparedMessage, PrepareMessage } from "./messages.ts";
import type { Roots } from "../agent/roots.ts";

/** How often the destination asks QEMU whether the migrated guest runs yet. */
const RUNNING_POLL_MS = 5;

async function connectUnix(path: string, timeoutMs: number): Promise<Deno.UnixConn> {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    try {
      return await Deno.connect({ transport: "unix", path });
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

export interface IncomingDeps {
  vms: VmManager;
  sinks: SinkTable;
  roots: Roots;
  log: Logger;
}

export function incomingMigrationHandler(deps: IncomingDeps) {
  return async (conn: Deno.TcpConn, first: { type: string }, peer: PeerIdentity): Promise<void> => {
    const msg = first as PrepareMessage;
    const spec = await confineVmSpec(deps.roots, parseVmSpec(msg.vm));
    const running = (name: string) => deps.vms.list().some((v) => v.name === name && v.state !== "stopped");
    if (running(spec.name)) {
      throw new RefusedError("vm_exists", `a VM named "${spec.name}" already exists on this agent`);
    }
    const sinkName = `migration-${String(msg.migrationId).slice(0, 36)}`;
    deps.log("incoming migration", { vm: spec.name, from: peer.agentId, migration: msg.migrationId });
    const vm = await deps.vms.start(spec, { incoming: true });
    let keep = false;
    let withdraw = () => {};
    try {
      const socket = join(vm.runDir, "incoming.sock");
      await deps.vms.qmp(spec.name).migrateIncoming(`unix:${socket}`);
      // QEMU listens there for the migration stream; the sink writes what the streams deliver into it.
      const toQemu = await connectUnix(socket, 10_000);
      withdraw = deps.sinks.register(sinkName, toQemu);
      await sendMessage(conn, { type: "prepared", sink: sinkName } satisfies PreparedMessage);

      let guestRuns = false;
      const watch = (async () => {
        const qmp = deps.vms.qmp(spec.name);
        while (!guestRuns) {
          const status = await qmp.queryStatus();
          if (status.running) {
            guestRuns = true;
            await sendMessage(conn, { type: "running" });
            return;
          }
          await new Promise((r) => setTimeout(r, RUNNING_POLL_MS));
        }
      })();
      watch.catch(() => closeQuietly(conn)); // QEMU gone: the source sees the exchange end and rolls back

      while (true) {
        let next: { type: string };
        try {
          next = await receiveMessage<{ type: string }>(conn);
        } catch {
          keep = guestRuns; // the source went silent: keep the guest only if it already runs here
          if (keep) {
            deps.log("migration source went silent after the guest ran here; keeping it", { vm: spec.name });
          }
          return;
        }
        if (next.type === "finish" && guestRuns) {
          keep = true;
          await sendMessage(conn, { type: "finished" });
          return;
        }
        if (next.type === "abort") {
          deps.log("incoming migration aborted", { vm: spec.name, reason: (next as AbortMessage).reason });
          await deps.vms.stop(spec.name);
          await sendMessage(conn, { type: "aborted" });
          return;
        }
      }
    } finally {
      withdraw();
      if (!keep && running(spec.name)) await deps.vms.stop(spec.name).catch(() => {});
    }
  };
}
