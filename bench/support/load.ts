/**
 * A closed-loop load generator: `concurrency` workers each issue a call, wait for it, and issue the
 * next, for `durationMs` after a warm-up. Latencies are kept exactly (no histogram rounding).
 */
import { performance } from 'node:perf_hooks';

export interface LoadOptions {
  readonly concurrency: number;
  readonly durationMs: number;
  readonly warmupMs?: number;
}

export interface LoadResult {
  readonly calls: number;
  readonly errors: number;
  readonly callsPerSecond: number;
  readonly p50Ms: number;
  readonly p90Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  const index = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return sorted[Math.max(0, index)] ?? NaN;
}

/** What one closed-loop run recorded, before it is summarised (see {@link summarize}). */
export interface LoadSamples {
  /** Latencies of the calls completed after the warm-up, in milliseconds. */
  readonly latencies: number[];
  readonly errors: number;
  /** How long recording lasted, in milliseconds. */
  readonly elapsedMs: number;
  /** Every call completed, warm-up included: what the server's CPU time covers. */
  readonly issued: number;
}

/** Runs `call` under closed-loop load and keeps every latency recorded after the warm-up. */
export async function sampleLoad(
  call: () => Promise<unknown>,
  options: LoadOptions,
): Promise<LoadSamples> {
  const warmupMs = options.warmupMs ?? Math.min(1000, options.durationMs / 4);
  let recording = false;
  let stop = false;
  const latencies: number[] = [];
  let errors = 0;
  let issued = 0;
  const worker = async (): Promise<void> => {
    while (!stop) {
      const started = performance.now();
      try {
        await call();
        if (recording) latencies.push(performance.now() - started);
      } catch {
        if (recording) errors += 1;
      }
      issued += 1;
    }
  };
  const workers = Array.from({ length: options.concurrency }, () => worker());
  await new Promise((r) => setTimeout(r, warmupMs));
  recording = true;
  const began = performance.now();
  await new Promise((r) => setTimeout(r, options.durationMs));
  recording = false;
  const elapsedMs = performance.now() - began;
  stop = true;
  await Promise.all(workers);
  return { latencies, errors, elapsedMs, issued };
}

/** Throughput and latency percentiles of one or more runs' samples, pooled. */
export function summarize(runs: readonly LoadSamples[]): LoadResult {
  const sorted = Float64Array.from(runs.flatMap((run) => run.latencies)).sort();
  const elapsed = runs.reduce((sum, run) => sum + run.elapsedMs, 0);
  return {
    calls: sorted.length,
    errors: runs.reduce((sum, run) => sum + run.errors, 0),
    callsPerSecond: (sorted.length / elapsed) * 1000,
    p50Ms: percentile(sorted, 50),
    p90Ms: percentile(sorted, 90),
    p99Ms: percentile(sorted, 99),
    maxMs: sorted[sorted.length - 1] ?? NaN,
  };
}

/** Runs `call` under closed-loop load and reports throughput and latency percentiles. */
export async function runLoad(
  call: () => Promise<unknown>,
  options: LoadOptions,
): Promise<LoadResult> {
  return summarize([await sampleLoad(call, options)]);
}

/** Latency percentiles of a synchronous or async function called `iterations` times in a row. */
export async function timeCalls(
  fn: () => unknown,
  iterations: number,
): Promise<{ p50Us: number; p99Us: number; meanUs: number }> {
  const samples = new Float64Array(iterations);
  for (let i = 0; i < iterations; i++) {
    const started = performance.now();
    const result = fn();
    if (result instanceof Promise) await result;
    samples[i] = (performance.now() - started) * 1000;
  }
  const mean = samples.reduce((a, b) => a + b, 0) / iterations;
  samples.sort();
  return { p50Us: percentile(samples, 50), p99Us: percentile(samples, 99), meanUs: mean };
}

/**
 * How many rounds a comparison measures (`BENCH_ROUNDS` overrides `fallback`). A p99 from a few
 * seconds of calls on this shared 2-core host moves by ±40% from one round to the next, so the
 * latency comparisons take the median of seven rounds: with three, the same build's 1 × 50
 * FeatureStore ratio ranged 1.17–1.62× over eleven runs; with seven, 1.26–1.49× over six.
 */
export function benchRounds(fallback = 7): number {
  return Math.max(1, Number(process.env.BENCH_ROUNDS ?? fallback));
}

/** The median of `values` (the mean of the middle two when there is an even number). */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[middle] ?? NaN)
    : ((sorted[middle - 1] ?? NaN) + (sorted[middle] ?? NaN)) / 2;
}

/** One row of a side-by-side table. */
export function formatRow(label: string, r: LoadResult): string {
  return `${label.padEnd(34)} ${r.callsPerSecond.toFixed(0).padStart(8)} calls/s   p50 ${r.p50Ms.toFixed(3)} ms   p99 ${r.p99Ms.toFixed(3)} ms   errors ${r.errors}`;
}
