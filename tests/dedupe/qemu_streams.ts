/**
 * Synthetic QEMU 7.2 migration streams for the parser tests, written the way migration/savevm.c and
 * migration/ram.c write them (big-endian), with the pages they hold kept for comparison.
 *
 *   const s = new StreamBuilder().header().configuration("pc-q35-7.2").ramStart(2, [["pc.ram", 1 << 20]]);
 *   s.part(2).page("pc.ram", 0, bytes).zero("pc.ram", 4096).eos().footer(2);
 *   const { bytes, pages } = s.deviceState().build();
 */
import { randomBytes } from "./support.ts";

const PAGE = 4096;
const enc = new TextEncoder();

export class StreamBuilder {
  readonly #parts: number[] = [];
  readonly pages: Uint8Array[] = [];
  #lastBlock?: string;

  u8(v: number): this {
    this.#parts.push(v & 0xff);
    return this;
  }

  u16(v: number): this {
    return this.u8(v >> 8).u8(v);
  }

  u32(v: number): this {
    return this.u8(v >>> 24).u8(v >>> 16).u8(v >>> 8).u8(v);
  }

  u64(v: number): this {
    return this.u32(Math.floor(v / 2 ** 32)).u32(v >>> 0);
  }

  raw(bytes: Uint8Array): this {
    for (const b of bytes) this.#parts.push(b);
    return this;
  }

  /** u8 length, then the string. */
  idstr(s: string): this {
    return this.u8(s.length).raw(enc.encode(s));
  }

  header(): this {
    return this.raw(enc.encode("QEVM")).u32(3);
  }

  configuration(machine: string): this {
    return this.u8(0x07).u32(machine.length).raw(enc.encode(machine));
  }

  /** A configuration subsection: name, version 1, its fields. */
  subsection(name: string, fields: Uint8Array): this {
    return this.u8(0x05).idstr(name).u32(1).raw(fields);
  }

  /** START of the "ram" section (version 4) with its block list, EOS and footer. */
  ramStart(sectionId: number, blocks: [string, number][]): this {
    const total = blocks.reduce((n, [, b]) => n + b, 0);
    this.u8(0x01).u32(sectionId).idstr("ram").u32(0).u32(4).u64(total + 0x04);
    for (const [name, bytes] of blocks) this.idstr(name).u64(bytes);
    this.#lastBlock = undefined;
    return this.eos().footer(sectionId);
  }

  part(sectionId: number): this {
    return this.u8(0x02).u32(sectionId);
  }

  end(sectionId: number): this {
    return this.u8(0x03).u32(sectionId);
  }

  footer(sectionId: number): this {
    return this.u8(0x7e).u32(sectionId);
  }

  eos(): this {
    return this.u64(0x10);
  }

  #pageHeader(block: string, address: number, flags: number): this {
    if (block === this.#lastBlock) return this.u64(address + flags + 0x20);
    this.#lastBlock = block;
    return this.u64(address + flags).idstr(block);
  }

  page(block: string, address: number, contents: Uint8Array): this {
    this.pages.push(contents);
    return this.#pageHeader(block, address, 0x08).raw(contents);
  }

  zero(block: string, address: number): this {
    return this.#pageHeader(block, address, 0x02).u8(0);
  }

  xbzrle(block: string, address: number, delta: Uint8Array): this {
    return this.#pageHeader(block, address, 0x40).u8(1).u16(delta.length).raw(delta);
  }

  /** A FULL section of device state, the EOF marker and a short JSON description, as QEMU ends. */
  deviceState(): this {
    this.u8(0x04).u32(3).idstr("timer").u32(0).u32(2).raw(randomBytes(40, 3)).footer(3);
    const json = enc.encode('{"page_size": 4096}');
    return this.u8(0x00).u8(0x06).u32(json.length).raw(json);
  }

  build(): { bytes: Uint8Array; pages: Uint8Array[] } {
    return { bytes: new Uint8Array(this.#parts), pages: this.pages };
  }
}

/**
 * A small but complete stream: configuration, two RAM blocks, pages of each kind (named and CONTINUE),
 * two passes, the END section and device state.
 */
export function sampleStream(seed = 1): { bytes: Uint8Array; pages: Uint8Array[] } {
  const s = new StreamBuilder().header().configuration("pc-q35-7.2")
    .ramStart(2, [["pc.ram", 64 * PAGE], ["/rom@etc/acpi/tables", 4 * PAGE]]);
  s.part(2)
    .page("pc.ram", 0, randomBytes(PAGE, seed))
    .zero("pc.ram", PAGE)
    .page("pc.ram", 2 * PAGE, randomBytes(PAGE, seed + 1))
    .page("/rom@etc/acpi/tables", 0, randomBytes(PAGE, seed + 2))
    .eos().footer(2);
  s.part(2).xbzrle("pc.ram", 0, randomBytes(100, seed + 3)).page(
    "pc.ram",
    63 * PAGE,
    randomBytes(PAGE, seed + 4),
  )
    .eos().footer(2);
  s.end(2).page("pc.ram", 5 * PAGE, new Uint8Array(PAGE).fill(7)).eos().footer(2);
  return s.deviceState().build();
}
