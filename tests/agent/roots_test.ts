/** src/agent/roots.ts: every path the API or a peer names must stay inside the configured roots. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { PathError, Roots } from "../../src/agent/roots.ts";

interface Sandbox {
  /** Two roots and a directory outside both, all real paths. */
  root: string;
  root2: string;
  outside: string;
  roots: Roots;
}

/** Runs body with fresh temporary directories and removes them afterwards. */
async function withSandbox(body: (s: Sandbox) => Promise<void>): Promise<void> {
  const base = await Deno.realPath(await Deno.makeTempDir({ prefix: "dwcp-roots-" }));
  try {
    const s = { root: join(base, "root"), root2: join(base, "root2"), outside: join(base, "outside") };
    for (const d of Object.values(s)) await Deno.mkdir(d);
    await body({ ...s, roots: new Roots([s.root, s.root2]) });
  } finally {
    await Deno.remove(base, { recursive: true });
  }
}

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

/** Asserts that p rejects with a PathError of this code, and returns it for more checks. */
async function pathError(p: Promise<unknown>, code: PathError["code"]): Promise<PathError> {
  const err = await p.then(() => undefined, (e) => e);
  assert.ok(err instanceof PathError, `expected PathError ${code}, got ${String(err).slice(0, 300)}`);
  assert.equal(err.code, code, err.message);
  return err;
}

Deno.test("a relative source path resolves under the first root", () =>
  withSandbox(async ({ root, roots }) => {
    await Deno.writeTextFile(join(root, "a.txt"), "hello");
    assert.deepEqual(await roots.source("a.txt"), { path: join(root, "a.txt"), sizeBytes: 5 });
  }));

Deno.test("an absolute path inside any root is accepted", () =>
  withSandbox(async ({ root2, roots }) => {
    await Deno.mkdir(join(root2, "d"));
    await Deno.writeTextFile(join(root2, "d", "b.txt"), "xyz");
    assert.deepEqual(await roots.source(join(root2, "d", "b.txt")), {
      path: join(root2, "d", "b.txt"),
      sizeBytes: 3,
    });
  }));

Deno.test("`..` that leaves the roots is refused with a message naming the path", () =>
  withSandbox(async ({ root, outside, roots }) => {
    await Deno.writeTextFile(join(outside, "secret"), "x");
    for (
      const path of ["../outside/secret", "sub/../../outside/secret", join(root, "..", "outside", "secret")]
    ) {
      const err = await pathError(roots.source(path), "path_outside_roots");
      assert.ok(err.message.includes(`"${path}"`), err.message);
    }
    await pathError(roots.destination("../outside/new", "f", false), "path_outside_roots");
    assert.equal(await exists(join(outside, "new")), false);
  }));

Deno.test("`..` that stays inside a root is fine", () =>
  withSandbox(async ({ root, roots }) => {
    await Deno.writeTextFile(join(root, "a.txt"), "hello");
    assert.equal((await roots.source("sub/../a.txt")).path, join(root, "a.txt"));
  }));

Deno.test("a sibling directory whose name starts with the root's name is outside", () =>
  withSandbox(async ({ root }) => {
    // root2 is not a root here; "root" is a prefix of "root2" as a string.
    const only = new Roots([root]);
    await Deno.writeTextFile(join(root + "2", "f"), "x");
    await pathError(only.source(join(root + "2", "f")), "path_outside_roots");
    await pathError(only.destination(join(root + "2", "g"), "x", false), "path_outside_roots");
  }));

Deno.test("an absolute path elsewhere is refused", () =>
  withSandbox(async ({ roots }) => {
    await pathError(roots.source("/etc/hostname"), "path_outside_roots");
    await pathError(roots.destination("/etc/dwcp-should-not-exist", "f", false), "path_outside_roots");
  }));

