/**
 * The test/demo guest: Debian's cloud kernel plus a busybox initramfs whose /init
 * (tests/support/guest/init.sh) holds real data in memory, optionally re-dirties it, and prints a
 * heartbeat on the serial console (see heartbeat.ts).
 *
 * Built on first use from `apt-get download`ed packages and cached under `<repo>/.cache/guest/<key>/`,
 * where the key hashes the init script, the package versions and the builder version, so a changed
 * init script or a new kernel builds a new image. Builds happen in a private temporary directory that
 * is renamed into place when complete, so concurrent builders never see or leave a half-built image.
 */
import { createHash } from "node:crypto";
import { gzipSync } from "node:zlib";
import { fileURLToPath } from "node:url";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const INIT_SCRIPT = fileURLToPath(new URL("./guest/init.sh", import.meta.url));
/** Bump when the way the image is put together changes. */
const BUILDER_VERSION = "1";
const KERNEL_META = "linux-image-cloud-amd64";
const BUSYBOX = "busybox-static";

export interface GuestImage {
  kernel: string;
  initrd: string;
}

export interface GuestParams {
  /** MiB of data the workload holds in memory (guest default 64). */
  memMib?: number;
  /** MiB per second re-written across that memory (guest default 0). */
  dirtyMibps?: number;
  /** Heartbeat period in ms (guest default 20). */
  hbMs?: number;
  /** MiB one long-lived process rewrites from /dev/urandom, over and over (guest default 0). */
  rewriteMib?: number;
}

/** The kernel command line for the guest: console on ttyS0 plus the workload parameters. */
export function guestAppend(params: GuestParams = {}): string {
  const parts = ["console=ttyS0", "quiet"];
  if (params.memMib !== undefined) parts.push(`dwcp.mem_mib=${params.memMib}`);
  if (params.dirtyMibps !== undefined) parts.push(`dwcp.dirty_mibps=${params.dirtyMibps}`);
  if (params.hbMs !== undefined) parts.push(`dwcp.hb_ms=${params.hbMs}`);
  if (params.rewriteMib !== undefined) parts.push(`dwcp.rewrite_mib=${params.rewriteMib}`);
  return parts.join(" ");
}

