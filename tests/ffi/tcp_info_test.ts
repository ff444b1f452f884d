/**
 * ffi/tcp_info.ts against real loopback TCP connections (IPv4 and IPv6) through the kernel's sock_diag,
 * reading TCP_INFO and setting the congestion control.
 */
import assert from "node:assert/strict";
import { ShimError } from "../../ffi/library.ts";
import { setCongestionControl, setSocketBuffers, tcpInfo } from "../../ffi/tcp_info.ts";

const TCP_ESTABLISHED = 1;

/** A connected pair on hostname, both ends open while body runs, closed afterwards. */
async function withPair(
  hostname: string,
  body: (client: Deno.TcpConn, server: Deno.TcpConn) => Promise<void>,
): Promise<void> {
  const listener = Deno.listen({ hostname, port: 0 });
  const [client, server] = await Promise.all([
    Deno.connect({ hostname, port: (listener.addr as Deno.NetAddr).port }),
    listener.accept(),
  ]);
  listener.close();
  try {
    await body(client, server);
  } finally {
    client.close();
    server.close();
  }
}

/** Writes bytes from one end and reads them all at the other, so they have been sent and acknowledged. */
async function send(from: Deno.TcpConn, to: Deno.TcpConn, bytes: number): Promise<void> {
  const reading = (async () => {
    const buf = new Uint8Array(64 * 1024);
    let got = 0;
    while (got < bytes) {
      const n = await to.read(buf);
      assert.ok(n !== null, "connection closed early");
      got += n;
    }
  })();
  const data = new Uint8Array(bytes).fill(7);
  let sent = 0;
  while (sent < bytes) sent += await from.write(data.subarray(sent));
  await reading;
}

const readDefault = () => Deno.readTextFileSync("/proc/sys/net/ipv4/tcp_congestion_control").trim();
const available = Deno.readTextFileSync("/proc/sys/net/ipv4/tcp_available_congestion_control").split(/\s+/);

const hasIpv6Loopback = (() => {
  try {
    Deno.listen({ hostname: "::1", port: 0 }).close();
    return true;
  } catch {
    return false;
  }
})();

Deno.test("tcpInfo of a loopback connection: established, with a round-trip time and congestion control", () =>
  withPair("127.0.0.1", async (client, server) => {
    await send(client, server, 1000);
    const info = tcpInfo(client);
    assert.ok(info, "the open connection is found");
    assert.equal(info.state, TCP_ESTABLISHED);
    assert.ok(info.rttUs !== undefined && info.rttUs > 0, `rttUs = ${info.rttUs}`);
    assert.ok(info.minRttUs !== undefined && info.minRttUs > 0, `minRttUs = ${info.minRttUs}`);
    assert.ok(info.sndCwndSegments !== undefined && info.sndCwndSegments > 0);
    assert.ok(info.sndMssBytes !== undefined && info.sndMssBytes > 0);
    assert.ok(info.congestion && available.includes(info.congestion), `congestion = ${info.congestion}`);
  }));

Deno.test("tcpInfo counts the bytes a connection sent, on the sending end", () =>
  withPair("127.0.0.1", async (client, server) => {
    const before = tcpInfo(client)!;
    const bytes = 3 * 1024 * 1024;
    await send(client, server, bytes);
    const after = tcpInfo(client)!;
    assert.equal(after.bytesSent! - before.bytesSent!, bytes);
    assert.equal(
      after.bytesAcked! - before.bytesAcked!,
      bytes,
      "the reader took every byte, so all are acked",
    );
    assert.ok(after.segsOut! > before.segsOut!);
    assert.equal(after.totalRetransSegments, 0, "loopback loses nothing");
    assert.equal(after.bytesRetrans, 0);
    // The other end sent nothing but acknowledgements.
    assert.equal(tcpInfo(server)!.bytesSent, 0);
  }));

Deno.test({
  name: "tcpInfo works for IPv6 connections",
  ignore: !hasIpv6Loopback,
  fn: () =>
    withPair("::1", async (client, server) => {
      await send(server, client, 5000);
      const info = tcpInfo(server)!;
      assert.equal(info.state, TCP_ESTABLISHED);
      assert.equal(info.bytesSent, 5000);
    }),
});

Deno.test("tcpInfo of a closed connection is undefined", async () => {
  let endpoints: { localAddr: Deno.Addr; remoteAddr: Deno.Addr } | undefined;
  await withPair("127.0.0.1", async (client) => {
    endpoints = { localAddr: client.localAddr, remoteAddr: client.remoteAddr };
    await Promise.resolve();
  });
  // The side that closed first lingers in TIME_WAIT, which carries no TCP_INFO; either way it is gone.
  assert.equal(tcpInfo(endpoints!), undefined);
});

