/**
 * The traffic simulator of `make dev`: it plays a backend in front of Tandem so a newcomer sees the
 * loop turn. It configures (idempotently) an A/B test on the `home` surface and a streaming feature
 * view, then, at a steady rate, resolves users into variants (logging exposures), publishes the
 * `play` outcomes they cause on the event bus, and every few seconds reads the streaming features
 * those plays maintain and prints what the platform sees.
 */
import { Metadata, credentials } from '@grpc/grpc-js';
import { AssignmentServiceService } from '../gen/ts/tandem/assignment/v1/assignment_service';
import { AssignmentView } from '../gen/ts/tandem/assignment/v1/assignment';
import {
  AllocationMode,
  ExperimentStatus,
  HashVersion,
} from '../gen/ts/tandem/assignment/v1/experiment';
import { OutcomeEvent } from '../gen/ts/tandem/events/v1/outcome_event';
import { AggregationFunction, AggregationKey } from '../gen/ts/tandem/featurestore/v1/feature_view';
import { FeatureStatus } from '../gen/ts/tandem/featurestore/v1/featurestore_service';
import { ValueType, type FeatureValue } from '../gen/ts/tandem/featurestore/v1/value';
import { FeatureStoreClientDefinition } from '../services/featurestore/src/online-response-decoder';
import { AlreadyExistsError } from '../services/platform/src/errors';
import type { EventBus } from '../services/platform/src/events/bus';
import { createClient } from '../services/platform/src/grpc/client';
import type { Logger } from '../services/platform/src/logging';

export interface SimulatorOptions {
  readonly assignmentAddress: string;
  readonly featurestoreAddress: string;
  readonly bus: EventBus;
  readonly logger: Logger;
  readonly ratePerSecond: number;
  readonly adminToken: string | undefined;
}

const EXPERIMENT = 'home-ranking';
const ITEMS = Array.from({ length: 20 }, (_, i) => `item-${String(i + 1).padStart(2, '0')}`);
/** The treatment's ranking makes plays more likely: the effect Analysis would detect. */
const PLAY_PROBABILITY: Readonly<Record<string, number>> = { control: 0.3, treatment: 0.36 };

const minutes = (m: number) => ({ seconds: m * 60, nanos: 0 });

