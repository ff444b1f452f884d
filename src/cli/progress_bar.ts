/** Transfer progress and summaries: pure line builders, and a reporter that redraws or throttles. */
import type { TransferSnapshot } from "./client.ts";
import { destinationPath, formatBytes, formatDuration, formatEta, formatRate } from "./format.ts";

/**
 * One status line: the state (unless running), bar, percent, bytes, rate, ETA (while running) and open
 * streams. Numbers are padded so the line keeps its length; the bar (10..30 wide) takes what is left of
 * `columns`.
 */
export function progressLine(s: TransferSnapshot, columns = 80): string {
  const open = s.streams.filter((x) => x.state === "open").length;
  const streams = open === s.streams.length ? `${open}` : `${open}/${s.streams.length}`;
  const line = (bar: string) =>
    [
      ...(s.state === "running" ? [] : [s.state]),
      `${bar} ${s.percent.toFixed(1).padStart(5)}%`,
      `${formatBytes(s.bytesDone).padStart(9)} / ${formatBytes(s.sizeBytes)}`,
      formatRate(s.bytesPerSec).padStart(10),
      ...(s.state === "running" ? [`ETA ${formatEta(s)}`] : []),
      `${streams} stream${s.streams.length === 1 ? "" : "s"}`,
    ].join("  ");
  const width = Math.max(10, Math.min(30, columns - 1 - line("[]").length));
  const filled = Math.min(width, Math.floor((s.percent / 100) * width));
  return line(`[${"#".repeat(filled)}${"-".repeat(width - filled)}]`);
}

/** Where the file lands, as the sender knows it. */
export function destinationOf(s: TransferSnapshot): string {
  return `${s.peer}:${destinationPath(s)}`;
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
    this.draw((columns) => progressLine(s, columns));
  }

  /** Shows a status line built for the terminal's width (80 when not on a terminal); as update. */
  draw(line: (columns: number) => string): void {
    if (this.opts.tty) {
      const columns = this.opts.columns ?? 80;
      this.write(`\r${line(columns).slice(0, columns - 1)}\x1b[K`);
      this.#drawn = true;
      return;
    }
    const t = (this.opts.now ?? Date.now)();
    if (t - this.#lastMs < (this.opts.everyMs ?? 2000)) return;
    this.#lastMs = t;
    this.write(line(80) + "\n");
  }

  /** Prints a line of its own (never throttled); on a terminal it takes the status line's place. */
  print(text: string): void {
    this.write(this.opts.tty && this.#drawn ? `\r\x1b[K${text}\n` : `${text}\n`);
    this.#drawn = false;
  }

  /** Ends the redrawn line, so what follows starts on a fresh one. */
  end(): void {
    if (this.#drawn) this.write("\n");
    this.#drawn = false;
  }
}

/**
 * A reporter on stderr: redrawn to the terminal's width when stderr is a terminal, plain lines otherwise.
 */
export function stderrReporter(): ProgressReporter {
  const tty = Deno.stderr.isTerminal();
  return new ProgressReporter((text) => Deno.stderr.writeSync(new TextEncoder().encode(text)), {
    tty,
    columns: tty ? Deno.consoleSize().columns || undefined : undefined, // 0 when the terminal has no size
  });
}
