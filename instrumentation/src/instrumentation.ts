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
import type { ServerLike, ServerModuleLike } from './internal-types.js';
import type { TollgateRuntime } from './runtime.js';
import { ToolCallTracer } from './tool-call.js';
import type { McpInstrumentationConfig } from './types.js';
import { PACKAGE_NAME, PACKAGE_VERSION } from './version.js';

/**
 * Versions of `@modelcontextprotocol/sdk` the patch supports: 1.x from 1.12 (the first with `extra.authInfo`,
 * `extra.requestInfo` and `extra.requestId` on every handler). Verified on 1.32.2 (see the README).
 */
export const SUPPORTED_VERSIONS = ['>=1.12.0 <2'];

/** The file that defines `Server` (low-level; `McpServer` builds on one), in both builds the SDK ships. */
export const SERVER_MODULE_FILES = [
  '@modelcontextprotocol/sdk/dist/cjs/server/index.js',
  '@modelcontextprotocol/sdk/dist/esm/server/index.js',
];

/**
 * The CommonJS server module as require-in-the-middle names it (`…/server/index.js` normalised). OTel's
 * shared CJS hook cannot see files inside `@modelcontextprotocol/sdk`: it first resolves the package's main
 * entry, which the SDK does not ship (its `"."` export points to a missing `dist/cjs/index.js`). A hook that
 * whitelists the file itself matches it without that step.
 */
const CJS_SERVER_MODULE = '@modelcontextprotocol/sdk/dist/cjs/server';

/** `>=1.12.0 <2` (SUPPORTED_VERSIONS), without pulling in a semver library. */
export function isSupportedSdkVersion(version: string | undefined): boolean {
  const m = /^(\d+)\.(\d+)\.(\d+)/.exec(version ?? '');
  if (!m) return false;
  const [major, minor] = [Number(m[1]), Number(m[2])];
  return major === 1 && minor >= 12;
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
 * Auto-instrumentation of MCP servers built with `@modelcontextprotocol/sdk` 1.x, for CommonJS (`--require`)
 * and ESM (`--import` with the OTel loader hook). It patches `Server.prototype.setRequestHandler` so that
 * every server's `tools/call` and `initialize` handlers are wrapped as they are registered; `McpServer`
 * registers its handlers on the `Server` it wraps, so both APIs are covered by the one patch.
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

  private resolve(): ResolvedConfig {
    const { resolved, problems } = resolveConfig(this.getConfig());
    for (const p of problems) this._diag.warn(p);
    return resolved;
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
    this.cjsHook = new RequireHook([CJS_SERVER_MODULE], { internals: true }, (exports, name, basedir) => {
      if (name !== CJS_SERVER_MODULE) return exports;
      const version = packageVersion(basedir);
      if (!isSupportedSdkVersion(version)) {
        this._diag.warn(`@modelcontextprotocol/sdk ${version} is not supported (${SUPPORTED_VERSIONS})`);
        return exports;
      }
      this.ownPatched?.add(exports as ServerModuleLike);
      return this.patchServerModule(exports as ServerModuleLike) as typeof exports;
    });
    for (const m of this.ownPatched) this.patchServerModule(m);
  }

  override disable(): void {
    super.disable();
    this.cjsHook?.unhook();
    this.cjsHook = undefined;
    for (const m of this.ownPatched ?? []) this.unpatchServerModule(m);
  }

  protected init(): InstrumentationNodeModuleDefinition[] {
    // ESM (import-in-the-middle reports the file path inside the package); CommonJS goes through `enable`.
    const files = SERVER_MODULE_FILES.map(
      (file) =>
        new InstrumentationNodeModuleFile(
          file,
          SUPPORTED_VERSIONS,
          (exports: ServerModuleLike) => this.patchServerModule(exports),
          (exports: ServerModuleLike) => this.unpatchServerModule(exports),
        ),
    );
    return [
      new InstrumentationNodeModuleDefinition(
        '@modelcontextprotocol/sdk',
        SUPPORTED_VERSIONS,
        undefined,
        undefined,
        files,
      ),
    ];
  }

  private patchServerModule(exports: ServerModuleLike): ServerModuleLike {
    const proto = exports?.Server?.prototype;
    if (!proto || typeof proto.setRequestHandler !== 'function') {
      this._diag.debug('no Server.prototype.setRequestHandler to patch');
      return exports;
    }
    if (isWrapped(proto.setRequestHandler)) this._unwrap(proto, 'setRequestHandler');
    const calls = this.tracerOfCalls();
    this._wrap(
      proto,
      'setRequestHandler',
      (original) =>
        function setRequestHandler(this: ServerLike, ...args: unknown[]) {
          const r = original.apply(this, args);
          ToolCallTracer.ownerOf(this, calls).instrumentHandlers(this);
          return r;
        },
    );
    return exports;
  }

  private unpatchServerModule(exports: ServerModuleLike): void {
    const proto = exports?.Server?.prototype;
    if (proto && isWrapped(proto.setRequestHandler)) this._unwrap(proto, 'setRequestHandler');
  }

  /**
   * Instruments the `Server` class of a module you loaded yourself (a bundled or vendored SDK the module
   * hooks cannot see): `mcpInstrumentation.manuallyInstrument(await import('@modelcontextprotocol/sdk/server/index.js'))`.
   */
  manuallyInstrument(serverModule: { Server?: unknown }): void {
    this.ownPatched ??= new Set();
    this.ownPatched.add(serverModule as ServerModuleLike);
    this.patchServerModule(serverModule as ServerModuleLike);
  }
}
