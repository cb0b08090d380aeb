/**
 * Per-method request limits: a request over its method's limit is refused RESOURCE_EXHAUSTED
 * (`REQUEST_TOO_LARGE`) before it is decoded, and the largest valid request of each limited
 * method, every documented limit at once, is taken; GetOnlineFeatures and WriteFeatures keep the
 * message limit alone.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { credentials, Metadata, status as GrpcCode } from '@grpc/grpc-js';
import * as contract from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import type { Entity } from '../../../gen/ts/tandem/featurestore/v1/entity';
import type { FeatureView } from '../../../gen/ts/tandem/featurestore/v1/feature_view';
import { ValueType } from '../../../gen/ts/tandem/featurestore/v1/value';
import { createClient, type TypedClient } from '../../platform/src/grpc/client';
import { paddedTo, sizedCall } from '../../platform/test/support/sized-request';
import { registryLimits } from '../src/domain/registry';
import { valueLimits } from '../src/domain/feature-values';
import {
  APPLY_ENTITY_MAX_REQUEST_BYTES,
  APPLY_FEATURE_VIEW_MAX_REQUEST_BYTES,
  FEATURE_STORE_REQUEST_LIMITS,
} from '../src/service';
import { MAX_REQUEST_ID_LENGTH } from '../src/store/request-results';
import { ADMIN_TOKEN, startHarness, type RunningHarness } from './support/feature-store-harness';
import { str, userEntity, userStatsView } from './support/fixtures';

const { FeatureStoreServiceService } = contract;
type Method = keyof typeof FeatureStoreServiceService;

/** A name of 63 characters, distinct by `i` (`_` joins, which every name pattern takes). */
function named(prefix: string, i: number): string {
  return `${prefix}${i}_`.padEnd(63, 'z');
}

/** `n` code points of 4 bytes each: the longest UTF-8 a limit in characters allows. */
function wide(n: number): string {
  return '😀'.repeat(n);
}

/** A request id at its limit, 3 bytes a character, distinct by `i` (0–9). */
function requestId(i: number): string {
  return `${'€'.repeat(MAX_REQUEST_ID_LENGTH - 1)}${i}`;
}
/** Output-only times sent back as a definition was read (the etag makes an apply conditional). */
const OUTPUT = {
  etag: '',
  createTime: new Date(1_700_000_000_123),
  updateTime: new Date(1_700_000_000_456),
};

function requestType(method: Method): { decode: (bytes: Uint8Array) => unknown } {
  const name = `${method[0]?.toUpperCase() ?? ''}${method.slice(1)}Request`;
  return (contract as unknown as Record<string, { decode: (bytes: Uint8Array) => unknown }>)[name]!;
}

function rpcComment(proto: string, method: Method): string {
  const name = `${method[0]?.toUpperCase() ?? ''}${method.slice(1)}`;
  const lines = proto.slice(0, proto.indexOf(`  rpc ${name}(`)).split('\n');
  const comment: string[] = [];
  for (let i = lines.length - 2; i >= 0 && lines[i]!.trim().startsWith('//'); i--) {
    comment.unshift(lines[i]!.trim().slice(2).trim());
  }
  return comment.join(' ');
}

