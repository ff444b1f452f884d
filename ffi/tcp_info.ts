/**
 * The kernel's TCP_INFO for a connection Deno opened, and its congestion control. Deno gives out no socket
 * descriptors, so the shim asks the kernel by the connection's addresses over NETLINK_SOCK_DIAG, as
 * `ss -ti` does, and finds this process's descriptor for the socket by the inode the kernel names.
 */
import { check, native } from "./library.ts";

/**
 * The shim's DWCP_ENOTFOUND: no open socket has those addresses (it closed, or is in TIME_WAIT), or, when
 * setting, none this process holds.
 */
export const ENOTFOUND = -7;

/**
 * What the kernel reports for one TCP socket. Counters are cumulative over the socket's life. A field is
 * absent when this kernel's struct tcp_info predates it.
 */
export interface TcpInfo {
  /** The kernel's TCP state (1 = established; see include/net/tcp_states.h). */
  state: number;
  /** Congestion control in use ("cubic", "bbr", ...), when the kernel reports it. */
  congestion?: string;
  /** Smoothed round-trip time and its mean deviation. */
  rttUs?: number;
  rttVarUs?: number;
  /** Least round-trip time the socket has seen (over net.ipv4.tcp_min_rtt_wlen, 5 minutes by default). */
  minRttUs?: number;
  sndCwndSegments?: number;
  sndMssBytes?: number;
  /** Retransmissions of the segment now timing out (0 when none is outstanding). */
  retransmitsNow?: number;
  totalRetransSegments?: number;
  /** Segments now presumed lost (a current count, not a total). */
  lostSegments?: number;
  segsOut?: number;
  deliveredSegments?: number;
  deliveryRateBytesPerSec?: number;
  pacingRateBytesPerSec?: number;
  bytesSent?: number;
  bytesAcked?: number;
  bytesRetrans?: number;
  /** Retransmitted segments the receiver reported as duplicates (D-SACK): spurious, not lost. */
  dsackDups?: number;
}

/** Where a connection's two ends are; Deno.Conn's localAddr and remoteAddr as they are. */
export interface TcpEndpoints {
  localAddr: Deno.Addr;
  remoteAddr: Deno.Addr;
}

const out = new Uint8Array(1024);
const utf8 = new TextDecoder();
export const cString = (text: string) => new TextEncoder().encode(text + "\0");

function netAddr(addr: Deno.Addr, which: string): Deno.NetAddr {
  if (addr.transport !== "tcp") {
    throw new TypeError(`${which} is a ${addr.transport} address; TCP_INFO exists only for TCP connections`);
  }
  return addr;
}

/** The shim's arguments naming a connection (local address and port, remote address and port), and a label. */
export function endpointArgs(conn: TcpEndpoints) {
  const local = netAddr(conn.localAddr, "localAddr");
  const remote = netAddr(conn.remoteAddr, "remoteAddr");
  return {
    args: [cString(local.hostname), local.port, cString(remote.hostname), remote.port] as const,
    label: `${local.hostname}:${local.port} → ${remote.hostname}:${remote.port}`,
  };
}

/**
 * TCP_INFO of the connection with these endpoints, read now; undefined once the connection has closed.
 * Throws a ShimError when the kernel cannot be asked (no sock_diag support) or an address is malformed.
 */
export function tcpInfo(conn: TcpEndpoints): TcpInfo | undefined {
  const { args, label } = endpointArgs(conn);
  const n = native().dwcp_tcp_info(...args, out, out.length);
  if (n === ENOTFOUND) return undefined;
  check(n, `TCP_INFO of ${label}`);
  return JSON.parse(utf8.decode(out.subarray(0, n)));
}

/**
 * Sets the congestion control ("cubic", "bbr", ...) of the connection with these endpoints; false once the
 * connection has closed. Throws a ShimError naming the algorithm and the fix when the kernel has no such
 * algorithm (status -5) or this process may not pick it (-8: only root, or CAP_NET_ADMIN, may pick one
 * outside net.ipv4.tcp_allowed_congestion_control).
 */
export function setCongestionControl(conn: TcpEndpoints, name: string): boolean {
  const { args, label } = endpointArgs(conn);
  const status = native().dwcp_tcp_set_congestion(...args, cString(name));
  if (status === ENOTFOUND) return false;
  check(status, `setting congestion control of ${label}`);
  return true;
}

/**
 * Sets the kernel's send and/or receive buffer of the connection with these endpoints (SO_SNDBUF,
 * SO_RCVBUF; the kernel doubles the value for its bookkeeping, and a value set turns its autotuning off);
 * false once the connection has closed.
 */
export function setSocketBuffers(conn: TcpEndpoints, bytes: { send?: number; receive?: number }): boolean {
  const { args, label } = endpointArgs(conn);
  const status = native().dwcp_tcp_set_buffers(...args, bytes.send ?? 0, bytes.receive ?? 0);
  if (status === ENOTFOUND) return false;
  check(status, `setting the socket buffers of ${label}`);
  return true;
}
