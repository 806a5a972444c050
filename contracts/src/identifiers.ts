/** Longest identifier (customer, agent, session, tool) we accept; longer ones are rejected, not truncated. */
export const MAX_IDENTIFIER_LENGTH = 256;

// biome-ignore lint/suspicious/noControlCharactersInRegex: rejecting control characters is the point
const CONTROL = /[\u0000-\u001f\u007f]/;

export function isValidIdentifier(value: string): boolean {
  return value.length > 0 && value.length <= MAX_IDENTIFIER_LENGTH && !CONTROL.test(value);
}
