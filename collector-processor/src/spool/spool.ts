import {
  existsSync,
  constants as fsConstants,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  truncateSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';

/**
 * The durable spool (write-ahead log) that makes an acknowledged export impossible to lose.
 *
 * Order of operations, per export: (1) the accepted calls are appended here and made durable, (2) they are
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
 *
 * Durability: with `fsync`, segments are opened with O_DSYNC, so each write returns once its bytes and the
 * file's new size are on disk (what a write followed by fdatasync gives) in one call on libuv's pool: the
 * export's main-thread work (decoding its body, when the record is written before that) runs meanwhile,
 * instead of the fdatasync waiting for the main thread to queue it after the write came back. Where the
 * platform has no O_DSYNC (Windows), each write is followed by fdatasync instead.
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
  /** The one customer the ingest key was bound to at the time: calls naming another were rejected. */
  customer?: string | undefined;
  format: PayloadFormat;
  payload: Buffer;
  /**
   * Written before the body was decoded (a large export's write overlaps its decoding). Such a record may
   * hold a body that was refused as undecodable, or that holds no billable call, when the process stopped
   * before the record's abandon marker: the replay drops it (it was never acknowledged) instead of keeping it.
   */
  early?: true;
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
  bufs: Buffer[];
  /** An accepted record's id: no longer tracked when its write fails (it is not in the segment). */
  rid: string | undefined;
  resolve: () => void;
  reject: (err: Error) => void;
}

const SEGMENT_RE = /^(\d{8})\.wal$/;

const FRAME_HEADER = 10; // u32 length + u32 crc32 + u16 header length
/** Writes that return once on disk; undefined on Windows (fdatasync after each write there). */
const O_DSYNC: number | undefined = fsConstants.O_DSYNC;

/**
 * A record's bytes: the frame and header in one buffer, the payload (a request body, up to megabytes) as
 * the buffer it came in, not copied; the checksum runs over both.
 */
function encodeRecord(rec: SpoolRecord): Buffer[] {
  const { payload, ...header } = rec as SpoolRecord & { payload?: Buffer };
  const json = JSON.stringify(header);
  const jsonLength = Buffer.byteLength(json);
  const head = Buffer.allocUnsafe(FRAME_HEADER + jsonLength);
  head.write(json, FRAME_HEADER);
  head.writeUInt16LE(jsonLength, 8);
  const crcOfHead = crc32(head.subarray(8));
  head.writeUInt32LE(jsonLength + (payload?.length ?? 0) + 2, 0);
  if (!payload?.length) {
    head.writeUInt32LE(crcOfHead, 4);
    return [head];
  }
  head.writeUInt32LE(crc32(payload, crcOfHead), 4);
  return [head, payload];
}

/** Writes all of `bufs` at the end of the file (a write may take fewer bytes than asked: it goes on). */
export async function writeAll(handle: FileHandle, bufs: Buffer[]): Promise<number> {
  let total = 0;
  for (const b of bufs) total += b.length;
  let rest = bufs;
  for (let left = total; left > 0; ) {
    let n = (await handle.writev(rest)).bytesWritten;
    left -= n;
    if (left === 0) break;
    const next: Buffer[] = [];
    for (const b of rest) {
      if (n >= b.length) n -= b.length;
      else {
        next.push(n ? b.subarray(n) : b);
        n = 0;
      }
    }
    rest = next;
  }
  return total;
}

const RECORD_TYPES = new Set<unknown>(['a', 'i', 'd', 'x']);

/** The record at `pos` of `buf`, and where it ends; undefined when no whole, intact record starts there. */
function recordAt(buf: Buffer, pos: number): { rec: SpoolRecord; end: number } | undefined {
  if (pos + FRAME_HEADER > buf.length) return undefined;
  const len = buf.readUInt32LE(pos);
  const end = pos + 8 + len;
  if (len < 2 || end > buf.length) return undefined;
  const headerLen = buf.readUInt16LE(pos + 8);
  if (FRAME_HEADER + headerLen > 8 + len || buf[pos + FRAME_HEADER] !== 0x7b) return undefined;
  if (crc32(buf.subarray(pos + 8, end)) !== buf.readUInt32LE(pos + 4)) return undefined;
  let header: SpoolRecord;
  try {
    header = JSON.parse(
      buf.subarray(pos + FRAME_HEADER, pos + FRAME_HEADER + headerLen).toString('utf8'),
    ) as SpoolRecord;
  } catch {
    return undefined;
  }
  if (header === null || typeof header !== 'object' || !RECORD_TYPES.has(header.t)) return undefined;
  if (header.t === 'a') header.payload = Buffer.from(buf.subarray(pos + FRAME_HEADER + headerLen, end));
  return { rec: header, end };
}

