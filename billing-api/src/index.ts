export { type EnforcementAdminPort, type OperatorAction, registerEnforcementAdmin } from './admin.js';
export { type ApiDeps, buildApi, type ReadinessCheck } from './app.js';
export {
  type ApiKeyConfig,
  ApiKeyring,
  type Principal,
  type Role,
  requireRole,
  type Scope,
  scopeFor,
} from './auth.js';
export {
  INVOICE_COMPONENTS,
  type InvoiceComponent,
  type InvoiceLine,
  invoiceLines,
} from './billing.js';
export { type Cell, toCsv } from './csv.js';
export { API_ERRORS, ApiError, type ApiErrorCode } from './errors.js';
export {
  type AnalyticsDeps,
  type GuardBands,
  type PlanInfo,
  PRICING_ERRORS,
  PricingError,
  type PricingPort,
  type QuoteRequest,
  type QuoteResult,
  type QuoteSegment,
  type QuoteUsage,
} from './ports.js';
export { DAY_MS, periodOfMs, periodRange, type TimeRange } from './range.js';
