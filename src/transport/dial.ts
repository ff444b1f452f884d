/** Opens an authenticated connection to a peer's data port. */
import { clientHandshake, type PeerIdentity } from "./handshake.ts";
import { closeQuietly } from "./wire.ts";

export interface PeerAddress {
  host: string;
  port: number;
}

/** Errors a transfer or a peer exchange ends with, each with a stable code for the API. */
export class TransferError extends Error {
  override name = "TransferError";
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

export async function dial(peer: PeerAddress, secret: string, identity: PeerIdentity): Promise<Deno.TcpConn> {
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
  try {
    await clientHandshake(conn, secret, identity);
  } catch (err) {
    closeQuietly(conn);
    throw err;
  }
  return conn;
}
