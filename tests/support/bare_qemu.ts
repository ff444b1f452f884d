/**
 * A guestless QEMU for tests of QMP and of handing sockets to QEMU: q35 with 64 MiB, paused (-S) until told
 * otherwise, its QMP socket (and a second monitor for passed descriptors, fd-qmp.sock) in a temp dir.
 */
import { join } from "node:path";
import { QmpClient } from "../../src/migration/qmp.ts";

const QEMU = "qemu-system-x86_64";

export class BareQemu {
  readonly exited: Promise<Deno.CommandStatus>;

  private constructor(
    readonly child: Deno.ChildProcess,
    readonly dir: string,
    readonly qmpSocket: string,
    readonly fdMonitorSocket: string,
  ) {
    this.exited = child.status;
  }

  static async start(extra: string[] = [], dir?: string): Promise<BareQemu> {
    dir ??= await Deno.makeTempDir({ prefix: "dwcp-qmp-" });
    const qmpSocket = join(dir, "qmp.sock");
    const fdMonitorSocket = join(dir, "fd-qmp.sock");
    const args = [
      ...["-accel", "tcg", "-machine", "q35", "-m", "64M", "-nodefaults", "-no-user-config"],
      ...["-display", "none", "-S", "-qmp", `unix:${qmpSocket},server=on,wait=off`],
      ...["-chardev", `socket,id=fdmon,path=${fdMonitorSocket},server=on,wait=off`],
      ...["-mon", "chardev=fdmon,mode=control"],
      ...extra,
    ];
    const child = new Deno.Command(QEMU, { args, stdin: "null", stdout: "null", stderr: "null" }).spawn();
    return new BareQemu(child, dir, qmpSocket, fdMonitorSocket);
  }

  signal(sig: Deno.Signal): void {
    try {
      this.child.kill(sig);
    } catch { /* already exited */ }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.signal("SIGCONT");
    this.signal("SIGKILL");
    await this.exited;
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

/** A QMP client of q, closed on dispose. */
export async function connected(q: BareQemu): Promise<QmpClient & AsyncDisposable> {
  const c = await QmpClient.connect(q.qmpSocket);
  return Object.assign(c, { [Symbol.asyncDispose]: () => Promise.resolve(c.close()) });
}