/**
 * Decodes the records of a segment. A record whose checksum fails but whose length is sound — its end is
 * inside the file and an intact record (or the file's end) follows it — was damaged on disk: it is skipped,
 * and reading goes on after it. `damagedBytes` counts what was skipped. Reading stops at anything else: a
 * torn tail (a crash mid-write, never acknowledged), or damage to a record's length. `validBytes` is where the
 * last record read ends. Reading never looks for records inside a damaged one: its payload is a sender's
 * request body, which may hold bytes shaped like a record (and looking at every `{` for one was quadratic).
 * Before, one damaged byte in the middle of a segment ended its reading there: every acknowledged record after
 * it was lost.
 */
function decodeRecords(buf: Buffer): { records: SpoolRecord[]; validBytes: number; damagedBytes: number } {
  const records: SpoolRecord[] = [];
  let pos = 0;
  let damagedBytes = 0;
  while (pos + FRAME_HEADER <= buf.length) {
    const r = recordAt(buf, pos);
    if (r) {
      records.push(r.rec);
      pos = r.end;
      continue;
    }
    const end = pos + 8 + buf.readUInt32LE(pos);
    if (end <= pos + 8 || end > buf.length || (end < buf.length && !recordAt(buf, end))) break;
    damagedBytes += end - pos;
    pos = end;
  }
  return { records, validBytes: pos, damagedBytes };
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
  /** Deaths of the process during replays, per record (see ReplayGuard). */
  readonly replayGuard: ReplayGuard;

  private constructor(private readonly opts: SpoolOptions) {
    this.replayGuard = replayGuardOf(opts.dir);
  }

  static async open(opts: SpoolOptions): Promise<{ spool: Spool; recovered: Recovered }> {
    mkdirSync(opts.dir, { recursive: true });
    const spool = new Spool(opts);
    // after every segment there was (a damaged one set aside keeps its number)
    const last = Math.max(0, ...spool.segments());
    const recovered = spool.recover();
    spool.segment = last + 1;
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
    const damaged = new Set<number>();
    const segs = this.segments();
    segs.forEach((seg, i) => {
      const buf = readFileSync(this.path(seg));
      const { records, validBytes, damagedBytes } = decodeRecords(buf);
      if (damagedBytes > 0) {
        // damage with intact records after it (a disk's, not a crash's): what is readable is kept, and the
        // file too (renamed `.damaged` rather than deleted once nothing in it is pending)
        corruptSegments++;
        damaged.add(seg);
      } else if (validBytes < buf.length && i === segs.length - 1) {
        // A torn tail of the newest segment was written but never fsynced, so never acknowledged: cut off.
        truncateSync(this.path(seg), validBytes);
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
    // Segments holding nothing pending can go right away; a damaged one is kept aside for its operator.
    for (const seg of segs) {
      if (this.live.has(seg)) continue;
      if (damaged.has(seg)) {
        const aside = `${this.path(seg)}.damaged`;
        renameSync(this.path(seg), existsSync(aside) ? `${this.path(seg)}.${Date.now()}.damaged` : aside);
      } else unlinkSync(this.path(seg));
    }
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
    const { O_APPEND, O_CREAT, O_WRONLY } = fsConstants;
    this.handle = await open(
      this.path(this.segment),
      this.opts.fsync && O_DSYNC ? O_WRONLY | O_CREAT | O_APPEND | O_DSYNC : 'a',
    );
    this.segmentSize = 0;
  }

  /** Appends an accepted export; resolves once it is durable (on disk when `fsync` is on). */
  appendAccepted(rec: AcceptedRecord): Promise<void> {
    this.track(rec.rid, this.segment);
    return this.enqueue(rec, rec.rid);
  }

  /** Appends a landing intent; resolves once durable. Must precede the insert it describes. */
  appendIntent(rec: IntentRecord): Promise<void> {
    return this.enqueue(rec);
  }

  /**
   * Marks a block landed and releases its records. It need not be durable (losing it only re-sends a
   * deduplicated block); it is, like every write, when `fsync` is on: one per landed block.
   */
  async appendDone(bid: string, rids: readonly string[]): Promise<void> {
    await this.enqueue({ t: 'd', bid });
    this.release(rids);
  }

  /** Gives up on an accepted record that was answered with an error (the sender will retry it). */
  async abandon(rid: string): Promise<void> {
    await this.enqueue({ t: 'x', rid });
    this.release([rid]);
  }

  get pendingRecords(): number {
    return this.segmentOf.size;
  }

  private release(rids: readonly string[]): void {
    for (const rid of rids) this.untrack(rid);
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

  private untrack(rid: string): void {
    const seg = this.segmentOf.get(rid);
    if (seg === undefined) return;
    this.segmentOf.delete(rid);
    this.live.get(seg)?.delete(rid);
  }

  private enqueue(rec: SpoolRecord, rid?: string): Promise<void> {
    if (this.closed) {
      if (rid !== undefined) this.untrack(rid);
      return Promise.reject(new Error('spool is closed'));
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ bufs: encodeRecord(rec), rid, resolve, reject });
      if (!this.writing) void this.drain();
    });
  }

  /**
   * Group commit: everything queued while the previous write was in flight goes in one write (O_DSYNC: on
   * disk when it returns; without `fsync`, a plain write).
   */
  private async drain(): Promise<void> {
    this.writing = true;
    while (this.queue.length) {
      const batch = this.queue;
      this.queue = [];
      try {
        const bufs = batch.length === 1 ? (batch[0] as Pending).bufs : batch.flatMap((p) => p.bufs);
        const handle = this.handle as FileHandle;
        let written: number;
        try {
          written = await writeAll(handle, bufs);
          if (this.opts.fsync && !O_DSYNC) await handle.datasync();
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
        this.segmentSize += written;
        for (const p of batch) p.resolve();
        if (this.segmentSize >= this.opts.segmentBytes) {
          this.segment++;
          await this.openSegment();
        }
      } catch (err) {
        for (const p of batch) {
          if (p.rid !== undefined) this.untrack(p.rid);
          p.reject(err as Error);
        }
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

/** Starts that died while replaying the same record, after which the record is set aside. */
export const REPLAY_CRASHES_TO_SET_ASIDE = 3;

/**
 * Deaths of the process during a record's replay, counted in a small file beside the segments (written before
 * and after each record is replayed). A record whose replay kills the process — an abort no handler can catch,
 * such as V8 out of memory — would otherwise be replayed first at every start: the process would die again,
 * and nothing after it, not even new exports, would ever land. After REPLAY_CRASHES_TO_SET_ASIDE starts that
 * died in the same record, it is set aside: kept in its segment (nothing acknowledged is deleted), reported at
 * every start, and not replayed until an operator removes it from the file (docs/operations.md).
 */
export class ReplayGuard {
  /** Record id → starts that died while it was being replayed. */
  private readonly crashes: Record<string, number>;
  private readonly inProgress = new Set<string>();

  constructor(private readonly file: string) {
    let saved: { crashes?: Record<string, number>; inProgress?: string[] } = {};
    try {
      saved = JSON.parse(readFileSync(file, 'utf8')) as typeof saved;
    } catch {
      // none yet, or torn by a death while it was written: nothing known
    }
    this.crashes = { ...(saved.crashes ?? {}) };
    // what the previous process was replaying when it stopped: it died there (a clean stop ends every replay)
    for (const rid of saved.inProgress ?? []) this.crashes[rid] = (this.crashes[rid] ?? 0) + 1;
    this.save();
  }

  /** Records set aside (their replay killed the process too often). */
  setAside(): string[] {
    return Object.keys(this.crashes).filter((rid) => (this.crashes[rid] ?? 0) >= REPLAY_CRASHES_TO_SET_ASIDE);
  }

  /** Before a record's replay: false when it is set aside (do not replay it). */
  begin(rid: string): boolean {
    if ((this.crashes[rid] ?? 0) >= REPLAY_CRASHES_TO_SET_ASIDE) return false;
    this.inProgress.add(rid);
    this.save();
    return true;
  }

  /** After a record's replay, however it ended (short of the process dying). */
  end(rid: string): void {
    this.inProgress.delete(rid);
    delete this.crashes[rid];
    this.save();
  }

  /**
   * After a part of a record's reading (its decoding, read ahead of its replay) that went through: no longer in
   * progress, its count kept. Only `end`, after the whole reading, clears it: a record that dies later in its
   * reading must still be set aside.
   */
  leave(rid: string): void {
    this.inProgress.delete(rid);
    this.save();
  }

  private save(): void {
    const state = JSON.stringify({ crashes: this.crashes, inProgress: [...this.inProgress] });
    writeFileSync(this.file, state);
  }
}

/** The replay guard of a spool directory. */
export function replayGuardOf(dir: string): ReplayGuard {
  return new ReplayGuard(join(dir, 'replay-guard.json'));
}
