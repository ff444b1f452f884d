/** A VM spec's files (kernel, initrd, disks) must lie inside the agent's roots, like any path it is given. */
import type { Roots } from "../agent/roots.ts";
import type { VmSpec } from "./spec.ts";

export async function confineVmSpec(roots: Roots, spec: VmSpec): Promise<VmSpec> {
  const real = async (path: string) => (await roots.source(path)).path;
  return {
    ...spec,
    kernel: await real(spec.kernel),
    initrd: spec.initrd === undefined ? undefined : await real(spec.initrd),
    disks: await Promise.all(spec.disks.map(async (d) => ({ ...d, path: await real(d.path) }))),
  };
}
