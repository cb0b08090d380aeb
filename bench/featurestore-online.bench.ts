/**
 * FeatureStore over gRPC, beside its peers, same client process, same run (Feast's axes:
 * entities × features):
 * (a) 1 entity × 50 features vs a bare grpc-js echo, concurrency 1 (budget: p99 ≤ 1.5×);
 * (b) 100 entities × 50 features and 500 items × 32 features vs the same reads from Redis
 *     (hashes, HMGET pipelined through ioredis; budget: p99 ≤ 1.5×; Feast's Go server: 22 ms p99
 *     for 100 × 50). HMGET returns values only, so the compared reads ask for values and
 *     statuses (`omit_event_times`, as a ranking request does); the full read with an event time
 *     per value is measured and printed beside them. Reads are decoded as a Node service that
 *     feeds a model reads them, into plain values (`FeatureStorePlainClientDefinition`: one array
 *     of numbers per column, as ioredis's strings become numbers); the same read decoded into
 *     generated `FeatureValue` messages (two objects per value) is printed beside them too;
 * (c) push ingestion through WriteFeatures (budget: ≥ 100,000 feature values/s);
 * (d) streaming aggregation rate vs a bare JetStream consumer reading the same events (budget:
 *     ≥ 70%), when nats-server is installed.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { credentials, Metadata } from '@grpc/grpc-js';
import { jetstream, jetstreamManager, AckPolicy } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import Redis from 'ioredis';
import { EchoServiceService } from '../gen/ts/tandem/echo/v1/echo_service';
import { OutcomeEvent } from '../gen/ts/tandem/events/v1/outcome_event';
import {
  AggregationFunction,
  AggregationKey,
  type FeatureView,
} from '../gen/ts/tandem/featurestore/v1/feature_view';
import {
  AggregationState,
  type FeatureRow,
} from '../gen/ts/tandem/featurestore/v1/featurestore_service';
import { ValueType } from '../gen/ts/tandem/featurestore/v1/value';
import {
  FeatureStoreClientDefinition,
  FeatureStorePlainClientDefinition,
} from '../services/featurestore/src/online-response-decoder';
import { connectNatsBus } from '../services/platform/src/events/nats-bus';
import { createClient } from '../services/platform/src/grpc/client';
import { benchRounds, median, runLoad } from './support/load';
import {
  measureInterleaved,
  measuredRow,
  startServerProcess,
  type Contender,
} from './support/server-process';

const durationMs = Number(process.env.BENCH_DURATION_MS ?? 4000);
const USERS = 2_000;
const ITEMS = 2_000;
const USER_FEATURES = 50;
const ITEM_FEATURES = 32;
const STREAM_EVENTS = Number(process.env.BENCH_STREAM_EVENTS ?? 60_000);
/** (d) fails when the aggregation processes no event for this long: a hang, not a slow run. */
const STALL_TIMEOUT_MS = 30_000;
/**
 * Rounds of each comparison, each interleaving the peers in half-second slices
 * (`measureInterleaved`); the median ratio is reported.
 */
const ROUNDS = benchRounds();
/** The streaming comparison's rounds each replay the whole stream: three are enough there. */
const STREAM_ROUNDS = benchRounds(3);
/** Sections to run (BENCH_SECTIONS=a,b,d); all by default. */
const SECTIONS = new Set((process.env.BENCH_SECTIONS ?? 'a,b,c,d').split(',').map((s) => s.trim()));

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => {
        resolve(port);
      });
    });
  });
}

const hasBinary = (name: string): boolean => spawnSync('which', [name]).status === 0;
const pick = <T>(values: readonly T[], count: number, offset: number): T[] =>
  Array.from({ length: count }, (_, i) => values[(offset + i) % values.length]!);

