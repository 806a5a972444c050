import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { type Document, isMap, isScalar, LineCounter, parseDocument, visit } from 'yaml';
import type { z } from 'zod';
import {
  type Plan,
  type PlanFile,
  planFileSchema,
  planSchema,
  type ToolRate,
  type UsageParent,
} from './schema.js';

/** Attribute prefix of a usage line's own attribute (contracts ATTR_PREFIX_TOLLGATE_USAGE). */
export const USAGE_ATTR_PREFIX = 'tollgate.usage.';

/** A declared usage line, with the attributes it is read from in order (first present wins). */
export interface CompiledUsageLine {
  name: string;
  sources: readonly string[];
  subsetOf: UsageParent | undefined;
  integral: boolean;
  label: string;
}

/** Tool key that prices every tool a plan does not list. */
export const DEFAULT_TOOL_KEY = '*';

export interface CompiledPlan {
  product: string;
  planId: string;
  /** Content hash of the plan file this plan came from. */
  version: string;
  currency: string;
  plan: Plan;
  tools: ReadonlyMap<string, ToolRate>;
  defaultTool: ToolRate | undefined;
  /** The plan's usage lines in name order (the order rated amounts are listed and landed in). */
  usageLines: readonly CompiledUsageLine[];
}

export interface PlanBook {
  version: string;
  currency: string;
  source: string;
  /** Plan of a customer of a product: its own (with overrides) or the product's default. */
  resolve(product: string, customer: string): CompiledPlan | undefined;
  products(): string[];
  /** Whether the plan file names this customer of this product (under `customers`). */
  listsCustomer(product: string, customer: string): boolean;
  /** Every span attribute some plan's usage line reads (extraction keeps only these). */
  usageAttributes: readonly string[];
}

export class PlanFileError extends Error {
  override readonly name = 'PlanFileError';
  constructor(
    readonly file: string,
    readonly problems: string[],
  ) {
    super(`${file}: ${problems.length} problem(s) in the rate-plan file:\n  ${problems.join('\n  ')}`);
  }
}

/** A plans file that cannot be read at all (missing, a directory, no permission): one line, no count. */
export class PlanFileUnreadable extends PlanFileError {
  constructor(file: string, err: unknown) {
    const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    super(file, [`cannot read the plans file (${why})`]);
    this.message = `${file}: cannot read the plans file (${why})`;
  }
}

/**
 * Reads and loads a plans file: the one reader of `tollgate start`, its hot reload, `check-plans` and the
 * Stripe sync. Throws PlanFileError (PlanFileUnreadable when the file cannot be read) with every problem.
 */
export function readPlanBook(file: string): PlanBook {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new PlanFileUnreadable(file, err);
  }
  return loadPlanBook(text, file);
}

type Path = ReadonlyArray<PropertyKey>;

function pathText(path: Path): string {
  return path
    .map((p, i) => (typeof p === 'number' ? `[${p}]` : `${i ? '.' : ''}${String(p)}`))
    .join('')
    .replace(/\.\*/g, '."*"');
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Objects merge key by key; anything else in `over` replaces what is in `base`; `null` removes a key. */
export function deepMerge(base: unknown, over: unknown): unknown {
  if (!isPlainObject(base) || !isPlainObject(over)) return over;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (v === null) delete out[k];
    else out[k] = k in base ? deepMerge(base[k], v) : v;
  }
  return out;
}

function compile(
  product: string,
  planId: string,
  version: string,
  currency: string,
  plan: Plan,
): CompiledPlan {
  const tools = new Map(Object.entries(plan.tools));
  const usageLines = Object.keys(plan.usageLines)
    .sort()
    .map((name): CompiledUsageLine => {
      const l = plan.usageLines[name] as Plan['usageLines'][string];
      const attrs =
        l.attributes === undefined ? [] : typeof l.attributes === 'string' ? [l.attributes] : l.attributes;
      const own = USAGE_ATTR_PREFIX + name;
      return {
        name,
        sources: [...attrs.filter((a) => a !== own), own],
        subsetOf: l.subsetOf,
        integral: l.integral,
        label: l.label ?? name.replace(/_/g, ' '),
      };
    });
  return {
    product,
    planId,
    version,
    currency,
    plan,
    tools,
    defaultTool: tools.get(DEFAULT_TOOL_KEY),
    usageLines,
  };
}