/** Runs until the process stops. */
export async function runSimulator(options: SimulatorOptions): Promise<void> {
  const metadata = new Metadata();
  if (options.adminToken) metadata.set('authorization', `Bearer ${options.adminToken}`);
  const insecure = credentials.createInsecure();
  const assignment = createClient(AssignmentServiceService, {
    address: options.assignmentAddress,
    credentials: insecure,
    metadata,
  });
  const features = createClient(FeatureStoreClientDefinition, {
    address: options.featurestoreAddress,
    credentials: insecure,
    metadata,
  });

  await configure(assignment, features);
  options.logger.info(
    { experiment: EXPERIMENT, featureView: 'item_plays' },
    'simulator configured: resolving users on surface "home" and publishing play events',
  );

  const tally = { resolved: 0, control: 0, treatment: 0, plays: 0, errors: 0 };
  let user = 0;
  const tick = async (): Promise<void> => {
    user = (user + 1) % 5000;
    const unit = { id: `user-${user}`, type: 'user' };
    const resolved = await assignment.resolve({
      unit,
      attributes: { country: user % 3 === 0 ? 'DE' : 'US' },
      surfaces: ['home'],
      apply: true,
      explain: false,
      requestId: '',
      view: AssignmentView.ASSIGNMENT_VIEW_BASIC,
    });
    tally.resolved += 1;
    const variant =
      resolved.assignments.find((a) => a.experimentId === EXPERIMENT)?.variantKey ?? 'control';
    if (variant === 'treatment') tally.treatment += 1;
    else tally.control += 1;
    if (Math.random() < (PLAY_PROBABILITY[variant] ?? 0.3)) {
      // Popular items get played more (a Zipf-like catalogue).
      const item =
        ITEMS[Math.min(ITEMS.length - 1, Math.floor(ITEMS.length * Math.random() ** 2))] ??
        'item-01';
      const event: OutcomeEvent = OutcomeEvent.fromPartial({
        eventId: `sim-${Date.now()}-${Math.random().toString(36).slice(2)}`,
        eventTime: new Date(),
        name: 'play',
        unit,
        itemId: item,
        value: 1,
        source: 'simulator',
        surface: 'home',
      });
      await options.bus.publish('tandem.events.v1.outcome.play', OutcomeEvent, event, {
        eventId: event.eventId,
      });
      tally.plays += 1;
    }
  };

  setInterval(() => {
    void report(features, tally, options.logger);
  }, 5000).unref();

  const intervalMs = 1000 / options.ratePerSecond;
  for (;;) {
    const started = Date.now();
    await tick().catch((error: unknown) => {
      tally.errors += 1;
      if (tally.errors % 100 === 1) options.logger.warn({ err: error }, 'simulated request failed');
    });
    const wait = intervalMs - (Date.now() - started);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
}

type AssignmentClient = ReturnType<typeof createClient<typeof AssignmentServiceService>>;
type FeatureStoreClient = ReturnType<typeof createClient<typeof FeatureStoreClientDefinition>>;

/**
 * Creates the layer, the experiment and the feature view unless they exist (a restart keeps them).
 * The README examples must work after it too, as dev/test/readme-examples.test.ts checks.
 */
export async function configure(
  assignment: AssignmentClient,
  features: FeatureStoreClient,
): Promise<void> {
  const ignoreExisting = (error: unknown): void => {
    if (!(error instanceof AlreadyExistsError)) throw error;
  };
  await assignment
    .createLayer({
      layer: {
        id: 'home',
        description: 'Ranking experiments on the home page',
        owner: 'dev',
        tags: [],
        allocations: [],
        etag: '',
      },
      requestId: '',
    })
    .catch(ignoreExisting);
  await assignment
    .createExperiment({
      experiment: {
        id: EXPERIMENT,
        description: 'New ranking policy on the home page',
        owner: 'dev',
        tags: ['simulator'],
        unitType: 'user',
        surfaces: ['home'],
        variants: [
          {
            key: 'control',
            description: 'current ranking',
            weight: 0.5,
            payload: { policy: 'home-popularity' },
          },
          {
            key: 'treatment',
            description: 'bandit ranking',
            weight: 0.5,
            payload: { policy: 'home-bandit' },
          },
        ],
        coverage: 1,
        layerId: 'home',
        layerRange: { start: 0, end: 0.5 },
        hashVersion: HashVersion.HASH_VERSION_V2,
        seed: EXPERIMENT,
        status: ExperimentStatus.EXPERIMENT_STATUS_UNSPECIFIED,
        allocationMode: AllocationMode.ALLOCATION_MODE_FIXED,
        sticky: false,
        overrides: [],
        etag: '',
      },
      requestId: '',
    })
    .catch(ignoreExisting);
  const current = await assignment.getExperiment({ id: EXPERIMENT });
  if (current.experiment?.status === ExperimentStatus.EXPERIMENT_STATUS_DRAFT) {
    await assignment.startExperiment({
      id: EXPERIMENT,
      etag: current.experiment.etag,
      requestId: '',
    });
  }

  await features.applyEntity({
    entity: {
      name: 'item',
      joinKey: 'item_id',
      valueType: ValueType.VALUE_TYPE_STRING,
      description: 'A catalogue item',
      owner: 'dev',
      etag: '',
    },
    requestId: '',
  });
  // The streaming example of services/featurestore/README.md applies this view too: a stream
  // source cannot change, so the two stay alike.
  await features.applyFeatureView({
    featureView: {
      name: 'item_plays',
      description: 'Plays per item, maintained from play events',
      owner: 'dev',
      tags: {},
      entities: ['item'],
      features: [
        {
          name: 'plays_5m',
          valueType: ValueType.VALUE_TYPE_INT64,
          description: 'plays in the last 5 minutes',
          vectorLength: 0,
        },
        {
          name: 'plays_1h',
          valueType: ValueType.VALUE_TYPE_INT64,
          description: 'plays in the last hour',
          vectorLength: 0,
        },
      ],
      ttl: minutes(0),
      source: {
        $case: 'streamSource',
        value: {
          subject: 'tandem.events.v1.outcome.play',
          eventNames: ['play'],
          key: AggregationKey.AGGREGATION_KEY_ITEM_ID,
          aggregations: [
            {
              feature: 'plays_5m',
              function: AggregationFunction.AGGREGATION_FUNCTION_COUNT,
              valueField: '',
              window: minutes(5),
            },
            {
              feature: 'plays_1h',
              function: AggregationFunction.AGGREGATION_FUNCTION_COUNT,
              valueField: '',
              window: minutes(60),
            },
          ],
        },
      },
      etag: '',
    },
    requestId: '',
    validateOnly: false,
  });
}

function asNumber(value: FeatureValue | undefined): number {
  const kind = value?.kind;
  if (kind?.$case === 'int64Value' || kind?.$case === 'doubleValue') return kind.value;
  return 0;
}

async function report(
  features: FeatureStoreClient,
  tally: { resolved: number; control: number; treatment: number; plays: number; errors: number },
  logger: Logger,
): Promise<void> {
  try {
    const read = await features.getOnlineFeatures({
      features: ['item_plays:plays_5m'],
      entityRows: {
        item_id: {
          values: ITEMS.map((id) => ({ kind: { $case: 'stringValue' as const, value: id } })),
        },
      },
      omitEventTimes: true,
    });
    const column = read.columns[0];
    const top = ITEMS.map((item, i) => ({
      item,
      plays:
        column?.statuses[i] === FeatureStatus.FEATURE_STATUS_PRESENT
          ? asNumber(column.values[i])
          : 0,
    }))
      .sort((a, b) => b.plays - a.plays)
      .slice(0, 3)
      .map((t) => `${t.item}=${t.plays}`)
      .join(' ');
    const share = tally.resolved > 0 ? ((100 * tally.treatment) / tally.resolved).toFixed(1) : '0';
    logger.info(
      `resolved ${tally.resolved} users (${share}% in treatment: the experiment owns half of layer "home", split 50/50), published ${tally.plays} plays, errors ${tally.errors}; top items by plays in the last 5 min: ${top}`,
    );
  } catch (error) {
    logger.warn({ err: error }, 'could not read features');
  }
}
