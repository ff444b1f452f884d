/**
 * A loopback TCP proxy that injects faults into chosen connections, for testing how transfers
 * survive a lost stream or corrupted bytes. Connections are numbered in accept order from 0.
 */

export interface Fault {
  /** Cut both directions once this many client→server bytes have passed. */
  dropAfterBytes?: number;
  /** Flip the bits of the client→server byte at this position. */
  corruptByteAt?: number;
}

export class TcpProxy {
  readonly #listener: Deno.TcpListener;
  readonly #conns = new Set<Deno.TcpConn>();
  accepted = 0;

  private constructor(
    listener: Deno.TcpListener,
    target: { hostname: string; port: number },
    faults: Map<number, Fault>,
  ) {
    this.#listener = listener;
    this.#serve(target, faults);
  }

  static start(target: string, faults: Record<number, Fault> = {}): TcpProxy {
    const i = target.lastIndexOf(":");
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    return new TcpProxy(
      listener,
      { hostname: target.slice(0, i), port: Number(target.slice(i + 1)) },
      new Map(Object.entries(faults).map(([k, v]) => [Number(k), v])),
    );
  }

  get addr(): string {
    return `127.0.0.1:${this.#listener.addr.port}`;
  }

  async #serve(target: { hostname: string; port: number }, faults: Map<number, Fault>): Promise<void> {
    try {
      for await (const client of this.#listener) {
        const fault = faults.get(this.accepted++);
        const server = await Deno.connect(target);
        this.#conns.add(client).add(server);
        const cut = () => [client, server].forEach((c) => this.#close(c));
        this.#pump(client, server, fault, cut).finally(cut);
        this.#pump(server, client, undefined, cut).finally(cut);
      }
    } catch { /* listener closed */ }
  }

  async #pump(
    from: Deno.TcpConn,
    to: Deno.TcpConn,
    fault: Fault | undefined,
    cut: () => void,
  ): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    let passed = 0;
    try {
      while (true) {
        let n = await from.read(buf);
        if (n === null) return;
        if (fault?.dropAfterBytes !== undefined && passed + n >= fault.dropAfterBytes) {
          n = fault.dropAfterBytes - passed;
          if (n > 0) await to.write(buf.subarray(0, n));
          return cut();
        }
        const at = fault?.corruptByteAt;
        if (at !== undefined && at >= passed && at < passed + n) buf[at - passed] ^= 0xff;
        passed += n;
        for (let off = 0; off < n;) off += await to.write(buf.subarray(off, n));
      }
    } catch { /* either side went away */ }
  }

  #close(c: Deno.TcpConn): void {
    if (!this.#conns.delete(c)) return;
    try {
      c.close();
    } catch { /* already closed */ }
  }

  close(): void {
    try {
      this.#listener.close();
    } catch { /* already closed */ }
    for (const c of [...this.#conns]) this.#close(c);
  }
}
