/**
 * The end-to-end suite every storage adapter must pass: each RPC over gRPC against a service started
 * as in production, with every error path the contract names.
 */
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import { status as GrpcCode, type ServiceError } from '@grpc/grpc-js';
import { Struct } from '../../../../gen/ts/google/protobuf/struct';
import { AllocationMethod } from '../../../../gen/ts/tandem/assignment/v1/allocation';
import { AllocationUpdate } from '../../../../gen/ts/tandem/events/v1/allocation_update';
import {
  AssignmentReason,
  AssignmentView,
} from '../../../../gen/ts/tandem/assignment/v1/assignment';
import {
  ApplyRequest,
  AssignmentServiceService,
  ConcludeExperimentRequest,
  CreateExperimentRequest,
  CreateHoldoutRequest,
  CreateLayerRequest,
  GetExperimentRequest,
  GetLayerRequest,
  DeleteExperimentRequest,
  DeleteHoldoutRequest,
  DeleteLayerRequest,
  ListExperimentsRequest,
  ListExperimentsResponse,
  ListHoldoutsRequest,
  ListLayersRequest,
  ResolveRequest,
  type ResolveResponse,
  StartExperimentRequest,
  StopExperimentRequest,
  UpdateAllocationRequest,
  UpdateExperimentRequest,
  UpdateHoldoutRequest,
  UpdateLayerRequest,
} from '../../../../gen/ts/tandem/assignment/v1/assignment_service';
import {
  AllocationMode,
  Experiment,
  ExperimentStatus,
  HashVersion,
  Variant,
} from '../../../../gen/ts/tandem/assignment/v1/experiment';
import { HoldoutStatus, type Holdout } from '../../../../gen/ts/tandem/assignment/v1/holdout';
import type { ConfigChangeEvent } from '../../../../gen/ts/tandem/events/v1/config_change_event';
import {
  AbortedError,
  decodeStatus,
  FailedPreconditionError,
  InvalidArgumentError,
  UnavailableError,
  type TandemError,
} from '../../../platform/src/errors';
import { failure } from '../../../platform/test/support/failure';
import { rawCallError as rawCall } from '../../../platform/test/support/raw-call';
import { withTimestampNanos } from '../../../platform/test/support/timestamps';
import type { CallContext } from '../../../platform/src/grpc/handlers';
import { hash } from '../../src/domain';
import { resolveHandlers } from '../../src/handlers/resolve';
import { RELEASE_GRACE_MS, StickyAssignments } from '../../src/store/sticky-assignments';
import { ALLOCATION_SUBJECT } from '../../src/events/streams';
import { draftBandit, experiment, holdout, resolveRequest, variant } from './fixtures';
import {
  ADMIN_TOKEN,
  clientFor,
  eventually,
  startSticky,
  startTestAssignment,
  type StorageChoice,
  type TestAssignment,
} from './harness';

function fields(error: TandemError): string[] {
  return error instanceof InvalidArgumentError ? error.violations.map((v) => v.field).sort() : [];
}

/** Each field violation of an INVALID_ARGUMENT error as [field, reason]; none for another error. */
function fieldReasons(error: TandemError): string[][] {
  return error instanceof InvalidArgumentError
    ? error.violations.map((v) => [v.field, v.reason ?? ''])
    : [];
}

function preconditions(error: TandemError): string[] {
  return error instanceof FailedPreconditionError ? error.violations.map((v) => v.type) : [];
}

/** {@link rawCall} with the admin token. */
function rawCallError(address: string, path: string, bytes: Buffer): Promise<ServiceError> {
  return rawCall(address, path, bytes, ADMIN_TOKEN);
}

/** UpdateAllocation of 90% control, 10% treatment at sequence 10 for experiment `id`. */
function allocateNinetyTen(id: string): UpdateAllocationRequest {
  return UpdateAllocationRequest.fromPartial({
    allocation: {
      experimentId: id,
      weights: [
        { variantKey: 'control', weight: 0.9 },
        { variantKey: 'treatment', weight: 0.1 },
      ],
      sequence: 10,
    },
  });
}

function expectedVariant(seed: string, unitId: string): string {
  return (hash(seed, unitId, 2) ?? 1) < 0.5 ? 'control' : 'treatment';
}

/**
 * Stores `condition` in experiment `id` as an earlier version of the service could have (past
 * today's checks), then loads it, as a replica finding it in storage would.
 */
async function storeConditionAsBefore(
  service: TestAssignment,
  id: string,
  condition: unknown,
): Promise<{ version: number }> {
  const store = service.service.context.store;
  const stored = await store.experiments.get(id);
  if (stored === undefined) throw new Error(`experiment ${id} was not stored`);
  const legacy = await store.experiments.replace(
    { ...stored.doc, conditionJson: JSON.stringify(condition) },
    stored.version,
  );
  await store.bumpVersion();
  await service.service.context.configuration.refresh();
  return legacy;
}

