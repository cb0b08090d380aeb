/**
 * Micro-benchmark of FeatureStore's pure domain core, without gRPC: how much of the read budget
 * the in-memory table itself uses (Feast's axes: entities × features), and the raw ingestion
 * rates of pushed rows and streaming aggregation. Build with `npx tsc -b bench`, run with
 * `node dist/bench/featurestore-domain.bench.js`. Figures are per process on a shared machine:
 * compare them with each other and with the gRPC benchmark, not with a fixed number.
 */

import type { FeatureValue } from '../services/featurestore/src/domain/feature-values';
import { OnlineTable, type OnlineRow } from '../services/featurestore/src/domain/online-table';
import {
  AggregationFunction,
  WindowAggregator,
  type AggregationEvent,
} from '../services/featurestore/src/domain/window-aggregation';

const minute = 60_000;
const hour = 60 * minute;

/** A small deterministic PRNG (mulberry32) so runs are comparable. */
function random(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function percentile(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? Number.NaN;
}

function filledTable(entities: number, features: number, now: number): OnlineTable {
  const names = Array.from({ length: features }, (_, f) => `f${f}`);
  const table = new OnlineTable({ features: names, ttlMs: 24 * hour });
  const rows: OnlineRow<FeatureValue>[] = [];
  for (let e = 0; e < entities; e++) {
    const values: Record<string, FeatureValue> = {};
    for (const name of names) values[name] = { kind: 'double', value: e / 7 };
    rows.push({ entityKey: `e${e}`, values, eventTime: now - (e % 1000) });
    if (rows.length === 10_000) table.write(rows.splice(0), now);
  }
  table.write(rows, now);
  return table;
}

function benchRead(
  label: string,
  table: OnlineTable,
  entities: number,
  rows: number,
  features: number,
): void {
  const next = random(rows * 31 + features);
  const indexes = Int32Array.from({ length: features }, (_, f) => f);
  const iterations = rows === 1 ? 50_000 : rows <= 100 ? 20_000 : 5_000;
  const batches = Array.from({ length: 64 }, () =>
    Array.from({ length: rows }, () => `e${Math.floor(next() * entities * 1.02)}`),
  );
  const now = Date.now();
  let sink = 0;
  for (let i = 0; i < iterations / 5; i++)
    sink += table.read(batches[i % 64]!, indexes, now).rowCount;
  const samples = new Float64Array(iterations);
  for (let i = 0; i < iterations; i++) {
    const start = process.hrtime.bigint();
    const result = table.read(batches[i % 64]!, indexes, now);
    samples[i] = Number(process.hrtime.bigint() - start) / 1_000;
    sink += result.statuses[0] ?? 0;
  }
  samples.sort();
  console.log(
    `online read ${label.padEnd(26)} p50 ${percentile(samples, 0.5).toFixed(1).padStart(7)} µs   p99 ${percentile(samples, 0.99).toFixed(1).padStart(7)} µs   (${iterations} reads, sink ${sink % 7})`,
  );
}

function benchWrites(): void {
  const features = 50;
  const names = Array.from({ length: features }, (_, f) => `f${f}`);
  const table = new OnlineTable({ features: names });
  const batches: OnlineRow<FeatureValue>[][] = [];
  const now = Date.now();
  for (let b = 0; b < 100; b++) {
    const rows: OnlineRow<FeatureValue>[] = [];
    for (let r = 0; r < 1_000; r++) {
      const values: Record<string, FeatureValue> = {};
      for (const name of names) values[name] = { kind: 'double', value: r };
      // Half the batches overwrite keys written before, half add new ones.
      rows.push({
        entityKey: `u${(b % 2) * 1_000_000 + b * 1_000 + r}`,
        values,
        eventTime: now + b,
      });
    }
    batches.push(rows);
  }
  const start = process.hrtime.bigint();
  let written = 0;
  for (const rows of batches) written += table.write(rows, now).written;
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  console.log(
    `push writes: ${((written * features) / seconds / 1e6).toFixed(2)} M feature values/s (${written} rows × ${features} features in ${(seconds * 1000).toFixed(0)} ms)`,
  );
}

function benchAggregation(): void {
  const aggregator = new WindowAggregator({
    aggregations: [
      {
        feature: 'plays_5m',
        function: AggregationFunction.Count,
        windowMs: 5 * minute,
        bucketMs: 5_000,
      },
      {
        feature: 'plays_1h',
        function: AggregationFunction.Count,
        windowMs: hour,
        bucketMs: minute,
      },
      {
        feature: 'seconds_1h',
        function: AggregationFunction.Sum,
        windowMs: hour,
        bucketMs: minute,
      },
      {
        feature: 'mean_seconds_1d',
        function: AggregationFunction.Mean,
        windowMs: 24 * hour,
        bucketMs: 24 * minute,
      },
      {
        feature: 'listeners_1d',
        function: AggregationFunction.DistinctCount,
        windowMs: 24 * hour,
        bucketMs: 24 * minute,
      },
      {
        feature: 'last_seconds_7d',
        function: AggregationFunction.Last,
        windowMs: 7 * 24 * hour,
        bucketMs: 168 * minute,
      },
    ],
    allowedLatenessMs: hour,
  });
  const next = random(7);
  const count = 1_000_000;
  const t0 = Date.now();
  const events: AggregationEvent[] = [];
  for (let i = 0; i < count; i++) {
    const seconds = Math.floor(next() * 300);
    events.push({
      eventId: `ev-${i}-${Math.floor(next() * 1e9)}`,
      key: `item-${Math.floor(next() * next() * 100_000)}`,
      // 60,000 events per second of event time, up to 2 s out of order.
      eventTime: t0 + Math.floor(i / 60) - Math.floor(next() * 2_000),
      values: [
        undefined,
        undefined,
        seconds,
        seconds,
        `user-${Math.floor(next() * 50_000)}`,
        seconds,
      ],
    });
  }
  const start = process.hrtime.bigint();
  for (let i = 0; i < count; i++) aggregator.ingest(events[i]!, t0 + Math.floor(i / 60));
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const memory = aggregator.memory();
  console.log(
    `aggregation: ${(count / seconds / 1e3).toFixed(0)} k events/s (6 aggregations, ${memory.keyCount} keys, ${memory.trackedEventIds} ids tracked, ~${(memory.approximateBytes / 1e6).toFixed(0)} MB)`,
  );
  const keys = Array.from({ length: 500 }, (_, i) => `item-${i * 37}`);
  const samples = new Float64Array(2_000);
  const now = t0 + Math.floor(count / 60);
  for (let i = 0; i < samples.length; i++) {
    const start = process.hrtime.bigint();
    // A new read time each iteration defeats the per-series cache: the worst case.
    aggregator.read(keys, now + i * 5_000);
    samples[i] = Number(process.hrtime.bigint() - start) / 1_000;
  }
  samples.sort();
  console.log(
    `aggregation read 500 keys × 6 (uncached): p50 ${percentile(samples, 0.5).toFixed(0)} µs   p99 ${percentile(samples, 0.99).toFixed(0)} µs`,
  );
}

function main(): void {
  const now = Date.now();
  const users = filledTable(100_000, 50, now);
  const items = filledTable(100_000, 32, now);
  const memory = users.memory();
  console.log(
    `table: ${memory.entityCount} entities, ${memory.valueCount} values, ~${(memory.approximateBytes / 1e6).toFixed(0)} MB (estimate)`,
  );
  benchRead('1×50', users, 100_000, 1, 50);
  benchRead('100×50', users, 100_000, 100, 50);
  benchRead('500×32', items, 100_000, 500, 32);
  // The same read on a table small enough to stay in CPU caches: the difference is memory latency.
  benchRead('500×32 (10k-entity table)', filledTable(10_000, 32, now), 10_000, 500, 32);
  benchWrites();
  benchAggregation();
}

main();
