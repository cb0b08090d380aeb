/**
 * An {@link EventSpool} in the service's store (MongoDB, or the embedded one): one document per
 * event, its id the event id, removed once queued again or `ttlMs` after it was kept. Every
 * replica of a service shares it: any replica queues what any replica kept, and publishing twice
 * is harmless (the stream's duplicate window and the publisher's gate skip a published event).
 */
import { AbortedError } from '../errors';
import type { DocumentStore, Versioned } from '../storage/collection';
import type { EventSpool, SpooledEvent } from './buffered-publisher';

interface SpooledEventDocument {
  readonly id: string;
  readonly subject: string;
  readonly data: Uint8Array;
  /** When it was kept (ms), for the order of `peek`. */
  readonly keptAt: number;
  /** Its place among the events kept at `keptAt`, so they are queued again in their order. */
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
    async keep(events: readonly SpooledEvent[]): Promise<void> {
      const keptAt = Date.now();
      const expiresAt = new Date(keptAt + ttlMs);
      // Every keeping is written, bumping the version, even of an event kept before: a restore
      // that peeked the earlier version must not forget this one (see `forget`).
      for (let i = 0; i < events.length; i += BATCH) {
        await Promise.all(
          events
            .slice(i, i + BATCH)
            .map(({ subject, data, eventId }, j) =>
              collection.upsert({ id: eventId, subject, data, keptAt, position: i + j, expiresAt }),
            ),
        );
      }
    },
    async peek(limit: number): Promise<SpooledEvent[]> {
      if (limit <= 0) return [];
      const docs: Versioned<SpooledEventDocument>[] = [];
      for await (const stored of collection.scan()) docs.push(stored);
      docs.sort((a, b) => a.doc.keptAt - b.doc.keptAt || a.doc.position - b.doc.position);
      return docs.slice(0, limit).map(({ doc, version }) => ({
        subject: doc.subject,
        data: doc.data,
        eventId: doc.id,
        version,
      }));
    },
    async forget(events: readonly SpooledEvent[]): Promise<void> {
      const forgetOne = async ({ eventId, version }: SpooledEvent): Promise<void> => {
        try {
          await collection.delete(eventId, version);
        } catch (error) {
          // Kept again since it was peeked: that keeping stays.
          if (!(error instanceof AbortedError)) throw error;
        }
      };
      for (let i = 0; i < events.length; i += BATCH) {
        await Promise.all(events.slice(i, i + BATCH).map(forgetOne));
      }
    },
  };
}
