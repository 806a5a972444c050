import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DEV_INGEST_KEY,
  startTestTollgate,
  type TestTollgate,
} from '../../collector-processor/test/support/harness.js';
import { exportOf, toolSpan } from '../../collector-processor/test/support/otlp-json.js';

/**
 * A session id is an identifier of 1–256 characters (docs/span-contract.md); the protocol's own ids can be
 * long (a JWT, a signed token). fastify's router refuses a path parameter over 100 characters
 * (`maxParamLength`) with its own 414 `FST_ERR_MAX_PARAM_LENGTH`, so a session the list showed could not
 * be opened. Errors the router raises itself (a malformed percent-escape) answer in the API's catalogue too.
 */

const ADMIN_KEY = 'tg_dev_admin';
let tg: TestTollgate;

beforeAll(async () => {
  tg = await startTestTollgate();
}, 60_000);
afterAll(async () => {
  await tg?.cleanup();
});

async function get(path: string) {
  const res = await fetch(`${tg.apiUrl}${path}`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

describe('GET /analytics/mcp/sessions/{id}', () => {
  it('opens a session whose id is as long as an identifier may be (256 characters, multi-byte)', async () => {
    const customer = 'long-session-ids';
    const ascii = `mcp-session-${'a1b2c3d4'.repeat(30)}`.slice(0, 256);
    const multiByte = 'é✓'.repeat(128); // 256 characters, 640 bytes, 1,920 characters percent-encoded
    const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
      body: JSON.stringify(
        exportOf([
          toolSpan({ customer, attrs: { 'mcp.session.id': ascii } }),
          toolSpan({ customer, attrs: { 'mcp.session.id': multiByte } }),
        ]),
      ),
    });
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('{}');
    await tg.lander?.idle();

    const list = await get(`/analytics/mcp/sessions?customer=${customer}`);
    expect((list.body.rows as { sessionId: string }[]).map((r) => r.sessionId).sort()).toEqual(
      [ascii, multiByte].sort(),
    );
    for (const id of [ascii, multiByte]) {
      const one = await get(`/analytics/mcp/sessions/${encodeURIComponent(id)}`);
      expect(one.status, id).toBe(200);
      expect(one.body).toMatchObject({ sessionId: id, totals: { calls: 1 } });
    }
  });

  it('an id over 256 characters is a 400 in the catalogue shape', async () => {
    const r = await get(`/analytics/mcp/sessions/${'x'.repeat(257)}`);
    expect(r.status).toBe(400);
    expect(r.body).toEqual({ error: { code: 'API_BAD_REQUEST', message: expect.stringContaining('256') } });
  });

  it('a malformed percent-escape is a 400 in the catalogue shape', async () => {
    const r = await get('/analytics/mcp/sessions/%FF');
    expect(r.status).toBe(400);
    expect(r.body).toEqual({ error: { code: 'API_BAD_REQUEST', message: expect.any(String) } });
  });
});
