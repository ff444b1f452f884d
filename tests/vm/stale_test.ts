/** src/vm/stale.ts and its use: a QEMU left by a killed agent keeps its VM's name until it is stopped. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { VmError, VmManager } from "../../src/vm/manager.ts";
import { processUsing } from "../../src/vm/stale.ts";

Deno.test("a process still serving a VM's sockets blocks a new start under that name", async () => {
  const runDir = await Deno.makeTempDir({ prefix: "dwcp-stale-" });
  const qmp = join(runDir, "orphan", "qmp.sock");
  // Stands in for an orphaned QEMU: a process whose command line names the VM's QMP socket.
  const orphan = new Deno.Command("bash", {
    args: ["-c", "sleep 60; true", qmp],
    stdout: "null",
    stderr: "null",
  })
    .spawn();
  try {
    // Until bash has started, the child's command line is still the test runner's.
    while (await processUsing(qmp) !== orphan.pid) await new Promise((r) => setTimeout(r, 10));
    const vms = new VmManager({ runDir });
    await assert.rejects(
      vms.start({ name: "orphan", memoryMiB: 128, vcpus: 1, kernel: "/nonexistent/vmlinuz" }),
      (err: unknown) => {
        assert.ok(err instanceof VmError);
        assert.equal(err.code, "vm_exists");
        assert.match(err.message, new RegExp(`pid ${orphan.pid}`));
        return true;
      },
    );
  } finally {
    orphan.kill("SIGKILL");
    await orphan.status;
    await Deno.remove(runDir, { recursive: true });
  }
  assert.equal(await processUsing(qmp), undefined, "once it is gone, nothing is found");
});
