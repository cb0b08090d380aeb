/**
 * Per-method request limits: a request over its method's limit is refused RESOURCE_EXHAUSTED
 * (`REQUEST_TOO_LARGE`) before it is decoded, from any caller (admin methods check the token only
 * after decoding), and the largest valid request of each method, every documented limit at once,
 * is taken.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { credentials, Metadata, status as GrpcCode } from '@grpc/grpc-js';
import * as contract from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import { AllocationMethod, type Allocation } from '../../../gen/ts/tandem/assignment/v1/allocation';
import {
  AllocationMode,
  Experiment,
  ExperimentStatus,
  HashVersion,
} from '../../../gen/ts/tandem/assignment/v1/experiment';
import { Layer } from '../../../gen/ts/tandem/assignment/v1/layer';
import { Holdout, HoldoutStatus } from '../../../gen/ts/tandem/assignment/v1/holdout';
import { Struct } from '../../../gen/ts/google/protobuf/struct';
import { AssignmentView } from '../../../gen/ts/tandem/assignment/v1/assignment';
import { createClient, type TypedClient } from '../../platform/src/grpc/client';
import { paddedTo, sizedCall } from '../../platform/test/support/sized-request';
import { MAX_LAYERS, MAX_OVERRIDES, MAX_SURFACES, MAX_VARIANTS } from '../src/domain/validation';
import {
  ALLOCATION_REQUEST_MAX_BYTES,
  CONCLUDE_REQUEST_MAX_BYTES,
  ECHOED_LAYER_ALLOCATIONS,
  EXPERIMENT_REQUEST_MAX_BYTES,
  HOLDOUT_REQUEST_MAX_BYTES,
  LAYER_REQUEST_MAX_BYTES,
  MAX_ANALYSIS_PLAN_ID_BYTES,
  MAX_CONDITION_BYTES,
  MAX_DESCRIPTION_BYTES,
  MAX_OWNER_BYTES,
  MAX_PAYLOAD_BYTES,
  MAX_PAYLOADS_BYTES,
  MAX_SEED_BYTES,
  MAX_SUMMARY_BYTES,
  MAX_TAG_BYTES,
  MAX_TAGS,
  MAX_UNIT_ID_BYTES,
  MAX_UNIT_TYPE_BYTES,
} from '../src/handlers/limits';
import { ADMIN_METHODS } from '../src/handlers';
import { ASSIGNMENT_REQUEST_LIMITS, RESOLVE_MAX_REQUEST_BYTES } from '../src/service';
import { MAX_REQUEST_ID_LENGTH } from '../src/store/request-results';
import { ADMIN_TOKEN, startTestAssignment, type TestAssignment } from './support/harness';

const { AssignmentServiceService } = contract;
type Method = keyof typeof AssignmentServiceService;

/** A name of `length` characters (63 at most for ids, surfaces and keys), distinct by `i`. */
function named(prefix: string, i: number, length = 63): string {
  return `${prefix}${i}-`.padEnd(length, 'z');
}

/** A request id at its limit, 3 bytes a character. */
const REQUEST_ID = '€'.repeat(MAX_REQUEST_ID_LENGTH);

/**
 * The largest JSON object `{"a":[0,0,…]}` of at most `maxBytes`: a Struct of numbers in a list,
 * 5.5 times its JSON encoded, the most a Struct takes per byte of JSON.
 */
function numbers(maxBytes: number, wrap: (list: number[]) => Record<string, unknown>) {
  const overhead = JSON.stringify(wrap([])).length;
  const list = new Array<number>(Math.floor((maxBytes - overhead + 1) / 2)).fill(0);
  return wrap(list);
}

/** Every message type's generated codec, by method (`createLayer` → CreateLayerRequest). */
function requestType(method: Method): { decode: (bytes: Uint8Array) => unknown } {
  const name = `${method[0]?.toUpperCase() ?? ''}${method.slice(1)}Request`;
  return (contract as unknown as Record<string, { decode: (bytes: Uint8Array) => unknown }>)[name]!;
}

