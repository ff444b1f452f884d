/** The dedupe settings of src/agent/config.ts and the agent's lazily opened chunk store. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ConfigError, dedupeStoreDir, loadConfig } from "../../src/agent/config.ts";
import { LazyChunkStore } from "../../src/dedupe/agent_store.ts";

const SECRET = "0123456789abcdef-shared";

async function withDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "dwcp-dedupe-config-" });
  try {
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function loadWith(dir: string, file: unknown) {
  const path = join(dir, "dwcp.json");
  await Deno.writeTextFile(path, JSON.stringify(file));
  return loadConfig({ stateDir: dir, config: path }, { DWCP_SECRET: SECRET });
}

Deno.test("dedupe.storeBytes: 2 GiB by default, 0 for none, and a clear error for a store too small", () =>
  withDir(async (dir) => {
    assert.equal((await loadWith(dir, {})).dedupe.storeBytes, 2 * 1024 ** 3);
    assert.equal((await loadWith(dir, { dedupe: { storeBytes: 0 } })).dedupe.storeBytes, 0);
    const c = await loadWith(dir, { dedupe: { storeBytes: 8 * 1024 ** 3 } });
    assert.equal(dedupeStoreDir(c), join(dir, "dedupe-store"));
    for (const bad of [4096, -1, 1.5, "2G"]) {
      const err = await loadWith(dir, { dedupe: { storeBytes: bad } }).then(() => undefined, (e) => e);
      assert.ok(err instanceof ConfigError, `storeBytes ${bad}: ${err}`);
      assert.match(err.message, /dedupe\.storeBytes/);
    }
    const small = await loadWith(dir, { dedupe: { storeBytes: 4096 } }).catch((e) => e);
    assert.match(small.message, /give 0 .* or at least 67108864 bytes/);
  }));

Deno.test("the agent's chunk store opens on first use, once, and a failed open is tried again", () =>
  withDir(async (dir) => {
    const notADir = join(dir, "file");
    await Deno.writeTextFile(notADir, "x");
    const broken = new LazyChunkStore({ dir: join(notADir, "store"), budgetBytes: 1 << 20 });
    await assert.rejects(() => broken.get());
    await assert.rejects(() => broken.get()); // tried again, not a remembered failure
    await broken.close();

    const lazy = new LazyChunkStore({ dir: join(dir, "store"), budgetBytes: 1 << 20 });
    await assert.rejects(() => Deno.stat(join(dir, "store")), Deno.errors.NotFound);
    const [a, b] = await Promise.all([lazy.get(), lazy.get()]);
    assert.equal(a, b);
    await lazy.close();
    await assert.rejects(() => lazy.get(), /stopping/);
  }));
