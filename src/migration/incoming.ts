/**
 * The destination side of a live migration: started by a `migrate-prepare` exchange on the data port.
 * Starts the incoming VM from the source's spec, has QEMU listen for the migration stream, connects that
 * socket to a named stream sink, and reports when the migrated guest runs. The incoming VM is stopped
 * unless the exchange reaches `finish`, or the guest already runs here when the source goes silent (the
 * source then never resumes its paused copy, so this one is the only one).
 *
 * With dedupe asked for and a chunk store kept here, a DedupeSink stands between the stream sink and
 * QEMU's socket: it rebuilds QEMU's exact stream from the deduped one and sends its WANTs back on the
 * exchange.
 *
 * With postcopy the incoming QEMU writes back on its migration socket (the return path: page requests,
 * acknowledgements); this side reads them and sends them to the source on the exchange, and reports
 * `incoming-completed` once QEMU holds every page, as the guest runs here before that. With multifd the
 * incoming QEMU takes one socket per channel, connected main channel first (QEMU 7.2 takes the first
 * connection as the main channel), each fed by its own stream sink.
 *
 * With the direct channel (direct_channel.ts) there is no sink: the incoming QEMU reads a connection of its
 * own, which the source opens once `prepared` says the destination expects it.
 */
import { join } from "node:path";
import type { Logger } from "../obs/log.ts";
import type { PeerIdentity } from "../transport/handshake.ts";
import { RefusedError } from "../transport/chunk_sink.ts";
import type { SinkTable } from "../transport/sink_table.ts";
import { closeQuietly, type Duplex, receiveMessage, sendMessage } from "../transport/wire.ts";
import { type DataConn, isPlainTcp } from "../transport/tls.ts";
import type { VmManager } from "../vm/manager.ts";
import { confineVmSpec } from "../vm/confine.ts";
import { parseVmSpec } from "../vm/spec.ts";
import {
  type AbortMessage,
  type PreparedMessage,
  type PrepareMessage,
  RETURN_PATH_MAX_BYTES,
  type ReturnPathMessage,
} from "./messages.ts";
import type { Roots } from "../agent/roots.ts";
import type { ChunkStore } from "../dedupe/chunk_store.ts";
import { DedupeSink, wantMessage } from "../dedupe/migration_io.ts";
import type { QmpClient } from "./qmp.ts";
import { directChannelBlocker, type DirectChannels } from "./direct_channel.ts";

/**
 * How often the destination asks QEMU whether the migrated guest runs yet, besides waiting for its RESUME
 * event: a backstop only. Polling fast instead (it was 5 ms) takes the incoming QEMU's main loop, where it
 * loads the stream, 200 times a second, and a core of a 2-core host with it.
 */
const RUNNING_POLL_MS = 500;
/** How often, under postcopy, the destination asks QEMU whether it holds every page yet. */
const POSTCOPY_POLL_MS = 50;
/** Most multifd channels a source may ask for: each is a QEMU thread and a stream transfer. */
export const MAX_MULTIFD_CHANNELS = 16;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

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
  /** The agent's chunk store, opened on first use; absent when it keeps none (dedupe.storeBytes 0). */
  dedupeStore?: () => Promise<ChunkStore>;
  /** Where direct channels are expected; absent: every stream is carried by the agents. */
  channels?: DirectChannels;
}

/** Sends on conn one message after another: the dedupe sink's WANTs and the handler's replies share it. */
function serialSender(conn: Duplex): (msg: object) => Promise<void> {
  let chain = Promise.resolve();
  return (msg) => {
    const sent = chain.then(() => sendMessage(conn, msg));
    chain = sent.catch(() => {});
    return sent;
  };
}

/** The sink for a deduped stream, or undefined (QEMU's stream as it is) when no chunk store is at hand. */
async function dedupeSink(
  deps: IncomingDeps,
  toQemu: Duplex,
  send: (msg: object) => Promise<void>,
): Promise<DedupeSink | undefined> {
  if (!deps.dedupeStore) return undefined;
  let store: ChunkStore;
  try {
    store = await deps.dedupeStore();
  } catch (err) {
    deps.log("dedupe store unavailable; taking the migration stream as it is", { error: String(err) });
    return undefined;
  }
  return new DedupeSink(toQemu, store, {
    sendWant: (want) => send(wantMessage(want)),
    failed: (err) => send({ type: "error", code: "dedupe_failed", message: err.message }),
  }, deps.log);
}

/**
 * Carries the incoming QEMU's return path to the source: every read goes out at once as one message,
 * since a page request holds up a vCPU of the running guest until its page arrives.
 */
async function pumpReturnPath(fromQemu: Duplex, send: (msg: object) => Promise<void>): Promise<void> {
  const buf = new Uint8Array(RETURN_PATH_MAX_BYTES);
  while (true) {
    const n = await fromQemu.read(buf);
    if (n === null) return;
    await send({ type: "return-path", data: buf.subarray(0, n).toBase64() } satisfies ReturnPathMessage);
  }
}

/** Resolves once the incoming guest runs: QEMU's RESUME event, or the status seen by the backstop poll. */
async function untilRunning(qmp: QmpClient): Promise<void> {
  const resumed = Promise.withResolvers<void>();
  const unsubscribe = qmp.on("RESUME", () => resumed.resolve());
  try {
    while (!(await qmp.queryStatus()).running) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([resumed.promise, new Promise((r) => timer = setTimeout(r, RUNNING_POLL_MS))]);
      clearTimeout(timer);
    }
  } finally {
    unsubscribe();
  }
}

