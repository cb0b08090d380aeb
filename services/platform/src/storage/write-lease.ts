/**
 * Writes one at a time, within a replica and across the replicas sharing a storage. A write that
 * validates against state in memory and then stores must not run beside another such write: each
 * would validate against a state without the other (a feature view applied while its entity is
 * deleted, two experiments created at once in one layer range). Within a replica a queue orders
 * them; across replicas a lease document does, and the state in memory is brought up to the
 * stored one under it, so that every write validates against every replica's writes.
 *
 * How far a holder brings it up is the service's business (a version compared, say), except after
 * a holder that may have stored a change without telling the other replicas of it: one that died
 * holding the lease, or whose write failed after storing. Such a holder leaves the lease to be
 * taken over, and the next holder, told so, reloads everything.
 */
import { randomBytes } from 'node:crypto';
import { AbortedError, AlreadyExistsError, NotFoundError } from '../errors';
import type { Collection, DocumentStore, Versioned } from './collection';

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

/** A lease taken by {@link WriteLease.acquire}: called, it releases the lease. */
export interface HeldLease {
  /**
   * Releases the lease; never throws (a lease it could not release expires). `unsettled`: the
   * write it guarded may have stored a change the other replicas were not told of (a failure
   * after storing). The lease is then left expired rather than deleted, so that the next holder
   * takes it over and knows (see {@link takenOver}).
   */
  (options?: { readonly unsettled?: boolean }): Promise<void>;
  /**
   * Whether it was taken over from a holder that did not release it: one that died or stalled
   * past its time, or released it unsettled. What that holder stored may not have been announced.
   */
  readonly takenOver: boolean;
}

/**
 * A lease stored as one document of a `leases` collection, taken by inserting it (or by replacing
 * one past its time).
 */
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
   * Takes the lease, waiting up to `waitMs` for another holder to release it. While held, it is
   * renewed every third of `ttlMs`, so a long write keeps it; a lease not renewed (its holder
   * died) is taken over once `ttlMs` has passed. Throws `AbortedError` when it could not be had
   * in time.
   */
  async acquire(
    holder: string,
    { ttlMs, waitMs }: { readonly ttlMs: number; readonly waitMs: number },
  ): Promise<HeldLease> {
    const deadline = Date.now() + waitMs;
    let releasedMeanwhile = false;
    for (;;) {
      const token = randomBytes(12).toString('base64url');
      const lease = { id: this.id, holder, token, expiresAt: Date.now() + ttlMs };
      try {
        return this.held(await this.leases.insert(lease), ttlMs, false);
      } catch (error) {
        if (!(error instanceof AlreadyExistsError)) throw error;
      }
      const held = await this.leases.get(this.id);
      // Released since the insert found it held: free now, whatever the deadline (once: a read
      // that keeps missing the lease the insert finds, a lagging secondary, waits as usual).
      if (held === undefined && !releasedMeanwhile) {
        releasedMeanwhile = true;
        continue;
      }
      if (held !== undefined && held.doc.expiresAt < Date.now()) {
        // Replaced rather than deleted and taken again: only the replica that takes it over
        // knows it did, so no other one may take it in between, unaware.
        try {
          return this.held(await this.leases.replace(lease, held.version), ttlMs, true);
        } catch (error) {
          if (!(error instanceof AbortedError || error instanceof NotFoundError)) throw error;
        }
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

  /**
   * Whether the lease is left past its time: its holder died or stalled holding it, or released it
   * unsettled. Whoever takes it next is told it took it over (see {@link HeldLease.takenOver}).
   */
  async abandoned(): Promise<boolean> {
    const held = await this.leases.get(this.id);
    return held !== undefined && held.doc.expiresAt < Date.now();
  }

  /** The lease just taken as `taken`: renewed until released. */
  private held(taken: Versioned<LeaseDocument>, ttlMs: number, takenOver: boolean): HeldLease {
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
    const release = async ({ unsettled = false } = {}): Promise<void> => {
      clearInterval(renewal);
      // A renewal under way would change the version the write below expects.
      await renewing;
      try {
        // Only this taking's: a lease taken over after it expired is someone else's now.
        const current = await this.leases.get(this.id);
        if (current?.doc.token !== taken.doc.token) return;
        if (unsettled) await this.leases.replace({ ...current.doc, expiresAt: 0 }, current.version);
        else await this.leases.delete(this.id, current.version);
      } catch {
        // It expires after `ttlMs` (and is then taken over); the write it guarded is done.
      }
    };
    return Object.assign(release, { takenOver });
  }
}

/** What makes writes one at a time across replicas. */
export interface AcrossReplicas {
  /**
   * Takes the storage lease, waiting for another holder up to `waitMs` (the replica's default
   * when not given).
   */
  lease(waitMs?: number): Promise<HeldLease>;
  /**
   * Brings the state in memory up to the stored one. `everything`: the lease was taken over (see
   * {@link HeldLease.takenOver}), so storage may hold a change no version or notice tells of.
   */
  refresh(everything: boolean): Promise<unknown>;
  /**
   * Whether the write just made may have stored a change the other replicas were not told of;
   * `failure` is what it threw, undefined when it succeeded. The lease is then released
   * unsettled. When not given, never.
   */
  unsettled?(failure: unknown): boolean;
  /**
   * Whether the lease is left past its time (see {@link WriteLease.abandoned}), for
   * {@link SerialWrites.takeOverAbandoned}. When not given, never.
   */
  abandoned?(): Promise<boolean>;
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
   * Takes over the lease when its holder left it past its time, and releases it at once: taking it
   * over brings the state in memory up to everything stored (see {@link AcrossReplicas.refresh}),
   * so what that holder may have stored without telling the other replicas is taken in and, by a
   * service whose refresh announces it, announced, without waiting for the next write. For a
   * periodic check. Returns whether it took the lease; false when it was not left, or another
   * replica took it first.
   */
  async takeOverAbandoned(): Promise<boolean> {
    const across = this.acrossReplicas;
    if (across?.abandoned === undefined || !(await across.abandoned())) return false;
    let took = false;
    try {
      await this.exclusively(() => {
        took = true;
        return Promise.resolve();
      }, 0);
    } catch (error) {
      // Taken by another replica in between (which refreshes in its turn).
      if (error instanceof AbortedError) return false;
      throw error;
    }
    return took;
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
      const lease = await across.lease(leaseWaitMs);
      // Until the refresh has taken it in, what a holder before left unannounced is this one's.
      let unsettled = lease.takenOver;
      try {
        await across.refresh(lease.takenOver);
        unsettled = false;
        const result = await write();
        unsettled = across.unsettled?.(undefined) ?? false;
        return result;
      } catch (error) {
        unsettled ||= across.unsettled?.(error) ?? false;
        throw error;
      } finally {
        await lease({ unsettled });
      }
    });
  }
}
