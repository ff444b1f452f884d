/**
 * The receiver's chunk store for dedupe (HDE): chunks named by their SHA-256, kept on disk under a byte
 * budget, least recently used evicted first, found again after a restart.
 *
 *   const store = await ChunkStore.open({ dir, budgetBytes: 4 * GiB });
 *   const hash = await store.put(bytes);          // idempotent; the store hashes the bytes itself
 *   const again = await store.get(hash);          // verified bytes, or undefined
 *   await store.close();
 *
 * Layout of dir:
 *   chunks/ab/abcd…  one file per chunk, named by the hex hash, fanned out by its first byte
 *   index.log        the LRU order: a header, then fixed-size records, each with a CRC-32
 *   tmp/             chunk files being written; renamed into chunks/ when whole
 *   owner            the pid of the process that has the store open
 *
 * The store is a cache, so it trades durability for speed and recovers by checking instead: chunk files
 * and log appends are not synced. A chunk file appears under its name only by rename, and every read
 * checks the bytes against the name: a torn or corrupted file is treated as absent and removed. The log
 * is replayed up to its first bad record (a torn tail is cut off, a bad header discards it), then checked
 * against the files on disk: entries without a file are dropped, files without an entry are adopted as
 * least recently used. The result is written back as a fresh log (temporary file, fsync, rename).
 *
 * The budget counts each chunk at its size rounded up to whole 4 KiB blocks, which is close to the disk it
 * takes and bounds the entry count (and the index's memory) at budgetBytes / 4 KiB. Room is made before a
 * chunk is written, so the files never exceed the budget.
 */
import { crc32 } from "node:zlib";
import { join } from "node:path";
import { fingerprint, HASH_BYTES, hashHex, sameHash } from "./fingerprint.ts";

const BLOCK_BYTES = 4096;
/** The largest chunk a store accepts: far above any chunker setting, small enough to hold in memory. */
export const MAX_STORED_CHUNK_BYTES = 16 * 1024 * 1024;

const LOG_MAGIC = new TextEncoder().encode("DWCPCIX1");
/** op u8, 3 reserved bytes, u32 chunk bytes, 32-byte hash, u32 CRC-32 of the 40 bytes before it. */
const RECORD_BYTES = 44;
const OP_USE = 1;
const OP_DROP = 2;
/** Records buffered before they are appended (touches are frequent; losing some only ages the LRU order). */
const LOG_BATCH_RECORDS = 256;
/** The log is rewritten when its records outnumber the entries by this factor (plus a constant). */
const LOG_SLACK_FACTOR = 2;
const LOG_SLACK_RECORDS = 1024;
const HEX_NAME = /^[0-9a-f]{64}$/;

export interface ChunkStoreOptions {
  dir: string;
  /** Disk the chunks may take, each rounded up to 4 KiB blocks; at least one maximum-size chunk. */
  budgetBytes: number;
  /** Notes about what recovery found and fixed when opening. */
  log?: (msg: string) => void;
}

export interface ChunkStoreStats {
  entries: number;
  /** Disk taken by the chunks, counted in 4 KiB blocks. */
  diskBytes: number;
  budgetBytes: number;
  hits: number;
  misses: number;
  /** Chunk files written (a put of a chunk already stored writes nothing). */
  writes: number;
  evictions: number;
  /** Chunk files that failed their hash check on read and were removed. */
  corrupt: number;
}

/** A chunk whose bytes do not hash to the name it was given; nothing is stored. */
export class ChunkHashMismatch extends Error {
  override name = "ChunkHashMismatch";
}

const diskOf = (bytes: number) => Math.ceil(bytes / BLOCK_BYTES) * BLOCK_BYTES;

