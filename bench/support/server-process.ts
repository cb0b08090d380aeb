/**
 * Runs a benchmark server in its own process, as in production, so the load generator and the
 * server do not share an event loop. The child reports its port, and on request its CPU time, so a
 * benchmark can print server CPU per call beside client-side latency.
 */
import { fork, type ChildProcess } from 'node:child_process';
import type { Shutdown } from '../../services/platform/src/lifecycle';
import { runLoad, type LoadOptions, type LoadResult } from './load';

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
  /** The server's CPU per call (all its threads; warm-up calls are in the window, not counted). */
  readonly serverCpuUsPerCall: number;
  /** The load generator's CPU per call (this process: encoding, HTTP/2, decoding, GC). */
  readonly clientCpuUsPerCall: number;
}

/** Runs `call` under load against `server` and reports the latencies and CPU per call. */
export async function measureAgainst(
  server: ServerProcess,
  call: () => Promise<unknown>,
  options: LoadOptions,
): Promise<Measured> {
  const cpuBefore = await server.cpuMicros();
  const clientBefore = process.cpuUsage();
  const result = await runLoad(call, options);
  const client = process.cpuUsage(clientBefore);
  const cpuAfter = await server.cpuMicros();
  const calls = Math.max(1, result.calls);
  return {
    result,
    serverCpuUsPerCall: (cpuAfter - cpuBefore) / calls,
    clientCpuUsPerCall: (client.user + client.system) / calls,
  };
}