/** The contract's comment of `rpc <Name>`. */
function rpcComment(proto: string, method: Method): string {
  const name = `${method[0]?.toUpperCase() ?? ''}${method.slice(1)}`;
  const at = proto.indexOf(`  rpc ${name}(`);
  const lines = proto.slice(0, at).split('\n');
  const comment: string[] = [];
  for (let i = lines.length - 2; i >= 0 && lines[i]!.trim().startsWith('//'); i--) {
    comment.unshift(lines[i]!.trim().slice(2).trim());
  }
  return comment.join(' ');
}

function stated(limit: number): string {
  return limit % (1024 * 1024) === 0
    ? `${limit / 1024 / 1024} MiB`
    : `${(limit / 1024).toLocaleString('en-US')} KiB`;
}

/** An admin client taking responses as large as the server sends. */
function adminClient(address: string): TypedClient<typeof AssignmentServiceService> {
  const metadata = new Metadata();
  metadata.set('authorization', `Bearer ${ADMIN_TOKEN}`);
  return createClient(AssignmentServiceService, {
    address,
    credentials: credentials.createInsecure(),
    metadata,
    channelOptions: { 'grpc.max_receive_message_length': -1 },
    defaultTimeoutMs: 60_000,
  });
}

describe('Assignment request limits', () => {
  let service: TestAssignment;
  let admin: TypedClient<typeof AssignmentServiceService>;

  beforeAll(async () => {
    service = await startTestAssignment();
    admin = adminClient(service.address);
  });

  afterAll(async () => {
    admin.close();
    await service.stop();
  });

  const client = () => admin;

  const limited = (Object.entries(ASSIGNMENT_REQUEST_LIMITS) as [Method, number | undefined][])
    .filter((entry): entry is [Method, number] => entry[1] !== undefined)
    .map(([method, limit]) => [method, limit] as const);

  it('gives every method but Apply a limit below the message limit, as its contract states', () => {
    const proto = readFileSync(
      join(__dirname, '../../../proto/tandem/assignment/v1/assignment_service.proto'),
      'utf8',
    );
    expect(limited.map(([method]) => method).sort()).toEqual(
      Object.keys(AssignmentServiceService)
        .filter((method) => method !== 'apply')
        .sort(),
    );
    for (const [method, limit] of limited) {
      expect(limit).toBeLessThan(service.config.platform.grpc.maxMessageBytes);
      const comment = rpcComment(proto, method);
      expect([method, comment]).toEqual([method, expect.stringContaining(stated(limit))]);
      expect(comment).toContain('REQUEST_TOO_LARGE');
    }
  });

  it.each(limited)(
    '%s refuses a request one byte over its limit (%i bytes) without decoding it',
    async (method, limit) => {
      const { path } = AssignmentServiceService[method];
      const decode = jest.spyOn(requestType(method), 'decode');
      try {
        const bytes = paddedTo(Buffer.alloc(0), limit + 1);
        const over = await sizedCall(service.address, path, bytes, ADMIN_TOKEN);
        expect(over?.code).toBe(GrpcCode.RESOURCE_EXHAUSTED);
        expect(over?.reason).toBe('REQUEST_TOO_LARGE');
        expect(over?.metadata.limit_bytes).toBe(String(limit));
        // Nor for a caller without the admin token (of an admin method: UNAUTHENTICATED).
        expect((await sizedCall(service.address, path, bytes))?.code).toBe(
          ADMIN_METHODS.includes(method as never) ? GrpcCode.UNAUTHENTICATED : over?.code,
        );
        expect(decode).not.toHaveBeenCalled();
        // At the limit it is decoded, and answered as any other.
        const at = await sizedCall(service.address, path, paddedTo(Buffer.alloc(0), limit));
        expect(at?.reason).not.toBe('REQUEST_TOO_LARGE');
        expect(decode).toHaveBeenCalledTimes(1);
      } finally {
        decode.mockRestore();
      }
    },
  );

  /**
   * The request's encoded size is within half `limit` (the margin holds) and over a quarter (the
   * bound is tight); padded one byte past `limit`, `method` refuses it.
   */
  async function expectWithinMargin(
    method: Method,
    encoded: Uint8Array,
    limit: number,
  ): Promise<void> {
    expect(encoded.length).toBeLessThanOrEqual(limit / 2);
    expect(encoded.length).toBeGreaterThan(limit / 4);
    const { path } = AssignmentServiceService[method];
    const over = await sizedCall(service.address, path, paddedTo(encoded, limit + 1), ADMIN_TOKEN);
    expect([over?.code, over?.reason]).toEqual([GrpcCode.RESOURCE_EXHAUSTED, 'REQUEST_TOO_LARGE']);
  }

  const labels = {
    description: 'd'.repeat(MAX_DESCRIPTION_BYTES),
    owner: 'o'.repeat(MAX_OWNER_BYTES),
    tags: Array.from({ length: MAX_TAGS }, (_, i) => named('t', i, MAX_TAG_BYTES)),
  };
  /** Output-only fields sent back as a resource was read. */
  const times = {
    createTime: new Date(1_700_000_000_123),
    updateTime: new Date(1_700_000_000_456),
  };

  it('takes the largest valid CreateLayer and UpdateLayer, allocations sent back included', async () => {
    const layer = Layer.fromPartial({
      id: named('layer', 0),
      ...labels,
      allocations: Array.from({ length: ECHOED_LAYER_ALLOCATIONS }, (_, i) => ({
        experimentId: named('e', i),
        range: { start: i / ECHOED_LAYER_ALLOCATIONS, end: (i + 0.7) / ECHOED_LAYER_ALLOCATIONS },
      })),
      etag: '12345.67890',
      ...times,
    });
    const create = { layer, requestId: REQUEST_ID };
    await expectWithinMargin(
      'createLayer',
      contract.CreateLayerRequest.encode(create).finish(),
      LAYER_REQUEST_MAX_BYTES,
    );
    const created = await client().createLayer(create);
    expect(created.layer?.id).toBe(layer.id);

    const update = {
      layer: { ...layer, etag: created.layer!.etag },
      updateMask: ['*'],
      requestId: REQUEST_ID.slice(1),
    };
    await expectWithinMargin(
      'updateLayer',
      contract.UpdateLayerRequest.encode(update).finish(),
      LAYER_REQUEST_MAX_BYTES,
    );
    expect((await client().updateLayer(update)).layer?.id).toBe(layer.id);
  });

  it('takes the largest valid CreateExperiment and UpdateExperiment: payloads and condition of numbers', async () => {
    await client().createLayer({ layer: Layer.fromPartial({ id: 'exp-layer' }), requestId: '' });
    const variants = Array.from({ length: MAX_VARIANTS }, (_, i) => ({
      key: named('v', i),
      description: 'v'.repeat(MAX_DESCRIPTION_BYTES),
      weight: 1 / MAX_VARIANTS,
      // As many payloads at their own limit as the limit of them all takes.
      payload:
        i < MAX_PAYLOADS_BYTES / MAX_PAYLOAD_BYTES
          ? numbers(MAX_PAYLOAD_BYTES, (list) => ({ a: list }))
          : undefined,
    }));
    const condition = numbers(MAX_CONDITION_BYTES, (list) => ({ a: { $in: list } }));
    const experiment = Experiment.fromPartial({
      id: named('experiment', 0),
      ...labels,
      unitType: 'u'.repeat(MAX_UNIT_TYPE_BYTES),
      surfaces: Array.from({ length: MAX_SURFACES }, (_, i) => named('s', i)),
      variants,
      coverage: 0.9,
      condition,
      layerId: 'exp-layer',
      layerRange: { start: 0.125, end: 0.875 },
      hashVersion: HashVersion.HASH_VERSION_V2,
      seed: 's'.repeat(MAX_SEED_BYTES),
      scheduledStartTime: new Date(Date.now() + 86_400_000 + 123),
      scheduledEndTime: new Date(Date.now() + 2 * 86_400_000 + 456),
      status: ExperimentStatus.EXPERIMENT_STATUS_DRAFT,
      allocationMode: AllocationMode.ALLOCATION_MODE_FIXED,
      sticky: true,
      stickyTtl: { seconds: 86_400 * 30, nanos: 500_000_000 },
      // Output only, as a client copying an experiment it read sends it.
      conclusion: {
        shippedVariantKey: named('v', 0),
        summary: 's'.repeat(MAX_SUMMARY_BYTES),
        concludeTime: new Date(1_700_000_000_789),
      },
      startTime: new Date(1_700_000_000_321),
      stopTime: new Date(1_700_000_000_654),
      etag: '12345.67890',
      ...times,
      overrides: Array.from({ length: MAX_OVERRIDES }, (_, i) => ({
        unitId: named('unit', i, MAX_UNIT_ID_BYTES),
        variantKey: named('v', i % MAX_VARIANTS),
      })),
    });
    // Every payload and the condition are at their JSON limits, and take 5.5 times that encoded.
    expect(
      variants.reduce((sum, v) => sum + (v.payload ? JSON.stringify(v.payload).length : 0), 0),
    ).toBeGreaterThan(MAX_PAYLOADS_BYTES - 64);
    expect(JSON.stringify(condition).length).toBeGreaterThan(MAX_CONDITION_BYTES - 2);
    expect(Struct.encode(Struct.wrap(condition)).finish().length).toBeGreaterThan(
      5.4 * MAX_CONDITION_BYTES,
    );
    const create = { experiment, requestId: REQUEST_ID };
    await expectWithinMargin(
      'createExperiment',
      contract.CreateExperimentRequest.encode(create).finish(),
      EXPERIMENT_REQUEST_MAX_BYTES,
    );
    const created = await client().createExperiment(create);
    expect(created.experiment?.variants).toHaveLength(MAX_VARIANTS);

    const update = {
      experiment: { ...created.experiment!, conclusion: experiment.conclusion },
      updateMask: ['*'],
      requestId: REQUEST_ID.slice(1),
    };
    await expectWithinMargin(
      'updateExperiment',
      contract.UpdateExperimentRequest.encode(update).finish(),
      EXPERIMENT_REQUEST_MAX_BYTES,
    );
    expect((await client().updateExperiment(update)).experiment?.etag).toBe(
      created.experiment?.etag,
    );
    // Not kept: every write after reloads it.
    await client().deleteExperiment({
      id: experiment.id,
      etag: created.experiment!.etag,
      requestId: '',
    });
  }, 120_000);

  it('takes the largest valid CreateHoldout and UpdateHoldout', async () => {
    const layerIds = Array.from({ length: MAX_LAYERS }, (_, i) => named('hl', i));
    for (const id of layerIds) {
      await client().createLayer({ layer: Layer.fromPartial({ id }), requestId: '' });
    }
    const holdout = Holdout.fromPartial({
      id: named('holdout', 0),
      ...labels,
      unitType: 'u'.repeat(MAX_UNIT_TYPE_BYTES),
      fraction: 0.125,
      seed: 's'.repeat(MAX_SEED_BYTES),
      hashVersion: HashVersion.HASH_VERSION_V2,
      surfaces: Array.from({ length: MAX_SURFACES }, (_, i) => named('hs', i)),
      layerIds,
      status: HoldoutStatus.HOLDOUT_STATUS_DRAFT,
      startTime: new Date(1_700_000_000_321),
      stopTime: new Date(1_700_000_000_654),
      etag: '12345.67890',
      ...times,
    });
    const create = { holdout, requestId: REQUEST_ID };
    await expectWithinMargin(
      'createHoldout',
      contract.CreateHoldoutRequest.encode(create).finish(),
      HOLDOUT_REQUEST_MAX_BYTES,
    );
    const created = await client().createHoldout(create);
    expect(created.holdout?.layerIds).toHaveLength(MAX_LAYERS);

    const update = {
      holdout: { ...holdout, etag: created.holdout!.etag },
      updateMask: ['*'],
      requestId: REQUEST_ID.slice(1),
    };
    await expectWithinMargin(
      'updateHoldout',
      contract.UpdateHoldoutRequest.encode(update).finish(),
      HOLDOUT_REQUEST_MAX_BYTES,
    );
    expect((await client().updateHoldout(update)).holdout?.id).toBe(holdout.id);
  });

  it('takes the largest valid UpdateAllocation and ConcludeExperiment', async () => {
    const id = named('bandit', 0);
    const keys = Array.from({ length: MAX_VARIANTS }, (_, i) => named('arm', i));
    await client().createExperiment({
      experiment: Experiment.fromPartial({
        id,
        unitType: 'user',
        surfaces: ['bandits'],
        variants: keys.map((key) => ({ key, weight: 1 / MAX_VARIANTS })),
        allocationMode: AllocationMode.ALLOCATION_MODE_BANDIT,
        bandit: { minArmShare: 0.001 },
        sticky: true,
      }),
      requestId: '',
    });
    const current = (await client().getAllocation({ experimentId: id, sequence: 0 })).allocation!;
    const allocation: Allocation = {
      ...current,
      weights: keys.map((variantKey, i) => ({
        variantKey,
        weight: 1 / MAX_VARIANTS,
        unitCount: 9_007_199_254_740_991 - i,
        rewardMean: 0.123456789 + i,
        probabilityBest: 1 / (i + 3),
      })),
      sequence: Date.now(),
      method: AllocationMethod.ALLOCATION_METHOD_THOMPSON_SAMPLING,
      computeTime: new Date(Date.now() - 1234),
      analysisPlanId: 'p'.repeat(MAX_ANALYSIS_PLAN_ID_BYTES),
      updateTime: new Date(1_700_000_000_456),
    };
    const update = { allocation, requestId: REQUEST_ID };
    await expectWithinMargin(
      'updateAllocation',
      contract.UpdateAllocationRequest.encode(update).finish(),
      ALLOCATION_REQUEST_MAX_BYTES,
    );
    expect((await client().updateAllocation(update)).allocation?.weights).toHaveLength(
      MAX_VARIANTS,
    );

    const { experiment: started } = await client().startExperiment({
      id,
      etag: '',
      requestId: '',
    });
    const conclude = {
      id,
      etag: started!.etag,
      shippedVariantKey: keys[MAX_VARIANTS - 1]!,
      summary: 's'.repeat(MAX_SUMMARY_BYTES),
      requestId: REQUEST_ID,
    };
    await expectWithinMargin(
      'concludeExperiment',
      contract.ConcludeExperimentRequest.encode(conclude).finish(),
      CONCLUDE_REQUEST_MAX_BYTES,
    );
    expect((await client().concludeExperiment(conclude)).experiment?.status).toBe(
      ExperimentStatus.EXPERIMENT_STATUS_CONCLUDED,
    );
  });

  it('takes the largest valid Resolve', async () => {
    // Attributes just under 64 KiB encoded, 256 surfaces, the longest unit id and type.
    const attributes = { blob: 'a'.repeat(64 * 1024 - 32) };
    expect(Struct.encode(Struct.wrap(attributes)).finish().length).toBeLessThanOrEqual(64 * 1024);
    const request = contract.ResolveRequest.fromPartial({
      unit: { id: 'i'.repeat(MAX_UNIT_ID_BYTES), type: 't'.repeat(MAX_UNIT_TYPE_BYTES) },
      attributes,
      surfaces: Array.from({ length: 256 }, (_, i) => named('rs', i)),
      explain: true,
      requestId: REQUEST_ID,
      view: AssignmentView.ASSIGNMENT_VIEW_FULL,
    });
    expect(contract.ResolveRequest.encode(request).finish().length).toBeLessThanOrEqual(
      RESOLVE_MAX_REQUEST_BYTES / 2,
    );
    expect((await service.client.resolve(request)).resolveId).toBe(REQUEST_ID);
  });
});
