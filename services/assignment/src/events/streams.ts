/**
 * The subjects and streams the Assignment service publishes to and consumes from, declared at
 * start-up. One stream per subject family, named after it, so another service declaring the same
 * family (FeatureStore's config notifications, say) declares the same stream, not an overlapping one.
 */
import type { StreamSpec } from '../../../platform/src/events/bus';

export const EXPOSURE_SUBJECT = 'tandem.events.v1.exposure';
export const ALLOCATION_SUBJECT = 'tandem.events.v1.allocation';
export const CONFIG_SUBJECT = 'tandem.events.v1.config.assignment';

const DAY_MS = 86_400_000;

/** How long the exposure stream keeps an exposure: its duplicate window cannot be longer. */
export const EXPOSURE_RETENTION_MS = 7 * DAY_MS;

export function exposureStream(duplicateWindowMs: number): StreamSpec {
  return {
    name: 'TANDEM_EXPOSURES',
    subjects: [EXPOSURE_SUBJECT],
    maxAgeMs: EXPOSURE_RETENTION_MS,
    duplicateWindowMs,
  };
}

export const ALLOCATION_STREAM: StreamSpec = {
  name: 'TANDEM_ALLOCATIONS',
  subjects: [ALLOCATION_SUBJECT],
  maxAgeMs: 7 * DAY_MS,
};

/** Config notifications of every domain, shared with the other services (see the kit). */
export { CONFIG_STREAM } from '../../../platform/src/events/streams';
