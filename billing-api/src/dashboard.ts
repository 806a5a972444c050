import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { FastifyInstance } from 'fastify';

/** The dashboard's own files (no build step), next to `src/` and `dist/`. */
const DASHBOARD_DIR = new URL('../dashboard/', import.meta.url);

/** chart.js's UMD build, served from node_modules (no CDN: the page must work offline). */
function chartJsPath(): string {
  const main = createRequire(import.meta.url).resolve('chart.js');
  return join(dirname(main), 'chart.umd.min.js');
}

const FILES: Record<string, { path: () => string; type: string }> = {
  '/dashboard': {
    path: () => new URL('index.html', DASHBOARD_DIR).pathname,
    type: 'text/html; charset=utf-8',
  },
  '/dashboard/app.js': {
    path: () => new URL('app.js', DASHBOARD_DIR).pathname,
    type: 'text/javascript; charset=utf-8',
  },
  '/dashboard/credits-card.js': {
    path: () => new URL('credits-card.js', DASHBOARD_DIR).pathname,
    type: 'text/javascript; charset=utf-8',
  },
  '/dashboard/app.css': {
    path: () => new URL('app.css', DASHBOARD_DIR).pathname,
    type: 'text/css; charset=utf-8',
  },
  '/dashboard/vendor/chart.umd.min.js': { path: chartJsPath, type: 'text/javascript; charset=utf-8' },
};

/** Only our own origin; no inline scripts. Chart.js sets canvas sizes through inline styles. */
const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
  "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/**
 * `/dashboard`: a static page and its script (read once, at registration). The page holds no data: it
 * calls the analytics API with the API key the user types (kept in sessionStorage, sent as Bearer).
 */
export function registerDashboard(app: FastifyInstance): void {
  for (const [route, file] of Object.entries(FILES)) {
    const body = readFileSync(file.path());
    app.get(route, { schema: { hide: true } }, async (_req, reply) =>
      reply
        .type(file.type)
        .header('content-security-policy', CSP)
        .header('x-content-type-options', 'nosniff')
        .header('referrer-policy', 'no-referrer')
        .header('cache-control', 'no-cache')
        .send(body),
    );
  }
}
