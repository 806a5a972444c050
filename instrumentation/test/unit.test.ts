import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Directive } from '@tollgate/contracts';
import { describe, expect, it } from 'vitest';
import { decodeJsonExport } from '../../collector-processor/src/otlp/decode-json.js';
import { decodeProtobufExport } from '../../collector-processor/src/otlp/decode-protobuf.js';
import { encodeExportResponse } from '../../collector-processor/src/otlp/response.js';
import { resolveConfig } from '../src/config.js';
import { DirectiveStore } from '../src/directives.js';
import { REFUSALS, TollgateRefusal } from '../src/errors.js';
import { isSupportedSdkVersion } from '../src/instrumentation.js';
import { readState, writeState } from '../src/state-file.js';
import { PACKAGE_NAME, PACKAGE_VERSION } from '../src/version.js';
import { directivesFromJson, directivesFromProtobuf, heartbeatRequest } from '../src/wire.js';

const kill: Directive = {
  action: 'kill',
  scope: 'customer',
  id: 'acme',
  customer: 'acme',
  reason: 'margin_guard:kill',
  marginBps: -1358,
  untilUnixMs: 1_900_000_000_000,
};
const throttle: Directive = {
  action: 'throttle',
  scope: 'agent',
  id: 'bot',
  customer: 'acme',
  reason: 'margin_guard:throttle',
  ratePerSecond: 2.5,
  marginBps: 76,
  untilUnixMs: 0,
};

describe('wire format, against the processor’s own encoder and decoders', () => {
  it('reads directives from protobuf field 1000 and from the JSON key `tollgate`', () => {
    const outcome = { rejectedSpans: 1, errorMessage: 'x', directives: [kill, throttle] };
    const pb = encodeExportResponse('protobuf', outcome) as Buffer;
    expect(directivesFromProtobuf(pb)).toEqual([kill, throttle]);
    const json = Buffer.from(encodeExportResponse('json', outcome) as string);
    expect(directivesFromJson(json)).toEqual([kill, throttle]);
    // a stock answer (no directives, no partial success) is an empty body: nothing to read
    expect(
      directivesFromProtobuf(
        encodeExportResponse('protobuf', {
          ...outcome,
          directives: [],
          rejectedSpans: 0,
          errorMessage: '',
        }) as Buffer,
      ),
    ).toEqual([]);
  });

  it('drops directives it does not understand instead of failing', () => {
    const body = Buffer.from(
      JSON.stringify({
        tollgate: { directives: [{ action: 'explode', scope: 'customer', id: 'a', customer: 'a' }, kill] },
      }),
    );
    expect(directivesFromJson(body)).toEqual([kill]);
  });

  it('heartbeats are empty exports the processor reads as instance ids', async () => {
    for (const [format, decode] of [
      ['protobuf', decodeProtobufExport],
      ['json', decodeJsonExport],
    ] as const) {
      const decoded = await decode(heartbeatRequest(format, 'svc', ['inst-1', 'inst-0']));
      expect(decoded.spans).toEqual([]);
      expect(decoded.instanceIds).toEqual(['inst-1', 'inst-0']);
    }
  });
});

