#!/usr/bin/env node
/**
 * Makes `npm pack` of a published workspace package (instrumentation, collector-processor) yield a tarball
 * that installs from the public registry alone: the unpublished workspace packages it uses (contracts,
 * billing-api, …) are vendored into it.
 *
 *   "prepack":  "node ../scripts/vendor-workspaces.mjs prepack"
 *   "postpack": "node ../scripts/vendor-workspaces.mjs postpack"
 *
 * prepack builds the package (`tsc -b`), copies each workspace package it needs — its devDependencies
 * named in the root's workspaces, and theirs, transitively — to `vendor/<name>/` (package.json and its
 * `files`, without source maps), and points every import of one of them at the vendored copy, by relative
 * path, in the package's own build output (in place; the originals are kept in `.pack-state/`) and in the
 * copies. postpack puts the originals back and removes `vendor/` and `.pack-state/` (and `restore-all`, the
 * root's prebuild, does so for every workspace package an interrupted pack left rewritten).
 *
 * Why vendoring rather than publishing contracts and billing-api: they are internal (one version, built
 * together, no compatibility promise between them); a user installs one package and gets one consistent
 * set. Their third-party dependencies are not vendored: the package declares them itself, and prepack fails
 * when one is missing or its range differs, so the packed package.json stays the truth.
 */
import { spawnSync } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, posix, relative, resolve, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const VENDOR_DIR = 'vendor';
const STATE_DIR = '.pack-state';

