/**
 * Handler pacing as `implement()` uses it: a call that waits for its turn and is cancelled (by its
 * caller, or its deadline) meanwhile is not started, and is counted with the status the caller got.
 * The calls are fakes carrying what the adapter reads; a first call that takes longer than a slice
 * makes the next one wait.
 */
import { EventEmitter } from 'node:events';
import { Metadata, status as GrpcCode, type sendUnaryData } from '@grpc/grpc-js';
import { implement } from '../../src/grpc/handlers';
import { createLogger } from '../../src/logging';
import { installTestMetrics, type TestMetrics } from '../support/metrics';

const definition = {
  work: {
    path: '/tandem.test.v1.PacingService/Work',
    requestStream: false,
    responseStream: false,
    requestSerialize: (value: string): Buffer => Buffer.from(value),
    requestDeserialize: (value: Buffer): string => value.toString(),
    responseSerialize: (value: string): Buffer => Buffer.from(value),
    responseDeserialize: (value: Buffer): string => value.toString(),
  },
} as const;

/** The next turn of the event loop (after the immediates queued so far). */
function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function fakeCall(request: string, deadline: number = Infinity) {
  return Object.assign(new EventEmitter(), {
    request,
    metadata: new Metadata(),
    getDeadline: () => deadline,
    getPeer: () => 'ipv4:127.0.0.1:1',
  });
}

type Unary = (call: unknown, callback: sendUnaryData<unknown>) => void;

describe('calls paced by implement()', () => {
  let metrics: TestMetrics;
  const started: string[] = [];
  let unary: Unary;

  beforeEach(async () => {
    // A turn of the loop between tests: the pacer is the process's, and its slice ends then.
    await nextTurn();
    metrics = installTestMetrics();
    started.length = 0;
    const impl = implement(
      definition,
      {
        work: (request: string) => {
          started.push(request);
          // Synchronous work longer than a slice: calls after it wait for the next turn.
          const until = performance.now() + 2;
          while (performance.now() < until);
          return Promise.resolve(request);
        },
      },
      { logger: createLogger({ service: 'pacing-test', level: 'silent' }) },
    );
    unary = impl.work as Unary;
  });

  afterEach(async () => {
    await metrics.shutdown();
  });

  /** Starts `call` after a first call has used the slice: it waits for a later turn. */
  function waitingCall(
    call: ReturnType<typeof fakeCall>,
  ): Promise<{ error: { code: number } | null }> {
    unary(fakeCall('first'), () => undefined);
    const answered = new Promise<{ error: { code: number } | null }>((resolve) => {
      unary(call, (error) => {
        resolve({ error: error as { code: number } | null });
      });
    });
    expect(started).toEqual(['first']);
    return answered;
  }

  async function codes(): Promise<number[]> {
    const points = await metrics.points('rpc.server.call.duration');
    return points.map((point) => point.attributes['rpc.grpc.status_code'] as number).sort();
  }

  it('does not start a call its caller cancelled while it waited, and counts it CANCELLED', async () => {
    const second = fakeCall('second');
    const answered = waitingCall(second);
    // grpc-js reports the cancellation (the stream closed) before the call's turn comes.
    second.emit('cancelled', 'cancelled');
    const { error } = await answered;
    await nextTurn();
    expect(started).toEqual(['first']);
    expect(error?.code).toBe(GrpcCode.CANCELLED);
    expect(await codes()).toEqual([GrpcCode.OK, GrpcCode.CANCELLED].sort());
  });

  it('counts a call whose deadline passed while it waited as DEADLINE_EXCEEDED, without starting it', async () => {
    const second = fakeCall('second', Date.now());
    const answered = waitingCall(second);
    second.emit('cancelled', 'cancelled');
    await answered;
    expect(started).toEqual(['first']);
    expect(await codes()).toEqual([GrpcCode.OK, GrpcCode.DEADLINE_EXCEEDED].sort());
  });

  it('starts a waiting call that was not cancelled', async () => {
    const { error } = await waitingCall(fakeCall('second'));
    expect(error).toBeNull();
    expect(started).toEqual(['first', 'second']);
  });
});
