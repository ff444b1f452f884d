/**
 * A parser of QEMU's precopy migration stream (QEMU 7.2, x86: 4 KiB target pages) that splits it into
 * RAW records, every byte that is not a page's contents, and PAGE records, the 4 KiB contents of each
 * RAM_SAVE_FLAG_PAGE record. Dedupe (HDE) chunks the pages on their own: each page sits behind an 8-byte
 * header holding its address, so a chunk of the stream as it is rarely repeats between two guests even
 * where their memory does.
 *
 *   const parser = new QemuStreamParser();
 *   for await (const read of socket) for (const rec of parser.push(read)) use(rec);
 *   for (const rec of parser.finish()) use(rec);
 *
 * The records are a partition of the stream: concatenating their bytes in order gives the input back,
 * whatever the parser understood. So a wrong guess costs savings, never bytes, and anything unexpected
 * (an unknown section, a flag it does not know, a length out of range) switches the parser to
 * pass-through: the rest of the stream comes out as RAW. Device state (FULL sections) is not
 * length-delimited, so the parser meets pass-through at the latest there, after the RAM.
 *
 * Pure and incremental: bytes in, records out. A stream split into reads differently gives the same PAGE
 * records at the same places and the same bytes between them (RAW records may be cut differently). A
 * record is a view of the pushed bytes where it lies inside one push (keep those unchanged while it is in
 * use) and a copy where it spans two. Memory is bounded by one page: the bytes of an incomplete token are
 * carried to the next push.
 *
 * The format (migration/savevm.c, migration/ram.c in QEMU 7.2), all integers big-endian:
 *
 *   "QEVM" u32 version=3
 *   [0x07 CONFIGURATION  u32 len, machine name, then 0x05 subsections (name, u32 version, fields)]
 *   0x01 START  u32 sectionId, u8 len + idstr "ram", u32 instanceId, u32 version=4
 *        u64 (total | MEM_SIZE), per RAM block: u8 len + idstr, u64 used_length; u64 EOS
 *   0x7e FOOTER u32 sectionId
 *   0x02 PART / 0x03 END  u32 sectionId, page records, u64 EOS, then a FOOTER
 *        a page record: u64 (address | flags), [u8 len + block idstr unless flags has CONTINUE], then
 *        ZERO: one byte; PAGE: 4096 bytes; XBZRLE: u8 1, u16 len, len bytes of delta
 *   0x04 FULL ... device state, 0x00 EOF, the JSON description: never parsed (pass-through)
 */

/** x86's target page: the size of a PAGE record's contents. */
export const QEMU_PAGE_BYTES = 4096;

export type StreamRecord =
  | { kind: "raw"; bytes: Uint8Array }
  | { kind: "page"; bytes: Uint8Array };

export interface QemuStreamStats {
  /** Bytes pushed. */
  bytes: number;
  /** PAGE records, and the bytes that came out as RAW. */
  pages: number;
  rawBytes: number;
  zeroPages: number;
  xbzrlePages: number;
}

export interface PassThrough {
  /** Offset in the stream of the first byte not parsed. */
  atByte: number;
  reason: string;
}

const MAGIC = 0x5145564d; // "QEVM"
const FILE_VERSION = 3;
const RAM_SECTION_VERSION = 4;

const SECTION = {
  EOF: 0x00,
  START: 0x01,
  PART: 0x02,
  END: 0x03,
  FULL: 0x04,
  SUBSECTION: 0x05,
  CONFIGURATION: 0x07,
  FOOTER: 0x7e,
} as const;

const FLAG = {
  ZERO: 0x02,
  MEM_SIZE: 0x04,
  PAGE: 0x08,
  EOS: 0x10,
  CONTINUE: 0x20,
  XBZRLE: 0x40,
} as const;
/** The flag bits of a page header: the bits below the target page size. */
const FLAG_MASK = QEMU_PAGE_BYTES - 1;
const ENCODING_FLAG_XBZRLE = 0x01;
/** A machine type name ("pc-q35-7.2") is short; a longer one means the parser is lost. */
const MAX_CONFIG_NAME_BYTES = 256;
/** Configuration subsections whose fields have a fixed size, by name: the size in bytes. */
const CONFIG_SUBSECTIONS: Record<string, number> = {
  "configuration/target-page-bits": 4,
  "configuration/uuid": 16,
};
const TARGET_PAGE_BITS = 12;

