/** Structured logs: one JSON object per line on stderr, so operators can grep or ship them. */
export type Logger = (msg: string, fields?: Record<string, unknown>) => void;

export function jsonLogger(
  component: string,
  write: (line: string) => void = (l) => console.error(l),
): Logger {
  return (msg, fields) => write(JSON.stringify({ t: new Date().toISOString(), component, msg, ...fields }));
}

export const silentLogger: Logger = () => {};
