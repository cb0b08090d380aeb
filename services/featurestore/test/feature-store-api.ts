/**
 * The behaviour of every FeatureStoreService RPC over gRPC, shared by the embedded-store and the
 * MongoDB suites so both storage adapters are held to the same contract.
 */
import { status as GrpcCode, type ServiceError } from '@grpc/grpc-js';
import { decodeStatus, TandemError, type DecodedStatus } from '../../platform/src/errors';
import {
  FeatureStatus,
  FeatureStoreServiceService,
  WriteFeaturesRequest,
} from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { rawCallError } from '../../platform/test/support/raw-call';
import { withTimestampNanos } from '../../platform/test/support/timestamps';
import { ValueType } from '../../../gen/ts/tandem/featurestore/v1/value';
import type { FeatureView } from '../../../gen/ts/tandem/featurestore/v1/feature_view';
import { ADMIN_TOKEN, eventually, type RunningHarness } from './support/feature-store-harness';
import {
  bool,
  double,
  int,
  itemEntity,
  itemPlaysView,
  list,
  str,
  userEntity,
  userRow,
  users,
  userStatsView,
  vector,
} from './support/fixtures';

/** The status a call failed with, details decoded. */
export async function failureOf(call: Promise<unknown>): Promise<DecodedStatus> {
  try {
    await call;
  } catch (error) {
    if (error instanceof TandemError && error.cause !== undefined) {
      return decodeStatus(error.cause as ServiceError);
    }
    throw error;
  }
  throw new Error('expected the call to fail');
}

