import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { buildApi, type ReadinessCheck } from '@tollgate/billing-api';
import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import { Cluster, Redis } from 'ioredis';
import pino, { type Logger } from 'pino';
import { PlanPricing } from './api-ports.js';
import { type Config, ConfigError, EMBEDDED_CONFIG, EMBEDDED_PLANS, SETTINGS } from './config/settings.js';
import { CreditLedger } from './credits/ledger.js';
import { CreditWallets } from './credits/wallets.js';
import { EnforcementAdmin } from './enforcement/admin.js';
import { RedisEnforcer } from './enforcement/enforcer.js';
import { EnforcementLog } from './enforcement/events.js';
import { LeaseService } from './enforcement/leases.js';
import { Forwarder, parseHeaders } from './forward/forwarder.js';
import { Lander } from './landing/lander.js';
import { defineClaim } from './meter/claim.js';
import { createMetrics, type Metrics } from './metrics.js';
import { startPeriodic } from './periodic.js';
import { Pipeline, type RedisLike } from './pipeline/pipeline.js';
import { PlanStore } from './plans/store.js';
import { type GrpcReceiver, startGrpcReceiver } from './receiver/grpc.js';
import { IngestKeyring } from './receiver/ingest-keys.js';
import { buildReceiver } from './receiver/server.js';
import { OWED_CALLS_FILE, OwedLog } from './redis/owed-log.js';
import { type PrivateRedis, pingsOnLoopback, startPrivateRedis } from './redis/private-redis.js';
import { stallAwareCommandTimeout } from './redis/stall-aware.js';
import { removeRunningRecord, writeRunningRecord } from './running.js';
import { Spool } from './spool/spool.js';
import {
  type ClickHouseHandle,
  type ClickHouseOptions,
  migrate,
  openClickHouse,
} from './storage/clickhouse.js';
import { readRecentCalls } from './storage/recent-calls.js';
import { startSessionIntervalsJob } from './storage/session-intervals.js';

export interface Tollgate {
  config: Config;
  log: Logger;
  metrics: Metrics;
  instanceId: string;
  clickhouse: ClickHouseHandle;
  redis: RedisLike | undefined;
  pipeline: Pipeline | undefined;
  lander: Lander | undefined;
  plans: PlanStore | undefined;
  /** Operator actions on enforcement state (processor role with enforcement on). */
  admin: EnforcementAdmin | undefined;
  /** Prepaid credit wallets (enforcement on). */
  credits: CreditWallets | undefined;
  /** `http://host:port` of the OTLP receiver (processor role). */
  otlpUrl: string | undefined;
  /** `host:port` of the OTLP/gRPC receiver (processor role, `otlp.grpc` on). */
  otlpGrpcAddress: string | undefined;
  /** `http://host:port` of the HTTP API (api role). */
  apiUrl: string | undefined;
  stop(): Promise<void>;
}

/** Secrets never reach the logs. */
const REDACT = [
  'req.headers.authorization',
  'headers.authorization',
  'authorization',
  'password',
  '*.password',
  'token',
  '*.token',
  'secretKey',
  '*.secretKey',
];

export function createLogger(level: string): Logger {
  return pino(
    { level, redact: { paths: REDACT, censor: '[redacted]' }, base: { service: 'tollgate' } },
    pino.destination(2),
  );
}

function instanceIdOf(dataDir: string): string {
  const file = join(dataDir, 'instance-id');
  if (existsSync(file)) return readFileSync(file, 'utf8').trim();
  const id = `tg-${randomBytes(6).toString('hex')}`;
  writeFileSync(file, `${id}\n`);
  return id;
}

const PRIVATE_REDIS_FILE = 'private-redis.json';

/** Whether `pid` names a process this user may signal (ours: the private redis-server). */
function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * After a crash (kill -9) the private redis-server outlives Tollgate; the next start adopts it, so the
 * dedup claims and counters survive the crash exactly as they would with an external Redis.
 */
