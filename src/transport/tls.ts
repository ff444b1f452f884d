/**
 * TLS for agent-to-agent traffic (AMST; issue 5, encryption in internet mode): loading and checking the
 * certificate, key and cluster CA, the one decision of which peers get TLS, and the data port's listener.
 *
 *   tls.mode "off"   plain TCP; the HMAC handshake authenticates, nothing is encrypted.
 *   tls.mode "on"    every connection is TLS; the data port is a Deno.listenTls and refuses plain clients.
 *   tls.mode "auto"  TLS to peers listed in tls.peers and to peers whose link the mode policy (src/mode/)
 *                    finds in internet mode; the data port takes both on one port (see MixedListener).
 *
 * The server proves who it is with a certificate that chains to the cluster CA and carries its agent id as a
 * DNS subject alternative name; the dialer checks both (Deno.startTls with the CA and the peer's id as the
 * name). Deno.listenTls cannot ask for a client certificate, so the client proves itself with the HMAC
 * handshake that runs inside the TLS session: it shows that it holds the cluster secret, as in plain mode.
 */
import { createPrivateKey, type KeyObject, X509Certificate } from "node:crypto";
import { type AgentConfig, ConfigError } from "../agent/config.ts";
import { TransferError } from "./dial.ts";
import { closeQuietly, type Duplex, writeAll } from "./wire.ts";

/** What the data server needs of an accepted connection: bytes both ways, and its two ends. */
export interface DataConn extends Duplex {
  readonly localAddr: Deno.NetAddr;
  readonly remoteAddr: Deno.NetAddr;
}

/**
 * Whether conn's bytes travel on its TCP socket as they are, with nothing read ahead, so that the socket
 * itself can be handed to another reader (src/migration/direct_channel.ts).
 */
export function isPlainTcp(conn: DataConn): boolean {
  if (conn instanceof SniffedConn) return conn.plain;
  return !("handshake" in conn); // Deno.TlsConn has one, Deno.TcpConn not
}

/** The data port: plain (Deno.TcpListener as it is), TLS only, or both on one port. */
export interface DataListener {
  readonly addr: Deno.NetAddr;
  accept(): Promise<DataConn>;
  close(): void;
}

/** PEM texts an agent with TLS works with. */
export interface TlsMaterial {
  /** This agent's certificate, then any intermediates. */
  certPem: string;
  keyPem: string;
  /** The cluster CA: every peer's certificate must chain to it. */
  caPem: string;
}

/** How the dialer checks the peer: its certificate must chain to caPem and carry `name` (its agent id). */
export interface PeerTls {
  name: string;
  caPem: string;
}

type TlsSettings = AgentConfig["tls"];

/** How long an internal TLS connection waits for its relay to claim it: as long as a handshake may take. */
const CLAIM_TIMEOUT_MS = 10_000;

/** How long a closed relayed connection waits for the peer to close its side before it is cut. */
const RELAY_DRAIN_MS = 2000;

/** Each direction of a relay copies through one buffer of this size. */
const RELAY_BUFFER_BYTES = 256 * 1024;

/** A TLS record starts with its content type; a client's first record is a handshake (ClientHello). */
const TLS_HANDSHAKE_RECORD = 0x16;

const INIT_HINT = 'a test cluster\'s files come from "dwcp cert init --dir DIR --ids ID,..."';

async function readSetting(setting: string, path: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (err) {
    throw new ConfigError(`${setting} = "${path}": cannot read it (${(err as Error).message}); ${INIT_HINT}`);
  }
}

/** The certificates in a PEM text, in order. */
function certificates(setting: string, path: string, pem: string): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) {
    throw new ConfigError(`${setting} = "${path}" holds no PEM certificate (-----BEGIN CERTIFICATE-----)`);
  }
  return blocks.map((block, i) => {
    try {
      return new X509Certificate(block);
    } catch (err) {
      throw new ConfigError(
        `${setting} = "${path}": certificate ${i + 1} does not parse (${(err as Error).message})`,
      );
    }
  });
}