describe('directive store', () => {
  const subject = { customer: 'acme', agent: 'bot', sessionId: 's1', tool: 'search' };

  it('kill refuses at every scope that covers the call, and only those', () => {
    const store = new DirectiveStore();
    expect(store.check(subject, 0)).toBeUndefined();
    store.apply([{ ...kill, scope: 'tool', id: 'search' }], 0);
    expect(store.check(subject, 0)?.refusal?.code).toBe(REFUSALS.killed.code);
    expect(store.check({ ...subject, tool: 'other' }, 0)).toBeUndefined();
    expect(store.check({ ...subject, customer: 'globex' }, 0)).toBeUndefined();
    store.apply([{ ...kill, scope: 'session', id: 's2', customer: 'acme' }], 0);
    expect(store.check({ ...subject, tool: 'other', sessionId: 's2' }, 0)?.kill?.scope).toBe('session');
  });

  it("a session kill stops its own customer's calls only: session ids are not unique across customers", () => {
    // under the `trace` rule the session id is the caller's trace id, which any client may send
    const store = new DirectiveStore();
    store.apply([{ ...kill, scope: 'session', id: 'trace-abc', customer: 'initech' }], 0);
    const other = { customer: 'globex', agent: 'bot', sessionId: 'trace-abc', tool: 'search' };
    expect(store.check(other, 0)).toBeUndefined();
    expect(store.check(other, 0, 'session')).toBeUndefined();
    expect(store.check({ ...other, customer: undefined }, 0)).toBeUndefined();
    const own = store.check({ ...other, customer: 'initech' }, 0);
    expect(own?.kill?.customer).toBe('initech');
    expect(own?.refusal?.message).toContain('initech');
    // a resume lifts that customer's session only
    store.apply([{ ...kill, scope: 'session', id: 'trace-abc', customer: 'globex', action: 'resume' }], 0);
    expect(store.check({ ...other, customer: 'initech' }, 0)?.kill?.customer).toBe('initech');
  });

  it('reports a change once, however often the processor repeats the state', () => {
    const store = new DirectiveStore();
    expect(store.apply([kill], 0)).toEqual([kill]);
    expect(store.apply([kill, kill], 0)).toEqual([]);
    const resume: Directive = { ...kill, action: 'resume', reason: 'operator:alice' };
    expect(store.apply([resume], 0)).toEqual([resume]);
    expect(store.apply([resume], 0)).toEqual([]);
    expect(store.check(subject, 0)).toBeUndefined();
  });

  it('throttle: a token bucket at the directive rate, with the wait in the refusal', () => {
    const store = new DirectiveStore();
    store.apply([{ ...throttle, ratePerSecond: 2 }], 1000);
    expect(store.check(subject, 1000)).toBeUndefined();
    expect(store.check(subject, 1000)).toBeUndefined();
    const refused = store.check(subject, 1000)?.refusal as TollgateRefusal;
    expect(refused.code).toBe(REFUSALS.throttled.code);
    expect(refused.data.tollgate).toMatchObject({
      refusal: 'throttled',
      retryAfterMs: 500,
      ratePerSecond: 2,
    });
    expect(store.check(subject, 1250)?.refusal?.data.tollgate.retryAfterMs).toBe(250);
    expect(store.check(subject, 1500)).toBeUndefined();
  });

  it('warn refuses nothing and is reported for the span; expired states lapse', () => {
    const store = new DirectiveStore();
    store.apply([{ ...kill, action: 'warn', untilUnixMs: 2000 }], 1000);
    expect(store.check(subject, 1500)).toEqual({ warnings: [expect.objectContaining({ action: 'warn' })] });
    expect(store.check(subject, 2500)).toBeUndefined();
  });

  it('a hook that declines a directive leaves it unenforced', () => {
    const store = new DirectiveStore();
    store.apply([kill], 0, () => false);
    expect(store.check(subject, 0)).toBeUndefined();
  });

  it('new sessions are refused by kills only', () => {
    const store = new DirectiveStore();
    store.apply([{ ...throttle, ratePerSecond: 1 }], 0);
    store.check(subject, 0);
    expect(store.check(subject, 0, 'session')).toBeUndefined();
    store.apply([kill], 0);
    expect(store.check(subject, 0, 'session')?.refusal?.message).toContain(
      'Session refused: customer "acme"',
    );
  });

  it('restored states stay provisional until confirmed, and are dropped if Tollgate does not confirm them', () => {
    const store = new DirectiveStore();
    store.apply([kill], 0, () => true, true);
    expect(store.hasProvisional('acme')).toBe(true);
    expect(store.hasProvisional('globex')).toBe(false);
    store.apply([kill], 0);
    expect(store.hasProvisional('acme')).toBe(false);
    store.apply([{ ...kill, customer: 'globex', id: 'globex' }], 0, () => true, true);
    expect(store.dropUnconfirmed().map((d) => d.customer)).toEqual(['globex']);
  });
});

