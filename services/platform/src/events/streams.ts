/**
 * Streams that several services declare. Every service declares the streams it uses at start-up
 * (idempotently), so a stream shared by producers and consumers of different services must be
 * specified once, here: two services declaring it differently would keep rewriting its limits.
 * Streams with a single owner (exposures, decisions, allocations) are declared by that service.
 */
import type { StreamSpec } from './bus';

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;

/**
 * `OutcomeEvent`s (play, skip, save, …) on `tandem.events.v1.outcome.<name>`: published by backends
 * (or Analysis for `TrackEvents` callers), consumed by FeatureStore, Ranker and Analysis. Kept a
 * week so a new streaming view can replay its longest window and Analysis can catch up.
 */
export const OUTCOME_STREAM = {
  name: 'TANDEM_OUTCOMES',
  subjects: ['tandem.events.v1.outcome.>'],
  maxAgeMs: 7 * DAY_MS,
} as const satisfies StreamSpec;

/**
 * `ConfigChangeEvent`s of every domain on `tandem.events.v1.config.<domain>`: only a hint that
 * replicas should reload (storage stays the source of truth), so an hour is plenty.
 */
export const CONFIG_STREAM: StreamSpec = {
  name: 'TANDEM_CONFIG',
  subjects: ['tandem.events.v1.config.>'],
  maxAgeMs: HOUR_MS,
};