function issuedBy(cert: X509Certificate, issuer: X509Certificate): boolean {
  return cert.checkIssued(issuer) && cert.verify(issuer.publicKey);
}

/** Whether the leaf chains to one of the CAs, through the intermediates that follow it in its file. */
function chainsTo(chain: X509Certificate[], cas: X509Certificate[]): boolean {
  let current = chain[0];
  // Each step climbs one intermediate, so a chain needs at most as many steps as it has certificates.
  for (let step = 0; step < chain.length; step++) {
    if (cas.some((ca) => issuedBy(current, ca))) return true;
    const up = chain.slice(1).find((c) => c.ca && issuedBy(current, c));
    if (!up) return false;
    current = up;
  }
  return false;
}

/**
 * Reads and checks the files of a TLS setting, so that a bad one stops the agent at start with a message
 * naming it: each file readable, the CA a CA, the key the certificate's, the certificate current, signed by
 * the CA and carrying the agent id. Undefined when TLS is off.
 */
export async function loadTlsMaterial(tls: TlsSettings, agentId: string): Promise<TlsMaterial | undefined> {
  if (tls.mode === "off") return undefined;
  // loadConfig makes sure all three are set when TLS is not off.
  const paths = { cert: tls.cert!, key: tls.key!, ca: tls.ca! };
  const [certPem, keyPem, caPem] = await Promise.all([
    readSetting("tls.cert", paths.cert),
    readSetting("tls.key", paths.key),
    readSetting("tls.ca", paths.ca),
  ]);
  const cas = certificates("tls.ca", paths.ca, caPem);
  const notCa = cas.findIndex((c) => !c.ca);
  if (notCa >= 0) {
    throw new ConfigError(
      `tls.ca = "${paths.ca}": certificate ${notCa + 1} (${cas[notCa].subject}) is not a CA ` +
        `(basicConstraints CA:FALSE); give the cluster CA's certificate (ca.crt of "dwcp cert init")`,
    );
  }
  const chain = certificates("tls.cert", paths.cert, certPem);
  const leaf = chain[0];
  let key: KeyObject;
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    throw new ConfigError(
      `tls.key = "${paths.key}" is not a PEM private key (${(err as Error).message}); give the key file ` +
        `that was made with tls.cert`,
    );
  }
  if (!leaf.checkPrivateKey(key)) {
    throw new ConfigError(
      `tls.key = "${paths.key}" does not match the certificate in tls.cert = "${paths.cert}" ` +
        `(${leaf.subject}); give the key that was made with that certificate`,
    );
  }
  const names = (leaf.subjectAltName ?? "").split(", ").filter((n) => n.startsWith("DNS:"));
  if (!names.some((n) => n.slice(4).toLowerCase() === agentId.toLowerCase())) {
    throw new ConfigError(
      `tls.cert = "${paths.cert}" is made out to ${names.join(", ") || "no DNS name"}, not to this ` +
        `agent's id "${agentId}": peers check the id, so they would refuse it; use the certificate ` +
        `made for "${agentId}" or run the agent with that certificate's id`,
    );
  }
  const now = Date.now();
  if (now < new Date(leaf.validFrom).getTime() || now > new Date(leaf.validTo).getTime()) {
    throw new ConfigError(
      `tls.cert = "${paths.cert}" is valid from ${leaf.validFrom} to ${leaf.validTo}, not now; ` +
        `make a new one`,
    );
  }
  if (!chainsTo(chain, cas)) {
    throw new ConfigError(
      `tls.cert = "${paths.cert}" (issued by ${leaf.issuer}) is not signed by the CA in tls.ca = ` +
        `"${paths.ca}", so peers would refuse it; give all agents of a cluster certificates from one CA`,
    );
  }
  return { certPem, keyPem, caPem };
}

