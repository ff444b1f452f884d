/**
 * A VM spec: what dwcp needs to start a QEMU guest (direct kernel boot, memory, vCPUs, disks). The
 * zod schema is exported so the API validates request bodies with the same rules.
 */
import { z } from "zod";

export const VM_LIMITS = {
  minMemoryMiB: 64,
  maxMemoryMiB: 65536,
  minVcpus: 1,
  maxVcpus: 64,
  maxDisks: 16,
  maxCmdlineChars: 4096,
  maxPathChars: 4096,
} as const;

export const VM_NAME_PATTERN = /^[a-z0-9][a-z0-9-]{0,62}$/;

/** Serial console on ttyS0 (the serial socket), so boot output can be read and logged. */
export const DEFAULT_CMDLINE = "console=ttyS0";

const path = (what: string) =>
  z.string().min(1, { message: `give the path of the ${what}` })
    .max(VM_LIMITS.maxPathChars, { message: `the ${what} path is longer than ${VM_LIMITS.maxPathChars}` })
    .refine((p) => !p.includes("\0"), { message: `the ${what} path contains a NUL byte` });

export const diskSpecSchema = z.object({
  path: path("disk image"),
  format: z.enum(["raw", "qcow2"], { message: 'format must be "raw" or "qcow2"' }).default("raw"),
  readonly: z.boolean().default(false),
}).strict();

export const vmSpecSchema = z.object({
  name: z.string().regex(VM_NAME_PATTERN, {
    message: "a VM name is 1..63 characters of a-z, 0-9 and '-', starting with a letter or digit",
  }),
  memoryMiB: z.number().int({ message: "memoryMiB must be a whole number of MiB" })
    .min(VM_LIMITS.minMemoryMiB, {
      message: `memoryMiB must be ${VM_LIMITS.minMemoryMiB}..${VM_LIMITS.maxMemoryMiB}`,
    })
    .max(VM_LIMITS.maxMemoryMiB, {
      message: `memoryMiB must be ${VM_LIMITS.minMemoryMiB}..${VM_LIMITS.maxMemoryMiB}`,
    }),
  vcpus: z.number().int({ message: "vcpus must be a whole number" })
    .min(VM_LIMITS.minVcpus, { message: `vcpus must be ${VM_LIMITS.minVcpus}..${VM_LIMITS.maxVcpus}` })
    .max(VM_LIMITS.maxVcpus, { message: `vcpus must be ${VM_LIMITS.minVcpus}..${VM_LIMITS.maxVcpus}` }),
  kernel: path("kernel"),
  initrd: path("initrd").optional(),
  cmdline: z.string().max(VM_LIMITS.maxCmdlineChars, {
    message: `cmdline is longer than ${VM_LIMITS.maxCmdlineChars} characters`,
  }).default(DEFAULT_CMDLINE),
  disks: z.array(diskSpecSchema).max(VM_LIMITS.maxDisks, {
    message: `at most ${VM_LIMITS.maxDisks} disks`,
  }).default([]),
  accelerator: z.enum(["auto", "kvm", "tcg"], { message: 'accelerator must be "auto", "kvm" or "tcg"' })
    .default("auto"),
}).strict();

/** A validated spec, defaults filled in. */
export type VmSpec = z.output<typeof vmSpecSchema>;
/** What a caller may pass: optional fields may be left out. */
export type VmSpecInput = z.input<typeof vmSpecSchema>;
export type DiskSpec = z.output<typeof diskSpecSchema>;
export type RequestedAccelerator = VmSpec["accelerator"];

export interface VmSpecIssue {
  field: string;
  value: unknown;
  message: string;
}

export class VmSpecError extends Error {
  override name = "VmSpecError";
  readonly code = "invalid_vm_spec";
  constructor(readonly issues: VmSpecIssue[]) {
    super(
      "invalid VM spec: " +
        issues.map((i) => `${i.field} = ${showValue(i.value)}: ${i.message}`).join("; "),
    );
  }
}

function showValue(v: unknown): string {
  if (v === undefined) return "(missing)";
  const text = JSON.stringify(v) ?? String(v);
  return text.length > 80 ? text.slice(0, 77) + "..." : text;
}

/** Validates a spec; VmSpecError names each bad field and its value. */
export function parseVmSpec(input: unknown): VmSpec {
  const result = vmSpecSchema.safeParse(input);
  if (result.success) return result.data;
  throw new VmSpecError(result.error.issues.flatMap((i): VmSpecIssue[] => {
    const at = (keys: PropertyKey[]) =>
      keys.reduce<unknown>(
        (o, k) => (typeof o === "object" && o !== null ? (o as Record<PropertyKey, unknown>)[k] : undefined),
        input,
      );
    const name = (keys: PropertyKey[]) => keys.map(String).join(".") || "(spec)";
    // An unknown key is reported on its object; name the key itself, once per key.
    if (i.code === "unrecognized_keys") {
      return i.keys.map((k) => ({
        field: name([...i.path, k]),
        value: at([...i.path, k]),
        message: i.path.length === 0
          ? `unknown field; a VM spec has ${Object.keys(vmSpecSchema.shape).join(", ")}`
          : `unknown field; a disk has ${Object.keys(diskSpecSchema.shape).join(", ")}`,
      }));
    }
    return [{ field: name(i.path), value: at(i.path), message: i.message }];
  }));
}
