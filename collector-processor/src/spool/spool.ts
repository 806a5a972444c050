import { mkdirSync, readdirSync, readFileSync, truncateSync, unlinkSync } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';

/**
 * The durable spool (write-ahead log) that makes an acknowledged export impossible to lose.
 *
 * Order of operations, per export: (1) the accepted calls are appended here and fsynced, (2) they are
 * claimed in Redis under this record's id, (3) rated and queued for ClickHouse, (4) acknowledged.
 * The lander then writes an intent (block id + record ids, fsynced), inserts the block into ClickHouse
 * with that block id as insert_deduplication_token, and appends a done marker. After a crash, records
 * without a done marker are replayed: Redis hands back the claims made under their id (so nothing is
 * billed twice or dropped), and unfinished intents are re-sent with the same token (so ClickHouse keeps
 * one copy).
 *
 * Format: segment files `NNNNNNNN.wal` of binary records `[u32 length][u32 crc32][u16 header length]
 * [header JSON][payload]`. An accepted record's payload is the request body as decoded bytes (OTLP
 * protobuf or JSON) or the JSON of validated usage events: copying the body is far cheaper than
 * serialising the calls, and replay re-runs the same deterministic selection. A torn or corrupt tail
 * (crash mid-write, never acknowledged) is cut off on open.
 */
export type PayloadFormat = 'otlp-protobuf' | 'otlp-json' | 'calls-json';

export interface AcceptedRecord {
  t: 'a';
  rid: string;
  product: string;
  planVersion: string;
  receivedAtMs: number;
  /** The ingest key's default customer at the time (selection depends on it). */
  defaultCustomer?: string | undefined;
  format: PayloadFormat;
  payload: Buffer;
}
export interface IntentRecord {
  t: 'i';
  bid: string;
  rids: string[];
}
interface DoneRecord {
  t: 'd';
  bid: string;
}
interface AbandonRecord {
  t: 'x';
  rid: string;
}
type SpoolRecord = AcceptedRecord | IntentRecord | DoneRecord | AbandonRecord;

export interface SpoolOptions {
  dir: string;
  fsync: boolean;
  segmentBytes: number;
}

export interface Recovered {
  /** Accepted records not yet landed, in write order. */
  accepted: AcceptedRecord[];
  /** Blocks whose insert may or may not have happened: re-send exactly these with the same token. */
  intents: IntentRecord[];
  /** Older segments whose records stopped early at a corrupt record (the rest of that segment is lost). */
  corruptSegments: number;
}

interface Pending {
  buf: Buffer;
  sync: boolean;
  resolve: () => void;
  reject: (err: Error) => void;
}

const SEGMENT_RE = /^(\d{8})\.wal$/;

const FRAME_HEADER = 10; // u32 length + u32 crc32 + u16 header length

function encodeRecord(rec: SpoolRecord): Buffer {
  const { payload, ...header } = rec as SpoolRecord & { payload?: Buffer };
  const json = Buffer.from(JSON.stringify(header));
  const body = payload ?? Buffer.alloc(0);
  const out = Buffer.allocUnsafe(FRAME_HEADER + json.length + body.length);
  out.writeUInt32LE(json.length + body.length + 2, 0);
  out.writeUInt16LE(json.length, 8);
  json.copy(out, FRAME_HEADER);
  body.copy(out, FRAME_HEADER + json.length);
  out.writeUInt32LE(crc32(out.subarray(8)), 4);
  return out;
}

/** Decodes the records of a segment; stops at the first torn or corrupt record and returns where. */
function decodeRecords(buf: Buffer): { records: SpoolRecord[]; validBytes: number } {
  const records: SpoolRecord[] = [];
  let pos = 0;
  while (pos + FRAME_HEADER <= buf.length) {
    const len = buf.readUInt32LE(pos);
    const end = pos + 8 + len;
    if (len < 2 || end > buf.length) break;
    if (crc32(buf.subarray(pos + 8, end)) !== buf.readUInt32LE(pos + 4)) break;
    const headerLen = buf.readUInt16LE(pos + 8);
    if (FRAME_HEADER + headerLen > 8 + len) break;
    let header: SpoolRecord;
    try {
      header = JSON.parse(
        buf.subarray(pos + FRAME_HEADER, pos + FRAME_HEADER + headerLen).toString('utf8'),
      ) as SpoolRecord;
    } catch {
      break;
    }
    if (header.t === 'a') header.payload = Buffer.from(buf.subarray(pos + FRAME_HEADER + headerLen, end));
    records.push(header);
    pos = end;
  }
  return { records, validBytes: pos };
}