export function runServiceSuite(label: string, storage: () => StorageChoice): void {
  describe(`the Assignment service over gRPC (${label})`, () => {
    let service: TestAssignment;
    let choice: StorageChoice;

    beforeAll(async () => {
      choice = storage();
      service = await startTestAssignment(choice);
    });

    afterAll(async () => {
      await service.stop();
    });

    describe('layers', () => {
      it('creates, reads, lists by page, updates with etag and deletes a layer', async () => {
        const { admin, client } = service;
        const created = await admin.createLayer(
          CreateLayerRequest.fromPartial({
            layer: { id: 'home-ranking', description: 'ranking', owner: 'ml' },
          }),
        );
        expect(created.layer).toMatchObject({
          id: 'home-ranking',
          description: 'ranking',
          etag: '1',
        });
        for (const id of ['layer-b', 'layer-c']) {
          await admin.createLayer(CreateLayerRequest.fromPartial({ layer: { id } }));
        }
        const first = await client.listLayers(ListLayersRequest.fromPartial({ pageSize: 2 }));
        expect(first.layers.map((l) => l.id)).toEqual(['home-ranking', 'layer-b']);
        const second = await client.listLayers(
          ListLayersRequest.fromPartial({ pageSize: 2, pageToken: first.nextPageToken }),
        );
        expect(second.layers.map((l) => l.id)).toEqual(['layer-c']);
        expect(second.nextPageToken).toBe('');

        const updated = await admin.updateLayer(
          UpdateLayerRequest.fromPartial({
            layer: { id: 'layer-b', etag: '1', owner: 'growth' },
            updateMask: ['owner'],
          }),
        );
        expect(updated.layer).toMatchObject({ owner: 'growth', etag: '2' });
        const stale = await failure(
          admin.updateLayer(
            UpdateLayerRequest.fromPartial({
              layer: { id: 'layer-b', etag: '1', owner: 'x' },
              updateMask: ['owner'],
            }),
          ),
        );
        expect(stale.code).toBe(GrpcCode.ABORTED);
        await admin.deleteLayer(DeleteLayerRequest.fromPartial({ id: 'layer-b', etag: '2' }));
        expect((await failure(client.getLayer({ id: 'layer-b' }))).code).toBe(GrpcCode.NOT_FOUND);
        expect((await client.getLayer({ id: 'layer-c' })).layer?.id).toBe('layer-c');
      });

      it('refuses a duplicate id, a bad id, a bad update mask, a bad page token and a referenced delete', async () => {
        const { admin, client } = service;
        const duplicate = await failure(
          admin.createLayer(CreateLayerRequest.fromPartial({ layer: { id: 'layer-c' } })),
        );
        expect(duplicate.code).toBe(GrpcCode.ALREADY_EXISTS);
        expect(duplicate.message).toBe('layer "layer-c" already exists');
        expect(duplicate.reason).toBe('LAYER_ALREADY_EXISTS');
        expect(duplicate.resource).toEqual({ type: 'tandem.assignment.v1.Layer', name: 'layer-c' });
        const badId = await failure(
          admin.createLayer(CreateLayerRequest.fromPartial({ layer: { id: 'Bad Id' } })),
        );
        expect(fields(badId)).toEqual(['layer.id']);
        const mask = await failure(
          admin.updateLayer(
            UpdateLayerRequest.fromPartial({
              layer: { id: 'layer-c', etag: '1' },
              updateMask: ['id', 'colour'],
            }),
          ),
        );
        expect(fields(mask)).toEqual(['update_mask.paths[0]', 'update_mask.paths[1]']);
        const token = await failure(
          client.listLayers(ListLayersRequest.fromPartial({ pageToken: 'nonsense', pageSize: -1 })),
        );
        expect(fields(token)).toEqual(['page_size', 'page_token']);

        await admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('uses-layer-c', {
              layerId: 'layer-c',
              layerRange: { start: 0, end: 0.5 },
            }),
          }),
        );
        const inUse = await failure(
          admin.deleteLayer(DeleteLayerRequest.fromPartial({ id: 'layer-c', etag: '1' })),
        );
        expect(inUse.code).toBe(GrpcCode.FAILED_PRECONDITION);
        expect(preconditions(inUse)).toEqual(['LAYER_IN_USE']);
        const layer = await client.getLayer({ id: 'layer-c' });
        expect(layer.layer?.allocations).toEqual([
          { experimentId: 'uses-layer-c', range: { start: 0, end: 0.5 } },
        ]);
      });

      it('returns the first result for a retried request_id', async () => {
        const request = CreateLayerRequest.fromPartial({
          layer: { id: 'retried' },
          requestId: 'req-1',
        });
        const first = await service.admin.createLayer(request);
        const again = await service.admin.createLayer(request);
        expect(again).toEqual(first);
        // The id reused for another layer: refused, not answered with the first and dropped.
        const reused = await failure(
          service.admin.createLayer({ ...request, layer: { ...request.layer!, id: 'other' } }),
        );
        expect(fieldReasons(reused)).toEqual([['request_id', 'REQUEST_ID_REUSED']]);
        expect((await failure(service.client.getLayer({ id: 'other' }))).code).toBe(
          GrpcCode.NOT_FOUND,
        );
      });
    });

    describe('experiments', () => {
      it('keeps the etag and the configuration version on an update that changes nothing', async () => {
        const { admin, client } = service;
        await admin.createLayer(CreateLayerRequest.fromPartial({ layer: { id: 'same-layer' } }));
        const created = await admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('same-exp', { surfaces: ['same-exp'], description: 'd' }),
          }),
        );
        await admin.createHoldout(
          CreateHoldoutRequest.fromPartial({
            holdout: holdout('same-holdout', { description: 'h', surfaces: ['same-exp'] }),
          }),
        );
        const version = async () =>
          (await client.resolve(resolveRequest('u', { surfaces: ['same-exp'] }))).configVersion;
        const before = await version();
        const sameExperiment = await admin.updateExperiment(
          UpdateExperimentRequest.fromPartial({
            experiment: { ...created.experiment, description: 'd' },
            updateMask: ['description'],
          }),
        );
        expect(sameExperiment.experiment?.etag).toBe(created.experiment?.etag);
        expect(sameExperiment.experiment?.updateTime).toEqual(created.experiment?.updateTime);
        const sameLayer = await admin.updateLayer(
          UpdateLayerRequest.fromPartial({
            layer: { id: 'same-layer', etag: '1' },
            updateMask: ['owner'],
          }),
        );
        expect(sameLayer.layer?.etag).toBe('1');
        const sameHoldout = await admin.updateHoldout(
          UpdateHoldoutRequest.fromPartial({
            holdout: holdout('same-holdout', {
              description: 'h',
              surfaces: ['same-exp'],
              etag: '1',
            }),
            updateMask: ['description'],
          }),
        );
        expect(sameHoldout.holdout?.etag).toBe('1');
        expect(await version()).toBe(before);
        // A real change still moves both.
        const changed = await admin.updateExperiment(
          UpdateExperimentRequest.fromPartial({
            experiment: { ...created.experiment, description: 'other' },
            updateMask: ['description'],
          }),
        );
        expect(changed.experiment?.etag).not.toBe(created.experiment?.etag);
        expect(await version()).toBeGreaterThan(before);
      });

      it('refuses a write whose bytes the decoder would read in part, rather than drop its etag', async () => {
        const { admin, client } = service;
        await admin.createExperiment(
          CreateExperimentRequest.fromPartial({ experiment: experiment('part-read') }),
        );
        await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'part-read' }));
        const field = (number: number, text: string) => {
          const bytes = Buffer.from(text);
          return Buffer.concat([Buffer.from([(number << 3) | 2, bytes.length]), bytes]);
        };
        const stop = '/tandem.assignment.v1.AssignmentService/StopExperiment';
        // A stray end-group tag (0x0c) before the stale etag: read in part, it would stop.
        const error = await rawCallError(
          service.address,
          stop,
          Buffer.concat([field(1, 'part-read'), Buffer.from([0x0c]), field(2, 'stale')]),
        );
        expect([error.code, decodeStatus(error).errorInfo?.reason]).toEqual([
          GrpcCode.INVALID_ARGUMENT,
          'UNDECODABLE_REQUEST',
        ]);
        const after = await client.getExperiment({ id: 'part-read' });
        expect(after.experiment?.status).toBe(ExperimentStatus.EXPERIMENT_STATUS_RUNNING);
        // A unit id that is not UTF-8 is named, not resolved as another unit's "u\uFFFD".
        const unit = Buffer.concat([
          Buffer.from([0x0a, 0x0a, 0x0a, 0x02, 0x75, 0xff]),
          field(2, 'user'),
        ]);
        const resolve = await rawCallError(
          service.address,
          '/tandem.assignment.v1.AssignmentService/Resolve',
          unit,
        );
        expect(decodeStatus(resolve).violations.map((v) => [v.field, v.reason])).toEqual([
          ['unit.id', 'INVALID_UTF8'],
        ]);
      });

      it('changes one bound of a layer range, or the bandit settings, by a nested mask path', async () => {
        const { admin } = service;
        await admin.createLayer(CreateLayerRequest.fromPartial({ layer: { id: 'bounds' } }));
        const created = await admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('bounded', {
              surfaces: ['bounded'],
              layerId: 'bounds',
              layerRange: { start: 0.1, end: 0.3 },
            }),
          }),
        );
        const update = (etag: string, fields: Partial<Experiment>, updateMask: string[]) =>
          admin.updateExperiment(
            UpdateExperimentRequest.fromPartial({
              experiment: { id: 'bounded', etag, ...fields },
              updateMask,
            }),
          );
        // The other bound is kept, not read as 0 from the request's range.
        const grown = await update(
          created.experiment?.etag ?? '',
          { layerRange: { start: 0, end: 0.5 } },
          ['layer_range.end'],
        );
        expect(grown.experiment?.layerRange).toEqual({ start: 0.1, end: 0.5 });
        const moved = await update(
          grown.experiment?.etag ?? '',
          { layerRange: { start: 0.05, end: 0 } },
          ['layer_range.start'],
        );
        expect(moved.experiment?.layerRange).toEqual({ start: 0.05, end: 0.5 });
        // Reported under the bound named, and an unknown subfield is refused as such.
        const invalid = await failure(
          update(moved.experiment?.etag ?? '', { layerRange: { start: 0, end: 1.5 } }, [
            'layer_range.end',
            'layer_range.middle',
          ]),
        );
        expect(fieldReasons(invalid)).toEqual([
          ['update_mask.paths[1]', 'UNKNOWN_FIELD'],
          ['experiment.layer_range.end', 'OUT_OF_RANGE'],
        ]);
        const bandit = await admin.createExperiment(
          CreateExperimentRequest.fromPartial({ experiment: draftBandit('nested-bandit') }),
        );
        const shared = await admin.updateExperiment(
          UpdateExperimentRequest.fromPartial({
            experiment: {
              id: 'nested-bandit',
              etag: bandit.experiment?.etag ?? '',
              bandit: { minArmShare: 0.1 },
            },
            updateMask: ['bandit.min_arm_share'],
          }),
        );
        expect(shared.experiment?.bandit).toEqual({ minArmShare: 0.1 });
      });

      it("reports all of an update's problems at once, its mask's, ids' and values', before NOT_FOUND or ABORTED", async () => {
        const { admin } = service;
        const created = await admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('all-at-once', { surfaces: ['all-at-once'] }),
          }),
        );
        const etag = created.experiment?.etag ?? '';
        const update = (fields: Partial<Experiment>, updateMask: string[]) =>
          failure(
            admin.updateExperiment(
              UpdateExperimentRequest.fromPartial({
                experiment: { ...created.experiment, ...fields },
                updateMask,
              }),
            ),
          );
        const unique = (error: TandemError) => [...new Set(fields(error))];
        // A path the mask cannot name, and a value wrong in a path it can.
        const badMask = await update({ variants: [variant('only', 0.3)] }, ['variants', 'bogus']);
        expect(unique(badMask)).toEqual(['experiment.variants', 'update_mask.paths[1]']);
        // No etag, and a value out of range.
        const noEtag = await update({ etag: '', coverage: 2 }, ['coverage']);
        expect(unique(noEtag)).toEqual(['experiment.coverage', 'experiment.etag']);
        // A stale etag with a wrong value: the value first; with a right one, ABORTED.
        await admin.updateExperiment(
          UpdateExperimentRequest.fromPartial({
            experiment: { ...created.experiment, description: 'changed' },
            updateMask: ['description'],
          }),
        );
        expect(unique(await update({ etag, coverage: 2 }, ['coverage']))).toEqual([
          'experiment.coverage',
        ]);
        expect((await update({ etag, coverage: 0.5 }, ['coverage'])).code).toBe(GrpcCode.ABORTED);
        // An id nothing has: a wrong request says so; a right one is NOT_FOUND.
        const missing = await update({ id: 'no-such' }, ['bogus']);
        expect(missing.code).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(fields(missing)).toEqual(['update_mask.paths[0]']);
        expect((await update({ id: 'no-such' }, ['coverage'])).code).toBe(GrpcCode.NOT_FOUND);
        const missingTtl = await update({ id: 'no-such', stickyTtl: { seconds: -5, nanos: 0 } }, [
          'sticky_ttl',
        ]);
        expect(fields(missingTtl)).toEqual(['experiment.sticky_ttl']);
        const noIdTtl = await update({ id: '', stickyTtl: { seconds: -5, nanos: 0 } }, [
          'sticky_ttl',
        ]);
        expect(fields(noIdTtl)).toEqual(['experiment.id', 'experiment.sticky_ttl']);
        // Conclude: no id and a summary too long.
        const conclude = await failure(
          admin.concludeExperiment(
            ConcludeExperimentRequest.fromPartial({ id: '', summary: 'x'.repeat(9000) }),
          ),
        );
        expect(fields(conclude)).toEqual(['id', 'summary']);
        // A layer and a holdout: no etag, and a value wrong.
        await admin.createLayer(CreateLayerRequest.fromPartial({ layer: { id: 'all-at-once' } }));
        const layer = await failure(
          admin.updateLayer(
            UpdateLayerRequest.fromPartial({
              layer: { id: 'all-at-once', description: 'x'.repeat(9000) },
              updateMask: ['description'],
            }),
          ),
        );
        expect(fields(layer)).toEqual(['layer.description', 'layer.etag']);
        await admin.createHoldout(
          CreateHoldoutRequest.fromPartial({
            holdout: holdout('all-at-once', { surfaces: ['all-at-once'] }),
          }),
        );
        const held = await failure(
          admin.updateHoldout(
            UpdateHoldoutRequest.fromPartial({
              holdout: holdout('all-at-once', { fraction: 1.5 }),
              updateMask: ['fraction'],
            }),
          ),
        );
        expect(unique(held)).toEqual(['holdout.etag', 'holdout.fraction']);
        // A layer and a holdout that do not exist, as for experiments: the request's own wrong
        // values first, then NOT_FOUND; values outside the mask, and whether the holdout would
        // still cover anything, are not judged.
        const updateMissingLayer = (description: string) =>
          failure(
            admin.updateLayer(
              UpdateLayerRequest.fromPartial({
                layer: { id: 'no-such-layer', etag: '1', description, owner: 'x'.repeat(9000) },
                updateMask: ['description'],
              }),
            ),
          );
        expect(fields(await updateMissingLayer('x'.repeat(9000)))).toEqual(['layer.description']);
        expect((await updateMissingLayer('fine')).code).toBe(GrpcCode.NOT_FOUND);
        const updateMissingHoldout = (fields: Partial<Holdout>, updateMask: string[]) =>
          failure(
            admin.updateHoldout(
              UpdateHoldoutRequest.fromPartial({
                holdout: holdout('no-such-holdout', { etag: '1', unitType: '', ...fields }),
                updateMask,
              }),
            ),
          );
        const missingHoldout = await updateMissingHoldout({ fraction: 1.5, surfaces: ['a b'] }, [
          'fraction',
          'surfaces',
        ]);
        expect(unique(missingHoldout)).toEqual(['holdout.fraction', 'holdout.surfaces[0]']);
        expect(
          unique(await updateMissingHoldout({ fraction: 1.5, etag: '' }, ['fraction'])),
        ).toEqual(['holdout.etag', 'holdout.fraction']);
        expect((await updateMissingHoldout({ surfaces: [] }, ['surfaces'])).code).toBe(
          GrpcCode.NOT_FOUND,
        );
        expect((await updateMissingHoldout({ fraction: 0.2 }, ['fraction'])).code).toBe(
          GrpcCode.NOT_FOUND,
        );
      });

      it('refuses a request_id reused for a request differing only in a value set to a default', async () => {
        const created = await service.admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('fp-coverage', { surfaces: ['fp-coverage'], coverage: 0.5 }),
          }),
        );
        // Coverage unset (everyone) and coverage 0 (nobody) under one id: not a retry.
        const cleared = UpdateExperimentRequest.fromPartial({
          experiment: { ...created.experiment, coverage: undefined },
          updateMask: ['coverage'],
          requestId: 'fp-coverage-1',
        });
        const first = await service.admin.updateExperiment(cleared);
        expect(first.experiment?.coverage).toBeUndefined();
        expect(await service.admin.updateExperiment(cleared)).toEqual(first);
        const nobody = await failure(
          service.admin.updateExperiment({
            ...cleared,
            experiment: { ...cleared.experiment!, coverage: 0 },
          }),
        );
        expect(fieldReasons(nobody)).toEqual([['request_id', 'REQUEST_ID_REUSED']]);
        // Values in a condition (a Struct) that proto3 JSON tells apart, each another request.
        const withBeta = (beta: unknown) =>
          CreateExperimentRequest.fromPartial({
            experiment: experiment('fp-condition', {
              surfaces: ['fp-condition'],
              condition: { beta },
            }),
            requestId: 'fp-condition-1',
          });
        const created2 = await service.admin.createExperiment(withBeta(false));
        expect(await service.admin.createExperiment(withBeta(false))).toEqual(created2);
        for (const beta of [0, '', null, [], {}, true]) {
          const reused = await failure(service.admin.createExperiment(withBeta(beta)));
          expect(fieldReasons(reused)).toEqual([['request_id', 'REQUEST_ID_REUSED']]);
        }
      });

      it('reports every problem of an invalid experiment at once', async () => {
        const error = await failure(
          service.admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: experiment('broken', {
                surfaces: [],
                variants: [variant('a', 0.7), variant('a', 0.7)],
                coverage: 2,
                condition: { country: { $bogus: 1 } },
                layerId: 'no-such-layer',
                layerRange: { start: 0, end: 0.5 },
                // Beyond ten years (an expiry time past what storage holds is never reached).
                stickyTtl: { seconds: 3651 * 86_400, nanos: 0 },
              }),
            }),
          ),
        );
        expect(error.code).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(fields(error)).toEqual(
          expect.arrayContaining([
            'experiment.sticky_ttl',
            'experiment.surfaces',
            'experiment.variants[1].key',
            'experiment.variants',
            'experiment.coverage',
            'experiment.layer_id',
          ]),
        );
        expect(fields(error).some((f) => f.startsWith('experiment.condition'))).toBe(true);
        const nanos = await failure(
          service.admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: experiment('odd-ttl', { stickyTtl: { seconds: 1, nanos: 2e9 } }),
            }),
          ),
        );
        expect(fieldReasons(nanos)).toEqual([['experiment.sticky_ttl', 'INVALID_DURATION']]);
        // Nanos against the seconds' sign are no Duration; a negative Duration is one, too short.
        const ttlReasons = async (stickyTtl: { seconds: number; nanos: number }) =>
          fieldReasons(
            await failure(
              service.admin.createExperiment(
                CreateExperimentRequest.fromPartial({
                  experiment: experiment('odd-ttl', { stickyTtl }),
                }),
              ),
            ),
          );
        expect(await ttlReasons({ seconds: 1, nanos: -5 })).toEqual([
          ['experiment.sticky_ttl', 'INVALID_DURATION'],
        ]);
        expect(await ttlReasons({ seconds: -1, nanos: -500_000_000 })).toEqual([
          ['experiment.sticky_ttl', 'OUT_OF_RANGE'],
        ]);
      });

      it('refuses resources too large to store or list, with the same answer on every store', async () => {
        const { admin } = service;
        // 3 MB of empty tags is ~20 MB as a MongoDB document: the driver refused it (INTERNAL).
        // Past the request limit, it is refused before it is decoded.
        const tags = await failure(
          admin.createLayer(
            CreateLayerRequest.fromPartial({
              layer: { id: 'tagged', tags: Array.from({ length: 1_500_000 }, () => '') },
            }),
            { timeoutMs: 30_000 },
          ),
        );
        expect([tags.code, tags.reason]).toEqual([
          GrpcCode.RESOURCE_EXHAUSTED,
          'REQUEST_TOO_LARGE',
        ]);
        // Within it, one violation for all of them.
        const manyTags = await failure(
          admin.createLayer(
            CreateLayerRequest.fromPartial({
              layer: { id: 'tagged', tags: Array.from({ length: 500_000 }, () => '') },
            }),
            { timeoutMs: 30_000 },
          ),
        );
        expect(fieldReasons(manyTags)).toEqual([['layer.tags', 'TOO_MANY']]);
        const texts = await failure(
          admin.createLayer(
            CreateLayerRequest.fromPartial({
              layer: { id: 'wordy', description: 'é'.repeat(5_000), owner: 'o'.repeat(300) },
            }),
          ),
        );
        expect(fieldReasons(texts)).toEqual([
          ['layer.description', 'TOO_LONG'],
          ['layer.owner', 'TOO_LONG'],
        ]);
        // One violation for a list that is too long, not one per entry.
        const many = await failure(
          admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: experiment('many-arms', {
                variants: Array.from({ length: 400 }, () => variant('same')),
              }),
            }),
          ),
        );
        expect(fieldReasons(many)).toEqual([['experiment.variants', 'TOO_MANY']]);
        const payload = { blob: 'x'.repeat(60_000) };
        const heavy = await failure(
          admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: experiment('heavy', {
                variants: Array.from({ length: 20 }, (_, i) => variant(`v${i}`, 0, payload)),
              }),
            }),
          ),
        );
        expect(fieldReasons(heavy)).toEqual([['experiment.variants', 'TOO_LARGE']]);
        const wide = await failure(
          admin.createHoldout(
            CreateHoldoutRequest.fromPartial({
              holdout: holdout('wide', {
                layerIds: Array.from({ length: 101 }, (_, i) => `l${i}`),
              }),
            }),
          ),
        );
        expect(fieldReasons(wide)).toEqual([['holdout.layer_ids', 'TOO_MANY']]);
        // A seed is hashed with every unit id, and a 10 MB one broke every list page it fell on.
        const seeded = await failure(
          admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: experiment('long-seed', { seed: 's'.repeat(257) }),
            }),
          ),
        );
        expect(fieldReasons(seeded)).toEqual([['experiment.seed', 'TOO_LONG']]);
        const seededHoldout = await failure(
          admin.createHoldout(
            CreateHoldoutRequest.fromPartial({
              holdout: holdout('long-seed', { seed: 's'.repeat(257), surfaces: ['home'] }),
            }),
          ),
        );
        expect(fieldReasons(seededHoldout)).toEqual([['holdout.seed', 'TOO_LONG']]);
      });

      it('refuses NaN and infinite numbers in a condition or payload, which JSON would store as null', async () => {
        const error = await failure(
          service.admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: experiment('not-finite', {
                condition: { a: Number.NaN, b: { $in: [1, Number.POSITIVE_INFINITY] } },
                variants: [
                  variant('control', 0.5),
                  variant('treatment', 0.5, { score: Number.NEGATIVE_INFINITY }),
                ],
              }),
            }),
          ),
        );
        expect(fieldReasons(error)).toEqual([
          ['experiment.variants[1].payload.score', 'NOT_FINITE'],
          ['experiment.condition.a', 'NOT_FINITE'],
          ['experiment.condition.b.$in[1]', 'NOT_FINITE'],
        ]);
        await expect(service.client.getExperiment({ id: 'not-finite' })).rejects.toMatchObject({
          code: GrpcCode.NOT_FOUND,
        });
      });

      it('answers NOT_FOUND for an id no resource can have, as for any other missing one', async () => {
        const id = 'x'.repeat(2_000);
        for (const call of [
          service.client.getExperiment({ id }),
          service.admin.deleteExperiment(DeleteExperimentRequest.fromPartial({ id, etag: '1' })),
          service.admin.startExperiment(StartExperimentRequest.fromPartial({ id })),
          service.admin.deleteLayer(DeleteLayerRequest.fromPartial({ id, etag: '1' })),
          service.admin.deleteHoldout(DeleteHoldoutRequest.fromPartial({ id, etag: '1' })),
        ]) {
          expect((await failure(call)).code).toBe(GrpcCode.NOT_FOUND);
        }
      });

      it('ends a list page early rather than outgrow a message, and pages on from there', async () => {
        const { admin, client } = service;
        // Six experiments of ~960 KB each: the default page (50) would be ~5.8 MB.
        const payload = { blob: 'x'.repeat(64_000) };
        const ids = ['big-1', 'big-2', 'big-3', 'big-4', 'big-5', 'big-6'];
        for (const id of ids) {
          await admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: experiment(id, {
                surfaces: ['big'],
                variants: Array.from({ length: 15 }, (_, i) => variant(`v${i}`, 0, payload)),
              }),
            }),
          );
        }
        const listed: string[] = [];
        let pageToken = '';
        let pages = 0;
        do {
          const response = await client.listExperiments(
            ListExperimentsRequest.fromPartial({ surface: 'big', pageToken }),
          );
          // What gRPC clients accept by default.
          expect(ListExperimentsResponse.encode(response).finish().length).toBeLessThanOrEqual(
            4 * 1024 * 1024,
          );
          listed.push(...response.experiments.map((e) => e.id));
          pageToken = response.nextPageToken;
          pages++;
        } while (pageToken !== '');
        expect(listed).toEqual(ids);
        expect(pages).toBe(2);
      });

      it('names the field of a schedule time past what a Timestamp holds', async () => {
        // Seconds past what a Date holds: only a hand-made request sends them, so as bytes.
        const tooLate = new BinaryWriter().uint32(122).fork().uint32(8).int64(1e13).join().finish();
        const bytes = Buffer.from(
          new BinaryWriter()
            .uint32(10)
            .bytes(Buffer.concat([Experiment.encode(experiment('far-future')).finish(), tooLate]))
            .finish(),
        );
        const error = await rawCallError(
          service.address,
          AssignmentServiceService.createExperiment.path,
          bytes,
        );
        expect(error.code).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(decodeStatus(error).violations.map((v) => v.field)).toEqual([
          'experiment.scheduled_end_time',
        ]);
        // Within what a Date holds but past a Timestamp's 9999-12-31, which standard clients
        // (protojson: grpcurl, buf curl) refuse to read back.
        const year20000 = await failure(
          service.admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: experiment('far-future', {
                scheduledStartTime: new Date(Date.UTC(20_000, 0, 1)),
              }),
            }),
          ),
        );
        expect(fields(year20000)).toEqual(['experiment.scheduled_start_time']);
      });

      it('refuses an invalid condition on update, and keeps the stored one', async () => {
        const created = await service.admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('retargeted', { condition: { country: 'SE' } }),
          }),
        );
        const update = (condition: Record<string, unknown>) =>
          service.admin.updateExperiment(
            UpdateExperimentRequest.fromPartial({
              experiment: {
                ...experiment('retargeted', { condition }),
                etag: created.experiment?.etag ?? '',
              },
              updateMask: ['condition'],
            }),
          );
        for (const condition of [
          { country: { $bogus: 1 } },
          { $where: 'true' },
          { n: { $regex: '(' } },
        ]) {
          const error = await failure(update(condition));
          expect(error.code).toBe(GrpcCode.INVALID_ARGUMENT);
          expect(fields(error).every((f) => f.startsWith('experiment.condition'))).toBe(true);
          expect(fields(error)).not.toEqual([]);
        }
        const stored = await service.client.getExperiment({ id: 'retargeted' });
        expect(stored.experiment).toMatchObject({ condition: { country: 'SE' }, etag: '1' });
      });

      it('refuses a map key "__proto__" (in a condition, a payload or attributes) by its path', async () => {
        // A generated client drops such a key (assigning it sets an object's prototype), so the
        // request is encoded with a stand-in key of the same length, then the bytes are edited.
        const STAND_IN = '__PROTO__';
        const withReservedKey = (bytes: Uint8Array): Buffer => {
          const edited = Buffer.from(bytes);
          const at = edited.indexOf(STAND_IN);
          expect(at).toBeGreaterThanOrEqual(0);
          edited.write('__proto__', at);
          return edited;
        };
        const create = (overrides: Parameters<typeof experiment>[1]) =>
          rawCallError(
            service.address,
            AssignmentServiceService.createExperiment.path,
            withReservedKey(
              CreateExperimentRequest.encode(
                CreateExperimentRequest.fromPartial({
                  experiment: experiment('proto-key', overrides),
                }),
              ).finish(),
            ),
          );
        const condition = await create({
          condition: { plan: 'pro', nested: { [STAND_IN]: { country: { $in: ['SE'] } } } },
        });
        expect(condition.code).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(decodeStatus(condition).violations.map((v) => [v.field, v.reason])).toEqual([
          ['experiment.condition.nested.__proto__', 'RESERVED_KEY'],
        ]);
        const payload = await create({
          variants: [variant('control', 0.5), variant('treatment', 0.5, { [STAND_IN]: 'x' })],
        });
        expect(decodeStatus(payload).violations.map((v) => [v.field, v.reason])).toEqual([
          ['experiment.variants[1].payload.__proto__', 'RESERVED_KEY'],
        ]);
        await expect(service.client.getExperiment({ id: 'proto-key' })).rejects.toMatchObject({
          code: GrpcCode.NOT_FOUND,
        });
        const attributes = await rawCallError(
          service.address,
          AssignmentServiceService.resolve.path,
          withReservedKey(
            ResolveRequest.encode(
              resolveRequest('u-1', {
                surfaces: ['home'],
                attributes: { [STAND_IN]: { tier: 'x' } },
              }),
            ).finish(),
          ),
        );
        expect(decodeStatus(attributes).violations.map((v) => [v.field, v.reason])).toEqual([
          ['attributes.__proto__', 'RESERVED_KEY'],
        ]);
        // With a field only the generated decoder takes (request_id as a varint), the key cannot
        // be looked for: refused too, rather than decoded without it.
        const unchecked = await rawCallError(
          service.address,
          AssignmentServiceService.createExperiment.path,
          Buffer.concat([
            withReservedKey(
              CreateExperimentRequest.encode(
                CreateExperimentRequest.fromPartial({
                  experiment: experiment('proto-key', {
                    condition: { nested: { [STAND_IN]: { country: 'SE' } } },
                  }),
                }),
              ).finish(),
            ),
            Buffer.from([0x10, 0x05]),
          ]),
        );
        expect(unchecked.code).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(decodeStatus(unchecked).errorInfo?.reason).toBe('UNDECODABLE_REQUEST');
      });

      describe('a google.protobuf.Value without a kind (a Struct entry created and never filled)', () => {
        // Such a Value is invalid, but Python, Go and Java clients send one; the generated
        // decoder would drop its Struct entry (a condition of it would target everyone) or read
        // it as null in a list, so the request is refused, each such Value named by its path.
        /** Field `tag` (already shifted, wire type 2) holding `bytes`. */
        const delimited = (tag: number, bytes: Uint8Array): Buffer =>
          Buffer.from(new BinaryWriter().uint32(tag).bytes(bytes).finish());
        /** A Struct entry (`fields`, field 1) `key` whose Value has no kind (empty bytes). */
        const entryWithoutKind = (key: string): Buffer =>
          delimited(
            (1 << 3) | 2,
            new BinaryWriter()
              .uint32((1 << 3) | 2)
              .string(key)
              .uint32((2 << 3) | 2)
              .bytes(new Uint8Array())
              .finish(),
          );

        it('is refused with INVALID_ARGUMENT, not silently dropped (the condition would target everyone)', async () => {
          const condition = Buffer.concat([
            entryWithoutKind('country'),
            Buffer.from(Struct.encode(Struct.wrap({ app: { $in: ['ios', undefined] } })).finish()),
          ]);
          const treatment = Buffer.concat([
            Buffer.from(
              Variant.encode(Variant.fromPartial({ key: 'treatment', weight: 0.5 })).finish(),
            ),
            delimited((4 << 3) | 2, entryWithoutKind('button')),
          ]);
          const experimentBytes = Buffer.concat([
            Buffer.from(
              Experiment.encode(
                experiment('no-kind', { variants: [variant('control', 0.5)] }),
              ).finish(),
            ),
            delimited((9 << 3) | 2, condition),
            delimited((7 << 3) | 2, treatment),
          ]);
          const error = await rawCallError(
            service.address,
            AssignmentServiceService.createExperiment.path,
            delimited((1 << 3) | 2, experimentBytes),
          );
          expect(error.code).toBe(GrpcCode.INVALID_ARGUMENT);
          expect(decodeStatus(error).errorInfo?.reason).toBe('NO_VALUE');
          expect(
            decodeStatus(error)
              .violations.map((v) => v.field)
              .sort(),
          ).toEqual(['experiment.condition.country', 'experiment.variants[1].payload.button']);
          await expect(service.client.getExperiment({ id: 'no-kind' })).rejects.toMatchObject({
            code: GrpcCode.NOT_FOUND,
          });
        });

        it("is reported with the request's other problems found before decoding", async () => {
          const experimentBytes = Buffer.concat([
            Buffer.from(Experiment.encode(experiment('no-kind-utf8')).finish()),
            delimited((9 << 3) | 2, entryWithoutKind('country')),
            // An owner (field 3) that is not UTF-8.
            delimited((3 << 3) | 2, Uint8Array.from([0xff])),
          ]);
          const error = await rawCallError(
            service.address,
            AssignmentServiceService.createExperiment.path,
            delimited((1 << 3) | 2, experimentBytes),
          );
          expect(error.code).toBe(GrpcCode.INVALID_ARGUMENT);
          expect(
            decodeStatus(error)
              .violations.map((v) => [v.field, v.reason])
              .sort(),
          ).toEqual([
            ['experiment.condition.country', 'NO_VALUE'],
            ['experiment.owner', 'INVALID_UTF8'],
          ]);
        });

        it('is refused in an update of the condition, which keeps the stored one', async () => {
          const created = await service.admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: experiment('no-kind-update', { condition: { country: 'SE' } }),
            }),
          );
          const experimentBytes = Buffer.concat([
            Buffer.from(
              Experiment.encode(
                experiment('no-kind-update', { etag: created.experiment?.etag ?? '' }),
              ).finish(),
            ),
            delimited((9 << 3) | 2, entryWithoutKind('country')),
          ]);
          const error = await rawCallError(
            service.address,
            AssignmentServiceService.updateExperiment.path,
            Buffer.concat([
              delimited((1 << 3) | 2, experimentBytes),
              Buffer.from(
                UpdateExperimentRequest.encode(
                  UpdateExperimentRequest.fromPartial({ updateMask: ['condition'] }),
                ).finish(),
              ),
            ]),
          );
          expect(error.code).toBe(GrpcCode.INVALID_ARGUMENT);
          expect(decodeStatus(error).violations.map((v) => [v.field, v.reason])).toEqual([
            ['experiment.condition.country', 'NO_VALUE'],
          ]);
          const stored = await service.client.getExperiment({ id: 'no-kind-update' });
          expect(stored.experiment).toMatchObject({ condition: { country: 'SE' }, etag: '1' });
        });

        it('is refused in Resolve attributes, which would otherwise lose the entry', async () => {
          const request = Buffer.concat([
            Buffer.from(ResolveRequest.encode(resolveRequest('u-1')).finish()),
            delimited(
              (2 << 3) | 2,
              Buffer.concat([
                entryWithoutKind('tier'),
                Buffer.from(Struct.encode(Struct.wrap({ country: 'SE' })).finish()),
              ]),
            ),
          ]);
          const error = await rawCallError(
            service.address,
            AssignmentServiceService.resolve.path,
            request,
          );
          expect(error.code).toBe(GrpcCode.INVALID_ARGUMENT);
          expect(decodeStatus(error).violations.map((v) => [v.field, v.reason])).toEqual([
            ['attributes.tier', 'NO_VALUE'],
          ]);
          // A list item without one is null, as a TypeScript client writes an undefined item.
          const sparse = ResolveRequest.fromPartial({
            ...resolveRequest('u-1'),
            attributes: { country: 'SE', segments: ['a', undefined, 'b'] },
          });
          await expect(service.client.resolve(sparse)).resolves.toMatchObject({
            resolveId: expect.any(String) as unknown,
          });
        });
      });

      it('refuses a Timestamp whose nanos are out of range, rather than moving it by seconds', async () => {
        const start = new Date(Date.now() + 3_600_000);
        for (const nanos of [2_000_000_000, -1]) {
          const error = await rawCallError(
            service.address,
            AssignmentServiceService.createExperiment.path,
            withTimestampNanos(
              'tandem.assignment.v1.CreateExperimentRequest',
              CreateExperimentRequest.encode(
                CreateExperimentRequest.fromPartial({
                  experiment: experiment('bad-nanos', { scheduledStartTime: start }),
                }),
              ).finish(),
              'experiment.scheduled_start_time',
              nanos,
            ),
          );
          expect(error.code).toBe(GrpcCode.INVALID_ARGUMENT);
          expect(decodeStatus(error).violations.map((v) => [v.field, v.reason])).toEqual([
            ['experiment.scheduled_start_time', 'INVALID_TIMESTAMP'],
          ]);
          expect(decodeStatus(error).errorInfo?.reason).toBe('INVALID_TIMESTAMP');
        }
        await expect(service.client.getExperiment({ id: 'bad-nanos' })).rejects.toMatchObject({
          code: GrpcCode.NOT_FOUND,
        });
      });

      it('refuses an overlapping layer range and a duplicate id', async () => {
        await service.admin.createLayer(
          CreateLayerRequest.fromPartial({ layer: { id: 'checkout' } }),
        );
        await service.admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('checkout-a', {
              layerId: 'checkout',
              layerRange: { start: 0, end: 0.6 },
            }),
          }),
        );
        const overlap = await failure(
          service.admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: experiment('checkout-b', {
                layerId: 'checkout',
                layerRange: { start: 0.5, end: 1 },
              }),
            }),
          ),
        );
        expect(fields(overlap)).toEqual(['experiment.layer_range']);
        const duplicate = await failure(
          service.admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: experiment('checkout-a', {
                layerId: 'checkout',
                layerRange: { start: 0.7, end: 1 },
              }),
            }),
          ),
        );
        expect(duplicate.code).toBe(GrpcCode.ALREADY_EXISTS);
      });

      it('keeps a concluded experiment editable once another takes its layer range', async () => {
        const { admin } = service;
        await admin.createLayer(CreateLayerRequest.fromPartial({ layer: { id: 'handover' } }));
        const inRange = (id: string) =>
          experiment(id, { layerId: 'handover', layerRange: { start: 0.5, end: 1 } });
        await admin.createExperiment(
          CreateExperimentRequest.fromPartial({ experiment: inRange('handover-old') }),
        );
        await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'handover-old' }));
        const concluded = await admin.concludeExperiment(
          ConcludeExperimentRequest.fromPartial({ id: 'handover-old' }),
        );
        await admin.createExperiment(
          CreateExperimentRequest.fromPartial({ experiment: inRange('handover-new') }),
        );
        const described = await admin.updateExperiment(
          UpdateExperimentRequest.fromPartial({
            experiment: {
              ...inRange('handover-old'),
              description: 'lost to handover-new',
              etag: concluded.experiment?.etag ?? '',
            },
            updateMask: ['description'],
          }),
        );
        expect(described.experiment?.description).toBe('lost to handover-new');
      });

      it('keeps serving a $regex stored before conditions were RE2, until a write changes it', async () => {
        const { admin, client } = service;
        await admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('legacy-regex', {
              surfaces: ['legacy'],
              condition: { ua: { $regex: 'Mozilla' } },
            }),
          }),
        );
        await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'legacy-regex' }));
        // As a lookahead was stored when JavaScript's RegExp judged conditions.
        const legacy = await storeConditionAsBefore(service, 'legacy-regex', {
          ua: { $regex: '^(?!.*bot)' },
        });
        const reasonFor = async (ua: string) =>
          (
            await client.resolve(
              resolveRequest('u-1', { surfaces: ['legacy'], attributes: { ua }, explain: true }),
            )
          ).assignments[0]?.reason;
        expect(await reasonFor('Mozilla/5.0')).toBe(AssignmentReason.ASSIGNMENT_REASON_ASSIGNED);
        expect(await reasonFor('a crawler bot')).toBe(
          AssignmentReason.ASSIGNMENT_REASON_TARGETED_OUT,
        );
        const described = await admin.updateExperiment(
          UpdateExperimentRequest.fromPartial({
            experiment: {
              ...experiment('legacy-regex', { description: 'condition untouched' }),
              etag: String(legacy.version),
            },
            updateMask: ['description'],
          }),
        );
        expect(described.experiment?.description).toBe('condition untouched');
        const rewritten = await failure(
          admin.updateExperiment(
            UpdateExperimentRequest.fromPartial({
              experiment: {
                ...experiment('legacy-regex', { condition: { ua: { $regex: '^(?!.*spider)' } } }),
                etag: described.experiment?.etag ?? '',
              },
              updateMask: ['condition'],
            }),
          ),
        );
        expect(fieldReasons(rewritten)).toEqual([
          ['experiment.condition.ua.$regex', 'UNSUPPORTED_REGEX'],
        ]);
      });

      it('keeps a condition stored before a rule tightened ($not of a value) until a write changes it', async () => {
        const { admin } = service;
        await admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('legacy-not', {
              condition: { plan: { $not: { $eq: 'free' } } },
            }),
          }),
        );
        const warn = jest.spyOn(service.service.context.configuration['logger'], 'warn');
        const legacy = await storeConditionAsBefore(service, 'legacy-not', {
          plan: { $not: 'free' },
        });
        expect(warn).toHaveBeenCalledWith(
          { experiments: ['legacy-not'] },
          expect.stringContaining('a $not of a plain value'),
        );
        warn.mockRestore();
        const described = await admin.updateExperiment(
          UpdateExperimentRequest.fromPartial({
            experiment: {
              ...experiment('legacy-not', { description: 'condition untouched' }),
              etag: String(legacy.version),
            },
            updateMask: ['description'],
          }),
        );
        expect(described.experiment?.description).toBe('condition untouched');
        // A draft has no population to keep: it starts only once its condition is rewritten.
        const started = await failure(
          admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'legacy-not' })),
        );
        expect(started.code).toBe(GrpcCode.FAILED_PRECONDITION);
        expect(started.reason).toBe('CONDITION_OUTDATED');
        expect(preconditions(started)).toEqual(['NOT_OF_VALUE']);
        const rewritten = await failure(
          admin.updateExperiment(
            UpdateExperimentRequest.fromPartial({
              experiment: {
                ...experiment('legacy-not', {
                  surfaces: ['legacy-not'],
                  condition: { plan: { $not: 'trial' } },
                }),
                etag: described.experiment?.etag ?? '',
              },
              updateMask: ['condition'],
            }),
          ),
        );
        expect(fieldReasons(rewritten)).toEqual([
          ['experiment.condition.plan.$not', 'NOT_OF_VALUE'],
        ]);
      });

      it('never takes an etag of a deleted resource for the one created again under its id', async () => {
        const { admin } = service;
        const stale = async (call: Promise<unknown>) => (await failure(call)).reason;

        const layer = () => CreateLayerRequest.fromPartial({ layer: { id: 'reborn-layer' } });
        const announced = jest.spyOn(service.service.context.changes['publisher'], 'enqueue');
        await admin.createLayer(layer());
        await admin.deleteLayer(DeleteLayerRequest.fromPartial({ id: 'reborn-layer', etag: '1' }));
        const again = await admin.createLayer(layer());
        expect(again.layer?.etag).toBe('2.1');
        // Its change event names that etag, under an id of its own (not the first one's again).
        const events = announced.mock.calls.map(([, , event]) => event as ConfigChangeEvent);
        announced.mockRestore();
        expect(events.map((e) => [e.resourceId, e.etag, e.eventId])).toEqual([
          ['reborn-layer', '1', 'assignment/layer/reborn-layer/1'],
          ['reborn-layer', '', expect.stringMatching(/^assignment\/layer\/reborn-layer\/deleted@/)],
          ['reborn-layer', '2.1', 'assignment/layer/reborn-layer/2.1'],
        ]);
        const update = (etag: string) =>
          admin.updateLayer(
            UpdateLayerRequest.fromPartial({
              layer: { id: 'reborn-layer', etag, owner: 'someone' },
              updateMask: ['owner'],
            }),
          );
        expect(await stale(update('1'))).toBe('STALE_ETAG');
        expect(
          await stale(
            admin.deleteLayer(DeleteLayerRequest.fromPartial({ id: 'reborn-layer', etag: '1' })),
          ),
        ).toBe('STALE_ETAG');
        expect((await update('2.1')).layer?.etag).toBe('2.2');

        const created = () =>
          admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: experiment('reborn', { surfaces: ['reborn'] }),
            }),
          );
        await created();
        await admin.deleteExperiment(
          DeleteExperimentRequest.fromPartial({ id: 'reborn', etag: '1' }),
        );
        expect((await created()).experiment?.etag).toBe('2.1');
        expect(
          await stale(
            admin.updateExperiment(
              UpdateExperimentRequest.fromPartial({
                experiment: { ...experiment('reborn', { surfaces: ['reborn'] }), etag: '1' },
                updateMask: ['description'],
              }),
            ),
          ),
        ).toBe('STALE_ETAG');

        const held = () =>
          admin.createHoldout(
            CreateHoldoutRequest.fromPartial({ holdout: holdout('reborn', { surfaces: ['x'] }) }),
          );
        await held();
        await admin.deleteHoldout(DeleteHoldoutRequest.fromPartial({ id: 'reborn', etag: '1' }));
        expect((await held()).holdout?.etag).toBe('2.1');
        expect(
          await stale(
            admin.deleteHoldout(DeleteHoldoutRequest.fromPartial({ id: 'reborn', etag: '1' })),
          ),
        ).toBe('STALE_ETAG');
      });

      it('ignores what the request says of fields outside the update mask, problems included', async () => {
        const { admin } = service;
        const created = await admin.createExperiment(
          CreateExperimentRequest.fromPartial({ experiment: experiment('masked') }),
        );
        const body = {
          ...experiment('masked', {
            description: 'only this changes',
            stickyTtl: { seconds: -5, nanos: 0 },
            scheduledEndTime: new Date(Date.UTC(20_000, 0, 1)),
          }),
          etag: created.experiment?.etag ?? '',
        };
        const updated = await admin.updateExperiment(
          UpdateExperimentRequest.fromPartial({ experiment: body, updateMask: ['description'] }),
        );
        expect(updated.experiment).toMatchObject({
          description: 'only this changes',
          stickyTtl: created.experiment?.stickyTtl,
          scheduledEndTime: undefined,
        });
        const masked = await failure(
          admin.updateExperiment(
            UpdateExperimentRequest.fromPartial({
              experiment: { ...body, etag: updated.experiment?.etag ?? '' },
              updateMask: ['sticky_ttl'],
            }),
          ),
        );
        expect(fields(masked)).toEqual(['experiment.sticky_ttl']);
      });

      it('lets only one of two overlapping experiments created at once into a layer', async () => {
        await service.admin.createLayer(CreateLayerRequest.fromPartial({ layer: { id: 'race' } }));
        const create = (id: string, start: number, end: number) =>
          service.admin
            .createExperiment(
              CreateExperimentRequest.fromPartial({
                experiment: experiment(id, { layerId: 'race', layerRange: { start, end } }),
              }),
            )
            .then(
              () => 'created',
              (error: unknown) =>
                error instanceof InvalidArgumentError
                  ? error.violations.map((v) => v.field).join()
                  : error,
            );
        const outcomes = await Promise.all([create('race-a', 0, 0.6), create('race-b', 0.4, 1)]);
        expect(outcomes.sort()).toEqual(['created', 'experiment.layer_range']);
        const layer = await service.client.getLayer(GetLayerRequest.fromPartial({ id: 'race' }));
        expect(layer.layer?.allocations).toHaveLength(1);
      });

      it('runs the lifecycle DRAFT → RUNNING → STOPPED → CONCLUDED with its preconditions', async () => {
        const { admin, client } = service;
        const created = await admin.createExperiment(
          CreateExperimentRequest.fromPartial({ experiment: experiment('lifecycle') }),
        );
        expect(created.experiment).toMatchObject({
          status: ExperimentStatus.EXPERIMENT_STATUS_DRAFT,
          seed: 'lifecycle',
          hashVersion: 2,
          allocationMode: AllocationMode.ALLOCATION_MODE_FIXED,
          etag: '1',
        });
        const draftResolve = await client.resolve(resolveRequest('u1', { explain: true }));
        expect(draftResolve.assignments.find((a) => a.experimentId === 'lifecycle')?.reason).toBe(
          AssignmentReason.ASSIGNMENT_REASON_NOT_RUNNING,
        );

        const stale = await failure(
          admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'lifecycle', etag: '7' })),
        );
        expect(stale.code).toBe(GrpcCode.ABORTED);
        const started = await admin.startExperiment(
          StartExperimentRequest.fromPartial({ id: 'lifecycle' }),
        );
        expect(started.experiment?.status).toBe(ExperimentStatus.EXPERIMENT_STATUS_RUNNING);
        expect(started.experiment?.startTime).toBeInstanceOf(Date);
        const again = await failure(
          admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'lifecycle' })),
        );
        expect(again.code).toBe(GrpcCode.FAILED_PRECONDITION);
        expect(preconditions(again)).toEqual(['STATUS']);

        const frozen = await failure(
          admin.updateExperiment(
            UpdateExperimentRequest.fromPartial({
              experiment: {
                ...experiment('lifecycle', { seed: 'other' }),
                etag: started.experiment?.etag ?? '',
              },
              updateMask: ['seed'],
            }),
          ),
        );
        expect(frozen.code).toBe(GrpcCode.FAILED_PRECONDITION);
        expect(preconditions(frozen)).toEqual(['IMMUTABLE_ONCE_STARTED']);
        const coverage = await admin.updateExperiment(
          UpdateExperimentRequest.fromPartial({
            experiment: {
              ...experiment('lifecycle', { coverage: 0.5 }),
              etag: started.experiment?.etag ?? '',
            },
            updateMask: ['coverage'],
          }),
        );
        expect(coverage.experiment?.coverage).toBe(0.5);
        const staleUpdate = await failure(
          admin.updateExperiment(
            UpdateExperimentRequest.fromPartial({
              experiment: {
                ...experiment('lifecycle', { coverage: 1 }),
                etag: started.experiment?.etag ?? '',
              },
              updateMask: ['coverage'],
            }),
          ),
        );
        expect(staleUpdate.code).toBe(GrpcCode.ABORTED);

        const running = await failure(
          admin.deleteExperiment(
            DeleteExperimentRequest.fromPartial({
              id: 'lifecycle',
              etag: coverage.experiment?.etag ?? '',
            }),
          ),
        );
        expect(running.code).toBe(GrpcCode.FAILED_PRECONDITION);

        const stopped = await admin.stopExperiment(
          StopExperimentRequest.fromPartial({ id: 'lifecycle' }),
        );
        expect(stopped.experiment?.status).toBe(ExperimentStatus.EXPERIMENT_STATUS_STOPPED);
        const stopAgain = await failure(
          admin.stopExperiment(StopExperimentRequest.fromPartial({ id: 'lifecycle' })),
        );
        expect(stopAgain.code).toBe(GrpcCode.FAILED_PRECONDITION);
        const unknownVariant = await failure(
          admin.concludeExperiment(
            ConcludeExperimentRequest.fromPartial({ id: 'lifecycle', shippedVariantKey: 'nope' }),
          ),
        );
        expect(fields(unknownVariant)).toEqual(['shipped_variant_key']);
        const essay = await failure(
          admin.concludeExperiment(
            ConcludeExperimentRequest.fromPartial({
              id: 'lifecycle',
              shippedVariantKey: 'treatment',
              summary: 'w'.repeat(8 * 1024 + 1),
            }),
          ),
        );
        expect(fieldReasons(essay)).toEqual([['summary', 'TOO_LONG']]);
        const concluded = await admin.concludeExperiment(
          ConcludeExperimentRequest.fromPartial({
            id: 'lifecycle',
            shippedVariantKey: 'treatment',
            summary: 'won',
          }),
        );
        expect(concluded.experiment?.status).toBe(ExperimentStatus.EXPERIMENT_STATUS_CONCLUDED);
        expect(concluded.experiment?.conclusion).toMatchObject({
          shippedVariantKey: 'treatment',
          summary: 'won',
        });
        // Not even the sticky TTL, which the evaluator does not read.
        const concludedTtl = await failure(
          admin.updateExperiment(
            UpdateExperimentRequest.fromPartial({
              experiment: {
                ...experiment('lifecycle', { stickyTtl: { seconds: 86_400, nanos: 0 } }),
                etag: concluded.experiment?.etag ?? '',
              },
              updateMask: ['sticky_ttl'],
            }),
          ),
        );
        expect(concludedTtl.code).toBe(GrpcCode.FAILED_PRECONDITION);
        expect(preconditions(concludedTtl)).toEqual(['IMMUTABLE_WHEN_CONCLUDED']);
        const shipped = await client.resolve(resolveRequest('u1'));
        expect(shipped.assignments.find((a) => a.experimentId === 'lifecycle')).toMatchObject({
          variantKey: 'treatment',
          reason: AssignmentReason.ASSIGNMENT_REASON_CONCLUDED,
          inExperiment: false,
          payloadJson: '{"policy":"new"}',
        });

        await admin.deleteExperiment(
          DeleteExperimentRequest.fromPartial({
            id: 'lifecycle',
            etag: concluded.experiment?.etag ?? '',
          }),
        );
        expect((await failure(client.getExperiment({ id: 'lifecycle' }))).code).toBe(
          GrpcCode.NOT_FOUND,
        );
        // Its sticky assignments and today's exposure ids are keyed by the id: never reused.
        const reused = await failure(
          admin.createExperiment(
            CreateExperimentRequest.fromPartial({ experiment: experiment('lifecycle') }),
          ),
        );
        expect(reused.code).toBe(GrpcCode.ALREADY_EXISTS);
        expect(reused.reason).toBe('ID_RETIRED');
        // An experiment that never started leaves nothing behind; its id is free again.
        const draft = await admin.createExperiment(
          CreateExperimentRequest.fromPartial({ experiment: experiment('never-started') }),
        );
        await admin.deleteExperiment(
          DeleteExperimentRequest.fromPartial({
            id: 'never-started',
            etag: draft.experiment?.etag ?? '',
          }),
        );
        await admin.createExperiment(
          CreateExperimentRequest.fromPartial({ experiment: experiment('never-started') }),
        );
        expect(
          (
            await failure(
              admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'lifecycle' })),
            )
          ).code,
        ).toBe(GrpcCode.NOT_FOUND);
      });

      it('lists experiments filtered by status, layer and surface, with tokens bound to the filters', async () => {
        const { admin, client } = service;
        for (const id of ['list-a', 'list-b', 'list-c']) {
          await admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: experiment(id, { surfaces: ['search'] }),
            }),
          );
        }
        await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'list-b' }));
        const drafts = await client.listExperiments(
          ListExperimentsRequest.fromPartial({
            surface: 'search',
            statuses: [ExperimentStatus.EXPERIMENT_STATUS_DRAFT],
            pageSize: 1,
          }),
        );
        expect(drafts.experiments.map((e) => e.id)).toEqual(['list-a']);
        const next = await client.listExperiments(
          ListExperimentsRequest.fromPartial({
            surface: 'search',
            statuses: [ExperimentStatus.EXPERIMENT_STATUS_DRAFT],
            pageSize: 1,
            pageToken: drafts.nextPageToken,
          }),
        );
        expect(next.experiments.map((e) => e.id)).toEqual(['list-c']);
        const mismatch = await failure(
          client.listExperiments(
            ListExperimentsRequest.fromPartial({
              surface: 'home',
              pageToken: drafts.nextPageToken,
            }),
          ),
        );
        expect(fields(mismatch)).toEqual(['page_token']);
        // Nor does another list take it.
        const otherList = await failure(
          client.listHoldouts(
            ListHoldoutsRequest.fromPartial({
              surface: 'search',
              statuses: [HoldoutStatus.HOLDOUT_STATUS_DRAFT],
              pageSize: 1,
              pageToken: drafts.nextPageToken,
            }),
          ),
        );
        expect(fields(otherList)).toEqual(['page_token']);
        const inLayer = await client.listExperiments(
          ListExperimentsRequest.fromPartial({ layerId: 'checkout' }),
        );
        expect(inLayer.experiments.map((e) => e.id)).toEqual(['checkout-a']);
      });

      it('refuses a status filter value that is no status, rather than answering that none is in it', async () => {
        const { client } = service;
        // A typo, or a client built against a newer contract: 9 is no status.
        const experiments = await failure(
          client.listExperiments(
            ListExperimentsRequest.fromPartial({
              statuses: [ExperimentStatus.EXPERIMENT_STATUS_RUNNING, 9 as never],
              pageSize: -1,
            }),
          ),
        );
        expect(experiments.code).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(fieldReasons(experiments).sort()).toEqual([
          ['page_size', 'OUT_OF_RANGE'],
          ['statuses[1]', 'UNKNOWN_STATUS'],
        ]);
        // -1 too, which ts-proto decodes as UNRECOGNIZED.
        const holdouts = await failure(
          client.listHoldouts(ListHoldoutsRequest.fromPartial({ statuses: [9, -1] as never })),
        );
        expect(holdouts.code).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(fields(holdouts)).toEqual(['statuses[0]', 'statuses[1]']);
        expect(holdouts.message).toContain('HOLDOUT_STATUS_RUNNING');
        // Unset (0) still means any status.
        await expect(
          client.listHoldouts(
            ListHoldoutsRequest.fromPartial({
              statuses: [HoldoutStatus.HOLDOUT_STATUS_UNSPECIFIED],
            }),
          ),
        ).resolves.toBeDefined();
      });
    });

    describe('resolve and apply', () => {
      beforeAll(async () => {
        await service.admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('feed', {
              surfaces: ['feed'],
              condition: { country: { $in: ['SE', 'NO'] } },
            }),
          }),
        );
        await service.admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'feed' }));
      });

      it('lists as unknown only the surfaces no experiment names: a surface of drafts alone is known', async () => {
        await service.admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('drafted', { surfaces: ['drafts-only'] }),
          }),
        );
        const basic = await service.client.resolve(
          resolveRequest('u-1', { surfaces: ['drafts-only', 'typo'] }),
        );
        expect(basic.assignments).toEqual([]);
        expect(basic.unknownSurfaces).toEqual(['typo']);
        const explained = await service.client.resolve(
          resolveRequest('u-1', { surfaces: ['drafts-only', 'typo'], explain: true }),
        );
        expect(explained.assignments.map((a) => [a.experimentId, a.reason])).toEqual([
          ['drafted', AssignmentReason.ASSIGNMENT_REASON_NOT_RUNNING],
        ]);
        expect(explained.unknownSurfaces).toEqual(['typo']);
      });

      it('assigns what GrowthBook hashing gives, only to targeted units, and explains the others', async () => {
        for (const unitId of ['u-1', 'u-2', 'u-3', 'u-4']) {
          const response = await service.client.resolve(
            resolveRequest(unitId, { surfaces: ['feed'], attributes: { country: 'SE' } }),
          );
          expect(response.assignments).toHaveLength(1);
          expect(response.assignments[0]).toMatchObject({
            experimentId: 'feed',
            variantKey: expectedVariant('feed', unitId),
            inExperiment: true,
            reason: AssignmentReason.ASSIGNMENT_REASON_ASSIGNED,
            surfaces: ['feed'],
          });
          expect(response.resolveToken).not.toBe('');
          expect(response.configVersion).toBeGreaterThan(0);
        }
        const outside = await service.client.resolve(
          resolveRequest('u-1', {
            surfaces: ['feed', 'nowhere', 'nowhere'],
            attributes: { country: 'US' },
            explain: true,
          }),
        );
        expect(outside.assignments.map((a) => [a.experimentId, a.reason])).toEqual([
          ['feed', AssignmentReason.ASSIGNMENT_REASON_TARGETED_OUT],
        ]);
        expect(outside.unknownSurfaces).toEqual(['nowhere']);
        const otherType = await service.client.resolve(
          resolveRequest('u-1', {
            unit: { id: 'u-1', type: 'device' },
            surfaces: ['feed'],
            explain: true,
          }),
        );
        expect(otherType.assignments[0]?.reason).toBe(
          AssignmentReason.ASSIGNMENT_REASON_UNIT_TYPE_MISMATCH,
        );
      });

      it('returns payloads as JSON text, and the layer and etags only in the FULL view', async () => {
        const payload = {
          policy: 'ranker-v2',
          weights: [1, 0.5],
          nested: { on: true, none: null },
        };
        await service.admin.createLayer(CreateLayerRequest.fromPartial({ layer: { id: 'views' } }));
        await service.admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('views', {
              surfaces: ['views', 'views-2'],
              layerId: 'views',
              layerRange: { start: 0, end: 1 },
              variants: [variant('control', 0.5), variant('treatment', 0.5, payload)],
            }),
          }),
        );
        const started = await service.admin.startExperiment(
          StartExperimentRequest.fromPartial({ id: 'views' }),
        );
        const etag = started.experiment?.etag ?? '';
        expect(etag).not.toBe('');
        const treated = ['v-1', 'v-2', 'v-3', 'v-4', 'v-5', 'v-6'].find(
          (unitId) => expectedVariant('views', unitId) === 'treatment',
        );
        const control = ['v-1', 'v-2', 'v-3', 'v-4', 'v-5', 'v-6'].find(
          (unitId) => expectedVariant('views', unitId) === 'control',
        );
        if (treated === undefined || control === undefined) throw new Error('no unit of a variant');
        const basic = {
          experimentId: 'views',
          inExperiment: true,
          reason: AssignmentReason.ASSIGNMENT_REASON_ASSIGNED,
          holdoutId: '',
          allocationSequence: 0,
          layerId: '',
          experimentEtag: '',
        };
        // One surface (the shared, pre-encoded entries) and two (rendered for the call); each
        // twice, the second from what the first left behind.
        for (const surfaces of [['views'], ['views'], ['views', 'views-2'], ['views', 'views-2']]) {
          for (const view of [
            AssignmentView.ASSIGNMENT_VIEW_UNSPECIFIED,
            AssignmentView.ASSIGNMENT_VIEW_BASIC,
            AssignmentView.ASSIGNMENT_VIEW_FULL,
          ]) {
            const full = view === AssignmentView.ASSIGNMENT_VIEW_FULL;
            const details = full ? { layerId: 'views', experimentEtag: etag } : {};
            const [inTreatment, inControl] = await Promise.all(
              [treated, control].map((unitId) =>
                service.client.resolve(resolveRequest(unitId, { surfaces, view })),
              ),
            );
            expect(inTreatment?.assignments).toEqual([
              {
                ...basic,
                ...details,
                variantKey: 'treatment',
                surfaces,
                payloadJson: JSON.stringify(payload),
              },
            ]);
            expect(JSON.parse(inTreatment?.assignments[0]?.payloadJson ?? '')).toEqual(payload);
            expect(inControl?.assignments).toEqual([
              { ...basic, ...details, variantKey: 'control', surfaces, payloadJson: '' },
            ]);
          }
        }
        // The view decides what the response shows, not what Apply logs: a BASIC token still
        // records the etag and layer, which the exposure carries.
        const resolved = await service.client.resolve(
          resolveRequest(treated, { surfaces: ['views'] }),
        );
        const log = jest.spyOn(service.service.context.exposures, 'log');
        try {
          const applied = await service.client.apply(
            ApplyRequest.fromPartial({ resolveToken: resolved.resolveToken }),
          );
          expect(applied.exposures?.loggedCount).toBe(1);
          expect(log).toHaveBeenCalledTimes(1);
          expect(log.mock.calls[0]?.[0]).toMatchObject({
            experimentId: 'views',
            variantKey: 'treatment',
            layerId: 'views',
            surfaces: ['views'],
            configEtag: etag,
          });
        } finally {
          log.mockRestore();
        }
        // A view a newer client could send: decoded as its number.
        const newer = resolveRequest(treated);
        (newer as { view: number }).view = 7;
        const unknown = await failure(service.client.resolve(newer));
        expect(unknown.code).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(fieldReasons(unknown)).toEqual([['view', 'UNKNOWN_VIEW']]);
      });

      it('rejects an empty unit, malformed surfaces and non-JSON or too deep attributes, all at once', async () => {
        let deep: Record<string, unknown> = { leaf: 1 };
        for (let i = 0; i < 20; i++) deep = { nested: deep };
        const error = await failure(
          service.client.resolve(
            resolveRequest('', {
              unit: { id: '', type: '' },
              surfaces: ['Bad Surface'],
              attributes: deep,
            }),
          ),
        );
        expect(error.code).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(fields(error)).toEqual(['attributes', 'surfaces[0]', 'unit.id', 'unit.type']);
        const notJson = await failure(
          service.client.resolve(resolveRequest('u', { attributes: { score: Number.NaN } })),
        );
        expect(fields(notJson)).toEqual(['attributes.score']);
        const long = await failure(service.client.resolve(resolveRequest('é'.repeat(200))));
        expect(fields(long)).toEqual(['unit.id']);
        // No experiment has a unit type over 128 bytes; a longer one is a mistake, not a miss.
        const longType = await failure(
          service.client.resolve(resolveRequest('u', { unit: { id: 'u', type: 't'.repeat(129) } })),
        );
        expect(fieldReasons(longType)).toEqual([['unit.type', 'TOO_LONG']]);
        const surfaces = Array.from({ length: 257 }, (_, i) => `s${i}`);
        const tooMany = await failure(service.client.resolve(resolveRequest('u', { surfaces })));
        expect(fieldReasons(tooMany)).toEqual([['surfaces', 'TOO_MANY']]);
        const most = await service.client.resolve(
          resolveRequest('u', { surfaces: surfaces.slice(1, 256).concat('s1') }),
        );
        expect(most.unknownSurfaces).toEqual(surfaces.slice(1, 256));
        // Deeper than the protobuf decoder goes: refused before the handler, still as bad input.
        let deeper: Record<string, unknown> = { leaf: 1 };
        for (let i = 0; i < 60; i++) deeper = { nested: deeper };
        const undecodable = await failure(
          service.client.resolve(resolveRequest('u', { attributes: deeper })),
        );
        expect(undecodable.code).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(undecodable.reason).toBe('UNDECODABLE_REQUEST');
        expect(fieldReasons(undecodable)).toEqual([['attributes', 'TOO_DEEP']]);
        // Also with "__proto__" among its bytes (as a value), which has it decoded again first.
        const deepAndProto = await failure(
          service.client.resolve(resolveRequest('__proto__', { attributes: deeper })),
        );
        expect(fieldReasons(deepAndProto)).toEqual([['attributes', 'TOO_DEEP']]);
        // And far deeper (600 levels, some 1,800 messages).
        let deepest: Record<string, unknown> = { leaf: 1 };
        for (let i = 0; i < 600; i++) deepest = { nested: deepest };
        const farTooDeep = await failure(
          service.client.resolve(resolveRequest('u', { attributes: deepest })),
        );
        expect(fieldReasons(farTooDeep)).toEqual([['attributes', 'TOO_DEEP']]);
        // So is a condition: each $and level is five messages deep to the decoder.
        let condition: Record<string, unknown> = { country: 'SE' };
        for (let i = 0; i < 25; i++) condition = { $and: [condition] };
        const deepCondition = await failure(
          service.admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: experiment('deep-condition', { condition }),
            }),
          ),
        );
        expect(fieldReasons(deepCondition)).toEqual([['experiment.condition', 'TOO_DEEP']]);
      });

      it('rejects attributes over 64 KiB encoded, also when made of empty lists and objects', async () => {
        for (const attributes of [
          { text: 'x'.repeat(70_000) },
          // ~4 bytes encoded per entry (the entry and its empty Struct): ~120 KB.
          { items: Array.from({ length: 30_000 }, () => ({})) },
        ]) {
          const error = await failure(service.client.resolve(resolveRequest('u', { attributes })));
          expect(error.code).toBe(GrpcCode.INVALID_ARGUMENT);
          expect(
            error instanceof InvalidArgumentError ? error.violations.map((v) => v.reason) : [],
          ).toEqual(['TOO_LARGE']);
        }
      });

      it('logs an exposure once per day per experiment and unit, by Resolve(apply) or Apply', async () => {
        const request = resolveRequest('exposed-1', {
          surfaces: ['feed'],
          attributes: { country: 'NO' },
        });
        const applied = await service.client.resolve({ ...request, apply: true });
        expect(applied.exposures).toEqual({
          loggedCount: 1,
          alreadyLoggedCount: 0,
          notInExperimentCount: 0,
          droppedCount: 0,
          notRunningCount: 0,
        });
        const resolved = await service.client.resolve(request);
        expect(resolved.exposures).toEqual({
          loggedCount: 0,
          alreadyLoggedCount: 0,
          notInExperimentCount: 0,
          droppedCount: 0,
          notRunningCount: 0,
        });
        const again = await service.client.apply(
          ApplyRequest.fromPartial({ resolveToken: resolved.resolveToken }),
        );
        expect(again.exposures).toEqual({
          loggedCount: 0,
          alreadyLoggedCount: 1,
          notInExperimentCount: 0,
          droppedCount: 0,
          notRunningCount: 0,
        });

        const fresh = await service.client.resolve(
          resolveRequest('exposed-2', { surfaces: ['feed'], attributes: { country: 'NO' } }),
        );
        const named = await service.client.apply(
          ApplyRequest.fromPartial({
            resolveToken: fresh.resolveToken,
            experimentIds: ['feed', 'not-resolved'],
            requestId: 'apply-1',
          }),
        );
        expect(named.exposures).toEqual({
          loggedCount: 1,
          alreadyLoggedCount: 0,
          notInExperimentCount: 1,
          droppedCount: 0,
          notRunningCount: 0,
        });
        const retried = await service.client.apply(
          ApplyRequest.fromPartial({
            resolveToken: fresh.resolveToken,
            experimentIds: ['feed'],
            requestId: 'apply-1',
          }),
        );
        expect(retried).toEqual(named);
        // The same request id with another resolve's token is another call; with a bad one, an
        // error, not the first call's result.
        const other = await service.client.resolve(
          resolveRequest('exposed-3', { surfaces: ['feed'], attributes: { country: 'NO' } }),
        );
        const reused = await service.client.apply(
          ApplyRequest.fromPartial({ resolveToken: other.resolveToken, requestId: 'apply-1' }),
        );
        expect(reused.exposures).toEqual({
          loggedCount: 1,
          alreadyLoggedCount: 0,
          notInExperimentCount: 0,
          droppedCount: 0,
          notRunningCount: 0,
        });
        // Ids that would run together into one key if joined with a separator they may hold.
        const joined = async (resolveId: string) =>
          service.client.resolve({
            ...resolveRequest('exposed-4', { surfaces: ['feed'], attributes: { country: 'NO' } }),
            requestId: resolveId,
          });
        const [first, second] = [await joined('r2'), await joined('r1\u0001r2')];
        const nothingShown = await service.client.apply(
          ApplyRequest.fromPartial({
            resolveToken: first.resolveToken,
            requestId: 'x\u0001r1',
            experimentIds: ['not-resolved'],
          }),
        );
        expect(nothingShown.exposures).toMatchObject({ loggedCount: 0, notInExperimentCount: 1 });
        const shown = await service.client.apply(
          ApplyRequest.fromPartial({ resolveToken: second.resolveToken, requestId: 'x' }),
        );
        expect(shown.exposures).toMatchObject({ loggedCount: 1, notInExperimentCount: 0 });
        const garbage = await failure(
          service.client.apply(
            ApplyRequest.fromPartial({ resolveToken: 'garbage', requestId: 'apply-1' }),
          ),
        );
        expect(garbage.reason).toBe('RESOLVE_TOKEN_INVALID');
      });

      it('logs nothing when storing a sticky variant fails, so the retry logs the exposure', async () => {
        const { admin, client } = service;
        await startSticky(admin, 'sticky-fails');
        const resolved = await client.resolve(
          resolveRequest('sticky-1', { surfaces: ['sticky-fails'] }),
        );
        const apply = () =>
          client.apply(ApplyRequest.fromPartial({ resolveToken: resolved.resolveToken }));
        const store = jest
          .spyOn(service.service.context.sticky, 'store')
          .mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
        try {
          expect((await failure(apply())).code).toBe(GrpcCode.UNAVAILABLE);
        } finally {
          store.mockRestore();
        }
        expect((await apply()).exposures).toMatchObject({ loggedCount: 1, alreadyLoggedCount: 0 });
      });

      it.each([
        ['UNAVAILABLE', new UnavailableError('storage is unreachable')],
        [
          'ABORTED',
          new AbortedError('the sticky assignment kept changing', {
            reason: 'STICKY_WRITE_CONFLICT',
          }),
        ],
      ])(
        'serves STICKY_UNAVAILABLE, and the rest of the response, when Resolve(apply=true) cannot store a sticky variant (%s)',
        async (code, error) => {
          const { admin, client } = service;
          const id = `unstored-${code.toLowerCase()}`;
          await startSticky(admin, id);
          await admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: experiment(`${id}-plain`, { surfaces: [id] }),
            }),
          );
          await admin.startExperiment(StartExperimentRequest.fromPartial({ id: `${id}-plain` }));
          const unitId = `${id}-1`;
          const store = jest
            .spyOn(service.service.context.sticky, 'store')
            .mockRejectedValueOnce(error);
          let degraded: ResolveResponse;
          try {
            degraded = await client.resolve(
              resolveRequest(unitId, { surfaces: [id], apply: true }),
            );
          } finally {
            store.mockRestore();
          }
          expect(degraded.assignments.map((a) => [a.experimentId, a.variantKey, a.reason])).toEqual(
            [
              [id, 'control', AssignmentReason.ASSIGNMENT_REASON_STICKY_UNAVAILABLE],
              [`${id}-plain`, expect.any(String), AssignmentReason.ASSIGNMENT_REASON_ASSIGNED],
            ],
          );
          // Only the other experiment is logged, and the token holds only it: applying the token
          // logs nothing for the sticky experiment.
          expect(degraded.exposures).toMatchObject({ loggedCount: 1, droppedCount: 0 });
          const applied = await client.apply(
            ApplyRequest.fromPartial({ resolveToken: degraded.resolveToken }),
          );
          expect(applied.exposures).toMatchObject({ loggedCount: 0, alreadyLoggedCount: 1 });
          // Once storage takes it, the unit is assigned, stored and logged as usual.
          const again = await client.resolve(
            resolveRequest(unitId, { surfaces: [id], apply: true }),
          );
          expect(again.assignments[0]).toMatchObject({
            experimentId: id,
            reason: AssignmentReason.ASSIGNMENT_REASON_ASSIGNED,
          });
          expect(again.exposures).toMatchObject({ loggedCount: 1, alreadyLoggedCount: 1 });
          const held = await client.resolve(resolveRequest(unitId, { surfaces: [id] }));
          expect(held.assignments[0]).toMatchObject({
            experimentId: id,
            variantKey: again.assignments[0]?.variantKey,
            reason: AssignmentReason.ASSIGNMENT_REASON_STICKY,
          });
        },
      );

      it('fails Resolve(apply=true) when storing a sticky variant fails otherwise than by storage (a defect is not hidden)', async () => {
        const { admin, client } = service;
        await startSticky(admin, 'unstored-defect');
        const store = jest
          .spyOn(service.service.context.sticky, 'store')
          .mockRejectedValueOnce(new TypeError('a defect'));
        try {
          const failed = await failure(
            client.resolve(
              resolveRequest('defect-1', { surfaces: ['unstored-defect'], apply: true }),
            ),
          );
          expect(failed.code).toBe(GrpcCode.INTERNAL);
        } finally {
          store.mockRestore();
        }
      });

      it('takes an Apply request_id with another token as another call, though both resolves shared a request_id', async () => {
        const { admin, client } = service;
        for (const id of ['shared-id-a', 'shared-id-b']) {
          await admin.createExperiment(
            CreateExperimentRequest.fromPartial({ experiment: experiment(id, { surfaces: [id] }) }),
          );
          await admin.startExperiment(StartExperimentRequest.fromPartial({ id }));
        }
        // The caller's view id, reused for two resolves of the unit on two surfaces.
        const resolveOn = (surface: string) =>
          client.resolve(resolveRequest('shared-1', { surfaces: [surface], requestId: 'view-1' }));
        const [onA, onB] = [await resolveOn('shared-id-a'), await resolveOn('shared-id-b')];
        expect(onA.resolveId).toBe(onB.resolveId);
        for (const resolved of [onA, onB]) {
          const applied = await client.apply(
            ApplyRequest.fromPartial({ resolveToken: resolved.resolveToken, requestId: 'apply-9' }),
          );
          expect(applied.exposures).toMatchObject({ loggedCount: 1, alreadyLoggedCount: 0 });
        }
        // Both were logged: applied again without a request_id, each is already.
        for (const resolved of [onA, onB]) {
          const again = await client.apply(
            ApplyRequest.fromPartial({ resolveToken: resolved.resolveToken }),
          );
          expect(again.exposures).toMatchObject({ loggedCount: 0, alreadyLoggedCount: 1 });
        }
      });

      it('has an Apply retry that arrives while the first call logs wait for it and get its result', async () => {
        const { admin, client } = service;
        await startSticky(admin, 'slow-apply');
        const resolved = await client.resolve(
          resolveRequest('slow-1', { surfaces: ['slow-apply'] }),
        );
        const sticky = service.service.context.sticky;
        const storeSticky = sticky.store.bind(sticky);
        let release = (): void => undefined;
        const gate = new Promise<void>((resolve) => {
          release = resolve;
        });
        const store = jest.spyOn(sticky, 'store').mockImplementation(async (...args) => {
          await gate;
          return storeSticky(...args);
        });
        try {
          const request = ApplyRequest.fromPartial({
            resolveToken: resolved.resolveToken,
            requestId: 'slow-apply-1',
          });
          const first = client.apply(request);
          await eventually(() => {
            expect(store).toHaveBeenCalledTimes(1);
          });
          const retry = client.apply(request);
          await new Promise((resolve) => setTimeout(resolve, 100));
          release();
          const [answered, retried] = await Promise.all([first, retry]);
          expect(answered.exposures).toMatchObject({ loggedCount: 1, alreadyLoggedCount: 0 });
          expect(retried).toEqual(answered);
          expect(await client.apply(request)).toEqual(answered);
          expect(store).toHaveBeenCalledTimes(1);
        } finally {
          store.mockRestore();
        }
      });

      it('has identical Applys arriving together log once and answer alike', async () => {
        const { admin, client } = service;
        await startSticky(admin, 'twin-apply');
        const resolved = await client.resolve(
          resolveRequest('twin-1', { surfaces: ['twin-apply'] }),
        );
        // The handlers called directly: three calls start in one tick, as a burst of retries
        // read from one socket read does.
        const { apply } = resolveHandlers(service.service.context);
        const request = ApplyRequest.fromPartial({
          resolveToken: resolved.resolveToken,
          requestId: 'twin-apply-1',
        });
        const ctx = { signal: new AbortController().signal } as CallContext;
        const log = jest.spyOn(service.service.context.exposures, 'log');
        try {
          const [first, ...others] = await Promise.all([
            apply(request, ctx),
            apply(request, ctx),
            apply(request, ctx),
          ]);
          expect(first.exposures).toMatchObject({ loggedCount: 1, alreadyLoggedCount: 0 });
          expect(others).toEqual([first, first]);
          expect(log).toHaveBeenCalledTimes(1);
        } finally {
          log.mockRestore();
        }
      });

      it("names the variant stored first in a sticky unit's exposure: another resolve's, when it was applied first", async () => {
        const { admin, client } = service;
        await startSticky(admin, 'sticky-race');
        const resolved = await client.resolve(
          resolveRequest('race-1', { surfaces: ['sticky-race'] }),
        );
        const served = resolved.assignments[0];
        expect(served).toMatchObject({ reason: AssignmentReason.ASSIGNMENT_REASON_ASSIGNED });
        const other = served?.variantKey === 'control' ? 'treatment' : 'control';
        // Another replica's resolve of the same unit, made when the weights favoured the other
        // variant, was applied first: its variant is the one stored.
        const otherReplica = await StickyAssignments.open(service.runtime.store, 10);
        await otherReplica.store(
          'sticky-race',
          'user',
          'race-1',
          { variantKey: other, allocationSequence: 0 },
          3_600_000,
          Date.now(),
        );
        const log = jest.spyOn(service.service.context.exposures, 'log');
        try {
          const applied = await client.apply(
            ApplyRequest.fromPartial({ resolveToken: resolved.resolveToken }),
          );
          expect(applied.exposures).toMatchObject({ loggedCount: 1 });
          expect(log).toHaveBeenCalledTimes(1);
          expect(log.mock.calls[0]?.[0]).toMatchObject({
            experimentId: 'sticky-race',
            variantKey: other,
            reason: AssignmentReason.ASSIGNMENT_REASON_STICKY,
          });
        } finally {
          log.mockRestore();
        }
        const again = await client.resolve(resolveRequest('race-1', { surfaces: ['sticky-race'] }));
        expect(again.assignments[0]).toMatchObject({
          variantKey: other,
          reason: AssignmentReason.ASSIGNMENT_REASON_STICKY,
        });
      });

      it('frees the sticky assignments of a deleted experiment, also one an Apply stores after the deletion', async () => {
        const { admin, client } = service;
        await startSticky(admin, 'sticky-gone');
        const early = await client.resolve(resolveRequest('gone-1', { surfaces: ['sticky-gone'] }));
        await client.apply(ApplyRequest.fromPartial({ resolveToken: early.resolveToken }));
        const late = await client.resolve(resolveRequest('gone-2', { surfaces: ['sticky-gone'] }));
        await admin.stopExperiment(StopExperimentRequest.fromPartial({ id: 'sticky-gone' }));
        const sticky = service.service.context.sticky;
        const storeSticky = sticky.store.bind(sticky);
        let release = (): void => undefined;
        const gate = new Promise<void>((resolve) => (release = resolve));
        const store = jest.spyOn(sticky, 'store').mockImplementation(async (...args) => {
          await gate; // past its checks, its write on its way (a slow storage round trip)
          return storeSticky(...args);
        });
        const forget = jest.spyOn(sticky, 'forget');
        try {
          // Shown before the stop: logged, and its sticky variant stored, after the deletion.
          const applying = client.apply(
            ApplyRequest.fromPartial({
              resolveToken: late.resolveToken,
              exposureTime: late.resolveTime,
            }),
          );
          await eventually(() => {
            expect(store).toHaveBeenCalledTimes(1);
          });
          const current = await client.getExperiment({ id: 'sticky-gone' });
          await admin.deleteExperiment(
            DeleteExperimentRequest.fromPartial({
              id: 'sticky-gone',
              etag: current.experiment?.etag ?? '',
            }),
          );
          await eventually(() => {
            expect(forget).toHaveBeenCalledTimes(1);
          });
          expect(await forget.mock.results[0]?.value).toBe(1);
          release();
          await applying;
        } finally {
          store.mockRestore();
          forget.mockRestore();
        }
        const left = async (): Promise<string[]> => {
          const ids: string[] = [];
          for await (const item of sticky['collection'].scan({ experimentId: 'sticky-gone' })) {
            ids.push(item.doc.unitId);
          }
          return ids;
        };
        expect(await left()).toEqual(['gone-2']);
        // Not yet looked for again within the grace, then freed, and the release with it.
        expect(await sticky.sweepReleased(Date.now())).toBe(0);
        expect(await sticky.sweepReleased(Date.now() + RELEASE_GRACE_MS)).toBe(1);
        expect(await left()).toEqual([]);
        expect(await sticky.sweepReleased(Date.now() + RELEASE_GRACE_MS)).toBe(0);
      });

      it("times a sticky variant by the service's clock, not by the exposure time the client sends", async () => {
        const { admin, client } = service;
        await admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('sticky-clock', {
              surfaces: ['sticky-clock'],
              sticky: true,
              stickyTtl: { seconds: 30, nanos: 0 },
            }),
          }),
        );
        await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'sticky-clock' }));
        // (a) An exposure time 50 s ahead does not make a variant stored 30 s ago look expired.
        const ahead = await client.resolve(
          resolveRequest('clock-1', { surfaces: ['sticky-clock'] }),
        );
        const other = ahead.assignments[0]?.variantKey === 'control' ? 'treatment' : 'control';
        const otherReplica = await StickyAssignments.open(service.runtime.store, 10);
        await otherReplica.store(
          'sticky-clock',
          'user',
          'clock-1',
          { variantKey: other, allocationSequence: 0 },
          30_000,
          Date.now(),
        );
        await client.apply(
          ApplyRequest.fromPartial({
            resolveToken: ahead.resolveToken,
            exposureTime: new Date(Date.now() + 50_000),
          }),
        );
        const fresh = await StickyAssignments.open(service.runtime.store, 10);
        const stored = await fresh.lookup('user', 'clock-1', ['sticky-clock'], Date.now());
        expect(stored.found.get('sticky-clock')?.variantKey).toBe(other);
        // (b) Applied with an exposure time 40 s back, past the TTL: stored for 30 s from now.
        const late = await client.resolve(
          resolveRequest('clock-2', { surfaces: ['sticky-clock'] }),
        );
        await client.apply(
          ApplyRequest.fromPartial({
            resolveToken: late.resolveToken,
            exposureTime: new Date(Date.now() - 40_000),
          }),
        );
        const again = await client.resolve(
          resolveRequest('clock-2', { surfaces: ['sticky-clock'] }),
        );
        expect(again.assignments[0]).toMatchObject({
          variantKey: late.assignments[0]?.variantKey,
          reason: AssignmentReason.ASSIGNMENT_REASON_STICKY,
        });
      });

      it('starts a new sticky period when a STICKY assignment is shown after its stored variant expired', async () => {
        const { admin, client } = service;
        await startSticky(admin, 'sticky-lapse');
        const surfaces = ['sticky-lapse'];
        // Stored under earlier weights (another variant than the hash gives now), expiring soon.
        const held =
          expectedVariant('sticky-lapse', 'lapse-1') === 'control' ? 'treatment' : 'control';
        const otherReplica = await StickyAssignments.open(service.runtime.store, 10);
        await otherReplica.store(
          'sticky-lapse',
          'user',
          'lapse-1',
          { variantKey: held, allocationSequence: 0 },
          3_000,
          Date.now(),
        );
        const resolved = await client.resolve(resolveRequest('lapse-1', { surfaces }));
        expect(resolved.assignments[0]).toMatchObject({
          variantKey: held,
          reason: AssignmentReason.ASSIGNMENT_REASON_STICKY,
        });
        await new Promise((resolve) => setTimeout(resolve, 3_100));
        // Shown after the stored variant expired: the first exposure of a new sticky period.
        const applied = await client.apply(
          ApplyRequest.fromPartial({ resolveToken: resolved.resolveToken }),
        );
        expect(applied.exposures).toMatchObject({ loggedCount: 1 });
        const again = await client.resolve(resolveRequest('lapse-1', { surfaces }));
        expect(again.assignments[0]).toMatchObject({
          variantKey: held,
          reason: AssignmentReason.ASSIGNMENT_REASON_STICKY,
        });
      });

      it('serves and logs the stored variant when a Resolve with apply finds another stored since its lookup', async () => {
        const { client } = service;
        const first = await client.resolve(resolveRequest('race-2', { surfaces: ['sticky-race'] }));
        const served = first.assignments[0];
        expect(served).toMatchObject({ reason: AssignmentReason.ASSIGNMENT_REASON_ASSIGNED });
        const other = served?.variantKey === 'control' ? 'treatment' : 'control';
        // Another replica stores its variant after this resolve looked (and found nothing).
        const otherReplica = await StickyAssignments.open(service.runtime.store, 10);
        await otherReplica.store(
          'sticky-race',
          'user',
          'race-2',
          { variantKey: other, allocationSequence: 0 },
          3_600_000,
          Date.now(),
        );
        const lookup = jest
          .spyOn(service.service.context.sticky, 'lookup')
          .mockResolvedValueOnce({ found: new Map(), unavailable: [] });
        try {
          // In the FULL view, which the response resolved again keeps.
          const applied = await client.resolve(
            resolveRequest('race-2', {
              surfaces: ['sticky-race'],
              apply: true,
              view: AssignmentView.ASSIGNMENT_VIEW_FULL,
            }),
          );
          expect(applied.exposures).toMatchObject({ loggedCount: 1 });
          const stored = await service.admin.getExperiment(
            GetExperimentRequest.fromPartial({ id: 'sticky-race' }),
          );
          expect(applied.assignments[0]).toMatchObject({
            variantKey: other,
            reason: AssignmentReason.ASSIGNMENT_REASON_STICKY,
            experimentEtag: stored.experiment?.etag,
            payloadJson: other === 'treatment' ? '{"policy":"new"}' : '',
          });
          expect(applied.assignments[0]?.experimentEtag).not.toBe('');
        } finally {
          lookup.mockRestore();
        }
      });

      it('serves the rest of a resolve when the sticky lookup fails, and looks up only serving sticky experiments', async () => {
        const { admin, client } = service;
        const surfaces = ['sticky-down'];
        for (const [id, sticky] of [
          ['sticky-down-a', true],
          ['plain-down-b', false],
          ['draft-sticky-c', true],
        ] as const) {
          await admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: experiment(id, { surfaces, sticky }),
            }),
          );
        }
        const lookup = jest.spyOn(service.service.context.sticky, 'lookup');
        // The storage read behind the lookup's cache, made to fail once.
        const read = jest.spyOn(service.service.context.sticky['collection'], 'getMany');
        try {
          // Only the DRAFT one is sticky: nothing to look up.
          await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'plain-down-b' }));
          await client.resolve(resolveRequest('down-1', { surfaces }));
          expect(lookup).not.toHaveBeenCalled();

          await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'sticky-down-a' }));
          read.mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
          const resolved = await client.resolve(
            resolveRequest('down-1', { surfaces, apply: true }),
          );
          expect(lookup).toHaveBeenCalledWith(
            'user',
            'down-1',
            ['sticky-down-a'],
            expect.any(Number),
          );
          expect(
            resolved.assignments.map((a) => [
              a.experimentId,
              a.reason,
              a.variantKey,
              a.inExperiment,
            ]),
          ).toEqual([
            [
              'plain-down-b',
              AssignmentReason.ASSIGNMENT_REASON_ASSIGNED,
              expectedVariant('plain-down-b', 'down-1'),
              true,
            ],
            [
              'sticky-down-a',
              AssignmentReason.ASSIGNMENT_REASON_STICKY_UNAVAILABLE,
              'control',
              false,
            ],
          ]);
          // Nothing was stored for the sticky experiment: once storage answers, the unit is assigned.
          const again = await client.resolve(resolveRequest('down-1', { surfaces }));
          expect(again.assignments.find((a) => a.experimentId === 'sticky-down-a')).toMatchObject({
            reason: AssignmentReason.ASSIGNMENT_REASON_ASSIGNED,
            inExperiment: true,
          });
        } finally {
          lookup.mockRestore();
          read.mockRestore();
        }
      });

      it('logs no exposure shown after the experiment stopped, and one shown before', async () => {
        const { admin, client } = service;
        await admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('stops', { surfaces: ['stops'] }),
          }),
        );
        await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'stops' }));
        const resolved = await client.resolve(resolveRequest('late-1', { surfaces: ['stops'] }));
        expect(resolved.assignments.map((a) => a.inExperiment)).toEqual([true]);
        await admin.stopExperiment(StopExperimentRequest.fromPartial({ id: 'stops' }));

        const late = await client.apply(
          ApplyRequest.fromPartial({ resolveToken: resolved.resolveToken }),
        );
        expect(late.exposures).toMatchObject({ loggedCount: 0, notRunningCount: 1 });
        const shownBefore = await client.apply(
          ApplyRequest.fromPartial({
            resolveToken: resolved.resolveToken,
            exposureTime: resolved.resolveTime,
          }),
        );
        expect(shownBefore.exposures).toMatchObject({ loggedCount: 1, notRunningCount: 0 });
      });

      it('refuses a missing, forged or tampered token and an exposure time in the future', async () => {
        const resolved = await service.client.resolve(
          resolveRequest('u-9', { surfaces: ['feed'], attributes: { country: 'SE' } }),
        );
        const missing = await failure(service.client.apply(ApplyRequest.fromPartial({})));
        expect(fields(missing)).toEqual(['resolve_token']);
        const [body, mac] = resolved.resolveToken.split('.');
        const tampered = `${Buffer.from(
          Buffer.from(body ?? '', 'base64url')
            .toString()
            .replace('u-9', 'u-8'),
        ).toString('base64url')}.${mac ?? ''}`;
        const forged = await failure(
          service.client.apply(ApplyRequest.fromPartial({ resolveToken: tampered })),
        );
        expect(forged.code).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(forged.reason).toBe('RESOLVE_TOKEN_INVALID');
        const future = await failure(
          service.client.apply(
            ApplyRequest.fromPartial({
              resolveToken: resolved.resolveToken,
              exposureTime: new Date(Date.now() + 3_600_000),
            }),
          ),
        );
        expect(fields(future)).toEqual(['exposure_time']);
        // Every problem at once: the request's fields and the token.
        const everything = await failure(
          service.client.apply(
            ApplyRequest.fromPartial({
              resolveToken: tampered,
              exposureTime: new Date(Date.now() + 3_600_000),
              requestId: 'r'.repeat(129),
            }),
          ),
        );
        expect(everything.code).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(fields(everything)).toEqual(['exposure_time', 'request_id', 'resolve_token']);
        // With the token's own reason, which says whether to resolve again.
        expect(everything.reason).toBe('RESOLVE_TOKEN_INVALID');
        // Seconds past what a Date holds (a Timestamp's own limit is the year 9999): only a
        // hand-made request sends them, so it is sent as bytes.
        const tooLate = new BinaryWriter();
        tooLate.uint32(26).fork().uint32(8).int64(10_000_000_000_000).join();
        const bytes = Buffer.concat([
          ApplyRequest.encode(
            ApplyRequest.fromPartial({ resolveToken: resolved.resolveToken }),
          ).finish(),
          tooLate.finish(),
        ]);
        const outOfRange = await rawCallError(
          service.address,
          AssignmentServiceService.apply.path,
          bytes,
        );
        expect(decodeStatus(outOfRange).violations.map((v) => v.field)).toEqual(['exposure_time']);
        const beforeYearOne = await failure(
          service.client.apply(
            ApplyRequest.fromPartial({
              resolveToken: resolved.resolveToken,
              exposureTime: new Date('0000-06-01T00:00:00Z'),
            }),
          ),
        );
        expect(fields(beforeYearOne)).toEqual(['exposure_time']);
        // Nanos past a second would move the time by seconds once decoded into a Date.
        const withBadNanos = (trailing: number[] = []) =>
          rawCallError(
            service.address,
            AssignmentServiceService.apply.path,
            withTimestampNanos(
              'tandem.assignment.v1.ApplyRequest',
              ApplyRequest.encode(
                ApplyRequest.fromPartial({
                  resolveToken: resolved.resolveToken,
                  exposureTime: resolved.resolveTime,
                }),
              ).finish(),
              'exposure_time',
              1_500_000_000,
              trailing,
            ),
          );
        const badNanos = await withBadNanos();
        expect(badNanos.code).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(decodeStatus(badNanos).violations.map((v) => [v.field, v.reason])).toEqual([
          ['exposure_time', 'INVALID_TIMESTAMP'],
        ]);
        // With a stray end-group tag after it, which the generated decoder takes (Timestamp
        // and all) but which is not well-formed protobuf: refused rather than decoded unchecked.
        const unchecked = await withBadNanos([0x0c]);
        expect(unchecked.code).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(decodeStatus(unchecked).errorInfo?.reason).toBe('UNDECODABLE_REQUEST');
      });
    });

    describe('overrides', () => {
      const OVERRIDE = AssignmentReason.ASSIGNMENT_REASON_OVERRIDE;

      it('serves a tester the listed variant before and while the experiment runs, and logs or stores nothing for it', async () => {
        const { admin, client } = service;
        const created = await admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('forced', {
              surfaces: ['forced'],
              sticky: true,
              // Nobody is in the experiment but through an override.
              coverage: 0,
              overrides: [{ unitId: 'qa-anna', variantKey: 'treatment' }],
            }),
          }),
        );
        expect(created.experiment?.overrides).toEqual([
          { unitId: 'qa-anna', variantKey: 'treatment' },
        ]);
        const forcedAssignment = {
          experimentId: 'forced',
          variantKey: 'treatment',
          payloadJson: '{"policy":"new"}',
          inExperiment: false,
          reason: OVERRIDE,
        };
        // A draft serves the tester already, and nobody else.
        const draft = await client.resolve(resolveRequest('qa-anna', { surfaces: ['forced'] }));
        expect(draft.assignments).toEqual([expect.objectContaining(forcedAssignment)]);
        const someone = await client.resolve(resolveRequest('someone', { surfaces: ['forced'] }));
        expect(someone.assignments).toEqual([]);

        await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'forced' }));
        const applied = await client.resolve(
          resolveRequest('qa-anna', { surfaces: ['forced'], apply: true }),
        );
        expect(applied.assignments).toEqual([expect.objectContaining(forcedAssignment)]);
        expect(applied.exposures).toMatchObject({ loggedCount: 0, alreadyLoggedCount: 0 });
        const shown = await client.apply(
          ApplyRequest.fromPartial({
            resolveToken: applied.resolveToken,
            experimentIds: ['forced'],
          }),
        );
        expect(shown.exposures).toMatchObject({ loggedCount: 0, notInExperimentCount: 1 });
        const held = await service.service.context.sticky.lookup(
          'user',
          'qa-anna',
          ['forced'],
          Date.now(),
          { bounded: false },
        );
        expect(held).toEqual({ found: new Map(), unavailable: [] });
        // Another unit type with the same id is not the tester.
        const device = await client.resolve(
          resolveRequest('qa-anna', {
            unit: { id: 'qa-anna', type: 'device' },
            surfaces: ['forced'],
            explain: true,
          }),
        );
        expect(device.assignments[0]?.reason).toBe(
          AssignmentReason.ASSIGNMENT_REASON_UNIT_TYPE_MISMATCH,
        );
      });

      it('change while the experiment runs, and not once it is concluded', async () => {
        const { admin, client } = service;
        await admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('forced-later', { surfaces: ['forced-later'] }),
          }),
        );
        const started = await admin.startExperiment(
          StartExperimentRequest.fromPartial({ id: 'forced-later' }),
        );
        const hashed = expectedVariant('forced-later', 'qa-ben');
        const other = hashed === 'control' ? 'treatment' : 'control';
        const resolveBen = async () =>
          (await client.resolve(resolveRequest('qa-ben', { surfaces: ['forced-later'] })))
            .assignments[0];
        expect(await resolveBen()).toMatchObject({
          variantKey: hashed,
          reason: AssignmentReason.ASSIGNMENT_REASON_ASSIGNED,
        });
        const update = (etag: string, overrides: { unitId: string; variantKey: string }[]) =>
          admin.updateExperiment(
            UpdateExperimentRequest.fromPartial({
              experiment: { id: 'forced-later', etag, overrides },
              updateMask: ['overrides'],
            }),
          );
        const forced = await update(started.experiment?.etag ?? '', [
          { unitId: 'qa-ben', variantKey: other },
        ]);
        expect(await resolveBen()).toMatchObject({ variantKey: other, reason: OVERRIDE });
        // The same list again changes nothing: same etag.
        const same = await update(forced.experiment?.etag ?? '', [
          { unitId: 'qa-ben', variantKey: other },
        ]);
        expect(same.experiment?.etag).toBe(forced.experiment?.etag);
        const cleared = await update(forced.experiment?.etag ?? '', []);
        expect(cleared.experiment?.overrides).toEqual([]);
        expect(await resolveBen()).toMatchObject({
          variantKey: hashed,
          reason: AssignmentReason.ASSIGNMENT_REASON_ASSIGNED,
        });
        const concluded = await admin.concludeExperiment(
          ConcludeExperimentRequest.fromPartial({ id: 'forced-later' }),
        );
        const refused = await failure(
          update(concluded.experiment?.etag ?? '', [{ unitId: 'qa-ben', variantKey: other }]),
        );
        expect(refused).toBeInstanceOf(FailedPreconditionError);
        expect(preconditions(refused)).toEqual(['IMMUTABLE_WHEN_CONCLUDED']);
      });

      it("log no exposure of the holdouts covering the tester's experiment: it is no member to analyse", async () => {
        const { admin, client } = service;
        await admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('forced-held', {
              surfaces: ['forced-held'],
              overrides: [{ unitId: 'qa-held', variantKey: 'treatment' }],
            }),
          }),
        );
        await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'forced-held' }));
        await admin.createHoldout(
          CreateHoldoutRequest.fromPartial({
            holdout: holdout('over-forced', {
              surfaces: ['forced-held'],
              fraction: 0.5,
              status: HoldoutStatus.HOLDOUT_STATUS_RUNNING,
            }),
          }),
        );
        const tester = await client.resolve(
          resolveRequest('qa-held', { surfaces: ['forced-held'], apply: true }),
        );
        expect(tester.assignments).toEqual([
          expect.objectContaining({ variantKey: 'treatment', reason: OVERRIDE }),
        ]);
        // Its membership is still answered; it is not logged.
        expect(tester.holdouts.map((h) => h.holdoutId)).toEqual(['over-forced']);
        expect(tester.exposures).toMatchObject({ loggedCount: 0, alreadyLoggedCount: 0 });
        const someone = await client.resolve(
          resolveRequest('not-a-tester', { surfaces: ['forced-held'], apply: true }),
        );
        const inExperiment = someone.assignments.filter((a) => a.inExperiment).length;
        expect(someone.exposures?.loggedCount).toBe(inExperiment + 1);
      });

      it('are validated: a unit once, at most 256 bytes, into a variant of the experiment', async () => {
        const error = await failure(
          service.admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: experiment('bad-forced', {
                overrides: [
                  { unitId: 'qa-anna', variantKey: 'bold' },
                  { unitId: 'qa-anna', variantKey: 'control' },
                  { unitId: 'x'.repeat(257), variantKey: 'control' },
                  { unitId: '', variantKey: 'control' },
                ],
              }),
            }),
          ),
        );
        expect(fieldReasons(error).sort()).toEqual([
          ['experiment.overrides[0].variant_key', 'UNKNOWN_VARIANT'],
          ['experiment.overrides[1].unit_id', 'DUPLICATE_UNIT'],
          ['experiment.overrides[2].unit_id', 'TOO_LONG'],
          ['experiment.overrides[3].unit_id', 'REQUIRED'],
        ]);
      });

      it('force a unit into one experiment of a layer: a second one listing it is refused', async () => {
        const { admin, client } = service;
        await admin.createLayer(CreateLayerRequest.fromPartial({ layer: { id: 'forced-layer' } }));
        const inLayer = (id: string, start: number) =>
          experiment(id, {
            surfaces: ['forced-layer'],
            layerId: 'forced-layer',
            layerRange: { start, end: start + 0.5 },
            overrides: [{ unitId: 'qa-layered', variantKey: 'treatment' }],
          });
        await admin.createExperiment(
          CreateExperimentRequest.fromPartial({ experiment: inLayer('forced-left', 0) }),
        );
        await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'forced-left' }));
        const error = await failure(
          admin.createExperiment(
            CreateExperimentRequest.fromPartial({ experiment: inLayer('forced-right', 0.5) }),
          ),
        );
        expect(error.code).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(fieldReasons(error)).toEqual([
          ['experiment.overrides[0].unit_id', 'OVERRIDDEN_IN_LAYER'],
        ]);
        const resolved = await client.resolve(
          resolveRequest('qa-layered', { surfaces: ['forced-layer'] }),
        );
        expect(resolved.assignments.map((a) => [a.experimentId, a.reason])).toEqual([
          ['forced-left', AssignmentReason.ASSIGNMENT_REASON_OVERRIDE],
        ]);
      });
    });

    it('keep a unit forced twice in a layer by an earlier version updatable, and refuse one added', async () => {
      const { admin } = service;
      await admin.createLayer(CreateLayerRequest.fromPartial({ layer: { id: 'forced-twice' } }));
      const inLayer = (id: string, start: number) =>
        experiment(id, {
          surfaces: ['forced-twice'],
          layerId: 'forced-twice',
          layerRange: { start, end: start + 0.5 },
          overrides: [{ unitId: 'qa-twice', variantKey: 'treatment' }],
        });
      await admin.createExperiment(
        CreateExperimentRequest.fromPartial({ experiment: inLayer('twice-left', 0) }),
      );
      await admin.createExperiment(
        CreateExperimentRequest.fromPartial({
          experiment: { ...inLayer('twice-right', 0.5), overrides: [] },
        }),
      );
      // What an earlier version let store: the same tester in the layer's other experiment.
      const store = service.service.context.store;
      const right = await store.experiments.get('twice-right');
      if (right === undefined) throw new Error('not stored');
      const legacy = await store.experiments.replace(
        { ...right.doc, overrides: [{ unitId: 'qa-twice', variantKey: 'control' }] },
        right.version,
      );
      await store.bumpVersion();
      await service.service.context.configuration.refresh();
      // An update of anything else passes, on either side of the collision.
      const described = await admin.updateExperiment(
        UpdateExperimentRequest.fromPartial({
          experiment: { id: 'twice-right', description: 'touched', etag: String(legacy.version) },
          updateMask: ['description'],
        }),
      );
      const { experiment: left } = await admin.getExperiment({ id: 'twice-left' });
      await admin.updateExperiment(
        UpdateExperimentRequest.fromPartial({
          experiment: {
            id: 'twice-left',
            overrides: [
              { unitId: 'qa-twice', variantKey: 'control' },
              { unitId: 'qa-other', variantKey: 'treatment' },
            ],
            etag: left?.etag ?? '',
          },
          updateMask: ['overrides'],
        }),
      );
      // A unit added that the other experiment forces is refused, and only that one.
      const added = await failure(
        admin.updateExperiment(
          UpdateExperimentRequest.fromPartial({
            experiment: {
              id: 'twice-right',
              overrides: [
                { unitId: 'qa-twice', variantKey: 'control' },
                { unitId: 'qa-other', variantKey: 'control' },
              ],
              etag: described.experiment?.etag ?? '',
            },
            updateMask: ['overrides'],
          }),
        ),
      );
      expect(added.code).toBe(GrpcCode.INVALID_ARGUMENT);
      expect(fieldReasons(added)).toEqual([
        ['experiment.overrides[1].unit_id', 'OVERRIDDEN_IN_LAYER'],
      ]);
    });
    describe('holdouts', () => {
      it('keeps the seed stored by an earlier version (the bare id), and the units it held out', async () => {
        const { admin, client } = service;
        await admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('kept-seed', { surfaces: ['kept-seed'] }),
          }),
        );
        await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'kept-seed' }));
        await admin.createHoldout(
          CreateHoldoutRequest.fromPartial({
            holdout: holdout('kept-seed', {
              surfaces: ['kept-seed'],
              status: HoldoutStatus.HOLDOUT_STATUS_RUNNING,
            }),
          }),
        );
        // What an earlier version stored for a holdout created without a seed.
        const store = service.service.context.store;
        const stored = await store.holdouts.get('kept-seed');
        await store.holdouts.replace({ ...stored!.doc, seed: 'kept-seed' }, stored?.version ?? 0);
        await store.bumpVersion();
        await service.service.context.configuration.refresh();
        const updated = await admin.updateHoldout(
          UpdateHoldoutRequest.fromPartial({
            holdout: holdout('kept-seed', { description: 'touched', etag: '2' }),
            updateMask: ['description'],
          }),
        );
        expect(updated.holdout?.seed).toBe('kept-seed');
        // A declarative client applying its spec (no seed) whole keeps it as well.
        const whole = await admin.updateHoldout(
          UpdateHoldoutRequest.fromPartial({
            holdout: holdout('kept-seed', {
              surfaces: ['kept-seed'],
              status: HoldoutStatus.HOLDOUT_STATUS_RUNNING,
              description: 'applied',
              etag: updated.holdout?.etag ?? '',
            }),
            updateMask: ['*'],
          }),
        );
        expect(whole.holdout?.seed).toBe('kept-seed');
        for (let i = 0; i < 10; i++) {
          const unitId = `kept-${i}`;
          const resolved = await client.resolve(
            resolveRequest(unitId, { surfaces: ['kept-seed'] }),
          );
          expect(resolved.holdouts.map((h) => h.heldOut)).toEqual([
            (hash('kept-seed', unitId, 2) ?? 1) < 0.5,
          ]);
        }
      });

      it('refuses a holdout and an experiment hashing units with the same seed', async () => {
        const { admin } = service;
        await admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('seeded-exp', { surfaces: ['seeded'] }),
          }),
        );
        // The experiment's seed is its id: a holdout seeded with it would hold out its control.
        const holdoutRefused = await failure(
          admin.createHoldout(
            CreateHoldoutRequest.fromPartial({
              holdout: holdout('seeded-holdout', { surfaces: ['seeded'], seed: 'seeded-exp' }),
            }),
          ),
        );
        expect(fieldReasons(holdoutRefused)).toEqual([['holdout.seed', 'SEED_IN_USE']]);
        await admin.createHoldout(
          CreateHoldoutRequest.fromPartial({
            holdout: holdout('seeded-holdout', { surfaces: ['seeded'], seed: 'a-salt' }),
          }),
        );
        const experimentRefused = await failure(
          admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: experiment('seeded-too', { surfaces: ['seeded'], seed: 'a-salt' }),
            }),
          ),
        );
        expect(fieldReasons(experimentRefused)).toEqual([['experiment.seed', 'SEED_IN_USE']]);
        // Nor by an update; two experiments may share a seed (a rerun keeping its split).
        const { experiment: stored } = await admin.getExperiment({ id: 'seeded-exp' });
        const reseed = (seed: string) =>
          admin.updateExperiment(
            UpdateExperimentRequest.fromPartial({
              experiment: { id: 'seeded-exp', seed, etag: stored?.etag ?? '' },
              updateMask: ['seed'],
            }),
          );
        expect(fieldReasons(await failure(reseed('a-salt')))).toEqual([
          ['experiment.seed', 'SEED_IN_USE'],
        ]);
        await admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('seeded-rerun', { surfaces: ['seeded'], seed: 'seeded-exp' }),
          }),
        );
      });

      it("refuses a V1 seed that is how a layer hashes units, as an experiment's or a holdout's", async () => {
        const { admin } = service;
        // With V1, `hash(seed, unit)` is FNV-1a of unit + seed, mod 1000: a layer's point.
        const layerSeeded = (version: HashVersion) =>
          experiment('layer-seeded', {
            surfaces: ['layer-seeded'],
            seed: '__checkout',
            hashVersion: version,
          });
        const refused = await failure(
          admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: layerSeeded(HashVersion.HASH_VERSION_V1),
            }),
          ),
        );
        expect(refused.code).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(fieldReasons(refused)).toEqual([['experiment.seed', 'RESERVED_SEED']]);
        const holdoutRefused = await failure(
          admin.createHoldout(
            CreateHoldoutRequest.fromPartial({
              holdout: holdout('layer-seeded', {
                surfaces: ['layer-seeded'],
                seed: '__checkout',
                hashVersion: HashVersion.HASH_VERSION_V1,
              }),
            }),
          ),
        );
        expect(fieldReasons(holdoutRefused)).toEqual([['holdout.seed', 'RESERVED_SEED']]);
        // V2 hashes seed + unit twice over: no layer hashes so.
        const created = await admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: layerSeeded(HashVersion.HASH_VERSION_V2),
          }),
        );
        // Nor can the stored seed be given hash version V1 later.
        const toV1 = await failure(
          admin.updateExperiment(
            UpdateExperimentRequest.fromPartial({
              experiment: {
                id: 'layer-seeded',
                hashVersion: HashVersion.HASH_VERSION_V1,
                etag: created.experiment?.etag ?? '',
              },
              updateMask: ['hash_version'],
            }),
          ),
        );
        expect(fieldReasons(toV1)).toEqual([['experiment.seed', 'RESERVED_SEED']]);
      });

      it('logs no holdout exposure shown after the holdout stopped', async () => {
        const { admin, client } = service;
        await admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('under-ending', { surfaces: ['ending'] }),
          }),
        );
        await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'under-ending' }));
        await admin.createHoldout(
          CreateHoldoutRequest.fromPartial({
            holdout: holdout('ending', {
              surfaces: ['ending'],
              status: HoldoutStatus.HOLDOUT_STATUS_RUNNING,
            }),
          }),
        );
        // A unit in the general population: in the experiment and a member of the holdout.
        const unitId = ['e-1', 'e-2', 'e-3', 'e-4', 'e-5', 'e-6'].find(
          (u) => (hash('holdout:ending', u, 2) ?? 0) >= 0.5,
        );
        const resolved = await client.resolve(
          resolveRequest(unitId ?? '', { surfaces: ['ending'] }),
        );
        expect(resolved.holdouts.map((h) => [h.holdoutId, h.heldOut])).toEqual([['ending', false]]);
        await admin.updateHoldout(
          UpdateHoldoutRequest.fromPartial({
            holdout: holdout('ending', { status: HoldoutStatus.HOLDOUT_STATUS_STOPPED, etag: '1' }),
            updateMask: ['status'],
          }),
        );
        const applied = await client.apply(
          ApplyRequest.fromPartial({ resolveToken: resolved.resolveToken }),
        );
        expect(applied.exposures).toMatchObject({ loggedCount: 1, notRunningCount: 1 });
      });

      it('keeps updating a holdout and an experiment stored with a seed over 256 bytes', async () => {
        const { admin, client } = service;
        await admin.createHoldout(
          CreateHoldoutRequest.fromPartial({
            holdout: holdout('long-seeded', { surfaces: ['home'] }),
          }),
        );
        await admin.createExperiment(
          CreateExperimentRequest.fromPartial({ experiment: experiment('long-seeded') }),
        );
        // As stored before seeds had a limit; a seed cannot change once it served.
        const store = service.service.context.store;
        const seed = 's'.repeat(300);
        const storedHoldout = await store.holdouts.get('long-seeded');
        const storedExperiment = await store.experiments.get('long-seeded');
        if (storedHoldout === undefined || storedExperiment === undefined) {
          throw new Error('not stored');
        }
        const legacyHoldout = await store.holdouts.replace(
          { ...storedHoldout.doc, seed },
          storedHoldout.version,
        );
        await store.experiments.replace(
          { ...storedExperiment.doc, seed },
          storedExperiment.version,
        );
        await store.bumpVersion();
        let etag = String(legacyHoldout.version);
        for (const status of [
          HoldoutStatus.HOLDOUT_STATUS_RUNNING,
          HoldoutStatus.HOLDOUT_STATUS_STOPPED,
        ]) {
          const updated = await admin.updateHoldout(
            UpdateHoldoutRequest.fromPartial({
              holdout: holdout('long-seeded', { status, etag }),
              updateMask: ['status'],
            }),
          );
          expect(updated.holdout).toMatchObject({ status, seed });
          etag = updated.holdout?.etag ?? '';
        }
        const started = await admin.startExperiment(
          StartExperimentRequest.fromPartial({ id: 'long-seeded' }),
        );
        const described = await admin.updateExperiment(
          UpdateExperimentRequest.fromPartial({
            experiment: {
              ...experiment('long-seeded', { description: 'still editable' }),
              etag: started.experiment?.etag ?? '',
            },
            updateMask: ['description'],
          }),
        );
        expect(described.experiment).toMatchObject({ description: 'still editable', seed });
        expect((await client.getHoldout({ id: 'long-seeded' })).holdout?.seed).toBe(seed);
      });

      it('updates a holdout stored with a layer listed twice, dropping the repeat', async () => {
        const { admin, client } = service;
        await admin.createLayer(CreateLayerRequest.fromPartial({ layer: { id: 'repeated' } }));
        await admin.createHoldout(
          CreateHoldoutRequest.fromPartial({
            holdout: holdout('legacy', { layerIds: ['repeated'] }),
          }),
        );
        // As a holdout created before DUPLICATE_LAYER was checked is stored.
        const store = service.service.context.store;
        const stored = await store.holdouts.get('legacy');
        if (stored === undefined) throw new Error('the holdout was not stored');
        const legacy = await store.holdouts.replace(
          { ...stored.doc, layerIds: ['repeated', 'repeated'] },
          stored.version,
        );
        await store.bumpVersion();
        const started = await admin.updateHoldout(
          UpdateHoldoutRequest.fromPartial({
            holdout: holdout('legacy', {
              status: HoldoutStatus.HOLDOUT_STATUS_RUNNING,
              etag: String(legacy.version),
            }),
            updateMask: ['status'],
          }),
        );
        expect(started.holdout).toMatchObject({
          status: HoldoutStatus.HOLDOUT_STATUS_RUNNING,
          layerIds: ['repeated'],
        });
        expect((await client.getHoldout({ id: 'legacy' })).holdout?.layerIds).toEqual(['repeated']);
        // Naming the layer twice in the request is still refused.
        const twice = await failure(
          admin.updateHoldout(
            UpdateHoldoutRequest.fromPartial({
              holdout: holdout('legacy', {
                layerIds: ['repeated', 'repeated'],
                etag: started.holdout?.etag ?? '',
              }),
              updateMask: ['layer_ids'],
            }),
          ),
        );
        expect(fields(twice)).toEqual(['holdout.layer_ids[1]']);
      });

      it('holds a fraction of units out of covered experiments, and guards its lifecycle', async () => {
        const { admin, client } = service;
        await admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('held', { surfaces: ['shelf'] }),
          }),
        );
        await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'held' }));
        const invalid = await failure(
          admin.createHoldout(
            CreateHoldoutRequest.fromPartial({
              holdout: holdout('bad', { fraction: 1.5, layerIds: ['nope'] }),
            }),
          ),
        );
        expect(fields(invalid)).toEqual(['holdout.fraction', 'holdout.layer_ids[0]']);
        const created = await admin.createHoldout(
          CreateHoldoutRequest.fromPartial({
            holdout: holdout('long-term', {
              surfaces: ['shelf'],
              status: HoldoutStatus.HOLDOUT_STATUS_RUNNING,
            }),
          }),
        );
        expect(created.holdout).toMatchObject({
          status: HoldoutStatus.HOLDOUT_STATUS_RUNNING,
          // No seed given: its id, prefixed so that no experiment hashes with it by default.
          seed: 'holdout:long-term',
          etag: '1',
        });
        expect(
          (
            await failure(
              admin.createHoldout(
                CreateHoldoutRequest.fromPartial({
                  holdout: holdout('long-term', { surfaces: ['x'] }),
                }),
              ),
            )
          ).code,
        ).toBe(GrpcCode.ALREADY_EXISTS);

        for (let i = 0; i < 20; i++) {
          const unitId = `h-${i}`;
          const heldOut = (hash('holdout:long-term', unitId, 2) ?? 1) < 0.5;
          const response = await client.resolve(resolveRequest(unitId, { surfaces: ['shelf'] }));
          expect(response.holdouts).toEqual([
            { holdoutId: 'long-term', heldOut, surfaces: ['shelf'], holdoutEtag: '' },
          ]);
          if (i === 0) {
            const full = await client.resolve(
              resolveRequest(unitId, {
                surfaces: ['shelf'],
                view: AssignmentView.ASSIGNMENT_VIEW_FULL,
              }),
            );
            expect(full.holdouts).toEqual([
              { holdoutId: 'long-term', heldOut, surfaces: ['shelf'], holdoutEtag: '1' },
            ]);
          }
          expect(response.assignments[0]).toMatchObject(
            heldOut
              ? {
                  reason: AssignmentReason.ASSIGNMENT_REASON_HOLDOUT,
                  variantKey: 'control',
                  holdoutId: 'long-term',
                }
              : { reason: AssignmentReason.ASSIGNMENT_REASON_ASSIGNED },
          );
        }
        const listed = await client.listHoldouts(
          ListHoldoutsRequest.fromPartial({
            surface: 'shelf',
            statuses: [HoldoutStatus.HOLDOUT_STATUS_RUNNING],
          }),
        );
        expect(listed.holdouts.map((h) => h.id)).toEqual(['long-term']);
        expect((await client.getHoldout({ id: 'long-term' })).holdout?.fraction).toBe(0.5);

        const frozen = await failure(
          admin.updateHoldout(
            UpdateHoldoutRequest.fromPartial({
              holdout: holdout('long-term', { fraction: 0.2, etag: '1' }),
              updateMask: ['fraction'],
            }),
          ),
        );
        expect(preconditions(frozen)).toEqual(['IMMUTABLE_ONCE_RUNNING']);
        const backwards = await failure(
          admin.updateHoldout(
            UpdateHoldoutRequest.fromPartial({
              holdout: holdout('long-term', {
                status: HoldoutStatus.HOLDOUT_STATUS_DRAFT,
                etag: '1',
              }),
              updateMask: ['status'],
            }),
          ),
        );
        expect(preconditions(backwards)).toEqual(['STATUS_TRANSITION']);
        const running = await failure(
          admin.deleteHoldout(DeleteHoldoutRequest.fromPartial({ id: 'long-term', etag: '1' })),
        );
        expect(running.code).toBe(GrpcCode.FAILED_PRECONDITION);
        const stopped = await admin.updateHoldout(
          UpdateHoldoutRequest.fromPartial({
            holdout: holdout('long-term', {
              status: HoldoutStatus.HOLDOUT_STATUS_STOPPED,
              etag: '1',
            }),
            updateMask: ['status'],
          }),
        );
        expect(stopped.holdout?.stopTime).toBeInstanceOf(Date);
        await admin.deleteHoldout(
          DeleteHoldoutRequest.fromPartial({ id: 'long-term', etag: stopped.holdout?.etag ?? '' }),
        );
        expect((await failure(client.getHoldout({ id: 'long-term' }))).code).toBe(
          GrpcCode.NOT_FOUND,
        );
        const reused = await failure(
          admin.createHoldout(
            CreateHoldoutRequest.fromPartial({
              holdout: holdout('long-term', { surfaces: ['shelf'] }),
            }),
          ),
        );
        expect(reused.code).toBe(GrpcCode.ALREADY_EXISTS);
        expect(reused.reason).toBe('ID_RETIRED');
      });
    });

    describe('bandit allocations', () => {
      it('ignores, for sequences too, an allocation left for arms the experiment no longer has', async () => {
        const { admin, client } = service;
        const created = await admin.createExperiment(
          CreateExperimentRequest.fromPartial({ experiment: draftBandit('ignored-arms') }),
        );
        await admin.updateAllocation(allocateNinetyTen('ignored-arms'));
        // New arms; the drop of the old arms' allocation fails (the change itself is stored).
        const drop = jest
          .spyOn(service.service.context.store.allocations, 'delete')
          .mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
        try {
          await admin.updateExperiment(
            UpdateExperimentRequest.fromPartial({
              experiment: {
                ...draftBandit('ignored-arms', [variant('control', 0.5), variant('t2', 0.5)]),
                etag: created.experiment?.etag ?? '',
              },
              updateMask: ['variants'],
            }),
          );
        } finally {
          drop.mockRestore();
        }
        await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'ignored-arms' }));
        const inEffect = await client.getAllocation({ experimentId: 'ignored-arms', sequence: 0 });
        expect(inEffect.allocation).toMatchObject({ sequence: 0, source: 'experiment' });
        // Drawn from the variants' own weights: labelled with sequence 0, not the ignored 10.
        const resolved = await client.resolve(
          resolveRequest('ignored-1', { surfaces: ['ignored-arms'] }),
        );
        expect(resolved.assignments[0]).toMatchObject({
          reason: AssignmentReason.ASSIGNMENT_REASON_ASSIGNED,
          allocationSequence: 0,
        });
        // Nor does it order the next update: sequence 5 is the first for these arms.
        const updated = await admin.updateAllocation(
          UpdateAllocationRequest.fromPartial({
            allocation: {
              experimentId: 'ignored-arms',
              weights: [
                { variantKey: 'control', weight: 0.7 },
                { variantKey: 't2', weight: 0.3 },
              ],
              sequence: 5,
            },
          }),
        );
        expect(updated.allocation).toMatchObject({ sequence: 5 });
      });

      it('applies weights with the minimum arm share, orders them by sequence, and keeps sticky units', async () => {
        const { admin, client } = service;
        const notSticky = await failure(
          admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: experiment('arms', {
                allocationMode: AllocationMode.ALLOCATION_MODE_BANDIT,
                bandit: { minArmShare: 0.1 },
              }),
            }),
          ),
        );
        expect(fields(notSticky)).toEqual(['experiment.sticky']);
        await admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('arms', {
              surfaces: ['arms'],
              allocationMode: AllocationMode.ALLOCATION_MODE_BANDIT,
              bandit: { minArmShare: 0.1 },
              sticky: true,
            }),
          }),
        );
        const initial = await client.getAllocation({ experimentId: 'arms', sequence: 0 });
        expect(initial.allocation).toMatchObject({
          sequence: 0,
          source: 'experiment',
          method: AllocationMethod.ALLOCATION_METHOD_MANUAL,
        });
        expect(initial.allocation?.weights.map((w) => w.weight)).toEqual([0.5, 0.5]);
        await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'arms' }));

        // Units exposed now keep their variant whatever the weights become.
        const early = ['s-1', 's-2', 's-3', 's-4', 's-5', 's-6'];
        const before = new Map<string, string>();
        for (const unitId of early) {
          const response = await client.resolve(
            resolveRequest(unitId, { surfaces: ['arms'], apply: true }),
          );
          before.set(unitId, response.assignments[0]?.variantKey ?? '');
        }

        const invalid = await failure(
          admin.updateAllocation(
            UpdateAllocationRequest.fromPartial({
              allocation: {
                experimentId: 'arms',
                weights: [{ variantKey: 'control', weight: 0.5 }],
              },
            }),
          ),
        );
        expect(invalid.code).toBe(GrpcCode.INVALID_ARGUMENT);
        // A sequence beyond 2^53 cannot be held exactly: refused before the handler, by field.
        const split = (control: number, fields: { sequence?: number; etag?: string } = {}) =>
          UpdateAllocationRequest.fromPartial({
            allocation: {
              experimentId: 'arms',
              weights: [
                { variantKey: 'control', weight: control },
                { variantKey: 'treatment', weight: 1 - control },
              ],
              ...fields,
            },
          });
        const huge = await failure(admin.updateAllocation(split(0.5, { sequence: 2 ** 60 })));
        expect(huge.reason).toBe('UNDECODABLE_REQUEST');
        expect(fields(huge)).toEqual(['allocation.sequence']);
        // Held exactly, but more than a day ahead: it would order every later update as stale.
        const ahead = await failure(
          admin.updateAllocation(split(0.5, { sequence: Number.MAX_SAFE_INTEGER })),
        );
        expect(ahead.code).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(fields(ahead)).toEqual(['allocation.sequence']);
        // Negative: before any sequence stored, never to be after one (not ABORTED, which a
        // re-read and retry could never clear).
        const negative = await failure(admin.updateAllocation(split(0.5, { sequence: -5 })));
        expect([negative.code, fieldReasons(negative)]).toEqual([
          GrpcCode.INVALID_ARGUMENT,
          [['allocation.sequence', 'OUT_OF_RANGE']],
        ]);
        // Every problem at once: the request's own fields and its weights against the arms.
        const everything = await failure(
          admin.updateAllocation(
            UpdateAllocationRequest.fromPartial({
              allocation: {
                experimentId: 'arms',
                weights: [
                  { variantKey: 'control', weight: 0.2 },
                  { variantKey: 'nope', weight: 0.2 },
                ],
                sequence: Number.MAX_SAFE_INTEGER,
                method: AllocationMethod.UNRECOGNIZED,
              },
            }),
          ),
        );
        expect(fieldReasons(everything).sort()).toEqual([
          ['allocation.method', 'UNKNOWN_METHOD'],
          ['allocation.sequence', 'OUT_OF_RANGE'],
          ['allocation.weights', 'MISSING_VARIANT'],
          ['allocation.weights', 'WEIGHTS_DO_NOT_SUM_TO_ONE'],
          ['allocation.weights[1].variant_key', 'UNKNOWN_VARIANT'],
        ]);
        // Weights no experiment could take are invalid whatever the id; valid ones for an
        // unknown id are NOT_FOUND.
        const unknown = (weight: number) =>
          failure(
            admin.updateAllocation(
              UpdateAllocationRequest.fromPartial({
                allocation: { experimentId: 'nope', weights: [{ variantKey: 'a', weight }] },
              }),
            ),
          );
        expect(fieldReasons(await unknown(2))).toEqual([
          ['allocation.weights[0].weight', 'OUT_OF_RANGE'],
          ['allocation.weights', 'WEIGHTS_DO_NOT_SUM_TO_ONE'],
        ]);
        expect((await unknown(1)).code).toBe(GrpcCode.NOT_FOUND);
        const updated = await admin.updateAllocation(split(1, { sequence: 100, etag: '0' }));
        expect(updated.allocation).toMatchObject({
          sequence: 100,
          source: 'admin',
          minArmShare: 0.1,
        });
        expect(updated.allocation?.weights.map((w) => w.weight)).toEqual([
          0.9,
          expect.closeTo(0.1, 10),
        ]);
        const staleSequence = await failure(admin.updateAllocation(split(0.5, { sequence: 50 })));
        expect(staleSequence.code).toBe(GrpcCode.ABORTED);
        const staleEtag = await failure(admin.updateAllocation(split(0.5, { etag: '0' })));
        expect(staleEtag.code).toBe(GrpcCode.ABORTED);
        const fixed = await failure(
          admin.updateAllocation(
            UpdateAllocationRequest.fromPartial({
              allocation: {
                experimentId: 'feed',
                weights: [
                  { variantKey: 'control', weight: 0.5 },
                  { variantKey: 'treatment', weight: 0.5 },
                ],
              },
            }),
          ),
        );
        expect(fixed.code).toBe(GrpcCode.FAILED_PRECONDITION);
        expect(
          (await failure(client.getAllocation({ experimentId: 'nope', sequence: 0 }))).code,
        ).toBe(GrpcCode.NOT_FOUND);

        for (const unitId of early) {
          const response = await client.resolve(resolveRequest(unitId, { surfaces: ['arms'] }));
          expect(response.assignments[0]).toMatchObject({
            variantKey: before.get(unitId),
            reason: AssignmentReason.ASSIGNMENT_REASON_STICKY,
          });
        }
        let control = 0;
        for (let i = 0; i < 200; i++) {
          const response = await client.resolve(resolveRequest(`new-${i}`, { surfaces: ['arms'] }));
          expect(response.assignments[0]?.allocationSequence).toBe(100);
          if (response.assignments[0]?.variantKey === 'control') control++;
        }
        expect(control).toBeGreaterThan(150);
      });

      it("drops a draft bandit's allocation when its arms change or it is deleted", async () => {
        const { admin, client } = service;
        const bandit = (variants?: ReturnType<typeof variant>[]) =>
          draftBandit('arms-draft', variants);
        const created = await admin.createExperiment(
          CreateExperimentRequest.fromPartial({ experiment: bandit() }),
        );
        const allocate = () => admin.updateAllocation(allocateNinetyTen('arms-draft'));
        await allocate();
        const initialWeights = { sequence: 0, source: 'experiment', etag: '0' };
        // Other arms: the allocation named the old ones.
        const rearmed = await admin.updateExperiment(
          UpdateExperimentRequest.fromPartial({
            experiment: {
              ...bandit([variant('control', 0.5), variant('t2', 0.5)]),
              etag: created.experiment?.etag ?? '',
            },
            updateMask: ['variants'],
          }),
        );
        const afterRearm = await client.getAllocation({ experimentId: 'arms-draft', sequence: 0 });
        expect(afterRearm.allocation).toMatchObject(initialWeights);
        expect(afterRearm.allocation?.weights.map((w) => [w.variantKey, w.weight])).toEqual([
          ['control', 0.5],
          ['t2', 0.5],
        ]);
        // Deleted: a draft's id may be used again, without the old allocation.
        await admin.updateExperiment(
          UpdateExperimentRequest.fromPartial({
            experiment: { ...bandit(), etag: rearmed.experiment?.etag ?? '' },
            updateMask: ['variants'],
          }),
        );
        await allocate();
        const current = await client.getExperiment({ id: 'arms-draft' });
        await admin.deleteExperiment(
          DeleteExperimentRequest.fromPartial({
            id: 'arms-draft',
            etag: current.experiment?.etag ?? '',
          }),
        );
        await admin.createExperiment(CreateExperimentRequest.fromPartial({ experiment: bandit() }));
        expect(
          (await client.getAllocation({ experimentId: 'arms-draft', sequence: 0 })).allocation,
        ).toMatchObject(initialWeights);
        // Allocated again, it has etags of its own, update after update: one of a dropped
        // allocation is stale.
        expect((await allocate()).allocation?.etag).toBe('3.1');
        const later = allocateNinetyTen('arms-draft');
        const reallocated = await admin.updateAllocation({
          ...later,
          allocation: { ...later.allocation!, sequence: 11 },
        });
        expect(reallocated.allocation?.etag).toBe('3.2');
        for (const etag of ['1', '2']) {
          const stale = await failure(
            admin.updateAllocation(
              UpdateAllocationRequest.fromPartial({
                allocation: {
                  experimentId: 'arms-draft',
                  weights: [
                    { variantKey: 'control', weight: 0.2 },
                    { variantKey: 'treatment', weight: 0.8 },
                  ],
                  etag,
                },
              }),
            ),
          );
          expect(stale.reason).toBe('STALE_ETAG');
        }

        // A sequence stored before sequences were bounded orders nothing: the next one is now.
        const now = Date.now();
        const weight = (variantKey: string) => ({
          variantKey,
          weight: 0.5,
          unitCount: 0,
          rewardMean: 0,
          probabilityBest: 0,
        });
        await service.service.context.store.allocations.upsert({
          id: 'arms-draft',
          weights: [weight('control'), weight('treatment')],
          sequence: Number.MAX_SAFE_INTEGER,
          method: AllocationMethod.ALLOCATION_METHOD_MANUAL,
          computeTime: null,
          analysisPlanId: '',
          source: 'admin',
          updateTime: now,
        });
        const next = await admin.updateAllocation(
          UpdateAllocationRequest.fromPartial({
            allocation: {
              experimentId: 'arms-draft',
              weights: [
                { variantKey: 'control', weight: 0.7 },
                { variantKey: 'treatment', weight: 0.3 },
              ],
            },
          }),
        );
        expect(next.allocation?.sequence).toBeGreaterThanOrEqual(now);
        // A Date can hold the year 20000; a Timestamp cannot, and protojson clients refuse it.
        const farComputeTime = await failure(
          admin.updateAllocation(
            UpdateAllocationRequest.fromPartial({
              allocation: {
                experimentId: 'arms-draft',
                weights: [
                  { variantKey: 'control', weight: 0.6 },
                  { variantKey: 'treatment', weight: 0.4 },
                ],
                computeTime: new Date(Date.UTC(20_000, 0, 1)),
              },
            }),
          ),
        );
        expect(fields(farComputeTime)).toEqual(['allocation.compute_time']);
        // What an allocation records beside its weights is stored and served back: it must be
        // readable, and the violations name the contract's fields.
        const unreadable = await failure(
          admin.updateAllocation(
            UpdateAllocationRequest.fromPartial({
              allocation: {
                experimentId: 'arms-draft',
                weights: [
                  { variantKey: 'control', weight: 0.6, unitCount: -1, rewardMean: Number.NaN },
                  { variantKey: 'treatment', weight: 0.4, probabilityBest: Infinity },
                ],
                // A number the contract does not define, as a newer producer might send.
                // eslint-disable-next-line @typescript-eslint/no-unsafe-enum-assignment -- on purpose
                method: 77 as AllocationMethod,
              },
            }),
          ),
        );
        expect(fieldReasons(unreadable)).toEqual([
          ['allocation.weights[0].unit_count', 'OUT_OF_RANGE'],
          ['allocation.weights[0].reward_mean', 'OUT_OF_RANGE'],
          ['allocation.weights[1].probability_best', 'OUT_OF_RANGE'],
          ['allocation.method', 'UNKNOWN_METHOD'],
        ]);
        expect(next.allocation?.sequence).toBeLessThan(now + 60_000);
      });

      it('loses no allocation when a write fails halfway, and revives none a failed drop left', async () => {
        const { admin, client } = service;
        const store = service.service.context.store;
        const arms = (...keys: string[]) => keys.map((key) => variant(key, 1 / keys.length));
        const bandit = (variants = arms('control', 'treatment')) =>
          draftBandit('arms-halfway', variants);
        const allocate = () => admin.updateAllocation(allocateNinetyTen('arms-halfway'));
        const allocation = async () =>
          (await client.getAllocation({ experimentId: 'arms-halfway', sequence: 0 })).allocation;
        const rearm = (etag: string, variants: ReturnType<typeof arms>) =>
          admin.updateExperiment(
            UpdateExperimentRequest.fromPartial({
              experiment: { ...bandit(variants), etag },
              updateMask: ['variants'],
            }),
          );
        const created = await admin.createExperiment(
          CreateExperimentRequest.fromPartial({ experiment: bandit() }),
        );
        await allocate();
        const unavailable = () => Promise.reject(new UnavailableError('storage is unreachable'));

        // The experiment's save fails: nothing changed, the operator's weights included.
        const save = jest.spyOn(store.experiments, 'replace').mockImplementationOnce(unavailable);
        try {
          const failed = await failure(
            rearm(created.experiment?.etag ?? '', arms('control', 't2')),
          );
          expect(failed.code).toBe(GrpcCode.UNAVAILABLE);
        } finally {
          save.mockRestore();
        }
        expect(await allocation()).toMatchObject({ sequence: 10, source: 'admin' });
        expect((await allocation())?.weights.map((w) => w.weight)).toEqual([0.9, 0.1]);

        // Saved, but the allocation's drop fails: the change took, and the allocation for the old
        // arms is ignored; changing the arms back does not bring it back.
        const drop = jest.spyOn(store.allocations, 'delete').mockImplementationOnce(unavailable);
        let rearmed;
        try {
          rearmed = await rearm(created.experiment?.etag ?? '', arms('control', 't2'));
          expect(drop).toHaveBeenCalled();
        } finally {
          drop.mockRestore();
        }
        expect(await allocation()).toMatchObject({ sequence: 0, source: 'experiment' });
        await rearm(rearmed.experiment?.etag ?? '', arms('control', 'treatment'));
        expect(await allocation()).toMatchObject({ sequence: 0, source: 'experiment' });
        expect((await allocation())?.weights.map((w) => w.weight)).toEqual([0.5, 0.5]);

        // Deleted, with the allocation's drop failing: deleted all the same, and an experiment
        // created again under the id does not inherit the allocation.
        await allocate();
        const current = await client.getExperiment({ id: 'arms-halfway' });
        const dropOnDelete = jest
          .spyOn(store.allocations, 'delete')
          .mockImplementationOnce(unavailable);
        try {
          await admin.deleteExperiment(
            DeleteExperimentRequest.fromPartial({
              id: 'arms-halfway',
              etag: current.experiment?.etag ?? '',
            }),
          );
          expect(dropOnDelete).toHaveBeenCalled();
        } finally {
          dropOnDelete.mockRestore();
        }
        await admin.createExperiment(CreateExperimentRequest.fromPartial({ experiment: bandit() }));
        expect(await allocation()).toMatchObject({ sequence: 0, source: 'experiment' });
      });

      describe('allocation history (GetAllocation with a sequence)', () => {
        /** UpdateAllocation of `control` share `control` at `sequence`. */
        function split(id: string, control: number, sequence: number, requestId = '') {
          return UpdateAllocationRequest.fromPartial({
            allocation: {
              experimentId: id,
              weights: [
                { variantKey: 'control', weight: control, unitCount: sequence, rewardMean: 0.25 },
                { variantKey: 'treatment', weight: 1 - control, probabilityBest: 0.5 },
              ],
              sequence,
              method: AllocationMethod.ALLOCATION_METHOD_THOMPSON_SAMPLING,
              computeTime: new Date(1_700_000_000_000 + sequence),
              analysisPlanId: 'plan-1',
            },
            requestId,
          });
        }

        /** The allocation update event of `control` share `control` at `sequence`. */
        function publishSplit(id: string, control: number, sequence: number, eventId: string) {
          return service.runtime.bus.publish(
            ALLOCATION_SUBJECT,
            AllocationUpdate,
            AllocationUpdate.fromPartial({
              eventId,
              experimentId: id,
              weights: [
                { variantKey: 'control', weight: control },
                { variantKey: 'treatment', weight: 1 - control },
              ],
              sequence,
              method: AllocationMethod.ALLOCATION_METHOD_THOMPSON_SAMPLING,
            }),
            { eventId },
          );
        }

        async function kept(id: string): Promise<number[]> {
          const sequences: number[] = [];
          for await (const entry of service.service.context.store.allocationHistory.scan()) {
            if (entry.doc.experimentId === id) sequences.push(entry.doc.allocation.sequence);
          }
          return sequences.sort((a, b) => a - b);
        }

        it('answers the allocation stored under each sequence, and the one in effect for 0', async () => {
          const { admin, client } = service;
          await admin.createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: {
                ...draftBandit('history'),
                bandit: { minArmShare: 0.2 },
              },
            }),
          );
          const first = await admin.updateAllocation(split('history', 0.9, 100));
          const second = await admin.updateAllocation(split('history', 0.4, 200));
          expect(first.allocation).toMatchObject({ sequence: 100, source: 'admin' });
          // The minimum arm share applied, as it was served.
          expect(first.allocation?.weights[1]?.weight).toBeGreaterThanOrEqual(0.2);

          const at100 = await client.getAllocation({ experimentId: 'history', sequence: 100 });
          expect(at100.allocation).toEqual(first.allocation);
          const at200 = await client.getAllocation({ experimentId: 'history', sequence: 200 });
          expect(at200.allocation).toEqual(second.allocation);
          const inEffect = await client.getAllocation({ experimentId: 'history', sequence: 0 });
          expect(inEffect.allocation).toEqual(second.allocation);
          expect(await kept('history')).toEqual([100, 200]);

          // Read from storage, not the configuration in memory: the same from another replica.
          const read = jest.spyOn(service.service.context.store.allocationHistory, 'get');
          try {
            await client.getAllocation({ experimentId: 'history', sequence: 100 });
            expect(read).toHaveBeenCalledTimes(1);
          } finally {
            read.mockRestore();
          }
        });

        it('answers a sequence as it was served once started, after a DRAFT changed its minimum arm share', async () => {
          const { admin, client } = service;
          const created = await admin.createExperiment(
            CreateExperimentRequest.fromPartial({ experiment: draftBandit('history-floor') }),
          );
          await admin.updateAllocation(split('history-floor', 0.9, 100));
          await admin.updateExperiment(
            UpdateExperimentRequest.fromPartial({
              experiment: {
                id: 'history-floor',
                bandit: { minArmShare: 0.3 },
                etag: created.experiment?.etag ?? '',
              },
              updateMask: ['bandit'],
            }),
          );
          await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'history-floor' }));
          const served = (
            await client.getAllocation({ experimentId: 'history-floor', sequence: 0 })
          ).allocation;
          // 0.3 + (1 - 2 × 0.3) × 0.1 = 0.34 for the treatment: the floor applies.
          expect(served?.minArmShare).toBe(0.3);
          expect(served?.weights[1]?.weight).toBeCloseTo(0.34, 12);
          await admin.updateAllocation(split('history-floor', 0.5, 200));
          const at100 = await client.getAllocation({
            experimentId: 'history-floor',
            sequence: 100,
          });
          expect(at100.allocation).toEqual(served);
        });

        it('answers the allocation a DRAFT set again under a sequence after its arms changed', async () => {
          const { admin, client } = service;
          const splitBold = (control: number, sequence: number) =>
            UpdateAllocationRequest.fromPartial({
              allocation: {
                experimentId: 'history-arms',
                weights: [
                  { variantKey: 'control', weight: control },
                  { variantKey: 'bold', weight: 1 - control },
                ],
                sequence,
              },
            });
          const created = await admin.createExperiment(
            CreateExperimentRequest.fromPartial({ experiment: draftBandit('history-arms') }),
          );
          await admin.updateAllocation(split('history-arms', 0.9, 100));
          // Other arms drop the allocation; the same sequence is then set for the new ones.
          await admin.updateExperiment(
            UpdateExperimentRequest.fromPartial({
              experiment: {
                ...draftBandit('history-arms', [variant('control', 0.5), variant('bold', 0.5)]),
                etag: created.experiment?.etag ?? '',
              },
              updateMask: ['variants'],
            }),
          );
          const again = await admin.updateAllocation(splitBold(0.2, 100));
          await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'history-arms' }));
          await admin.updateAllocation(splitBold(0.5, 200));
          const at100 = await client.getAllocation({ experimentId: 'history-arms', sequence: 100 });
          expect(at100.allocation?.weights.map((w) => [w.variantKey, w.weight])).toEqual([
            ['control', 0.2],
            ['bold', 0.8],
          ]);
          expect(at100.allocation).toEqual(again.allocation);
        });

        it('answers NOT_FOUND (ALLOCATION_NOT_FOUND) for a sequence none was stored under', async () => {
          const { admin, client } = service;
          await admin.createExperiment(
            CreateExperimentRequest.fromPartial({ experiment: draftBandit('history-unknown') }),
          );
          await admin.updateAllocation(split('history-unknown', 0.6, 100));
          for (const sequence of [50, 150]) {
            const unknown = await failure(
              client.getAllocation({ experimentId: 'history-unknown', sequence }),
            );
            expect([unknown.code, unknown.reason]).toEqual([
              GrpcCode.NOT_FOUND,
              'ALLOCATION_NOT_FOUND',
            ]);
          }
          const negative = await failure(
            client.getAllocation({ experimentId: 'history-unknown', sequence: -1 }),
          );
          expect(negative.code).toBe(GrpcCode.INVALID_ARGUMENT);
          const noExperiment = await failure(
            client.getAllocation({ experimentId: 'history-none', sequence: 100 }),
          );
          expect([noExperiment.code, noExperiment.reason]).toEqual([
            GrpcCode.NOT_FOUND,
            'EXPERIMENT_NOT_FOUND',
          ]);
        });

        it('keeps an AllocationUpdate once when it is delivered again, and answers it', async () => {
          const { admin, client } = service;
          await admin.createExperiment(
            CreateExperimentRequest.fromPartial({ experiment: draftBandit('history-events') }),
          );
          const info = jest.spyOn(service.service.context.logger, 'info');
          try {
            await publishSplit('history-events', 0.7, 300, 'history-events-300');
            await eventually(async () => {
              const { allocation } = await client.getAllocation({
                experimentId: 'history-events',
                sequence: 0,
              });
              expect(allocation?.sequence).toBe(300);
            });
            const applied = (
              await client.getAllocation({ experimentId: 'history-events', sequence: 0 })
            ).allocation;
            // Delivered again (its first delivery failed after storing it, say).
            await publishSplit('history-events', 0.7, 300, 'history-events-300-again');
            await eventually(() => {
              expect(info).toHaveBeenCalledWith(
                expect.objectContaining({ experiment: 'history-events', sequence: 300 }),
                'allocation update already applied',
              );
            });
            // A later update replaces it in effect; the history still answers it.
            await admin.updateAllocation(split('history-events', 0.2, 400));
            const at300 = await client.getAllocation({
              experimentId: 'history-events',
              sequence: 300,
            });
            expect(at300.allocation).toEqual(applied);
            expect(at300.allocation).toMatchObject({ source: 'analysis' });
            expect(await kept('history-events')).toEqual([300, 400]);
          } finally {
            info.mockRestore();
          }
        });

        it('keeps an allocation whose first write failed before keeping it, once written again', async () => {
          const { admin, client } = service;
          await admin.createExperiment(
            CreateExperimentRequest.fromPartial({ experiment: draftBandit('history-retry') }),
          );
          const insert = jest
            .spyOn(service.service.context.store.allocationHistory, 'upsert')
            .mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
          let first: Awaited<ReturnType<typeof admin.updateAllocation>>;
          try {
            const failed = await failure(
              admin.updateAllocation(split('history-retry', 0.3, 100, 'history-retry-100')),
            );
            expect(failed.code).toBe(GrpcCode.UNAVAILABLE);
            // The retry (same request_id) is answered with the allocation the first call stored.
            first = await admin.updateAllocation(
              split('history-retry', 0.3, 100, 'history-retry-100'),
            );
            expect(first.allocation).toMatchObject({ sequence: 100 });
          } finally {
            insert.mockRestore();
          }
          await admin.updateAllocation(split('history-retry', 0.5, 200));
          const at100 = await client.getAllocation({
            experimentId: 'history-retry',
            sequence: 100,
          });
          expect(at100.allocation).toEqual(first.allocation);

          // An event whose first delivery stored it but failed before keeping it: delivered again.
          const failing = jest
            .spyOn(service.service.context.store.allocationHistory, 'upsert')
            .mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
          try {
            await publishSplit('history-retry', 0.6, 300, 'history-retry-300');
            await eventually(async () => {
              expect(await kept('history-retry')).toEqual([100, 200, 300]);
            }, 20_000);
          } finally {
            failing.mockRestore();
          }
          await admin.updateAllocation(split('history-retry', 0.1, 400));
          const at300 = await client.getAllocation({
            experimentId: 'history-retry',
            sequence: 300,
          });
          expect(at300.allocation).toMatchObject({ sequence: 300, source: 'analysis' });
          expect(at300.allocation?.weights.map((w) => w.weight)).toEqual([0.6, 0.4]);
        }, 30_000);

        it('keeps an allocation whose write is answered to its retry from what is stored', async () => {
          const { admin, client } = service;
          await admin.createExperiment(
            CreateExperimentRequest.fromPartial({ experiment: draftBandit('history-recovered') }),
          );
          // With an etag and no sequence, the retry is refused by the change itself (the etag it
          // moved), and answered from what the first call stored (see recoverWrite).
          const request = split('history-recovered', 0.3, 0, 'history-recovered-1');
          if (request.allocation) request.allocation.etag = '0';
          const insert = jest
            .spyOn(service.service.context.store.allocationHistory, 'upsert')
            .mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
          let first: Awaited<ReturnType<typeof admin.updateAllocation>>;
          try {
            expect((await failure(admin.updateAllocation(request))).code).toBe(
              GrpcCode.UNAVAILABLE,
            );
            first = await admin.updateAllocation(request);
          } finally {
            insert.mockRestore();
          }
          const sequence = first.allocation?.sequence ?? 0;
          expect(sequence).toBeGreaterThan(0);
          const later = await admin.updateAllocation(split('history-recovered', 0.8, 0));
          expect(later.allocation?.sequence).toBeGreaterThan(sequence);
          const kept = await client.getAllocation({ experimentId: 'history-recovered', sequence });
          expect(kept.allocation).toEqual(first.allocation);
        });
      });
    });

    describe('admin token', () => {
      it('requires the admin token for admin RPCs only', async () => {
        const anonymous = await failure(
          service.client.createLayer(CreateLayerRequest.fromPartial({ layer: { id: 'anon' } })),
        );
        expect(anonymous.code).toBe(GrpcCode.UNAUTHENTICATED);
        const wrong = clientFor(service.address, `${ADMIN_TOKEN}-wrong`);
        try {
          const denied = await failure(
            wrong.startExperiment(StartExperimentRequest.fromPartial({ id: 'feed' })),
          );
          expect(denied.code).toBe(GrpcCode.PERMISSION_DENIED);
        } finally {
          wrong.close();
        }
        await expect(service.client.getLayer({ id: 'checkout' })).resolves.toBeDefined();
      });
    });

    describe('restart', () => {
      it('keeps every configured resource and keeps serving the same assignments', async () => {
        const before = await service.client.resolve(
          resolveRequest('restart-unit', { surfaces: ['feed'], attributes: { country: 'SE' } }),
        );
        const experiments = await service.client.listExperiments(
          ListExperimentsRequest.fromPartial({ pageSize: 1000 }),
        );
        await service.stop();
        service = await startTestAssignment(choice);
        const after = await service.client.resolve(
          resolveRequest('restart-unit', { surfaces: ['feed'], attributes: { country: 'SE' } }),
        );
        expect(after.assignments).toEqual(before.assignments);
        expect(after.configVersion).toBe(before.configVersion);
        const again = await service.client.listExperiments(
          ListExperimentsRequest.fromPartial({ pageSize: 1000 }),
        );
        expect(again.experiments).toEqual(experiments.experiments);
        // A token signed before the restart is still accepted (the key is kept in storage).
        await expect(
          service.client.apply(ApplyRequest.fromPartial({ resolveToken: before.resolveToken })),
        ).resolves.toBeDefined();
      });
    });
  });
}
