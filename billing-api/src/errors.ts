/** The error catalogue of the HTTP API: stable codes, HTTP status, message. */
export const API_ERRORS = {
  API_UNAUTHORIZED: { status: 401, message: 'missing or unknown API key' },
  API_FORBIDDEN: { status: 403, message: 'this key may not see or change that' },
  API_BAD_REQUEST: { status: 400, message: 'invalid request' },
  API_NOT_FOUND: { status: 404, message: 'not found' },
  API_BODY_TOO_LARGE: { status: 413, message: 'request body exceeds the limit' },
  API_URI_TOO_LONG: { status: 414, message: 'request target too long' },
  API_HEADERS_TOO_LARGE: { status: 431, message: 'request headers too large' },
  API_UNAVAILABLE: { status: 503, message: 'a backing service is unavailable' },
  API_UNKNOWN_PLAN: { status: 404, message: 'no such rate plan' },
  API_UNKNOWN_TOOL: { status: 400, message: 'the plan prices no such tool' },
  API_INVALID_PLAN: { status: 400, message: 'the plan is not valid' },
  API_UNKNOWN_CUSTOMER: { status: 404, message: 'no such customer' },
  API_CREDIT_AMOUNT: { status: 400, message: 'the credit amount is not acceptable' },
  API_CREDIT_CURRENCY: { status: 400, message: 'the credit currency is not the plan currency' },
  API_CREDIT_DATES: { status: 400, message: 'the credit dates are not acceptable' },
  API_CREDIT_PRIORITY: { status: 400, message: 'the credit priority is not acceptable' },
  API_NO_WALLET: { status: 404, message: 'the customer has no credit wallet' },
  API_UNKNOWN_GRANT: { status: 404, message: 'no such credit grant with money left' },
  API_CREDIT_OUT_OF_RANGE: { status: 409, message: 'the adjustment would take a balance out of range' },
  API_IDEMPOTENCY_CONFLICT: {
    status: 409,
    message: 'the idempotency key was already used for a request with other terms',
  },
} as const;
export type ApiErrorCode = keyof typeof API_ERRORS;

export class ApiError extends Error {
  override readonly name = 'ApiError';
  readonly status: number;
  constructor(
    readonly code: ApiErrorCode,
    detail?: string,
  ) {
    super(detail ? `${API_ERRORS[code].message}: ${detail}` : API_ERRORS[code].message);
    this.status = API_ERRORS[code].status;
  }
}