/**
 * Reads a spool directory without changing it: how many accepted records are not landed yet. For
 * operators (and the crash test) to see what a restart will replay.
 */
export function inspectSpool(dir: string): { pendingRecords: number; openIntents: number } {
  const accepted = new Set<string>();
  const intents = new Map<string, string[]>();
  const segs = readdirSync(dir)
    .filter((f) => SEGMENT_RE.test(f))
    .sort();
  for (const f of segs) {
    for (const rec of decodeRecords(readFileSync(join(dir, f))).records) {
      if (rec.t === 'a') accepted.add(rec.rid);
      else if (rec.t === 'i') intents.set(rec.bid, rec.rids);
      else if (rec.t === 'd') {
        for (const rid of intents.get(rec.bid) ?? []) accepted.delete(rid);
        intents.delete(rec.bid);
      } else if (rec.t === 'x') accepted.delete(rec.rid);
    }
  }
  return { pendingRecords: accepted.size, openIntents: intents.size };
}

export class Spool {
  private handle: FileHandle | undefined;
  private segment = 0;
  private segmentSize = 0;
  private queue: Pending[] = [];
  private writing = false;
  private closed = false;
  /** Unlanded record ids per segment number; a segment is deleted once it and all older ones are empty. */
  private readonly live = new Map<number, Set<string>>();
  private readonly segmentOf = new Map<string, number>();

  private constructor(private readonly opts: SpoolOptions) {}

  static async open(opts: SpoolOptions): Promise<{ spool: Spool; recovered: Recovered }> {
    mkdirSync(opts.dir, { recursive: true });
    const spool = new Spool(opts);
    const recovered = spool.recover();
    spool.segment = Math.max(0, ...spool.live.keys()) + 1;
    await spool.openSegment();
    return { spool, recovered };
  }

  private segments(): number[] {
    return readdirSync(this.opts.dir)
      .map((f) => SEGMENT_RE.exec(f)?.[1])
      .filter((n): n is string => n !== undefined)
      .map(Number)
      .sort((a, b) => a - b);
  }

  private path(seg: number): string {
    return join(this.opts.dir, `${String(seg).padStart(8, '0')}.wal`);
  }

  private recover(): Recovered {
    const accepted = new Map<string, { rec: AcceptedRecord; seg: number }>();
    const intents = new Map<string, IntentRecord>();
    let corruptSegments = 0;
    const segs = this.segments();
    segs.forEach((seg, i) => {
      const buf = readFileSync(this.path(seg));
      const { records, validBytes } = decodeRecords(buf);
      if (validBytes < buf.length) {
        if (i === segs.length - 1) {
          // A torn or corrupt tail of the newest segment was written but never fsynced, so never
          // acknowledged: cut it off.
          truncateSync(this.path(seg), validBytes);
        } else corruptSegments++;
      }
      for (const rec of records) {
        if (rec.t === 'a') accepted.set(rec.rid, { rec, seg });
        else if (rec.t === 'i') intents.set(rec.bid, rec);
        else if (rec.t === 'd') {
          const intent = intents.get(rec.bid);
          if (intent) for (const rid of intent.rids) accepted.delete(rid);
          intents.delete(rec.bid);
        } else if (rec.t === 'x') accepted.delete(rec.rid);
      }
    });
    for (const { rec, seg } of accepted.values()) this.track(rec.rid, seg);
    // Segments holding nothing pending can go right away.
    for (const seg of segs) if (!this.live.has(seg)) unlinkSync(this.path(seg));
    const pendingIntents = [...intents.values()].filter((it) => it.rids.every((rid) => accepted.has(rid)));
    return { accepted: [...accepted.values()].map((v) => v.rec), intents: pendingIntents, corruptSegments };
  }

