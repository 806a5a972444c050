/**
 * Zero-code setup: `node --import @tollgate/instrumentation/register app.mjs` (ESM) or
 * `node --require @tollgate/instrumentation/register app.cjs` (CommonJS, Node 20.19+ / 22.12+). Registers
 * the OTel loader hook for ESM, then the MCP instrumentation configured from the environment
 * (`TOLLGATE_OTLP_ENDPOINT`, `TOLLGATE_INGEST_KEY`, `TOLLGATE_CUSTOMER_ID`, ... see the README).
 */
import { register } from 'node:module';
import { isMainThread } from 'node:worker_threads';
import { registerInstrumentations } from '@opentelemetry/instrumentation';
import { McpInstrumentation } from './instrumentation.js';

// Node runs `--require` preloads in its module-hooks thread too: the loader hook is registered from the
// main thread only (registering it twice makes import-in-the-middle warn).
if (isMainThread) register('@opentelemetry/instrumentation/hook.mjs', import.meta.url);

export const mcpInstrumentation = new McpInstrumentation();
registerInstrumentations({ instrumentations: [mcpInstrumentation] });
