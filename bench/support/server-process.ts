/**
 * Runs a benchmark server in its own process, as in production, so the load generator and the
 * server do not share an event loop. The child reports its port, and on request its CPU time, so a
 * benchmark can print server CPU per call beside client-side latency.
 */
import { fork, type ChildProcess } from 'node:child_process';
import type { Shutdown } from '../../services/platform/src/lifecycle';
import {
  formatRow,
  sampleLoad,
  summarize,
  type LoadOptions,
  type LoadResult,
  type LoadSamples,
} from './load';

export interface ServerProcess {
  readonly port: number;
  readonly address: string;
  /** Server CPU time (user + system) in microseconds since start. */
  cpuMicros(): Promise<number>;
  stop(): Promise<void>;
}

/** How long a server has to exit after SIGTERM before it is killed. */
const STOP_TIMEOUT_MS = 15_000;

type ChildMessage = { type: 'ready'; port: number } | { type: 'cpu'; micros: number };

/** Forks `script` (a compiled .js file) with `args` and waits until it says it is listening. */
export async function startServerProcess(
  script: string,
  args: readonly string[] = [],
  env: NodeJS.ProcessEnv = {},
): Promise<ServerProcess> {
  const child: ChildProcess = fork(script, [...args], {
    env: { ...process.env, ...env },
    // Profiling and similar flags are inherited; the load generator's heap size is not.
    execArgv: process.execArgv.filter((flag) => !/^--max[-_]semi[-_]space[-_]size/.test(flag)),
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const port = await new Promise<number>((resolve, reject) => {
    child.once('exit', (code) => {
      reject(new Error(`${script} exited with ${code}`));
    });
    child.on('message', (m: ChildMessage) => {
      if (m.type === 'ready') resolve(m.port);
    });
  });
  return {
    port,
    address: `127.0.0.1:${port}`,
    cpuMicros: () =>
      new Promise((resolve) => {
        const onMessage = (m: ChildMessage): void => {
          if (m.type === 'cpu') {
            child.off('message', onMessage);
            resolve(m.micros);
          }
        };
        child.on('message', onMessage);
        child.send({ type: 'cpu' });
      }),
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) {
          resolve();
          return;
        }
        // A server that does not exit in time is killed, so one stuck shutdown cannot stall a
        // benchmark run; it is reported, since it is a defect.
        const timer = setTimeout(() => {
          console.error(
            `${script} (pid ${child.pid}) did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM; killed`,
          );
          child.kill('SIGKILL');
        }, STOP_TIMEOUT_MS);
        child.once('exit', () => {
          clearTimeout(timer);
          resolve();
        });
        child.kill('SIGTERM');
      }),
  };
}

/**
 * For the child: announce the port and answer CPU requests. A server with an ordered shutdown
 * passes it, and SIGTERM runs it as in production (`Shutdown.onSignals`): exiting with an
 * embedded-store write in flight would hang the process (lmdb-js's write thread waits for the
 * JavaScript thread, which exit stops). Others exit at once.
 */
export function serveBenchmarkProcess(port: number, shutdown?: Shutdown): void {
  process.send?.({ type: 'ready', port } satisfies ChildMessage);
  process.on('message', (m: { type: string }) => {
    if (m.type === 'cpu') {
      const usage = process.cpuUsage();
      process.send?.({ type: 'cpu', micros: usage.user + usage.system } satisfies ChildMessage);
    }
  });
  if (shutdown !== undefined) shutdown.onSignals(5_000);
  else {
    process.once('SIGTERM', () => {
      process.exit(0);
    });
  }
}

/** A load run against one server, with both sides' CPU time per call. */
export interface Measured {
  readonly result: LoadResult;
  /** The server's CPU per call (all its threads), when its process is known. */
  readonly serverCpuUsPerCall: number | undefined;
  /** The load generator's CPU per call (this process: encoding, HTTP/2, decoding, GC). */
  readonly clientCpuUsPerCall: number;
}

/** One side of a comparison: its call, and its server's process when the benchmark started it. */
export interface Contender {
  readonly call: () => Promise<unknown>;
  readonly server?: ServerProcess;
}

export interface InterleaveOptions {
  readonly concurrency: number;
  /** Recorded time per contender, split into slices. */
  readonly durationMs: number;
  /**
   * About one slice's recorded time (default 500 ms): `durationMs` is split into an even number
   * of equal slices (or one), so that each contender goes first equally often.
   */
  readonly sliceMs?: number;
  /** Each slice's warm-up (default a fifth of the slice, at most 100 ms). */
  readonly warmupMs?: number;
}

/**
 * Measures the contenders in alternating slices (A B, then B A, and so on) and pools each one's
 * latencies, so that the slow and fast spells of a shared host fall on all of them alike. Measured
 * one after the other for seconds each, the same two servers' p99 ratio moved by 1.5x between
 * rounds here, because the host's speed changed between them. Every slice starts with a short
 * warm-up, excluded from the latencies but not from the CPU per call.
 */
export async function measureInterleaved<const T extends readonly Contender[]>(
  contenders: T,
  options: InterleaveOptions,
): Promise<{ -readonly [K in keyof T]: Measured }> {
  let slices = Math.max(1, Math.round(options.durationMs / (options.sliceMs ?? 500)));
  if (slices > 1 && slices % 2 === 1) slices += 1;
  const sliceMs = options.durationMs / slices;
  const slice: LoadOptions = {
    concurrency: options.concurrency,
    durationMs: sliceMs,
    warmupMs: options.warmupMs ?? Math.min(100, sliceMs / 5),
  };
  const totals = contenders.map(() => ({
    samples: [] as LoadSamples[],
    issued: 0,
    serverMicros: 0,
    clientMicros: 0,
  }));
  for (let s = 0; s < slices; s++) {
    const order = contenders.map((_, i) => i);
    if (s % 2 === 1) order.reverse();
    for (const i of order) {
      const { call, server } = contenders[i] as Contender;
      const total = totals[i] as (typeof totals)[0];
      const serverBefore = await server?.cpuMicros();
      const clientBefore = process.cpuUsage();
      const samples = await sampleLoad(call, slice);
      const client = process.cpuUsage(clientBefore);
      const serverAfter = await server?.cpuMicros();
      total.samples.push(samples);
      total.issued += samples.issued;
      total.clientMicros += client.user + client.system;
      if (serverBefore !== undefined && serverAfter !== undefined)
        total.serverMicros += serverAfter - serverBefore;
    }
  }
  return contenders.map((contender, i): Measured => {
    const total = totals[i] as (typeof totals)[0];
    const calls = Math.max(1, total.issued);
    return {
      result: summarize(total.samples),
      serverCpuUsPerCall: contender.server === undefined ? undefined : total.serverMicros / calls,
      clientCpuUsPerCall: total.clientMicros / calls,
    };
  }) as { -readonly [K in keyof T]: Measured };
}

/** One row of a side-by-side table: throughput, latencies, and CPU per call on both sides. */
export function measuredRow(label: string, measured: Measured): string {
  const r = measured.result;
  const server =
    measured.serverCpuUsPerCall === undefined
      ? ''
      : `server CPU ~${measured.serverCpuUsPerCall.toFixed(0)} µs/call, `;
  return `${formatRow(label, r).replace(/ {3}p99/, `   p90 ${r.p90Ms.toFixed(3)} ms   p99`)}   ${server}client ~${measured.clientCpuUsPerCall.toFixed(0)}`;
}
