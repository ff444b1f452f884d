/**
 * File paths are confined to the configured roots: a path given to the API or by a peer must resolve,
 * after `..` and symlinks, to a place inside one of them.
 */
import { basename, dirname, isAbsolute, resolve, sep } from "node:path";

export class PathError extends Error {
  override name = "PathError";
  constructor(
    readonly code: "path_outside_roots" | "not_found" | "not_a_file" | "exists" | "invalid_path",
    message: string,
  ) {
    super(message);
  }
}

function inside(root: string, path: string): boolean {
  return path === root || path.startsWith(root.endsWith(sep) ? root : root + sep);
}

export class Roots {
  readonly roots: string[];

  constructor(roots: string[]) {
    if (roots.length === 0) throw new RangeError("at least one root directory is required");
    this.roots = roots.map((r) => resolve(r));
  }

  /** Creates the root directories that do not exist yet. */
  async ensure(): Promise<void> {
    for (const r of this.roots) await Deno.mkdir(r, { recursive: true });
  }

  #lexical(path: string): string {
    const abs = isAbsolute(path) ? resolve(path) : resolve(this.roots[0], path);
    if (!this.roots.some((r) => inside(r, abs))) {
      throw new PathError(
        "path_outside_roots",
        `path "${path}" is outside the allowed roots (${this.roots.join(", ")}); ` +
          `use a path inside one of them or add a root to the agent's config`,
      );
    }
    return abs;
  }

  /** Checks that the real (symlink-resolved) location is still inside a root. */
  async #real(abs: string, shown: string): Promise<string> {
    const real = await Deno.realPath(abs);
    const realRoots = await Promise.all(this.roots.map((r) => Deno.realPath(r).catch(() => r)));
    if (!realRoots.some((r) => inside(r, real))) {
      throw new PathError(
        "path_outside_roots",
        `path "${shown}" leads through a symlink to ${real}, outside the allowed roots (${
          this.roots.join(", ")
        })`,
      );
    }
    return real;
  }

  /** An existing regular file to read. */
  async source(path: string): Promise<{ path: string; sizeBytes: number }> {
    const abs = this.#lexical(path);
    try {
      const real = await this.#real(abs, path);
      const st = await Deno.stat(real);
      if (!st.isFile) throw new PathError("not_a_file", `source "${path}" is not a regular file`);
      return { path: real, sizeBytes: st.size };
    } catch (err) {
      if (err instanceof PathError) throw err;
      // NotFound, NotADirectory (a file used as a directory), name too long...: the file cannot be had.
      throw new PathError(
        "not_found",
        `source file "${path}" cannot be read (looked at ${abs}): ${(err as Error).message}`,
      );
    }
  }

  /**
   * Where to write: a path inside a root whose parent directory exists or is created. A destination
   * that names an existing directory receives the file under sourceName.
   */
  async destination(path: string, sourceName: string, overwrite: boolean): Promise<string> {
    try {
      return await this.#destination(path, sourceName, overwrite);
    } catch (err) {
      if (err instanceof PathError) throw err;
      throw new PathError(
        "invalid_path",
        `destination "${path}" cannot be created: ${(err as Error).message}`,
      );
    }
  }

  async #destination(path: string, sourceName: string, overwrite: boolean): Promise<string> {
    let abs = this.#lexical(path === "" ? basename(sourceName) : path);
    const existing = await Deno.stat(abs).catch(() => undefined);
    if (existing?.isDirectory) abs = this.#lexical(resolve(abs, basename(sourceName)));
    const dir = dirname(abs);
    // Check the nearest existing ancestor before creating anything, so a symlink cannot steer mkdir out.
    let ancestor = dir;
    while (!(await Deno.stat(ancestor).catch(() => undefined))) ancestor = dirname(ancestor);
    await this.#real(ancestor, path);
    await Deno.mkdir(dir, { recursive: true });
    const realDir = await this.#real(dir, path);
    const final = resolve(realDir, basename(abs));
    const st = await Deno.lstat(final).catch(() => undefined);
    if (st && !st.isFile) {
      throw new PathError("exists", `destination "${path}" exists and is not a regular file`);
    }
    if (st && !overwrite) {
      throw new PathError(
        "exists",
        `destination "${path}" already exists; pass overwrite: true to replace it`,
      );
    }
    return final;
  }
}
