import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { settingsTableMarkdown } from '../src/config/settings.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const DOCS = join(ROOT, 'docs');
const TABLE_START = '<!-- settings-table:start -->';
const TABLE_END = '<!-- settings-table:end -->';

/** The text between the settings-table markers of docs/configuration.md. */
function documentedSettingsTable(): string {
  const text = readFileSync(join(DOCS, 'configuration.md'), 'utf8');
  const start = text.indexOf(TABLE_START);
  const end = text.indexOf(TABLE_END);
  if (start < 0 || end < start) throw new Error(`docs/configuration.md lacks ${TABLE_START} … ${TABLE_END}`);
  return text.slice(start + TABLE_START.length, end).trim();
}

/** Markdown without fenced code blocks and inline code, where bracket-paren text is not a link. */
function withoutCode(markdown: string): string {
  return markdown.replace(/^(```|~~~)[^\n]*\n[\s\S]*?^\1[^\n]*$/gm, '').replace(/`[^`\n]*`/g, '');
}

/** Relative link targets of a Markdown file (inline links and reference definitions), without #fragments. */
function relativeLinks(markdown: string): string[] {
  const text = withoutCode(markdown);
  const targets = [
    ...[...text.matchAll(/\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)].map((m) => m[1] as string),
    ...[...text.matchAll(/^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+"[^"]*")?\s*$/gm)].map((m) => m[1] as string),
  ];
  return targets
    .filter((t) => !/^[a-z][a-z0-9+.-]*:/i.test(t) && !t.startsWith('#'))
    .map((t) => decodeURI(t.split('#')[0] as string));
}

const markdownFiles = [
  join(ROOT, 'README.md'),
  ...readdirSync(DOCS)
    .filter((f) => f.endsWith('.md'))
    .sort()
    .map((f) => join(DOCS, f)),
];

describe('docs', () => {
  it('docs/configuration.md embeds exactly the settings table of settings.ts', () => {
    expect(documentedSettingsTable()).toBe(settingsTableMarkdown());
  });

  it.each(markdownFiles.map((f) => [f.slice(ROOT.length), f]))(
    'every relative link in %s points to an existing file',
    (_name, file) => {
      const missing = relativeLinks(readFileSync(file, 'utf8')).filter(
        (target) => !existsSync(resolve(dirname(file), target)),
      );
      expect(missing).toEqual([]);
    },
  );

  it('the link finder sees inline links and reference definitions, not code', () => {
    const md = [
      'See [ops](operations.md#exactly-once), [web](https://example.com) and [top](#top).',
      '`[not](a-link.md)`',
      '```',
      '[also not](inside-a-fence.md)',
      '```',
      '[ref]: ../README.md "title"',
    ].join('\n');
    expect(relativeLinks(md)).toEqual(['operations.md', '../README.md']);
  });
});