/**
 * Parses YAML so that every number keeps its source text: "0.1" stays "0.1" instead of becoming the
 * float 0.1 (money is then parsed exactly from that text).
 */
export function parseKeepingNumberText(source: string, lineCounter?: LineCounter): Document {
  const doc = parseDocument(source, { lineCounter, keepSourceTokens: true, uniqueKeys: true });
  visit(doc, {
    Scalar(_key, node) {
      if (typeof node.value === 'number' && node.srcToken && 'source' in node.srcToken) {
        node.value = node.srcToken.source;
      }
    },
  });
  return doc;
}

/**
 * Parses and validates a rate-plan file. Every problem is reported with its path in the file and its
 * line; nothing is returned unless the whole file is valid.
 */
export function loadPlanBook(source: string, file = 'plans.yaml'): PlanBook {
  const lines = new LineCounter();
  const doc = parseKeepingNumberText(source, lines);
  const problems: string[] = [];
  for (const e of doc.errors)
    problems.push(`line ${e.linePos?.[0]?.line ?? '?'}: ${e.message.split('\n')[0]}`);
  if (problems.length) throw new PlanFileError(file, problems);

  const lineOf = (path: Path): string => {
    for (let n = path.length; n >= 0; n--) {
      const node = doc.getIn(path.slice(0, n) as unknown[], true);
      if ((isScalar(node) || isMap(node)) && node.range)
        return ` (line ${lines.linePos(node.range[0]).line})`;
      if (node && typeof node === 'object' && 'range' in node && Array.isArray(node.range)) {
        return ` (line ${lines.linePos(node.range[0] as number).line})`;
      }
    }
    return '';
  };
  const report = (prefix: Path, issues: z.ZodError['issues']) => {
    for (const issue of issues) {
      const full = [...prefix, ...issue.path];
      problems.push(`${pathText(full) || '(root)'}: ${issue.message}${lineOf(full)}`);
    }
  };

  const raw = doc.toJS() as unknown;
  const fileResult = planFileSchema.safeParse(raw ?? {});
  if (!fileResult.success) {
    report([], fileResult.error.issues);
    throw new PlanFileError(file, problems);
  }
  const parsed: PlanFile = fileResult.data;
  const version = createHash('sha256').update(source).digest('hex').slice(0, 12);
  const defaults = new Map<string, CompiledPlan>();
  const byCustomer = new Map<string, CompiledPlan>();

  for (const [product, p] of Object.entries(parsed.products)) {
    const compiled = new Map<string, CompiledPlan>();
    // where each plan that failed is wrong (paths within the plan): an override of it is checked apart from these
    const failed = new Map<string, (readonly PropertyKey[])[]>();
    for (const [planId, rawPlan] of Object.entries(p.plans)) {
      const r = planSchema.safeParse(rawPlan);
      if (!r.success) {
        report(['products', product, 'plans', planId], r.error.issues);
        failed.set(planId, r.error.issues.flatMap(issuePaths));
      } else compiled.set(planId, compile(product, planId, version, parsed.currency, r.data));
    }
    if (!(p.defaultPlan in p.plans)) {
      problems.push(
        `products.${product}.defaultPlan: no plan named "${p.defaultPlan}"${lineOf(['products', product, 'defaultPlan'])}`,
      );
    } else {
      const d = compiled.get(p.defaultPlan);
      if (d) defaults.set(product, d);
    }
    for (const [customer, c] of Object.entries(p.customers)) {
      const planId = c.plan ?? p.defaultPlan;
      const at = ['products', product, 'customers', customer];
      if (!(planId in p.plans)) {
        problems.push(`${pathText([...at, 'plan'])}: no plan named "${planId}"${lineOf([...at, 'plan'])}`);
        continue;
      }
      // a plan that failed is reported once, at the plan: not again under every customer that overrides it;
      // what an override gets wrong besides is reported now, not once the plan is fixed
      const baseProblems = failed.get(planId);
      if (baseProblems) {
        if (!c.overrides) continue;
        const r = planSchema.safeParse(deepMerge(p.plans[planId], c.overrides));
        if (r.success) continue;
        // a problem where the plan also fails is the plan's, unless the override sets that value itself
        const inherited = (path: Path) =>
          baseProblems.some((b) => startsWith(path, b)) && !sets(c.overrides, path);
        const own = r.error.issues.flatMap((i) => notIn(i, inherited));
        report([...at, 'overrides'], own);
        continue;
      }
      if (!c.overrides) {
        const shared = compiled.get(planId);
        if (shared) byCustomer.set(`${product}\0${customer}`, shared);
        continue;
      }
      const r = planSchema.safeParse(deepMerge(p.plans[planId], c.overrides));
      if (!r.success) report([...at, 'overrides'], r.error.issues);
      else
        byCustomer.set(`${product}\0${customer}`, compile(product, planId, version, parsed.currency, r.data));
    }
  }
  if (problems.length) throw new PlanFileError(file, problems);

  const usageAttributes = new Set<string>();
  for (const c of [...defaults.values(), ...byCustomer.values()])
    for (const l of c.usageLines) for (const a of l.sources) usageAttributes.add(a);

  return Object.freeze({
    usageAttributes: [...usageAttributes].sort(),
    version,
    currency: parsed.currency,
    source,
    resolve: (product: string, customer: string) =>
      byCustomer.get(`${product}\0${customer}`) ?? defaults.get(product),
    products: () => [...defaults.keys()],
    listsCustomer: (product: string, customer: string) =>
      Object.hasOwn(parsed.products[product]?.customers ?? {}, customer),
  });
}

