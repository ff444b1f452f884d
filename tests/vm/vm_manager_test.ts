/**
 * src/vm/accelerator.ts (the probe's decision logic with a scripted runner, then the real probe once)
 * and src/vm/manager.ts with real QEMU guests: the test guest from tests/support/guest_image.ts.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { QmpClient } from "../../src/migration/qmp.ts";
import { jsonLogger, type Logger } from "../../src/obs/log.ts";
import {
  AcceleratorCache,
  judgeProbe,
  probeArgs,
  type ProbeOutcome,
  type ProbeRequest,
  resolveAccelerator,
  runProbe,
} from "../../src/vm/accelerator.ts";
import { VmError, type VmInfo, VmManager, type VmState } from "../../src/vm/manager.ts";
import { OutputCapture } from "../../src/vm/output_capture.ts";
import type { VmSpecInput } from "../../src/vm/spec.ts";
import { guestAppend, guestImage } from "../support/guest_image.ts";

const BOOT = "[    0.000000] Linux version 6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org)\n";
const PANIC = "[    1.7] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n";

function outcome(over: Partial<ProbeOutcome>): ProbeOutcome {
  return { output: "", exitCode: 0, timedOut: false, elapsedMs: 1500, ...over };
}

/** A kernel file that exists (the scripted runner never boots it). */
async function fakeKernel(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "dwcp-accel-" });
  const path = join(dir, "vmlinuz");
  await Deno.writeFile(path, new Uint8Array(16));
  return path;
}

// --- accelerator: decision logic ---------------------------------------------------------------------

Deno.test("judgeProbe: KVM only when the kernel printed its banner and reached the expected panic", () => {
  const ok = judgeProbe(outcome({ output: BOOT + "...\n" + PANIC }), 20_000);
  assert.equal(ok.accelerator, "kvm");
  assert.match(ok.reason, /booted the kernel to its expected root-mount panic in 1500 ms/);

  const silent = judgeProbe(outcome({ output: "", exitCode: null, timedOut: true }), 20_000);
  assert.equal(silent.accelerator, "tcg");
  assert.match(silent.reason, /no kernel banner within 20000 ms/);

  const hung = judgeProbe(
    outcome({ output: BOOT + "[0.5] smpboot: CPU0\n", exitCode: null, timedOut: true }),
    20_000,
  );
  assert.equal(hung.accelerator, "tcg");
  assert.match(hung.reason, /kernel started but did not reach the end of its boot within 20000 ms/);

  const crashed = judgeProbe(
    outcome({
      output: "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\nmore\nlines\n",
      exitCode: 134,
    }),
    20_000,
  );
  assert.equal(crashed.accelerator, "tcg");
  assert.match(
    crashed.reason,
    /exited with code 134 .* before the kernel started: .*failed to set MSR 0x10a/,
  );

  const noKvm = judgeProbe(
    outcome({ output: "Could not access KVM kernel module: No such file or directory\n", exitCode: 1 }),
    20_000,
  );
  assert.match(noKvm.reason, /Could not access KVM kernel module/);

  const exitedEarly = judgeProbe(outcome({ output: BOOT, exitCode: 0 }), 20_000);
  assert.equal(exitedEarly.accelerator, "tcg");
  assert.match(exitedEarly.reason, /without the expected panic/);

  const spawn = judgeProbe(outcome({ spawnError: "No such file or directory (os error 2)" }), 20_000);
  assert.equal(spawn.accelerator, "tcg");
  assert.match(spawn.reason, /could not start QEMU/);
});

Deno.test("resolveAccelerator: kvm and tcg are taken as asked, without a probe", async () => {
  const runner = () => Promise.reject(new Error("must not probe"));
  const cache = new AcceleratorCache();
  assert.deepEqual(await resolveAccelerator("kvm", "/nonexistent", { runner, cache }), {
    accelerator: "kvm",
    reason: "requested in the VM spec",
  });
  assert.equal((await resolveAccelerator("tcg", "/nonexistent", { runner, cache })).accelerator, "tcg");
  assert.equal(cache.size, 0);
});

