/**
 * `dwcp cert init`: a CA and a certificate per agent for a test cluster, made with the openssl CLI. Each
 * agent's certificate carries its id as a DNS subject alternative name, which is what peers check.
 */
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { UsageError, wholeNumber } from "./common.ts";

const USAGE = `usage: dwcp cert init --dir DIR --ids ID[,ID...] [--days N]

Makes the files of a test cluster's TLS in DIR: a CA (ca.crt, ca.key) and, for each agent id, ID.crt and
ID.key, its certificate signed by the CA with the id as its DNS name. A CA already in DIR is reused, so
the same command adds agents to a cluster. Prints what to give each agent. Needs the openssl command.

options:
  --dir DIR      where the files go (made if missing)
  --ids LIST     agent ids, comma-separated; each must be a DNS name (letters, digits, "-" and ".")
  --days N       how long the certificates are valid (default 825; the CA gets 10 years)
  -h, --help     show this help`;

/** An agent id is checked as a DNS name (RFC 1123 labels), since that is how the certificate carries it. */
const LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
const DNS_NAME = new RegExp(`^(?=.{1,253}$)${LABEL}(?:\\.${LABEL})*$`);

const CA_DAYS = 3650;
const DEFAULT_DAYS = 825;

export interface CertInitOptions {
  dir: string;
  ids: string[];
  days?: number;
}

export interface AgentFiles {
  id: string;
  cert: string;
  key: string;
}

export interface CertInitResult {
  ca: string;
  /** True when ca.crt and ca.key were already in the directory. */
  reusedCa: boolean;
  agents: AgentFiles[];
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

/** openssl is missing or failed; the command reports it and exits 1. */
export class CertError extends Error {
  override name = "CertError";
}

async function openssl(args: string[]): Promise<void> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command("openssl", { args, stdout: "piped", stderr: "piped" }).output();
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new CertError(
        "the openssl command is not installed; install it (apt-get install openssl) and retry",
      );
    }
    throw err;
  }
  if (!out.success) {
    throw new CertError(`openssl ${args[0]} failed: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
}

/** Where a new key and certificate are made: an EC P-256 key, written by openssl with mode 0600. */
const NEW_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

/** Makes the CA (unless DIR has one) and a key and certificate for each id. Refuses to overwrite. */
export async function certInit(opts: CertInitOptions): Promise<CertInitResult> {
  const bad = opts.ids.filter((id) => !DNS_NAME.test(id));
  if (opts.ids.length === 0 || bad.length) {
    throw new UsageError(
      `--ids ${bad.length ? bad.map((id) => `"${id}"`).join(", ") : "(none)"}: give agent ids that are DNS ` +
        `names (letters, digits, "-" and ".", for example a,b or host1.example), comma-separated`,
    );
  }
  const dups = opts.ids.filter((id, i) => opts.ids.indexOf(id) !== i);
  if (dups.length) throw new UsageError(`--ids names ${dups.join(", ")} more than once`);
  const dir = resolve(opts.dir);
  await Deno.mkdir(dir, { recursive: true });
  const ca = join(dir, "ca.crt"), caKey = join(dir, "ca.key");
  const agents = opts.ids.map((id) => ({ id, cert: join(dir, `${id}.crt`), key: join(dir, `${id}.key`) }));
  for (const path of agents.flatMap((a) => [a.cert, a.key])) {
    if (await exists(path)) {
      throw new UsageError(`${path} exists; remove it or choose another --dir (nothing was changed)`);
    }
  }
  const [hasCa, hasCaKey] = [await exists(ca), await exists(caKey)];
  if (hasCa !== hasCaKey) {
    throw new UsageError(
      `${dir} holds ${hasCa ? "ca.crt but not ca.key" : "ca.key but not ca.crt"}; a CA needs both: ` +
        `restore the missing file or choose another --dir`,
    );
  }
  if (!hasCa) {
    await openssl([
      "req",
      "-x509",
      ...NEW_KEY,
      "-keyout",
      caKey,
      "-out",
      ca,
      "-days",
      String(CA_DAYS),
      "-subj",
      // A name of its own: a verifier that meets another cluster's CA then reports an unknown issuer.
      `/CN=dwcp cluster CA ${crypto.randomUUID().slice(0, 8)}`,
      "-addext",
      "basicConstraints=critical,CA:TRUE,pathlen:0",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign",
    ]);
  }
  for (const a of agents) {
    // req -x509 -CA signs in one step; the id is both the subject and the DNS name that peers check.
    await openssl([
      "req",
      "-x509",
      ...NEW_KEY,
      "-keyout",
      a.key,
      "-out",
      a.cert,
      "-days",
      String(opts.days ?? DEFAULT_DAYS),
      "-subj",
      `/CN=${a.id}`,
      "-CA",
      ca,
      "-CAkey",
      caKey,
      "-addext",
      `subjectAltName=DNS:${a.id}`,
      "-addext",
      "basicConstraints=critical,CA:FALSE",
      "-addext",
      "keyUsage=critical,digitalSignature",
      "-addext",
      "extendedKeyUsage=serverAuth,clientAuth",
    ]);
  }
  return { ca, reusedCa: hasCa, agents };
}

/** What to give each agent, as flags and as the config file's "tls" section. */
export function describe(result: CertInitResult): string {
  const lines = [
    `${result.reusedCa ? "used the CA" : "made a CA"} in ${result.ca} (keep ca.key private: it signs agents)`,
    "",
    "Give each agent its files; peers must be named by their ids (--peer ID=HOST:PORT):",
  ];
  for (const a of result.agents) {
    lines.push(
      "",
      `  ${a.id}: dwcp agent --id ${a.id} --tls on --tls-ca ${result.ca} --tls-cert ${a.cert} ` +
        `--tls-key ${a.key}`,
      `  or in its config file: ${
        JSON.stringify({ agentId: a.id, tls: { mode: "on", ca: result.ca, cert: a.cert, key: a.key } })
      }`,
    );
  }
  return lines.join("\n");
}

export async function certCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === "-h" || sub === "--help") {
    console.log(USAGE);
    return 0;
  }
  if (sub !== "init") throw new UsageError(`unknown cert command "${sub ?? ""}"; the one command is "init"`);
  const { values } = parseArgs({
    args: rest,
    options: {
      dir: { type: "string" },
      ids: { type: "string" },
      days: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (!values.dir) throw new UsageError("give --dir DIR, where the files go");
  if (values.ids === undefined) throw new UsageError("give --ids ID[,ID...], the agents' ids");
  const days = wholeNumber("--days", values.days, 1, 36500);
  const ids = values.ids.split(",").map((id) => id.trim()).filter(Boolean);
  try {
    console.log(describe(await certInit({ dir: values.dir, ids, days })));
  } catch (err) {
    if (!(err instanceof CertError)) throw err;
    console.error(`dwcp cert init: ${err.message}`);
    return 1;
  }
  return 0;
}
