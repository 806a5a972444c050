import { readFileSync } from 'node:fs';

function lua(name: string): string {
  return readFileSync(new URL(`../../lua/${name}`, import.meta.url), 'utf8');
}

/**
 * The quota-lease functions (lua/lease-lib.lua) are prepended to every script that touches a customer's
 * limits, so granting, settling and reaping leases run inside the same atomic script as the rest of
 * enforcement (Redis has no `require`).
 */
const LEASE_LIB = lua('lease-lib.lua');

/** enforce.lua: limits, margin guard and lease settlement of one customer's calls of one export. */
export const ENFORCE_LUA = `${LEASE_LIB}\n${lua('enforce.lua')}`;
/** lease.lua: grant, renew or release one quota lease. */
export const LEASE_LUA = `${LEASE_LIB}\n${lua('lease.lua')}`;
