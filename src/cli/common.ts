/** What the client commands share: usage errors, the --api/--token/--json options and the API client. */
import { ApiClient } from "./client.ts";

/** A wrong command line; the command exits 2 and points at its --help. */
export class UsageError extends Error {
  override name = "UsageError";
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