function doubleView(name: string, entity: string, features: number): FeatureView {
  return {
    name,
    description: '',
    owner: 'bench',
    tags: {},
    entities: [entity],
    features: Array.from({ length: features }, (_, f) => ({
      name: `f${f}`,
      valueType: ValueType.VALUE_TYPE_DOUBLE,
      description: '',
      vectorLength: 0,
    })),
    ttl: undefined,
    online: true,
    source: { $case: 'pushSource', value: {} },
    etag: '',
  };
}

function rowsFor(
  joinKey: string,
  prefix: string,
  from: number,
  count: number,
  features: number,
): FeatureRow[] {
  const eventTime = new Date();
  return Array.from({ length: count }, (_, i) => {
    const values: FeatureRow['values'] = {};
    for (let f = 0; f < features; f++)
      values[`f${f}`] = { kind: { $case: 'doubleValue', value: (from + i) * 0.001 + f } };
    return {
      entityKey: { [joinKey]: { kind: { $case: 'stringValue', value: `${prefix}${from + i}` } } },
      values,
      eventTime,
    };
  });
}

async function main(): Promise<void> {
  console.log(
    `featurestore online: ${durationMs} ms per run, client and servers in separate processes`,
  );
  if (!['a', 'b', 'c'].some((section) => SECTIONS.has(section))) {
    if (SECTIONS.has('d') && hasBinary('nats-server')) await streaming();
    return;
  }
  const userIds = Array.from({ length: USERS }, (_, i) => `u${i}`);
  const userFields = Array.from({ length: USER_FEATURES }, (_, f) => `f${f}`);
  const itemFields = Array.from({ length: ITEM_FEATURES }, (_, f) => `f${f}`);
  const itemIds = Array.from({ length: ITEMS }, (_, i) => `i${i}`);

  // ---- FeatureStore, filled through WriteFeatures ----
  const store = await startServerProcess(join(__dirname, 'support', 'featurestore-server.js'));
  const fs = createClient(FeatureStoreClientDefinition, {
    address: store.address,
    credentials: credentials.createInsecure(),
    defaultTimeoutMs: 30_000,
    metadata: new Metadata(),
  });
  for (const [name, joinKey] of [
    ['user', 'user_id'],
    ['item', 'item_id'],
  ] as const) {
    await fs.applyEntity({
      entity: {
        name,
        joinKey,
        valueType: ValueType.VALUE_TYPE_STRING,
        description: '',
        owner: '',
        etag: '',
      },
      requestId: '',
    });
  }
  await fs.applyFeatureView({
    featureView: doubleView('user_stats', 'user', USER_FEATURES),
    requestId: '',
    validateOnly: false,
  });
  await fs.applyFeatureView({
    featureView: doubleView('item_stats', 'item', ITEM_FEATURES),
    requestId: '',
    validateOnly: false,
  });
  for (let from = 0; from < USERS; from += 1000) {
    await fs.writeFeatures({
      featureView: 'user_stats',
      rows: rowsFor('user_id', 'u', from, 1000, USER_FEATURES),
      requestId: '',
    });
    await fs.writeFeatures({
      featureView: 'item_stats',
      rows: rowsFor('item_id', 'i', from, 1000, ITEM_FEATURES),
      requestId: '',
    });
  }
  // Reads go through the plain-values client, as a Node service feeding a model would read (one
  // array of numbers per column); `messages` reads decode into the generated FeatureValue
  // messages, two objects per value, and are printed beside them.
  const plain = createClient(FeatureStorePlainClientDefinition, {
    address: store.address,
    credentials: credentials.createInsecure(),
    defaultTimeoutMs: 30_000,
    metadata: new Metadata(),
  });
  const str = (value: string) => ({ kind: { $case: 'stringValue' as const, value } });
  let cursor = 0;
  const read =
    (
      view: string,
      joinKey: string,
      ids: readonly string[],
      count: number,
      omitEventTimes = false,
      form: 'plain' | 'messages' = 'plain',
    ) =>
    () => {
      const request = {
        features: [`${view}:*`],
        entityRows: { [joinKey]: { values: pick(ids, count, (cursor += 7)).map(str) } },
        omitEventTimes,
      };
      return form === 'plain' ? plain.getOnlineFeatures(request) : fs.getOnlineFeatures(request);
    };

  // ---- (a) 1 × 50 vs bare echo ----
  if (SECTIONS.has('a')) {
    const echo = await startServerProcess(join(__dirname, 'support', 'echo-server.js'), ['bare']);
    const echoClient = createClient(EchoServiceService, {
      address: echo.address,
      credentials: credentials.createInsecure(),
    });
    console.log(
      `\n(a) 1 entity × 50 features, concurrency 1 (${ROUNDS} rounds, peers interleaved)`,
    );
    const echoCall = () =>
      echoClient.echo({ message: 'x'.repeat(100), failWithCode: 0, requireMessage: false });
    const singleRead = read('user_stats', 'user_id', userIds, 1);
    // Both servers and both client paths warm (JIT, young-generation sizing) before any round: a
    // cold peer's first round measures its start-up, not its steady state.
    await runLoad(echoCall, { concurrency: 1, durationMs: 1500, warmupMs: 500 });
    await runLoad(singleRead, { concurrency: 1, durationMs: 1500, warmupMs: 500 });
    const ratios: number[] = [];
    for (let round = 1; round <= ROUNDS; round++) {
      const [echoResult, single] = await measureInterleaved(
        [
          { server: echo, call: echoCall },
          { server: store, call: singleRead },
        ],
        { concurrency: 1, durationMs },
      );
      console.log(measuredRow(`#${round} bare grpc-js echo`, echoResult));
      console.log(measuredRow(`#${round} FeatureStore 1 × 50`, single));
      ratios.push(single.result.p99Ms / echoResult.result.p99Ms);
    }
    echoClient.close();
    await echo.stop();
    console.log(
      `ratio FeatureStore/echo p99: median ${median(ratios).toFixed(2)}x of ${ratios.map((r) => r.toFixed(2)).join(', ')} (budget ≤ 1.5x)`,
    );
  }

  // ---- (b) vs Redis ----
  if (SECTIONS.has('b')) {
    console.log(`\n(b) ranking-sized reads, concurrency 1 (${ROUNDS} rounds, peers interleaved)`);
    let redis: Redis | undefined;
    let redisServer: ChildProcess | undefined;
    if (!hasBinary('redis-server')) {
      console.log('redis-server is not installed: the Redis comparison is skipped');
    } else {
      const port = await freePort();
      redisServer = spawn(
        'redis-server',
        ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
        { stdio: 'ignore' },
      );
      await new Promise((resolve) => setTimeout(resolve, 300));
      redis = new Redis({ port, host: '127.0.0.1', lazyConnect: false });
      await new Promise((resolve) => redis?.once('ready', resolve));
      const fill = redis.pipeline();
      userIds.forEach((id, i) =>
        fill.hset(
          `user:${id}`,
          Object.fromEntries(userFields.map((f, j) => [f, String(i * 0.001 + j)])),
        ),
      );
      itemIds.forEach((id, i) =>
        fill.hset(
          `item:${id}`,
          Object.fromEntries(itemFields.map((f, j) => [f, String(i * 0.001 + j)])),
        ),
      );
      await fill.exec();
    }
    const hmget =
      (client: Redis, prefix: string, ids: readonly string[], count: number, fields: string[]) =>
      async () => {
        const pipeline = client.pipeline();
        for (const id of pick(ids, count, (cursor += 7)))
          pipeline.hmget(`${prefix}:${id}`, ...fields);
        const results = await pipeline.exec();
        // Decoded to numbers, as a feature server must return typed values.
        return results?.map(([, values]) => (values as (string | null)[]).map(Number));
      };
    // The budget compares the same data: HMGET returns values, so the FeatureStore reads ask for
    // values and statuses (`omit_event_times`, as a ranking request does; TTL is still enforced).
    // The full read, with an event time per value, is measured after them, beside its own Redis slices.
    const shapes = [
      { label: '100 × 50', view: 'user_stats', joinKey: 'user_id', ids: userIds, count: 100 },
      { label: '500 × 32', view: 'item_stats', joinKey: 'item_id', ids: itemIds, count: 500 },
    ] as const;
    const fields = { user_stats: userFields, item_stats: itemFields };
    const figures = shapes.map(() => ({
      ratio: [] as number[],
      full: [] as number[],
      messages: [] as number[],
      p99: [] as number[],
    }));
    for (let round = 1; round <= ROUNDS; round++) {
      for (const [i, shape] of shapes.entries()) {
        const figure = figures[i]!;
        const prefix = shape.view === 'user_stats' ? 'user' : 'item';
        const peer: Contender | undefined =
          redis === undefined
            ? undefined
            : { call: hmget(redis, prefix, shape.ids, shape.count, fields[shape.view]) };
        // Each read beside its own Redis slices. The full read decodes ~1 MB per call into
        // objects; interleaved with the compared reads, its garbage was collected in their slices
        // and tripled their p99.
        const beside = async (call: () => Promise<unknown>) => {
          const [ours, theirs] = await measureInterleaved(
            peer === undefined ? [{ server: store, call }] : [{ server: store, call }, peer],
            { concurrency: 1, durationMs },
          );
          return { ours, theirs };
        };
        const values = await beside(read(shape.view, shape.joinKey, shape.ids, shape.count, true));
        const full = await beside(read(shape.view, shape.joinKey, shape.ids, shape.count));
        const messages = await beside(
          read(shape.view, shape.joinKey, shape.ids, shape.count, true, 'messages'),
        );
        console.log(measuredRow(`#${round} FeatureStore ${shape.label}`, values.ours));
        if (values.theirs !== undefined)
          console.log(measuredRow(`#${round} Redis HMGET pipelined ${shape.label}`, values.theirs));
        console.log(measuredRow(`#${round} FeatureStore ${shape.label} +times`, full.ours));
        if (full.theirs !== undefined)
          console.log(measuredRow(`#${round} Redis HMGET pipelined ${shape.label}`, full.theirs));
        console.log(measuredRow(`#${round} FeatureStore ${shape.label} messages`, messages.ours));
        if (messages.theirs !== undefined)
          console.log(
            measuredRow(`#${round} Redis HMGET pipelined ${shape.label}`, messages.theirs),
          );
        figure.p99.push(values.ours.result.p99Ms);
        if (
          values.theirs === undefined ||
          full.theirs === undefined ||
          messages.theirs === undefined
        )
          continue;
        figure.ratio.push(values.ours.result.p99Ms / values.theirs.result.p99Ms);
        figure.full.push(full.ours.result.p99Ms / full.theirs.result.p99Ms);
        figure.messages.push(messages.ours.result.p99Ms / messages.theirs.result.p99Ms);
      }
    }
    redis?.disconnect();
    redisServer?.kill('SIGTERM');
    const list = (values: number[]) => values.map((r) => r.toFixed(2)).join(', ');
    for (const [i, shape] of shapes.entries()) {
      const figure = figures[i]!;
      if (redis !== undefined)
        console.log(
          `ratio FeatureStore/Redis p99, ${shape.label}: median ${median(figure.ratio).toFixed(2)}x (${list(figure.ratio)}) (budget ≤ 1.5x); with event times ${median(figure.full).toFixed(2)}x (${list(figure.full)}); decoded into messages ${median(figure.messages).toFixed(2)}x (${list(figure.messages)})`,
        );
    }
    console.log(
      `absolute p99 (median of rounds): FeatureStore 100 × 50 ${median(figures[0]!.p99).toFixed(2)} ms (Feast's published Go server: 22 ms), 500 × 32 ${median(figures[1]!.p99).toFixed(2)} ms`,
    );
  }

  // ---- (c) push ingestion ----
  if (SECTIONS.has('c')) {
    const batches = Array.from({ length: 8 }, (_, b) =>
      rowsFor('user_id', 'w', b * 1000, 1000, USER_FEATURES),
    );
    let batchIndex = 0;
    const [ingest] = await measureInterleaved(
      [
        {
          server: store,
          call: () =>
            fs.writeFeatures({
              featureView: 'user_stats',
              rows: batches[batchIndex++ % batches.length]!.map((r) => ({
                ...r,
                eventTime: new Date(),
              })),
              requestId: '',
            }),
        },
      ],
      { concurrency: 2, durationMs, sliceMs: durationMs, warmupMs: 1000 },
    );
    const valuesPerSecond = ingest.result.callsPerSecond * 1000 * USER_FEATURES;
    console.log('\n(c) push ingestion: WriteFeatures of 1,000 rows × 50 features, concurrency 2');
    console.log(measuredRow('WriteFeatures', ingest));
    console.log(
      `${Math.round(valuesPerSecond).toLocaleString('en')} feature values/s (budget ≥ 100,000/s)`,
    );
  }
  fs.close();
  plain.close();
  await store.stop();

  // ---- (d) streaming aggregation vs a bare JetStream consumer ----
  if (!SECTIONS.has('d')) return;
  if (!hasBinary('nats-server')) {
    console.log('\n(d) nats-server is not installed: the streaming comparison is skipped');
    return;
  }
  await streaming();
}

