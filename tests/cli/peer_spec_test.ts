import assert from "node:assert/strict";
import { UsageError } from "../../src/cli/common.ts";
import { parsePeerSpec } from "../../src/cli/peer_spec.ts";

Deno.test("parsePeerSpec: a peer name, with and without a path", () => {
  assert.deepEqual(parsePeerSpec("b"), { peer: "b" });
  assert.deepEqual(parsePeerSpec("b:/x/y"), { peer: "b", path: "/x/y" });
  assert.deepEqual(parsePeerSpec("b:dir/f"), { peer: "b", path: "dir/f" });
  assert.deepEqual(parsePeerSpec("b:"), { peer: "b" });
  assert.deepEqual(parsePeerSpec("b:a:b"), { peer: "b", path: "a:b" });
});

Deno.test("parsePeerSpec: HOST:PORT is one peer, and the path follows the next colon", () => {
  assert.deepEqual(parsePeerSpec("127.0.0.1:7701"), { peer: "127.0.0.1:7701" });
  assert.deepEqual(parsePeerSpec("127.0.0.1:7701:dir/f"), { peer: "127.0.0.1:7701", path: "dir/f" });
  assert.deepEqual(parsePeerSpec("host-b:7701:/abs/f"), { peer: "host-b:7701", path: "/abs/f" });
  assert.deepEqual(parsePeerSpec("127.0.0.1:7701:"), { peer: "127.0.0.1:7701" });
});

Deno.test("parsePeerSpec: digits not followed by the end or a colon are a path", () => {
  assert.deepEqual(parsePeerSpec("b:7701x"), { peer: "b", path: "7701x" });
  assert.deepEqual(parsePeerSpec("b:12/f"), { peer: "b", path: "12/f" });
});

Deno.test("parsePeerSpec: no peer is a usage error", () => {
  assert.throws(() => parsePeerSpec(""), UsageError);
  assert.throws(() => parsePeerSpec(":/x"), /names no peer/);
});
