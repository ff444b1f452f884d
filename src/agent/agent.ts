/** Starts an agent: the data port (AMST receiver), the transfer service and the HTTP API. */
import { CODECS } from "../../ffi/codec.ts";
import { libraryVersions, onnxRuntime, rdmaDevices } from "../../ffi/system.ts";
import { createApp } from "../api/app.ts";
import { jsonLogger, type Logger } from "../obs/log.ts";
import { type PeerIdentity, PROTOCOL_VERSION } from "../transport/handshake.ts";
import { DataServer } from "../transport/receiver.ts";
import { AgentTls } from "../transport/tls.ts";
import { SinkTable } from "../transport/sink_table.ts";
import { type AgentConfig, ConfigError, dedupeStoreDir, splitHostPort } from "./config.ts";
import { LazyChunkStore } from "../dedupe/agent_store.ts";
import { Roots } from "./roots.ts";
import { TransferService } from "./transfers.ts";
import { agentPeerLinks } from "../mode/links.ts";
import { join } from "node:path";
import { incomingMigrationHandler } from "../migration/incoming.ts";
import { DirectChannels } from "../migration/direct_channel.ts";
import { MigrationService } from "../migration/service.ts";
import { forecastStatus } from "../predict/lstm.ts";
import { openAgentForecasts } from "../predict/agent_forecasts.ts";
import { VmManager } from "../vm/manager.ts";

export const VERSION = "0.1.0";

export interface RunningAgent {
  apiAddr: Deno.NetAddr;
  dataAddr: Deno.NetAddr;
  transfers: TransferService;
  shutdown(): Promise<void>;
}

/** Native capabilities, probed once at start; optional parts report their absence instead of failing. */
function capabilities() {
  const devices = rdmaDevices();
  return {
    libraries: libraryVersions(),
    codecs: [...CODECS],
    rdma: devices.length
      ? { available: true, devices }
      : { available: false, devices, reason: "no RDMA device found; data moves over TCP" },
    onnxRuntime: onnxRuntime(),
    // Whether the LSTM forecast models load and run here, or which baselines forecast instead.
    forecast: forecastStatus(),
  };
}

/** Turns a failed bind into a message that says which setting to change. */
function listenOrExplain<T>(what: "api" | "data", flag: string, listen: () => T): T {
  try {
    return listen();
  } catch (err) {
    if (err instanceof Deno.errors.AddrInUse || err instanceof Deno.errors.AddrNotAvailable) {
      throw new ConfigError(
        `cannot listen for the ${what} port: ${(err as Error).message}; is another agent running? ` +
          `choose another address with ${flag} HOST:PORT`,
      );
    }
    throw err;
  }
}

export async function startAgent(
  config: AgentConfig,
  log: Logger = jsonLogger("agent"),
): Promise<RunningAgent> {
  // First, so that a bad certificate or key stops the agent before it touches anything. With tls.mode
  // "auto", a peer's link mode decides too: its parameters ask for TLS in internet mode.
  const tls = await AgentTls.load(
    config.tls,
    config.agentId,
    (peer) => links.parametersFor(peer)?.tls === true,
  );
  const roots = new Roots(config.roots);
  await roots.ensure();
  const caps = capabilities();
  const identity: PeerIdentity = {
    agentId: config.agentId,
    capabilities: { codecs: caps.codecs, rdma: caps.rdma.available, rateProbe: true },
  };
  const forecasts = await openAgentForecasts(config.stateDir, log);
  const links = agentPeerLinks(config, identity, log, (peer) => transfers.resolvePeer(peer), forecasts.book);
  const transfers = new TransferService(config, roots, identity, links, tls);
  links.start();
  const vms = new VmManager({ runDir: join(config.stateDir, "run"), log });
  // Chunks of the migrations this agent receives with dedupe; none kept when storeBytes is 0.
  const dedupeStore = config.dedupe.storeBytes > 0
    ? new LazyChunkStore({ dir: dedupeStoreDir(config), budgetBytes: config.dedupe.storeBytes, log })
    : undefined;
  const migrations = new MigrationService({
    vms,
    links,
    identity,
    secret: config.secret,
    resolvePeer: (peer) => transfers.resolvePeer(peer),
    defaults: config.transfer,
    log,
  });

  const sinks = new SinkTable();
  const channels = new DirectChannels();
  const data = splitHostPort(config.data.listen);
  const listener = listenOrExplain(
    "data",
    "--data",
    () => tls.listen(data.host, data.port),
  );
  const dataServer = new DataServer(listener, {
    secret: config.secret,
    identity,
    roots,
    windowChunks: config.transfer.windowChunks,
    fsync: config.transfer.fsync,
    sinks,
    exchanges: {
      "migrate-prepare": incomingMigrationHandler({
        vms,
        sinks,
        roots,
        log,
        dedupeStore: dedupeStore && (() => dedupeStore.get()),
        channels,
      }),
      "migrate-channel": channels.handler(),
    },
    onIncoming: (p, from) => {
      transfers.addIncoming(p);
      links.transferReceived(from.agentId, p);
    },
    log,
  });
  const serving = dataServer.serve();

  const api = splitHostPort(config.api.listen);
  const app = createApp({
    transfers,
    vms,
    migrations,
    roots,
    links,
    token: config.api.token,
    info: () => ({
      version: VERSION,
      agentId: config.agentId,
      protocolVersion: PROTOCOL_VERSION,
      api: `${api.host}:${server.addr.port}`,
      data: `${data.host}:${dataServer.addr.port}`,
      roots: roots.roots,
      peers: config.peers,
      tls: { mode: config.tls.mode, peers: config.tls.peers },
      defaults: config.transfer,
      ...caps,
    }),
  });
  const server = listenOrExplain(
    "api",
    "--api",
    () => Deno.serve({ hostname: api.host, port: api.port, onListen: () => {} }, app.fetch),
  );
  log("agent started", {
    agentId: config.agentId,
    api: `${api.host}:${server.addr.port}`,
    data: `${data.host}:${dataServer.addr.port}`,
    roots: roots.roots,
    rdma: caps.rdma.available,
    onnxRuntime: caps.onnxRuntime.available ? caps.onnxRuntime.version : false,
    tls: config.tls.mode,
  });

  return {
    apiAddr: server.addr,
    dataAddr: dataServer.addr,
    transfers,
    async shutdown() {
      links.stop();
      await forecasts.close();
      await transfers.cancelAll();
      await dataServer.close();
      await vms.stopAll();
      await dedupeStore?.close();
      await serving;
      await server.shutdown();
      log("agent stopped");
    },
  };
}
