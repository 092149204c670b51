// Builds the chat demo into dist/ (index.html, style.css and one bundled demo.js), the
// directory `zserver serve --listen-ws ADDR --web DIR` serves.
import { copyFile, mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "dist");
await mkdir(out, { recursive: true });
await build({
  entryPoints: [join(here, "src", "demo.ts")],
  outfile: join(out, "demo.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  sourcemap: true,
  minify: true,
  logLevel: "warning",
});
for (const file of ["index.html", "style.css"]) {
  await copyFile(join(here, "src", file), join(out, file));
}
console.log(`demo built in ${out}`);