export class ChunkStore {
  /** hex hash → chunk bytes, in LRU order (the first key is the least recently used). */
  readonly #index = new Map<string, number>();
  #diskBytes = 0;
  /** Disk promised to puts still writing: room is made for them before they write. */
  #reservedBytes = 0;
  /** Puts waiting for room that only writes in progress hold. */
  #roomWaiters: (() => void)[] = [];
  readonly #writing = new Map<string, Promise<void>>();
  readonly #unlinking = new Map<string, Promise<void>>();
  #pendingRecords: Uint8Array[] = [];
  #logRecords = 0;
  /** Serializes appends and rewrites of the log. */
  #logChain: Promise<void> = Promise.resolve();
  #tmpCounter = 0;
  #closed = false;
  readonly #stats = { hits: 0, misses: 0, writes: 0, evictions: 0, corrupt: 0 };

  #logFile: Deno.FsFile | undefined;

  private constructor(
    readonly dir: string,
    readonly budgetBytes: number,
    private readonly note: (msg: string) => void,
  ) {}

  static async open(opts: ChunkStoreOptions): Promise<ChunkStore> {
    const { dir, budgetBytes } = opts;
    if (!Number.isSafeInteger(budgetBytes) || budgetBytes < BLOCK_BYTES) {
      throw new RangeError(
        `chunk store budgetBytes ${budgetBytes}: must be an integer of at least ${BLOCK_BYTES}; ` +
          `a few GiB suits VM memory`,
      );
    }
    const log = opts.log ?? (() => {});
    await Deno.mkdir(join(dir, "chunks"), { recursive: true });
    await claimOwner(dir);
    try {
      await Deno.remove(join(dir, "tmp"), { recursive: true }).catch(ignoreNotFound);
      await Deno.mkdir(join(dir, "tmp"));
      for (let b = 0; b < 256; b++) await Deno.mkdir(join(dir, "chunks", hexByte(b)), { recursive: true });

      const replayed = await replayLog(join(dir, "index.log"), log);
      const store = new ChunkStore(dir, budgetBytes, log);
      await store.#reconcile(replayed);
      // A budget lowered since the last run takes effect now.
      store.#makeRoom();
      store.#logFile = await store.#rewriteLog();
      return store;
    } catch (err) {
      await Deno.remove(join(dir, "owner")).catch(() => {});
      throw err;
    }
  }

  /** Whether the index lists the chunk; get() may still find it gone or corrupted. */
  has(hash: Uint8Array): boolean {
    return this.#index.has(hashHex(hash));
  }

