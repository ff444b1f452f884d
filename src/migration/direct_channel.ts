/**
 * The direct channel: a migration stream that QEMU writes straight into an authenticated agent connection.
 *
 * Carried over the agents' streams (service.ts), every byte of QEMU's stream crosses two more sockets and
 * two agent processes: unix socket → source agent → N TCP streams → destination agent → unix socket. That
 * is what encoding, dedupe, TLS and multifd mapping need, but where none of them is wanted (a datacenter
 * link, no dedupe) it only costs time: on a 2-core host the copies take the cores that QEMU's migration
 * thread and the guest need (1.5× QEMU's own migration time on loopback, bench/migration_vs_qemu.ts).
 *
 * So the source agent opens one more connection to the destination's data port, authenticated by the same
 * handshake as every other (`migrate-channel {migrationId}`), and each agent hands its end of that TCP
 * socket to its own QEMU (ffi/qmp_fd.ts: getfd, then `migrate-incoming fd:` on the destination and
 * `migrate fd:` on the source). The destination answers `channel-ready` only once its QEMU reads the
 * socket, and the source hands its end over only after that, so no byte of QEMU's stream is ever read
 * by an agent. As with libvirt's native (untunnelled) migration, QEMU's bandwidth estimate is then TCP's
 * own, and a broken connection fails QEMU's migration, which the state machine rolls back as before.
 *
 * Once QEMU holds the socket and the agent has said its last word on it, the agent detaches its own
 * descriptor (ffi/qmp_fd.ts detachTcp) and closes its connection object, which leaves QEMU's socket alone.
 *
 * The socket buffers are sized to the link (channelBufferBytes), not left to the kernel's autotuning: QEMU
 * counts a byte as sent once the socket takes it, and with megabytes queued in the buffers of a fast link
 * its bandwidth estimate runs high, so it switches over with more left than its downtime limit allows, and
 * the destination still has the queue to read while the guest is paused. A unix socket, as in QEMU's own
 * migration on one host, queues about 200 KiB.
 *
 * Only plain TCP: the bytes of a TLS session are not QEMU's to write.
 */
import { detachTcp, passTcpToQemu } from "../../ffi/qmp_fd.ts";
import { setSocketBuffers } from "../../ffi/tcp_info.ts";
import type { PeerAddress } from "../transport/dial.ts";
import { dial } from "../transport/dial.ts";
import { RefusedError } from "../transport/chunk_sink.ts";
import type { PeerIdentity } from "../transport/handshake.ts";
import { type DataConn, isPlainTcp } from "../transport/tls.ts";
import { closeQuietly, expectMessage, sendMessage } from "../transport/wire.ts";
import type { ChannelMessage } from "./messages.ts";

/** The name both agents give the socket inside their QEMU (QEMU's `fd:` URI names it). */
const FD_NAME = "dwcp-migration";

/** Bounds of a direct channel's socket buffers. */
export const MIN_CHANNEL_BUFFER_BYTES = 256 * 1024;
export const MAX_CHANNEL_BUFFER_BYTES = 16 * 1024 * 1024;

/**
 * The socket buffer for each end of a direct channel: twice the bandwidth-delay product, so that the link
 * stays full through a round trip of acknowledgements, within the bounds above.
 */
export function channelBufferBytes(link: { linkBytesPerSec: number; rttMs: number } | undefined): number {
  const bdp = link ? link.linkBytesPerSec * link.rttMs / 1000 : 0;
  return withinBufferBounds(2 * bdp);
}

const withinBufferBounds = (bytes: number) =>
  Math.round(Math.min(MAX_CHANNEL_BUFFER_BYTES, Math.max(MIN_CHANNEL_BUFFER_BYTES, bytes)));

/** Why a migration cannot take the direct channel, or undefined when it can. */
export function directChannelBlocker(opts: {
  dedupe: boolean;
  postcopy: boolean;
  multifdChannels: number;
  tls: boolean;
}): string | undefined {
  if (opts.tls) return "the peer's connections run TLS, and QEMU would write its stream unencrypted";
  if (opts.dedupe) return "dedupe re-encodes QEMU's stream in the agents";
  if (opts.postcopy) return "postcopy's return path is carried by the agents";
  if (opts.multifdChannels > 0) return "QEMU 7.2 cannot open multifd channels on an fd: migration";
  return undefined;
}

/** Source side: an authenticated connection the destination's QEMU already reads, handed to the source QEMU. */
export async function startDirectSource(opts: {
  peer: PeerAddress;
  secret: string;
  identity: PeerIdentity;
  migrationId: string;
  /** The source VM's second QMP monitor (VmInfo.fdMonitorSocket). */
  fdMonitorSocket: string;
  /** channelBufferBytes of the link. */
  bufferBytes: number;
}): Promise<void> {
  if (opts.peer.tls) throw new TypeError("a direct migration channel is plain TCP; this peer runs TLS");
  const conn = await dial({ ...opts.peer, tls: undefined }, opts.secret, opts.identity);
  try {
    await sendMessage(
      conn,
      {
        type: "migrate-channel",
        migrationId: opts.migrationId,
        bufferBytes: opts.bufferBytes,
      } satisfies ChannelMessage,
    );
    await expectMessage(conn, "channel-ready");
    setSocketBuffers(conn, { send: opts.bufferBytes });
    await passTcpToQemu(opts.fdMonitorSocket, conn, FD_NAME, {
      execute: "migrate",
      arguments: { uri: `fd:${FD_NAME}` },
    });
    detachTcp(conn);
  } finally {
    closeQuietly(conn);
  }
}

/** A destination's prepared direct channels, by migration, until the source connects. */
export class DirectChannels {
  readonly #waiting = new Map<string, { agentId: string; fdMonitorSocket: string }>();

  /** Expects the channel of this migration from this agent, for the incoming VM's QEMU. Returns the withdrawal. */
  expect(migrationId: string, agentId: string, fdMonitorSocket: string): () => void {
    this.#waiting.set(migrationId, { agentId, fdMonitorSocket });
    return () => this.#waiting.delete(migrationId);
  }

  /** The data port's handler for `migrate-channel`. */
  handler() {
    return async (conn: DataConn, first: { type: string }, peer: PeerIdentity): Promise<void> => {
      const msg = first as ChannelMessage;
      const id = String(msg.migrationId);
      const waiting = this.#waiting.get(id);
      if (!waiting || waiting.agentId !== peer.agentId) {
        throw new RefusedError(
          "unknown_migration",
          `no migration ${id} from agent "${peer.agentId}" waits for a direct channel here`,
        );
      }
      if (!isPlainTcp(conn)) {
        throw new RefusedError("invalid_request", "a direct migration channel must be plain TCP, not TLS");
      }
      this.#waiting.delete(id);
      const bufferBytes = Number(msg.bufferBytes);
      try {
        if (Number.isFinite(bufferBytes)) {
          setSocketBuffers(conn, { receive: withinBufferBounds(bufferBytes) });
        }
        await passTcpToQemu(waiting.fdMonitorSocket, conn, FD_NAME, {
          execute: "migrate-incoming",
          arguments: { uri: `fd:${FD_NAME}` },
        });
      } catch (err) {
        throw new RefusedError(
          "direct_channel_failed",
          `the destination could not hand the channel to its QEMU: ${(err as Error).message}`,
        );
      }
      await sendMessage(conn, { type: "channel-ready" });
      detachTcp(conn); // the data port closes the connection when the handler returns
    };
  }
}