Deno.test("tcpInfo rejects addresses that are not IP, naming them", () => {
  const bad = {
    localAddr: { transport: "tcp", hostname: "not-an-ip", port: 1000 } as Deno.NetAddr,
    remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 2000 } as Deno.NetAddr,
  };
  assert.throws(() => tcpInfo(bad), (err: unknown) => {
    assert.ok(err instanceof ShimError);
    assert.match(err.message, /local address "not-an-ip" is not an IPv4 or IPv6 address/);
    return true;
  });
  const mixed = { ...bad, localAddr: { transport: "tcp", hostname: "::1", port: 1000 } as Deno.NetAddr };
  assert.throws(() => tcpInfo(mixed), /remote address "127\.0\.0\.1" is not an IPv6 address/);
  const unix = {
    localAddr: { transport: "unix", path: "/tmp/s" } as Deno.UnixAddr,
    remoteAddr: bad.remoteAddr,
  };
  assert.throws(() => tcpInfo(unix), /localAddr is a unix address; TCP_INFO exists only for TCP connections/);
});

Deno.test({
  name: "setCongestionControl switches a connection's algorithm, and TCP_INFO reads it back",
  // Root may pick any available algorithm, others only net.ipv4.tcp_allowed_congestion_control's.
  ignore: !available.includes("bbr") || !available.includes("cubic") || Deno.uid() !== 0,
  fn: () =>
    withPair("127.0.0.1", async (client, server) => {
      assert.equal(setCongestionControl(client, "cubic"), true);
      assert.equal(tcpInfo(client)!.congestion, "cubic");
      await send(client, server, 100_000); // it carries data under either
      assert.equal(setCongestionControl(client, "bbr"), true);
      assert.equal(tcpInfo(client)!.congestion, "bbr");
      assert.equal(tcpInfo(server)!.congestion, readDefault(), "only the socket asked for changes");
      await send(client, server, 100_000);
    }),
});

Deno.test("setCongestionControl of an algorithm the kernel lacks names it and the fix", () =>
  withPair("127.0.0.1", async (client) => {
    await Promise.resolve();
    assert.throws(() => setCongestionControl(client, "nosuch"), (err: unknown) => {
      assert.ok(err instanceof ShimError);
      assert.equal(err.status, -5);
      assert.match(err.message, /congestion control "nosuch" is not available in this kernel/);
      assert.match(err.message, /modprobe tcp_nosuch/);
      return true;
    });
    assert.equal(tcpInfo(client)!.congestion, readDefault(), "the socket keeps what it ran");
    assert.throws(() => setCongestionControl(client, ""), /congestion control "" is not a name of 1\.\.15/);
  }));

Deno.test("setCongestionControl of a closed connection is false", async () => {
  let endpoints: { localAddr: Deno.Addr; remoteAddr: Deno.Addr } | undefined;
  await withPair("127.0.0.1", async (client) => {
    endpoints = { localAddr: client.localAddr, remoteAddr: client.remoteAddr };
    await Promise.resolve();
  });
  assert.equal(setCongestionControl(endpoints!, "cubic"), false);
});

/** The kernel's socket buffers of the connection on these ports, as `ss -tm` shows them (rb and tb). */
async function skmem(conn: Deno.TcpConn): Promise<{ rcvbuf: number; sndbuf: number }> {
  const local = conn.localAddr as Deno.NetAddr, remote = conn.remoteAddr as Deno.NetAddr;
  const out = await new Deno.Command("ss", {
    args: ["-tmnH", "src", `${local.hostname}:${local.port}`, "dst", `${remote.hostname}:${remote.port}`],
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  const m = /rb(\d+),t\d+,tb(\d+)/.exec(text);
  assert.ok(m, `ss shows no skmem for the connection: ${text}`);
  return { rcvbuf: Number(m[1]), sndbuf: Number(m[2]) };
}

Deno.test("setSocketBuffers sets SO_SNDBUF and SO_RCVBUF (doubled by the kernel), each on its own", () =>
  withPair("127.0.0.1", async (client, server) => {
    const before = await skmem(client);
    assert.equal(setSocketBuffers(client, { send: 300 * 1024 }), true);
    assert.deepEqual(await skmem(client), { rcvbuf: before.rcvbuf, sndbuf: 600 * 1024 });
    assert.equal(setSocketBuffers(server, { receive: 200 * 1024 }), true);
    assert.equal((await skmem(server)).rcvbuf, 400 * 1024);
  }));

Deno.test("setSocketBuffers of a closed connection is false", async () => {
  let closed: Deno.TcpConn | undefined;
  await withPair("127.0.0.1", (client) => {
    closed = client;
    return Promise.resolve();
  });
  assert.equal(setSocketBuffers(closed!, { send: 256 * 1024 }), false);
});
