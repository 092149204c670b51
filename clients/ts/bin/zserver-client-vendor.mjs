#!/usr/bin/env node
// zserver-client-vendor OUT_DIR [--url /vendor/] [--html PAGE.html]
//
// For a page that loads @zserver/client without a bundler: copies into OUT_DIR only the ES
// modules a browser loads (this package's dist/*.js from its browser entry on, and the
// files of its dependencies those import, followed import by import), keeping each
// package's layout (OUT_DIR/@noble/hashes/sha2.js, ...), and writes the import map that
// maps every bare name they use to its copy: OUT_DIR/importmap.json, also printed. With
// --html, the map is put into that page as <script type="importmap"> (replacing one that is
// there, else before its first <script type="module">). --url is where OUT_DIR is served
// (default: "/" + its folder name + "/"). Nothing else of node_modules is copied: the web
// root holds the page, its own script and OUT_DIR.
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const USAGE = "usage: zserver-client-vendor OUT_DIR [--url /vendor/] [--html PAGE.html]";
/** Conditions of a package's "exports", in the order a browser build honours them. */
const CONDITIONS = ["browser", "import", "module", "default"];

function fail(message) {
  console.error(`zserver-client-vendor: ${message}`);
  process.exit(1);
}

function parseArgs(argv) {
  const opts = { out: undefined, url: undefined, html: undefined };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--url" || arg === "--html") {
      const value = argv[++i];
      if (!value) fail(`${arg} needs a value\n${USAGE}`);
      opts[arg.slice(2)] = value;
    } else if (arg === "-h" || arg === "--help") {
      console.log(USAGE);
      process.exit(0);
    } else if (!arg.startsWith("-") && !opts.out) {
      opts.out = arg;
    } else {
      fail(`unexpected argument ${arg}\n${USAGE}`);
    }
  }
  if (!opts.out) fail(USAGE);
  opts.url ??= `/${basename(resolve(opts.out))}/`;
  if (!opts.url.endsWith("/")) opts.url += "/";
  return opts;
}

/** The folder and package.json of the package `name` as Node finds it from `fromDir`. */
function findPackage(name, fromDir) {
  for (let dir = fromDir; ; dir = dirname(dir)) {
    const candidate = join(dir, "node_modules", name, "package.json");
    if (existsSync(candidate)) return { dir: dirname(candidate), json: JSON.parse(readFileSync(candidate, "utf8")) };
    if (dirname(dir) === dir) return undefined;
  }
}

/** A target of "exports" under the browser's conditions. */
function pickTarget(target) {
  if (typeof target === "string" || target === null) return target;
  if (Array.isArray(target)) {
    for (const t of target) {
      const picked = pickTarget(t);
      if (picked) return picked;
    }
    return undefined;
  }
  for (const condition of CONDITIONS) {
    if (condition in target) {
      const picked = pickTarget(target[condition]);
      if (picked) return picked;
    }
  }
  return undefined;
}

/** The file (relative to the package) that `subpath` ("." or "./x.js") of a package means. */
function resolveSubpath(json, subpath) {
  let exports = json.exports;
  if (exports !== undefined) {
    if (typeof exports === "string" || Array.isArray(exports) || !Object.keys(exports).some((k) => k.startsWith("."))) {
      exports = { ".": exports };
    }
    if (subpath in exports) return pickTarget(exports[subpath]);
    for (const [key, target] of Object.entries(exports)) {
      const star = key.indexOf("*");
      if (star < 0) continue;
      const [head, tail] = [key.slice(0, star), key.slice(star + 1)];
      if (subpath.startsWith(head) && subpath.endsWith(tail) && subpath.length >= key.length - 1) {
        const picked = pickTarget(target);
        return picked && picked.replaceAll("*", subpath.slice(head.length, subpath.length - tail.length));
      }
    }
    return undefined;
  }
  if (subpath !== ".") return subpath;
  const browser = typeof json.browser === "string" ? json.browser : undefined;
  return json.module ?? browser ?? json.main ?? "./index.js";
}

