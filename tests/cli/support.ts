/**
 * What the CLI tests share: the CLI run as a user runs it (a subprocess of main.ts), an API address where
 * nothing listens, and a stand-in agent answering from a handler.
 */
import { ApiClient } from "../../src/cli/client.ts";
import { MAIN, REPO } from "../support/agents.ts";

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** `dwcp ARGS...` as a command to spawn, with its output piped. */
export function cli(...args: string[]): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", MAIN, ...args],
    cwd: REPO,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

/** Runs `dwcp ARGS...` to its end. */
export async function runCli(...args: string[]): Promise<CliResult> {
  const out = await cli(...args).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** An address where nothing listens: a port the OS handed out, then closed. */
export function deadApiUrl(): string {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  listener.close();
  return `http://127.0.0.1:${listener.addr.port}`;
}

/** A stand-in agent answering from a handler; `fn` gets its URL (with a trailing slash) over a real socket. */
export async function withServer(
  handler: (req: Request) => Response | Promise<Response>,
  fn: (url: string) => Promise<void>,
): Promise<void> {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, handler);
  try {
    await fn(`http://127.0.0.1:${server.addr.port}/`);
  } finally {
    await server.shutdown();
  }
}

/** As withServer, handing `fn` an ApiClient of the stand-in agent. */
export async function withClient(
  handler: (req: Request) => Response | Promise<Response>,
  fn: (client: ApiClient) => Promise<void>,
): Promise<void> {
  await withServer(handler, (url) => fn(new ApiClient(url)));
}