/** An agent's TLS: its settings and files, which peers get TLS, and its data port. */
export class AgentTls {
  private constructor(
    readonly settings: TlsSettings,
    readonly material: TlsMaterial | undefined,
    /**
     * The mode policy's TLS verdict for a peer's link (src/mode/, true in internet mode), by the peer's
     * name or HOST:PORT; "auto" follows it. The agent feeds it from its link modes; by default, no.
     */
    readonly policyWantsTls: (peer: string) => boolean,
  ) {}

  static async load(
    settings: TlsSettings,
    agentId: string,
    policyWantsTls: (peer: string) => boolean = () => false,
  ): Promise<AgentTls> {
    return new AgentTls(settings, await loadTlsMaterial(settings, agentId), policyWantsTls);
  }

  /** Whether connections to this peer (its name, or HOST:PORT) use TLS: the one place that decides. */
  wantsTls(peer: string): boolean {
    switch (this.settings.mode) {
      case "off":
        return false;
      case "on":
        return true;
      case "auto":
        return this.settings.peers.includes(peer) || this.policyWantsTls(peer);
    }
  }

  /**
   * How to reach a peer: undefined for plain TCP, else what its certificate must show. A peer given only as
   * HOST:PORT has no name to check its certificate against, so TLS refuses it.
   */
  forPeer(peer: string, named: boolean): PeerTls | undefined {
    if (!this.wantsTls(peer)) return undefined;
    if (!named) {
      throw new TransferError(
        "unknown_peer",
        `peer ${peer} has no name, and TLS checks a peer's certificate against its name: add it as ` +
          `--peer ID=${peer} (or in "peers" in the config file), where ID is its agent id`,
      );
    }
    return { name: peer, caPem: this.material!.caPem };
  }

  /** Opens the data port for this mode. Throws as Deno.listen does when the address is taken. */
  listen(hostname: string, port: number): DataListener {
    if (this.settings.mode === "off") return new PlainListener(Deno.listen({ hostname, port }));
    const { certPem: cert, keyPem: key } = this.material!;
    if (this.settings.mode === "on") return new TlsListener(Deno.listenTls({ hostname, port, cert, key }));
    // Only this agent's relay connects here; a stranger on this host meets the same TLS and handshake.
    const inner = Deno.listenTls({ hostname: "127.0.0.1", port: 0, cert, key });
    try {
      return new MixedListener(Deno.listen({ hostname, port }), inner);
    } catch (err) {
      inner.close();
      throw err;
    }
  }
}

function noDelay(conn: Deno.TcpConn): Deno.TcpConn {
  try {
    // Acknowledgements are small writes; Nagle's algorithm would hold them back for a round trip.
    conn.setNoDelay(true);
  } catch { /* reset already: the first read reports it */ }
  return conn;
}

class PlainListener implements DataListener {
  constructor(readonly inner: Deno.TcpListener) {}
  get addr(): Deno.NetAddr {
    return this.inner.addr;
  }
  async accept(): Promise<DataConn> {
    return noDelay(await this.inner.accept());
  }
  close(): void {
    this.inner.close();
  }
}

/** The reason a TLS handshake with a connecting peer failed, and what to change. */
function serverHandshakeError(err: unknown, remote: Deno.NetAddr): Error {
  const msg = (err as Error).message;
  const hint = /InvalidContentType|corrupt message/.test(msg)
    ? 'the peer speaks plain DWCP: set tls.mode "on" or "auto" on it, with this cluster\'s CA'
    : /UnknownCA|BadCertificate|CertificateUnknown/.test(msg)
    ? "the peer does not trust this agent's certificate: give both agents the same tls.ca"
    : "the peer hung up or does not speak TLS";
  return new Error(`TLS handshake with ${remote.hostname}:${remote.port} failed: ${msg}; ${hint}`);
}

