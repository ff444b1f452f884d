/**
 * The QEMU command line for a VM spec. Pure. Migration needs the same virtual machine on both sides,
 * so source and destination get identical arguments except their own sockets and `-incoming defer`.
 */
import type { VmSpec } from "./spec.ts";

export type Accelerator = "kvm" | "tcg";

export interface VmSocketPaths {
  /** QMP control socket (QEMU listens; dwcp connects). */
  qmpSocket: string;
  /** The guest's ttyS0 (QEMU listens; whoever wants the console connects). */
  serialSocket: string;
  /**
   * A second QMP monitor (QEMU listens), for handing sockets to QEMU: QEMU keeps passed descriptors per
   * monitor, and the shim speaks on it while the agent's client holds the first (ffi/qmp_fd.ts). Absent:
   * no second monitor.
   */
  fdMonitorSocket?: string;
}

/**
 * The virtual hardware, shared by VMs and the accelerator probe: q35, with the host CPU passed through
 * under KVM and QEMU's fullest emulated CPU under TCG. Both sides of a migration must resolve the same
 * accelerator (a VM cannot move between KVM and TCG with `-cpu host` on one side).
 */
export function machineArgs(accel: Accelerator): string[] {
  return ["-accel", accel, "-machine", "q35", "-cpu", accel === "kvm" ? "host" : "max"];
}

/**
 * What a TCG guest gets on top of the RAM asked for. QEMU before 9.0 loses guest writes when it migrates
 * from TCG (fixed upstream by 03bfc2188f, "physmem: Fix migration dirty bitmap coherency with TCG memory
 * access", which Debian 12's 7.2 lacks): when RAM is a whole number of 256 KiB (64 pages, one word of the
 * dirty bitmap), each bitmap sync takes a fast path that clears the migration's dirty bits without
 * resetting the TCG TLB, so stores through entries already marked dirty go unrecorded, and the destination
 * keeps stale pages (guests panicked there with corrupted kernel stacks). Any other size takes the
 * page-by-page path, which does reset the TLB; QEMU rounds RAM to 8 KiB, so 8 KiB more is the least that
 * does. Measured (QEMU 7.2.22, a guest rewriting 16 MiB without a context switch, QEMU's own migration):
 * 1961 and 2699 pages differed between source and destination at 256 MiB, none at 256 MiB + 8 KiB.
 */
const TCG_RAM_PAD_KIB = 8;

/** `-m`: the RAM asked for, with the pad above under TCG. KVM tracks dirty pages itself and gets it exact. */
function ramArg(memoryMiB: number, accel: Accelerator): string {
  return accel === "tcg" ? `${memoryMiB * 1024 + TCG_RAM_PAD_KIB}k` : `${memoryMiB}M`;
}

/** No default devices, no config files, no display, no monitor: everything dwcp needs is explicit. */
export const BASE_ARGS: readonly string[] = ["-nodefaults", "-no-user-config", "-display", "none"];

/** QEMU option values separate keys with ','; a literal ',' inside a value is written ',,'. */
export function escapeOptionValue(value: string): string {
  return value.replaceAll(",", ",,");
}

export function qemuArgs(
  spec: VmSpec,
  accel: Accelerator,
  paths: VmSocketPaths,
  opts: { incoming?: boolean } = {},
): string[] {
  const args = [
    "-name",
    escapeOptionValue(spec.name),
    ...machineArgs(accel),
    "-m",
    ramArg(spec.memoryMiB, accel),
    "-smp",
    String(spec.vcpus),
    ...BASE_ARGS,
    "-kernel",
    spec.kernel,
  ];
  if (spec.initrd !== undefined) args.push("-initrd", spec.initrd);
  args.push("-append", spec.cmdline);
  spec.disks.forEach((d, i) => {
    args.push(
      "-drive",
      [
        `id=disk${i}`,
        `file=${escapeOptionValue(d.path)}`,
        `format=${d.format}`,
        "if=virtio",
        `readonly=${d.readonly ? "on" : "off"}`,
        // O_DIRECT: no host page cache, so the destination reads what the source wrote (shared storage).
        "cache=none",
      ].join(","),
    );
  });
  args.push(
    "-qmp",
    `unix:${escapeOptionValue(paths.qmpSocket)},server=on,wait=off`,
    "-chardev",
    `socket,id=ser0,path=${escapeOptionValue(paths.serialSocket)},server=on,wait=off`,
    "-serial",
    "chardev:ser0",
  );
  if (paths.fdMonitorSocket !== undefined) {
    args.push(
      "-chardev",
      `socket,id=fdmon,path=${escapeOptionValue(paths.fdMonitorSocket)},server=on,wait=off`,
      "-mon",
      "chardev=fdmon,mode=control",
    );
  }
  if (opts.incoming) args.push("-incoming", "defer");
  return args;
}
