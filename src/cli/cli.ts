/** Command dispatch. Each command parses its own flags with node:util parseArgs and has --help. */
import { parseArgs } from "node:util";
import { ConfigError, loadConfig } from "../agent/config.ts";
import { startAgent } from "../agent/agent.ts";
import { certCommand } from "./cert.ts";
import { AgentUnreachableError, ApiRequestError } from "./client.ts";
import { UsageError } from "./common.ts";
import { demoCommand } from "./demo.ts";
import { infoCommand } from "./info.ts";
import { migrateCommand } from "./migrate.ts";
import { sendCommand } from "./send.ts";
import { statusCommand } from "./status.ts";
import { vmCommand } from "./vm.ts";

const USAGE = `dwcp: moves VMs and their state between hosts

usage: dwcp <command> [options]

commands:
  agent              run the agent (HTTP API and data port)
  send FILE --to PEER[:PATH]   send a file to a peer through the local agent
  status [ID]        list transfers, or show one
  info               show the local agent's version and capabilities
  vm start|list|stop   start, list and stop QEMU guests on the local agent
  migrate VM --to PEER   live-migrate a guest to a peer and follow it to the end
  demo               live-migrate a small guest between two local agents and back
  cert init --dir DIR --ids A,B   make a CA and agent certificates for a test cluster's TLS

Run "dwcp <command> --help" for a command's options.`;

const AGENT_USAGE = `usage: dwcp agent [options]

Runs the agent. Settings come from embedded defaults, then --config FILE (JSON), then DWCP_*
environment variables, then these flags.

options:
  --config FILE          JSON config file (env DWCP_CONFIG)
  --id NAME              agent id shown to peers (env DWCP_ID; default: hostname)
  --api HOST:PORT        HTTP API address (env DWCP_API; default 127.0.0.1:7700)
  --data HOST:PORT       data port for peers (env DWCP_DATA; default 0.0.0.0:7701)
  --state-dir DIR        state directory (env DWCP_STATE_DIR; default ~/.local/state/dwcp)
  --root DIR             a directory files may be read from and written to; repeatable
                         (env DWCP_ROOTS, colon-separated; default STATE_DIR/files)
  --peer NAME=HOST:PORT  a peer's data port; repeatable (env DWCP_PEERS, comma-separated)
  --secret-file FILE     file holding the secret shared by all agents of a cluster
                         (env DWCP_SECRET; default: STATE_DIR/secret, created on first start)
  --tls MODE             TLS between agents: off, on, or auto (TLS to the --tls-peer peers and to
                         links the mode policy finds in internet mode) (env DWCP_TLS; default off)
  --tls-cert FILE        this agent's certificate (chain), PEM; it must carry the agent id as a DNS
                         name (env DWCP_TLS_CERT)
  --tls-key FILE         its private key, PEM (env DWCP_TLS_KEY)
  --tls-ca FILE          the cluster CA that peers' certificates must chain to (env DWCP_TLS_CA)
  --tls-peer NAME        with --tls auto: a configured peer always reached over TLS; repeatable
                         (env DWCP_TLS_PEERS, comma-separated)
  -h, --help             show this help

The API token (needed when --api is not a loopback address) comes from DWCP_TOKEN or the config file.`;

async function agentCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: "string" },
      id: { type: "string" },
      api: { type: "string" },
      data: { type: "string" },
      "state-dir": { type: "string" },
      root: { type: "string", multiple: true },
      peer: { type: "string", multiple: true },
      "secret-file": { type: "string" },
      tls: { type: "string" },
      "tls-cert": { type: "string" },
      "tls-key": { type: "string" },
      "tls-ca": { type: "string" },
      "tls-peer": { type: "string", multiple: true },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(AGENT_USAGE);
    return 0;
  }
  const config = await loadConfig({
    config: values.config,
    id: values.id,
    api: values.api,
    data: values.data,
    stateDir: values["state-dir"],
    root: values.root,
    peer: values.peer,
    secretFile: values["secret-file"],
    tls: values.tls,
    tlsCert: values["tls-cert"],
    tlsKey: values["tls-key"],
    tlsCa: values["tls-ca"],
    tlsPeer: values["tls-peer"],
  });
  const agent = await startAgent(config);
  console.log(
    `dwcp agent ${config.agentId}: API http://${agent.apiAddr.hostname}:${agent.apiAddr.port}, ` +
      `data port ${agent.dataAddr.hostname}:${agent.dataAddr.port} (TLS ${config.tls.mode}), ` +
      `roots ${config.roots.join(", ")}`,
  );
  const stopped = Promise.withResolvers<void>();
  for (const sig of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(sig, () => stopped.resolve());
  await stopped.promise;
  await agent.shutdown();
  return 0;
}

export async function run(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  try {
    switch (command) {
      case "agent":
        return await agentCommand(rest);
      case "send":
        return await sendCommand(rest);
      case "status":
        return await statusCommand(rest);
      case "info":
        return await infoCommand(rest);
      case "vm":
        return await vmCommand(rest);
      case "migrate":
        return await migrateCommand(rest);
      case "cert":
        return await certCommand(rest);
      case "demo":
        return await demoCommand(rest);
      case undefined:
      case "-h":
      case "--help":
      case "help":
        console.log(USAGE);
        return command === undefined ? 2 : 0;
      default:
        console.error(`dwcp: unknown command "${command}"\n\n${USAGE}`);
        return 2;
    }
  } catch (err) {
    if (
      err instanceof UsageError || err instanceof ConfigError ||
      String((err as { code?: unknown }).code).startsWith("ERR_PARSE_ARGS")
    ) {
      console.error(`dwcp ${command}: ${(err as Error).message}\nRun "dwcp ${command} --help" for usage.`);
      return 2;
    }
    if (err instanceof ApiRequestError) {
      console.error(`error ${err.code}: ${err.message}`);
      return 1;
    }
    if (err instanceof AgentUnreachableError) {
      console.error(`dwcp ${command}: ${err.message}`);
      return 1;
    }
    throw err;
  }
}