Deno.test("resolveAccelerator: auto boots the VM's kernel under KVM once per kernel and binary", async () => {
  const kernel = await fakeKernel();
  const other = await fakeKernel();
  const calls: ProbeRequest[] = [];
  const runner = (req: ProbeRequest) => {
    calls.push(req);
    return Promise.resolve(outcome({ output: BOOT + PANIC }));
  };
  const cache = new AcceleratorCache();
  const logged: Record<string, unknown>[] = [];
  const log: Logger = (msg, fields) => logged.push({ msg, ...fields });
  // Concurrent callers share one probe.
  const [a, b] = await Promise.all([
    resolveAccelerator("auto", kernel, { runner, cache, log, qemuBinary: "qemu-x", timeoutMs: 1234 }),
    resolveAccelerator("auto", kernel, { runner, cache, log, qemuBinary: "qemu-x", timeoutMs: 1234 }),
  ]);
  assert.equal(a.accelerator, "kvm");
  assert.deepEqual(a, b);
  assert.equal(calls.length, 1);
  const req = calls[0];
  assert.equal(req.qemuBinary, "qemu-x");
  assert.equal(req.timeoutMs, 1234);
  assert.deepEqual(req.args, probeArgs(kernel));
  const at = (flag: string) => req.args[req.args.indexOf(flag) + 1];
  assert.equal(at("-accel"), "kvm");
  assert.equal(at("-cpu"), "host");
  assert.equal(at("-kernel"), kernel);
  assert.equal(at("-append"), "console=ttyS0 panic=-1");
  assert.ok(req.args.includes("-no-reboot"));
  assert.ok(!req.args.includes("-initrd"));
  // The decision is logged with its inputs.
  assert.equal(logged.length, 1);
  assert.equal(logged[0].sawBanner, true);
  assert.equal(logged[0].sawPanic, true);

  await resolveAccelerator("auto", kernel, { runner, cache, qemuBinary: "qemu-x" });
  assert.equal(calls.length, 1, "cached");
  await resolveAccelerator("auto", other, { runner, cache, qemuBinary: "qemu-x" });
  await resolveAccelerator("auto", kernel, { runner, cache, qemuBinary: "qemu-y" });
  assert.equal(calls.length, 3, "another kernel or binary is probed again");
  await Deno.remove(join(kernel, ".."), { recursive: true });
  await Deno.remove(join(other, ".."), { recursive: true });
});

Deno.test("resolveAccelerator: a QEMU that cannot start is not cached; a missing kernel is refused", async () => {
  const kernel = await fakeKernel();
  const cache = new AcceleratorCache();
  let calls = 0;
  const runner = () => {
    calls++;
    return Promise.resolve(outcome({ spawnError: "not found" }));
  };
  assert.equal((await resolveAccelerator("auto", kernel, { runner, cache })).accelerator, "tcg");
  assert.equal((await resolveAccelerator("auto", kernel, { runner, cache })).accelerator, "tcg");
  assert.equal(calls, 2);
  assert.equal(cache.size, 0);

  await assert.rejects(
    resolveAccelerator("auto", "/nonexistent/vmlinuz", { runner, cache }),
    /kernel "\/nonexistent\/vmlinuz" cannot be read/,
  );
  assert.equal(calls, 2);
  await Deno.remove(join(kernel, ".."), { recursive: true });
});

Deno.test("AcceleratorCache: bounded, oldest dropped first", () => {
  const cache = new AcceleratorCache(2);
  const v = Promise.resolve({ accelerator: "tcg" as const, reason: "x" });
  cache.set("a", v);
  cache.set("b", v);
  cache.set("c", v);
  assert.equal(cache.size, 2);
  assert.equal(cache.get("a"), undefined);
  assert.ok(cache.get("b") && cache.get("c"));
});

