/** The shim speaks standard zstd and lz4 frames: the Debian `zstd` and `lz4` CLIs read what it writes, and back. */
import assert from "node:assert/strict";
import { Codec, type CodecName } from "../../ffi/codec.ts";

function hasCli(cli: string): boolean {
  try {
    const probe = new Deno.Command(cli, { args: ["--version"], stdout: "null", stderr: "null" });
    return probe.outputSync().success;
  } catch {
    return false;
  }
}

/** Runs a CLI, feeding it input on stdin when given, and returns its stdout; a failure carries its stderr. */
async function run(cli: string, args: string[], input?: Uint8Array): Promise<Uint8Array> {
  const stdin = input ? "piped" : "null";
  const child = new Deno.Command(cli, { args, stdin, stdout: "piped", stderr: "piped" }).spawn();
  const result = child.output(); // read while writing, or a full stdout pipe would block the CLI
  if (input) {
    const writer = child.stdin.getWriter();
    await writer.write(input);
    await writer.close();
  }
  const { success, stdout, stderr } = await result;
  if (!success) throw new Error(`${cli} ${args.join(" ")} failed: ${new TextDecoder().decode(stderr)}`);
  return stdout;
}

/** Text lines followed by random bytes: both matches and literals, and more than one 4 MiB lz4 block. */
function sample(): Uint8Array {
  const text = new TextEncoder().encode(
    Array.from({ length: 60_000 }, (_, i) => `{"seq":${i},"page":${i * 4096},"dirty":${i % 3 === 0}}\n`)
      .join(""),
  );
  const data = new Uint8Array(5 * (1 << 20));
  data.set(text.subarray(0, data.length));
  for (let i = text.length; i < data.length; i += 65536) {
    crypto.getRandomValues(data.subarray(i, Math.min(i + 65536, data.length)));
  }
  return data;
}

const data = sample();

/** Writes bytes to a file in a fresh temp directory, hands its path to fn, then removes the directory. */
async function withFile<T>(bytes: Uint8Array, fn: (path: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "dwcp-cli-interop-" });
  try {
    await Deno.writeFile(`${dir}/input`, bytes);
    return await fn(`${dir}/input`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function shimCompress(name: CodecName, level?: number): Uint8Array {
  const codec = new Codec(name, level);
  try {
    const dst = new Uint8Array(Codec.bound(name, data.length));
    return dst.subarray(0, codec.compress(data, dst));
  } finally {
    codec.close();
  }
}

function shimDecompress(name: CodecName, frame: Uint8Array): Uint8Array {
  const codec = new Codec(name);
  try {
    const out = new Uint8Array(data.length);
    assert.equal(codec.decompress(frame, out), data.length);
    return out;
  } finally {
    codec.close();
  }
}

const zstd = { name: "zstd", ignore: !hasCli("zstd") };
const lz4 = { name: "lz4", ignore: !hasCli("lz4") };

for (const level of [3, -3]) {
  Deno.test({
    ...zstd,
    name: `zstd -d reads a shim frame written at level ${level}`,
    async fn() {
      const out = await withFile(
        shimCompress("zstd", level),
        (path) => run("zstd", ["-d", "-q", "-c", path]),
      );
      assert.deepEqual(out, data);
    },
  });
}

Deno.test({
  ...lz4,
  name: "lz4 -d reads a shim frame",
  async fn() {
    const out = await withFile(shimCompress("lz4"), (path) => run("lz4", ["-d", "-q", "-c", path]));
    assert.deepEqual(out, data);
  },
});

const cliFrames: { cli: "zstd" | "lz4"; args: string[] }[] = [
  { cli: "zstd", args: ["-3"] },
  { cli: "zstd", args: ["--fast=3"] },
  { cli: "zstd", args: ["-12", "--no-check"] },
  { cli: "lz4", args: [] }, // the CLI default: independent blocks, content checksum, no content size
  { cli: "lz4", args: ["-B4", "--content-size"] },
  { cli: "lz4", args: ["-B4", "-BD", "-BX", "-9"] }, // dependent blocks, block checksums, HC level
];

for (const { cli, args } of cliFrames) {
  Deno.test({
    ...(cli === "zstd" ? zstd : lz4),
    name: `shim decompresses \`${[cli, ...args].join(" ")}\` output`,
    async fn() {
      const frame = await withFile(data, (path) => run(cli, [...args, "-q", "-c", path]));
      assert.deepEqual(shimDecompress(cli, frame), data);
    },
  });
}

Deno.test({
  ...zstd,
  name: "shim decompresses a streamed zstd frame that carries no content size",
  async fn() {
    const frame = await run("zstd", ["-q", "-c"], data);
    assert.equal(frame[4] & 0xe0, 0, "frame header declares no content size"); // FCS flag and single segment
    assert.deepEqual(shimDecompress("zstd", frame), data);
  },
});