  /** The chunk's bytes, checked against its hash, or undefined when it is absent or was corrupted. */
  async get(hash: Uint8Array): Promise<Uint8Array | undefined> {
    this.#live();
    const hex = hashHex(hash);
    if (!this.#index.has(hex)) {
      this.#stats.misses++;
      return undefined;
    }
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(this.#path(hex));
    } catch (err) {
      // Evicted (or removed by hand) between the lookup and the read.
      if (!(err instanceof Deno.errors.NotFound)) throw err;
      if (this.#index.has(hex) && !this.#writing.has(hex)) this.#drop(hex);
      this.#stats.misses++;
      return undefined;
    }
    if (!sameHash(fingerprint(bytes), hash)) {
      this.#stats.corrupt++;
      this.#stats.misses++;
      if (this.#index.has(hex)) this.#drop(hex);
      return undefined;
    }
    this.#stats.hits++;
    // An entry evicted while it was read stays evicted: the bytes in hand are still good.
    if (this.#index.has(hex)) this.#touch(hex);
    return bytes;
  }

  /**
   * Stores bytes under their SHA-256 and returns it. When expected is given the bytes must hash to it, or
   * ChunkHashMismatch is thrown and nothing is stored. Storing a chunk already present only marks it used.
   */
  async put(bytes: Uint8Array, expected?: Uint8Array): Promise<Uint8Array> {
    this.#live();
    if (
      bytes.length === 0 || bytes.length > MAX_STORED_CHUNK_BYTES || diskOf(bytes.length) > this.budgetBytes
    ) {
      throw new RangeError(
        `chunk of ${bytes.length} bytes: the store takes 1..${MAX_STORED_CHUNK_BYTES} bytes that fit its ` +
          `budget of ${this.budgetBytes}`,
      );
    }
    const hash = fingerprint(bytes);
    if (expected && !sameHash(hash, expected)) {
      throw new ChunkHashMismatch(
        `chunk of ${bytes.length} bytes hashes to ${hashHex(hash)}, not the ${
          hashHex(expected)
        } it was sent as`,
      );
    }
    const hex = hashHex(hash);
    const writing = this.#writing.get(hex);
    if (writing) {
      await writing;
    } else if (this.#index.has(hex)) {
      this.#touch(hex);
    } else {
      const write = this.#write(hex, bytes).finally(() => this.#writing.delete(hex));
      this.#writing.set(hex, write);
      await write;
    }
    return hash;
  }

  stats(): ChunkStoreStats {
    return {
      entries: this.#index.size,
      diskBytes: this.#diskBytes,
      budgetBytes: this.budgetBytes,
      ...this.#stats,
    };
  }

  /** Appends the buffered log records. */
  flush(): Promise<void> {
    this.#live();
    return this.#appendLog(true);
  }

  /** Waits for writes in progress, rewrites the log compactly and releases the directory. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.allSettled([...this.#writing.values(), ...this.#unlinking.values()]);
    await this.#logChain;
    this.#logFile?.close();
    (await this.#rewriteLog()).close();
    await Deno.remove(join(this.dir, "owner")).catch(() => {});
  }

  async #write(hex: string, bytes: Uint8Array): Promise<void> {
    const disk = diskOf(bytes.length);
    await this.#reserve(disk);
    try {
      // A removal of an older, corrupted copy of the same chunk must not land after the new file.
      await this.#unlinking.get(hex);
      const tmp = join(this.dir, "tmp", `${hex}.${this.#tmpCounter++}`);
      await Deno.writeFile(tmp, bytes);
      await Deno.rename(tmp, this.#path(hex));
    } catch (err) {
      this.#release(disk);
      throw err;
    }
    this.#stats.writes++;
    this.#diskBytes += disk;
    this.#index.set(hex, bytes.length);
    this.#record(OP_USE, hex, bytes.length);
    this.#release(disk);
  }

  /**
   * Promises diskBytes to a write, evicting for it. When what is left over the budget is held by other
   * writes in progress, waits until one of them lands (and so becomes evictable): the files never exceed
   * the budget, however many puts run at once. Each chunk fits the budget alone, so this ends.
   */
  async #reserve(diskBytes: number): Promise<void> {
    for (;;) {
      this.#makeRoom(diskBytes);
      if (this.#diskBytes + this.#reservedBytes + diskBytes <= this.budgetBytes) break;
      await new Promise<void>((resolve) => this.#roomWaiters.push(resolve));
    }
    this.#reservedBytes += diskBytes;
  }

  #release(diskBytes: number): void {
    this.#reservedBytes -= diskBytes;
    const waiters = this.#roomWaiters;
    this.#roomWaiters = [];
    for (const wake of waiters) wake();
  }

  /** Evicts least recently used chunks until the stored, reserved and extra bytes fit the budget. */
  #makeRoom(extraBytes = 0): void {
    while (this.#diskBytes + this.#reservedBytes + extraBytes > this.budgetBytes) {
      const oldest = this.#index.keys().next();
      if (oldest.done) break;
      this.#stats.evictions++;
      this.#drop(oldest.value);
    }
  }

  #touch(hex: string): void {
    const bytes = this.#index.get(hex)!;
    this.#index.delete(hex);
    this.#index.set(hex, bytes);
    this.#record(OP_USE, hex, bytes);
  }

  #drop(hex: string): void {
    const bytes = this.#index.get(hex)!;
    this.#index.delete(hex);
    this.#diskBytes -= diskOf(bytes);
    this.#record(OP_DROP, hex, bytes);
    const path = this.#path(hex);
    const unlink: Promise<void> = Deno.remove(path).catch(ignoreNotFound).finally(() => {
      if (this.#unlinking.get(hex) === unlink) this.#unlinking.delete(hex);
    });
    this.#unlinking.set(hex, unlink);
  }

  #record(op: number, hex: string, bytes: number): void {
    this.#pendingRecords.push(encodeRecord(op, hex, bytes));
    if (this.#pendingRecords.length >= LOG_BATCH_RECORDS) {
      // The log only orders the cache: a failed append costs LRU accuracy after a restart, not data.
      this.#appendLog(false).catch((err) =>
        this.note(`chunk store ${this.dir}: index append failed: ${err}`)
      );
    }
  }

  /** Appends buffered records (all of them when force, else only a full batch), compacting a long log. */
  #appendLog(force: boolean): Promise<void> {
    const next = this.#logChain.then(async () => {
      if (this.#closed && !force) return;
      if (this.#pendingRecords.length === 0 || (!force && this.#pendingRecords.length < LOG_BATCH_RECORDS)) {
        return;
      }
      const records = this.#pendingRecords;
      this.#pendingRecords = [];
      if (this.#logRecords + records.length > LOG_SLACK_FACTOR * this.#index.size + LOG_SLACK_RECORDS) {
        this.#logFile?.close();
        this.#logFile = undefined;
        this.#logFile = await this.#rewriteLog();
        return;
      }
      const out = new Uint8Array(records.length * RECORD_BYTES);
      records.forEach((r, i) => out.set(r, i * RECORD_BYTES));
      await writeAll(this.#logFile!, out);
      this.#logRecords += records.length;
    });
    this.#logChain = next.catch(() => {});
    return next;
  }

  /** Writes the index as a fresh log (temporary file, fsync, rename) and returns it open for appending. */
  async #rewriteLog(): Promise<Deno.FsFile> {
    this.#pendingRecords = [];
    const out = new Uint8Array(LOG_MAGIC.length + this.#index.size * RECORD_BYTES);
    out.set(LOG_MAGIC);
    let off = LOG_MAGIC.length;
    for (const [hex, bytes] of this.#index) {
      out.set(encodeRecord(OP_USE, hex, bytes), off);
      off += RECORD_BYTES;
    }
    const path = join(this.dir, "index.log");
    const tmp = join(this.dir, "tmp", "index.log");
    const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
    try {
      await writeAll(file, out);
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.rename(tmp, path);
    this.#logRecords = this.#index.size;
    return await Deno.open(path, { append: true });
  }

  /** Builds the index from the replayed log and the files actually on disk. */
  async #reconcile(replayed: Map<string, number>): Promise<void> {
    const onDisk = new Set<string>();
    const orphans: { hex: string; bytes: number; mtimeMs: number }[] = [];
    let strays = 0;
    for (let b = 0; b < 256; b++) {
      const sub = join(this.dir, "chunks", hexByte(b));
      for await (const entry of Deno.readDir(sub)) {
        if (!entry.isFile || !HEX_NAME.test(entry.name) || !entry.name.startsWith(hexByte(b))) {
          await Deno.remove(join(sub, entry.name), { recursive: true });
          strays++;
          continue;
        }
        onDisk.add(entry.name);
        if (replayed.has(entry.name)) continue;
        const info = await Deno.stat(join(sub, entry.name));
        orphans.push({ hex: entry.name, bytes: info.size, mtimeMs: info.mtime?.getTime() ?? 0 });
      }
    }
    // Files the log never recorded (a crash before the append) are the least recently used, oldest first.
    orphans.sort((a, b) => a.mtimeMs - b.mtimeMs);
    let adopted = 0;
    for (const o of orphans) {
      if (o.bytes === 0 || o.bytes > MAX_STORED_CHUNK_BYTES) {
        await Deno.remove(this.#path(o.hex)).catch(ignoreNotFound);
        strays++;
        continue;
      }
      this.#index.set(o.hex, o.bytes);
      this.#diskBytes += diskOf(o.bytes);
      adopted++;
    }
    let missing = 0;
    for (const [hex, bytes] of replayed) {
      if (!onDisk.has(hex)) {
        missing++;
        continue;
      }
      this.#index.set(hex, bytes);
      this.#diskBytes += diskOf(bytes);
    }
    if (adopted || missing || strays) {
      this.note(
        `chunk store ${this.dir}: adopted ${adopted} chunk files the index lacked, dropped ${missing} ` +
          `entries whose file is gone, removed ${strays} stray files`,
      );
    }
  }

  #path(hex: string): string {
    return join(this.dir, "chunks", hex.slice(0, 2), hex);
  }

  #live(): void {
    if (this.#closed) throw new Error(`chunk store ${this.dir} is closed`);
  }
}

