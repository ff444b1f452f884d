/**
 * Agent configuration: embedded defaults, then a JSON file, then DWCP_* environment variables, then
 * command-line flags; validated once, with errors that name the setting, the value and the fix.
 */
import { randomBytes } from "node:crypto";
import { homedir, hostname } from "node:os";
import { join } from "node:path";
import { z } from "zod";
import { CODEC_SETTINGS } from "../encoding/codec_policy.ts";
import { DEFAULT_TIMING, LINK_MODES } from "../mode/policy.ts";
import { LIMITS } from "../transport/receiver.ts";

/** "HOST:PORT" or "[IPv6]:PORT" with a port in 0..65535 (0: let the OS pick, for listen addresses). */
export function isHostPort(text: string): boolean {
  const m = /^(?:[^\s:\[\]]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$/.exec(text);
  return m !== null && Number(m[1]) <= 65535;
}

/** TLS on agent-to-agent connections: never, always, or for internet links and listed peers (auto). */
export const TLS_MODES = ["off", "on", "auto"] as const;

const peerName = z.string().regex(/^[A-Za-z0-9._-]+$/);

/** A smaller chunk store would evict VM memory's chunks before a second migration could use them. */
const MIN_DEDUPE_STORE_BYTES = 64 * 1024 * 1024;
/** Rate probes start on link probing's once-a-second tick: a shorter interval would mean the same. */
const MIN_RATE_PROBE_INTERVAL_MS = 1000;

const hostPort = z.string().refine(isHostPort, {
  message: 'expected "HOST:PORT" with a port of 0..65535, for example "127.0.0.1:7700"',
});

const schema = z.object({
  agentId: z.string().min(1).max(128),
  stateDir: z.string().min(1),
  api: z.object({
    listen: hostPort,
    token: z.string().min(16, { message: "a token needs at least 16 characters" }).optional(),
  }),
  data: z.object({ listen: hostPort }),
  secret: z.string().min(16, { message: "the shared secret needs at least 16 characters" }),
  roots: z.array(z.string().min(1)).min(1, { message: "give at least one root directory" }),
  peers: z.record(peerName, hostPort),
  tls: z.object({
    mode: z.enum(TLS_MODES),
    /** PEM files: this agent's certificate chain and key, and the CA that peers' certificates chain to. */
    cert: z.string().min(1).optional(),
    key: z.string().min(1).optional(),
    ca: z.string().min(1).optional(),
    /** With mode "auto": peers always reached over TLS, whatever their link. */
    peers: z.array(peerName),
  }),
  transfer: z.object({
    streams: z.number().int().min(1).max(LIMITS.maxStreams),
    chunkBytes: z.number().int().min(LIMITS.minChunkBytes).max(LIMITS.maxChunkBytes),
    windowChunks: z.number().int().min(1).max(64),
    codec: z.enum(CODEC_SETTINGS),
    stallTimeoutMs: z.number().int().min(100),
    maxRetries: z.number().int().min(0).max(100),
    fsync: z.boolean(),
  }),
  /** Link probing and the datacenter / internet / hybrid mode policy (src/mode). */
  link: z.object({
    probeIntervalMs: z.number().int().min(100),
    /** An idle peer's delivered rate is probed this often (a short burst, src/mode/links.ts); 0: never. */
    rateProbeIntervalMs: z.number().int().min(0).refine((v) => v === 0 || v >= MIN_RATE_PROBE_INTERVAL_MS, {
      message: `give 0 (no rate probes: rates come from transfers only) or at least ` +
        `${MIN_RATE_PROBE_INTERVAL_MS} ms (probes start on the once-a-second sampling tick); the default is 300000`,
    }),
    minDwellMs: z.number().int().min(0),
    confirmMs: z.number().int().min(0),
    /** Operator pins: peer (a configured name or HOST:PORT) → mode. */
    pins: z.record(z.string(), z.enum(LINK_MODES)),
  }),
  /** Dedupe of live-migration streams (src/dedupe): the chunk store this agent keeps as a destination. */
  dedupe: z.object({
    /** Disk the chunk store (STATE_DIR/dedupe-store) may take; 0 keeps none. */
    storeBytes: z.number().int().min(0).refine((v) => v === 0 || v >= MIN_DEDUPE_STORE_BYTES, {
      message: `give 0 (no chunk store: migrations asking for dedupe travel as they are) or at least ` +
        `${MIN_DEDUPE_STORE_BYTES} bytes (64 MiB); a few GiB suits VM memory`,
    }),
  }),
}).strict();

export type AgentConfig = z.infer<typeof schema>;

/** The dedupe chunk store's directory under the state directory. */
export function dedupeStoreDir(config: Pick<AgentConfig, "stateDir">): string {
  return join(config.stateDir, "dedupe-store");
}

export class ConfigError extends Error {
  override name = "ConfigError";
}

export function defaultStateDir(env: Record<string, string | undefined>): string {
  return env.DWCP_STATE_DIR ?? join(env.XDG_STATE_HOME ?? join(homedir(), ".local", "state"), "dwcp");
}

/** The embedded defaults. Roots (stateDir/files) and the secret (stateDir/secret) follow stateDir. */
export function defaults(env: Record<string, string | undefined> = Deno.env.toObject()) {
  const stateDir = defaultStateDir(env);
  return {
    agentId: hostname(),
    stateDir,
    api: { listen: "127.0.0.1:7700" },
    data: { listen: "0.0.0.0:7701" },
    peers: {} as Record<string, string>,
    tls: { mode: "off", peers: [] as string[] },
    transfer: {
      streams: 4,
      chunkBytes: 1024 * 1024,
      windowChunks: 4,
      codec: "none",
      stallTimeoutMs: 30_000,
      maxRetries: 3,
      fsync: true,
    },
    link: {
      probeIntervalMs: 10_000,
      rateProbeIntervalMs: 300_000,
      minDwellMs: DEFAULT_TIMING.minDwellMs,
      confirmMs: DEFAULT_TIMING.confirmMs,
      pins: {} as Record<string, string>,
    },
    dedupe: { storeBytes: 2 * 1024 * 1024 * 1024 },
  };
}

/** What flags can set (main.ts parses them); undefined means "not given". */
export interface ConfigFlags {
  config?: string;
  id?: string;
  api?: string;
  data?: string;
  stateDir?: string;
  root?: string[];
  peer?: string[];
  secretFile?: string;
  tls?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  tlsPeer?: string[];
}

type Obj = Record<string, unknown>;

function merge(base: Obj, over: Obj): Obj {
  const out: Obj = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (v === undefined) continue;
    const b = out[k];
    out[k] =
      v && typeof v === "object" && !Array.isArray(v) && b && typeof b === "object" && !Array.isArray(b)
        ? merge(b as Obj, v as Obj)
        : v;
  }
  return out;
}

