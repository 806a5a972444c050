import { describe, expect, it } from 'vitest';
import { attributeCopier, copyAttributes } from '../src/billing-span.js';

describe('attributeCopier', () => {
  const base = {
    'mcp.method.name': 'tools/call',
    'tollgate.transport': 'stdio',
    'tollgate.customer': 'acme',
  };

  it("copies the session's record and adds the call's values, in order, into a new object", () => {
    const copy = attributeCopier(base, ['gen_ai.tool.name', 'jsonrpc.request.id']);
    const a = copy(base, 'search', '7');
    expect(Object.entries(a)).toEqual([
      ...Object.entries(base),
      ['gen_ai.tool.name', 'search'],
      ['jsonrpc.request.id', '7'],
    ]);
    expect(a).not.toBe(base);
    a['error.type'] = 'tool_error'; // keys added later land on the copy only
    expect(base).not.toHaveProperty('error.type');
    expect(copy({ ...base, 'tollgate.customer': 'other' }, 'x', '8')['tollgate.customer']).toBe('other');
  });

  it('is one function per key list', () => {
    expect(attributeCopier(base, ['gen_ai.tool.name'])).toBe(
      attributeCopier({ ...base }, ['gen_ai.tool.name']),
    );
    expect(attributeCopier(base, ['gen_ai.tool.name'])).not.toBe(
      attributeCopier(base, ['jsonrpc.request.id']),
    );
  });

  it('copies a record whose keys a literal cannot hold (`__proto__`, a repeated key) key by key', () => {
    const odd = JSON.parse('{"__proto__": "p", "k": 1}') as Record<string, string | number>;
    const a = attributeCopier(odd, ['x'])(odd, 'y');
    expect(Object.getPrototypeOf(a)).toBe(Object.prototype);
    expect(Object.entries(a)).toEqual(Object.entries({ ...copyAttributes(odd), x: 'y' }));
    const b = attributeCopier(base, ['tollgate.customer'])(base, 'late');
    expect(b['tollgate.customer']).toBe('late');
  });

  it('copies key by key where code generation from strings is disallowed', () => {
    const real = globalThis.Function;
    // what V8 throws under --disallow-code-generation-from-strings (or a CSP without unsafe-eval)
    globalThis.Function = function disallowed() {
      throw new EvalError('Code generation from strings disallowed for this context');
    } as unknown as FunctionConstructor;
    try {
      const record = { 'tollgate.customer': 'acme', 'only.here': 1 };
      const copy = attributeCopier(record, ['gen_ai.tool.name']);
      expect(Object.entries(copy(record, 'search'))).toEqual([
        ['tollgate.customer', 'acme'],
        ['only.here', 1],
        ['gen_ai.tool.name', 'search'],
      ]);
    } finally {
      globalThis.Function = real;
    }
  });
});