Deno.test("OutputCapture: keeps the head and the tail and counts what it dropped", () => {
  const c = new OutputCapture(4, 6);
  const enc = new TextEncoder();
  for (const s of ["ab", "cdef", "ghij", "klmnop", "q"]) c.push(enc.encode(s));
  assert.equal(c.totalBytes, 17);
  assert.equal(c.text(), "abcd\n[... 7 bytes omitted ...]\nlmnopq");
  const small = new OutputCapture(4, 6);
  small.push(enc.encode("abc"));
  assert.equal(small.text(), "abc");
  const big = new OutputCapture(0, 3);
  big.push(enc.encode("0123456789"));
  assert.equal(big.text(), "\n[... 7 bytes omitted ...]\n789");
});

// --- accelerator: the real probe ---------------------------------------------------------------------

Deno.test("real probe: the kernel boots to its panic under TCG (the runner and markers work)", async () => {
  const { kernel } = await guestImage();
  // The probe's command line with TCG swapped in: a positive control that does not depend on KVM.
  const args = probeArgs(kernel).map((a) => a === "kvm" ? "tcg" : a === "host" ? "max" : a);
  const o = await runProbe({ qemuBinary: "qemu-system-x86_64", args, timeoutMs: 300_000 });
  assert.equal(o.timedOut, false, o.output.slice(-2000));
  assert.equal(o.exitCode, 0, o.output.slice(-2000));
  assert.equal(judgeProbe(o, 300_000).accelerator, "kvm", o.output.slice(-2000));
});

Deno.test("real probe: auto on this host decides, says why, and caches it", async () => {
  const { kernel } = await guestImage();
  const cache = new AcceleratorCache();
  const choice = await resolveAccelerator("auto", kernel, { cache, log: jsonLogger("accelerator-test") });
  assert.ok(choice.accelerator === "kvm" || choice.accelerator === "tcg");
  assert.equal(choice.accelerator === "kvm", /booted the kernel/.test(choice.reason), choice.reason);
  assert.equal(cache.size, 1);
  assert.deepEqual(
    await resolveAccelerator("auto", kernel, { cache, runner: () => assert.fail("cached") }),
    choice,
  );
});

// --- manager with real guests ------------------------------------------------------------------------

const image = await guestImage();

function spec(name: string, over: Partial<VmSpecInput> = {}): VmSpecInput {
  return {
    name,
    memoryMiB: 128,
    vcpus: 1,
    kernel: image.kernel,
    initrd: image.initrd,
    cmdline: guestAppend({ memMib: 8 }),
    ...over,
  };
}

/** A manager over a fresh run directory, stopped and cleaned up by `await using`. */
async function manager(): Promise<VmManager & AsyncDisposable> {
  const runDir = await Deno.makeTempDir({ prefix: "dwcp-vm-" });
  const m = new VmManager({ runDir, log: () => {} });
  return Object.assign(m, {
    async [Symbol.asyncDispose]() {
      await m.stopAll();
      await Deno.remove(runDir, { recursive: true }).catch(() => {});
    },
  });
}

