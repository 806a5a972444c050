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
  creditsThrough,
  hasCreditLedger,
  INVOICE_COMPONENTS,
  type InvoiceComponent,
  type InvoiceLine,
  invoiceLines,
} from './billing.js';
export {
  CREDIT_ERRORS,
  type CreditAdjustRequest,
  CreditError,
  type CreditErrorReason,
  type CreditGrantRequest,
  type CreditsPort,
  type GrantView,
  registerCredits,
  type WalletView,
} from './credits.js';
export { type Cell, toCsv } from './csv.js';
export { API_ERRORS, ApiError, type ApiErrorCode } from './errors.js';
export {
  DRAIN_LIMIT,
  drainRequest,
  type EdgeCodes,
  edgeClientErrorHandler,
  edgeServerFactory,
  MAX_HEADER_BYTES,
  MAX_URL_BYTES,
} from './http-edges.js';
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
