/**
 * Finds a QEMU left running by an earlier agent process (one that was killed: QEMU outlives it). Such a
 * process still serves the VM's sockets, so a new start under the same name must not take them over.
 */

/** The pid of a live process whose command line names path, if any (Linux /proc). */
export async function processUsing(path: string): Promise<number | undefined> {
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir("/proc"));
  } catch {
    return undefined; // no /proc: nothing to find
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e.name) || Number(e.name) === Deno.pid) continue;
    const cmdline = await Deno.readTextFile(`/proc/${e.name}/cmdline`).catch(() => "");
    if (cmdline.split("\0").some((arg) => arg.includes(path))) return Number(e.name);
  }
  return undefined;
}
