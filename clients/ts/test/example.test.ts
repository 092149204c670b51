// The README's example (examples/chat.mjs, included in the README verbatim) runs against a
// real login server and prints what it promises.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { startLoginServer } from "./servers.js";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");

test("the README's chat example runs as shown", { timeout: 60_000 }, async () => {
  const example = readFileSync(join(pkg, "examples", "chat.mjs"), "utf8");
  const readme = readFileSync(join(pkg, "README.md"), "utf8");
  assert.ok(readme.includes(example.trim()), "README.md shows examples/chat.mjs verbatim");
  const server = await startLoginServer();
  try {
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [join("examples", "chat.mjs"), `${server.addr.host}:${server.addr.port}`, server.fingerprint],
      { cwd: pkg, timeout: 30_000 },
    );
    assert.match(stdout, /^ann -> bob: hello from TypeScript \(delivered to bob\)$/m);
    assert.match(stdout, /^online: ann, bob$/m);
  } finally {
    await server.stop();
  }
});