Deno.test("a symlink inside a root that points outside is refused as a source", () =>
  withSandbox(async ({ root, outside, roots }) => {
    await Deno.writeTextFile(join(outside, "secret"), "top secret");
    await Deno.symlink(join(outside, "secret"), join(root, "link"));
    const err = await pathError(roots.source("link"), "path_outside_roots");
    assert.match(err.message, /"link" leads through a symlink/);
  }));

Deno.test("a file under a symlinked directory that points outside is refused as a source", () =>
  withSandbox(async ({ root, outside, roots }) => {
    await Deno.writeTextFile(join(outside, "secret"), "top secret");
    await Deno.symlink(outside, join(root, "linkdir"));
    await pathError(roots.source("linkdir/secret"), "path_outside_roots");
  }));

Deno.test("a symlink inside a root that points inside is followed", () =>
  withSandbox(async ({ root, root2, roots }) => {
    await Deno.writeTextFile(join(root2, "real"), "1234");
    await Deno.symlink(join(root2, "real"), join(root, "alias"));
    assert.deepEqual(await roots.source("alias"), { path: join(root2, "real"), sizeBytes: 4 });
  }));

Deno.test("a root given through a symlink still works", () =>
  withSandbox(async ({ root, outside }) => {
    const viaLink = join(outside, "root-link");
    await Deno.symlink(root, viaLink);
    await Deno.writeTextFile(join(root, "a"), "abc");
    const roots = new Roots([viaLink]);
    assert.equal((await roots.source("a")).sizeBytes, 3);
    assert.equal(await roots.destination("new", "x", false), join(root, "new"));
  }));

Deno.test("a destination that is a symlink pointing outside is refused, and the target untouched", () =>
  withSandbox(async ({ root, outside, roots }) => {
    await Deno.writeTextFile(join(outside, "victim"), "original");
    await Deno.symlink(join(outside, "victim"), join(root, "link"));
    await Deno.symlink(join(outside, "not-yet"), join(root, "dangling"));
    for (const overwrite of [false, true]) {
      const err = await roots.destination("link", "f", overwrite).then(() => undefined, (e) => e);
      assert.ok(err instanceof PathError, `overwrite ${overwrite}: ${err}`);
      const dangling = await roots.destination("dangling", "f", overwrite).then(() => undefined, (e) => e);
      assert.ok(dangling instanceof PathError, `dangling, overwrite ${overwrite}: ${dangling}`);
    }
    assert.equal(await Deno.readTextFile(join(outside, "victim")), "original");
    assert.equal(await exists(join(outside, "not-yet")), false);
  }));

Deno.test("a symlinked directory pointing outside cannot be a destination's parent; nothing is created", () =>
  withSandbox(async ({ root, outside, roots }) => {
    await Deno.symlink(outside, join(root, "linkdir"));
    await pathError(roots.destination("linkdir/new.bin", "f", false), "path_outside_roots");
    await pathError(roots.destination("linkdir/deep/er/new.bin", "f", false), "path_outside_roots");
    await pathError(roots.destination("linkdir", "disk.img", false), "path_outside_roots");
    assert.deepEqual([...Deno.readDirSync(outside)], [], "nothing may be created outside the roots");
  }));

Deno.test("a missing source is not_found and names the path", () =>
  withSandbox(async ({ root, roots }) => {
    const err = await pathError(roots.source("nope.bin"), "not_found");
    assert.ok(err.message.includes('"nope.bin"'), err.message);
    assert.ok(err.message.includes(join(root, "nope.bin")), err.message);
    await pathError(roots.source("no/such/dir/file"), "not_found");
  }));

Deno.test("a directory is not a source file", () =>
  withSandbox(async ({ root, roots }) => {
    await Deno.mkdir(join(root, "d"));
    const err = await pathError(roots.source("d"), "not_a_file");
    assert.match(err.message, /"d"/);
    await pathError(roots.source("."), "not_a_file");
  }));

