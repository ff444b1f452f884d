/** Transfer progress and summaries: pure line builders, and a reporter that redraws or throttles. */
import { basename } from "node:path";
import type { TransferSnapshot } from "./client.ts";
import { formatBytes, formatDuration, formatEta, formatRate } from "./format.ts";

/** One status line: state, bar, percent, bytes, rate, ETA and open streams. */
export function progressLine(s: TransferSnapshot, barWidth = 20): string {
  const filled = Math.min(barWidth, Math.floor((s.percent / 100) * barWidth));
  const bar = "#".repeat(filled) + "-".repeat(barWidth - filled);
  const open = s.streams.filter((x) => x.state === "open").length;
  const streams = open === s.streams.length ? `${open}` : `${open}/${s.streams.length}`;
  return [
    s.state.padEnd(10),
    `[${bar}]`,
    `${s.percent.toFixed(1).padStart(5)}%`,
    `${formatBytes(s.bytesDone)} / ${formatBytes(s.sizeBytes)}`,
    formatRate(s.bytesPerSec),
    `ETA ${formatEta(s)}`,
    `${streams} stream${s.streams.length === 1 ? "" : "s"}`,
  ].join("  ");
}

/** Where the file lands, as the sender knows it; an empty destination is the source's name in the peer's first root. */
export function destinationOf(s: TransferSnapshot): string {
  return `${s.peer}:${s.destination || basename(s.source)}`;
}

/** The closing report of a transfer (several lines). */
export function summary(s: TransferSnapshot): string {
  const moved = s.state === "completed"
    ? formatBytes(s.bytesDone)
    : `${formatBytes(s.bytesDone)} of ${formatBytes(s.sizeBytes)}`;
  const lines = [
    `${s.state}: ${moved} in ${formatDuration(s.elapsedMs)}, average ${formatRate(s.averageBytesPerSec)}, ` +
    `ratio ${s.ratio.toFixed(2)} (codec ${s.codec})`,
    `  transfer     ${s.id}`,
    `  source       ${s.source}`,
    `  destination  ${destinationOf(s)}`,
    `  streams      ${
      s.streams.map((x) => `#${x.index} ${formatBytes(x.bytes)}${x.state === "lost" ? " (lost)" : ""}`).join(
        ", ",
      )
    }`,
  ];
  if (s.retransmits) lines.push(`  retransmits  ${s.retransmits}`);
  return lines.join("\n");
}

/**
 * Draws progress on a terminal as one line redrawn with \r; elsewhere (logs, pipes) prints a line at most
 * every everyMs.
 */
export class ProgressReporter {
  #lastMs = -Infinity;
  #drawn = false;

  constructor(
    readonly write: (text: string) => void,
    readonly opts: {
      tty: boolean;
      /** Terminal width; a longer line would wrap and break the redraw. */
      columns?: number;
      now?: () => number;
      /** Least time between lines when not on a terminal. */
      everyMs?: number;
    },
  ) {}

  update(s: TransferSnapshot): void {
    if (this.opts.tty) {
      this.write(`\r${progressLine(s).slice(0, (this.opts.columns ?? 120) - 1)}\x1b[K`);
      this.#drawn = true;
      return;
    }
    const t = (this.opts.now ?? Date.now)();
    if (t - this.#lastMs < (this.opts.everyMs ?? 2000)) return;
    this.#lastMs = t;
    this.write(progressLine(s) + "\n");
  }

  /** Ends the redrawn line, so what follows starts on a fresh one. */
  end(): void {
    if (this.#drawn) this.write("\n");
    this.#drawn = false;
  }
}