/** Returns the kernel and initrd paths, building and caching them on first use. */
export async function guestImage(opts: { cacheDir?: string } = {}): Promise<GuestImage> {
  const cacheDir = opts.cacheDir ?? `${REPO}.cache/guest`;
  const init = await Deno.readTextFile(INIT_SCRIPT);
  const initHash = sha256(init);

  let pkgs: Packages;
  try {
    pkgs = await resolvePackages();
  } catch (err) {
    // Offline with no usable apt lists: an image built earlier from the same init script will do.
    const fallback = await findCachedByInit(cacheDir, initHash);
    if (fallback) return fallback;
    throw err;
  }
  const key = sha256(
    JSON.stringify({ builder: BUILDER_VERSION, init: initHash, kernel: pkgs.kernel, busybox: pkgs.busybox }),
  ).slice(0, 16);
  const dir = `${cacheDir}/${key}`;
  const image = { kernel: `${dir}/vmlinuz`, initrd: `${dir}/initrd.gz` };
  if (await exists(dir)) return image;

  await Deno.mkdir(cacheDir, { recursive: true });
  const tmp = await Deno.makeTempDir({ dir: cacheDir, prefix: ".build-" });
  try {
    await build(tmp, init, pkgs);
    await Deno.writeTextFile(
      `${tmp}/out/inputs.json`,
      JSON.stringify({ builder: BUILDER_VERSION, init: initHash, ...pkgs }, null, 2) + "\n",
    );
    try {
      await Deno.rename(`${tmp}/out`, dir);
    } catch (err) {
      // Another process finished the same build first; its image is identical.
      if (!(await exists(dir))) throw err;
    }
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
  return image;
}

interface Pkg {
  name: string;
  version: string;
}

interface Packages {
  kernel: Pkg;
  busybox: Pkg;
}

async function build(tmp: string, init: string, pkgs: Packages): Promise<void> {
  const debs = `${tmp}/debs`;
  const out = `${tmp}/out`;
  await Deno.mkdir(debs);
  await Deno.mkdir(out);

  const kernelDeb = await download(debs, pkgs.kernel, KERNEL_META);
  const busyboxDeb = await download(debs, pkgs.busybox, BUSYBOX);

  // Only the kernel image is needed from the kernel package (the console is the built-in 8250 UART,
  // so no modules), so extract just boot/vmlinuz-* rather than all of `dpkg -x`.
  const kx = `${tmp}/kernel`;
  await Deno.mkdir(kx);
  await run(
    "bash",
    [
      "-o",
      "pipefail",
      "-c",
      'dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards "./boot/vmlinuz-*"',
      "_",
      kernelDeb,
      kx,
    ],
    `cannot extract the kernel from ${kernelDeb}`,
  );
  const vmlinuz = [...Deno.readDirSync(`${kx}/boot`)].find((e) => e.name.startsWith("vmlinuz-"));
  if (!vmlinuz) throw new Error(`no boot/vmlinuz-* in ${kernelDeb}`);
  await Deno.copyFile(`${kx}/boot/${vmlinuz.name}`, `${out}/vmlinuz`);

  const bx = `${tmp}/busybox`;
  await run("dpkg", ["-x", busyboxDeb, bx], `cannot extract ${busyboxDeb}`);
  const busybox = await Deno.readFile(`${bx}/bin/busybox`);
  // The applet list, as paths like "usr/bin/awk", from the (static) busybox binary itself.
  const applets = (await run(`${bx}/bin/busybox`, ["--list-full"], "cannot list busybox applets"))
    .split("\n").map((s) => s.trim()).filter((s) => s && s !== "bin/busybox" && !s.startsWith("/"));

  await Deno.writeFile(`${out}/initrd.gz`, gzipSync(initramfs(busybox, applets, init), { level: 9 }));
}

/** A newc cpio archive: /init, busybox with its applet symlinks, /dev/console and the empty mount points. */
function initramfs(busybox: Uint8Array, applets: string[], init: string): Uint8Array {
  const cpio = new CpioWriter();
  const dirs = new Set([
    "bin",
    "sbin",
    "usr",
    "usr/bin",
    "usr/sbin",
    "dev",
    "proc",
    "sys",
    "tmp",
    "hold",
    "root",
  ]);
  for (const a of applets) {
    const parts = a.split("/");
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join("/"));
  }
  for (const d of [...dirs].sort()) cpio.dir(d, d === "tmp" ? 0o1777 : 0o755);
  cpio.file("bin/busybox", busybox, 0o755);
  for (const a of applets) cpio.symlink(a, "/bin/busybox");
  // The kernel opens /dev/console for init's stdio before /init can mount devtmpfs.
  cpio.charDev("dev/console", 0o600, 5, 1);
  cpio.file("init", new TextEncoder().encode(init), 0o755);
  return cpio.finish();
}

class CpioWriter {
  #chunks: Uint8Array[] = [];
  #ino = 1;

  dir(name: string, perm: number): void {
    this.#entry(name, 0o040000 | perm, new Uint8Array(), 2);
  }

  file(name: string, data: Uint8Array, perm: number): void {
    this.#entry(name, 0o100000 | perm, data);
  }

  symlink(name: string, target: string): void {
    this.#entry(name, 0o120000 | 0o777, new TextEncoder().encode(target));
  }

  charDev(name: string, perm: number, major: number, minor: number): void {
    this.#entry(name, 0o020000 | perm, new Uint8Array(), 1, major, minor);
  }

  finish(): Uint8Array {
    this.#entry("TRAILER!!!", 0, new Uint8Array(), 1, 0, 0, 0);
    const total = this.#chunks.reduce((n, c) => n + c.length, 0);
    const out = new Uint8Array(total);
    let off = 0;
    for (const c of this.#chunks) {
      out.set(c, off);
      off += c.length;
    }
    return out;
  }

  #entry(
    name: string,
    mode: number,
    data: Uint8Array,
    nlink = 1,
    rmajor = 0,
    rminor = 0,
    ino = this.#ino++,
  ): void {
    const nameBytes = new TextEncoder().encode(name + "\0");
    const hex = (n: number) => n.toString(16).padStart(8, "0");
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor,
    // namesize, check
    const header = "070701" +
      [ino, mode, 0, 0, nlink, 0, data.length, 0, 0, rmajor, rminor, nameBytes.length, 0].map(hex).join("");
    this.#push(new TextEncoder().encode(header));
    this.#push(nameBytes);
    this.#pad(header.length + nameBytes.length);
    this.#push(data);
    this.#pad(data.length);
  }

  #push(b: Uint8Array): void {
    if (b.length) this.#chunks.push(b);
  }

  #pad(len: number): void {
    const n = (4 - (len % 4)) % 4;
    if (n) this.#chunks.push(new Uint8Array(n));
  }
}