describe('FeatureStore request limits', () => {
  let harness: RunningHarness;
  /** With the admin token, taking responses as large as the server sends. */
  let client: TypedClient<typeof FeatureStoreServiceService>;

  beforeAll(async () => {
    harness = await startHarness();
    const metadata = new Metadata();
    metadata.set('authorization', `Bearer ${ADMIN_TOKEN}`);
    client = createClient(FeatureStoreServiceService, {
      address: harness.address,
      credentials: credentials.createInsecure(),
      metadata,
      channelOptions: { 'grpc.max_receive_message_length': -1 },
      defaultTimeoutMs: 60_000,
    });
  });

  afterAll(async () => {
    client.close();
    await harness.stop();
  });

  /**
   * The request's encoded size is within half `limit` (the margin holds) and, unless `floor`,
   * over a quarter (the bound is tight); padded one byte past `limit`, `method` refuses it.
   */
  async function expectWithinMargin(
    method: Method,
    encoded: Uint8Array,
    limit: number,
    floor = false,
  ): Promise<void> {
    expect(encoded.length).toBeLessThanOrEqual(limit / 2);
    if (!floor) expect(encoded.length).toBeGreaterThan(limit / 4);
    const { path } = FeatureStoreServiceService[method];
    const over = await sizedCall(harness.address, path, paddedTo(encoded, limit + 1), ADMIN_TOKEN);
    expect([over?.code, over?.reason]).toEqual([GrpcCode.RESOURCE_EXHAUSTED, 'REQUEST_TOO_LARGE']);
  }

  const limited = (Object.entries(FEATURE_STORE_REQUEST_LIMITS) as [Method, number | undefined][])
    .filter((entry): entry is [Method, number] => entry[1] !== undefined)
    .map(([method, limit]) => [method, limit] as const);

  it('gives every method but the reads and writes of values a limit, as its contract states', () => {
    const proto = readFileSync(
      join(__dirname, '../../../proto/tandem/featurestore/v1/featurestore_service.proto'),
      'utf8',
    );
    expect(limited.map(([method]) => method).sort()).toEqual(
      Object.keys(FeatureStoreServiceService)
        .filter((method) => method !== 'getOnlineFeatures' && method !== 'writeFeatures')
        .sort(),
    );
    for (const [method, limit] of limited) {
      expect(limit).toBeLessThan(harness.runtime.config.grpc.maxMessageBytes);
      const comment = rpcComment(proto, method);
      expect([method, comment]).toEqual([
        method,
        expect.stringContaining(`Request limit: ${(limit / 1024).toLocaleString('en-US')} KiB`),
      ]);
      expect(comment).toContain('REQUEST_TOO_LARGE');
    }
  });

  it.each(limited)(
    '%s refuses a request one byte over its limit (%i bytes) without decoding it',
    async (method, limit) => {
      const { path } = FeatureStoreServiceService[method];
      const decode = jest.spyOn(requestType(method), 'decode');
      try {
        const bytes = paddedTo(Buffer.alloc(0), limit + 1);
        const over = await sizedCall(harness.address, path, bytes, ADMIN_TOKEN);
        expect(over?.code).toBe(GrpcCode.RESOURCE_EXHAUSTED);
        expect(over?.reason).toBe('REQUEST_TOO_LARGE');
        expect(over?.metadata.limit_bytes).toBe(String(limit));
        // Nor for a caller without the admin token.
        await sizedCall(harness.address, path, bytes);
        expect(decode).not.toHaveBeenCalled();
        // At the limit it is decoded, and answered as any other.
        const at = await sizedCall(harness.address, path, paddedTo(Buffer.alloc(0), limit));
        expect(at?.reason).not.toBe('REQUEST_TOO_LARGE');
        expect(decode).toHaveBeenCalledTimes(1);
      } finally {
        decode.mockRestore();
      }
    },
  );

  const entity = (i: number): Entity => ({
    name: named('entity', i),
    joinKey: named('key', i),
    valueType: ValueType.VALUE_TYPE_STRING,
    description: wide(registryLimits.maxDescription),
    owner: wide(registryLimits.maxOwner),
    ...OUTPUT,
  });

  it('takes the largest valid ApplyEntity and ApplyFeatureView', async () => {
    const entities = Array.from({ length: registryLimits.maxEntities }, (_, i) => entity(i));
    for (const [i, defined] of entities.entries()) {
      // Applied, then applied again as read (with its etag and times).
      const first = await client.applyEntity({ entity: defined, requestId: '' });
      const request = { entity: { ...defined, ...first.entity! }, requestId: requestId(i) };
      // At the floor of request limits, three times what it holds.
      await expectWithinMargin(
        'applyEntity',
        contract.ApplyEntityRequest.encode(request).finish(),
        APPLY_ENTITY_MAX_REQUEST_BYTES,
        true,
      );
      expect((await client.applyEntity(request)).changed).toBe(false);
    }

    const view: FeatureView = {
      name: named('view', 0),
      description: wide(registryLimits.maxDescription),
      owner: wide(registryLimits.maxOwner),
      tags: Object.fromEntries(
        Array.from({ length: registryLimits.maxTags }, (_, i) => [
          named('tag', i),
          wide(registryLimits.maxTagValue),
        ]),
      ),
      entities: entities.map((e) => e.name),
      features: Array.from({ length: registryLimits.maxFeatures }, (_, i) => ({
        name: named('f', i),
        valueType: ValueType.VALUE_TYPE_FLOAT_VECTOR,
        description: wide(registryLimits.maxDescription),
        vectorLength: valueLimits.maxVectorLength,
      })),
      ttl: { seconds: 99 * 365 * 86_400, nanos: 999_000_000 },
      online: true,
      source: { $case: 'pushSource', value: {} },
      ...OUTPUT,
    };
    const first = await client.applyFeatureView({
      featureView: view,
      requestId: '',
      validateOnly: false,
    });
    expect(first.featureView?.features).toHaveLength(registryLimits.maxFeatures);
    // Applied again as it was read, with its etag and times: unchanged.
    const request = {
      featureView: first.featureView!,
      requestId: requestId(9),
      validateOnly: false,
    };
    await expectWithinMargin(
      'applyFeatureView',
      contract.ApplyFeatureViewRequest.encode(request).finish(),
      APPLY_FEATURE_VIEW_MAX_REQUEST_BYTES,
    );
    expect((await client.applyFeatureView(request)).changed).toBe(false);
  }, 120_000);

  it('keeps the message limit alone for GetOnlineFeatures: 10,000 keys of 400 bytes are read', async () => {
    await client.applyEntity({ entity: userEntity, requestId: '' });
    await client.applyFeatureView({
      featureView: userStatsView(),
      requestId: '',
      validateOnly: false,
    });
    const keys = Array.from({ length: 10_000 }, (_, i) => `${i}`.padEnd(400, 'k'));
    const request = {
      features: ['user_stats:ctr'],
      entityRows: { user_id: { values: keys.map(str) } },
    };
    expect(
      contract.GetOnlineFeaturesRequest.encode({ ...request, omitEventTimes: true }).finish()
        .length,
    ).toBeGreaterThan(4_000_000);
    const read = await client.getOnlineFeatures({ ...request, omitEventTimes: true });
    expect(read.columns[0]?.statuses).toHaveLength(10_000);
  });
});