/**
 * A server-side TLS connection whose handshake runs before its first byte is read or written, so that a
 * failed handshake reads as one. Deno offers no TCP_NODELAY on a TLS connection: this side's writes (the
 * acknowledgements) go out under Nagle's algorithm.
 */
class TlsDataConn implements DataConn {
  #handshake?: Promise<void>;
  constructor(readonly conn: Deno.TlsConn, readonly remoteAddr: Deno.NetAddr) {}
  get localAddr(): Deno.NetAddr {
    return this.conn.localAddr;
  }
  #ready(): Promise<void> {
    return this.#handshake ??= this.conn.handshake().then(
      () => {},
      (err) => Promise.reject(serverHandshakeError(err, this.remoteAddr)),
    );
  }
  async read(p: Uint8Array): Promise<number | null> {
    await this.#ready();
    return await this.conn.read(p);
  }
  async write(p: Uint8Array): Promise<number> {
    await this.#ready();
    return await this.conn.write(p);
  }
  close(): void {
    this.conn.close();
  }
}

class TlsListener implements DataListener {
  constructor(readonly inner: Deno.TlsListener) {}
  get addr(): Deno.NetAddr {
    return this.inner.addr;
  }
  async accept(): Promise<DataConn> {
    const conn = await this.inner.accept();
    return new TlsDataConn(conn, conn.remoteAddr);
  }
  close(): void {
    this.inner.close();
  }
}

/**
 * Plain and TLS on one port ("auto"). The first byte of a connection tells them apart: a TLS client opens
 * with a handshake record (0x16), a DWCP client with its preamble ("D"). Deno can run a TLS server only on
 * connections its own TLS listener accepted, so a TLS connection is relayed over loopback to an internal
 * Deno.listenTls; the relay costs a copy of each byte (see bench/tls_cost.ts). Plain connections go
 * straight to the data server, with the byte read to tell them apart given back first.
 */
class MixedListener implements DataListener {
  /** Internal TLS connections by the relay's port, met by the connection they carry (either comes first). */
  readonly #meetings = new Map<number, Meeting>();

  constructor(readonly outer: Deno.TcpListener, readonly inner: Deno.TlsListener) {
    this.#acceptInner();
  }

  get addr(): Deno.NetAddr {
    return this.outer.addr;
  }

  async accept(): Promise<DataConn> {
    return new SniffedConn(noDelay(await this.outer.accept()), this);
  }

  close(): void {
    closeQuietly(this.outer);
    closeQuietly(this.inner);
    for (const m of this.#meetings.values()) {
      clearTimeout(m.timer);
      m.conn.reject(new Deno.errors.BadResource("the data port closed"));
    }
    this.#meetings.clear();
  }

  /** The internal TLS connection that the relay from this local port opened. */
  async meet(relayPort: number): Promise<Deno.TlsConn> {
    const m = this.#meeting(relayPort);
    try {
      return await m.conn.promise;
    } finally {
      clearTimeout(m.timer);
      this.#meetings.delete(relayPort);
    }
  }

  #meeting(port: number): Meeting {
    let m = this.#meetings.get(port);
    if (!m) this.#meetings.set(port, m = { conn: Promise.withResolvers<Deno.TlsConn>() });
    return m;
  }

  async #acceptInner(): Promise<void> {
    while (true) {
      let conn: Deno.TlsConn;
      try {
        conn = await this.inner.accept();
      } catch (err) {
        if (err instanceof Deno.errors.BadResource || err instanceof Deno.errors.Interrupted) return;
        continue; // a connection that reset before it was accepted: its relay sees the failure
      }
      const port = conn.remoteAddr.port;
      const m = this.#meeting(port);
      m.conn.resolve(conn);
      // A connection no relay claims (another process on this host) is closed after CLAIM_TIMEOUT_MS.
      m.timer = setTimeout(() => {
        this.#meetings.delete(port);
        closeQuietly(conn);
      }, CLAIM_TIMEOUT_MS);
    }
  }
}