/** What the next `want` bytes are. */
type State =
  | "magic"
  | "sectionType"
  | "configLength"
  | "configName"
  | "subsectionNameLength"
  | "subsectionName"
  | "subsectionVersion"
  | "subsectionFields"
  | "startHead"
  | "startId"
  | "startTail"
  | "sectionId"
  | "footer"
  | "ramHeader"
  | "blockNameLength"
  | "blockName"
  | "blockLength"
  | "pageBlockNameLength"
  | "pageBlockName"
  | "zero"
  | "page"
  | "xbzrleHead"
  | "xbzrleData";

type PageKind = "zero" | "page" | "xbzrle";

export class QemuStreamParser {
  #state: State = "magic";
  #want = 8;
  /** The bytes of an incomplete token, carried from one push to the next. */
  readonly #carry = new Uint8Array(QEMU_PAGE_BYTES);
  #carryLen = 0;
  #offset = 0;
  /** Where the token being parsed starts. */
  #tokenAt = 0;
  #passThrough?: PassThrough;
  #finished = false;
  readonly #stats: QemuStreamStats = { bytes: 0, pages: 0, rawBytes: 0, zeroPages: 0, xbzrlePages: 0 };

  /** Whether sections so far were only the configuration (its subsections may follow). */
  #inConfiguration = false;
  #sawConfiguration = false;
  #sawSection = false;
  #subsectionName = "";
  #startId = 0;
  #startIdstr = "";
  /** The section whose footer may come next. */
  #lastSectionId?: number;
  #ramSectionId?: number;
  /** Inside the ram section's START: the block list comes first. */
  #ramSetup = false;
  #memSizeSeen = false;
  #memLeftBytes = 0;
  #blockName = "";
  /** RAM block idstr → used_length, from the START's block list. */
  readonly #blocks = new Map<string, number>();
  #lastBlock?: string;
  #pageAddress = 0;
  #pageKind: PageKind = "page";

  get passThrough(): PassThrough | undefined {
    return this.#passThrough;
  }

