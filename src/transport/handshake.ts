/**
 * AMST session handshake: version check, capability exchange, and mutual challenge-response
 * authentication with the cluster's shared secret (HMAC-SHA256 over both nonces). Every connection,
 * control or stream, runs it before anything else, so a stranger cannot attach to a transfer.
 *
 *   client → server  preamble "DWCP" u16 version u16 0, then {type:"hello", agentId, capabilities, nonce}
 *   server → client  {type:"challenge", agentId, capabilities, nonce, proof: H("server", cNonce, sNonce)}
 *   client → server  {type:"auth", proof: H("client", sNonce, cNonce)}
 *   server → client  {type:"welcome"} or {type:"error", code:"auth_failed"}
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import {
  type Duplex,
  expectMessage,
  PeerError,
  ProtocolError,
  readFull,
  sendMessage,
  writeAll,
} from "./wire.ts";

export const PROTOCOL_VERSION = 1;
const MAGIC = [0x44, 0x57, 0x43, 0x50]; // "DWCP"

export interface Capabilities {
  codecs: string[];
  rdma: boolean;
  /** Answers `rate-probe` connections (wire-format §2.1); absent in agents that predate them. */
  rateProbe?: boolean;
}

export interface PeerIdentity {
  agentId: string;
  capabilities: Capabilities;
}

interface Hello {
  type: "hello";
  agentId: string;
  capabilities: Capabilities;
  nonce: string;
}
interface Challenge {
  type: "challenge";
  agentId: string;
  capabilities: Capabilities;
  nonce: string;
  proof: string;
}
interface Auth {
  type: "auth";
  proof: string;
}

function proof(secret: string, role: "client" | "server", first: string, second: string): string {
  return createHmac("sha256", secret).update(`dwcp-v${PROTOCOL_VERSION} ${role} ${first} ${second}`).digest(
    "hex",
  );
}

function sameProof(a: string, b: string): boolean {
  const x = Buffer.from(a, "hex"), y = Buffer.from(b, "hex");
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
}

function nonce(): string {
  return randomBytes(32).toString("hex");
}

/**
 * Client side. Resolves with the server's identity; throws PeerError("auth_failed") on a wrong secret.
 * onRoundTrip gets the hello → challenge round trip in ms, a free RTT sample for link probing.
 */
export async function clientHandshake(
  conn: Duplex,
  secret: string,
  me: PeerIdentity,
  onRoundTrip?: (rttMs: number) => void,
): Promise<PeerIdentity> {
  const preamble = new Uint8Array(8);
  preamble.set(MAGIC);
  new DataView(preamble.buffer).setUint16(4, PROTOCOL_VERSION, true);
  await writeAll(conn, preamble);
  const cNonce = nonce();
  const sentAtMs = performance.now();
  await sendMessage(conn, { type: "hello", ...me, nonce: cNonce } satisfies Hello);
  const ch = await expectMessage<Challenge>(conn, "challenge");
  onRoundTrip?.(performance.now() - sentAtMs);
  if (!sameProof(ch.proof, proof(secret, "server", cNonce, ch.nonce))) {
    // Tell the server too, so its operator sees the mismatch in its log.
    await sendMessage(conn, {
      type: "error",
      code: "auth_failed",
      message: "the peers hold different secrets",
    })
      .catch(() => {});
    throw new PeerError(
      "auth_failed",
      `authentication failed: peer "${ch.agentId}" does not hold this agent's secret; give both agents the same \`secret\``,
    );
  }
  await sendMessage(conn, { type: "auth", proof: proof(secret, "client", ch.nonce, cNonce) } satisfies Auth);
  await expectMessage(conn, "welcome");
  return { agentId: ch.agentId, capabilities: ch.capabilities };
}

/** Server side. Resolves with the client's identity, or sends an error and throws. */
export async function serverHandshake(conn: Duplex, secret: string, me: PeerIdentity): Promise<PeerIdentity> {
  const preamble = new Uint8Array(8);
  await readFull(conn, preamble);
  if (MAGIC.some((b, i) => preamble[i] !== b)) throw new ProtocolError("not a DWCP connection (bad magic)");
  const version = new DataView(preamble.buffer).getUint16(4, true);
  if (version !== PROTOCOL_VERSION) {
    await sendMessage(conn, {
      type: "error",
      code: "version_mismatch",
      message:
        `this agent speaks DWCP protocol ${PROTOCOL_VERSION}, the peer ${version}; run the same dwcp version`,
    });
    throw new ProtocolError(`peer speaks protocol version ${version}, this agent ${PROTOCOL_VERSION}`);
  }
  const hello = await expectMessage<Hello>(conn, "hello");
  const sNonce = nonce();
  await sendMessage(
    conn,
    {
      type: "challenge",
      ...me,
      nonce: sNonce,
      proof: proof(secret, "server", String(hello.nonce), sNonce),
    } satisfies Challenge,
  );
  const auth = await expectMessage<Auth>(conn, "auth");
  if (!sameProof(String(auth.proof), proof(secret, "client", sNonce, String(hello.nonce)))) {
    await sendMessage(conn, {
      type: "error",
      code: "auth_failed",
      message:
        "authentication failed: the agents hold different secrets; give both the same `secret` in their config",
    });
    throw new PeerError("auth_failed", `agent "${hello.agentId}" failed authentication (wrong secret)`);
  }
  await sendMessage(conn, { type: "welcome" });
  return { agentId: String(hello.agentId), capabilities: hello.capabilities };
}
