import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { type PrivateRedis, startPrivateRedis } from '../../src/redis/private-redis.js';

const execFileAsync = promisify(execFile);

/** Three real redis-server nodes joined into a Redis Cluster (3 masters, no replicas) on loopback. */
export async function startRedisCluster(): Promise<{
  nodes: PrivateRedis[];
  seeds: string;
  stop(): Promise<void>;
}> {
  const nodes: PrivateRedis[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      nodes.push(
        await startPrivateRedis({
          extraArgs: [
            '--cluster-enabled',
            'yes',
            '--cluster-config-file',
            `nodes-${process.pid}-${Date.now()}-${i}.conf`,
            '--dir',
            '/tmp',
            '--cluster-node-timeout',
            '2000',
          ],
        }),
      );
    }
    const addrs = nodes.map((n) => `127.0.0.1:${n.port}`);
    await execFileAsync('redis-cli', [
      '--cluster',
      'create',
      ...addrs,
      '--cluster-replicas',
      '0',
      '--cluster-yes',
    ]);
    // wait until every slot is served
    for (let i = 0; i < 100; i++) {
      const { stdout } = await execFileAsync('redis-cli', ['-p', String(nodes[0]!.port), 'cluster', 'info']);
      if (stdout.includes('cluster_state:ok')) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    return {
      nodes,
      seeds: addrs.join(','),
      stop: async () => {
        for (const n of nodes) await n.stop();
      },
    };
  } catch (err) {
    for (const n of nodes) await n.stop();
    throw err;
  }
}
