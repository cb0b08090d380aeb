/**
 * An {@link EventSpool} in the service's store (MongoDB, or the embedded one): one document per
 * event, its id the event id, removed when taken or `ttlMs` after it was kept. Every replica of a
 * service shares it: a replica that starts takes what any replica kept, and publishing twice is
 * harmless (the stream's duplicate window and the publisher's gate skip a published event).
 */
import type { DocumentStore } from '../storage/collection';
import type { EventSpool, SpooledEvent } from './buffered-publisher';

interface SpooledEventDocument {
  readonly id: string;
  readonly subject: string;
  readonly data: Uint8Array;
  /** When it was kept (ms): a later keep of the same event replaces it. */
  readonly keptAt: number;
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
    async keep(events: readonly SpooledEvent[]): Promise<void> {
      const keptAt = Date.now();
      const expiresAt = new Date(keptAt + ttlMs);
      for (let i = 0; i < events.length; i += BATCH) {
        await collection.upsertIfNewer(
          events.slice(i, i + BATCH).map(({ subject, data, eventId }) => ({
            id: eventId,
            subject,
            data,
            keptAt,
            expiresAt,
          })),
          'keptAt',
        );
      }
    },
    async take(): Promise<SpooledEvent[]> {
      const events: SpooledEvent[] = [];
      for await (const { doc } of collection.scan()) {
        events.push({ subject: doc.subject, data: doc.data, eventId: doc.id });
      }
      for (let i = 0; i < events.length; i += BATCH) {
        await Promise.all(events.slice(i, i + BATCH).map((e) => collection.delete(e.eventId)));
      }
      return events;
    },
  };
}
