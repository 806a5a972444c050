import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  InstrumentationBase,
  InstrumentationNodeModuleDefinition,
  InstrumentationNodeModuleFile,
  isWrapped,
} from '@opentelemetry/instrumentation';
import { Hook as RequireHook } from 'require-in-the-middle';
import { type ResolvedConfig, resolveConfig } from './config.js';
import type { McpServerLike, ServerLike, ServerModuleLike } from './internal-types.js';
import type { TollgateRuntime } from './runtime.js';
import { recordSdk } from './self-check.js';
import { linkMcpServer, ToolCallTracer } from './tool-call.js';
import type { McpInstrumentationConfig } from './types.js';
import { PACKAGE_NAME, PACKAGE_VERSION } from './version.js';

/** The MCP SDK packages the instrumentation patches, and the versions of each it supports. */
export const SDK_PACKAGES = {
  /** 1.x from 1.12 (the first with `extra.authInfo`, `extra.requestInfo` and `extra.requestId`). */
  v1: '@modelcontextprotocol/sdk',
  /** 2.x: the split server package (the 2026-07-28 revision and the 2025 era, stdio and HTTP). */
  v2: '@modelcontextprotocol/server',
} as const;

/**
 * Versions the patch supports, per package. Verified on `@modelcontextprotocol/sdk` 1.32 and
 * `@modelcontextprotocol/server` 2.0.0 and 2.4.0 (see the README).
 */
export const SUPPORTED_VERSIONS = {
  [SDK_PACKAGES.v1]: '>=1.12.0 <2',
  [SDK_PACKAGES.v2]: '>=2.0.0 <3',
} as const;

/** The file that defines `Server` in 1.x (low-level; `McpServer` builds on one), in both builds it ships. */
export const SERVER_MODULE_FILES = [
  '@modelcontextprotocol/sdk/dist/cjs/server/index.js',
  '@modelcontextprotocol/sdk/dist/esm/server/index.js',
];

/** The file that defines `McpServer` in 1.x (its tools, so a call of a tool it lacks is not billed). */
export const MCP_MODULE_FILES = [
  '@modelcontextprotocol/sdk/dist/cjs/server/mcp.js',
  '@modelcontextprotocol/sdk/dist/esm/server/mcp.js',
];

/**
 * The CommonJS server module of 1.x as require-in-the-middle names it (`…/server/index.js` normalised).
 * OTel's shared CJS hook cannot see files inside `@modelcontextprotocol/sdk`: it first resolves the
 * package's main entry, which 1.x does not ship (its `"."` export points to a missing `dist/cjs/index.js`).
 * A hook that whitelists the file itself matches it without that step. 2.x has a real main entry.
 */
const CJS_SERVER_MODULE = '@modelcontextprotocol/sdk/dist/cjs/server';
/** 1.x's CommonJS McpServer module, as require-in-the-middle names it (no extension). */
const CJS_MCP_MODULE = '@modelcontextprotocol/sdk/dist/cjs/server/mcp';

/** Whether `version` of `pkg` is one the patch supports (`SUPPORTED_VERSIONS`), without a semver library. */
export function isSupportedSdkVersion(pkg: string, version: string | undefined): boolean {
  const m = /^(\d+)\.(\d+)\.(\d+)(-\S+)?$/.exec(version ?? '');
  if (!m) return false;
  const [major, minor, pre] = [Number(m[1]), Number(m[2]), m[4]];
  if (pkg === SDK_PACKAGES.v1) return major === 1 && minor >= 12 && !pre;
  if (pkg === SDK_PACKAGES.v2) return major === 2 && !pre;
  return false;
}

/** The one warning for a server the instrumentation cannot bill: names the package, version and the fix. */
export function unsupportedMessage(pkg: string, version: string | undefined, detail: string): string {
  return (
    `${pkg}@${version ?? '?'} is loaded but ${PACKAGE_NAME}@${PACKAGE_VERSION} cannot instrument it (${detail}): ` +
    `tool calls of its servers are NOT metered or enforced. Supported: ${SDK_PACKAGES.v1} ` +
    `${SUPPORTED_VERSIONS[SDK_PACKAGES.v1]}, ${SDK_PACKAGES.v2} ${SUPPORTED_VERSIONS[SDK_PACKAGES.v2]}. ` +
    `Upgrade ${PACKAGE_NAME}, or use a supported SDK version; ` +
    '`npx tollgate-instrumentation check` shows what is patched.'
  );
}

function packageVersion(basedir: string | undefined): string | undefined {
  if (!basedir) return undefined;
  try {
    return (JSON.parse(readFileSync(join(basedir, 'package.json'), 'utf8')) as { version?: string }).version;
  } catch {
    return undefined;
  }
}

