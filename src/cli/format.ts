/** Plain-text formatting shared by the client commands: sizes, rates, durations, tables. */
import { basename } from "node:path";
import type { TransferSnapshot } from "./client.ts";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const pad2 = (n: number) => String(n).padStart(2, "0");

/** Sizes in binary units: "512 B", "12.0 KiB", "13.5 MiB", "1.25 GiB". */
export function formatBytes(n: number): string {
  if (n >= GiB) return `${(n / GiB).toFixed(2)} GiB`;
  if (n >= MiB) return `${(n / MiB).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

/** Rates in decimal megabytes per second, as link speeds are quoted: "118.2 MB/s". */
export function formatRate(bytesPerSec: number): string {
  return `${(bytesPerSec / 1e6).toFixed(1)} MB/s`;
}

/** Elapsed time: "0.41 s", "12.3 s", "2m05s", "1h02m". */
export function formatDuration(ms: number): string {
  const s = ms / 1000;
  if (s < 10) return `${s.toFixed(2)} s`;
  if (s < 60) return `${s.toFixed(1)} s`;
  const whole = Math.round(s);
  if (whole < 3600) return `${Math.floor(whole / 60)}m${pad2(whole % 60)}s`;
  return `${Math.floor(whole / 3600)}h${pad2(Math.floor(whole / 60) % 60)}m`;
}

/** Time left (the agent's ETA: forecast or current rate) as m:ss or h:mm:ss; "--:--" while unknown. */
export function formatEta(s: TransferSnapshot): string {
  if (!s.eta) return "--:--";
  const left = Math.ceil(s.eta.ms / 1000);
  const [h, m, sec] = [Math.floor(left / 3600), Math.floor(left / 60) % 60, left % 60];
  return h ? `${h}:${pad2(m)}:${pad2(sec)}` : `${m}:${pad2(sec)}`;
}

/** Columns padded to their widest cell; the last column is not padded. */
export function table(rows: string[][]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((cell, c) => c < r.length - 1 ? cell.padEnd(widths[c]) : cell).join("  "))
    .join("\n");
}

/** The destination path; an empty one means the source's name in the receiver's first root. */
export function destinationPath(s: TransferSnapshot): string {
  return s.destination || basename(s.source);
}
