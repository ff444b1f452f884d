/**
 * A real DataServer (src/transport/receiver.ts) on a loopback port for transport tests: files go to a fresh
 * temporary root, no fsync, no exchanges; the transfers it accepts and the lines it logs are kept.
 */
import { Roots } from "../../src/agent/roots.ts";
import type { TransferProgress } from "../../src/obs/progress.ts";
import type { PeerIdentity } from "../../src/transport/handshake.ts";
import { DataServer } from "../../src/transport/receiver.ts";
import { SinkTable } from "../../src/transport/sink_table.ts";

export interface LoopbackServer {
  dir: string;
  port: number;
  incoming: TransferProgress[];
  logs: string[];
  /** Stops the server and removes its root. */
  close(): Promise<void>;
}

export async function startLoopbackServer(secret: string, identity: PeerIdentity): Promise<LoopbackServer> {
  const dir = await Deno.makeTempDir({ prefix: "dwcp-loopback-server-" });
  const incoming: TransferProgress[] = [];
  const logs: string[] = [];
  const server = new DataServer(Deno.listen({ hostname: "127.0.0.1", port: 0 }), {
    secret,
    identity,
    roots: new Roots([dir]),
    windowChunks: 4,
    fsync: false,
    sinks: new SinkTable(),
    exchanges: {},
    onIncoming: (p) => incoming.push(p),
    log: (msg, fields) => logs.push(`${msg} ${JSON.stringify(fields)}`),
  });
  const serving = server.serve();
  return {
    dir,
    port: server.addr.port,
    incoming,
    logs,
    close: async () => {
      await server.close();
      await serving;
      await Deno.remove(dir, { recursive: true });
    },
  };
}
