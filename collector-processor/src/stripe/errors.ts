/** The error catalogue of the Stripe sync: stable codes, what they mean. */
export const STRIPE_SYNC_ERRORS = {
  STRIPE_MAPPING_INVALID: 'the stripe: mapping of the config file is not valid',
  STRIPE_NOT_CONFIGURED: 'the Stripe sync needs a stripe: mapping and a secret key',
  STRIPE_CURRENCY: 'the plan currency cannot be pushed to Stripe as configured',
  STRIPE_API: 'Stripe answered with an error',
  STRIPE_IDEMPOTENCY_CONFLICT:
    'Stripe refused an idempotency key already used with other parameters (the push was not billed twice)',
  STRIPE_LEDGER: 'the sync ledger in the data directory cannot be read',
  STRIPE_BUSY: 'another Stripe sync is running on this data directory',
  STRIPE_UNKNOWN_CUSTOMER: 'the customer asked for is not in the stripe: mapping',
  STRIPE_NEGATIVE_QUANTITY: 'a quantity to push went below what was already pushed',
  STRIPE_CREDITS_DECREASED:
    'the prepaid credits applied to a period went below what was already credited in Stripe (nothing was pushed)',
  STRIPE_GRANULARITY_CHANGED:
    'a period was pushed both by day and as a whole (two mappings): nothing was pushed for the customer',
  STRIPE_METER_WINDOW:
    'a meter event would fall outside what Stripe accepts (the past 35 days to 5 minutes ahead): it was not sent',
  STRIPE_RESOLVE_INVALID:
    '--resolve names a key that is not a meter event left unsure in this data directory’s ledger',
  STRIPE_METER_UNCERTAIN:
    'whether Stripe counted a meter event cannot be told safely (a push older than Stripe’s 24 h dedup window, or meter usage the ledger does not know): nothing was sent',
} as const;
export type StripeSyncErrorCode = keyof typeof STRIPE_SYNC_ERRORS;

export class StripeSyncError extends Error {
  override readonly name = 'StripeSyncError';
  constructor(
    readonly code: StripeSyncErrorCode,
    detail?: string,
  ) {
    super(`${code}: ${STRIPE_SYNC_ERRORS[code]}${detail ? `: ${detail}` : ''}`);
  }
}
