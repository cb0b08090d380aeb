import fc from 'fast-check';
import { status as GrpcCode } from '@grpc/grpc-js';
import * as contract from '../../../../gen/ts/tandem/assignment/v1/assignment_service';
import { HoldoutStatus } from '../../../../gen/ts/tandem/assignment/v1/holdout';
import {
  RawCaller,
  assertAnswersBadInput,
  assertRawBytesRefused,
  requestCodec,
  nastyDate,
  nastyEnum,
  nastyInt64,
  nastyJson,
  nastyNumber,
  nastyString,
  nested,
} from '../../../platform/test/support/bad-input';
import { ADMIN_TOKEN, startTestAssignment, type TestAssignment } from '../support/harness';
import { draftBandit, experiment, holdout } from '../support/fixtures';

const { AssignmentServiceService } = contract;
type Method = keyof typeof AssignmentServiceService;
/** Runs per RPC: a few in every test run, more on demand (for example FUZZ_RUNS=200, minutes). */
const RUNS = Number(process.env.FUZZ_RUNS ?? 30);

/** The admin writes: refused, each leaves the configuration as it was (Apply only logs exposures). */
const MUTATIONS = new Set<Method>([
  'createLayer',
  'updateLayer',
  'deleteLayer',
  'createExperiment',
  'updateExperiment',
  'deleteExperiment',
  'startExperiment',
  'stopExperiment',
  'concludeExperiment',
  'createHoldout',
  'updateHoldout',
  'deleteHoldout',
  'updateAllocation',
]);