async function reusablePrivateRedis(
  dataDir: string,
): Promise<{ url: string; pid: number; port: number; stop(): Promise<void> } | undefined> {
  const file = join(dataDir, PRIVATE_REDIS_FILE);
  if (!existsSync(file)) return undefined;
  try {
    const { pid, port } = JSON.parse(readFileSync(file, 'utf8')) as { pid: number; port: number };
    if (!isAlive(pid) || !(await pingsOnLoopback(port))) return undefined;
    return {
      url: `redis://127.0.0.1:${port}`,
      pid,
      port,
      stop: async () => {
        try {
          process.kill(pid, 'SIGTERM');
        } catch {
          // already gone
        }
      },
    };
  } catch {
    return undefined;
  }
}

/**
 * Stops the private redis-server a hard-killed Tollgate left running for `dataDir`, if any: for a caller
 * that is about to empty the directory (the demo starts from a clean slate), which would leave it orphaned.
 */
export async function stopLeftoverPrivateRedis(dataDir: string): Promise<void> {
  await (await reusablePrivateRedis(dataDir))?.stop();
}

/** How often the private redis-server's process is looked for (a dead one is started again). */
const PRIVATE_REDIS_WATCH_MS = 1000;

/**
 * Keeps the private redis-server running: one that died while Tollgate ran (killed, out of memory) is started
 * again on the same port and data directory, whose append-only file brings its claims, counters and kills
 * back, and the client reconnects to it. Before, it stayed down until Tollgate was restarted: every call was
 * rated fail-open (`unenforced`: no limits, no dedup against the calls before), and `/readyz` still said 200.
 * Started or adopted alike, the process is watched by its pid.
 */
function supervisePrivateRedis(
  first: { pid: number; port: number; stop(): Promise<void> },
  restart: (port: number) => Promise<PrivateRedis>,
  dataDir: string,
  log: Logger,
): Pick<PrivateRedis, 'stop'> {
  let current: { pid: number; stop(): Promise<void> } = first;
  let stopping = false;
  let restarting = false;
  let lastFailureLog = Number.NEGATIVE_INFINITY;
  const timer = setInterval(() => {
    if (stopping || restarting || isAlive(current.pid)) return;
    restarting = true;
    restart(first.port)
      .then((started) => {
        if (stopping) return started.stop();
        current = { pid: started.process.pid as number, stop: started.stop };
        writeFileSync(
          join(dataDir, PRIVATE_REDIS_FILE),
          JSON.stringify({ pid: started.process.pid, port: started.port }),
        );
        log.warn({ port: first.port }, 'private redis-server exited; started again');
      })
      .catch((err: Error) => {
        if (performance.now() - lastFailureLog > 10_000) {
          lastFailureLog = performance.now();
          log.error(
            { err: err.message, port: first.port },
            'private redis-server exited; starting it again failed',
          );
        }
      })
      .finally(() => {
        restarting = false;
      });
  }, PRIVATE_REDIS_WATCH_MS);
  timer.unref();
  return {
    async stop() {
      stopping = true;
      clearInterval(timer);
      await current.stop();
    },
  };
}

