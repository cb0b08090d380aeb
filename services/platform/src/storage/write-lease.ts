/**
 * Writes one at a time, within a replica and across the replicas sharing a storage. A write that
 * validates against state in memory and then stores must not run beside another such write: each
 * would validate against a state without the other (a feature view applied while its entity is
 * deleted, two experiments created at once in one layer range). Within a replica a queue orders
 * them; across replicas a lease document does, and the state in memory is brought up to the
 * stored one under it, so that every write validates against every replica's writes.
 */
import { randomBytes } from 'node:crypto';
import { AbortedError, AlreadyExistsError } from '../errors';
import type { Collection, DocumentStore } from './collection';

/** Who may write until when (see {@link WriteLease.acquire}). */
interface LeaseDocument {
  readonly id: string;
  readonly holder: string;
  /** Unique to one taking of the lease, so that only that taking releases it. */
  readonly token: string;
  /** Milliseconds since the epoch. */
  readonly expiresAt: number;
}

/** How the ABORTED of a write that could not have the lease in time reads. */
export interface LeaseBusy {
  /** What the holder is writing, for the message: `the configuration`. */
  readonly what: string;
  /** The ErrorInfo reason. */
  readonly reason: string;
}

/** How often a replica waiting for a lease looks again. */
const LEASE_POLL_MS = 20;

/** A lease stored as one document of a `leases` collection, taken by inserting it. */
export class WriteLease {
  private constructor(
    private readonly leases: Collection<LeaseDocument>,
    private readonly id: string,
    private readonly busy: LeaseBusy,
  ) {}

  /** The lease named `id` in `store`'s `leases` collection (created when missing). */
  static async open(store: DocumentStore, id: string, busy: LeaseBusy): Promise<WriteLease> {
    return new WriteLease(await store.collection<LeaseDocument>({ name: 'leases' }), id, busy);
  }

  /**
   * Takes the lease, waiting up to `waitMs` for another holder to release it; returns its
   * release. While held, it is renewed every third of `ttlMs`, so a long write keeps it; a lease
   * not renewed (its holder died) is taken over once `ttlMs` has passed. Throws `AbortedError`
   * when it could not be had in time. The release never throws: a lease it could not delete
   * expires.
   */
  async acquire(
    holder: string,
    { ttlMs, waitMs }: { readonly ttlMs: number; readonly waitMs: number },
  ): Promise<() => Promise<void>> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      const token = randomBytes(12).toString('base64url');
      try {
        const taken = await this.leases.insert({
          id: this.id,
          holder,
          token,
          expiresAt: Date.now() + ttlMs,
        });
        let version = taken.version;
        let renewing: Promise<void> = Promise.resolve();
        const renewal = setInterval(() => {
          renewing = this.leases
            .replace({ ...taken.doc, expiresAt: Date.now() + ttlMs }, version)
            .then((renewed) => {
              version = renewed.version;
            })
            // Taken over or storage down: the write goes on; the lease expires as it would.
            .catch(() => undefined);
        }, ttlMs / 3);
        renewal.unref();
        return async () => {
          clearInterval(renewal);
          // A renewal under way would change the version the delete below expects.
          await renewing;
          try {
            // Only this taking's: a lease taken over after it expired is someone else's now.
            const current = await this.leases.get(this.id);
            if (current?.doc.token !== token) return;
            await this.leases.delete(this.id, current.version);
          } catch {
            // It expires after `ttlMs`; the write it guarded is done either way.
          }
        };
      } catch (error) {
        if (!(error instanceof AlreadyExistsError)) throw error;
      }
      const held = await this.leases.get(this.id);
      if (held !== undefined && held.doc.expiresAt < Date.now()) {
        await this.leases.delete(this.id, held.version).catch((error: unknown) => {
          if (!(error instanceof AbortedError)) throw error;
        });
        continue;
      }
      if (Date.now() >= deadline) {
        throw new AbortedError(
          `another replica (${held?.doc.holder ?? 'unknown'}) is writing ${this.busy.what}; retry`,
          { reason: this.busy.reason },
        );
      }
      await new Promise((resolve) => setTimeout(resolve, LEASE_POLL_MS));
    }
  }
}

/** What makes writes one at a time across replicas. */
export interface AcrossReplicas {
  /**
   * Takes the storage lease, waiting for another holder up to `waitMs` (the replica's default
   * when not given); resolves with its release.
   */
  lease(waitMs?: number): Promise<() => Promise<void>>;
  /** Brings the state in memory up to the stored one. */
  refresh(): Promise<unknown>;
}

/** A replica's writes, one at a time; also across replicas when given a lease. */
export class SerialWrites {
  private chain: Promise<unknown> = Promise.resolve();

  constructor(private readonly acrossReplicas?: AcrossReplicas) {}

  /** Runs `write` once every write this replica started before it has finished. */
  serially<T>(write: () => Promise<T>): Promise<T> {
    const run = this.chain.then(write, write);
    this.chain = run.catch(() => undefined);
    return run;
  }

  /**
   * Runs `write` as one write of the queue, holding the lease across replicas when there is one
   * and with the state in memory brought up to the stored one under it: for every write that
   * validates against that state before storing. `leaseWaitMs` bounds the wait for another
   * replica's lease, during which this replica's queue waits too.
   */
  exclusively<T>(write: () => Promise<T>, leaseWaitMs?: number): Promise<T> {
    const across = this.acrossReplicas;
    if (across === undefined) return this.serially(write);
    return this.serially(async () => {
      const release = await across.lease(leaseWaitMs);
      try {
        await across.refresh();
        return await write();
      } finally {
        await release();
      }
    });
  }
}