describe('Assignment bad input fuzz', () => {
  let service: TestAssignment;
  let raw: RawCaller;
  const etags: string[] = ['', 'x', '"', 'W/"1"', '0'];
  const ids = ['l1', 'e-draft', 'e-run', 'b-run', 'h-run', 'e-stop', 'nope', 'h-draft'];
  let token = '';

  beforeAll(async () => {
    service = await startTestAssignment();
    raw = new RawCaller(service.address, ADMIN_TOKEN);
    const a = service.admin;
    const l = await a.createLayer({
      layer: { id: 'l1', description: '', owner: '', tags: [], allocations: [], etag: '' },
      requestId: '',
    });
    etags.push(l.layer!.etag);
    const d = await a.createExperiment({
      experiment: experiment('e-draft', {
        layerId: 'l1',
        layerRange: { start: 0, end: 0.5 },
        condition: { country: { $in: ['SE'] } },
      }),
      requestId: '',
    });
    etags.push(d.experiment!.etag);
    const r = await a.createExperiment({
      experiment: experiment('e-run', { sticky: true, condition: { 'app.version': { $gte: 3 } } }),
      requestId: '',
    });
    etags.push(
      (await a.startExperiment({ id: 'e-run', etag: '', requestId: '' })).experiment!.etag,
      r.experiment!.etag,
    );
    await a.createExperiment({ experiment: draftBandit('b-run'), requestId: '' });
    etags.push(
      (await a.startExperiment({ id: 'b-run', etag: '', requestId: '' })).experiment!.etag,
    );
    await a.createExperiment({ experiment: experiment('e-stop'), requestId: '' });
    await a.startExperiment({ id: 'e-stop', etag: '', requestId: '' });
    etags.push(
      (await a.stopExperiment({ id: 'e-stop', etag: '', requestId: '' })).experiment!.etag,
    );
    const h = await a.createHoldout({
      holdout: holdout('h-run', {
        surfaces: ['home'],
        status: HoldoutStatus.HOLDOUT_STATUS_RUNNING,
      }),
      requestId: '',
    });
    etags.push(h.holdout!.etag);
    etags.push(
      (
        await a.createHoldout({
          holdout: holdout('h-draft', { surfaces: ['home'] }),
          requestId: '',
        })
      ).holdout!.etag,
    );
    const resolved = await service.client.resolve(
      contract.ResolveRequest.fromPartial({
        unit: { id: 'u1', type: 'user' },
        surfaces: ['home', 'b-run'],
      }),
    );
    token = resolved.resolveToken;
  });

  afterAll(async () => {
    raw.close();
    await service.stop();
  });

  async function snapshot(): Promise<string> {
    const a = service.admin;
    const [l, e, h] = await Promise.all([
      a.listLayers({ pageSize: 1000, pageToken: '' }),
      a.listExperiments({ pageSize: 1000, pageToken: '', statuses: [], layerId: '', surface: '' }),
      a.listHoldouts({ pageSize: 1000, pageToken: '', statuses: [], layerId: '', surface: '' }),
    ]);
    const allocations = await Promise.all(
      e.experiments.map((x) =>
        a.getAllocation({ experimentId: x.id, sequence: 0 }).catch((err: unknown) => String(err)),
      ),
    );
    return JSON.stringify({ l, e, h, allocations });
  }

  const m = (
    valid: fc.Arbitrary<unknown>,
    nasty: fc.Arbitrary<unknown>,
    w = 15,
  ): fc.Arbitrary<unknown> =>
    fc.oneof({ weight: w, arbitrary: valid }, { weight: 1, arbitrary: nasty });
  const fresh = () => fc.stringMatching(/^[a-z][a-z0-9]{2,8}$/);
  const id = () => nastyString(ids);
  const etag = () => fc.oneof(fc.constantFrom(...etags), nastyString());
  const str = () => nastyString();
  const reqId = () =>
    fc.oneof(
      fc.constant(''),
      nastyString(),
      fc.constantFrom('x'.repeat(128), 'x'.repeat(129), '€'.repeat(128)),
    );
  const tags = () => fc.array(str(), { maxLength: 3 });
  const surfaces = () =>
    fc.array(nastyString(['home', 'b-run', 'checkout', 'a.b']), { maxLength: 3 });
  const condition = () =>
    fc.oneof(
      fc.constant(undefined),
      fc.constantFrom<Record<string, unknown>>(
        { $where: 'sleep(100)' },
        { x: { $function: { body: 'return 1', args: [], lang: 'js' } } },
        { x: { $regex: '^(a+)+$' } },
        { x: { $regex: '(a|aa)+' } },
        { x: { $regex: '\\1(a)' } },
        { x: { $regex: 'a', $options: 'gz' } },
        { x: { $foo: 1 } },
        { x: { $size: -1 } },
        { x: { $size: 1.5 } },
        { x: { $size: NaN } },
        { x: { $gt: NaN } },
        { $and: [] },
        { $not: {} },
        { x: { $elemMatch: { $where: '1' } } },
        { x: { $in: 5 } },
        { __proto__: { x: 1 } } as Record<string, unknown>,
        JSON.parse('{"__proto__": {"polluted": 1}}') as Record<string, unknown>,
        { constructor: { prototype: { x: 1 } } },
        { x: { $regex: 'a'.repeat(5000) } },
        { x: { $regex: '(?i)a' } },
        nested(31, 1),
        nested(33, 1),
        nested(200, 1),
        { '': 1 },
        { 'a..b': 1 },
        { $comment: 'x' },
        { $text: { $search: 'x' } },
        { x: { $type: 'string' } },
        { x: { $eq: { $regex: 'a' } } },
        { x: { $all: [] } },
        { x: { $all: [{ $elemMatch: { a: 1 } }] } },
        { x: { $not: { $regex: '(?=a)' } } },
      ),
      nastyJson(4).filter(
        (v) => typeof v === 'object' && v !== null && !Array.isArray(v),
      ) as fc.Arbitrary<Record<string, unknown>>,
    );
  const payload = () =>
    fc.oneof(
      fc.constant(undefined),
      nastyJson(4).filter((v) => typeof v === 'object' && v !== null && !Array.isArray(v)),
      fc.constant(nested(120)),
      fc.constant(nested(20)),
    );
  const variantsArb = () =>
    fc.oneof(
      fc.constant([
        { key: 'control', weight: 0.5, description: '' },
        { key: 'treatment', weight: 0.5, description: '' },
      ]),
      fc.array(
        fc.record({
          key: nastyString(['control', 'treatment', 'c']),
          description: str(),
          weight: nastyNumber(),
          payload: payload(),
        }),
        { maxLength: 4 },
      ),
    );
  const duration = () =>
    fc.option(
      fc.record({
        seconds: nastyInt64(),
        nanos: fc.oneof(
          fc.integer({ min: -1e9, max: 1e9 }),
          fc.constantFrom(-1, 1e9, 999_999_999, 2 ** 31 - 1),
        ),
      }),
      { nil: undefined },
    );
  const experimentArb = (idArb: fc.Arbitrary<string>) =>
    fc.record({
      id: m(idArb, id()),
      description: m(fc.constant('d'), str()),
      owner: m(fc.constant('o'), str()),
      tags: m(fc.constant([]), tags()),
      unitType: m(fc.constant('user'), nastyString(['user'])),
      surfaces: m(fc.constantFrom(['home'], ['checkout', 'home']), surfaces()),
      variants: m(
        fc.constant([
          { key: 'control', weight: 0.5, description: '' },
          { key: 'treatment', weight: 0.5, description: '' },
        ]),
        variantsArb(),
      ),
      coverage: m(fc.constantFrom(undefined, 0.5, 1), fc.option(nastyNumber(), { nil: undefined })),
      condition: m(
        fc.constantFrom(undefined, { country: 'SE' }, { 'app.version': { $gt: 2 } }),
        condition(),
        4,
      ),
      layerId: m(fc.constant(''), nastyString(['l1', '']), 6),
      layerRange: m(
        fc.constant(undefined),
        fc.option(
          fc.record({
            start: m(fc.constantFrom(0.5, 0.6, 0.9), nastyNumber(), 3),
            end: m(fc.constantFrom(0.7, 1), nastyNumber(), 3),
          }),
          { nil: undefined },
        ),
        6,
      ),
      hashVersion: m(fc.constant(0), nastyEnum(2)),
      seed: m(fc.constant(''), str()),
      scheduledStartTime: m(fc.constant(undefined), fc.option(nastyDate(), { nil: undefined })),
      scheduledEndTime: m(fc.constant(undefined), fc.option(nastyDate(), { nil: undefined })),
      status: m(fc.constant(0), nastyEnum(5)),
      allocationMode: m(fc.constant(0), nastyEnum(2)),
      bandit: m(
        fc.constant(undefined),
        fc.option(fc.record({ minArmShare: nastyNumber() }), { nil: undefined }),
      ),
      sticky: fc.boolean(),
      stickyTtl: m(fc.constant(undefined), duration()),
      etag: m(fc.constant(''), etag()),
      overrides: m(
        fc.constant([]),
        fc.array(
          fc.record({
            unitId: nastyString(['u1']),
            variantKey: nastyString(['control', 'treatment']),
          }),
          { maxLength: 3 },
        ),
      ),
      startTime: m(fc.constant(undefined), fc.option(nastyDate(), { nil: undefined })),
      conclusion: m(
        fc.constant(undefined),
        fc.option(
          fc.record({
            shippedVariantKey: str(),
            summary: str(),
            concludeTime: fc.option(nastyDate(), { nil: undefined }),
          }),
          { nil: undefined },
        ),
      ),
    });
  const holdoutArb = (idArb: fc.Arbitrary<string>) =>
    fc.record({
      id: m(idArb, id()),
      description: m(fc.constant(''), str()),
      owner: m(fc.constant(''), str()),
      tags: m(fc.constant([]), tags()),
      unitType: m(fc.constant('user'), nastyString(['user'])),
      fraction: m(fc.constantFrom(0.1, 0.5), nastyNumber()),
      seed: m(fc.constant(''), str()),
      hashVersion: m(fc.constant(0), nastyEnum(2)),
      surfaces: m(fc.constantFrom(['home'], ['checkout']), surfaces()),
      layerIds: m(fc.constant([]), fc.array(nastyString(['l1']), { maxLength: 3 })),
      status: m(fc.constantFrom(0, 1, 2), nastyEnum(3), 5),
      startTime: m(fc.constant(undefined), fc.option(nastyDate(), { nil: undefined })),
      etag: m(fc.constant(''), etag()),
    });
  const mask = (fields: string[]) =>
    m(
      fc.array(fc.constantFrom(...fields), { minLength: 1, maxLength: 3 }),
      fc.option(
        fc.array(
          fc.oneof(
            fc.constantFrom(
              ...fields,
              '*',
              'layer_range.start',
              'layer_range.end',
              'bandit.min_arm_share',
              'variants.weight',
              'etag',
              'create_time',
              'id',
              'status',
              'a.b.c',
              '',
              'conclusion',
              '__proto__',
              'constructor',
              'layerRange',
              'Coverage',
            ),
            str(),
          ),
          { maxLength: 4 },
        ),
        { nil: undefined },
      ),
      3,
    );
  const pageToken = () =>
    fc.oneof(
      fc.constant(''),
      str(),
      fc.constantFrom(
        'eyJ9',
        'AAAA',
        Buffer.from('{"after":"zz"}').toString('base64'),
        Buffer.from('{"after":"zz"}').toString('base64url'),
      ),
    );
  const statuses = (n: number) => fc.array(nastyEnum(n), { maxLength: 3 });
  const attributes = () =>
    fc.oneof(
      fc.constant(undefined),
      nastyJson(5).filter((v) => typeof v === 'object' && v !== null && !Array.isArray(v)),
      fc.constant(nested(16)),
      fc.constant(nested(17)),
      fc.constant({ app: { version: 5 }, country: 'SE' }),
    );

  const arbs: Record<Method, fc.Arbitrary<unknown>> = {
    createLayer: fc.record({
      layer: fc.option(
        fc.record(
          {
            id: id(),
            description: str(),
            owner: str(),
            tags: tags(),
            etag: etag(),
            allocations: fc.array(
              fc.record({
                experimentId: id(),
                range: fc.option(fc.record({ start: nastyNumber(), end: nastyNumber() }), {
                  nil: undefined,
                }),
              }),
              { maxLength: 2 },
            ),
          },
          { requiredKeys: ['id'] },
        ),
        { nil: undefined },
      ),
      requestId: reqId(),
    }),
    getLayer: fc.record({ id: id() }),
    listLayers: fc.record({
      pageSize: fc.oneof(
        fc.integer(),
        fc.constantFrom(-1, 0, 1, 1000, 1001, 2 ** 31 - 1, -(2 ** 31)),
      ),
      pageToken: pageToken(),
    }),
    updateLayer: fc.record({
      layer: fc.option(
        fc.record(
          { id: id(), description: str(), owner: str(), tags: tags(), etag: etag() },
          { requiredKeys: ['id'] },
        ),
        { nil: undefined },
      ),
      updateMask: mask(['description', 'owner', 'tags', 'allocations']),
      requestId: reqId(),
    }),
    deleteLayer: fc.record({ id: id(), etag: etag(), requestId: reqId() }),
    createExperiment: fc.record({
      experiment: m(experimentArb(fresh()), fc.constant(undefined), 30),
      requestId: m(fc.constant(''), reqId()),
    }),
    getExperiment: fc.record({ id: id() }),
    listExperiments: fc.record({
      pageSize: fc.integer(),
      pageToken: pageToken(),
      statuses: statuses(5),
      layerId: nastyString(['l1']),
      surface: nastyString(['home']),
    }),
    updateExperiment: fc.record({
      experiment: m(
        experimentArb(fc.constantFrom('e-draft', 'e-run', 'b-run', 'e-stop')),
        fc.constant(undefined),
        30,
      ),
      updateMask: mask([
        'description',
        'owner',
        'tags',
        'coverage',
        'variants',
        'condition',
        'layer_range',
        'layer_id',
        'surfaces',
        'scheduled_start_time',
        'scheduled_end_time',
        'sticky',
        'sticky_ttl',
        'bandit',
        'overrides',
        'seed',
        'hash_version',
        'allocation_mode',
        'unit_type',
      ]),
      requestId: reqId(),
    }),
    deleteExperiment: fc.record({ id: id(), etag: etag(), requestId: reqId() }),
    startExperiment: fc.record({ id: id(), etag: etag(), requestId: reqId() }),
    stopExperiment: fc.record({ id: id(), etag: etag(), requestId: reqId() }),
    concludeExperiment: fc.record({
      id: id(),
      etag: etag(),
      shippedVariantKey: nastyString(['control', 'treatment', '']),
      summary: str(),
      requestId: reqId(),
    }),
    createHoldout: fc.record({
      holdout: m(holdoutArb(fresh()), fc.constant(undefined), 30),
      requestId: m(fc.constant(''), reqId()),
    }),
    getHoldout: fc.record({ id: id() }),
    listHoldouts: fc.record({
      pageSize: fc.integer(),
      pageToken: pageToken(),
      statuses: statuses(3),
      layerId: nastyString(['l1']),
      surface: nastyString(['home']),
    }),
    updateHoldout: fc.record({
      holdout: m(holdoutArb(fc.constantFrom('h-run', 'h-draft')), fc.constant(undefined), 30),
      updateMask: mask([
        'description',
        'owner',
        'tags',
        'fraction',
        'seed',
        'hash_version',
        'surfaces',
        'layer_ids',
        'status',
        'unit_type',
      ]),
      requestId: reqId(),
    }),
    deleteHoldout: fc.record({ id: id(), etag: etag(), requestId: reqId() }),
    resolve: fc.record({
      unit: m(
        fc.record({
          id: m(fc.constantFrom('u1', 'u2'), nastyString(), 4),
          type: m(fc.constant('user'), nastyString(), 4),
        }),
        fc.constant(undefined),
      ),
      attributes: attributes(),
      surfaces: m(fc.constantFrom([], ['home'], ['home', 'b-run']), surfaces(), 3),
      apply: fc.boolean(),
      explain: fc.boolean(),
      requestId: m(fc.constant(''), reqId()),
      view: m(fc.constantFrom(0, 1, 2), nastyEnum(2)),
    }),
    apply: fc.record({
      resolveToken: fc.oneof(fc.constant(token), str(), fc.constant(''), fc.constant('TOKEN')),
      experimentIds: fc.array(id(), { maxLength: 3 }),
      exposureTime: fc.option(nastyDate(), { nil: undefined }),
      requestId: reqId(),
    }),
    getAllocation: fc.record({ experimentId: id(), sequence: nastyInt64() }),
    updateAllocation: fc.record({
      allocation: fc.option(
        fc.record(
          {
            experimentId: id(),
            weights: fc.oneof(
              fc.constant([
                { variantKey: 'control', weight: 0.5 },
                { variantKey: 'treatment', weight: 0.5 },
              ]),
              fc.array(
                fc.record(
                  {
                    variantKey: nastyString(['control', 'treatment']),
                    weight: nastyNumber(),
                    unitCount: nastyInt64(),
                    rewardMean: nastyNumber(),
                    probabilityBest: nastyNumber(),
                  },
                  { requiredKeys: ['variantKey', 'weight'] },
                ),
                { maxLength: 4 },
              ),
            ),
            minArmShare: nastyNumber(),
            sequence: nastyInt64(),
            method: nastyEnum(2),
            computeTime: fc.option(nastyDate(), { nil: undefined }),
            analysisPlanId: str(),
            source: str(),
            etag: etag(),
          },
          { requiredKeys: ['experimentId'] },
        ),
        { nil: undefined },
      ),
      requestId: reqId(),
    }),
  };

  const methods = Object.keys(AssignmentServiceService) as Method[];
  it.each(methods)(
    '%s answers bad input with a documented code',
    async (method) => {
      if (method === 'apply')
        (arbs as Record<string, fc.Arbitrary<unknown>>).apply = fc.record({
          resolveToken: fc.oneof(
            fc.constant(token),
            str(),
            fc.constant(''),
            fc.constant(token.slice(0, -2)),
            fc.constant(token + 'A'),
          ),
          experimentIds: fc.array(id(), { maxLength: 3 }),
          exposureTime: fc.option(nastyDate(), { nil: undefined }),
          requestId: reqId(),
        });
      await assertAnswersBadInput({
        raw,
        path: AssignmentServiceService[method].path,
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
      methods.map((method) => AssignmentServiceService[method].path),
      RUNS * 3,
    );
  }, 300_000);

  it('stays up', async () => {
    await service.client.getLayer({ id: 'l1' }).catch(() => undefined);
    const outcome = await raw.call(AssignmentServiceService.listLayers.path, new Uint8Array());
    expect(outcome.code).toBe(GrpcCode.OK);
  });
});