async function streaming(): Promise<void> {
  const port = await freePort();
  const nats = spawn(
    'nats-server',
    [
      '-js',
      '-a',
      '127.0.0.1',
      '-p',
      String(port),
      '-sd',
      mkdtempSync(join(tmpdir(), 'bench-nats-')),
    ],
    { stdio: 'ignore' },
  );
  const url = `nats://127.0.0.1:${port}`;
  async function round(round: number): Promise<{ bareRate: number; aggregationRate: number }> {
    // Bare consumer: pull, decode, ack each.
    const connection = await connect({ servers: url });
    const manager = await jetstreamManager(connection);
    await manager.consumers.add('TANDEM_OUTCOMES', {
      durable_name: `bench-bare-${round}`,
      ack_policy: AckPolicy.Explicit,
      max_ack_pending: 20_000,
    });
    const consumer = await jetstream(connection).consumers.get(
      'TANDEM_OUTCOMES',
      `bench-bare-${round}`,
    );
    const bareStarted = performance.now();
    const messages = await consumer.consume({ max_messages: 2_000 });
    let seen = 0;
    for await (const message of messages) {
      OutcomeEvent.decode(message.data);
      message.ack();
      if (++seen >= STREAM_EVENTS) break;
    }
    const bareRate = STREAM_EVENTS / ((performance.now() - bareStarted) / 1000);
    await messages.close().catch(() => undefined);
    await connection.close();

    const server = await startServerProcess(
      join(__dirname, 'support', 'featurestore-server.js'),
      [],
      { NATS_URL: url, TANDEM_FEATURESTORE_REPLICA_ID: `bench${round}` },
    );
    const fs = createClient(FeatureStoreClientDefinition, {
      address: server.address,
      credentials: credentials.createInsecure(),
      defaultTimeoutMs: 30_000,
    });
    await fs.applyEntity({
      entity: {
        name: 'item',
        joinKey: 'item_id',
        valueType: ValueType.VALUE_TYPE_STRING,
        description: '',
        owner: '',
        etag: '',
      },
      requestId: '',
    });
    const window = { seconds: 3600, nanos: 0 };
    const started = performance.now();
    await fs.applyFeatureView({
      featureView: {
        name: 'item_plays',
        description: '',
        owner: 'bench',
        tags: {},
        entities: ['item'],
        features: [
          {
            name: 'plays_1h',
            valueType: ValueType.VALUE_TYPE_INT64,
            description: '',
            vectorLength: 0,
          },
          {
            name: 'seconds_1h',
            valueType: ValueType.VALUE_TYPE_DOUBLE,
            description: '',
            vectorLength: 0,
          },
        ],
        ttl: undefined,
        online: true,
        etag: '',
        source: {
          $case: 'streamSource',
          value: {
            subject: 'tandem.events.v1.outcome.play',
            eventNames: [],
            key: AggregationKey.AGGREGATION_KEY_ITEM_ID,
            allowedLateness: undefined,
            aggregations: [
              {
                feature: 'plays_1h',
                function: AggregationFunction.AGGREGATION_FUNCTION_COUNT,
                valueField: '',
                window,
                bucket: undefined,
              },
              {
                feature: 'seconds_1h',
                function: AggregationFunction.AGGREGATION_FUNCTION_SUM,
                valueField: 'value',
                window,
                bucket: undefined,
              },
            ],
          },
        },
      },
      requestId: '',
      validateOnly: false,
    });
    let processed = -1;
    let progressAt = performance.now();
    for (;;) {
      const status = (await fs.getAggregationStatus({ featureView: 'item_plays' })).status!;
      if (status.eventsProcessed >= STREAM_EVENTS) break;
      if (status.eventsProcessed > processed) {
        processed = status.eventsProcessed;
        progressAt = performance.now();
      } else if (performance.now() - progressAt > STALL_TIMEOUT_MS) {
        fs.close();
        await server.stop();
        throw new Error(
          `(d) round ${round}: the aggregation processed no event for ${STALL_TIMEOUT_MS / 1000} s, at ${processed.toLocaleString('en')} of ${STREAM_EVENTS.toLocaleString('en')} (${status.pendingEvents} awaiting a checkpoint; ${AggregationState[status.state]}: ${status.stateMessage})`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const aggregationRate = STREAM_EVENTS / ((performance.now() - started) / 1000);
    fs.close();
    await server.stop();
    return { bareRate, aggregationRate };
  }
  await new Promise((resolve) => setTimeout(resolve, 500));
  try {
    const bus = await connectNatsBus({ servers: url, name: 'bench-publisher' });
    await bus.declareStream({ name: 'TANDEM_OUTCOMES', subjects: ['tandem.events.v1.outcome.>'] });
    const publishing: Promise<unknown>[] = [];
    for (let i = 0; i < STREAM_EVENTS; i++) {
      const event: OutcomeEvent = {
        eventId: randomUUID(),
        eventTime: new Date(),
        name: 'play',
        unit: { id: `u${i % 5000}`, type: 'user' },
        itemId: `i${i % 1000}`,
        decisionId: '',
        value: 30,
        properties: undefined,
        source: 'bench',
        surface: 'home',
      };
      publishing.push(
        bus.publish('tandem.events.v1.outcome.play', OutcomeEvent, event, {
          eventId: event.eventId,
        }),
      );
      if (publishing.length >= 256) await Promise.all(publishing.splice(0));
    }
    await Promise.all(publishing);
    await bus.close();

    console.log(
      `\n(d) streaming aggregation: ${STREAM_EVENTS.toLocaleString('en')} OutcomeEvents already in the stream (${STREAM_ROUNDS} rounds, a fresh durable each)`,
    );
    const ratios: number[] = [];
    for (let r = 1; r <= STREAM_ROUNDS; r++) {
      const { bareRate, aggregationRate } = await round(r);
      console.log(
        `#${r} bare JetStream consumer (pull, decode, ack) ${Math.round(bareRate).toLocaleString('en').padStart(8)} events/s   FeatureStore aggregation (count + sum, 1h) ${Math.round(aggregationRate).toLocaleString('en').padStart(8)} events/s   ${((aggregationRate / bareRate) * 100).toFixed(0)}%`,
      );
      ratios.push(aggregationRate / bareRate);
    }
    console.log(
      `ratio FeatureStore/bare: median ${(median(ratios) * 100).toFixed(0)}% of ${ratios.map((r) => `${(r * 100).toFixed(0)}%`).join(', ')} (budget ≥ 70%)`,
    );
  } finally {
    nats.kill('SIGTERM');
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error);
    process.exit(1);
  },
);