export function featureStoreApiSuite(start: () => Promise<RunningHarness>): void {
  let harness: RunningHarness;

  beforeEach(async () => {
    harness = await start();
  });

  afterEach(async () => {
    await harness.stop();
  });

  const seconds = (n: number) => new Date(Date.now() + n * 1000);

  async function registerUserStats(): Promise<void> {
    await harness.client.applyEntity({ entity: userEntity, requestId: '' });
    await harness.client.applyFeatureView({
      featureView: userStatsView(),
      requestId: '',
      validateOnly: false,
    });
  }

  describe('registry', () => {
    it('applies an entity idempotently, keeping its etag when nothing changed', async () => {
      const first = await harness.client.applyEntity({ entity: userEntity, requestId: '' });
      expect(first.changed).toBe(true);
      const again = await harness.client.applyEntity({ entity: userEntity, requestId: '' });
      expect(again.changed).toBe(false);
      expect(again.entity?.etag).toBe(first.entity?.etag);
      const changed = await harness.client.applyEntity({
        entity: { ...userEntity, description: 'someone who listens' },
        requestId: '',
      });
      expect(changed.changed).toBe(true);
      expect(changed.entity?.etag).not.toBe(first.entity?.etag);
      const got = await harness.client.getEntity({ name: 'user' });
      expect(got.entity).toMatchObject({ joinKey: 'user_id', description: 'someone who listens' });
    });

    it('lists entities in name order, one page at a time', async () => {
      await harness.client.applyEntity({ entity: userEntity, requestId: '' });
      await harness.client.applyEntity({ entity: itemEntity, requestId: '' });
      const first = await harness.client.listEntities({ pageSize: 1, pageToken: '' });
      expect(first.entities.map((e) => e.name)).toEqual(['item']);
      const second = await harness.client.listEntities({
        pageSize: 1,
        pageToken: first.nextPageToken,
      });
      expect(second.entities.map((e) => e.name)).toEqual(['user']);
      expect(second.nextPageToken).toBe('');
      const bad = await failureOf(
        harness.client.listEntities({ pageSize: 1, pageToken: 'nonsense' }),
      );
      expect(bad.code).toBe(GrpcCode.INVALID_ARGUMENT);
      expect(bad.violations.map((v) => [v.field, v.reason])).toEqual([
        ['page_token', 'INVALID_PAGE_TOKEN'],
      ]);
    });

    it('refuses a malformed entity with every field violation', async () => {
      const failure = await failureOf(
        harness.client.applyEntity({
          entity: {
            ...userEntity,
            name: 'User!',
            joinKey: '',
            valueType: ValueType.VALUE_TYPE_BOOL,
            owner: 'o'.repeat(257),
          },
          requestId: '',
        }),
      );
      expect(failure.code).toBe(GrpcCode.INVALID_ARGUMENT);
      expect(failure.violations.map((v) => [v.field, v.reason])).toEqual([
        ['entity.name', 'INVALID_NAME'],
        ['entity.join_key', 'INVALID_NAME'],
        ['entity.value_type', 'UNSUPPORTED_VALUE_TYPE'],
        ['entity.owner', 'TOO_LONG'],
      ]);
    });

    it('refuses a TTL past what an expiry date holds and Durations with invalid nanos', async () => {
      await harness.client.applyEntity({ entity: userEntity, requestId: '' });
      const apply = (view: Partial<FeatureView>) =>
        failureOf(
          harness.client.applyFeatureView({
            featureView: userStatsView(view),
            requestId: '',
            validateOnly: false,
          }),
        );
      // 9e12 s: every write's expiry (event time + TTL) would be past the last date.
      const forever = await apply({ ttl: { seconds: 9e12, nanos: 0 } });
      expect(forever.violations.map((v) => [v.field, v.reason])).toEqual([
        ['feature_view.ttl', 'OUT_OF_RANGE'],
      ]);
      const negativeNanos = await apply({ ttl: { seconds: 1, nanos: -5 } });
      expect(negativeNanos.violations.map((v) => [v.field, v.reason])).toEqual([
        ['feature_view.ttl', 'INVALID_DURATION'],
      ]);
      // A negative Duration is a Duration (nanos of the seconds' sign), and not a TTL.
      const negative = await apply({ ttl: { seconds: -1, nanos: -500_000_000 } });
      expect(negative.violations.map((v) => [v.field, v.reason])).toEqual([
        ['feature_view.ttl', 'OUT_OF_RANGE'],
      ]);
      // Under the millisecond the store keeps: read as zero, it would mean no expiry.
      const tiny = await apply({ ttl: { seconds: 0, nanos: 500_000 } });
      expect(tiny.violations.map((v) => [v.field, v.reason])).toEqual([
        ['feature_view.ttl', 'OUT_OF_RANGE'],
      ]);
      // A view stored with one before that was refused (as no TTL) may be applied again as is.
      await harness.client.applyFeatureView({
        featureView: userStatsView(),
        requestId: '',
        validateOnly: false,
      });
      const again = await harness.client.applyFeatureView({
        featureView: userStatsView({ ttl: { seconds: 0, nanos: 500 } }),
        requestId: '',
        validateOnly: false,
      });
      expect(again.changed).toBe(false);
      await harness.client.deleteFeatureView({ name: 'user_stats', etag: '', requestId: '' });
      await expect(harness.client.getFeatureView({ name: 'user_stats' })).rejects.toMatchObject({
        code: GrpcCode.NOT_FOUND,
      });
    });

    it('refuses an apply or delete with a stale etag with ABORTED', async () => {
      const applied = await harness.client.applyEntity({ entity: userEntity, requestId: '' });
      await harness.client.applyEntity({
        entity: { ...userEntity, owner: 'someone' },
        requestId: '',
      });
      const stale = await failureOf(
        harness.client.applyEntity({
          entity: { ...userEntity, owner: 'else', etag: applied.entity!.etag },
          requestId: '',
        }),
      );
      expect(stale.code).toBe(GrpcCode.ABORTED);
      const staleDelete = await failureOf(
        harness.client.deleteEntity({ name: 'user', etag: applied.entity!.etag, requestId: '' }),
      );
      expect(staleDelete.code).toBe(GrpcCode.ABORTED);
    });

    it('takes an etag read before a delete as stale for the resource applied again under its name', async () => {
      // The version starts again at 1; a conditional call holding the old etag must not act on a
      // resource its caller never saw.
      const entity = await harness.client.applyEntity({ entity: userEntity, requestId: '' });
      const view = await harness.client.applyFeatureView({
        featureView: userStatsView(),
        requestId: '',
        validateOnly: false,
      });
      const oldView = view.featureView!.etag;
      await harness.client.deleteFeatureView({ name: 'user_stats', etag: oldView, requestId: '' });
      await harness.client.deleteEntity({ name: 'user', etag: entity.entity!.etag, requestId: '' });
      // Creation times in ms: a re-creation within the same one would keep the etag.
      await new Promise((resolve) => setTimeout(resolve, 5));
      const entityAgain = await harness.client.applyEntity({ entity: userEntity, requestId: '' });
      const viewAgain = await harness.client.applyFeatureView({
        featureView: userStatsView(),
        requestId: '',
        validateOnly: false,
      });
      expect(entityAgain.entity!.etag).not.toBe(entity.entity!.etag);
      expect(viewAgain.featureView!.etag).not.toBe(oldView);
      const staleDelete = await failureOf(
        harness.client.deleteFeatureView({ name: 'user_stats', etag: oldView, requestId: '' }),
      );
      expect(staleDelete.code).toBe(GrpcCode.ABORTED);
      const staleApply = await failureOf(
        harness.client.applyEntity({
          entity: { ...userEntity, owner: 'else', etag: entity.entity!.etag },
          requestId: '',
        }),
      );
      expect(staleApply.code).toBe(GrpcCode.ABORTED);
      await harness.client.deleteFeatureView({
        name: 'user_stats',
        etag: viewAgain.featureView!.etag,
        requestId: '',
      });
    });

    it('requires the admin token for changes but not for reads', async () => {
      const refused = await failureOf(
        harness.anonymous.applyEntity({ entity: userEntity, requestId: '' }),
      );
      expect(refused.code).toBe(GrpcCode.UNAUTHENTICATED);
      await registerUserStats();
      const listed = await harness.anonymous.listFeatureViews({
        pageSize: 0,
        pageToken: '',
        entity: '',
      });
      expect(listed.featureViews.map((v) => v.name)).toEqual(['user_stats']);
    });

    it('answers NOT_FOUND naming a missing entity or view', async () => {
      const entity = await failureOf(harness.client.getEntity({ name: 'nobody' }));
      expect(entity.code).toBe(GrpcCode.NOT_FOUND);
      expect(entity.message).toContain('nobody');
      const view = await failureOf(harness.client.getFeatureView({ name: 'no_view' }));
      expect(view.code).toBe(GrpcCode.NOT_FOUND);
      expect(view.errorInfo?.reason).toBe('FEATURE_VIEW_NOT_FOUND');
      const missingEntity = await failureOf(
        harness.client.applyFeatureView({
          featureView: userStatsView(),
          requestId: '',
          validateOnly: false,
        }),
      );
      expect(missingEntity.code).toBe(GrpcCode.NOT_FOUND);
      expect(missingEntity.message).toContain('user');
    });

    it('refuses an incompatible view change with one precondition violation per change', async () => {
      await registerUserStats();
      const view = userStatsView();
      const changed = {
        ...view,
        features: view.features
          .filter((f) => f.name !== 'plays')
          .map((f) => (f.name === 'ctr' ? { ...f, valueType: ValueType.VALUE_TYPE_STRING } : f)),
      };
      const failure = await failureOf(
        harness.client.applyFeatureView({
          featureView: changed,
          requestId: '',
          validateOnly: false,
        }),
      );
      expect(failure.code).toBe(GrpcCode.FAILED_PRECONDITION);
      expect(failure.errorInfo?.reason).toBe('INCOMPATIBLE_CHANGE');
      expect(failure.preconditionViolations.map((v) => v.subject).sort()).toEqual([
        'features.ctr.value_type',
        'features.plays',
      ]);
    });

    it('accepts a new feature on a push view, and validate_only stores nothing', async () => {
      await registerUserStats();
      const readAll = () =>
        harness.client.getOnlineFeatures({
          features: ['user_stats:*'],
          entityRows: users('u1'),
          omitEventTimes: true,
        });
      // A read before the change, so a read after it must not reuse what this one resolved.
      expect((await readAll()).metadata?.featureNames).not.toContain('user_stats:age');
      const view = userStatsView();
      const extended = {
        ...view,
        features: [
          ...view.features,
          { name: 'age', valueType: ValueType.VALUE_TYPE_INT64, description: '', vectorLength: 0 },
        ],
      };
      const dryRun = await harness.client.applyFeatureView({
        featureView: extended,
        requestId: '',
        validateOnly: true,
      });
      expect(dryRun.changed).toBe(true);
      const stored = await harness.client.getFeatureView({ name: 'user_stats' });
      expect(stored.featureView?.features.map((f) => f.name)).not.toContain('age');
      const applied = await harness.client.applyFeatureView({
        featureView: extended,
        requestId: '',
        validateOnly: false,
      });
      expect(applied.featureView?.etag).not.toBe(stored.featureView?.etag);
      expect(
        (await harness.client.getFeatureView({ name: 'user_stats' })).featureView?.features.map(
          (f) => f.name,
        ),
      ).toContain('age');
      await eventually(async () => {
        const read = await readAll();
        expect(read.metadata?.featureNames).toContain('user_stats:age');
        expect(read.columns).toHaveLength(read.metadata?.featureNames.length ?? -1);
      }, 2_000);
    });

    it('refuses to delete a referenced entity, and deletes a view with its values', async () => {
      await registerUserStats();
      const inUse = await failureOf(
        harness.client.deleteEntity({ name: 'user', etag: '', requestId: '' }),
      );
      expect(inUse.code).toBe(GrpcCode.FAILED_PRECONDITION);
      expect(inUse.message).toContain('user_stats');
      await harness.client.deleteFeatureView({ name: 'user_stats', etag: '', requestId: '' });
      const gone = await failureOf(
        harness.client.getOnlineFeatures({
          features: ['user_stats:ctr'],
          entityRows: users('u1'),
          omitEventTimes: false,
        }),
      );
      expect(gone.code).toBe(GrpcCode.NOT_FOUND);
      await harness.client.deleteEntity({ name: 'user', etag: '', requestId: '' });
      expect((await failureOf(harness.client.getEntity({ name: 'user' }))).code).toBe(
        GrpcCode.NOT_FOUND,
      );
    });

    it('lists views by entity', async () => {
      await registerUserStats();
      await harness.client.applyEntity({ entity: itemEntity, requestId: '' });
      await harness.client.applyFeatureView({
        featureView: itemPlaysView(),
        requestId: '',
        validateOnly: false,
      });
      const byItem = await harness.client.listFeatureViews({
        pageSize: 0,
        pageToken: '',
        entity: 'item',
      });
      expect(byItem.featureViews.map((v) => v.name)).toEqual(['item_plays']);

      // Page tokens are taken back only by the list that returned them, as it wrote them.
      const firstPage = await harness.client.listFeatureViews({
        pageSize: 1,
        pageToken: '',
        entity: '',
      });
      expect(firstPage.featureViews.map((v) => v.name)).toEqual(['item_plays']);
      const secondPage = await harness.client.listFeatureViews({
        pageSize: 1,
        pageToken: firstPage.nextPageToken,
        entity: '',
      });
      expect(secondPage.featureViews.map((v) => v.name)).toEqual(['user_stats']);
      const entitiesPage = await harness.client.listEntities({ pageSize: 1, pageToken: '' });
      const refusal = async (pageToken: string, entity = '') =>
        (
          await failureOf(harness.client.listFeatureViews({ pageSize: 1, pageToken, entity }))
        ).violations.map((v) => [v.field, v.reason]);
      const invalid = [['page_token', 'INVALID_PAGE_TOKEN']];
      const encoded = (text: string) => Buffer.from(text).toString('base64url');
      expect(await refusal(entitiesPage.nextPageToken)).toEqual(invalid);
      expect(await refusal(`${firstPage.nextPageToken}=`)).toEqual(invalid);
      expect(await refusal(`${firstPage.nextPageToken}!`)).toEqual(invalid);
      // The form earlier replicas wrote is still taken (a rolling upgrade), for a name only.
      const legacy = await harness.client.listFeatureViews({
        pageSize: 1,
        pageToken: encoded('after:item_plays'),
        entity: '',
      });
      expect(legacy.featureViews.map((v) => v.name)).toEqual(['user_stats']);
      expect(await refusal(encoded('after:item plays'))).toEqual(invalid);
      expect(await refusal(encoded('["feature_views","","a\\u0000b"]'))).toEqual(invalid);
      expect(await refusal(firstPage.nextPageToken, 'item')).toEqual([
        ['page_token', 'PAGE_TOKEN_FILTER_MISMATCH'],
      ]);
    });
  });

  describe('online reads and writes', () => {
    it('reads back every value type column-oriented, with statuses and event times', async () => {
      await registerUserStats();
      const at = seconds(-10);
      const written = await harness.client.writeFeatures({
        featureView: 'user_stats',
        rows: [
          userRow('u1', at, {
            ctr: double(0.25),
            plays: int(42),
            country: str('SE'),
            premium: bool(true),
            embedding: vector([0.5, 1.5, -2]),
            genres: list(['jazz', 'pop']),
          }),
          userRow('u2', at, { ctr: double(0.1) }),
        ],
        requestId: '',
      });
      expect(written).toEqual({ rowsWritten: 2, rowsSkippedOlder: 0 });
      const read = await harness.client.getOnlineFeatures({
        features: ['user_stats:*'],
        entityRows: users('u1', 'u2', 'nobody'),
        omitEventTimes: false,
      });
      expect(read.metadata?.featureNames).toEqual([
        'user_stats:ctr',
        'user_stats:plays',
        'user_stats:country',
        'user_stats:premium',
        'user_stats:embedding',
        'user_stats:genres',
      ]);
      const [ctr, plays, country, premium, embedding, genres] = read.columns;
      expect(ctr?.values.slice(0, 2)).toEqual([double(0.25), double(0.1)]);
      expect(ctr?.statuses).toEqual([
        FeatureStatus.FEATURE_STATUS_PRESENT,
        FeatureStatus.FEATURE_STATUS_PRESENT,
        FeatureStatus.FEATURE_STATUS_NOT_FOUND,
      ]);
      expect(plays?.values[0]).toEqual(int(42));
      expect(plays?.statuses[1]).toBe(FeatureStatus.FEATURE_STATUS_NULL_VALUE);
      expect(country?.values[0]).toEqual(str('SE'));
      expect(premium?.values[0]).toEqual(bool(true));
      expect(embedding?.values[0]).toEqual(vector([0.5, 1.5, -2]));
      expect(genres?.values[0]).toEqual(list(['jazz', 'pop']));
      expect(ctr?.eventTimes[0]?.getTime()).toBe(at.getTime());
      expect(ctr?.eventTimes[2]?.getTime()).toBe(0);
      expect(read.metadata?.asOf).toBeDefined();
      const lean = await harness.client.getOnlineFeatures({
        features: ['user_stats:ctr'],
        entityRows: users('u1'),
        omitEventTimes: true,
      });
      expect(lean.columns[0]?.eventTimes).toEqual([]);
    });

    it('lets a late write lose and an equal event time overwrite', async () => {
      await registerUserStats();
      const now = seconds(-1);
      await harness.client.writeFeatures({
        featureView: 'user_stats',
        rows: [userRow('u1', now, { ctr: double(0.5) })],
        requestId: '',
      });
      const late = await harness.client.writeFeatures({
        featureView: 'user_stats',
        rows: [userRow('u1', seconds(-60), { ctr: double(0.9) })],
        requestId: '',
      });
      expect(late).toEqual({ rowsWritten: 0, rowsSkippedOlder: 1 });
      const same = await harness.client.writeFeatures({
        featureView: 'user_stats',
        rows: [userRow('u1', now, { ctr: double(0.7) })],
        requestId: '',
      });
      expect(same.rowsWritten).toBe(1);
      const batch = await harness.client.writeFeatures({
        featureView: 'user_stats',
        rows: [
          userRow('u2', seconds(-5), { ctr: double(1) }),
          userRow('u2', seconds(-3), { ctr: double(2) }),
          userRow('u2', seconds(-4), { ctr: double(3) }),
        ],
        requestId: '',
      });
      expect(batch).toEqual({ rowsWritten: 1, rowsSkippedOlder: 2 });
      const read = await harness.client.getOnlineFeatures({
        features: ['user_stats:ctr'],
        entityRows: users('u1', 'u2'),
        omitEventTimes: true,
      });
      expect(read.columns[0]?.values).toEqual([double(0.7), double(2)]);
    });

    it('lets an equal event time overwrite also within the same millisecond', async () => {
      await registerUserStats();
      const at = seconds(-1);
      // Two calls handled in the same millisecond, as back-to-back calls on a busy server are.
      const frozen = jest.spyOn(Date, 'now').mockReturnValue(Date.now());
      try {
        for (const ctr of [0.1, 0.9]) {
          const written = await harness.client.writeFeatures({
            featureView: 'user_stats',
            rows: [userRow('u1', at, { ctr: double(ctr) })],
            requestId: '',
          });
          expect(written).toEqual({ rowsWritten: 1, rowsSkippedOlder: 0 });
        }
      } finally {
        frozen.mockRestore();
      }
      const read = await harness.client.getOnlineFeatures({
        features: ['user_stats:ctr'],
        entityRows: users('u1'),
        omitEventTimes: true,
      });
      expect(read.columns[0]?.values).toEqual([double(0.9)]);
    });

    it('refuses a batch with any bad row, naming every problem and applying nothing', async () => {
      await registerUserStats();
      const failure = await failureOf(
        harness.client.writeFeatures({
          featureView: 'user_stats',
          rows: [
            userRow('u1', seconds(-1), { ctr: double(0.5) }),
            userRow('u2', seconds(-1), { ctr: str('high'), unknown: int(1) }),
            { entityKey: { user_id: int(3) }, values: {}, eventTime: seconds(7200) },
            {
              entityKey: {},
              values: { embedding: vector([1, 2]), plays: double(Number.NaN) },
              eventTime: undefined,
            },
          ],
          requestId: '',
        }),
      );
      expect(failure.code).toBe(GrpcCode.INVALID_ARGUMENT);
      expect(failure.violations.map((v) => [v.field, v.reason]).sort()).toEqual([
        ['rows[1].values.ctr', 'WRONG_VALUE_TYPE'],
        ['rows[1].values.unknown', 'UNKNOWN_FEATURE'],
        ['rows[2].entity_key.user_id', 'WRONG_VALUE_TYPE'],
        ['rows[2].event_time', 'IN_THE_FUTURE'],
        ['rows[3].entity_key.user_id', 'REQUIRED'],
        ['rows[3].event_time', 'REQUIRED'],
        ['rows[3].values.embedding', 'WRONG_LENGTH'],
        ['rows[3].values.plays', 'WRONG_VALUE_TYPE'],
      ]);
      // An integer beyond 2^53 is refused before the handler (the server cannot hold it), by path.
      const huge = await failureOf(
        harness.client.writeFeatures({
          featureView: 'user_stats',
          rows: [
            userRow('u1', seconds(-1), { ctr: double(0.5) }),
            userRow('u2', seconds(-1), { unknown: int(2 ** 60) }),
          ],
          requestId: '',
        }),
      );
      expect(huge.code).toBe(GrpcCode.INVALID_ARGUMENT);
      expect(huge.violations.map((v) => v.field)).toEqual(['rows[1].values.unknown.int64_value']);
      // So is an event time whose nanos are out of range, which would move it by seconds.
      const badNanos = decodeStatus(
        await rawCallError(
          harness.address,
          FeatureStoreServiceService.writeFeatures.path,
          withTimestampNanos(
            'tandem.featurestore.v1.WriteFeaturesRequest',
            WriteFeaturesRequest.encode({
              featureView: 'user_stats',
              rows: [
                userRow('u1', seconds(-1), { ctr: double(0.5) }),
                userRow('u2', seconds(-1), { ctr: double(0.6) }),
              ],
              requestId: '',
            }).finish(),
            'rows[1].event_time',
            -1,
          ),
          ADMIN_TOKEN,
        ),
      );
      expect(badNanos.code).toBe(GrpcCode.INVALID_ARGUMENT);
      expect(badNanos.violations.map((v) => [v.field, v.reason])).toEqual([
        ['rows[1].event_time', 'INVALID_TIMESTAMP'],
      ]);
      const read = await harness.client.getOnlineFeatures({
        features: ['user_stats:ctr'],
        entityRows: users('u1'),
        omitEventTimes: true,
      });
      expect(read.columns[0]?.statuses).toEqual([FeatureStatus.FEATURE_STATUS_NOT_FOUND]);
    });

    it('answers NOT_FOUND naming each unknown view or feature reference', async () => {
      await registerUserStats();
      const view = await failureOf(
        harness.client.getOnlineFeatures({
          features: ['user_stats:ctr', 'nope:x'],
          entityRows: users('u1'),
          omitEventTimes: false,
        }),
      );
      expect(view.code).toBe(GrpcCode.NOT_FOUND);
      expect(view.errorInfo?.reason).toBe('FEATURE_VIEW_NOT_FOUND');
      expect(view.message).toBe('no feature view named nope');
      expect(view.violations.map((v) => [v.field, v.reason])).toEqual([
        ['features[1]', 'FEATURE_VIEW_NOT_FOUND'],
      ]);
      const feature = await failureOf(
        harness.client.getOnlineFeatures({
          features: ['user_stats:ctr', 'user_stats:nope'],
          entityRows: users('u1'),
          omitEventTimes: false,
        }),
      );
      expect(feature.code).toBe(GrpcCode.NOT_FOUND);
      expect(feature.errorInfo?.reason).toBe('FEATURE_NOT_FOUND');
      expect(feature.violations[0]?.field).toBe('features[1]');
      expect(feature.violations[0]?.reason).toBe('FEATURE_NOT_FOUND');
      expect(feature.message).toBe('feature view user_stats has no feature nope');
      const write = await failureOf(
        harness.client.writeFeatures({
          featureView: 'nope',
          rows: [userRow('u1', seconds(0), {})],
          requestId: '',
        }),
      );
      expect(write.code).toBe(GrpcCode.NOT_FOUND);
    });

    it('refuses malformed reads and requests over the limits', async () => {
      await registerUserStats();
      const malformed = await failureOf(
        harness.client.getOnlineFeatures({
          features: ['user_stats', 'user_stats:ctr', 'user_stats:ctr'],
          entityRows: users('u1'),
          omitEventTimes: false,
        }),
      );
      expect(malformed.violations.map((v) => [v.field, v.reason])).toEqual([
        ['features[0]', 'INVALID_REFERENCE'],
        ['features[2]', 'DUPLICATE_REFERENCE'],
      ]);
      // A feature a `<view>:*` also reads, before or after it, would be a column named twice.
      for (const features of [
        ['user_stats:*', 'user_stats:ctr'],
        ['user_stats:ctr', 'user_stats:*'],
      ]) {
        const overlapping = await failureOf(
          harness.client.getOnlineFeatures({
            features,
            entityRows: users('u1'),
            omitEventTimes: false,
          }),
        );
        expect(overlapping.code).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(overlapping.violations.map((v) => [v.field, v.reason])).toEqual([
          ['features[1]', 'DUPLICATE_REFERENCE'],
        ]);
      }
      // A read plan is kept per feature list: one malformed reference that joins two valid ones
      // with a newline is not the list of those two.
      await harness.client.getOnlineFeatures({
        features: ['user_stats:ctr', 'user_stats:plays'],
        entityRows: users('u1'),
        omitEventTimes: false,
      });
      const joined = await failureOf(
        harness.client.getOnlineFeatures({
          features: ['user_stats:ctr\nuser_stats:plays'],
          entityRows: users('u1'),
          omitEventTimes: false,
        }),
      );
      expect(joined.violations.map((v) => [v.field, v.reason])).toEqual([
        ['features[0]', 'INVALID_REFERENCE'],
      ]);
      const badKey = await failureOf(
        harness.client.getOnlineFeatures({
          features: ['user_stats:ctr'],
          entityRows: { user_id: { values: [str('u1'), int(3)] } },
          omitEventTimes: false,
        }),
      );
      expect(badKey.violations.map((v) => [v.field, v.reason])).toEqual([
        ['entity_rows.user_id.values[1]', 'WRONG_VALUE_TYPE'],
      ]);
      // Columns no requested view uses are ignored, whatever their length; the ones it uses must
      // be there and of one length.
      const extraColumns = await harness.client.getOnlineFeatures({
        features: ['user_stats:ctr'],
        entityRows: { aaa: { values: [] }, ...users('u1'), zzz: { values: [str('a'), str('b')] } },
        omitEventTimes: false,
      });
      expect(extraColumns.columns[0]?.values).toHaveLength(1);
      const missingKey = await failureOf(
        harness.client.getOnlineFeatures({
          features: ['user_stats:ctr'],
          entityRows: { item_id: { values: [str('i1')] } },
          omitEventTimes: false,
        }),
      );
      expect(missingKey.violations.map((v) => [v.field, v.reason])).toEqual([
        ['entity_rows.user_id', 'REQUIRED'],
      ]);
      // A join key that is also a property every object inherits, not sent: REQUIRED, not a
      // TypeError on Object's `constructor` (INTERNAL).
      await harness.client.applyEntity({
        entity: { ...userEntity, name: 'ctor', joinKey: 'constructor' },
        requestId: '',
      });
      await harness.client.applyFeatureView({
        featureView: userStatsView({ name: 'ctor_stats', entities: ['ctor'], tags: {} }),
        requestId: '',
        validateOnly: false,
      });
      const inherited = await failureOf(
        harness.client.getOnlineFeatures({
          features: ['ctor_stats:ctr'],
          entityRows: users('u1'),
          omitEventTimes: false,
        }),
      );
      expect(inherited.violations.map((v) => [v.field, v.reason])).toEqual([
        ['entity_rows.constructor', 'REQUIRED'],
      ]);
      const unkeyed = await failureOf(
        harness.client.writeFeatures({
          featureView: 'ctor_stats',
          rows: [userRow('u1', seconds(-1), { ctr: double(1) })],
          requestId: '',
        }),
      );
      expect(unkeyed.violations.map((v) => [v.field, v.reason])).toEqual([
        ['rows[0].entity_key.constructor', 'REQUIRED'],
        ['rows[0].entity_key.user_id', 'UNKNOWN_JOIN_KEY'],
      ]);
      const noRows = await failureOf(
        harness.client.getOnlineFeatures({
          features: ['user_stats:ctr'],
          entityRows: users(),
          omitEventTimes: false,
        }),
      );
      expect(noRows.violations.map((v) => [v.field, v.reason])).toEqual([
        ['entity_rows', 'REQUIRED'],
      ]);
      const manyRefs = await failureOf(
        harness.client.getOnlineFeatures({
          features: Array.from({ length: 1001 }, (_, i) => `user_stats:f${i}`),
          entityRows: users('u1'),
          omitEventTimes: false,
        }),
      );
      expect(manyRefs.code).toBe(GrpcCode.INVALID_ARGUMENT);
      expect(manyRefs.errorInfo?.reason).toBe('LIMIT_EXCEEDED');
      const manyRows = await failureOf(
        harness.client.writeFeatures({
          featureView: 'user_stats',
          rows: Array.from({ length: 10_001 }, (_, i) => userRow(`u${i}`, seconds(0), {})),
          requestId: '',
        }),
      );
      expect(manyRows.errorInfo?.reason).toBe('LIMIT_EXCEEDED');
      const manyEntities = await failureOf(
        harness.client.getOnlineFeatures({
          features: ['user_stats:ctr'],
          entityRows: users(...Array.from({ length: 10_001 }, (_, i) => `u${i}`)),
          omitEventTimes: false,
        }),
      );
      expect(manyEntities.violations.map((v) => [v.field, v.reason])).toEqual([
        ['entity_rows', 'LIMIT_EXCEEDED'],
      ]);
    });

    it('reads a record older than the TTL as EXPIRED', async () => {
      await harness.client.applyEntity({ entity: userEntity, requestId: '' });
      await harness.client.applyFeatureView({
        featureView: userStatsView({ ttl: { seconds: 60, nanos: 0 } }),
        requestId: '',
        validateOnly: false,
      });
      await harness.client.writeFeatures({
        featureView: 'user_stats',
        rows: [
          userRow('old', seconds(-120), { ctr: double(1) }),
          userRow('fresh', seconds(-30), { ctr: double(2) }),
        ],
        requestId: '',
      });
      const read = await harness.client.getOnlineFeatures({
        features: ['user_stats:ctr'],
        entityRows: users('old', 'fresh'),
        omitEventTimes: false,
      });
      expect(read.columns[0]?.statuses).toEqual([
        FeatureStatus.FEATURE_STATUS_EXPIRED,
        FeatureStatus.FEATURE_STATUS_PRESENT,
      ]);
      expect(read.columns[0]?.values[0]).toEqual({ kind: undefined });
    });

    it('returns the first response to a retried request_id, and refuses the id reused', async () => {
      await registerUserStats();
      const request = {
        featureView: 'user_stats',
        rows: [userRow('u1', seconds(-5), { ctr: double(1) })],
        requestId: 'req-1',
      };
      const first = await harness.client.writeFeatures(request);
      // The row written meanwhile must not be overwritten by the retry.
      await harness.client.writeFeatures({
        featureView: 'user_stats',
        rows: [userRow('u1', seconds(-3), { ctr: double(3) })],
        requestId: '',
      });
      const retry = await harness.client.writeFeatures(request);
      expect(retry).toEqual(first);
      // Another request under the same id would otherwise be answered as written, and dropped.
      const reused = await failureOf(
        harness.client.writeFeatures({
          ...request,
          rows: [userRow('u1', seconds(-1), { ctr: double(2) })],
        }),
      );
      expect(reused.code).toBe(GrpcCode.INVALID_ARGUMENT);
      expect(reused.violations.map((v) => [v.field, v.reason])).toEqual([
        ['request_id', 'REQUEST_ID_REUSED'],
      ]);
      const read = await harness.client.getOnlineFeatures({
        features: ['user_stats:ctr'],
        entityRows: users('u1'),
        omitEventTimes: true,
      });
      expect(read.columns[0]?.values).toEqual([double(3)]);
    });

    it('tells apart, under one request_id, an ApplyFeatureView with online false and one without it', async () => {
      await harness.client.applyEntity({ entity: userEntity, requestId: '' });
      const offline = await harness.client.applyFeatureView({
        featureView: userStatsView({ online: false }),
        requestId: 'apply-1',
        validateOnly: false,
      });
      expect(offline.featureView?.online).toBe(false);
      // Unset means the default (online): another request, not a retry to answer as applied.
      const reused = await failureOf(
        harness.client.applyFeatureView({
          featureView: userStatsView({ online: undefined }),
          requestId: 'apply-1',
          validateOnly: false,
        }),
      );
      expect(reused.violations.map((v) => [v.field, v.reason])).toEqual([
        ['request_id', 'REQUEST_ID_REUSED'],
      ]);
    });

    it('refuses reads of an offline view and writes to a stream view', async () => {
      await harness.client.applyEntity({ entity: userEntity, requestId: '' });
      await harness.client.applyEntity({ entity: itemEntity, requestId: '' });
      await harness.client.applyFeatureView({
        featureView: userStatsView({ online: false }),
        requestId: '',
        validateOnly: false,
      });
      await harness.client.applyFeatureView({
        featureView: itemPlaysView(),
        requestId: '',
        validateOnly: false,
      });
      const offline = await failureOf(
        harness.client.getOnlineFeatures({
          features: ['user_stats:ctr'],
          entityRows: users('u1'),
          omitEventTimes: false,
        }),
      );
      expect(offline.code).toBe(GrpcCode.FAILED_PRECONDITION);
      const stream = await failureOf(
        harness.client.writeFeatures({
          featureView: 'item_plays',
          rows: [{ entityKey: { item_id: str('i1') }, values: {}, eventTime: seconds(0) }],
          requestId: '',
        }),
      );
      expect(stream.code).toBe(GrpcCode.FAILED_PRECONDITION);
      const pushStatus = await failureOf(
        harness.client.getAggregationStatus({ featureView: 'user_stats' }),
      );
      expect(pushStatus.code).toBe(GrpcCode.FAILED_PRECONDITION);
      const missingStatus = await failureOf(
        harness.client.getAggregationStatus({ featureView: 'nope' }),
      );
      expect(missingStatus.code).toBe(GrpcCode.NOT_FOUND);
      const status = await harness.client.getAggregationStatus({ featureView: 'item_plays' });
      expect(status.status?.featureView).toBe('item_plays');
    });
  });
}
