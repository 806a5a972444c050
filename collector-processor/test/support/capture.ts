import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface Captured {
  contentType: string;
  body: Buffer;
  headers: Record<string, string | string[] | undefined>;
}

/** A plain HTTP endpoint that records the bodies POSTed to it (to capture real exporter bytes). */
export async function captureServer(): Promise<{
  url: string;
  bodies: Captured[];
  close(): Promise<void>;
}> {
  const bodies: Captured[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const contentType = String(req.headers['content-type'] ?? '');
      bodies.push({ contentType, body: Buffer.concat(chunks), headers: req.headers });
      res.writeHead(200, { 'content-type': contentType });
      res.end(contentType.includes('json') ? '{}' : Buffer.alloc(0));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    bodies,
    close: () => new Promise((r) => server.close(() => r())),
  };
}