function hexByte(b: number): string {
  return b.toString(16).padStart(2, "0");
}

function encodeRecord(op: number, hex: string, bytes: number): Uint8Array {
  const rec = new Uint8Array(RECORD_BYTES);
  const view = new DataView(rec.buffer);
  rec[0] = op;
  view.setUint32(4, bytes, true);
  for (let i = 0; i < HASH_BYTES; i++) rec[8 + i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  view.setUint32(40, crc32(rec.subarray(0, 40)), true);
  return rec;
}

/** The LRU order the log describes, up to its first bad record. */
async function replayLog(path: string, log: (msg: string) => void): Promise<Map<string, number>> {
  const order = new Map<string, number>();
  let data: Uint8Array;
  try {
    data = await Deno.readFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return order;
    throw err;
  }
  if (data.length < LOG_MAGIC.length || !sameHash(data.subarray(0, LOG_MAGIC.length), LOG_MAGIC)) {
    log(`chunk store index ${path} has no valid header; rebuilding it from the chunk files`);
    return order;
  }
  let off = LOG_MAGIC.length;
  for (; off + RECORD_BYTES <= data.length; off += RECORD_BYTES) {
    const rec = data.subarray(off, off + RECORD_BYTES);
    const view = new DataView(rec.buffer, rec.byteOffset, RECORD_BYTES);
    const bytes = view.getUint32(4, true);
    const op = rec[0];
    const valid = view.getUint32(40, true) === crc32(rec.subarray(0, 40)) &&
      (op === OP_USE || op === OP_DROP) &&
      rec[1] === 0 && rec[2] === 0 && rec[3] === 0 && bytes > 0 && bytes <= MAX_STORED_CHUNK_BYTES;
    if (!valid) break;
    const hex = hashHex(rec.subarray(8, 40));
    order.delete(hex);
    if (op === OP_USE) order.set(hex, bytes);
  }
  if (off < data.length) {
    log(
      `chunk store index ${path}: ignored ${data.length - off} bytes from offset ${off} on (a torn or ` +
        `corrupted tail); the chunk files decide what is kept`,
    );
  }
  return order;
}

/** Takes the directory for this process, refusing one that a live process holds. */
async function claimOwner(dir: string): Promise<void> {
  const path = join(dir, "owner");
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await Deno.writeTextFile(path, `${Deno.pid}\n`, { createNew: true });
      return;
    } catch (err) {
      if (!(err instanceof Deno.errors.AlreadyExists)) throw err;
    }
    const pid = Number.parseInt((await Deno.readTextFile(path).catch(() => "")).trim(), 10);
    if (pid === Deno.pid) {
      throw new Error(`chunk store ${dir} is already open in this process; share that ChunkStore instead`);
    }
    if (Number.isInteger(pid) && pid > 0 && await processAlive(pid)) {
      throw new Error(
        `chunk store ${dir} is in use by process ${pid}; stop it, or if ${pid} is not a dwcp agent remove ${path}`,
      );
    }
    // The owner died without closing: its files are recovered like after a crash.
    await Deno.remove(path).catch(ignoreNotFound);
  }
  throw new Error(`chunk store ${dir}: another process claimed ${path} at the same time; try again`);
}

async function processAlive(pid: number): Promise<boolean> {
  try {
    await Deno.stat(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

async function writeAll(file: Deno.FsFile, data: Uint8Array): Promise<void> {
  for (let off = 0; off < data.length;) off += await file.write(data.subarray(off));
}

function ignoreNotFound(err: unknown): void {
  if (!(err instanceof Deno.errors.NotFound)) throw err;
}
