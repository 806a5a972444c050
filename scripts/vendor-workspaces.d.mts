// Types of the pure helpers of vendor-workspaces.mjs (the script runs as plain Node at pack time).
export interface PackageJson {
  name: string;
  version?: string;
  main?: string;
  types?: string;
  exports?: string | Record<string, string | Record<string, string>>;
  files?: string[];
  dependencies?: Record<string, string>;
  devDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
}

export function packageOf(specifier: string): string | undefined;
export function rewriteSpecifiers(
  text: string,
  map: (specifier: string) => string | undefined,
): { text: string; changed: number };
export function exportTarget(pkg: PackageJson, subpath: string, kind: 'types' | 'code'): string;
export function relativeSpecifier(fromFile: string, toFile: string): string;
export function undeclared(host: PackageJson, vendored: PackageJson[]): string[];
export function workspaces(root: string): Map<string, { dir: string; pkg: PackageJson }>;
/** The workspace packages `host` vendors (sorted); throws when it lists one in "dependencies". */
export function vendoredSet(host: PackageJson, all: Map<string, { dir: string; pkg: PackageJson }>): string[];
