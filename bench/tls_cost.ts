/**
 * What TLS costs a transfer: dwcp plain against dwcp over TLS, on loopback, in the same run. Three pairs
 * of real agents: TLS off; TLS on (the receiver's data port is a Deno.listenTls); and TLS through an
 * "auto" data port (the receiver relays TLS connections over loopback to its internal TLS listener).
 *
 *   deno run --allow-all bench/tls_cost.ts [--size-mib 512] [--runs 3] [--streams 1,4] [--dir DIR]
 *     [--out results.json]
 *
 * Certificates come from `dwcp cert init` (the openssl CLI). Files live in a fresh directory in /dev/shm
 * (or under --dir) and the agents run with transfer.fsync off, so the disk does not hide the cipher.
 * Throughput is MB/s (10^6 bytes/s) of payload; each figure is the median of --runs runs, the three
 * pairs interleaved within each run so that a busy moment of the machine hits them alike. On a machine
 * others share, wall-clock rates swing with their load, so the CPU time both agents spent per GiB moved
 * (user + system, from /proc) is printed too: it is what the cipher costs, and it barely moves with load.
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { certInit } from "../src/cli/cert.ts";
import { startAgent, type TestAgent, waitForTransfer, writeRandomFile } from "../tests/support/agents.ts";
import { intArg, median } from "./cli_args.ts";

const MiB = 1024 * 1024;

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    "size-mib": { type: "string", default: "512" },
    runs: { type: "string", default: "3" },
    streams: { type: "string", default: "1,4" },
    dir: { type: "string" },
    out: { type: "string" },
  },
  strict: true,
});

const sizeBytes = intArg("size-mib", args["size-mib"], 1) * MiB;
const runs = intArg("runs", args.runs, 1);
const streamCounts = args.streams.split(",").map((s) => intArg("streams", s.trim(), 1));

const VARIANTS = ["plain", "tls", "auto"] as const;
type Variant = typeof VARIANTS[number];

const agents: TestAgent[] = [];
let base: string | undefined;

/** A receiver b and a sender a that knows b by name; their TLS settings follow the variant. */
async function startPair(variant: Variant, certDir: string): Promise<[TestAgent, TestAgent]> {
  const tls = (id: string) => {
    const files = {
      ca: join(certDir, "ca.crt"),
      cert: join(certDir, `${id}.crt`),
      key: join(certDir, `${id}.key`),
    };
    if (variant === "plain") return { mode: "off" };
    if (variant === "tls") return { mode: "on", ...files };
    // The receiver's port takes both; the sender reaches b over TLS because it lists b.
    return { mode: "auto", ...files, peers: id === "a" ? ["b"] : [] };
  };
  const roots = await Promise.all(["a", "b"].map(async (side) => {
    const root = join(base!, `${variant}-${side}`);
    await Deno.mkdir(root, { recursive: true });
    return root;
  }));
  const b = await startAgent({ id: "b", root: roots[1], transfer: { fsync: false }, tls: tls("b") });
  agents.push(b);
  const a = await startAgent({
    id: "a",
    root: roots[0],
    transfer: { fsync: false },
    tls: tls("a"),
    peers: { b: b.dataAddr },
  });
  agents.push(a);
  return [a, b];
}

/** The clock ticks per second that /proc counts CPU time in. */
const CLOCK_TICKS_PER_SEC = Number(
  new TextDecoder().decode((await new Deno.Command("getconf", { args: ["CLK_TCK"] }).output()).stdout),
);

/** CPU seconds (user + system, all threads) a process has used so far. */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  // Fields after the command name (in parentheses, which may hold spaces): state is 0, utime 11, stime 12.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SEC;
}

interface Sample {
  mbps: number;
  /** CPU seconds of sender and receiver together per GiB moved. */
  cpuSecPerGiB: number;
}

/** One transfer of source.bin from a to b; MB/s = size / elapsed of the final snapshot. */
async function transfer(a: TestAgent, b: TestAgent, streams: number): Promise<Sample> {
  const cpuBefore = await cpuSeconds(a.pid) + await cpuSeconds(b.pid);
  const { status, body } = await a.json("/v1/transfers", {
    method: "POST",
    body: JSON.stringify({
      source: "source.bin",
      peer: "b",
      destination: "copy.bin",
      streams,
      overwrite: true,
    }),
  });
  if (status !== 201) throw new Error(`POST /v1/transfers answered ${status}: ${JSON.stringify(body)}`);
  const snap = await waitForTransfer(a, body.id as string);
  if (snap.state !== "completed") {
    throw new Error(`transfer ${snap.id} ended ${snap.state}: ${JSON.stringify(snap.error)}\n${a.logs}`);
  }
  const dest = join(b.root, "copy.bin");
  const got = (await Deno.stat(dest)).size;
  await Deno.remove(dest);
  if (got !== sizeBytes) throw new Error(`the copy has ${got} bytes, expected ${sizeBytes}`);
  const cpu = await cpuSeconds(a.pid) + await cpuSeconds(b.pid) - cpuBefore;
  return {
    mbps: sizeBytes / ((snap.elapsedMs as number) / 1000) / 1e6,
    cpuSecPerGiB: cpu / (sizeBytes / 1024 / MiB),
  };
}

