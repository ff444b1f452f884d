/** `dwcp vm start|list|stop`: QEMU guests on the local agent. */
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { DEFAULT_CMDLINE, VM_LIMITS, VM_NAME_PATTERN } from "../vm/spec.ts";
import type { VmInfo } from "./client.ts";
import {
  apiClient,
  CLIENT_OPTIONS,
  CLIENT_OPTIONS_HELP,
  exactlyOne,
  noArguments,
  oneOf,
  UsageError,
  wholeNumber,
} from "./common.ts";
import { table } from "./format.ts";

const DEFAULT_MEMORY_MIB = 512;
const DEFAULT_VCPUS = 1;
const ACCELERATORS = ["auto", "kvm", "tcg"] as const;
export type Accelerator = typeof ACCELERATORS[number];
const MEMORY_RANGE = `${VM_LIMITS.minMemoryMiB}..${VM_LIMITS.maxMemoryMiB}`;

export const VM_USAGE = `usage: dwcp vm <start|list|stop> [options]

Starts, lists and stops QEMU guests on the local agent.

  dwcp vm start NAME --kernel FILE [options]   boot a guest from a kernel (and initrd)
  dwcp vm list                                 list the agent's guests
  dwcp vm stop NAME                            stop a guest (QEMU quits at once)

Run "dwcp vm start --help" for the options of start.`;

export const VM_START_USAGE = `usage: dwcp vm start NAME --kernel FILE [options]

Boots a guest named NAME (a-z, 0-9 and '-') on the local agent by direct kernel boot. The files must lie
inside the agent's roots.

  --kernel FILE          the kernel image (required)
  --initrd FILE          an initramfs
  --memory MiB           guest memory, ${MEMORY_RANGE} (default ${DEFAULT_MEMORY_MIB})
  --vcpus N              virtual CPUs, ${VM_LIMITS.minVcpus}..${VM_LIMITS.maxVcpus} (default ${DEFAULT_VCPUS})
  --append CMDLINE       kernel command line (default "${DEFAULT_CMDLINE}": the console is the serial socket)
  --accel auto|kvm|tcg   accelerator; auto takes KVM when it works, else TCG (default auto)

${CLIENT_OPTIONS_HELP}`;

const VM_LIST_USAGE = `usage: dwcp vm list [options]

Lists the guests of the local agent: running, paused, incoming (a migration's destination), migrated
away and recently stopped.

${CLIENT_OPTIONS_HELP}`;

const VM_STOP_USAGE = `usage: dwcp vm stop NAME [options]

Stops the guest NAME: QEMU quits at once (the guest is not asked to shut down).

${CLIENT_OPTIONS_HELP}`;

/** --accel: auto (when not given), kvm or tcg. */
export function parseAccel(text: string | undefined): Accelerator {
  return oneOf("--accel", text, ACCELERATORS) ?? "auto";
}

function vmName(positionals: string[], what: string): string {
  const name = exactlyOne(positionals, `VM NAME to ${what}`);
  if (!VM_NAME_PATTERN.test(name)) {
    throw new UsageError(
      `"${name}" is not a VM name: 1..63 characters of a-z, 0-9 and '-', not starting with '-'`,
    );
  }
  return name;
}

export function vmTable(vms: VmInfo[]): string {
  if (vms.length === 0) return "no VMs";
  return table([
    ["NAME", "STATE", "ACCEL", "MEMORY", "VCPUS", "PID", "STARTED"],
    ...vms.map((v) => [
      v.name,
      v.state,
      v.accelerator ?? "-",
      `${v.spec.memoryMiB} MiB`,
      String(v.spec.vcpus),
      v.pid === undefined ? "-" : String(v.pid),
      v.startedAt,
    ]),
  ]);
}

export function vmDetails(v: VmInfo): string {
  const rows = [
    ["vm", v.name],
    ["state", v.qemuStatus ? `${v.state} (QEMU ${v.qemuStatus})` : v.state],
    [
      "accelerator",
      v.accelerator ? `${v.accelerator}${v.acceleratorReason ? `: ${v.acceleratorReason}` : ""}` : "-",
    ],
    ["memory", `${v.spec.memoryMiB} MiB`],
    ["vcpus", String(v.spec.vcpus)],
    ["kernel", v.spec.kernel],
    ...(v.spec.initrd ? [["initrd", v.spec.initrd]] : []),
    ["cmdline", v.spec.cmdline],
    ["pid", v.pid === undefined ? "-" : String(v.pid)],
    ["serial", v.serialSocket],
    ["qmp", v.qmpSocket],
  ];
  if (v.exit) rows.push(["exit", `code ${v.exit.code}${v.exit.signal ? ` (${v.exit.signal})` : ""}`]);
  return table(rows);
}

async function vmStart(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      ...CLIENT_OPTIONS,
      kernel: { type: "string" },
      initrd: { type: "string" },
      memory: { type: "string" },
      vcpus: { type: "string" },
      append: { type: "string" },
      accel: { type: "string" },
    },
  });
  if (values.help) {
    console.log(VM_START_USAGE);
    return 0;
  }
  const name = vmName(positionals, "start");
  if (!values.kernel) throw new UsageError("--kernel FILE is required");
  const accelerator = parseAccel(values.accel);
  const spec = {
    name,
    kernel: resolve(values.kernel),
    initrd: values.initrd === undefined ? undefined : resolve(values.initrd),
    memoryMiB: wholeNumber("--memory", values.memory, VM_LIMITS.minMemoryMiB, VM_LIMITS.maxMemoryMiB) ??
      DEFAULT_MEMORY_MIB,
    vcpus: wholeNumber("--vcpus", values.vcpus, VM_LIMITS.minVcpus, VM_LIMITS.maxVcpus) ?? DEFAULT_VCPUS,
    cmdline: values.append,
    accelerator,
  };
  const vm = await apiClient(values).startVm(spec);
  console.log(values.json ? JSON.stringify(vm) : vmDetails(vm));
  return 0;
}

async function vmList(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: CLIENT_OPTIONS });
  if (values.help) {
    console.log(VM_LIST_USAGE);
    return 0;
  }
  noArguments(positionals);
  const vms = await apiClient(values).listVms();
  console.log(values.json ? JSON.stringify({ vms }) : vmTable(vms));
  return 0;
}

async function vmStop(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: CLIENT_OPTIONS });
  if (values.help) {
    console.log(VM_STOP_USAGE);
    return 0;
  }
  const vm = await apiClient(values).stopVm(vmName(positionals, "stop"));
  console.log(values.json ? JSON.stringify(vm) : `stopped VM ${vm.name} (${vm.state})`);
  return 0;
}

export async function vmCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  switch (sub) {
    case "start":
      return await vmStart(rest);
    case "list":
      return await vmList(rest);
    case "stop":
      return await vmStop(rest);
    case "-h":
    case "--help":
    case "help":
      console.log(VM_USAGE);
      return 0;
    case undefined:
      throw new UsageError("give a subcommand: start, list or stop");
    default:
      throw new UsageError(`unknown subcommand "${sub}"; use start, list or stop`);
  }
}
