/** dwcp command line: `dwcp agent` runs the daemon; the other commands are clients of its HTTP API. */
import { run } from "./src/cli/cli.ts";

if (import.meta.main) Deno.exit(await run(Deno.args));
