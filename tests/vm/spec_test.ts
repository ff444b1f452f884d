/** src/vm/spec.ts (validation, defaults, messages) and src/vm/qemu_args.ts (the QEMU command line). */
import assert from "node:assert/strict";
import { escapeOptionValue, machineArgs, qemuArgs } from "../../src/vm/qemu_args.ts";
import { DEFAULT_CMDLINE, parseVmSpec, type VmSpec, VmSpecError, vmSpecSchema } from "../../src/vm/spec.ts";

const MINIMAL = { name: "vm-1", memoryMiB: 256, vcpus: 2, kernel: "/boot/vmlinuz" };

function specError(input: unknown): VmSpecError {
  try {
    parseVmSpec(input);
  } catch (err) {
    assert.ok(err instanceof VmSpecError, `expected VmSpecError, got ${err}`);
    assert.equal(err.code, "invalid_vm_spec");
    return err;
  }
  assert.fail(`spec ${JSON.stringify(input)} was accepted`);
}

Deno.test("spec: a minimal spec gets its defaults", () => {
  assert.deepEqual(parseVmSpec(MINIMAL), {
    ...MINIMAL,
    cmdline: DEFAULT_CMDLINE,
    disks: [],
    accelerator: "auto",
  });
  const full = parseVmSpec({
    ...MINIMAL,
    initrd: "/boot/initrd.gz",
    cmdline: "console=ttyS0 quiet",
    disks: [{ path: "/a.img" }, { path: "/b.qcow2", format: "qcow2", readonly: true }],
    accelerator: "tcg",
  });
  assert.deepEqual(full.disks, [
    { path: "/a.img", format: "raw", readonly: false },
    { path: "/b.qcow2", format: "qcow2", readonly: true },
  ]);
  assert.equal(full.accelerator, "tcg");
  // The exported schema is the one parseVmSpec uses (the API validates bodies with it).
  assert.deepEqual(vmSpecSchema.parse(MINIMAL), parseVmSpec(MINIMAL));
});

Deno.test("spec: names", () => {
  for (const name of ["a", "0", "vm-1", "a".repeat(63), "x-y-z"]) {
    assert.equal(parseVmSpec({ ...MINIMAL, name }).name, name);
  }
  for (const name of ["", "-a", "A", "vm_1", "vm.1", "a".repeat(64), "vm 1", "é"]) {
    const err = specError({ ...MINIMAL, name });
    assert.equal(err.issues[0].field, "name");
    assert.equal(err.issues[0].value, name);
    assert.match(
      err.message,
      new RegExp(`name = ${JSON.stringify(name).replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}`),
    );
  }
});

Deno.test("spec: memory and vCPU bounds, whole numbers only", () => {
  assert.equal(parseVmSpec({ ...MINIMAL, memoryMiB: 64 }).memoryMiB, 64);
  assert.equal(parseVmSpec({ ...MINIMAL, memoryMiB: 65536 }).memoryMiB, 65536);
  assert.equal(parseVmSpec({ ...MINIMAL, vcpus: 1 }).vcpus, 1);
  assert.equal(parseVmSpec({ ...MINIMAL, vcpus: 64 }).vcpus, 64);
  for (const memoryMiB of [63, 65537, 128.5, "256", -1]) {
    const err = specError({ ...MINIMAL, memoryMiB });
    assert.equal(err.issues[0].field, "memoryMiB");
    assert.equal(err.issues[0].value, memoryMiB);
    assert.match(err.message, /memoryMiB = /);
  }
  for (const vcpus of [0, 65, 1.5]) {
    const err = specError({ ...MINIMAL, vcpus });
    assert.equal(err.issues[0].field, "vcpus");
    assert.match(err.message, new RegExp(`vcpus = ${vcpus}: vcpus must be`));
  }
});

Deno.test("spec: paths, disks, accelerator, unknown fields", () => {
  assert.equal(specError({ ...MINIMAL, kernel: "" }).issues[0].field, "kernel");
  assert.equal(specError({ ...MINIMAL, initrd: "" }).issues[0].field, "initrd");
  assert.equal(specError({ ...MINIMAL, kernel: "/a\0b" }).issues[0].field, "kernel");
  const disk = specError({ ...MINIMAL, disks: [{ path: "/ok" }, { path: "/d", format: "vmdk" }] });
  assert.deepEqual(disk.issues.map((i) => [i.field, i.value]), [["disks.1.format", "vmdk"]]);
  assert.match(disk.message, /disks\.1\.format = "vmdk": format must be "raw" or "qcow2"/);
  const accel = specError({ ...MINIMAL, accelerator: "hvf" });
  assert.match(accel.message, /accelerator = "hvf": accelerator must be "auto", "kvm" or "tcg"/);
  const unknown = specError({ ...MINIMAL, memory: 512, disks: [{ path: "/d", cache: "none" }] });
  assert.deepEqual(unknown.issues.map((i) => i.field).sort(), ["disks.0.cache", "memory"]);
  assert.match(unknown.message, /memory = 512: unknown field; a VM spec has name, memoryMiB/);
  const missing = specError({ name: "x" });
  assert.deepEqual(missing.issues.map((i) => i.field).sort(), ["kernel", "memoryMiB", "vcpus"]);
  assert.match(missing.message, /memoryMiB = \(missing\)/);
  assert.match(specError(null).message, /\(spec\) = null/);
});

