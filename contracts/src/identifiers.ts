/** Longest identifier (customer, agent, session, tool) we accept; longer ones are rejected, not truncated. */
export const MAX_IDENTIFIER_LENGTH = 256;

/**
 * What an identifier may not hold, as a JSON-schema pattern's class and as a RegExp: control characters (C0,
 * DEL, C1: U+0080–U+009F are controls too) and Unicode's bidirectional controls (Bidi_Control: U+061C,
 * U+200E, U+200F, U+202A–U+202E, U+2066–U+2069), which make an id display as another in the dashboard, a
 * CSV or a terminal.
 */
export const IDENTIFIER_FORBIDDEN_CLASS =
  '\\u0000-\\u001f\\u007f-\\u009f\\u061c\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069';
/** A forbidden character, or half of a surrogate pair without its other half (not text: no UTF-8 for it). */
const FORBIDDEN = new RegExp(
  `[${IDENTIFIER_FORBIDDEN_CLASS}]|[\\ud800-\\udbff](?![\\udc00-\\udfff])|(?<![\\ud800-\\udbff])[\\udc00-\\udfff]`,
);

export function isValidIdentifier(value: string): boolean {
  return value.length > 0 && value.length <= MAX_IDENTIFIER_LENGTH && !FORBIDDEN.test(value);
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