/** The versioned kernel package the metapackage points at, and busybox-static, at their candidates. */
async function resolvePackages(): Promise<Packages> {
  const attempt = async (): Promise<Packages> => {
    const meta = await aptShow(KERNEL_META);
    const dep = /(?:^|[\s,])(linux-image-\d[^\s,(|]*)/.exec(meta.depends ?? "");
    if (!dep) {
      throw new Error(`${KERNEL_META} ${meta.version} depends on no linux-image-*: "${meta.depends}"`);
    }
    const kernel = await aptShow(dep[1]);
    const busybox = await aptShow(BUSYBOX);
    return {
      kernel: { name: dep[1], version: kernel.version },
      busybox: { name: BUSYBOX, version: busybox.version },
    };
  };
  try {
    return await attempt();
  } catch (first) {
    // Most likely the package lists are missing (a fresh container): fetch them once and retry.
    try {
      await run("apt-get", ["update"], "apt-get update failed");
    } catch (update) {
      throw new Error(`cannot download ${KERNEL_META}: ${msg(first)}; ${msg(update)}`);
    }
    try {
      return await attempt();
    } catch (err) {
      throw new Error(`cannot download ${KERNEL_META}: ${msg(err)}`);
    }
  }
}

async function aptShow(pkg: string): Promise<{ version: string; depends?: string }> {
  const text = await run("apt-cache", ["show", "--no-all-versions", pkg], `apt-cache show ${pkg} failed`);
  const field = (f: string) => new RegExp(`^${f}: (.*)$`, "m").exec(text)?.[1]?.trim();
  const version = field("Version");
  if (!version) throw new Error(`apt-cache show ${pkg}: no Version field`);
  return { version, depends: field("Depends") };
}

async function download(dir: string, pkg: Pkg, label: string): Promise<string> {
  const spec = `${pkg.name}=${pkg.version}`;
  const get = () => run("apt-get", ["download", spec], `cannot download ${label} (${spec})`, dir);
  try {
    await get();
  } catch {
    await run("apt-get", ["update"], `cannot download ${label}: apt-get update failed`);
    await get();
  }
  const deb = [...Deno.readDirSync(dir)].find((e) =>
    e.name.startsWith(`${pkg.name}_`) && e.name.endsWith(".deb")
  );
  if (!deb) throw new Error(`cannot download ${label}: apt-get download ${spec} left no .deb in ${dir}`);
  return `${dir}/${deb.name}`;
}

async function run(cmd: string, args: string[], what: string, cwd?: string): Promise<string> {
  let res: Deno.CommandOutput;
  try {
    res = await new Deno.Command(cmd, { args, cwd, stdin: "null", stdout: "piped", stderr: "piped" })
      .output();
  } catch (err) {
    throw new Error(`${what}: cannot run ${cmd}: ${msg(err)}`);
  }
  const stdout = new TextDecoder().decode(res.stdout);
  if (!res.success) {
    const stderr = new TextDecoder().decode(res.stderr).trim().split("\n").slice(-10).join("\n");
    throw new Error(
      `${what}: ${cmd} ${args.join(" ")} exited with ${res.code}: ${stderr || stdout.slice(-2000)}`,
    );
  }
  return stdout;
}

async function findCachedByInit(cacheDir: string, initHash: string): Promise<GuestImage | undefined> {
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync(cacheDir)];
  } catch {
    return undefined;
  }
  for (const e of entries) {
    if (!e.isDirectory || e.name.startsWith(".")) continue;
    try {
      const inputs = JSON.parse(await Deno.readTextFile(`${cacheDir}/${e.name}/inputs.json`));
      if (inputs.init === initHash && inputs.builder === BUILDER_VERSION) {
        return { kernel: `${cacheDir}/${e.name}/vmlinuz`, initrd: `${cacheDir}/${e.name}/initrd.gz` };
      }
    } catch {
      // not a complete image
    }
  }
  return undefined;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

function sha256(s: string): string {
  return createHash("sha256").update(s).digest("hex");
}

function msg(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