interface Meeting {
  conn: PromiseWithResolvers<Deno.TlsConn>;
  /** Set once the internal connection arrived: closes it unless a relay claims it in time. */
  timer?: ReturnType<typeof setTimeout>;
}

/** A connection to an "auto" port; its first read or write finds out whether it is TLS. */
class SniffedConn implements DataConn {
  /** Where bytes flow once sniffed: the socket itself, or the TLS session relayed from it. */
  #source?: Duplex;
  #sniffing?: Promise<Duplex>;
  /** The bytes read to sniff a plain connection, handed out before anything else. */
  #pending?: Uint8Array;
  #relay?: Deno.TcpConn;
  #tls?: Deno.TlsConn;
  /** Settles when both directions of the relay have ended. */
  #relayed?: Promise<void>;

  constructor(readonly conn: Deno.TcpConn, readonly listener: MixedListener) {}

  get localAddr(): Deno.NetAddr {
    return this.conn.localAddr;
  }
  get remoteAddr(): Deno.NetAddr {
    return this.conn.remoteAddr;
  }

  /** Sniffed as plain TCP, and the bytes read to sniff it all handed out. */
  get plain(): boolean {
    return this.#source === this.conn && this.#pending === undefined;
  }

  async read(p: Uint8Array): Promise<number | null> {
    const source = this.#source ?? await (this.#sniffing ??= this.#sniff());
    if (this.#pending) {
      const n = Math.min(p.length, this.#pending.length);
      p.set(this.#pending.subarray(0, n));
      this.#pending = n < this.#pending.length ? this.#pending.subarray(n) : undefined;
      return n;
    }
    return await source.read(p);
  }

  async write(p: Uint8Array): Promise<number> {
    const source = this.#source ?? await (this.#sniffing ??= this.#sniff());
    return await source.write(p);
  }

  /**
   * A relayed TLS session closes first, and its last bytes still cross the relay: the sockets close once
   * both directions have ended, or after RELAY_DRAIN_MS if the peer keeps its side open.
   */
  close(): void {
    if (!this.#tls || !this.#relayed) return this.#closeSockets();
    closeQuietly(this.#tls);
    const timer = setTimeout(() => this.#closeSockets(), RELAY_DRAIN_MS);
    this.#relayed.finally(() => clearTimeout(timer));
  }

  #closeSockets(): void {
    closeQuietly(this.conn);
    if (this.#relay) closeQuietly(this.#relay);
    if (this.#tls) closeQuietly(this.#tls);
  }

  async #sniff(): Promise<Duplex> {
    const first = new Uint8Array(512);
    const n = await this.conn.read(first);
    if (n === null || first[0] !== TLS_HANDSHAKE_RECORD) {
      if (n !== null) this.#pending = first.subarray(0, n);
      return this.#source = this.conn;
    }
    const relay = this.#relay = noDelay(
      await Deno.connect({ hostname: "127.0.0.1", port: this.listener.inner.addr.port }),
    );
    await writeAll(relay, first.subarray(0, n));
    // A reset on either side ends both; the TLS session then fails, and the data server closes this.
    const reset = () => this.#closeSockets();
    this.#relayed = Promise.all([pump(this.conn, relay).catch(reset), pump(relay, this.conn).catch(reset)])
      .then(reset);
    const tls = this.#tls = await this.listener.meet(relay.localAddr.port);
    try {
      await tls.handshake();
    } catch (err) {
      throw serverHandshakeError(err, this.remoteAddr);
    }
    return this.#source = tls;
  }
}

/** Copies one direction of a relay until its end, then passes the end on (a half-close). */
async function pump(from: Deno.TcpConn, to: Deno.TcpConn): Promise<void> {
  const buf = new Uint8Array(RELAY_BUFFER_BYTES);
  while (true) {
    const n = await from.read(buf);
    if (n === null) break;
    await writeAll(to, buf.subarray(0, n));
  }
  await to.closeWrite();
}