Deno.test("an existing destination is refused without overwrite and returned with it", () =>
  withSandbox(async ({ root, roots }) => {
    await Deno.writeTextFile(join(root, "out.bin"), "old");
    const err = await pathError(roots.destination("out.bin", "src.bin", false), "exists");
    assert.match(err.message, /overwrite: true/);
    assert.equal(await roots.destination("out.bin", "src.bin", true), join(root, "out.bin"));
    assert.equal(await Deno.readTextFile(join(root, "out.bin")), "old", "resolving does not write");
  }));

Deno.test("a destination naming an existing directory receives the source's base name", () =>
  withSandbox(async ({ root, root2, roots }) => {
    await Deno.mkdir(join(root, "incoming"));
    assert.equal(
      await roots.destination("incoming", "/var/lib/images/disk.img", false),
      join(root, "incoming", "disk.img"),
    );
    assert.equal(await roots.destination(root2, "disk.img", false), join(root2, "disk.img"));
    // ... and the same rules apply to that name.
    await Deno.writeTextFile(join(root, "incoming", "disk.img"), "x");
    await pathError(roots.destination("incoming", "disk.img", false), "exists");
  }));

Deno.test("an empty destination means the source's base name in the first root", () =>
  withSandbox(async ({ root, roots }) => {
    assert.equal(await roots.destination("", "/somewhere/else/vm.qcow2", false), join(root, "vm.qcow2"));
  }));

Deno.test("a source name cannot steer the destination out of the root", () =>
  withSandbox(async ({ root, outside, roots }) => {
    // The peer supplies sourceName; only its base name may be used.
    await Deno.mkdir(join(root, "in"));
    assert.equal(await roots.destination("in", "../../outside/evil", false), join(root, "in", "evil"));
    assert.equal(await roots.destination("", "../outside/evil", false), join(root, "evil"));
    assert.deepEqual([...Deno.readDirSync(outside)], []);
  }));

Deno.test("missing parent directories of a destination are created", () =>
  withSandbox(async ({ root, roots }) => {
    assert.equal(
      await roots.destination("a/b/c/file.bin", "x", false),
      join(root, "a", "b", "c", "file.bin"),
    );
    assert.ok((await Deno.stat(join(root, "a", "b", "c"))).isDirectory);
    assert.equal(
      await exists(join(root, "a", "b", "c", "file.bin")),
      false,
      "the file itself is not created",
    );
  }));

Deno.test("a source path through a regular file is not_found, not an OS error", () =>
  withSandbox(async ({ root, roots }) => {
    await Deno.writeTextFile(join(root, "a.txt"), "x");
    // realpath fails with ENOTDIR here; callers map only PathError to an API answer.
    await pathError(roots.source("a.txt/x"), "not_found");
  }));

Deno.test("a source name too long for the file system is not_found, not an OS error", () =>
  withSandbox(async ({ roots }) => {
    // realpath fails with ENAMETOOLONG; the API would answer 500 internal.
    await pathError(roots.source("x".repeat(5000)), "not_found");
  }));

Deno.test("a destination whose parent is a regular file is a PathError, not an OS error", () =>
  withSandbox(async ({ root, roots }) => {
    await Deno.writeTextFile(join(root, "a.txt"), "x");
    // mkdir fails with EEXIST here; the receiver only sends PathError codes back to the sender.
    const err = await roots.destination("a.txt/x", "f", false).then(() => undefined, (e) => e);
    assert.ok(err instanceof PathError, `expected a PathError, got ${err}`);
    assert.equal(await Deno.readTextFile(join(root, "a.txt")), "x");
  }));

Deno.test("ensure creates missing roots", async () => {
  const base = await Deno.makeTempDir({ prefix: "dwcp-roots-" });
  try {
    const roots = new Roots([join(base, "x", "y"), join(base, "z")]);
    await roots.ensure();
    assert.ok((await Deno.stat(join(base, "x", "y"))).isDirectory);
    assert.ok((await Deno.stat(join(base, "z"))).isDirectory);
  } finally {
    await Deno.remove(base, { recursive: true });
  }
});

Deno.test("at least one root is required", () => {
  assert.throws(() => new Roots([]), RangeError);
});
