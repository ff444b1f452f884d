/** Opens an authenticated connection to a peer's data port, over TLS when the peer's address says so. */
import { clientHandshake, type PeerIdentity } from "./handshake.ts";
import type { PeerTls } from "./tls.ts";
import { closeQuietly, type Duplex } from "./wire.ts";

export interface PeerAddress {
  host: string;
  port: number;
  /** Set: the connection runs TLS, and the peer must prove this identity (src/transport/tls.ts). */
  tls?: PeerTls;
}

/** Errors a transfer or a peer exchange ends with, each with a stable code for the API. */
export class TransferError extends Error {
  override name = "TransferError";
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

/** Told of each connection dial() opens, with its handshake's round trip (link probing, src/mode). */
export interface DialObserver {
  connected(conn: Deno.Conn, handshakeRttMs: number): void;
}

/** A connection to a peer's data port: the TCP socket itself, or the TLS session over it. */
export type PeerConn = Deno.TcpConn | Deno.TlsConn;

export function dial(
  peer: PeerAddress & { tls?: undefined },
  secret: string,
  identity: PeerIdentity,
  observer?: DialObserver,
): Promise<Deno.TcpConn>;
export function dial(
  peer: PeerAddress,
  secret: string,
  identity: PeerIdentity,
  observer?: DialObserver,
): Promise<PeerConn>;
export async function dial(
  peer: PeerAddress,
  secret: string,
  identity: PeerIdentity,
  observer?: DialObserver,
): Promise<PeerConn> {
  return (await dialPeer(peer, secret, identity, observer)).conn;
}

/** dial(), also resolving with the peer's identity: its agent id and capabilities, from the handshake. */
export async function dialPeer(
  peer: PeerAddress,
  secret: string,
  identity: PeerIdentity,
  observer?: DialObserver,
): Promise<{ conn: PeerConn; peer: PeerIdentity }> {
  let conn: Deno.TcpConn;
  try {
    conn = await Deno.connect({ hostname: peer.host, port: peer.port });
  } catch (err) {
    throw new TransferError(
      "peer_unreachable",
      `cannot reach peer at ${peer.host}:${peer.port}: ${(err as Error).message}; is its agent running?`,
    );
  }
  conn.setNoDelay(true);
  const where = `${peer.host}:${peer.port}`;
  const peerConn = peer.tls ? await startTls(conn, peer.tls, where) : conn;
  let rttMs = 0, them: PeerIdentity;
  try {
    them = await clientHandshake(
      peer.tls ? peerConn : refusingTlsAnswer(conn, where),
      secret,
      identity,
      (ms) => rttMs = ms,
    );
    if (peer.tls && them.agentId !== peer.tls.name) {
      throw new TransferError(
        "tls_failed",
        `peer ${where} holds the certificate of "${peer.tls.name}" but says it is agent "${them.agentId}"; ` +
          `give each agent its own certificate`,
      );
    }
  } catch (err) {
    closeQuietly(peerConn);
    throw err;
  }
  observer?.connected(peerConn, rttMs);
  return { conn: peerConn, peer: them };
}

/** TLS over a connected socket, checking the peer's certificate against the cluster CA and its name. */
async function startTls(conn: Deno.TcpConn, tls: PeerTls, where: string): Promise<Deno.TlsConn> {
  let tlsConn: Deno.TlsConn | undefined;
  try {
    // startTls, not connectTls: the certificate must carry the peer's agent id, not the address dialled.
    const { localAddr, remoteAddr } = conn;
    tlsConn = await Deno.startTls(conn, { hostname: tls.name, caCerts: [tls.caPem] });
    // Deno 2.9's startTls connection reports its addresses without `transport`; TCP_INFO lookups need
    // it, so it reports the socket's own.
    Object.defineProperties(tlsConn, { localAddr: { value: localAddr }, remoteAddr: { value: remoteAddr } });
    await tlsConn.handshake();
    return tlsConn;
  } catch (err) {
    closeQuietly(tlsConn ?? conn); // startTls took the socket over, if it got that far
    const msg = (err as Error).message;
    const hint = /UnknownIssuer|BadSignature/.test(msg)
      ? "its certificate is not signed by this agent's tls.ca: give both agents certificates from one CA"
      : /not valid for name/.test(msg)
      ? `its certificate is not made out to "${tls.name}": is ${where} the address of agent "${tls.name}"?`
      : /Expired|NotValidYet/.test(msg)
      ? "its certificate is out of date: make it a new one"
      : `it may not speak TLS: set tls.mode "on" or "auto" on "${tls.name}"`;
    throw new TransferError("tls_failed", `TLS with peer "${tls.name}" at ${where} failed: ${msg}; ${hint}`);
  }
}

/**
 * The plain connection, except that a TLS record as the answer (an alert, from a TLS-only data port) fails
 * with the reason. No control message starts like one: its length prefix would be 64 KiB or more.
 */
function refusingTlsAnswer(conn: Deno.TcpConn, where: string): Duplex {
  let first = true;
  return {
    read: async (p) => {
      const n = await conn.read(p);
      if (first && n !== null) {
        first = false;
        // A record header: content type 0x14..0x17, then version 3.1..3.4 (TLS 1.0..1.3).
        if (n >= 3 && p[0] >= 0x14 && p[0] <= 0x17 && p[1] === 0x03 && p[2] >= 0x01 && p[2] <= 0x04) {
          throw new TransferError(
            "tls_required",
            `peer ${where} answered with TLS: its data port takes TLS only; set tls.mode "on" (or "auto" ` +
              `with it in tls.peers), tls.ca, tls.cert and tls.key on this agent`,
          );
        }
      }
      return n;
    },
    write: (p) => conn.write(p),
    close: () => conn.close(),
  };
}
