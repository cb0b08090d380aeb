/**
 * Runs the compiled service entry points in `dist/` as child processes, as production does
 * (`make test` builds them first), on the embedded store and in-process bus unless told otherwise.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import type { Client, ServiceError } from '@grpc/grpc-js';
import { fromServiceError, type TandemError } from '../../src/errors';
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';

export const ROOT = join(__dirname, '..', '..', '..', '..');

export const ENTRY_POINTS = [
  {
    service: 'assignment',
    main: 'dist/services/assignment/src/main.js',
    portVariable: 'TANDEM_ASSIGNMENT_PORT',
    grpcService: 'tandem.assignment.v1.AssignmentService',
    listMethod: '/tandem.assignment.v1.AssignmentService/ListExperiments',
  },
  {
    service: 'featurestore',
    main: 'dist/services/featurestore/src/main.js',
    portVariable: 'TANDEM_FEATURESTORE_PORT',
    grpcService: 'tandem.featurestore.v1.FeatureStoreService',
    listMethod: '/tandem.featurestore.v1.FeatureStoreService/ListFeatureViews',
  },
] as const;

/** A listening socket on a free local port; close it to leave the port free for someone else. */
export async function takePort(): Promise<{ server: Server; port: number }> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  return { server, port: typeof address === 'object' && address ? address.port : 0 };
}

/** A local port nothing listens on (free when this returns). */
export async function freePort(): Promise<number> {
  const { server, port } = await takePort();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

export interface RunningEntryPoint {
  readonly child: ChildProcessWithoutNullStreams;
  /** Everything it has written to stdout and stderr so far. */
  output(): string;
  /** Its exit code (or signal), or a message when it was still running after `timeoutMs`. */
  readonly exited: Promise<number | string | null>;
}

/**
 * Starts a compiled entry point with `settings` over the test's environment, without the test's
 * MONGODB_URI and NATS_URL unless `settings` gives them. It is killed after `timeoutMs`.
 */
export function startEntryPoint(
  main: string,
  settings: NodeJS.ProcessEnv,
  timeoutMs = 20_000,
): RunningEntryPoint {
  const script = join(ROOT, main);
  if (!existsSync(script)) throw new Error(`${main} is missing: run \`make build\` first`);
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    TANDEM_GRPC_HOST: '127.0.0.1',
    LOG_LEVEL: 'debug',
  };
  delete env.MONGODB_URI;
  delete env.NATS_URL;
  Object.assign(env, settings);
  const child = spawn(process.execPath, [script], { cwd: ROOT, env, stdio: 'pipe' });
  let output = '';
  const collect = (chunk: Buffer): void => {
    output += chunk.toString();
  };
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  const exited = new Promise<number | string | null>((resolve) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      resolve(`still running after ${timeoutMs / 1000} s`);
    }, timeoutMs);
    child.once('exit', (exitCode, signal) => {
      clearTimeout(timer);
      resolve(exitCode ?? signal);
    });
  });
  return { child, output: () => output, exited };
}

/**
 * Runs a compiled entry point until it exits (20 s at most), sending it SIGTERM as soon as its
 * output contains `signalWhen` when that is given.
 */
export async function runEntryPoint(
  main: string,
  settings: NodeJS.ProcessEnv,
  signalWhen?: string,
): Promise<{ code: number | string | null; output: string }> {
  const running = startEntryPoint(main, settings);
  if (signalWhen !== undefined) {
    const watch = (): void => {
      if (running.output().includes(signalWhen)) {
        running.child.stdout.off('data', watch);
        running.child.stderr.off('data', watch);
        running.child.kill('SIGTERM');
      }
    };
    running.child.stdout.on('data', watch);
    running.child.stderr.on('data', watch);
  }
  const code = await running.exited;
  return { code, output: running.output() };
}

/** The shutdown steps a process logged as done, in order (pino JSON lines at debug). */
export function shutdownSteps(output: string): string[] {
  const steps: string[] = [];
  for (const line of output.split('\n')) {
    if (!line.includes('shutdown step done')) continue;
    try {
      const { step } = JSON.parse(line) as { step?: unknown };
      if (typeof step === 'string') steps.push(step);
    } catch {
      // Not a log line.
    }
  }
  return steps;
}

/** Polls `read` until it returns `expected` (a read that throws counts as not yet). */
export async function pollUntil<T>(
  read: () => Promise<T>,
  expected: T,
  timeoutMs: number,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T | string = 'no answer';
  while (Date.now() < deadline) {
    try {
      last = await read();
      if (last === expected) return last;
    } catch (error) {
      last = (error as Error).message;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`still ${String(last)} after ${timeoutMs} ms, expected ${String(expected)}`);
}

/** Calls a unary method with an empty request; resolves with the status (code 0 = OK). */
export function callEmpty(
  client: Client,
  path: string,
): Promise<{ code: number; details: string; error?: TandemError }> {
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      path,
      (value: Buffer) => value,
      (value: Buffer) => value,
      Buffer.alloc(0),
      (error: ServiceError | null) => {
        resolve(
          error
            ? { code: error.code, details: error.details, error: fromServiceError(error) }
            : { code: 0, details: '' },
        );
      },
    );
  });
}
