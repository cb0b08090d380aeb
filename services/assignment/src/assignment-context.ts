/**
 * What the handlers and consumers of one Assignment replica share: the in-memory configuration,
 * the repositories, exposure logging and resolve tokens.
 */
import type { Logger } from '../../platform/src/logging';
import type { ConfigurationWrites } from './configuration-writes';
import type { ConfigurationChanges } from './events/config-changes';
import type { ExposureLog } from './events/exposure-log';
import type { LiveConfiguration } from './live-configuration';
import type { ResolveTokens } from './resolve-token';
import type { ConfigurationStore } from './store/configuration-store';
import type { StickyAssignments } from './store/sticky-assignments';

export interface AssignmentContext {
  readonly configuration: LiveConfiguration;
  readonly store: ConfigurationStore;
  readonly changes: ConfigurationChanges;
  /** Configuration writes, one at a time and idempotent by request id. */
  readonly writes: ConfigurationWrites;
  readonly sticky: StickyAssignments;
  readonly exposures: ExposureLog;
  readonly tokens: ResolveTokens;
  readonly logger: Logger;
  /** Sticky TTL of experiments that set none. */
  readonly defaultStickyTtlMs: number;
  /** The most bytes a list response may take (see `maxPageBytes`). */
  readonly maxPageBytes: number;
}