const fmt = (n: number, w: number, d = 0) => n.toFixed(d).padStart(w);

try {
  const parent = args.dir ?? "/dev/shm";
  await Deno.mkdir(parent, { recursive: true });
  base = await Deno.makeTempDir({ dir: parent, prefix: "dwcp-tls-bench-" });
  const certDir = join(base, "certs");
  await certInit({ dir: certDir, ids: ["a", "b"] });

  console.log(
    `dwcp plain vs TLS on loopback: ${sizeBytes / MiB} MiB, ${runs} run(s) per point (median), streams ` +
      `${streamCounts.join(",")}, ${navigator.hardwareConcurrency} CPU(s), files in ${base}, fsync off`,
  );
  const pairs = {} as Record<Variant, [TestAgent, TestAgent]>;
  for (const v of VARIANTS) {
    pairs[v] = await startPair(v, certDir);
    await writeRandomFile(join(pairs[v][0].root, "source.bin"), sizeBytes);
  }

  const rows = streamCounts.map((streams) => ({
    streams,
    samples: { plain: [] as Sample[], tls: [] as Sample[], auto: [] as Sample[] },
  }));
  for (const row of rows) {
    for (let r = 0; r < runs; r++) {
      for (const v of VARIANTS) row.samples[v].push(await transfer(...pairs[v], row.streams));
      console.error(
        `  P=${row.streams} run ${r + 1}/${runs}: ` +
          VARIANTS.map((v) => {
            const s = row.samples[v].at(-1)!;
            return `${v} ${s.mbps.toFixed(0)} MB/s ${s.cpuSecPerGiB.toFixed(2)} CPU s/GiB`;
          }).join(", "),
      );
    }
  }

  console.log();
  console.log("                 MB/s (median)                 CPU s/GiB, both agents (median)");
  console.log(
    "   P   plain    TLS   auto  TLS/plain  auto/plain   plain    TLS   auto  TLS/plain  auto/plain",
  );
  const table = rows.map((row) => {
    const med = (v: Variant, k: keyof Sample) => median(row.samples[v].map((s) => s[k]));
    const mbps = { plain: med("plain", "mbps"), tls: med("tls", "mbps"), auto: med("auto", "mbps") };
    const cpu = {
      plain: med("plain", "cpuSecPerGiB"),
      tls: med("tls", "cpuSecPerGiB"),
      auto: med("auto", "cpuSecPerGiB"),
    };
    console.log(
      `${fmt(row.streams, 4)}  ${fmt(mbps.plain, 6)} ${fmt(mbps.tls, 6)} ${fmt(mbps.auto, 6)}  ` +
        `${fmt(mbps.tls / mbps.plain, 9, 2)}  ${fmt(mbps.auto / mbps.plain, 10, 2)}  ` +
        `${fmt(cpu.plain, 6, 2)} ${fmt(cpu.tls, 6, 2)} ${fmt(cpu.auto, 6, 2)}  ` +
        `${fmt(cpu.tls / cpu.plain, 9, 2)}  ${fmt(cpu.auto / cpu.plain, 10, 2)}`,
    );
    return { ...row, median: { mbps, cpuSecPerGiB: cpu } };
  });

  if (args.out) {
    const results = {
      sizeBytes,
      runs,
      cpus: navigator.hardwareConcurrency,
      unit: "MB/s (1e6 bytes/s)",
      table,
    };
    await Deno.writeTextFile(args.out, JSON.stringify(results, null, 2) + "\n");
    console.log(`results written to ${args.out}`);
  }
} catch (err) {
  for (const a of agents) {
    const status = await Promise.race([a.exited, new Promise((r) => setTimeout(r, 100, undefined))]);
    if (status) console.error(`agent ${a.id} exited (${JSON.stringify(status)}); its stderr:\n${a.logs}`);
  }
  throw err;
} finally {
  await Promise.all(agents.map((a) => a.stop()));
  if (base) await Deno.remove(base, { recursive: true }).catch(() => {});
}
