import fc from 'fast-check';
import { status as GrpcCode } from '@grpc/grpc-js';
import * as contract from '../../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import {
  RawCaller,
  assertAnswersBadInput,
  assertRawBytesRefused,
  requestCodec,
  nastyDate,
  nastyEnum,
  nastyInt64,
  nastyNumber,
  nastyString,
} from '../../../platform/test/support/bad-input';
import { ADMIN_TOKEN, startHarness, type RunningHarness } from '../support/feature-store-harness';
import { itemEntity, userEntity, userStatsView } from '../support/fixtures';

const { FeatureStoreServiceService } = contract;
type Method = keyof typeof FeatureStoreServiceService;
/** Runs per RPC: a few in every test run, more on demand (for example FUZZ_RUNS=200, minutes). */
const RUNS = Number(process.env.FUZZ_RUNS ?? 30);
const MUTATIONS = new Set<Method>([
  'applyEntity',
  'deleteEntity',
  'applyFeatureView',
  'deleteFeatureView',
  'writeFeatures',
]);

describe('FeatureStore bad input fuzz', () => {
  let h: RunningHarness;
  let raw: RawCaller;
  const etags = ['', 'x', '0', '"1"'];

  beforeAll(async () => {
    h = await startHarness();
    raw = new RawCaller(h.address, ADMIN_TOKEN);
    etags.push((await h.client.applyEntity({ entity: userEntity, requestId: '' })).entity!.etag);
    etags.push((await h.client.applyEntity({ entity: itemEntity, requestId: '' })).entity!.etag);
    etags.push(
      (
        await h.client.applyFeatureView({
          featureView: userStatsView(),
          requestId: '',
          validateOnly: false,
        })
      ).featureView!.etag,
    );
    etags.push(
      (
        await h.client.applyFeatureView({
          featureView: userStatsView({ name: 'pair', entities: ['user', 'item'] }),
          requestId: '',
          validateOnly: false,
        })
      ).featureView!.etag,
    );
  });

  beforeEach(async () => {
    await h.client.applyEntity({ entity: userEntity, requestId: '' }).catch(() => undefined);
    await h.client.applyEntity({ entity: itemEntity, requestId: '' }).catch(() => undefined);
    for (const v of [
      userStatsView(),
      userStatsView({ name: 'pair', entities: ['user', 'item'] }),
    ]) {
      const r = await h.client
        .applyFeatureView({ featureView: v, requestId: '', validateOnly: false })
        .catch(() => undefined);
      if (r) etags.push(r.featureView!.etag);
    }
    await new Promise((r) => setTimeout(r, 300));
  });

  afterAll(async () => {
    raw.close();
    await h.stop();
  });

  async function snapshot(): Promise<string> {
    const [e, v] = await Promise.all([
      h.client.listEntities({ pageSize: 1000, pageToken: '' }),
      h.client.listFeatureViews({ pageSize: 1000, pageToken: '', entity: '' }),
    ]);
    const read = await h.client
      .getOnlineFeatures({
        features: ['user_stats:*'],
        entityRows: {
          user_id: {
            values: ['u1', 'u2', '__proto__', ''].map((s) => ({
              kind: { $case: 'stringValue' as const, value: s },
            })),
          },
        },
        omitEventTimes: false,
      })
      .then((r) => JSON.stringify(r.columns))
      .catch((err: unknown) => String(err));
    return JSON.stringify({ e, v, read });
  }

  const m = (
    valid: fc.Arbitrary<unknown>,
    nasty: fc.Arbitrary<unknown>,
    w = 12,
  ): fc.Arbitrary<unknown> =>
    fc.oneof({ weight: w, arbitrary: valid }, { weight: 1, arbitrary: nasty });
  const str = () => nastyString();
  const name = () => nastyString(['user', 'item', 'user_stats', 'pair', 'nope']);
  const etag = () => m(fc.constant(''), fc.oneof(fc.constantFrom(...etags), str()), 4);
  const reqId = () =>
    m(fc.constant(''), fc.oneof(nastyString(), fc.constantFrom('x'.repeat(128), 'x'.repeat(129))));
  const duration = () =>
    fc.option(
      fc.record({
        seconds: nastyInt64(),
        nanos: fc.oneof(fc.integer({ min: -1e9, max: 1e9 }), fc.constantFrom(-1, 1e9, 999_999_999)),
      }),
      { nil: undefined },
    );
  const value = (): fc.Arbitrary<unknown> =>
    fc.oneof(
      fc.constant({}),
      fc.record({ kind: fc.record({ $case: fc.constant('doubleValue'), value: nastyNumber() }) }),
      fc.record({ kind: fc.record({ $case: fc.constant('int64Value'), value: nastyInt64() }) }),
      fc.record({
        kind: fc.record({
          $case: fc.constant('stringValue'),
          value: m(
            fc.constantFrom('u1', 'u2', 'i1'),
            fc.oneof(str(), fc.constant('x'.repeat(401))),
            3,
          ),
        }),
      }),
      fc.record({ kind: fc.record({ $case: fc.constant('boolValue'), value: fc.boolean() }) }),
      fc.record({
        kind: fc.record({
          $case: fc.constant('floatVectorValue'),
          value: fc.record({
            values: fc.array(fc.oneof(fc.float(), nastyNumber()), { maxLength: 5 }),
          }),
        }),
      }),
      fc.record({
        kind: fc.record({
          $case: fc.constant('stringListValue'),
          value: fc.record({ values: fc.array(str(), { maxLength: 4 }) }),
        }),
      }),
    );
  const valueType = () => nastyEnum(6);
  const aggregation = () =>
    fc.record({
      feature: m(fc.constantFrom('n', 'plays'), str(), 3),
      function: nastyEnum(7),
      valueField: m(fc.constantFrom('', 'value', 'reward'), str(), 3),
      window: m(
        fc.constantFrom({ seconds: 3600, nanos: 0 }, { seconds: 60, nanos: 0 }),
        duration(),
        3,
      ),
      bucket: m(fc.constantFrom(undefined, { seconds: 60, nanos: 0 }), duration(), 3),
    });
  const view = () =>
    fc.record({
      name: m(fc.constantFrom('user_stats', 'v2', 'v3', 'pair', 's1'), name()),
      description: m(fc.constant(''), str()),
      owner: m(fc.constant(''), str()),
      tags: m(fc.constant({}), fc.dictionary(str(), str(), { maxKeys: 3 })),
      entities: m(
        fc.constantFrom(['user'], ['user', 'item'], ['item']),
        fc.array(name(), { maxLength: 3 }),
      ),
      features: m(
        fc.constant(userStatsView().features),
        fc.array(
          fc.record({
            name: m(fc.constantFrom('ctr', 'plays', 'n', 'x'), str(), 3),
            valueType: valueType(),
            description: str(),
            vectorLength: fc.oneof(
              fc.integer({ min: -2, max: 5 }),
              fc.constantFrom(2 ** 31 - 1, -(2 ** 31), 100_000),
            ),
          }),
          { maxLength: 4 },
        ),
        4,
      ),
      ttl: m(fc.constantFrom(undefined, { seconds: 86400, nanos: 0 }), duration()),
      online: fc.option(fc.boolean(), { nil: undefined }),
      source: m(
        fc.constant({ $case: 'pushSource', value: {} }),
        fc.oneof(
          fc.constant(undefined),
          fc.record({
            $case: fc.constant('streamSource'),
            value: fc.record({
              subject: m(
                fc.constantFrom('tandem.events.outcome.v1', 'outcomes.x'),
                fc.oneof(str(), fc.constantFrom('a.*', 'a.>', '>', '*', 'a..b', 'a b')),
              ),
              eventNames: fc.array(str(), { maxLength: 3 }),
              key: nastyEnum(2),
              aggregations: fc.array(aggregation(), { maxLength: 3 }),
              allowedLateness: duration(),
            }),
          }),
        ),
        2,
      ),
      etag: etag(),
    });
  const row = () =>
    fc.record({
      entityKey: m(
        fc.constantFrom(
          { user_id: { kind: { $case: 'stringValue', value: 'u1' } } },
          { user_id: { kind: { $case: 'stringValue', value: 'u2' } } },
        ),
        fc.dictionary(nastyString(['user_id', 'item_id', '__proto__']), value(), { maxKeys: 3 }),
        4,
      ),
      values: m(
        fc.constantFrom({ ctr: { kind: { $case: 'doubleValue', value: 0.5 } } }, {}),
        fc.dictionary(
          nastyString([
            'ctr',
            'plays',
            'country',
            'premium',
            'embedding',
            'genres',
            '__proto__',
            'constructor',
          ]),
          value(),
          { maxKeys: 4 },
        ),
        3,
      ),
      eventTime: m(fc.constant(new Date()), fc.option(nastyDate(), { nil: undefined }), 3),
    });
  const features = () =>
    m(
      fc.constantFrom(['user_stats:*'], ['user_stats:ctr', 'user_stats:plays'], ['pair:ctr']),
      fc.array(
        nastyString([
          'user_stats:ctr',
          'user_stats:*',
          'pair:*',
          'user_stats:',
          ':ctr',
          'user_stats:ctr:x',
          'user_stats:__proto__',
          '__proto__:ctr',
          'nope:*',
          'pair:ctr',
        ]),
        { maxLength: 4 },
      ),
      3,
    );
  const columns = () =>
    m(
      fc.constantFrom(
        { user_id: { values: [{ kind: { $case: 'stringValue', value: 'u1' } }] } },
        {
          user_id: { values: [{ kind: { $case: 'stringValue', value: 'u1' } }] },
          item_id: { values: [{ kind: { $case: 'stringValue', value: 'i1' } }] },
        },
      ),
      fc.dictionary(
        nastyString(['user_id', 'item_id', '__proto__', 'constructor']),
        fc.record({ values: fc.array(value(), { maxLength: 4 }) }),
        { maxKeys: 3 },
      ),
      3,
    );

  const arbs: Record<Method, fc.Arbitrary<unknown>> = {
    applyEntity: fc.record({
      entity: m(
        fc.record({
          name: m(fc.constantFrom('user', 'item', 'e1', 'e2'), name()),
          joinKey: m(fc.constantFrom('user_id', 'item_id', 'k'), str()),
          valueType: m(fc.constantFrom(3, 2), valueType()),
          description: str(),
          owner: str(),
          etag: etag(),
        }),
        fc.constant(undefined),
        20,
      ),
      requestId: reqId(),
    }),
    getEntity: fc.record({ name: name() }),
    listEntities: fc.record({
      pageSize: fc.integer(),
      pageToken: fc.oneof(fc.constant(''), str(), fc.constantFrom('dXNlcg', 'AAAA')),
    }),
    deleteEntity: fc.record({ name: name(), etag: etag(), requestId: reqId() }),
    applyFeatureView: fc.record({
      featureView: m(view(), fc.constant(undefined), 20),
      requestId: reqId(),
      validateOnly: fc.boolean(),
    }),
    getFeatureView: fc.record({ name: name() }),
    listFeatureViews: fc.record({
      pageSize: fc.integer(),
      pageToken: fc.oneof(fc.constant(''), str()),
      entity: name(),
    }),
    deleteFeatureView: fc.record({ name: name(), etag: etag(), requestId: reqId() }),
    getOnlineFeatures: fc.record({
      features: features(),
      entityRows: columns(),
      omitEventTimes: fc.boolean(),
    }),
    writeFeatures: fc.record({
      featureView: m(fc.constantFrom('user_stats', 'pair'), name(), 4),
      rows: m(fc.array(row(), { minLength: 1, maxLength: 4 }), fc.constant([]), 10),
      requestId: reqId(),
    }),
    getAggregationStatus: fc.record({ featureView: name() }),
  };

  const methods = Object.keys(FeatureStoreServiceService) as Method[];
  it.each(methods)(
    '%s answers bad input with a documented code',
    async (method) => {
      await assertAnswersBadInput({
        raw,
        path: FeatureStoreServiceService[method].path,
        codec: requestCodec(contract, method),
        requests: arbs[method],
        runs: RUNS,
        unchanged: MUTATIONS.has(method) ? snapshot : undefined,
      });
    },
    300_000,
  );

  it('raw bytes that are no protobuf message never get UNKNOWN or INTERNAL', async () => {
    await assertRawBytesRefused(
      raw,
      methods.map((method) => FeatureStoreServiceService[method].path),
      RUNS * 3,
    );
  }, 300_000);

  it('stays up', async () => {
    const outcome = await raw.call(FeatureStoreServiceService.listEntities.path, new Uint8Array());
    expect(outcome.code).toBe(GrpcCode.OK);
  });
});
