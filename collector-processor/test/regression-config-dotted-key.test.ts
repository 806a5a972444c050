import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config/settings.js';
import { tempDir } from './support/harness.js';

/**
 * docs/configuration.md: settings must be nested, and a quoted dotted key such as
 * `settings: { "otlp.port": 4318 }` stops the start with an error naming it. The loader took the dotted
 * key for the known setting `otlp.port` when it checked for unknown keys, but read values by nesting, so
 * the entry was neither refused nor used: `tollgate config` showed the default port and exited 0.
 */

function load(yaml: string) {
  const file = join(tempDir(), 'tollgate.yaml');
  writeFileSync(file, yaml);
  return () => loadConfig({ '--config': file }, {});
}

describe('config file: settings are nested by their dots', () => {
  it('a quoted dotted key stops the start, naming it', () => {
    const f = load('settings: { "otlp.port": 4999 }\n');
    expect(f).toThrow(ConfigError);
    expect(f).toThrow(/unknown setting\(s\) settings\."otlp\.port"/);
  });

  it('a dotted key below a nested one stops the start too', () => {
    const f = load('settings: { clickhouse: { "chdb.insert": inline } }\n');
    expect(f).toThrow(/unknown setting\(s\) settings\.clickhouse\."chdb\.insert"/);
  });

  it('the nested form is read', () => {
    const config = load('settings: { otlp: { port: 4999 }, clickhouse: { chdbInsert: inline } }\n')();
    expect(config.settings['otlp.port']).toBe(4999);
    expect(config.settings['clickhouse.chdbInsert']).toBe('inline');
  });

  it('a misspelt nested key is still named', () => {
    expect(load('settings: { otlp: { prot: 4999 } }\n')).toThrow(/unknown setting\(s\) settings\.otlp\.prot/);
  });
});
