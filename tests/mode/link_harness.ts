/**
 * For the link tests: a peer's data port on loopback (the real server handshake, then a sink), and
 * PeerLinks with real probes and TCP_INFO on a clock the test moves.
 */
import { setCongestionControl, tcpInfo } from "../../ffi/tcp_info.ts";
import { splitHostPort } from "../../src/agent/config.ts";
import { dialProbe, PeerLinks, type PeerLinksDeps, readHostFacts } from "../../src/mode/links.ts";
import { serverHandshake } from "../../src/transport/handshake.ts";

export const SECRET = "links-test-secret-0123456789";
export const ME = { agentId: "a", capabilities: { codecs: ["none"], rdma: false } };
export const PROBE_INTERVAL_MS = 10_000;
const PEER = { agentId: "b", capabilities: { codecs: ["none"], rdma: false } };

/** A peer's data port: authenticates each connection, then reads and drops whatever comes until it closes. */
export function startPeer(): {
  address: string;
  received(bytes: number): Promise<void>;
  close(): Promise<void>;
} {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  let total = 0;
  const waiters: { bytes: number; resolve(): void }[] = [];
  const serving = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      (async () => {
        try {
          await serverHandshake(conn, SECRET, PEER);
          const buf = new Uint8Array(64 * 1024);
          for (let n; (n = await conn.read(buf)) !== null;) {
            total += n;
            for (const w of waiters.filter((w) => total >= w.bytes)) w.resolve();
          }
        } catch { /* the client went away */ }
        conns.delete(conn);
        try {
          conn.close();
        } catch { /* already closed */ }
      })();
    }
  })();
  return {
    address: `127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    received: (bytes) =>
      total >= bytes ? Promise.resolve() : new Promise((resolve) => waiters.push({ bytes, resolve })),
    async close() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await serving;
    },
  };
}

/** A port nothing listens on. */
export function closedAddress(): string {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = l.addr as Deno.NetAddr;
  l.close();
  return `127.0.0.1:${port}`;
}

export interface Harness {
  links: PeerLinks;
  logs: { msg: string; fields?: Record<string, unknown> }[];
  clock: { ms: number };
}

/** PeerLinks over real probes and TCP_INFO, with the clock in the test's hand and no timer. */
export function harness(peers: Record<string, string>, overrides: Partial<PeerLinksDeps> = {}): Harness {
  const clock = { ms: 1_700_000_000_000 };
  const logs: Harness["logs"] = [];
  const links = new PeerLinks({
    peers,
    pins: {},
    timing: { minDwellMs: 60_000, confirmMs: 10_000 },
    probeIntervalMs: PROBE_INTERVAL_MS,
    host: readHostFacts(),
    defaults: { streams: 4, chunkBytes: 1024 * 1024, windowChunks: 4 },
    probe: dialProbe(SECRET, ME, tcpInfo, (peer) => splitHostPort(peers[peer] ?? peer)),
    tcpInfo,
    setCongestion: setCongestionControl,
    now: () => clock.ms,
    every: () => () => {},
    log: (msg, fields) => logs.push({ msg, fields }),
    ...overrides,
  });
  return { links, logs, clock };
}
