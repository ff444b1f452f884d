/** Byte-level IO on a connection: exact reads, full writes, and length-prefixed JSON control messages. */

export interface Duplex {
  read(p: Uint8Array): Promise<number | null>;
  write(p: Uint8Array): Promise<number>;
  close(): void;
}

/** Control messages are small; anything larger is a protocol error, not a reason to allocate. */
export const MAX_MESSAGE_BYTES = 64 * 1024;

export class ConnectionClosed extends Error {
  override name = "ConnectionClosed";
}

/** Fills buf completely, or throws ConnectionClosed if the peer closes first. */
export async function readFull(conn: Duplex, buf: Uint8Array): Promise<void> {
  let got = 0;
  while (got < buf.length) {
    const n = await conn.read(buf.subarray(got));
    if (n === null) throw new ConnectionClosed(`connection closed after ${got} of ${buf.length} bytes`);
    got += n;
  }
}

export async function writeAll(conn: Duplex, buf: Uint8Array): Promise<void> {
  let sent = 0;
  while (sent < buf.length) sent += await conn.write(buf.subarray(sent));
}

const utf8 = new TextEncoder();
const utf8d = new TextDecoder();

export async function sendMessage(conn: Duplex, msg: object): Promise<void> {
  const body = utf8.encode(JSON.stringify(msg));
  if (body.length > MAX_MESSAGE_BYTES) {
    throw new RangeError(`control message of ${body.length} bytes too large`);
  }
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length, true);
  out.set(body, 4);
  await writeAll(conn, out);
}

/** Reads one control message; the `type` field is checked against what the caller expects. */
export async function receiveMessage<T extends { type: string }>(conn: Duplex): Promise<T> {
  const head = new Uint8Array(4);
  await readFull(conn, head);
  const len = new DataView(head.buffer).getUint32(0, true);
  if (len > MAX_MESSAGE_BYTES) {
    throw new ProtocolError(`control message of ${len} bytes exceeds ${MAX_MESSAGE_BYTES}`);
  }
  const body = new Uint8Array(len);
  await readFull(conn, body);
  let msg: unknown;
  try {
    msg = JSON.parse(utf8d.decode(body));
  } catch {
    throw new ProtocolError("control message is not valid JSON");
  }
  if (typeof msg !== "object" || msg === null || typeof (msg as { type?: unknown }).type !== "string") {
    throw new ProtocolError("control message has no type");
  }
  return msg as T;
}

export class ProtocolError extends Error {
  override name = "ProtocolError";
}

/** A peer's refusal, carried as {type:"error", code, message} and rethrown on our side. */
export class PeerError extends Error {
  override name = "PeerError";
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

export interface ErrorMessage {
  type: "error";
  code: string;
  message: string;
}

/** Receives a message and throws PeerError if it is an error, ProtocolError if not the expected type. */
export async function expectMessage<T extends { type: string }>(conn: Duplex, type: T["type"]): Promise<T> {
  const msg = await receiveMessage<T | ErrorMessage>(conn);
  if (msg.type === "error") {
    const e = msg as ErrorMessage;
    throw new PeerError(String(e.code), String(e.message));
  }
  if (msg.type !== type) throw new ProtocolError(`expected "${type}" message, got "${msg.type}"`);
  return msg as T;
}

/**
 * File reads and writes on the data path are synchronous: from and to the page cache they are
 * memory copies, and the async versions' hop to a blocking thread costs more than the copy itself.
 */
export function readFullSync(file: Deno.FsFile, buf: Uint8Array): void {
  let got = 0;
  while (got < buf.length) {
    const n = file.readSync(buf.subarray(got));
    if (n === null) throw new RangeError(`file ended after ${got} of ${buf.length} bytes; did it shrink?`);
    got += n;
  }
}

export function writeAllSync(file: Deno.FsFile, buf: Uint8Array): void {
  let sent = 0;
  while (sent < buf.length) sent += file.writeSync(buf.subarray(sent));
}

export function closeQuietly(c: { close(): void }): void {
  try {
    c.close();
  } catch { /* already closed */ }
}
