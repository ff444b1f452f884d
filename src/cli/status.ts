/** `dwcp status [ID]`: the agent's transfers as a table, or one transfer in detail. */
import { parseArgs } from "node:util";
import { type ApiClient, ApiRequestError, type TransferSnapshot } from "./client.ts";
import { apiClient, CLIENT_OPTIONS, CLIENT_OPTIONS_HELP, UsageError } from "./common.ts";
import { destinationPath, formatBytes, formatDuration, formatEta, formatRate, table } from "./format.ts";

export const STATUS_USAGE = `usage: dwcp status [ID] [options]

Without ID, lists the agent's transfers (running and recently finished, both directions). With ID (or
the first characters of one, as the list shows), shows that transfer in detail.

${CLIENT_OPTIONS_HELP}`;

export function transfersTable(transfers: TransferSnapshot[]): string {
  if (transfers.length === 0) return "no transfers";
  return table([
    ["ID", "DIR", "STATE", "DONE", "RATE", "PEER", "FILE"],
    ...transfers.map((t) => [
      t.id.slice(0, 8),
      t.direction,
      t.state,
      `${t.percent.toFixed(1)}%`,
      formatRate(t.state === "running" ? t.bytesPerSec : t.averageBytesPerSec),
      t.peer,
      `${t.source} → ${destinationPath(t)}`,
    ]),
  ]);
}

export function transferDetails(t: TransferSnapshot): string {
  const rows = [
    ["transfer", t.id],
    ["direction", t.direction],
    ["state", t.state],
    ["peer", t.peer],
    ["source", t.source],
    ["destination", destinationPath(t)],
    ["progress", `${t.percent.toFixed(1)}%, ${formatBytes(t.bytesDone)} of ${formatBytes(t.sizeBytes)}`],
    [
      "rate",
      `${formatRate(t.bytesPerSec)} now, ${formatRate(t.averageBytesPerSec)} average, ETA ${formatEta(t)}`,
    ],
    ["wire", `${formatBytes(t.wireBytes)}, ratio ${t.ratio.toFixed(2)}, codec ${t.codec}`],
    ["chunks", formatBytes(t.chunkBytes)],
    ["retransmits", String(t.retransmits)],
    ["started", t.startedAt],
    ["finished", t.finishedAt ?? "-"],
    ["elapsed", formatDuration(t.elapsedMs)],
    ...t.streams.map((s) => [
      `stream ${s.index}`,
      `${s.state}, ${formatBytes(s.bytes)} in ${s.frames} frames, ${formatRate(s.bytesPerSec)}`,
    ]),
  ];
  if (t.error) rows.push(["error", `${t.error.code}: ${t.error.message}`]);
  return table(rows);
}

/** Looks a transfer up by its id, or by a prefix that matches exactly one. */
async function findTransfer(client: ApiClient, id: string): Promise<TransferSnapshot> {
  try {
    return await client.getTransfer(id);
  } catch (err) {
    if (!(err instanceof ApiRequestError && err.code === "not_found")) throw err;
    const matches = (await client.listTransfers()).filter((t) => t.id.startsWith(id));
    if (matches.length === 1) return matches[0];
    if (matches.length > 1) {
      throw new UsageError(`"${id}" matches ${matches.length} transfers; give more of the id`);
    }
    throw err;
  }
}

export async function statusCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: CLIENT_OPTIONS });
  if (values.help) {
    console.log(STATUS_USAGE);
    return 0;
  }
  if (positionals.length > 1) {
    throw new UsageError(`give at most one transfer ID (got ${positionals.length})`);
  }
  const client = apiClient(values);
  if (positionals.length === 1) {
    const t = await findTransfer(client, positionals[0]);
    console.log(values.json ? JSON.stringify(t) : transferDetails(t));
  } else {
    const list = await client.listTransfers();
    console.log(values.json ? JSON.stringify({ transfers: list }) : transfersTable(list));
  }
  return 0;
}
