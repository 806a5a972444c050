import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import {
  exportTarget,
  type PackageJson,
  packageOf,
  relativeSpecifier,
  rewriteSpecifiers,
  undeclared,
  vendoredSet,
  workspaces,
} from '../vendor-workspaces.mjs';

/** The pure parts of the pack-time vendoring (scripts/vendor-workspaces.mjs); pack-install.test.ts runs it. */

const toVendor = (spec: string) =>
  packageOf(spec) === '@tollgate/contracts'
    ? `./vendor${spec.slice('@tollgate/contracts'.length)}`
    : undefined;

describe('rewriteSpecifiers', () => {
  const rewritten: Array<[string, string]> = [
    ["import { a } from '@tollgate/contracts';", "import { a } from './vendor';"],
    ['import{a}from"@tollgate/contracts"', 'import{a}from"./vendor"'],
    ["export * from '@tollgate/contracts';", "export * from './vendor';"],
    ["export { a, b } from '@tollgate/contracts/sub';", "export { a, b } from './vendor/sub';"],
    ["import type { A } from '@tollgate/contracts';", "import type { A } from './vendor';"],
    ["import '@tollgate/contracts';", "import './vendor';"],
    ["const m = await import('@tollgate/contracts');", "const m = await import('./vendor');"],
    ["const m = require( '@tollgate/contracts' );", "const m = require( './vendor' );"],
    // a declaration file's inline type import
    ["let x: import('@tollgate/contracts').Directive;", "let x: import('./vendor').Directive;"],
  ];
  for (const [input, output] of rewritten) {
    it(`rewrites ${input}`, () => {
      expect(rewriteSpecifiers(input, toVendor)).toEqual({ text: output, changed: 1 });
    });
  }

  const kept = [
    "const S = Symbol.for('@tollgate/contracts:original');", // a string, not a module
    '// node --import @tollgate/contracts/register app.mjs', // prose
    "import { z } from 'zod';", // not ours
    "import { x } from './contracts.js';", // relative
    "const name = '@tollgate/contracts';",
  ];
  for (const input of kept) {
    it(`keeps ${input}`, () => {
      expect(rewriteSpecifiers(input, toVendor)).toEqual({ text: input, changed: 0 });
    });
  }

  it('counts every specifier of a file', () => {
    const text = "import { a } from '@tollgate/contracts';\nexport * from '@tollgate/contracts/x';\n";
    expect(rewriteSpecifiers(text, toVendor).changed).toBe(2);
  });
});

describe('packageOf', () => {
  it.each([
    ['@tollgate/instrumentation/demo', '@tollgate/instrumentation'],
    ['@tollgate/contracts', '@tollgate/contracts'],
    ['zod/v4', 'zod'],
    ['./x.js', undefined],
    ['node:fs', undefined],
  ])('%s → %s', (spec, name) => {
    expect(packageOf(spec)).toBe(name);
  });
});

describe('exportTarget', () => {
  const pkg: PackageJson = {
    name: '@tollgate/instrumentation',
    main: './dist/index.js',
    exports: {
      '.': { types: './dist/index.d.ts', default: './dist/index.js' },
      './demo': { types: './dist/demo/index.d.ts', default: './dist/demo/index.js' },
    },
  };
  it('resolves the root and a subpath, for code and for types', () => {
    expect(exportTarget(pkg, '', 'code')).toBe('./dist/index.js');
    expect(exportTarget(pkg, '/demo', 'code')).toBe('./dist/demo/index.js');
    expect(exportTarget(pkg, '/demo', 'types')).toBe('./dist/demo/index.d.ts');
  });
  it('refuses a subpath the package does not export', () => {
    expect(() => exportTarget(pkg, '/src/x.js', 'code')).toThrow('does not export ./src/x.js');
  });
  it('falls back to main without an exports map', () => {
    expect(exportTarget({ name: 'x', main: './lib/x.js' }, '', 'code')).toBe('./lib/x.js');
  });
});

describe('relativeSpecifier', () => {
  it('is relative to the importing file and always starts with a dot', () => {
    expect(relativeSpecifier('/p/dist/a.js', '/p/vendor/c/dist/index.js')).toBe('../vendor/c/dist/index.js');
    expect(relativeSpecifier('/p/dist/a.js', '/p/dist/sub/b.js')).toBe('./sub/b.js');
  });
});

describe('undeclared', () => {
  const contracts: PackageJson = { name: '@tollgate/contracts', dependencies: { zod: '^4.6.7' } };
  const instrumentation: PackageJson = {
    name: '@tollgate/instrumentation',
    dependencies: { '@tollgate/contracts': '^0.1.0', 'require-in-the-middle': '^8.0.1' },
    peerDependencies: { '@opentelemetry/api': '^1.9.0', 'gpt-tokenizer': '^4.0.0' },
    peerDependenciesMeta: { 'gpt-tokenizer': { optional: true } },
  };

  it('is empty when the host declares every third-party dependency and required peer alike', () => {
    const host: PackageJson = {
      name: 'host',
      dependencies: { zod: '^4.6.7', 'require-in-the-middle': '^8.0.1', '@opentelemetry/api': '^1.9.1' },
    };
    expect(undeclared(host, [contracts, instrumentation])).toEqual([]);
  });

  it('names a missing dependency, a different range and a missing required peer', () => {
    const host: PackageJson = { name: 'host', dependencies: { zod: '^4.0.0' } };
    expect(undeclared(host, [contracts, instrumentation])).toEqual([
      'zod@"^4.6.7" (needed by vendored @tollgate/contracts) is "^4.0.0" in host dependencies',
      'require-in-the-middle@"^8.0.1" (needed by vendored @tollgate/instrumentation) missing from host dependencies',
      'peer @opentelemetry/api of vendored @tollgate/instrumentation is neither a dependency nor a peer of host',
    ]);
  });
});

describe("this repository's published packages", () => {
  const root = fileURLToPath(new URL('../../', import.meta.url));
  const all = workspaces(root);
  const cases = [
    ['@tollgate/instrumentation', ['@tollgate/contracts']],
    [
      '@tollgate/collector-processor',
      ['@tollgate/billing-api', '@tollgate/contracts', '@tollgate/instrumentation'],
    ],
  ] as const;
  for (const [name, vendors] of cases) {
    it(`${name} vendors ${vendors.join(', ')} and declares all they need (what prepack checks)`, () => {
      const host = all.get(name)?.pkg as PackageJson;
      const names = vendoredSet(host, all);
      expect(names).toEqual(vendors);
      expect(
        undeclared(
          host,
          names.map((n) => all.get(n)?.pkg as PackageJson),
        ),
      ).toEqual([]);
      expect(host.files).toContain('vendor');
    });
  }

  it('keeps the internal packages private: never published, only vendored', () => {
    for (const name of ['@tollgate/contracts', '@tollgate/billing-api']) {
      const { dir } = all.get(name) as { dir: string };
      expect(JSON.parse(readFileSync(`${dir}/package.json`, 'utf8')).private, name).toBe(true);
    }
  });
});