  stats(): QemuStreamStats {
    return { ...this.#stats };
  }

  /** Splits the next bytes of the stream into records, keeping an incomplete token for the next push. */
  push(data: Uint8Array): StreamRecord[] {
    if (this.#finished) throw new Error("qemu stream parser: push after finish()");
    this.#stats.bytes += data.length;
    const out: StreamRecord[] = [];
    let pos = 0;
    if (this.#carryLen > 0 && !this.#passThrough) {
      const take = Math.min(this.#want - this.#carryLen, data.length);
      this.#carry.set(data.subarray(0, take), this.#carryLen);
      this.#carryLen += take;
      pos = take;
      if (this.#carryLen < this.#want) return out;
      const token = this.#carry.slice(0, this.#want);
      this.#carryLen = 0;
      this.#emit(out, this.#step(token) ? "page" : "raw", token);
    }
    let rawFrom = pos;
    while (!this.#passThrough && data.length - pos >= this.#want) {
      const token = data.subarray(pos, pos + this.#want);
      if (this.#step(token)) {
        if (pos > rawFrom) this.#emit(out, "raw", data.subarray(rawFrom, pos));
        this.#emit(out, "page", token);
        rawFrom = pos + token.length;
      }
      pos += token.length;
    }
    if (this.#passThrough) {
      // The carried bytes of the token that failed, if any, then everything after it.
      if (this.#carryLen > 0) this.#emit(out, "raw", this.#carry.slice(0, this.#carryLen));
      this.#carryLen = 0;
      if (data.length > rawFrom) this.#emit(out, "raw", data.subarray(rawFrom));
      return out;
    }
    if (pos > rawFrom) this.#emit(out, "raw", data.subarray(rawFrom, pos));
    this.#carry.set(data.subarray(pos), this.#carryLen);
    this.#carryLen += data.length - pos;
    return out;
  }

  /** The stream ended: an incomplete token comes out as RAW (QEMU's loader would refuse the stream). */
  finish(): StreamRecord[] {
    if (this.#finished) return [];
    this.#finished = true;
    const out: StreamRecord[] = [];
    if (this.#carryLen > 0) {
      this.#tokenAt = this.#offset;
      this.#stop(`the stream ended inside a ${this.#state} of ${this.#want} bytes`);
      this.#emit(out, "raw", this.#carry.slice(0, this.#carryLen));
      this.#carryLen = 0;
    }
    return out;
  }

  #emit(out: StreamRecord[], kind: "raw" | "page", bytes: Uint8Array): void {
    if (kind === "page") this.#stats.pages++;
    else this.#stats.rawBytes += bytes.length;
    out.push({ kind, bytes });
  }

  /** Gives up parsing at the token being parsed: from there on everything is RAW. */
  #stop(reason: string): false {
    this.#passThrough ??= { atByte: this.#tokenAt, reason };
    return false;
  }

  #next(state: State, want: number): false {
    this.#state = state;
    this.#want = want;
    return false;
  }

  /** Consumes one token of exactly #want bytes; returns whether it is a page's contents. */
  #step(token: Uint8Array): boolean {
    this.#tokenAt = this.#offset;
    this.#offset += token.length;
    const view = new DataView(token.buffer, token.byteOffset, token.length);
    const fail = (reason: string) => this.#stop(reason);
    switch (this.#state) {
      case "magic":
        if (view.getUint32(0) !== MAGIC || view.getUint32(4) !== FILE_VERSION) {
          return fail(
            `not a QEMU migration stream of file version ${FILE_VERSION} (it starts ${hex(token)})`,
          );
        }
        return this.#next("sectionType", 1);
      case "sectionType":
        return this.#sectionType(token[0]);
      case "configLength": {
        const len = view.getUint32(0);
        if (len < 1 || len > MAX_CONFIG_NAME_BYTES) return fail(`configuration names a ${len}-byte machine`);
        return this.#next("configName", len);
      }
      case "configName":
        this.#inConfiguration = true;
        return this.#next("sectionType", 1);
      case "subsectionNameLength":
        if (token[0] < 1) return fail("a configuration subsection without a name");
        return this.#next("subsectionName", token[0]);
      case "subsectionName": {
        const name = ascii(token);
        const fields = CONFIG_SUBSECTIONS[name];
        if (fields === undefined) return fail(`configuration subsection "${name}" is unknown here`);
        this.#subsectionName = name;
        return this.#next("subsectionVersion", 4);
      }
      case "subsectionVersion":
        return this.#next("subsectionFields", CONFIG_SUBSECTIONS[this.#subsectionName]);
      case "subsectionFields":
        if (
          this.#subsectionName === "configuration/target-page-bits" && view.getUint32(0) !== TARGET_PAGE_BITS
        ) {
          return fail(`target pages of 2^${view.getUint32(0)} bytes; this parser knows 4 KiB pages`);
        }
        return this.#next("sectionType", 1);
      case "startHead":
        this.#startId = view.getUint32(0);
        if (token[4] < 1) return fail("a section START without an idstr");
        return this.#next("startId", token[4]);
      case "startId":
        this.#startIdstr = ascii(token);
        return this.#next("startTail", 8);
      case "startTail": {
        const version = view.getUint32(4);
        if (this.#startIdstr !== "ram" || this.#ramSectionId !== undefined) {
          return fail(`iterative section "${this.#startIdstr}" (only one "ram" section is parsed)`);
        }
        if (version !== RAM_SECTION_VERSION) return fail(`"ram" section version ${version}, expected 4`);
        this.#ramSectionId = this.#startId;
        this.#lastSectionId = this.#startId;
        this.#ramSetup = true;
        return this.#next("ramHeader", 8);
      }
      case "sectionId": {
        const id = view.getUint32(0);
        if (id !== this.#ramSectionId) return fail(`section ${id} continues, not the "ram" section`);
        this.#lastSectionId = id;
        return this.#next("ramHeader", 8);
      }
      case "footer": {
        const id = view.getUint32(0);
        if (id !== this.#lastSectionId) {
          return fail(`a footer for section ${id} after section ${this.#lastSectionId}`);
        }
        this.#lastSectionId = undefined;
        return this.#next("sectionType", 1);
      }
      case "ramHeader":
        return this.#ramHeader(view.getUint32(0), view.getUint32(4));
      case "blockNameLength":
        if (token[0] < 1) return fail("a RAM block without an idstr");
        return this.#next("blockName", token[0]);
      case "blockName":
        this.#blockName = ascii(token);
        if (this.#blocks.has(this.#blockName)) return fail(`RAM block "${this.#blockName}" listed twice`);
        return this.#next("blockLength", 8);
      case "blockLength": {
        const used = view.getUint32(0) * 2 ** 32 + view.getUint32(4);
        if (used % QEMU_PAGE_BYTES !== 0 || used > this.#memLeftBytes) {
          return fail(
            `RAM block "${this.#blockName}" of ${used} bytes with ${this.#memLeftBytes} of the total left`,
          );
        }
        this.#blocks.set(this.#blockName, used);
        this.#memLeftBytes -= used;
        return this.#memLeftBytes === 0 ? this.#next("ramHeader", 8) : this.#next("blockNameLength", 1);
      }
      case "pageBlockNameLength":
        if (token[0] < 1) return fail("a page of a RAM block without an idstr");
        return this.#next("pageBlockName", token[0]);
      case "pageBlockName": {
        const name = ascii(token);
        if (!this.#blocks.has(name)) {
          return fail(`a page of RAM block "${name}", which the START did not list`);
        }
        this.#lastBlock = name;
        return this.#pageBody();
      }
      case "zero":
        this.#stats.zeroPages++;
        return this.#next("ramHeader", 8);
      case "page":
        this.#next("ramHeader", 8);
        return true;
      case "xbzrleHead": {
        const len = view.getUint16(1);
        if (token[0] !== ENCODING_FLAG_XBZRLE || len < 1 || len > QEMU_PAGE_BYTES) {
          return fail(`an XBZRLE page with encoding ${token[0]} and ${len} bytes`);
        }
        this.#stats.xbzrlePages++;
        return this.#next("xbzrleData", len);
      }
      case "xbzrleData":
        return this.#next("ramHeader", 8);
    }
  }

  #sectionType(type: number): false {
    const fail = (reason: string) => this.#stop(reason);
    if (type === SECTION.SUBSECTION && this.#inConfiguration) return this.#next("subsectionNameLength", 1);
    this.#inConfiguration = false;
    switch (type) {
      case SECTION.CONFIGURATION:
        if (this.#sawConfiguration || this.#sawSection) return fail("a second CONFIGURATION");
        this.#sawConfiguration = true;
        return this.#next("configLength", 4);
      case SECTION.START:
        this.#sawSection = true;
        return this.#next("startHead", 5);
      case SECTION.PART:
      case SECTION.END:
        this.#sawSection = true;
        return this.#next("sectionId", 4);
      case SECTION.FOOTER:
        if (this.#lastSectionId === undefined) return fail("a section footer outside a section");
        return this.#next("footer", 4);
      case SECTION.FULL:
        return fail("device state (a FULL section, not length-delimited)");
      case SECTION.EOF:
        return fail("the end of the sections (EOF)");
      default:
        return fail(`section type 0x${type.toString(16)}`);
    }
  }

  /** The be64 that starts every record of the ram section, as its two halves: address | flags. */
  #ramHeader(high: number, low: number): false {
    if (high >= 2 ** 21) return this.#stop(`a RAM record header with high word 0x${high.toString(16)}`);
    const flags = low & FLAG_MASK;
    const address = high * 2 ** 32 + (low - flags);
    if (this.#ramSetup && !this.#memSizeSeen) {
      if (flags !== FLAG.MEM_SIZE || address === 0) {
        return this.#stop(`the "ram" START begins with flags 0x${flags.toString(16)}, not MEM_SIZE`);
      }
      this.#memSizeSeen = true;
      this.#memLeftBytes = address;
      return this.#next("blockNameLength", 1);
    }
    if (flags === FLAG.EOS) {
      if (address !== 0) return this.#stop(`EOS with address ${address}`);
      this.#ramSetup = false;
      return this.#next("sectionType", 1);
    }
    if (this.#ramSetup) return this.#stop(`a page record (flags 0x${flags.toString(16)}) in the "ram" START`);
    const kind = flags & ~FLAG.CONTINUE & FLAG_MASK;
    switch (kind) {
      case FLAG.ZERO:
        this.#pageKind = "zero";
        break;
      case FLAG.PAGE:
        this.#pageKind = "page";
        break;
      case FLAG.XBZRLE:
        this.#pageKind = "xbzrle";
        break;
      default:
        return this.#stop(`a RAM record with flags 0x${flags.toString(16)}`);
    }
    this.#pageAddress = address;
    if ((flags & FLAG.CONTINUE) === 0) return this.#next("pageBlockNameLength", 1);
    if (this.#lastBlock === undefined) return this.#stop("a RAM record CONTINUEs before any block was named");
    return this.#pageBody();
  }

  #pageBody(): false {
    const used = this.#blocks.get(this.#lastBlock!)!;
    if (this.#pageAddress + QEMU_PAGE_BYTES > used) {
      return this.#stop(`a page at ${this.#pageAddress} past the end of RAM block "${this.#lastBlock}"`);
    }
    switch (this.#pageKind) {
      case "zero":
        return this.#next("zero", 1);
      case "page":
        return this.#next("page", QEMU_PAGE_BYTES);
      case "xbzrle":
        return this.#next("xbzrleHead", 3);
    }
  }
}

function ascii(bytes: Uint8Array): string {
  return String.fromCharCode(...bytes);
}

function hex(bytes: Uint8Array): string {
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join(" ");
}