function parsePeers(list: string[], where: string): Record<string, string> {
  const peers: Record<string, string> = {};
  for (const item of list) {
    const eq = item.indexOf("=");
    if (eq < 1) {
      throw new ConfigError(`${where}: "${item}" is not NAME=HOST:PORT, for example b=10.0.0.2:7701`);
    }
    peers[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return peers;
}

async function readSecretFile(path: string): Promise<string> {
  try {
    return (await Deno.readTextFile(path)).trim();
  } catch (err) {
    throw new ConfigError(`cannot read the secret file ${path} (--secret-file): ${(err as Error).message}`);
  }
}

async function readFileLayer(path: string): Promise<Obj> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    throw new ConfigError(`cannot read config file ${path}: ${(err as Error).message}`);
  }
  try {
    const parsed = JSON.parse(text);
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
      throw new Error("not an object");
    }
    return parsed;
  } catch (err) {
    throw new ConfigError(`config file ${path} is not a JSON object: ${(err as Error).message}`);
  }
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host.startsWith("127.") || host === "[::1]";
}

/** Reads the secret file in stateDir, creating it with a random secret on first start. */
async function stateSecret(stateDir: string): Promise<string> {
  const path = join(stateDir, "secret");
  try {
    return (await Deno.readTextFile(path)).trim();
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  await Deno.mkdir(stateDir, { recursive: true });
  const secret = randomBytes(32).toString("hex");
  await Deno.writeTextFile(path, secret + "\n", { mode: 0o600, createNew: true }).catch((err) => {
    if (!(err instanceof Deno.errors.AlreadyExists)) throw err; // another agent won the race: use its secret
  });
  return (await Deno.readTextFile(path)).trim();
}

export async function loadConfig(
  flags: ConfigFlags = {},
  env: Record<string, string | undefined> = Deno.env.toObject(),
): Promise<AgentConfig> {
  let merged: Obj = defaults(env);
  const file = flags.config ?? env.DWCP_CONFIG;
  if (file) merged = merge(merged, await readFileLayer(file));
  merged = merge(merged, {
    agentId: env.DWCP_ID,
    stateDir: env.DWCP_STATE_DIR,
    api: { listen: env.DWCP_API, token: env.DWCP_TOKEN },
    data: { listen: env.DWCP_DATA },
    secret: env.DWCP_SECRET,
    roots: env.DWCP_ROOTS?.split(":").filter(Boolean),
    peers: env.DWCP_PEERS ? parsePeers(env.DWCP_PEERS.split(","), "DWCP_PEERS") : undefined,
    tls: {
      mode: env.DWCP_TLS,
      cert: env.DWCP_TLS_CERT,
      key: env.DWCP_TLS_KEY,
      ca: env.DWCP_TLS_CA,
      peers: env.DWCP_TLS_PEERS?.split(",").filter(Boolean),
    },
  });
  merged = merge(merged, {
    agentId: flags.id,
    stateDir: flags.stateDir,
    api: { listen: flags.api },
    data: { listen: flags.data },
    secret: flags.secretFile ? await readSecretFile(flags.secretFile) : undefined,
    roots: flags.root?.length ? flags.root : undefined,
    peers: flags.peer?.length ? { ...(merged.peers as Obj), ...parsePeers(flags.peer, "--peer") } : undefined,
    tls: {
      mode: flags.tls,
      cert: flags.tlsCert,
      key: flags.tlsKey,
      ca: flags.tlsCa,
      peers: flags.tlsPeer?.length ? flags.tlsPeer : undefined,
    },
  });
  merged.roots ??= [join(String(merged.stateDir), "files")];
  if (merged.secret === undefined) merged.secret = await stateSecret(String(merged.stateDir));

  const result = schema.safeParse(merged);
  if (!result.success) {
    const lines = result.error.issues.map((i) => {
      const at = i.path.join(".");
      if (i.code === "unrecognized_keys") {
        return `  ${at ? at + ": " : ""}unknown setting ${
          i.keys.map((k) => `"${k}"`).join(", ")
        }; see README.md`;
      }
      const value = i.path.reduce<unknown>((o, k) => (o as Obj | undefined)?.[k as string], merged);
      const shown = at === "secret" || at === "api.token" || typeof value === "object"
        ? "(hidden)"
        : JSON.stringify(value);
      return `  ${at || "(config)"} = ${shown}: ${i.message}`;
    });
    throw new ConfigError(`invalid agent configuration:\n${lines.join("\n")}`);
  }
  const config = result.data;
  const apiHost = config.api.listen.slice(0, config.api.listen.lastIndexOf(":"));
  if (!isLoopback(apiHost) && !config.api.token) {
    throw new ConfigError(
      `api.listen = "${config.api.listen}" is reachable from other hosts, so a bearer token is required: ` +
        `set DWCP_TOKEN (16+ characters) or api.token in the config file, or listen on 127.0.0.1`,
    );
  }
  checkTls(config);
  const strangers = Object.keys(config.link.pins).filter((p) =>
    !Object.hasOwn(config.peers, p) && !isHostPort(p)
  );
  if (strangers.length) {
    throw new ConfigError(
      `link.pins names ${strangers.map((p) => `"${p}"`).join(", ")}: pin a configured peer ` +
        `(${Object.keys(config.peers).join(", ") || "none"}) or a HOST:PORT`,
    );
  }
  return config;
}

/** What the schema cannot say: TLS needs all three files, and "auto" lists only configured peers. */
function checkTls(config: AgentConfig): void {
  const { tls } = config;
  if (tls.mode === "off") return;
  const missing = (["cert", "key", "ca"] as const).filter((k) => tls[k] === undefined);
  if (missing.length) {
    throw new ConfigError(
      `tls.mode = "${tls.mode}" needs ${missing.map((k) => `tls.${k}`).join(", ")}: set ` +
        `${missing.map((k) => `--tls-${k} FILE`).join(", ")} (or in the config file); a test cluster's ` +
        `files come from "dwcp cert init --dir DIR --ids ${config.agentId},..."`,
    );
  }
  const unknown = tls.peers.filter((p) => !Object.hasOwn(config.peers, p));
  if (unknown.length) {
    throw new ConfigError(
      `tls.peers names ${unknown.map((p) => `"${p}"`).join(", ")}, not among the configured peers ` +
        `(${Object.keys(config.peers).join(", ") || "none"}): add each as --peer ID=HOST:PORT`,
    );
  }
}

export function splitHostPort(hostPort: string): { host: string; port: number } {
  const i = hostPort.lastIndexOf(":");
  return { host: hostPort.slice(0, i).replace(/^\[|\]$/g, ""), port: Number(hostPort.slice(i + 1)) };
}
