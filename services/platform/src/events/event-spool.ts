/**
 * An {@link EventSpool} in the service's store (MongoDB, or the embedded one): one document per
 * keeping of an event, removed once queued again or `ttlMs` after it was kept. Every replica of a
 * service shares it: any replica queues what any replica kept, and publishing twice is harmless
 * (the stream's duplicate window and the publisher's gate skip a published event).
 *
 * A document's id is its place in the order of keeping (when, which keeping, which position in
 * it), so `peek` reads the first ones in id order: a page, not the whole spool, which holds up to
 * a buffer's worth of events (100,000 by default) per replica that stopped while NATS was down.
 * An event kept twice (queued again, then kept by a publisher that closed before publishing it)
 * has two documents and is queued twice; `forget` removes only the document it peeked.
 */
import { randomBytes } from 'node:crypto';
import type { DocumentStore } from '../storage/collection';
import type { EventSpool, KeepOptions, SpooledEvent } from './buffered-publisher';

interface SpooledEventDocument {
  /** `<kept at, ms, 15 digits>-<keeping, 8 hex digits>-<position in it, 9 digits>`. */
  readonly id: string;
  /** Absent from documents of earlier builds, whose id is the event id. */
  readonly eventId?: string;
  readonly subject: string;
  readonly data: Uint8Array;
  /** When it was kept (ms). */
  readonly keptAt: number;
  /** Its place among the events of its keeping. */
  readonly position: number;
  readonly expiresAt: Date;
}

/** Documents written or deleted in one batch. */
const BATCH = 500;

export async function openEventSpool(
  store: DocumentStore,
  name: string,
  ttlMs: number,
): Promise<EventSpool> {
  const collection = await store.collection<SpooledEventDocument>({
    name: `spooled_${name}`,
    expireAtField: 'expiresAt',
  });
  return {
    async keep(events: readonly SpooledEvent[], options: KeepOptions = {}): Promise<void> {
      const keptAt = Date.now();
      const expiresAt = new Date(keptAt + ttlMs);
      // Two replicas may keep in the same millisecond.
      const prefix = `${String(keptAt).padStart(15, '0')}-${randomBytes(4).toString('hex')}-`;
      for (let i = 0; i < events.length; i += BATCH) {
        if (options.signal?.aborted) return;
        const batch = events.slice(i, i + BATCH).map(({ subject, data, eventId }, j) => ({
          id: `${prefix}${String(i + j).padStart(9, '0')}`,
          eventId,
          subject,
          data,
          keptAt,
          position: i + j,
          expiresAt,
        }));
        // One write per batch (the ids are new: every document is created), not one per event:
        // a closing publisher has a second or so for a whole buffer.
        await collection.upsertIfNewer(batch, 'keptAt');
        options.onKept?.(batch.length);
      }
    },
    async peek(limit: number): Promise<SpooledEvent[]> {
      if (limit <= 0) return [];
      const page = await collection.list({ limit });
      return page.items.map(({ doc }) => ({
        subject: doc.subject,
        data: doc.data,
        eventId: doc.eventId ?? doc.id,
        handle: doc.id,
      }));
    },
    async forget(events: readonly SpooledEvent[]): Promise<void> {
      const handles = events.flatMap((event) => (event.handle === undefined ? [] : [event.handle]));
      for (let i = 0; i < handles.length; i += BATCH) {
        await Promise.all(handles.slice(i, i + BATCH).map((id) => collection.delete(id)));
      }
    },
  };
}
