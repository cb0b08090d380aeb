/**
 * The exposure ledger: the ids of the exposure events published today, stored beside the
 * configuration and shared by every replica. The exposure publisher consults it before publishing
 * (as its `PublishGate`), so an (experiment, unit) pair logged by another replica, or by this one
 * before a restart, is not published again later the same day, whatever the stream's duplicate
 * window. That window still covers what the ledger cannot see: two replicas publishing the same
 * exposure within the same moment, and the time storage is unreachable.
 *
 * One small document per exposure, kept until its UTC day is over, plus the 24 hours a resolve
 * token stays valid (an exposure may be applied that late, with its own time) and an hour for
 * clocks, then removed by the store's expiry.
 *
 * What it decides is which copy of a pair is published: the first one acked, not necessarily the
 * one with the earliest exposure time (a replica that buffered an earlier exposure through a NATS
 * outage finds the pair published by another and skips its own). The stream's duplicate window
 * made the same choice before, within its hour.
 */
import type { PublishGate } from '../../../platform/src/events/buffered-publisher';
import type { Collection, DocumentStore } from '../../../platform/src/storage/collection';
import { exposureDayStart } from '../events/exposure-log';
import { TOKEN_VALIDITY_MS } from '../resolve-token';

interface LedgerEntry {
  /** The exposure event id (it embeds the UTC day). */
  readonly id: string;
  /** When this entry was written (ms); `upsertIfNewer` compares it, so rewriting one is harmless. */
  readonly recordedAt: number;
  readonly expiresAt: Date;
}

const DAY_MS = 86_400_000;
const GRACE_MS = 3_600_000;

/** How long after its day an exposure may still be logged, plus the grace for clocks. */
const KEEP_AFTER_DAY_MS = TOKEN_VALIDITY_MS + GRACE_MS;

/**
 * When the ledger may forget `eventId`: {@link KEEP_AFTER_DAY_MS} after its day is over, or
 * after a day and that from `now` for an id without a day.
 */
export function ledgerExpiry(eventId: string, now: number): Date {
  return new Date((exposureDayStart(eventId) ?? now) + DAY_MS + KEEP_AFTER_DAY_MS);
}

export class ExposureLedger implements PublishGate {
  private constructor(private readonly entries: Collection<LedgerEntry>) {}

  static async open(store: DocumentStore): Promise<ExposureLedger> {
    return new ExposureLedger(
      await store.collection<LedgerEntry>({ name: 'exposure_ledger', expireAtField: 'expiresAt' }),
    );
  }

  async alreadyPublished(eventIds: readonly string[]): Promise<ReadonlySet<string>> {
    return new Set((await this.entries.getMany(eventIds)).keys());
  }

  async published(eventIds: readonly string[]): Promise<void> {
    const now = Date.now();
    await this.entries.upsertIfNewer(
      [...new Set(eventIds)].map((id) => ({
        id,
        recordedAt: now,
        expiresAt: ledgerExpiry(id, now),
      })),
      'recordedAt',
    );
  }
}