  private track(rid: string, seg: number): void {
    let set = this.live.get(seg);
    if (!set) {
      set = new Set();
      this.live.set(seg, set);
    }
    set.add(rid);
    this.segmentOf.set(rid, seg);
  }

  private async openSegment(): Promise<void> {
    await this.handle?.close();
    this.handle = await open(this.path(this.segment), 'a');
    this.segmentSize = 0;
  }

  /** Appends an accepted export; resolves once it is durable (fsynced when configured). */
  appendAccepted(rec: AcceptedRecord): Promise<void> {
    this.track(rec.rid, this.segment);
    return this.enqueue(rec, this.opts.fsync);
  }

  /** Appends a landing intent; resolves once durable. Must precede the insert it describes. */
  appendIntent(rec: IntentRecord): Promise<void> {
    return this.enqueue(rec, this.opts.fsync);
  }

  /** Marks a block landed and releases its records. Not fsynced: losing it only re-sends a deduplicated block. */
  async appendDone(bid: string, rids: readonly string[]): Promise<void> {
    await this.enqueue({ t: 'd', bid }, false);
    this.release(rids);
  }

  /** Gives up on an accepted record that was answered with an error (the sender will retry it). */
  async abandon(rid: string): Promise<void> {
    await this.enqueue({ t: 'x', rid }, false);
    this.release([rid]);
  }

  get pendingRecords(): number {
    return this.segmentOf.size;
  }

  private release(rids: readonly string[]): void {
    for (const rid of rids) {
      const seg = this.segmentOf.get(rid);
      if (seg === undefined) continue;
      this.segmentOf.delete(rid);
      this.live.get(seg)?.delete(rid);
    }
    for (const seg of [...this.live.keys()].sort((a, b) => a - b)) {
      if (seg === this.segment || (this.live.get(seg)?.size ?? 0) > 0) break;
      this.live.delete(seg);
      try {
        unlinkSync(this.path(seg));
      } catch {
        // already gone
      }
    }
  }

  private enqueue(rec: SpoolRecord, sync: boolean): Promise<void> {
    if (this.closed) return Promise.reject(new Error('spool is closed'));
    return new Promise((resolve, reject) => {
      this.queue.push({ buf: encodeRecord(rec), sync, resolve, reject });
      if (!this.writing) void this.drain();
    });
  }

  /** Group commit: everything queued while the previous write was in flight goes in one write + fsync. */
  private async drain(): Promise<void> {
    this.writing = true;
    while (this.queue.length) {
      const batch = this.queue;
      this.queue = [];
      try {
        const buf = batch.length === 1 ? (batch[0] as Pending).buf : Buffer.concat(batch.map((p) => p.buf));
        const handle = this.handle as FileHandle;
        try {
          for (let off = 0; off < buf.length; )
            off += (await handle.write(buf, off, buf.length - off)).bytesWritten;
          if (batch.some((p) => p.sync)) await handle.datasync();
        } catch (err) {
          // Cut the partial write off (or move to a new segment if even that fails), so no garbage sits
          // before records written later: recovery stops reading a segment at the first bad record.
          try {
            await handle.truncate(this.segmentSize);
          } catch {
            this.segment++;
            await this.openSegment();
          }
          throw err;
        }
        this.segmentSize += buf.length;
        for (const p of batch) p.resolve();
        if (this.segmentSize >= this.opts.segmentBytes) {
          this.segment++;
          await this.openSegment();
        }
      } catch (err) {
        for (const p of batch) p.reject(err as Error);
      }
    }
    this.writing = false;
  }

  async close(): Promise<void> {
    while (this.writing || this.queue.length) await new Promise((r) => setTimeout(r, 5));
    this.closed = true;
    await this.handle?.close();
    this.handle = undefined;
  }
}