async function connectRedis(
  config: Config,
  dataDir: string,
  log: Logger,
): Promise<{ redis: RedisLike; owned?: Pick<PrivateRedis, 'stop'> }> {
  const s = config.settings;
  const common = {
    commandTimeout: s['redis.commandTimeoutMs'] as number,
    maxRetriesPerRequest: 1,
    // Fail fast while disconnected (fail-open/closed decides), reconnect in the background.
    enableOfflineQueue: false,
    retryStrategy: (times: number) => Math.min(times * 100, 2000),
  };
  let owned: Pick<PrivateRedis, 'stop'> | undefined;
  let redis: RedisLike;
  if (s['redis.clusterNodes']) {
    const nodes = String(s['redis.clusterNodes'])
      .split(',')
      .map((hp) => {
        const [host, port] = hp.trim().split(':');
        return { host: host as string, port: Number(port) };
      });
    redis = new Cluster(nodes, {
      redisOptions: common,
      enableOfflineQueue: false,
      clusterRetryStrategy: common.retryStrategy,
    });
  } else {
    let url = String(s['redis.url']);
    if (!url) {
      const reused = await reusablePrivateRedis(dataDir);
      // Persistent (AOF, each write on disk before it is answered by default) in the data directory:
      // counters, claims and kills survive a restart, and a kill -9 of redis-server, exactly as they would
      // with an external Redis.
      const redisDir = join(dataDir, 'redis');
      const start = (port?: number) =>
        startPrivateRedis({
          binary: String(s['redis.serverBinary']),
          extraArgs: [
            '--appendonly',
            'yes',
            '--appendfsync',
            String(s['redis.privateAppendFsync']),
            '--dir',
            redisDir,
          ],
          ...(port ? { port } : {}),
        });
      if (reused) {
        url = reused.url;
        owned = supervisePrivateRedis(reused, start, dataDir, log);
        log.info({ url }, 'reusing the private redis-server left by a previous run');
      } else {
        mkdirSync(redisDir, { recursive: true });
        const started = await start();
        owned = supervisePrivateRedis(
          { pid: started.process.pid as number, port: started.port, stop: started.stop },
          start,
          dataDir,
          log,
        );
        url = started.url;
        writeFileSync(
          join(dataDir, PRIVATE_REDIS_FILE),
          JSON.stringify({ pid: started.process.pid, port: started.port }),
        );
        log.info({ port: started.port }, 'started a private redis-server on loopback');
      }
    }
    redis = new Redis(url, common);
  }
  // a command's timeout counts Redis's lateness, not this process's own stalls (see stall-aware.ts)
  stallAwareCommandTimeout(redis);
  redis.on('error', () => {}); // state changes are logged by the pipeline, not per reconnect attempt
  defineClaim(redis);
  await new Promise<void>((res) => {
    if (redis.status === 'ready') return res();
    const t = setTimeout(res, 5000);
    redis.once('ready', () => {
      clearTimeout(t);
      res();
    });
  });
  return owned ? { redis, owned } : { redis };
}

/**
 * V8 lets the old generation grow up to 4× what survived the last full GC before it collects again; under
 * ingest most of that is garbage (the live heap is ≈ 50 MiB, the committed heap peaked at 155-175 MiB).
 * A fixed factor trades memory for GC CPU: 2 took ≈ 60 MiB off the peak RSS for ≈ 3–6% more CPU per span,
 * so it is an operator's choice, off by default (docs/benchmarks.md, "Where the peak RSS comes from"). V8
 * reads the flag each time it computes a limit, so setting it at start works; it is process-wide.
 */
function setHeapGrowing(percent: number): void {
  if (percent > 0) setFlagsFromString(`--heap-growing-percent=${percent}`);
}

/** ClickHouse as the settings say, with `dataDir` resolved (for `tollgate start` and the CLI's commands). */
export function clickhouseOptionsOf(config: Config, dataDir: string): ClickHouseOptions {
  const s = config.settings;
  return {
    url: String(s['clickhouse.url']),
    dataDir,
    database: String(s['clickhouse.database']),
    username: String(s['clickhouse.username']),
    password: String(s['clickhouse.password']),
    chdbMallocConf: String(s['clickhouse.chdbMallocConf']),
    chdbInsert: s['clickhouse.chdbInsert'] === 'file' ? 'file' : 'raw',
    chdbThreadNice: Number(s['clickhouse.chdbThreadNice']),
    chdbReadConnections: Number(s['clickhouse.chdbReadConnections']),
  };
}

/**
 * `listen()`, with an address already in use said in the setting's words (a ConfigError: no stack trace) — a
 * Collector on the same host holds 4317 and 4318 by default.
 */