async function alive(pid: number): Promise<boolean> {
  try {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    return !/^\d+ \(.*\) Z/.test(stat); // a zombie has exited
  } catch {
    return false;
  }
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

/** Waits (by polling the manager) until the VM reaches a state; the test runner bounds the wait. */
async function until(m: VmManager, name: string, state: VmState): Promise<VmInfo> {
  for (;;) {
    const info = m.get(name);
    if (info.state === state) return info;
    await new Promise((r) => setTimeout(r, 20));
  }
}

function vmError(code: string, pattern?: RegExp) {
  return (err: Error) => {
    assert.ok(err instanceof VmError, `expected VmError, got ${err}`);
    assert.equal(err.code, code, err.message);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

Deno.test("manager: start, duplicate refused, list, stop", async () => {
  await using m = await manager();
  const info = await m.start(spec("vm-a"));
  assert.equal(info.state, "running");
  assert.equal(info.qemuStatus, "running");
  assert.ok(info.accelerator === "kvm" || info.accelerator === "tcg");
  assert.ok(info.acceleratorReason && info.acceleratorReason.length > 0);
  assert.ok(info.pid && await alive(info.pid));
  assert.equal(info.qmpSocket, join(m.runDir, "vm-a", "qmp.sock"));
  assert.equal(info.serialSocket, join(m.runDir, "vm-a", "serial.sock"));
  assert.ok(await exists(info.qmpSocket) && await exists(info.serialSocket));
  assert.equal(info.spec.memoryMiB, 128);
  assert.deepEqual((await m.qmp("vm-a").queryStatus()).status, "running");

  await assert.rejects(m.start(spec("vm-a")), vmError("vm_exists", /"vm-a" already exists \(state running/));
  assert.ok(await alive(info.pid!), "the refused start left the first VM alone");

  await m.start(spec("vm-b", { memoryMiB: 96 }));
  assert.deepEqual(m.list().map((v) => [v.name, v.state]), [["vm-a", "running"], ["vm-b", "running"]]);

  const stopped = await m.stop("vm-a");
  assert.equal(stopped.state, "stopped");
  assert.equal(stopped.exit?.code, 0);
  assert.equal(await alive(info.pid!), false);
  assert.equal(await exists(info.runDir), false);
  assert.throws(() => m.get("vm-a"), vmError("vm_not_found", /no VM named "vm-a" \(known: vm-b\)/));
  assert.throws(() => m.qmp("vm-a"), vmError("vm_not_found"));
  await assert.rejects(m.stop("vm-a"), vmError("vm_not_found"));
  assert.deepEqual(m.list().map((v) => v.name), ["vm-b"]);
  // The name is free again.
  assert.equal((await m.start(spec("vm-a"))).state, "running");
});

Deno.test("manager: a missing kernel is vm_start_failed naming the path, and leaves nothing", async () => {
  await using m = await manager();
  await assert.rejects(
    m.start(spec("vm-k", { kernel: "/nonexistent/dwcp/vmlinuz" })),
    vmError(
      "vm_start_failed",
      /VM "vm-k" failed to start: kernel "\/nonexistent\/dwcp\/vmlinuz" cannot be read/,
    ),
  );
  await assert.rejects(
    m.start(spec("vm-k", { initrd: "/nonexistent/initrd.gz" })),
    vmError("vm_start_failed", /initrd "\/nonexistent\/initrd.gz"/),
  );
  await assert.rejects(
    m.start(spec("vm-k", { disks: [{ path: "/nonexistent/disk.img" }] })),
    vmError("vm_start_failed", /disks\.0\.path "\/nonexistent\/disk.img"/),
  );
  assert.deepEqual(m.list(), []);
  assert.equal(await exists(join(m.runDir, "vm-k")), false);
});

Deno.test("manager: QEMU exiting during start is vm_start_failed with QEMU's own message", async () => {
  await using m = await manager();
  const dir = await Deno.makeTempDir({ prefix: "dwcp-disk-" });
  const disk = join(dir, "not-qcow2.img");
  await Deno.writeFile(disk, new Uint8Array(1024 * 1024));
  await assert.rejects(
    m.start(spec("vm-bad", { disks: [{ path: disk, format: "qcow2" }] })),
    vmError("vm_start_failed", /QEMU exited with code 1 during start: .*qcow2/s),
  );
  assert.deepEqual(m.list(), []);
  assert.equal(await exists(join(m.runDir, "vm-bad")), false);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("manager: a QEMU binary that does not exist is vm_start_failed naming it", async () => {
  const runDir = await Deno.makeTempDir({ prefix: "dwcp-vm-" });
  const m = new VmManager({ runDir, qemuBinary: "/nonexistent/qemu-system-x86_64" });
  await assert.rejects(
    m.start(spec("vm-q", { accelerator: "tcg" })),
    vmError("vm_start_failed", /cannot run the QEMU binary "\/nonexistent\/qemu-system-x86_64"/),
  );
  assert.deepEqual(m.list(), []);
  await Deno.remove(runDir, { recursive: true });
});

Deno.test("manager: an incoming VM waits in inmigrate", async () => {
  await using m = await manager();
  const info = await m.start(spec("vm-in"), { incoming: true });
  assert.equal(info.state, "incoming");
  assert.equal(info.qemuStatus, "inmigrate");
  assert.equal((await m.qmp("vm-in").queryStatus()).status, "inmigrate");
});

Deno.test("manager: state follows QMP stop and cont", async () => {
  await using m = await manager();
  await m.start(spec("vm-s"));
  const qmp = m.qmp("vm-s");
  await qmp.stop();
  assert.equal((await until(m, "vm-s", "paused")).qemuStatus, "paused");
  await qmp.cont();
  assert.equal((await until(m, "vm-s", "running")).qemuStatus, "running");
  await qmp.stop();
  assert.equal((await m.refresh("vm-s")).state, "paused");
});

Deno.test("manager: a VM that exits on its own is marked stopped; its name can be reused", async () => {
  await using m = await manager();
  const info = await m.start(spec("vm-x"));
  Deno.kill(info.pid!, "SIGKILL");
  const stopped = await until(m, "vm-x", "stopped");
  assert.equal(stopped.exit?.signal, "SIGKILL");
  assert.ok(stopped.stoppedAt);
  assert.throws(() => m.qmp("vm-x"), vmError("vm_not_running", /state stopped/));
  assert.deepEqual(m.list().map((v) => [v.name, v.state]), [["vm-x", "stopped"]]);

  const again = await m.start(spec("vm-x"));
  assert.equal(again.state, "running");
  assert.notEqual(again.pid, info.pid);
  // A guest-initiated quit (here through QMP directly) is noticed the same way.
  await m.qmp("vm-x").quit();
  assert.equal((await until(m, "vm-x", "stopped")).exit?.code, 0);
  assert.equal((await m.stop("vm-x")).state, "stopped");
  assert.deepEqual(m.list(), []);
});

Deno.test("manager: graceful stop falls back to quit when the guest ignores the power button", async () => {
  await using m = await manager();
  const info = await m.start(spec("vm-g"));
  const stopped = await m.stop("vm-g", { graceful: true, timeoutMs: 200 });
  assert.equal(stopped.state, "stopped");
  assert.equal(await alive(info.pid!), false);
});

Deno.test("manager: stopAll stops every VM and refuses new starts", async () => {
  await using m = await manager();
  const a = await m.start(spec("vm-1"));
  const b = await m.start(spec("vm-2"), { incoming: true });
  await m.stopAll();
  assert.deepEqual(m.list(), []);
  assert.equal(await alive(a.pid!), false);
  assert.equal(await alive(b.pid!), false);
  await assert.rejects(m.start(spec("vm-3")), vmError("vm_start_failed", /shutting down/));
});

Deno.test("manager: a migration between two managed VMs moves the states to migrated and running", async () => {
  await using m = await manager();
  await m.start(spec("vm-src"));
  await m.start(spec("vm-dst"), { incoming: true });
  const src: QmpClient = m.qmp("vm-src"), dst = m.qmp("vm-dst");
  await src.setCapabilities({ events: true });
  await dst.setCapabilities({ events: true });
  await src.setParameters({ "max-bandwidth": 1024 * 1024 * 1024 });
  const uri = `unix:${join(m.runDir, "migrate.sock")}`;
  await dst.migrateIncoming(uri);
  const done = (c: QmpClient) => c.waitForEvent("MIGRATION", (ev) => ev.data?.status === "completed");
  const srcDone = done(src), dstDone = done(dst);
  await src.migrate(uri);
  await Promise.all([srcDone, dstDone]);
  assert.equal((await until(m, "vm-src", "migrated")).state, "migrated");
  assert.equal((await until(m, "vm-dst", "running")).qemuStatus, "running");
  const info = await src.queryMigrate();
  assert.equal(info.status, "completed");
  assert.ok(info.ram && info.ram.transferred > 0);
});