// --- qemu_args ------------------------------------------------------------------------------------------

const PATHS = {
  qmpSocket: "/run/dwcp/vm-1/qmp.sock",
  serialSocket: "/run/dwcp/vm-1/serial.sock",
  fdMonitorSocket: "/run/dwcp/vm-1/fd-qmp.sock",
};

/** The value following each occurrence of a flag. */
function values(args: string[], flag: string): string[] {
  return args.flatMap((a, i) => (a === flag ? [args[i + 1]] : []));
}

Deno.test("qemu_args: a TCG guest with initrd and disks", () => {
  const spec = parseVmSpec({
    ...MINIMAL,
    initrd: "/boot/initrd.gz",
    cmdline: "console=ttyS0 quiet",
    disks: [{ path: "/img/root.qcow2", format: "qcow2" }, { path: "/img/data,1.raw", readonly: true }],
  });
  const args = qemuArgs(spec, "tcg", PATHS);
  assert.deepEqual(values(args, "-accel"), ["tcg"]);
  assert.deepEqual(values(args, "-machine"), ["q35"]);
  assert.deepEqual(values(args, "-cpu"), ["max"]);
  // 8 KiB over the 256 MiB asked: QEMU 7.2 then tracks a TCG guest's writes page by page (qemu_args.ts).
  assert.deepEqual(values(args, "-m"), ["262152k"]);
  assert.deepEqual(values(args, "-smp"), ["2"]);
  assert.deepEqual(values(args, "-kernel"), ["/boot/vmlinuz"]);
  assert.deepEqual(values(args, "-initrd"), ["/boot/initrd.gz"]);
  assert.deepEqual(values(args, "-append"), ["console=ttyS0 quiet"]);
  assert.deepEqual(values(args, "-drive"), [
    "id=disk0,file=/img/root.qcow2,format=qcow2,if=virtio,readonly=off,cache=none",
    "id=disk1,file=/img/data,,1.raw,format=raw,if=virtio,readonly=on,cache=none",
  ]);
  assert.deepEqual(values(args, "-qmp"), ["unix:/run/dwcp/vm-1/qmp.sock,server=on,wait=off"]);
  assert.deepEqual(values(args, "-chardev"), [
    "socket,id=ser0,path=/run/dwcp/vm-1/serial.sock,server=on,wait=off",
    "socket,id=fdmon,path=/run/dwcp/vm-1/fd-qmp.sock,server=on,wait=off",
  ]);
  assert.deepEqual(values(args, "-mon"), ["chardev=fdmon,mode=control"]);
  assert.deepEqual(values(args, "-serial"), ["chardev:ser0"]);
  for (const flag of ["-nodefaults", "-no-user-config"]) assert.ok(args.includes(flag), flag);
  assert.deepEqual(values(args, "-display"), ["none"]);
  for (const flag of ["-incoming", "-daemonize", "-S", "-nographic"]) assert.ok(!args.includes(flag), flag);
});

Deno.test("qemu_args: KVM passes the host CPU through; no initrd, no disks", () => {
  const args = qemuArgs(parseVmSpec(MINIMAL), "kvm", PATHS);
  assert.deepEqual(values(args, "-accel"), ["kvm"]);
  assert.deepEqual(values(args, "-cpu"), ["host"]);
  assert.deepEqual(values(args, "-m"), ["256M"]);
  assert.deepEqual(machineArgs("kvm"), ["-accel", "kvm", "-machine", "q35", "-cpu", "host"]);
  assert.ok(!args.includes("-initrd"));
  assert.ok(!args.includes("-drive"));
  assert.deepEqual(values(args, "-append"), [DEFAULT_CMDLINE]);
});

Deno.test("qemu_args: source and destination differ only in sockets and -incoming defer", () => {
  const spec: VmSpec = parseVmSpec({
    ...MINIMAL,
    initrd: "/boot/initrd.gz",
    disks: [{ path: "/shared/root.img" }],
  });
  const src = qemuArgs(spec, "tcg", PATHS);
  const dstPaths = {
    qmpSocket: "/other/qmp.sock",
    serialSocket: "/other/serial.sock",
    fdMonitorSocket: "/other/fd-qmp.sock",
  };
  const dst = qemuArgs(spec, "tcg", dstPaths, { incoming: true });
  assert.deepEqual(dst.slice(-2), ["-incoming", "defer"]);
  const normalize = (args: string[], p: typeof PATHS) =>
    args.map((a) =>
      a.replace(p.qmpSocket, "QMP").replace(p.serialSocket, "SERIAL").replace(p.fdMonitorSocket, "FDMON")
    );
  assert.deepEqual(normalize(dst.slice(0, -2), dstPaths), normalize(src, PATHS));
  // Pure: the same inputs give the same arguments.
  assert.deepEqual(qemuArgs(spec, "tcg", PATHS), src);
});

Deno.test("qemu_args: option values escape commas", () => {
  assert.equal(escapeOptionValue("a,b,,c"), "a,,b,,,,c");
  const args = qemuArgs(parseVmSpec(MINIMAL), "tcg", { qmpSocket: "/r,1/q", serialSocket: "/r,1/s" });
  assert.deepEqual(values(args, "-qmp"), ["unix:/r,,1/q,server=on,wait=off"]);
});