/**
 * Auto-instrumentation of MCP servers built with `@modelcontextprotocol/sdk` 1.x or
 * `@modelcontextprotocol/server` 2.x, for CommonJS (`--require`) and ESM (`--import` with the OTel loader
 * hook). It patches `Server.prototype.setRequestHandler` so that every server's `tools/call` and
 * `initialize` handlers are wrapped as they are registered; `McpServer` registers its handlers on the
 * `Server` it wraps, so both APIs are covered by the one patch, and so are 2.x's per-request instances
 * (`createMcpHandler`) and `serveStdio`.
 *
 * Each `tools/call` becomes a SERVER span `tools/call {tool}` with the MCP semantic attributes, sent to the
 * app's tracer provider (its sampling applies) and, always, to Tollgate's billing pipeline.
 */
export class McpInstrumentation extends InstrumentationBase<McpInstrumentationConfig> {
  // `declare`: no field initialiser, so nothing set while the base constructor enables the hooks is reset.
  declare private calls: ToolCallTracer | undefined;
  declare private cjsHook: RequireHook | undefined;
  /** Modules patched outside the OTel definitions (the CJS hook, `manuallyInstrument`): disable unpatches them. */
  declare private ownPatched: Set<ServerModuleLike> | undefined;
  /** Warnings already given (each once per process). */
  declare private warned: Set<string> | undefined;

  constructor(config: McpInstrumentationConfig = {}) {
    super(PACKAGE_NAME, PACKAGE_VERSION, config);
  }

  override setConfig(config: McpInstrumentationConfig = {}): void {
    super.setConfig(config);
    this.calls?.reconfigure(this.resolve());
  }

  /** The billing runtime (stats, directives seen); undefined until the first server is patched. */
  get billing(): TollgateRuntime | undefined {
    return this.calls?.billing;
  }

  /**
   * The configuration, with its problems said where they are seen: OpenTelemetry's diag logger is silent
   * unless the app set one up, so each also goes through the configured logger (stderr by default), as a
   * server left unbilled does.
   */
  private resolve(): ResolvedConfig {
    const { resolved, problems } = resolveConfig(this.getConfig());
    for (const p of problems) {
      this._diag.warn(p);
      resolved.logger?.warn(`${PACKAGE_NAME}: configuration: ${p}`);
    }
    return resolved;
  }

  /**
   * A server that would go unbilled is never silent: one line through the configured logger (stderr by
   * default), and the self-check lists it.
   */
  private warnOnce(key: string, message: string): void {
    this.warned ??= new Set();
    if (this.warned.has(key)) return;
    this.warned.add(key);
    recordSdk({
      package: key.split('@')[0] ?? key,
      version: key.split('@')[1],
      patched: false,
      problem: message,
    });
    this._diag.warn(message);
    this.tracerOfCalls().warn(message);
  }

  /** Patches a 2.x or 1.x server module after checking its version; warns (once) when it cannot. */
  private patchChecked(
    pkg: string,
    exports: ServerModuleLike,
    version: string | undefined,
  ): ServerModuleLike {
    if (!isSupportedSdkVersion(pkg, version)) {
      this.warnOnce(`${pkg}@${version}`, unsupportedMessage(pkg, version, 'unsupported version'));
      return exports;
    }
    const proto = exports?.Server?.prototype;
    if (!proto || typeof proto.setRequestHandler !== 'function') {
      this.warnOnce(
        `${pkg}@${version}`,
        unsupportedMessage(pkg, version, 'no Server.prototype.setRequestHandler to patch'),
      );
      return exports;
    }
    recordSdk({ package: pkg, version, patched: true });
    return this.patchServerModule(exports, pkg, version);
  }

  /** Created at the first patch, so a config set after construction (NodeSDK) is the one used. */
  private tracerOfCalls(): ToolCallTracer {
    this.calls ??= new ToolCallTracer(
      this.resolve(),
      () => this.tracer,
      () => this.isEnabled(),
    );
    return this.calls;
  }

  /** Module hooks (ESM through the OTel definitions below) plus the CommonJS hook of the server file. */
  override enable(): void {
    super.enable();
    if (this.cjsHook) return;
    this.ownPatched ??= new Set();
    this.cjsHook = new RequireHook(
      [CJS_SERVER_MODULE, CJS_MCP_MODULE],
      { internals: true },
      (exports, name, basedir) => {
        if (name === CJS_MCP_MODULE) {
          this.ownPatched?.add(exports as ServerModuleLike);
          return this.patchMcpServerClass(exports as ServerModuleLike) as typeof exports;
        }
        if (name !== CJS_SERVER_MODULE) return exports;
        this.ownPatched?.add(exports as ServerModuleLike);
        return this.patchChecked(
          SDK_PACKAGES.v1,
          exports as ServerModuleLike,
          packageVersion(basedir),
        ) as typeof exports;
      },
    );
    for (const m of this.ownPatched) this.patchServerModule(m);
  }

  override disable(): void {
    super.disable();
    this.cjsHook?.unhook();
    this.cjsHook = undefined;
    for (const m of this.ownPatched ?? []) this.unpatchServerModule(m);
  }