describe('refusal errors', () => {
  it('carry a stable code, a readable message and machine-readable data', () => {
    const r = new TollgateRefusal('killed', kill);
    expect(r.code).toBe(-32050);
    expect(r.message).toBe(
      'Tool call refused: customer "acme" is stopped by Tollgate (margin_guard:kill); the tool was not run.',
    );
    expect(r.data.tollgate).toEqual({
      refusal: 'killed',
      action: 'kill',
      scope: 'customer',
      id: 'acme',
      customer: 'acme',
      reason: 'margin_guard:kill',
      untilUnixMs: kill.untilUnixMs,
    });
  });
});

describe('state file', () => {
  it('keeps recent instances and states in force, merges what another process wrote', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tg-state-'));
    const file = join(dir, 's.json');
    const now = 1_800_000_000_000;
    writeState(file, { instances: [{ id: 'a', seenAtMs: now - 10 }], directives: [kill] }, now);
    writeState(
      file,
      {
        instances: [
          { id: 'b', seenAtMs: now },
          { id: 'old', seenAtMs: now - 4_000_000 },
        ],
        directives: [],
      },
      now,
    );
    expect(readState(file, now)).toEqual({
      instances: [
        { id: 'b', seenAtMs: now },
        { id: 'a', seenAtMs: now - 10 },
      ],
      directives: [],
    });
    expect(readState(join(dir, 'missing.json'), now)).toEqual({ instances: [], directives: [] });
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('configuration', () => {
  it('validates once and names every problem', () => {
    const { problems } = resolveConfig(
      { endpoint: 'ftp://x', exportIntervalMs: -1, format: 'xml' as 'json' },
      {},
    );
    expect(problems).toEqual([
      'endpoint is not an http(s) URL: ftp://x',
      'format must be protobuf or json (got xml)',
      'exportIntervalMs must be a positive integer (got -1); using 1000',
    ]);
  });

  it('reads the environment, appends /v1/traces, heartbeats always when directives come from elsewhere', () => {
    const { resolved } = resolveConfig(
      { stateFile: false },
      {
        TOLLGATE_OTLP_ENDPOINT: 'http://collector:4318',
        TOLLGATE_DIRECTIVES_ENDPOINT: 'http://tollgate:4318/',
        TOLLGATE_INGEST_KEY: 'k',
      },
    );
    expect(resolved.runtime?.exporter).toMatchObject({
      tracesUrl: 'http://collector:4318/v1/traces',
      directivesUrl: 'http://tollgate:4318/v1/traces',
      heartbeatAlways: true,
      headers: { authorization: 'Bearer k' },
    });
    expect(resolveConfig({}, {}).resolved.runtime).toBeUndefined();
    expect(Object.isFrozen(resolved)).toBe(true);
  });

  it('supported SDK versions and the package version', () => {
    const v1 = (v: string | undefined) => isSupportedSdkVersion('@modelcontextprotocol/sdk', v);
    const v2 = (v: string | undefined) => isSupportedSdkVersion('@modelcontextprotocol/server', v);
    expect(['1.12.0', '1.32.2'].map(v1)).toEqual([true, true]);
    expect(['1.11.4', '2.0.0', '1.13.0-rc.1', undefined].map(v1)).toEqual([false, false, false, false]);
    expect(['2.0.0', '2.4.0', '2.17.3'].map(v2)).toEqual([true, true, true]);
    expect(['1.32.2', '3.0.0', '2.0.0-beta.5', 'x', undefined].map(v2)).toEqual([
      false,
      false,
      false,
      false,
      false,
    ]);
    expect(isSupportedSdkVersion('@modelcontextprotocol/client', '2.4.0')).toBe(false);
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
    expect([pkg.name, pkg.version]).toEqual([PACKAGE_NAME, PACKAGE_VERSION]);
  });
});
