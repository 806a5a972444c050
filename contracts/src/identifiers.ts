/** Longest identifier (customer, agent, session, tool) we accept; longer ones are rejected, not truncated. */
export const MAX_IDENTIFIER_LENGTH = 256;

// biome-ignore lint/suspicious/noControlCharactersInRegex: rejecting control characters is the point
const CONTROL = /[\u0000-\u001f\u007f]/;

export function isValidIdentifier(value: string): boolean {
  return value.length > 0 && value.length <= MAX_IDENTIFIER_LENGTH && !CONTROL.test(value);
}

/** Longest free text we keep from a span (`error.type`, `mcp.protocol.version`); longer text is cut there. */
export const MAX_TEXT_LENGTH = 256;

/**
 * `value` cut to MAX_TEXT_LENGTH UTF-16 code units, never between the two halves of a surrogate pair. For
 * values that do not decide money or identity: a call whose `error.type` is two megabytes is still a call.
 */
export function boundedText(value: string): string {
  if (value.length <= MAX_TEXT_LENGTH) return value;
  const last = value.charCodeAt(MAX_TEXT_LENGTH - 1);
  return value.slice(0, last >= 0xd800 && last <= 0xdbff ? MAX_TEXT_LENGTH - 1 : MAX_TEXT_LENGTH);
}
