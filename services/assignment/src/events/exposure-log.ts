/**
 * Exposure logging: one `ExposureEvent` per (experiment or holdout, unit) per UTC day at most.
 * Three mechanisms keep it at most once:
 * - this replica remembers which pairs it has logged today (bounded; the oldest are forgotten
 *   first), which is what `already_logged_count` reports;
 * - the publisher checks the exposure ledger in storage (`store/exposure-ledger.ts`) before
 *   publishing, and skips a pair another replica, or this one before a restart, logged today;
 * - the event id is derived from (kind, id, unit type, unit id, UTC day), so JetStream's duplicate
 *   window drops a repeat the ledger could not catch (two replicas at the same moment, storage
 *   unreachable).
 * Events go through a `BufferedPublisher`: logging never waits for NATS, and while NATS is down
 * they are buffered (bounded, drops counted) and published when it returns. An exposure the full
 * buffer drops is reported as dropped, not logged, and is not remembered as logged today.
 */
import { createHash } from 'node:crypto';
import type { BufferedPublisher } from '../../../platform/src/events/buffered-publisher';
import { ExposureEvent, ExposureKind } from '../../../../gen/ts/tandem/events/v1/exposure_event';
import { EXPOSURE_SUBJECT } from './streams';

/** What one call logged. */
export interface ExposureTally {
  logged: number;
  alreadyLogged: number;
  /** Not logged: the publishing buffer was full (or closing). */
  dropped: number;
}

const DAY_MS = 86_400_000;

/** The UTC day of a time, as `YYYY-MM-DD`. */
export function utcDay(time: Date): string {
  return new Date(Math.floor(time.getTime() / DAY_MS) * DAY_MS).toISOString().slice(0, 10);
}

/** The deterministic id of an exposure: the same on every replica for the same day. */
export function exposureEventId(
  kind: ExposureKind,
  id: string,
  unitType: string,
  unitId: string,
  day: string,
): string {
  const digest = createHash('sha256')
    .update(`${kind}\u0000${id}\u0000${unitType}\u0000${unitId}\u0000${day}`)
    .digest('base64url')
    .slice(0, 32);
  return `exposure-${day}-${digest}`;
}

/** The start of the UTC day an exposure event id names (ms), or undefined for another id. */
export function exposureDayStart(eventId: string): number | undefined {
  const day = /^exposure-(\d{4}-\d{2}-\d{2})-/.exec(eventId)?.[1];
  const start = day === undefined ? NaN : Date.parse(`${day}T00:00:00Z`);
  return Number.isNaN(start) ? undefined : start;
}

export class ExposureLog {
  /** Event ids logged recently (they embed the day), oldest first. */
  private readonly loggedToday = new Set<string>();

  constructor(
    private readonly publisher: BufferedPublisher,
    private readonly memoryCapacity: number,
  ) {}

  /** Logs `event` unless its pair was already logged today; the event id is filled in here. */
  log(event: Omit<ExposureEvent, 'eventId'>, tally: ExposureTally): void {
    const eventTime = event.eventTime ?? new Date();
    const subjectId =
      event.kind === ExposureKind.EXPOSURE_KIND_HOLDOUT ? event.holdoutId : event.experimentId;
    const eventId = exposureEventId(
      event.kind,
      subjectId,
      event.unit?.type ?? '',
      event.unit?.id ?? '',
      utcDay(eventTime),
    );
    if (this.loggedToday.has(eventId)) {
      tally.alreadyLogged++;
      return;
    }
    // Remembered only once queued: a dropped exposure is logged by the next apply that shows it.
    if (!this.publisher.enqueue(EXPOSURE_SUBJECT, ExposureEvent, { ...event, eventId }, eventId)) {
      tally.dropped++;
      return;
    }
    this.loggedToday.add(eventId);
    if (this.loggedToday.size > this.memoryCapacity) {
      const oldest = this.loggedToday.values().next();
      if (!oldest.done) this.loggedToday.delete(oldest.value);
    }
    tally.logged++;
  }
}