/** Module specifiers in a file: static imports and re-exports, and literal dynamic imports. */
function specifiers(source) {
  const found = new Set();
  // Statements start a line (as compilers and bundlers write them); a comment's lines
  // start with "*" or "//" and are passed over.
  const statement = /^[ \t]*(?:import|export)\b(?:[^;'"`]|'[^']*'|"[^"]*")*?\bfrom[ \t]*(["'])([^"'\n]+)\1/gm;
  const bare = /^[ \t]*import[ \t]*(["'])([^"'\n]+)\1/gm;
  const dynamic = /\bimport\(\s*(["'])([^"'\n]+)\1\s*\)/g;
  for (const re of [statement, bare, dynamic]) {
    for (const m of source.matchAll(re)) found.add(m[2]);
  }
  return found;
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const here = dirname(fileURLToPath(import.meta.url));
  const self = JSON.parse(readFileSync(join(here, "..", "package.json"), "utf8"));
  const selfDir = resolve(here, "..");
  const out = resolve(opts.out);

  /** Files to copy: absolute source -> path under OUT_DIR. */
  const files = new Map();
  /** The import map: bare specifier -> URL. */
  const imports = {};
  const queue = [];

  /** Where a file of the package at `pkgDir` named `name` goes under OUT_DIR. */
  const place = (name, pkgDir, file) => join(name, relative(pkgDir, file)).split(sep).join("/");
  const add = (file, target) => {
    if (files.has(file)) return;
    if (!existsSync(file)) fail(`${file} is missing (was the package built?)`);
    files.set(file, target);
    queue.push(file);
  };
  /** Which package a copied file belongs to (its folder and name), for its relative imports. */
  const owner = new Map();

  const entryFile = resolveSubpath(self, ".");
  const entry = resolve(selfDir, entryFile);
  owner.set(entry, { dir: selfDir, name: self.name });
  add(entry, place(self.name, selfDir, entry));
  imports[self.name] = opts.url + place(self.name, selfDir, entry);

  while (queue.length > 0) {
    const file = queue.shift();
    const pkg = owner.get(file);
    for (const spec of specifiers(readFileSync(file, "utf8"))) {
      let target;
      let targetPkg = pkg;
      if (spec.startsWith("./") || spec.startsWith("../")) {
        target = resolve(dirname(file), spec);
      } else if (spec.startsWith("node:") || spec.startsWith("/") || /^[a-z]+:/i.test(spec)) {
        fail(`${relative(process.cwd(), file)} imports ${spec}, which a browser cannot load`);
      } else {
        const parts = spec.split("/");
        const name = spec.startsWith("@") ? parts.slice(0, 2).join("/") : parts[0];
        const subpath = spec === name ? "." : `./${spec.slice(name.length + 1)}`;
        const found = name === self.name ? { dir: selfDir, json: self } : findPackage(name, dirname(file));
        if (!found) fail(`${relative(process.cwd(), file)} imports ${spec}: package ${name} is not installed`);
        const sub = resolveSubpath(found.json, subpath);
        if (!sub) fail(`${name} does not export ${subpath} (imported as ${spec})`);
        target = resolve(found.dir, sub);
        targetPkg = { dir: found.dir, name };
        const url = opts.url + place(name, found.dir, target);
        if (imports[spec] && imports[spec] !== url) {
          fail(`${spec} is installed twice (${imports[spec]} and ${url}): deduplicate with npm dedupe`);
        }
        imports[spec] = url;
      }
      if (!owner.has(target)) owner.set(target, targetPkg);
      add(target, place(targetPkg.name, targetPkg.dir, target));
    }
  }

  rmSync(out, { recursive: true, force: true });
  for (const [from, to] of files) {
    const dest = join(out, to);
    mkdirSync(dirname(dest), { recursive: true });
    copyFileSync(from, dest);
  }
  const sorted = Object.fromEntries(Object.entries(imports).sort(([a], [b]) => a.localeCompare(b)));
  const map = JSON.stringify({ imports: sorted }, null, 2);
  writeFileSync(join(out, "importmap.json"), `${map}\n`);

  if (opts.html) {
    const html = readFileSync(opts.html, "utf8");
    const tag = `<script type="importmap">\n${map}\n</script>`;
    const existing = /<script type="importmap">[\s\S]*?<\/script>/;
    let updated;
    if (existing.test(html)) updated = html.replace(existing, () => tag);
    else if (/<script type="module"/.test(html)) updated = html.replace(/<script type="module"/, () => `${tag}\n<script type="module"`);
    else fail(`${opts.html} has no <script type="module"> to put the import map before`);
    writeFileSync(opts.html, updated);
  }
  console.error(`zserver-client-vendor: ${files.size} files in ${out}, served at ${opts.url}`);
  console.log(map);
}

main();
