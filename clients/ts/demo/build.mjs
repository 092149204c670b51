// Builds the chat demo, a web root for `zserver serve --listen-ws ADDR --web DIR`:
//   node build.mjs                  # dist/: index.html, style.css and one bundled demo.js
//                                   # (the client library and its dependencies inside)
//   node build.mjs --importmap [OUT] # OUT (default web/): index.html with an import map,
//                                   # style.css, demo.js (the page's own code only) and
//                                   # vendor/ (the library's and its dependencies' ES
//                                   # modules, copied by zserver-client-vendor; no node_modules)
// The import-map build needs the library built (`npm run build` in clients/ts).
import { spawnSync } from "node:child_process";
import { copyFile, mkdir, rm } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));

/**
 * Builds the page into `out`. `external`: leave `@zserver/client` to the page's import map
 * (demo.js holds the page's code alone) instead of bundling the library in.
 */
export async function buildPage(out, { external = false } = {}) {
  await rm(out, { recursive: true, force: true });
  await mkdir(out, { recursive: true });
  await build({
    entryPoints: [join(here, "src", "demo.ts")],
    outfile: join(out, "demo.js"),
    bundle: true,
    external: external ? ["@zserver/client"] : [],
    format: "esm",
    platform: "browser",
    target: "es2022",
    sourcemap: true,
    minify: !external,
    logLevel: "warning",
  });
  for (const file of ["index.html", "style.css"]) {
    await copyFile(join(here, "src", file), join(out, file));
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const at = process.argv.indexOf("--importmap");
  if (at < 0) {
    const out = join(here, "dist");
    await buildPage(out);
    console.log(`demo built in ${out} (bundled)`);
  } else {
    const out = resolve(process.argv[at + 1] ?? join(here, "web"));
    await buildPage(out, { external: true });
    const vendor = join(here, "..", "bin", "zserver-client-vendor.mjs");
    const ran = spawnSync(process.execPath, [vendor, join(out, "vendor"), "--html", join(out, "index.html")], {
      stdio: ["ignore", "ignore", "inherit"],
    });
    if (ran.status !== 0) process.exit(ran.status ?? 1);
    console.log(`demo built in ${out} (import map, modules in ${join(out, "vendor")})`);
  }
}