async function listening<T>(what: string, setting: string, listen: () => Promise<T>): Promise<T> {
  try {
    return await listen();
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code !== 'EADDRINUSE' && !/EADDRINUSE/.test(e.message ?? '')) throw err;
    const flag = SETTINGS.find((x) => x.key === setting)?.flag ?? setting;
    const address = /address already in use (\S+?)\]?$/.exec(e.message)?.[1] ?? 'its address';
    const off = setting === 'otlp.grpcPort' ? ', or turn OTLP/gRPC off with --otlp-grpc false' : '';
    throw new ConfigError(
      `${what} cannot listen on ${address}: another process holds it; choose another port with ${flag}${off}`,
    );
  }
}

/** Starts Tollgate on a loaded configuration: the processor and/or the API, as `roles` says. */
export async function startTollgate(config: Config, logger?: Logger): Promise<Tollgate> {
  const s = config.settings;
  const log = logger ?? createLogger(String(s.logLevel));
  const roles = new Set(
    String(s.roles)
      .split(',')
      .map((r) => r.trim()),
  );
  if (config.configFile === EMBEDDED_CONFIG.pathname) {
    for (const host of [String(s['otlp.host']), String(s['api.host'])]) {
      if (!/^(127\.|::1$|localhost$)/.test(host)) {
        throw new ConfigError(
          `the embedded configuration holds public development keys, so it only listens on loopback: give --config with your own ingest and API keys to listen on ${host}`,
        );
      }
    }
  }
  setHeapGrowing(Number(s['memory.heapGrowingPercent']));
  const dataDir = resolve(String(s.dataDir));
  // the spool holds every accepted export's bytes, chDB the bill: a new data directory is this user's only
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const instanceId = instanceIdOf(dataDir);
  const metrics = createMetrics();
  const stops: (() => Promise<void>)[] = [];

  const clickhouse = openClickHouse(clickhouseOptionsOf(config, dataDir));
  stops.push(() => clickhouse.close());
  const applied = await migrate(clickhouse.client);
  if (applied.length) log.info({ applied }, 'ClickHouse migrations applied');

  let redis: RedisLike | undefined;
  let pipeline: Pipeline | undefined;
  let lander: Lander | undefined;
  let plans: PlanStore | undefined;
  let admin: EnforcementAdmin | undefined;
  let credits: CreditWallets | undefined;
  let replaying: Promise<void> | undefined;
  let otlpUrl: string | undefined;
  let apiUrl: string | undefined;
  let receiver: ReturnType<typeof buildReceiver> | undefined;
  let grpcReceiver: GrpcReceiver | undefined;
  let otlpGrpcAddress: string | undefined;
  let api: FastifyInstance | undefined;

  try {
    // Redis and the plans serve both roles: the processor meters and enforces, the API's admin routes
    // read and change enforcement state.
    const conn = await connectRedis(config, dataDir, log);
    const redisConn = conn.redis;
    redis = redisConn;
    const owned = conn.owned;
    stops.unshift(async () => {
      redisConn.disconnect();
      if (owned) {
        await owned.stop();
        rmSync(join(dataDir, PRIVATE_REDIS_FILE), { force: true });
      }
    });
    const plansFile = s.plansFile ? resolve(String(s.plansFile)) : EMBEDDED_PLANS.pathname;
    const planStore = PlanStore.open(plansFile, dataDir, log, metrics);
    plans = planStore;
    planStore.watch();
    stops.unshift(async () => planStore.close());
    const events = new EnforcementLog(clickhouse.client, log.child({ component: 'enforcement' }));
    stops.unshift(() => events.close());
    const enforcer = s['enforcement.enabled']
      ? new RedisEnforcer(redisConn, planStore, events, log.child({ component: 'enforcement' }), metrics, {
          maxSpanAgeHours: Number(s['ingest.maxSpanAgeHours']),
        })
      : undefined;
    if (enforcer) {
      admin = new EnforcementAdmin(redisConn, enforcer, events);
      // prepaid credits: wallets drawn down by enforce.lua, their ledger copied from Redis to ClickHouse
      const creditLog = log.child({ component: 'credits' });
      const ledger = new CreditLedger(
        redisConn,
        clickhouse.client,
        () => planStore.current.currency,
        creditLog,
      );
      enforcer.creditLedger = ledger;
      credits = new CreditWallets(redisConn, planStore, ledger, events, clickhouse.readClient(), creditLog);
      stops.unshift(() => ledger.close());
      void ledger.sweep(planStore.current.products());
    }
    const leases = enforcer
      ? new LeaseService(redisConn, planStore, events, log.child({ component: 'leases' }), metrics, {
          ttlMs: Number(s['leases.ttlMs']),
          shareBps: Number(s['leases.shareBps']),
          maxCalls: Number(s['leases.maxCalls']),
          releaseGraceMs: Number(s['leases.releaseGraceMs']),
        })
      : undefined;

    if (roles.has('processor')) {
      const { spool, recovered } = await Spool.open({
        dir: join(dataDir, 'spool'),
        fsync: Boolean(s['spool.fsync']),
        segmentBytes: Number(s['spool.segmentBytes']),
      });
      if (recovered.corruptSegments)
        log.error(
          { segments: recovered.corruptSegments },
          'spool segments had damaged records; the intact records around them are replayed',
        );
      lander = new Lander(
        clickhouse,
        spool,
        {
          batchRows: Number(s['landing.batchRows']),
          flushIntervalMs: Number(s['landing.flushIntervalMs']),
          blockPrefix: `${instanceId}.${Date.now().toString(36)}`,
        },
        log.child({ component: 'lander' }),
        metrics,
      );
      lander.resume(recovered.intents);
      lander.start();
      pipeline = new Pipeline(
        spool,
        lander,
        redisConn,
        planStore,
        {
          failMode: s['redis.failMode'] as 'open' | 'closed',
          maxBacklogRows: Number(s['landing.maxBacklogRows']),
          maxSpanAgeHours: Number(s['ingest.maxSpanAgeHours']),
          maxFutureSeconds: Number(s['ingest.maxFutureSeconds']),
          instanceId,
        },
        log.child({ component: 'pipeline' }),
        metrics,
      );
      pipeline.enforcer = enforcer;
      // what the previous run counted, for the dedup while Redis is down (read at the first need only)
      const maxSpanAgeHours = Number(s['ingest.maxSpanAgeHours']);
      pipeline.recentSeed = (max) => readRecentCalls(clickhouse.readClient(), maxSpanAgeHours, max);
      if (recovered.accepted.length) {
        log.info(
          { records: recovered.accepted.length, blocks: recovered.intents.length },
          'replaying unlanded spool records',
        );
        // In the background: the receiver starts listening meanwhile (a fail-closed replay may wait for Redis).
        const ownPipeline = pipeline;
        const ownLanderForReplay = lander;
        replaying = ownPipeline
          .replay(recovered.accepted, new Set(recovered.intents.flatMap((i) => i.rids)))
          .then(() => ownLanderForReplay.replayFinished())
          .catch((err) =>
            log.error({ err: (err as Error).message }, 'spool replay stopped; the rest stays in the spool'),
          );
      } else lander.replayFinished();
      const ownLander = lander;
      stops.unshift(async () => {
        await Promise.race([
          replaying,
          new Promise((r) => setTimeout(r, Number(s.shutdownTimeoutMs)).unref()),
        ]);
        await ownLander.stop(Number(s.shutdownTimeoutMs));
        await spool.close();
      });

      // what was billed while Redis failed (fail-open calls, failed enforcement steps) is counted in Redis
      // once it answers, also when no export comes to trigger it
      const owing = pipeline;
      // written down as they are made, so a stop or a crash before Redis answers leaves them to the next start
      const owedLog = new OwedLog(join(dataDir, OWED_CALLS_FILE), log.child({ component: 'pipeline' }));
      owing.owedLog = owedLog;
      if (enforcer) enforcer.owedLog = owedLog;
      const restored = await owedLog.read();
      for (const e of restored) {
        if (e.k === 'claim') owing.restoreOwed(e);
        else enforcer?.restoreOwed(e);
      }
      const owedCalls = () => owing.owedCount + (enforcer?.owedCount ?? 0);
      if (restored.length)
        log.warn(
          { items: restored.length, calls: owedCalls() },
          'calls billed while Redis failed, left by the last run: counted in Redis once it answers',
        );
      const settleAll = () =>
        owing.settle().then(() => {
          if (owedCalls() === 0) owedLog.clear();
        });
      if (leases) leases.settleOwed = (product, customer) => owing.settle({ product, customer });
      const settleJob = startPeriodic(() => settleAll().catch(() => {}), { everyMs: 1000, firstMs: 1000 });
      stops.unshift(async () => {
        await settleJob.stop();
        // a last try: what is still owed after it stays in owed-calls.jsonl for the next start
        await Promise.race([
          settleAll().catch(() => {}),
          new Promise((r) => setTimeout(r, Number(s.shutdownTimeoutMs)).unref()),
        ]);
        const left = owedCalls();
        if (left)
          log.error(
            { calls: left },
            'stopping with calls billed while Redis failed that are not counted in Redis: the next start counts them (owed-calls.jsonl)',
          );
      });

      const forwarder = s['forward.endpoint']
        ? new Forwarder(
            {
              endpoint: String(s['forward.endpoint']),
              headers: parseHeaders(String(s['forward.headers'])),
              maxQueueBytes: Number(s['forward.maxQueueBytes']),
            },
            log.child({ component: 'forwarder' }),
            metrics,
          )
        : undefined;
      if (forwarder) stops.unshift(() => forwarder.flush(Number(s.shutdownTimeoutMs)));
      receiver = buildReceiver(
        { pipeline, keyring: new IngestKeyring(config.ingestKeys), metrics, log, forwarder, leases },
        {
          bodyLimitBytes: Number(s['otlp.bodyLimitBytes']),
          maxDecompressedBytes: Number(s['otlp.maxDecompressedBytes']),
          maxInFlight: Number(s['otlp.maxInFlight']),
          maxSpanAgeHours: Number(s['ingest.maxSpanAgeHours']),
          maxFutureSeconds: Number(s['ingest.maxFutureSeconds']),
          mode: s['pipeline.mode'] as 'full' | 'decode-only',
        },
      );
      const http = receiver;
      otlpUrl = await listening('the OTLP/HTTP receiver', 'otlp.port', () =>
        http.listen({ host: String(s['otlp.host']), port: Number(s['otlp.port']) }),
      );
      log.info({ url: otlpUrl }, 'OTLP receiver listening');
      if (s['otlp.grpc']) {
        grpcReceiver = await listening('the OTLP/gRPC receiver', 'otlp.grpcPort', () =>
          startGrpcReceiver(
            http.core,
            { metrics, log },
            {
              host: String(s['otlp.host']),
              port: Number(s['otlp.grpcPort']),
              maxMessageBytes: Math.min(
                Number(s['otlp.bodyLimitBytes']),
                Number(s['otlp.maxDecompressedBytes']),
              ),
              maxReceiving: Number(s['otlp.maxInFlight']),
            },
          ),
        );
        otlpGrpcAddress = grpcReceiver.address;
        log.info({ address: otlpGrpcAddress }, 'OTLP/gRPC receiver listening');
      }
    }

    {
      // The HTTP listener runs in every role: health, readiness and metrics are how a processor is
      // operated too; the analytics and admin routes are mounted in the api role only.
      const readiness = async (): Promise<ReadinessCheck[]> => {
        const checks: ReadinessCheck[] = [];
        try {
          // on the API's read connections: on chDB the lander's connection answers after its insert under way
          await clickhouse.readClient().query({ query: 'SELECT 1', format: 'JSONEachRow' });
          checks.push({
            name: 'clickhouse',
            ok: lander?.lastError === undefined,
            detail: lander?.lastError?.message,
          });
        } catch (err) {
          checks.push({ name: 'clickhouse', ok: false, detail: (err as Error).message });
        }
        if (pipeline) {
          const redisOk = pipeline.redisAvailable || s['redis.failMode'] === 'open';
          checks.push({
            name: 'redis',
            ok: redisOk,
            detail: pipeline.redisAvailable ? undefined : 'unreachable',
          });
          const backlog = lander?.backlogRows ?? 0;
          checks.push({
            name: 'landing_backlog',
            ok: backlog < Number(s['landing.maxBacklogRows']),
            detail: `${backlog} rows`,
          });
          checks.push({
            name: 'plans',
            ok: true,
            detail: plans?.lastError
              ? `last reload rejected: ${plans.lastError}`
              : `version ${plans?.current.version}`,
          });
        }
        return checks;
      };
      api = buildApi({
        log: log.child({ component: 'api' }) as FastifyBaseLogger,
        readiness,
        metrics: async () => ({
          contentType: metrics.registry.contentType,
          body: await metrics.registry.metrics(),
        }),
        apiKeys: config.apiKeys,
        admin,
        credits,
        analytics: plans
          ? {
              clickhouse: clickhouse.readClient(),
              traceLinkTemplate: String(s.traceLinkTemplate),
              pricing: new PlanPricing(plans),
            }
          : undefined,
        routes: roles.has('api') ? 'all' : 'ops',
      });
      const httpApi = api;
      apiUrl = await listening('the HTTP API', 'api.port', () =>
        httpApi.listen({ host: String(s['api.host']), port: Number(s['api.port']) }),
      );
      log.info({ url: apiUrl }, 'HTTP API listening');
    }
    writeRunningRecord(dataDir, {
      pid: process.pid,
      instanceId,
      roles: [...roles].join(','),
      startedAt: new Date().toISOString(),
      otlpUrl,
      apiUrl,
    });
    const snapshotEvery = Number(s['sessions.snapshotIntervalSeconds']);
    if (roles.has('processor') && snapshotEvery > 0) {
      // the writer builds the snapshots past-range session questions read (billing-api/src/sql.ts)
      const job = startSessionIntervalsJob(
        clickhouse.jobClient(),
        {
          everyMs: snapshotEvery * 1000,
          marginMs: Number(s['sessions.snapshotMarginSeconds']) * 1000,
          onBuild: () => {
            metrics.sessionSnapshots.inc({ result: 'ok' });
            metrics.sessionSnapshotLastSuccess.set(Date.now() / 1000);
          },
          onError: () => metrics.sessionSnapshots.inc({ result: 'failed' }),
        },
        log.child({ component: 'session-snapshots' }),
      );
      stops.unshift(() => job.stop());
    }
    if (s['stripe.sync.enabled'] && plans) {
      // Off by default; loadConfig has checked the mapping and the key (docs/stripe.md). The Stripe SDK is
      // loaded only then (≈ 4 MiB of live heap that every garbage collection would mark again).
      const { startStripeJob } = await import('./stripe/job.js');
      const job = startStripeJob(
        config,
        dataDir,
        {
          clickhouse: clickhouse.readClient(),
          traceLinkTemplate: String(s.traceLinkTemplate),
          pricing: new PlanPricing(plans),
        },
        log,
      );
      stops.unshift(() => job.stop());
      log.info({ everySeconds: s['stripe.sync.intervalSeconds'] }, 'Stripe sync job started');
    }
  } catch (err) {
    await grpcReceiver?.close();
    await receiver?.close();
    await api?.close();
    for (const stop of stops) await stop().catch(() => {});
    throw err;
  }

  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      log.info('shutting down: finishing in-flight exports');
      receiver?.startClosing();
      await Promise.all([receiver?.close(), grpcReceiver?.close()]);
      await api?.close();
      for (const fn of stops) await fn();
      removeRunningRecord(dataDir);
      log.info('stopped');
    })();
    return stopping;
  };

  return {
    config,
    log,
    metrics,
    instanceId,
    clickhouse,
    redis,
    pipeline,
    lander,
    plans,
    admin,
    credits,
    otlpUrl,
    otlpGrpcAddress,
    apiUrl,
    stop,
  };
}
