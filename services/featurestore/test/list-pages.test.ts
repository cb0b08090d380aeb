/**
 * List pages end within the message size the server sends (TANDEM_GRPC_MAX_MESSAGE_BYTES, set
 * low here): a page of large definitions ends early with a token, rather than fail the call.
 */
import {
  ListEntitiesResponse,
  ListFeatureViewsResponse,
} from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { startHarness, type RunningHarness } from './support/feature-store-harness';
import { userEntity, userStatsView } from './support/fixtures';

const MAX_MESSAGE_BYTES = 4096;

describe(`a replica sending messages of ${MAX_MESSAGE_BYTES} bytes at most`, () => {
  let harness: RunningHarness;

  beforeAll(async () => {
    harness = await startHarness({
      env: { TANDEM_GRPC_MAX_MESSAGE_BYTES: String(MAX_MESSAGE_BYTES) },
    });
  });

  afterAll(async () => {
    await harness.stop();
  });

  it('ends its entity and feature view pages within that size, and pages on from there', async () => {
    // Five entities of ~1 KB and five views of ~2 KB: neither list fits in one message.
    const names = ['e1', 'e2', 'e3', 'e4', 'e5'];
    for (const name of names) {
      await harness.client.applyEntity({
        entity: { ...userEntity, name, joinKey: `${name}_id`, description: 'd'.repeat(1_000) },
        requestId: '',
      });
    }
    const base = userStatsView();
    for (const name of names) {
      await harness.client.applyFeatureView({
        featureView: userStatsView({
          name: `view_${name}`,
          entities: [name],
          features: base.features
            .slice(0, 2)
            .map((f) => ({ ...f, description: 'f'.repeat(1_000) })),
        }),
        validateOnly: false,
        requestId: '',
      });
    }

    const entities: string[] = [];
    let pages = 0;
    let pageToken = '';
    do {
      const page = await harness.client.listEntities({ pageSize: 0, pageToken });
      expect(ListEntitiesResponse.encode(page).finish().length).toBeLessThanOrEqual(
        MAX_MESSAGE_BYTES,
      );
      entities.push(...page.entities.map((e) => e.name));
      pageToken = page.nextPageToken;
      pages++;
    } while (pageToken !== '');
    expect(entities).toEqual(names);
    expect(pages).toBeGreaterThan(1);

    const views: string[] = [];
    pages = 0;
    do {
      const page = await harness.client.listFeatureViews({ pageSize: 1000, pageToken, entity: '' });
      expect(ListFeatureViewsResponse.encode(page).finish().length).toBeLessThanOrEqual(
        MAX_MESSAGE_BYTES,
      );
      views.push(...page.featureViews.map((v) => v.name));
      pageToken = page.nextPageToken;
      pages++;
    } while (pageToken !== '');
    expect(views).toEqual(names.map((name) => `view_${name}`));
    expect(pages).toBeGreaterThan(1);
  });
});
