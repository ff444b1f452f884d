/** `dwcp info`: the local agent's version, addresses, roots, peers and native capabilities. */
import { parseArgs } from "node:util";
import type { AgentInfo } from "./client.ts";
import { apiClient, CLIENT_OPTIONS, CLIENT_OPTIONS_HELP, noArguments } from "./common.ts";
import { formatBytes, table } from "./format.ts";

export const INFO_USAGE = `usage: dwcp info [options]

Shows the local agent's version, addresses, roots, peers, codecs, native library versions, RDMA devices
and ONNX Runtime.

${CLIENT_OPTIONS_HELP}`;

export function infoText(info: AgentInfo): string {
  const peers = Object.entries(info.peers).map(([name, addr]) => `${name}=${addr}`);
  const rdma = info.rdma.devices.length
    ? info.rdma.devices.map((d) =>
      `${d.name} (${d.ports.map((p) => `port ${p.port} ${p.state}`).join(", ")})`
    )
      .join(", ")
    : `none: ${info.rdma.reason ?? "no device"}`;
  const ort = info.onnxRuntime.available
    ? `${info.onnxRuntime.version} (${info.onnxRuntime.path})`
    : `unavailable: ${info.onnxRuntime.reason}`;
  const d = info.defaults;
  return table([
    ["agent", `${info.agentId}, version ${info.version}, protocol ${info.protocolVersion}`],
    ["api", info.api],
    ["data port", info.data],
    ["roots", info.roots.join(", ")],
    ["peers", peers.length ? peers.join(", ") : "none configured"],
    ["defaults", `${d.streams} streams, ${formatBytes(d.chunkBytes)} chunks, codec ${d.codec}`],
    ["codecs", info.codecs.join(", ")],
    ["libraries", Object.entries(info.libraries).map(([lib, v]) => `${lib} ${v}`).join(", ")],
    ["rdma", rdma],
    ["onnx runtime", ort],
  ]);
}

export async function infoCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: CLIENT_OPTIONS });
  if (values.help) {
    console.log(INFO_USAGE);
    return 0;
  }
  noArguments(positionals);
  const info = await apiClient(values).info();
  console.log(values.json ? JSON.stringify(info, null, 2) : infoText(info));
  return 0;
}
