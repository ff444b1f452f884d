/**
 * What the client commands share: usage errors, parsing of option values, the --api/--token/--json options
 * and the API client.
 */
import { ApiClient } from "./client.ts";

/** A wrong command line; the command exits 2 and points at its --help. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** An optional whole-number option in min..max; undefined when not given. */
export function wholeNumber(
  flag: string,
  text: string | undefined,
  min: number,
  max: number,
): number | undefined {
  if (text === undefined) return undefined;
  const n = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!(n >= min && n <= max)) {
    throw new UsageError(`${flag} "${text}" must be a whole number ${min}..${max}`);
  }
  return n;
}

/** An optional option that takes one of `choices`; undefined when not given. */
export function oneOf<T extends string>(
  flag: string,
  text: string | undefined,
  choices: readonly T[],
): T | undefined {
  if (text === undefined || (choices as readonly string[]).includes(text)) return text as T | undefined;
  throw new UsageError(`${flag} "${text}" is not one of ${choices.join(", ")}`);
}

/** The one argument a command takes besides the options, e.g. `exactlyOne(positionals, "FILE to send")`. */
export function exactlyOne(positionals: string[], what: string): string {
  if (positionals.length !== 1) throw new UsageError(`give exactly one ${what} (got ${positionals.length})`);
  return positionals[0];
}

/** Refuses arguments besides the options, for commands that take none. */
export function noArguments(positionals: string[]): void {
  if (positionals.length) throw new UsageError(`unexpected argument "${positionals[0]}"`);
}

export const DEFAULT_API_URL = "http://127.0.0.1:7700";

export const CLIENT_OPTIONS = {
  api: { type: "string" },
  token: { type: "string" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

export const CLIENT_OPTIONS_HELP = `common options:
  --api URL              the agent's HTTP API (env DWCP_API_URL; default ${DEFAULT_API_URL})
  --token TOKEN          bearer token, when the agent requires one (env DWCP_TOKEN)
  --json                 machine-readable output (JSON on stdout)
  -h, --help             show this help`;

export function apiClient(
  values: { api?: string; token?: string },
  env: Record<string, string | undefined> = Deno.env.toObject(),
): ApiClient {
  const url = values.api ?? env.DWCP_API_URL ?? DEFAULT_API_URL;
  if (!URL.canParse(url) || !/^https?:$/.test(new URL(url).protocol)) {
    throw new UsageError(`--api "${url}" is not an http:// URL, for example ${DEFAULT_API_URL}`);
  }
  return new ApiClient(url, values.token ?? env.DWCP_TOKEN);
}
