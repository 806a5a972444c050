export { DEFAULTS, ENV } from './config.js';
export {
  REFUSALS,
  type RefusalData,
  type RefusalKind,
  TollgateRefusal,
  UNBILLABLE_TOOL_NAME_CODE,
  UnbillableToolName,
} from './errors.js';
export { type InstrumentMcpServerOptions, instrumentMcpServer } from './instrument-server.js';
export { McpInstrumentation, SERVER_MODULE_FILES, SUPPORTED_VERSIONS } from './instrumentation.js';
export { flushTollgate, shutdownTollgate, tollgateRuntimes } from './registry.js';
export type { TollgateRuntime } from './runtime.js';
export type {
  DirectiveHook,
  DirectiveHookResult,
  IdentityResolver,
  McpAuthInfo,
  McpInstrumentationConfig,
  McpRequestInfo,
  TollgateExportConfig,
  TollgateLogger,
  ToolUsage,
} from './types.js';
export { reportUsage } from './usage.js';
export { defaultAgentResolver, defaultCustomerResolver, resolvers } from './utils.js';
export { PACKAGE_NAME, PACKAGE_VERSION } from './version.js';