function multifdChannelsOf(msg: PrepareMessage): number {
  const k = msg.multifdChannels ?? 0;
  if (!Number.isInteger(k) || k < 0 || k > MAX_MULTIFD_CHANNELS) {
    throw new RefusedError(
      "invalid_request",
      `multifdChannels ${k}: give an integer 0..${MAX_MULTIFD_CHANNELS}`,
    );
  }
  if (k > 0 && msg.postcopy === true) {
    throw new RefusedError("invalid_request", "QEMU 7.2 cannot combine postcopy with multifd channels");
  }
  return k;
}

/** Sets the incoming QEMU up for postcopy; a host without userfaultfd makes QEMU refuse. */
async function enablePostcopy(qmp: QmpClient): Promise<void> {
  try {
    await qmp.setCapabilities({ "postcopy-ram": true, "return-path": true });
  } catch (err) {
    throw new RefusedError(
      "postcopy_unsupported",
      `this destination cannot take a postcopy migration: its QEMU refused the postcopy-ram capability ` +
        `(${(err as Error).message}); postcopy needs userfaultfd on the destination host. Migrate without ` +
        `postcopy, or to a host that has it`,
    );
  }
}

export function incomingMigrationHandler(deps: IncomingDeps) {
  return async (conn: DataConn, first: { type: string }, peer: PeerIdentity): Promise<void> => {
    const msg = first as PrepareMessage;
    const spec = await confineVmSpec(deps.roots, parseVmSpec(msg.vm));
    const running = (name: string) => deps.vms.list().some((v) => v.name === name && v.state !== "stopped");
    if (running(spec.name)) {
      throw new RefusedError("vm_exists", `a VM named "${spec.name}" already exists on this agent`);
    }
    const postcopy = msg.postcopy === true;
    const multifd = multifdChannelsOf(msg);
    deps.log("incoming migration", { vm: spec.name, from: peer.agentId, migration: msg.migrationId });
    const vm = await deps.vms.start(spec, { incoming: true });
    const send = serialSender(conn);
    let keep = false;
    const withdrawals: (() => void)[] = [];
    let deduped: DedupeSink | undefined;
    try {
      const qmp = deps.vms.qmp(spec.name);
      // Capabilities go on before migrate-incoming: QEMU reads them when the stream starts.
      if (postcopy) await enablePostcopy(qmp);
      if (multifd > 0) {
        await qmp.setCapabilities({ multifd: true });
        await qmp.setParameters({ "multifd-channels": multifd });
      }
      const blocker = directChannelBlocker({
        dedupe: msg.dedupe === true,
        postcopy,
        multifdChannels: multifd,
        tls: !isPlainTcp(conn),
      });
      const direct = msg.direct === true && deps.channels !== undefined && blocker === undefined;
      if (direct) {
        withdrawals.push(deps.channels!.expect(String(msg.migrationId), peer.agentId, vm.fdMonitorSocket));
        await send({ type: "prepared", sink: "", direct: true } satisfies PreparedMessage);
      } else {
        const socket = join(vm.runDir, "incoming.sock");
        const sinkName = `migration-${String(msg.migrationId).slice(0, 36)}`;
        await qmp.migrateIncoming(`unix:${socket}`);
        // QEMU listens there for the migration stream; the sink writes what the streams deliver into it.
        const toQemu = await connectUnix(socket, 10_000);
        deduped = msg.dedupe === true ? await dedupeSink(deps, toQemu, send) : undefined;
        withdrawals.push(deps.sinks.register(sinkName, deduped ?? toQemu));
        // One after another: QEMU 7.2 accepts in order and takes the first connection as the main channel.
        const channels: string[] = [];
        for (let i = 1; i <= multifd; i++) {
          const name = `${sinkName}-channel-${i}`;
          withdrawals.push(deps.sinks.register(name, await connectUnix(socket, 10_000)));
          channels.push(name);
        }
        if (postcopy) pumpReturnPath(toQemu, send).catch(() => {}); // ends when QEMU's socket closes
        await send(
          {
            type: "prepared",
            sink: sinkName,
            dedupe: deduped !== undefined,
            ...(postcopy ? { postcopy: true } : {}),
            ...(multifd > 0 ? { channels } : {}),
          } satisfies PreparedMessage,
        );
      }

      let guestRuns = false;
      const watch = (async () => {
        await untilRunning(qmp);
        guestRuns = true;
        await send({ type: "running" });
        if (!postcopy) return;
        // Under postcopy the guest runs here before all its memory does: the source, which holds the
        // rest, may be quit only once QEMU has every page.
        while (true) {
          const { status } = await qmp.queryMigrate();
          if (status === "completed") return await send({ type: "incoming-completed" });
          if (status === "failed" || status === "postcopy-paused") {
            return await send({
              type: "error",
              code: "postcopy_failed",
              message: `the incoming QEMU's postcopy migration is ${status}`,
            });
          }
          await sleep(POSTCOPY_POLL_MS);
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
          await send({ type: "finished" });
          return;
        }
        if (next.type === "abort") {
          deps.log("incoming migration aborted", { vm: spec.name, reason: (next as AbortMessage).reason });
          await deps.vms.stop(spec.name);
          await send({ type: "aborted" });
          return;
        }
      }
    } finally {
      for (const withdraw of withdrawals) withdraw();
      if (deduped) deps.log("incoming migration deduped", { vm: spec.name, ...deduped.stats() });
      if (!keep && running(spec.name)) await deps.vms.stop(spec.name).catch(() => {});
    }
  };
}