  protected init(): InstrumentationNodeModuleDefinition[] {
    // Every version is hooked ('*') and checked in `patchChecked`, so an unsupported one is reported, never
    // skipped in silence. 1.x: ESM through the server file (import-in-the-middle reports the file path
    // inside the package), CommonJS through `enable`. 2.x: the package's main entry (ESM and CommonJS);
    // `McpServer`, `serveStdio` and `createMcpHandler` all build on the `Server` class it exports.
    const files = SERVER_MODULE_FILES.map(
      (file) =>
        new InstrumentationNodeModuleFile(
          file,
          ['*'],
          (exports: ServerModuleLike, version?: string) =>
            this.patchChecked(SDK_PACKAGES.v1, exports, version),
          (exports: ServerModuleLike) => this.unpatchServerModule(exports),
        ),
    );
    const mcpFiles = MCP_MODULE_FILES.map(
      (file) =>
        new InstrumentationNodeModuleFile(
          file,
          ['*'],
          (exports: ServerModuleLike) => this.patchMcpServerClass(exports),
          (exports: ServerModuleLike) => this.unpatchMcpServerClass(exports),
        ),
    );
    return [
      new InstrumentationNodeModuleDefinition(SDK_PACKAGES.v1, ['*'], undefined, undefined, [
        ...files,
        ...mcpFiles,
      ]),
      new InstrumentationNodeModuleDefinition(
        SDK_PACKAGES.v2,
        ['*'],
        (exports: ServerModuleLike, version?: string) => this.patchChecked(SDK_PACKAGES.v2, exports, version),
        (exports: ServerModuleLike) => this.unpatchServerModule(exports),
      ),
    ];
  }

  /**
   * `McpServer.prototype.setToolRequestHandlers` (both lines register `tools/call` through it) makes the
   * `McpServer` known as the owner of its `Server`, so a call of a tool it does not have is passed to the SDK
   * unbilled (see tool-call.ts, `toolRuns`). 2.x exports `McpServer` from the module that has `Server`.
   */
  private patchMcpServerClass(exports: ServerModuleLike): ServerModuleLike {
    const proto = exports?.McpServer?.prototype;
    if (!proto || typeof proto.setToolRequestHandlers !== 'function') return exports;
    if (isWrapped(proto.setToolRequestHandlers)) this._unwrap(proto, 'setToolRequestHandlers');
    this._wrap(
      proto,
      'setToolRequestHandlers',
      (original) =>
        function setToolRequestHandlers(this: McpServerLike, ...args: unknown[]) {
          linkMcpServer(this);
          return (original as (...a: unknown[]) => unknown).apply(this, args);
        },
    );
    return exports;
  }

  private unpatchMcpServerClass(exports: ServerModuleLike): void {
    const proto = exports?.McpServer?.prototype;
    if (proto && isWrapped(proto.setToolRequestHandlers)) this._unwrap(proto, 'setToolRequestHandlers');
  }

  private patchServerModule(exports: ServerModuleLike, pkg?: string, version?: string): ServerModuleLike {
    this.patchMcpServerClass(exports);
    const proto = exports?.Server?.prototype;
    if (!proto || typeof proto.setRequestHandler !== 'function') return exports;
    if (isWrapped(proto.setRequestHandler)) this._unwrap(proto, 'setRequestHandler');
    const calls = this.tracerOfCalls();
    const self = this;
    this._wrap(
      proto,
      'setRequestHandler',
      (original) =>
        function setRequestHandler(this: ServerLike, ...args: unknown[]) {
          const r = original.apply(this, args);
          // A release that moved the handler map would leave tool calls unbilled: say so once.
          if (!(this._requestHandlers instanceof Map)) {
            self.warnOnce(
              `${pkg}@${version}`,
              unsupportedMessage(pkg ?? 'the MCP SDK', version, 'no request handler map on Server'),
            );
            return r;
          }
          ToolCallTracer.ownerOf(this, calls).instrumentHandlers(this);
          return r;
        },
    );
    return exports;
  }

  private unpatchServerModule(exports: ServerModuleLike): void {
    this.unpatchMcpServerClass(exports);
    const proto = exports?.Server?.prototype;
    if (proto && isWrapped(proto.setRequestHandler)) this._unwrap(proto, 'setRequestHandler');
  }

  /**
   * Instruments the `Server` class of a module you loaded yourself (a bundled or vendored SDK the module
   * hooks cannot see): `mcpInstrumentation.manuallyInstrument(await import('@modelcontextprotocol/sdk/server/index.js'))`.
   * Give it 1.x's `server/mcp.js` too (its `McpServer` knows which tools exist, so a call of a tool it lacks
   * is not billed); 2.x's main module holds both classes.
   */
  manuallyInstrument(serverModule: { Server?: unknown } | { McpServer?: unknown }): void {
    this.ownPatched ??= new Set();
    this.ownPatched.add(serverModule as ServerModuleLike);
    this.patchServerModule(serverModule as ServerModuleLike);
  }
}
