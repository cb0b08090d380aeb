/**
 * Configuration changes between replicas. The replica that made a change commits it to its own
 * memory at once and publishes a `ConfigChangeEvent` on `tandem.events.v1.config.assignment`;
 * every other replica reloads on receipt. The notification is only a hint (storage is the source
 * of truth and the periodic reload covers lost ones), so it goes through a small buffered
 * publisher and a write never waits for NATS.
 */
import {
  ConfigChangeEvent,
  ConfigChangeType,
} from '../../../../gen/ts/tandem/events/v1/config_change_event';
import type { EventBus, Subscription } from '../../../platform/src/events/bus';
import type { BufferedPublisher } from '../../../platform/src/events/buffered-publisher';
import type { Logger } from '../../../platform/src/logging';
import type { ConfigurationChange, LiveConfiguration } from '../live-configuration';
import { etagOf } from '../store/documents';
import { CONFIG_STREAM, CONFIG_SUBJECT } from './streams';

const DOMAIN = 'assignment';

export class ConfigurationChanges {
  constructor(
    private readonly configuration: LiveConfiguration,
    private readonly publisher: BufferedPublisher,
    private readonly replicaId: string,
  ) {}

  /** Commits a change this replica wrote and tells the others. Returns the new version. */
  async record(change: ConfigurationChange, changeType: ConfigChangeType): Promise<number> {
    const configVersion = await this.configuration.commit(change);
    const etag = change.stored ? etagOf(change.stored) : '';
    const eventId = `${DOMAIN}/${change.type}/${change.id}/${etag === '' ? `deleted@${configVersion}` : etag}`;
    this.publisher.enqueue(
      CONFIG_SUBJECT,
      ConfigChangeEvent,
      {
        eventId,
        eventTime: new Date(),
        domain: DOMAIN,
        resourceType: change.type,
        resourceId: change.id,
        changeType,
        etag,
        configVersion,
        originReplicaId: this.replicaId,
      },
      eventId,
    );
    return configVersion;
  }
}

/**
 * How long a replica's notification durable outlives the replica: replica ids change with every
 * pod, so NATS deletes durables idle this long rather than keep one per replica ever started. A
 * replica cut off from NATS for longer declares its durable again when it reconnects; the periodic
 * reload covers what it missed.
 */
const NOTIFICATION_DURABLE_IDLE_MS = 3_600_000;

/**
 * Reloads on other replicas' notifications. Each replica needs every notification, so each has
 * its own durable (named after the replica id) starting at new events.
 */
export function followConfigurationChanges(
  bus: EventBus,
  configuration: LiveConfiguration,
  replicaId: string,
  logger: Logger,
): Promise<Subscription> {
  return bus.subscribe(
    {
      stream: CONFIG_STREAM.name,
      durable: `assignment-config-${replicaId}`,
      filterSubjects: [CONFIG_SUBJECT],
      codec: ConfigChangeEvent,
      deliverPolicy: 'new',
      inactiveThresholdMs: NOTIFICATION_DURABLE_IDLE_MS,
      initialRetryDelayMs: 100,
      maxRetryDelayMs: 1000,
    },
    async ({ event }) => {
      if (event.originReplicaId === replicaId) return;
      if (
        configuration.loaded() &&
        event.configVersion !== 0 &&
        event.configVersion <= configuration.current().version
      ) {
        return;
      }
      const reloaded = await configuration.refresh();
      if (reloaded)
        logger.debug(
          { resource: `${event.resourceType}/${event.resourceId}` },
          'reloaded on notification',
        );
    },
  );
}
