/**
 * The cap on rows × features of one read, set low to be reached with a few rows; and the
 * message-size limit, which a read of repeated rows can pass within every other limit.
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import { failureOf } from './feature-store-api';
import { startHarness, type RunningHarness } from './support/feature-store-harness';
import { applyUserStats, str, userRow, users, vector } from './support/fixtures';

describe('a read over the values-per-read limit', () => {
  let harness: RunningHarness;

  beforeAll(async () => {
    harness = await startHarness({ env: { TANDEM_FEATURESTORE_MAX_VALUES_PER_READ: '10' } });
    await applyUserStats(harness.client);
  });

  afterAll(async () => {
    await harness.stop();
  });

  it('is refused with LIMIT_EXCEEDED on features, and one within it is served', async () => {
    // user_stats has six features: two rows are 12 values, one row 6.
    const over = await failureOf(
      harness.client.getOnlineFeatures({
        features: ['user_stats:*'],
        entityRows: users('u1', 'u2'),
        omitEventTimes: false,
      }),
    );
    expect(over.violations.map((v) => [v.field, v.reason])).toEqual([
      ['features', 'LIMIT_EXCEEDED'],
    ]);
    const within = await harness.client.getOnlineFeatures({
      features: ['user_stats:*'],
      entityRows: users('u1'),
      omitEventTimes: false,
    });
    expect(within.columns).toHaveLength(6);
  });
});

describe('a read whose response would pass the message-size limit', () => {
  const MAX_MESSAGE_BYTES = 1024 * 1024;
  let harness: RunningHarness;

  beforeAll(async () => {
    harness = await startHarness({
      env: { TANDEM_GRPC_MAX_MESSAGE_BYTES: String(MAX_MESSAGE_BYTES) },
    });
    await applyUserStats(harness.client);
    await harness.client.writeFeatures({
      featureView: 'user_stats',
      rows: [
        userRow('u1', new Date(Date.now() - 1000), {
          country: str('x'.repeat(60_000)),
          embedding: vector([1, 2, 3]),
        }),
      ],
      requestId: '',
    });
  });

  afterAll(async () => {
    await harness.stop();
  });

  /** The largest `Buffer.allocUnsafe` while `call` runs (the server runs in this process). */
  async function largestAllocation(call: () => Promise<unknown>): Promise<number> {
    const allocUnsafe = Buffer.allocUnsafe.bind(Buffer);
    let largest = 0;
    Buffer.allocUnsafe = (size: number) => {
      largest = Math.max(largest, size);
      return allocUnsafe(size);
    };
    try {
      await call();
    } finally {
      Buffer.allocUnsafe = allocUnsafe;
    }
    return largest;
  }

  it('is RESOURCE_EXHAUSTED before the response is built, and one within it is served', async () => {
    // 1,000 repeats of one 60 KB value: ~60 MB, within every limit but the message size.
    const ids = Array.from({ length: 1_000 }, () => 'u1');
    let failure: Awaited<ReturnType<typeof failureOf>> | undefined;
    const largest = await largestAllocation(async () => {
      failure = await failureOf(
        harness.client.getOnlineFeatures({
          features: ['user_stats:country'],
          entityRows: users(...ids),
          omitEventTimes: true,
        }),
      );
    });
    expect([failure?.code, failure?.errorInfo?.reason]).toEqual([
      GrpcCode.RESOURCE_EXHAUSTED,
      'RESPONSE_TOO_LARGE',
    ]);
    expect(largest).toBeLessThan(MAX_MESSAGE_BYTES);
    // Values encoded by the generated encoder (vectors) are counted as they are measured too.
    const vectors = await failureOf(
      harness.client.getOnlineFeatures({
        features: ['user_stats:embedding', 'user_stats:country'],
        entityRows: users(...ids),
        omitEventTimes: false,
      }),
    );
    expect(vectors.code).toBe(GrpcCode.RESOURCE_EXHAUSTED);
    const within = await harness.client.getOnlineFeatures({
      features: ['user_stats:country'],
      entityRows: users('u1', 'u1'),
      omitEventTimes: true,
    });
    expect(within.columns[0]?.values).toHaveLength(2);
  });
});
