/**
 * Handing a TCP connection Deno opened to QEMU, which then reads and writes the socket itself. QEMU takes
 * descriptors only as SCM_RIGHTS on a QMP monitor, per monitor, so the shim (c-shim/qmp_fd.c) connects to
 * a monitor socket of the VM's, passes the socket under a name and runs the command that uses the name
 * on that same monitor. QEMU gets its own descriptor; once the caller is done with the connection it
 * detaches its own (detachTcp) and closes it, which then leaves QEMU's socket alone.
 */
import { check, native } from "./library.ts";
import { cString, endpointArgs, ENOTFOUND, type TcpEndpoints } from "./tcp_info.ts";

const utf8 = new TextDecoder();
const REPLY_CAP = 64 * 1024;

/** QEMU refused the command run with the descriptor; class and desc are QEMU's. */
export class QemuRefusedError extends Error {
  override name = "QemuRefusedError";
  constructor(readonly errorClass: string, readonly desc: string, command: string) {
    super(`QEMU refused ${command}: ${desc} (${errorClass})`);
  }
}

/**
 * Passes conn's socket to QEMU as fdName, then runs command on the monitor at monitorPath, resolving with
 * its `return`. Throws a ShimError when the socket is not open in this process or the monitor cannot be
 * spoken to, and a QemuRefusedError when QEMU refuses the command.
 */
export async function passTcpToQemu(
  monitorPath: string,
  conn: TcpEndpoints,
  fdName: string,
  command: { execute: string; arguments?: Record<string, unknown> },
): Promise<unknown> {
  const { args, label } = endpointArgs(conn);
  const out = new Uint8Array(REPLY_CAP);
  const n = check(
    await native().dwcp_qmp_pass_tcp(
      cString(monitorPath),
      ...args,
      cString(fdName),
      cString(JSON.stringify(command)),
      out,
      out.length,
    ),
    `handing ${label} to QEMU at ${monitorPath}`,
  );
  const reply = JSON.parse(utf8.decode(out.subarray(0, n))) as {
    return?: unknown;
    error?: { class: string; desc: string };
  };
  if (reply.error) throw new QemuRefusedError(reply.error.class, reply.error.desc, command.execute);
  return reply.return;
}

/**
 * Detaches this process's descriptor from conn's socket once QEMU holds it: Deno stops watching the socket
 * (each segment for QEMU would wake it) and closing conn no longer shuts the socket down (Deno shuts a TCP
 * connection's write side down when it closes it, which acts on the socket, QEMU's too). conn must be
 * closed next and not be read or written. False when conn is not open any more.
 */
export function detachTcp(conn: TcpEndpoints): boolean {
  const { args, label } = endpointArgs(conn);
  const status = native().dwcp_tcp_detach(...args);
  if (status === ENOTFOUND) return false;
  check(status, `detaching ${label}`);
  return true;
}