/** A string import of a module: static and dynamic import, export … from, side-effect import, require. */
const SPECIFIER = /(\bfrom\s*|\bimport\s*\(\s*|\bimport\s+|\brequire\s*\(\s*)(['"])([^'"\s]+)\2/g;

/** The package name of a bare specifier (`@scope/name/sub` → `@scope/name`), or undefined when relative. */
export function packageOf(specifier) {
  if (specifier.startsWith('.') || specifier.startsWith('/') || specifier.startsWith('node:'))
    return undefined;
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

/**
 * Rewrites the import specifiers of one JS or declaration file. `map(specifier)` returns the new specifier,
 * or undefined to keep it. Returns the new text and the number of specifiers changed. Pure.
 */
export function rewriteSpecifiers(text, map) {
  let changed = 0;
  const out = text.replace(SPECIFIER, (whole, lead, quote, spec) => {
    const next = map(spec);
    if (next === undefined || next === spec) return whole;
    changed++;
    return `${lead}${quote}${next}${quote}`;
  });
  return { text: out, changed };
}

/** The file a subpath of a package resolves to through its `exports` (or `main`), for code or types. */
export function exportTarget(pkg, subpath, kind) {
  const key = subpath === '' ? '.' : `.${subpath}`;
  let entry =
    pkg.exports === undefined
      ? undefined
      : typeof pkg.exports === 'string'
        ? { '.': pkg.exports }
        : pkg.exports;
  if (entry === undefined) {
    if (key !== '.') throw new Error(`${pkg.name} has no exports map: cannot resolve ${pkg.name}${subpath}`);
    return kind === 'types' ? (pkg.types ?? pkg.main) : pkg.main;
  }
  entry = entry[key];
  if (entry === undefined) throw new Error(`${pkg.name} does not export ${key}`);
  if (typeof entry === 'string') return entry;
  const conditions = kind === 'types' ? ['types', 'import', 'default'] : ['import', 'node', 'default'];
  for (const c of conditions) if (typeof entry[c] === 'string') return entry[c];
  throw new Error(`${pkg.name} export ${key} has no ${kind} target`);
}

/** A relative specifier from `fromFile` to `toFile` (POSIX separators, always starting with `.`). */
export function relativeSpecifier(fromFile, toFile) {
  const rel = relative(dirname(fromFile), toFile).split(sep).join(posix.sep);
  return rel.startsWith('.') ? rel : `./${rel}`;
}

const readJson = (file) => JSON.parse(readFileSync(file, 'utf8'));

class PackError extends Error {}

function fail(message) {
  throw new PackError(message);
}

/** The workspace packages of the repository root `root`: name → { dir, pkg }. */
export function workspaces(root) {
  const rootPkg = readJson(join(root, 'package.json'));
  const out = new Map();
  for (const ws of rootPkg.workspaces ?? []) {
    const dir = join(root, ws);
    const pkg = readJson(join(dir, 'package.json'));
    out.set(pkg.name, { dir, pkg });
  }
  return out;
}

/** The workspace packages `host` needs at run time, transitively: its internal devDependencies and theirs. */
export function vendoredSet(host, all) {
  for (const name of Object.keys(host.dependencies ?? {})) {
    if (all.has(name)) {
      throw new Error(
        `${host.name} lists the unpublished workspace package ${name} in "dependencies": move it to ` +
          '"devDependencies" (it is vendored at pack time) and declare its third-party dependencies instead',
      );
    }
  }
  const seen = new Set();
  const visit = (names) => {
    for (const name of names) {
      if (!all.has(name) || seen.has(name) || name === host.name) continue;
      seen.add(name);
      visit(Object.keys(all.get(name).pkg.dependencies ?? {}));
    }
  };
  visit(Object.keys(host.devDependencies ?? {}));
  return [...seen].sort();
}

/**
 * Third-party dependencies of the vendored packages that the host does not declare alike (a missing
 * package or a different range), and required peers it neither depends on nor declares as peers.
 */
export function undeclared(host, vendored) {
  const problems = [];
  const internal = new Set(vendored.map((p) => p.name));
  for (const p of vendored) {
    for (const [dep, range] of Object.entries(p.dependencies ?? {})) {
      if (internal.has(dep)) continue;
      const have = host.dependencies?.[dep];
      if (have !== range) {
        problems.push(
          `${dep}@"${range}" (needed by vendored ${p.name}) ${have ? `is "${have}" in` : 'missing from'} ${host.name} dependencies`,
        );
      }
    }
    for (const dep of Object.keys(p.peerDependencies ?? {})) {
      if (p.peerDependenciesMeta?.[dep]?.optional) continue;
      if (!host.dependencies?.[dep] && !host.peerDependencies?.[dep]) {
        problems.push(`peer ${dep} of vendored ${p.name} is neither a dependency nor a peer of ${host.name}`);
      }
    }
  }
  return problems;
}

/** Files under `dir`, recursively (relative paths). */
function walk(dir, base = dir, out = []) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = join(dir, entry.name);
    if (entry.isDirectory()) walk(full, base, out);
    else out.push(relative(base, full));
  }
  return out;
}

const isCode = (file) => /\.(c|m)?js$/.test(file) || /\.d\.(c|m)?ts$/.test(file);
const isMap = (file) => file.endsWith('.map');

function writeAtomically(file, text, mode) {
  const tmp = `${file}.vendor-tmp`;
  writeFileSync(tmp, text, { mode });
  renameSync(tmp, file);
}

function build(root, hostDir) {
  let tsc;
  try {
    tsc = createRequire(join(root, 'package.json')).resolve('typescript/bin/tsc');
  } catch {
    fail(`TypeScript is not installed in ${root}: run npm ci there first`);
  }
  const r = spawnSync(process.execPath, [tsc, '-b', hostDir], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) fail(`tsc -b ${relative(root, hostDir)} failed`);
}

/** Puts back the build output files changed by an earlier prepack, and removes vendor/ and the state. */
function restore(hostDir) {
  const state = join(hostDir, STATE_DIR);
  if (existsSync(state)) {
    for (const file of walk(state)) {
      const target = join(hostDir, file);
      mkdirSync(dirname(target), { recursive: true });
      renameSync(join(state, file), target);
    }
  }
  rmSync(join(hostDir, VENDOR_DIR), { recursive: true, force: true });
  rmSync(state, { recursive: true, force: true });
}

function prepack(hostDir) {
  const root = resolve(hostDir, '..');
  const all = workspaces(root);
  const host = readJson(join(hostDir, 'package.json'));
  if (!all.has(host.name)) fail(`${hostDir} is not a workspace of ${root}`);
  restore(hostDir);
  if (process.env.TOLLGATE_PACK_SKIP_BUILD !== '1') build(root, hostDir);

  let names;
  try {
    names = vendoredSet(host, all);
  } catch (err) {
    fail(err.message);
  }
  if (names.length && !(host.files ?? []).includes(VENDOR_DIR)) {
    fail(`${host.name} vendors ${names.join(', ')}: add "${VENDOR_DIR}" to its "files"`);
  }
  const vendored = names.map((n) => all.get(n).pkg);
  const problems = undeclared(host, vendored);
  if (problems.length)
    fail(
      `the packed package.json would not install what the vendored code needs:\n  ${problems.join('\n  ')}`,
    );

  // 1. the copies: package.json (internal dependencies dropped: they are siblings in vendor/) and `files`
  const vendorRoot = join(hostDir, VENDOR_DIR);
  const copyDir = (name) => join(vendorRoot, ...name.split('/'));
  for (const name of names) {
    const { dir, pkg } = all.get(name);
    const dest = copyDir(name);
    mkdirSync(dest, { recursive: true });
    const deps = Object.fromEntries(Object.entries(pkg.dependencies ?? {}).filter(([d]) => !all.has(d)));
    const { devDependencies: _dev, scripts: _scripts, ...rest } = pkg;
    writeFileSync(
      join(dest, 'package.json'),
      `${JSON.stringify({ ...rest, dependencies: deps }, null, 2)}\n`,
    );
    // its own vendor/ exists only while it is packed itself: its internal dependencies are our siblings
    for (const entry of (pkg.files ?? []).filter((f) => !f.startsWith('!') && f !== VENDOR_DIR)) {
      const src = join(dir, entry);
      if (!existsSync(src)) fail(`${name}: "${entry}" of its files does not exist (not built?)`);
      cpSync(src, join(dest, entry), { recursive: true, filter: (f) => !isMap(f) });
    }
  }

  // 2. every import of a vendored package, in the copies and in the host's own output, to the copy
  const mapFor = (file) => (spec) => {
    const name = packageOf(spec);
    if (name === undefined || !all.has(name) || name === host.name) return undefined;
    if (!names.includes(name))
      fail(`${file} imports ${spec}, a workspace package ${host.name} does not vendor`);
    const kind = /\.d\.(c|m)?ts$/.test(file) ? 'types' : 'code';
    // a declaration file names the module as code does (`x.js`); TypeScript finds `x.d.ts` beside it
    const target = exportTarget(all.get(name).pkg, spec.slice(name.length), kind).replace(
      /\.d\.(c|m)?ts$/,
      '.$1js',
    );
    return relativeSpecifier(file, join(copyDir(name), target));
  };
  for (const name of names) {
    for (const rel of walk(copyDir(name)).filter(isCode)) {
      const file = join(copyDir(name), rel);
      const { text, changed } = rewriteSpecifiers(readFileSync(file, 'utf8'), mapFor(file));
      if (changed) writeFileSync(file, text);
    }
  }
  const state = join(hostDir, STATE_DIR);
  let rewritten = 0;
  for (const entry of (host.files ?? []).filter((f) => !f.startsWith('!'))) {
    const top = join(hostDir, entry);
    if (entry === VENDOR_DIR || !existsSync(top)) continue;
    const files = statSync(top).isDirectory() ? walk(top).map((rel) => join(top, rel)) : [top];
    for (const file of files.filter(isCode)) {
      const original = readFileSync(file, 'utf8');
      const { text, changed } = rewriteSpecifiers(original, mapFor(file));
      if (!changed) continue;
      const { mode } = statSync(file);
      const keep = join(state, relative(hostDir, file));
      mkdirSync(dirname(keep), { recursive: true });
      writeFileSync(keep, original, { mode });
      writeAtomically(file, text, mode);
      rewritten++;
    }
  }
  process.stderr.write(
    `vendor-workspaces: ${host.name} vendors ${names.join(', ') || 'nothing'} (${rewritten} files of its own rewritten)\n`,
  );
}

const isMain = process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href;
if (isMain) {
  const [cmd, dir = process.cwd()] = process.argv.slice(2);
  const hostDir = resolve(dir);
  try {
    if (cmd === 'prepack') {
      try {
        prepack(hostDir);
      } catch (err) {
        restore(hostDir); // never leave the build output pointing at a half-made vendor/
        throw err;
      }
    } else if (cmd === 'postpack' || cmd === 'restore') restore(hostDir);
    else if (cmd === 'restore-all') {
      // `npm run build` runs this first: an `npm pack` that failed after prepack (so postpack never ran)
      // must not leave a package's build output pointing at a copy of its dependencies
      for (const { dir: wsDir } of workspaces(hostDir).values()) {
        if (existsSync(join(wsDir, STATE_DIR)) || existsSync(join(wsDir, VENDOR_DIR))) restore(wsDir);
      }
    } else
      fail(
        `usage: ${fileURLToPath(import.meta.url)} prepack|postpack|restore [package dir] | restore-all [root]`,
      );
  } catch (err) {
    if (!(err instanceof PackError)) throw err;
    process.stderr.write(`vendor-workspaces: ${err.message}\n`);
    process.exit(1);
  }
}
