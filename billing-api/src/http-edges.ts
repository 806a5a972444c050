import {
  createServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
  STATUS_CODES,
} from 'node:http';
import type { Socket } from 'node:net';
import type { ConnectionError, FastifyServerFactory, RawServerDefault } from 'fastify';

/**
 * What both HTTP ports (the OTLP receiver and the API) do with requests refused at the edge, so that the
 * client always reads its status instead of a reset connection:
 *
 * - A refused request whose body is still arriving (too large, no key, no route…) is read and discarded up
 *   to {@link DRAIN_LIMIT}, then answered with `Connection: close`. Closing a socket that still has unread
 *   bytes makes the kernel send a reset, and a client that writes its whole body before reading (Python's
 *   http.client, many SDKs) then sees EPIPE / ECONNRESET — which an OTLP exporter retries forever.
 * - A request line over {@link MAX_URL_BYTES} → 414, a head over {@link MAX_HEADER_BYTES} → 431, other
 *   unparseable HTTP → 400, as `{"error":{"code","message"}}` that never echoes the path; the connection
 *   lingers (reading and discarding, within the same bound) until the client has stopped sending.
 *
 * nginx calls the same idea lingering close (`lingering_close`, `lingering_time`).
 */

/** Largest request head (request line and headers) Node parses; Node's own default, named here. */
export const MAX_HEADER_BYTES = 16 * 1024;
/** Longest request target (path and query string); longer → 414. */
export const MAX_URL_BYTES = 8 * 1024;
/** How much of a refused request is read and discarded before the connection is closed anyway. */
export const DRAIN_LIMIT = { bytes: 128 * 1024 * 1024, ms: 30_000 } as const;

export interface EdgeCodes {
  /** Error codes of this port's catalogue, e.g. `API_URI_TOO_LONG` / `TG_URI_TOO_LONG`. */
  uriTooLong: string;
  headersTooLarge: string;
  badRequest: string;
  timeout: string;
}

export const EDGE_MESSAGES = {
  uriTooLong: `the request target (path and query) exceeds ${MAX_URL_BYTES} bytes`,
  headersTooLarge: `the request line and headers exceed ${MAX_HEADER_BYTES} bytes`,
  badRequest: 'the request is not valid HTTP/1.1',
  timeout: 'the request was not received in time',
} as const;

/**
 * Reads and discards what is left of a request body, up to `limit`. Resolves true when the whole request
 * was read (the connection could be reused), false when the bound, the clock or the client stopped it.
 */
export function drainRequest(raw: IncomingMessage, limit: { bytes: number; ms: number } = DRAIN_LIMIT) {
  if (raw.complete || raw.readableEnded) return Promise.resolve(true);
  if (raw.destroyed) return Promise.resolve(false);
  if (Number(raw.headers['content-length']) > limit.bytes) return Promise.resolve(false);
  return new Promise<boolean>((resolve) => {
    let seen = 0;
    const finish = (whole: boolean) => {
      clearTimeout(timer);
      raw.off('data', onData);
      raw.off('end', onEnd);
      raw.off('close', onClose);
      raw.off('error', onClose);
      resolve(whole);
    };
    const onData = (chunk: Buffer) => {
      seen += chunk.length;
      if (seen > limit.bytes) finish(false);
    };
    const onEnd = () => finish(true);
    const onClose = () => finish(raw.complete);
    const timer = setTimeout(() => finish(false), limit.ms);
    timer.unref();
    raw.on('data', onData);
    raw.on('end', onEnd);
    raw.on('close', onClose);
    raw.on('error', onClose);
    raw.resume();
  });
}

function errorBody(code: string, message: string): string {
  return JSON.stringify({ error: { code, message } });
}

/** A complete response written straight to the socket (no ServerResponse exists for a head Node refused). */
function rawResponse(status: number, code: string, message: string): string {
  const body = errorBody(code, message);
  return (
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\ncontent-type: application/json; charset=utf-8\r\n` +
    `content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`
  );
}

/** The request line is the part over the bound when it has not ended, or ended past MAX_URL_BYTES. */
function requestLineTooLong(packet: Buffer | undefined): boolean {
  if (!packet) return false;
  const head = packet.subarray(0, MAX_HEADER_BYTES + 64).toString('latin1');
  if (!/^[A-Z]{3,10} /.test(head)) return false; // a later piece: assume headers
  const eol = head.indexOf('\r\n');
  return eol < 0 || eol > MAX_URL_BYTES;
}

const lingering = new WeakMap<Socket, { seen: number }>();

/** Keeps reading (the parser discards) until the client ends its side, the bound, or the clock. */
function lingerThenClose(socket: Socket): void {
  lingering.set(socket, { seen: 0 });
  socket.end();
  const timer = setTimeout(() => socket.destroy(), DRAIN_LIMIT.ms);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
}

/**
 * fastify's `clientErrorHandler`: answers a request Node's parser refused (head too large, bad HTTP,
 * timeout) in the port's error shape, then lingers so the answer is read.
 */
export function edgeClientErrorHandler(codes: EdgeCodes) {
  return (error: ConnectionError, socket: Socket): void => {
    // Node sets rawPacket to the Buffer it was parsing (fastify's type says otherwise).
    const packet = (error as unknown as { rawPacket?: Buffer }).rawPacket;
    const linger = lingering.get(socket);
    if (linger) {
      // The parser stays in its error state and reports each later chunk: count what is discarded.
      linger.seen += packet?.length ?? 0;
      if (linger.seen > DRAIN_LIMIT.bytes) socket.destroy();
      return;
    }
    if (error.code === 'ECONNRESET' || socket.destroyed) return;
    let status = 400;
    let kind: keyof EdgeCodes = 'badRequest';
    if (error.code === 'HPE_HEADER_OVERFLOW') {
      [status, kind] = requestLineTooLong(packet) ? [414, 'uriTooLong'] : [431, 'headersTooLarge'];
    } else if (error.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
      [status, kind] = [408, 'timeout'];
    }
    if (socket.writable) socket.write(rawResponse(status, codes[kind], EDGE_MESSAGES[kind]));
    if (kind === 'timeout') socket.destroy();
    else lingerThenClose(socket);
  };
}

/**
 * fastify's `serverFactory`: a Node HTTP server with the named head bound that answers a request target
 * over MAX_URL_BYTES with 414 before any route sees it (so no route or hook ever echoes it).
 */
export function edgeServerFactory(codes: EdgeCodes): FastifyServerFactory<RawServerDefault> {
  return (
    handler: (req: IncomingMessage, res: ServerResponse) => void,
    opts: Record<string, unknown>,
  ): Server => {
    const server = createServer({ maxHeaderSize: MAX_HEADER_BYTES }, (req, res) => {
      if ((req.url ?? '').length <= MAX_URL_BYTES) return handler(req, res);
      void drainRequest(req).then(() => {
        const body = errorBody(codes.uriTooLong, EDGE_MESSAGES.uriTooLong);
        res.writeHead(414, {
          'content-type': 'application/json; charset=utf-8',
          'content-length': Buffer.byteLength(body),
          connection: 'close',
        });
        res.end(body);
      });
    });
    // What fastify sets on a server it creates itself (lib/server.js getServerInstance).
    if (typeof opts.keepAliveTimeout === 'number') server.keepAliveTimeout = opts.keepAliveTimeout;
    if (typeof opts.requestTimeout === 'number') server.requestTimeout = opts.requestTimeout;
    if (typeof opts.connectionTimeout === 'number') server.setTimeout(opts.connectionTimeout);
    return server;
  };
}
