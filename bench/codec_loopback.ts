/**
 * Does datacenter-mode encoding ever make a loopback transfer slower than sending raw? Two real agents
 * on loopback (a datacenter link as their mode policy measures it), the same files sent with codec
 * "none" and with codec "auto" (the adaptive policy with the datacenter bias), runs interleaved,
 * median of --runs; the verdict compares the medians.
 *
 *   deno run --allow-all bench/codec_loopback.ts [--runs 3] [--memory-mib 1024] [--text-mib 256] [--out F]
 *
 * Files, in a fresh directory in /dev/shm removed at the end: a VM's memory (the test guest booted under
 * TCG, half its RAM holding data, saved with pmemsave: bench/guest_memory.ts), and --text-mib of real text
 * from /usr/include and /usr/share (compressible, no zero pages: the case where compressing tempts most).
 * The agents run with transfer.fsync off (tmpfs has nothing to sync), 4 streams. MB/s = payload bytes
 * (10^6) per second from the transfer's start to its commit.
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { startAgent, type TestAgent, waitForTransfer } from "../tests/support/agents.ts";
import { BenchGuest, MAX_MEMORY_MIB } from "./guest_memory.ts";
import { intArg, log, median } from "./cli_args.ts";

const MiB = 1024 * 1024;
const STREAMS = 4;
const TEXT_ROOTS = ["/usr/include", "/usr/share/perl", "/usr/share/common-licenses"];

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    runs: { type: "string", default: "3" },
    "memory-mib": { type: "string", default: "1024" },
    "text-mib": { type: "string", default: "256" },
    out: { type: "string" },
  },
  strict: true,
});

const runs = intArg("runs", args.runs, 1, 99);
const memoryMiB = intArg("memory-mib", args["memory-mib"], 128, MAX_MEMORY_MIB);
const textMiB = intArg("text-mib", args["text-mib"], 1, 4096);

/** Real text, files in a sorted walk, repeated until sizeBytes. */
async function writeText(path: string, sizeBytes: number): Promise<void> {
  const files: string[] = [];
  const walk = (dir: string) => {
    for (const e of [...Deno.readDirSync(dir)].sort((a, b) => a.name.localeCompare(b.name))) {
      if (e.isDirectory) walk(join(dir, e.name));
      else if (e.isFile) files.push(join(dir, e.name));
    }
  };
  for (const r of TEXT_ROOTS) walk(r);
  using out = await Deno.open(path, { write: true, create: true, truncate: true });
  let written = 0;
  while (written < sizeBytes) {
    for (const f of files) {
      const bytes = Deno.readFileSync(f).subarray(0, sizeBytes - written);
      if (bytes.includes(0)) continue;
      let off = 0;
      while (off < bytes.length) off += await out.write(bytes.subarray(off));
      written += bytes.length;
      if (written >= sizeBytes) break;
    }
  }
}

interface Run {
  codec: string;
  mbps: number;
  ratio: number;
  chosen?: unknown;
}

async function send(a: TestAgent, b: TestAgent, source: string, codec: string): Promise<Run> {
  const res = await a.json<{ id: string }>("/v1/transfers", {
    method: "POST",
    body: JSON.stringify({
      source,
      peer: b.dataAddr,
      destination: `in-${codec}-${crypto.randomUUID()}`,
      codec,
      streams: STREAMS,
    }),
  });
  if (res.status !== 201) throw new Error(`POST /v1/transfers: ${res.status} ${JSON.stringify(res.body)}`);
  const snap = await waitForTransfer(a, res.body.id) as Record<string, unknown>;
  if (snap.state !== "completed") {
    throw new Error(`${codec} transfer ${snap.state}: ${JSON.stringify(snap.error)}`);
  }
  // The received copy is not needed: free the tmpfs pages for the next run.
  await Deno.remove(join(b.root, snap.destination as string)).catch(() => {});
  const encoding = snap.encoding as { chosen?: unknown } | undefined;
  return {
    codec,
    mbps: (snap.sizeBytes as number) / 1e6 / ((snap.elapsedMs as number) / 1000),
    ratio: snap.ratio as number,
    chosen: encoding?.chosen,
  };
}

const dir = await Deno.makeTempDir({ dir: "/dev/shm", prefix: "dwcp-codec-loopback-" });
const agents: TestAgent[] = [];
let guest: BenchGuest | undefined;
const cleanup = async () => {
  await guest?.close();
  for (const a of agents) await a.stop().catch(() => {});
  await Deno.remove(dir, { recursive: true }).catch(() => {});
};
Deno.addSignalListener("SIGINT", () => void cleanup().finally(() => Deno.exit(130)));
try {
  for (const id of ["a", "b"]) {
    await Deno.mkdir(join(dir, id));
    agents.push(await startAgent({ id, root: join(dir, id), transfer: { fsync: false } }));
  }
  const [a, b] = agents;

  guest = await BenchGuest.boot({
    dir,
    memoryMiB,
    fillMib: Math.floor(memoryMiB / 2),
    name: "loopback",
    log,
  });
  await guest.snapshot(join(a.root, "vm-memory.bin"));
  const note = guest.note;
  await guest.close();
  guest = undefined;
  log(`text: ${textMiB} MiB from ${TEXT_ROOTS.join(", ")}`);
  await writeText(join(a.root, "text.bin"), textMiB * MiB);

  const samples = [
    { name: "vm-memory", file: "vm-memory.bin", note },
    { name: "text", file: "text.bin", note: `${textMiB} MiB of real text` },
  ];
  const results: { sample: string; runs: Run[] }[] = [];
  for (const s of samples) {
    const rs: Run[] = [];
    for (let i = 0; i < runs; i++) {
      for (const codec of ["none", "auto"]) {
        const r = await send(a, b, s.file, codec);
        log(`${s.name} run ${i + 1} ${codec}: ${r.mbps.toFixed(0)} MB/s, ratio ${r.ratio.toFixed(2)}`);
        rs.push(r);
      }
    }
    results.push({ sample: s.name, runs: rs });
  }

  console.log(
    `loopback, two agents, ${STREAMS} streams, ${navigator.hardwareConcurrency} CPUs, median of ${runs}`,
  );
  console.log("sample       none MB/s  auto MB/s  auto/none  auto ratio  auto picked (last run)");
  for (const r of results) {
    const of = (codec: string) => r.runs.filter((x) => x.codec === codec);
    const none = median(of("none").map((x) => x.mbps)), auto = median(of("auto").map((x) => x.mbps));
    console.log(
      `${r.sample.padEnd(11)} ${none.toFixed(0).padStart(10)} ${auto.toFixed(0).padStart(10)} ` +
        `${(auto / none).toFixed(2).padStart(10)} ${
          median(of("auto").map((x) => x.ratio)).toFixed(2).padStart(11)
        }  ` +
        (JSON.stringify(of("auto").at(-1)?.chosen) ?? "raw: no policy (the datacenter bias has no codecs)"),
    );
    console.log(
      `  datacenter mode never slower than none (${r.sample}): ${auto >= none ? "holds" : "MISSES"} ` +
        `(medians ${auto.toFixed(0)} vs ${none.toFixed(0)} MB/s; runs none ${
          of("none").map((x) => x.mbps.toFixed(0)).join("/")
        }, auto ${of("auto").map((x) => x.mbps.toFixed(0)).join("/")})`,
    );
  }
  if (args.out) {
    await Deno.writeTextFile(args.out, JSON.stringify({ runs, memoryMiB, textMiB, results }, null, 2));
  }
} finally {
  await cleanup();
}