/** Where an issue is: its path, or for keys the schema does not know, each key's own path. */
function issuePaths(issue: z.ZodError['issues'][number]): Path[] {
  return issue.code === 'unrecognized_keys' ? issue.keys.map((k) => [...issue.path, k]) : [issue.path];
}

/** The part of an issue that is not at or under one of `known` (an unknown-keys issue keeps its other keys). */
function notIn(issue: z.ZodError['issues'][number], isKnown: (path: Path) => boolean): z.ZodError['issues'] {
  if (issue.code !== 'unrecognized_keys') return isKnown(issue.path) ? [] : [issue];
  const keys = issue.keys.filter((k) => !isKnown([...issue.path, k]));
  if (keys.length === issue.keys.length) return [issue];
  if (keys.length === 0) return [];
  const message = `Unrecognized key${keys.length > 1 ? 's' : ''}: ${keys.map((k) => `"${k}"`).join(', ')}`;
  return [{ ...issue, keys, message }];
}

/** Whether an override sets the value at `path` (or a value above it, which replaces what is below). */
function sets(overrides: unknown, path: Path): boolean {
  let v = overrides;
  for (const k of path) {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) return true;
    if (!Object.hasOwn(v, k as string)) return false;
    v = (v as Record<PropertyKey, unknown>)[k];
  }
  return true;
}

/** Whether `path` is `prefix` or lies under it. */
function startsWith(path: Path, prefix: Path): boolean {
  return prefix.length <= path.length && prefix.every((k, i) => path[i] === k);
}

/** The rate of a tool under a plan, or undefined when the plan neither lists it nor has a default. */
export function toolRateOf(plan: CompiledPlan, tool: string): ToolRate | undefined {
  return plan.tools.get(tool) ?? plan.defaultTool;
}
