/**
 * The stored records of push-sourced views: one document per (view, entity key), written with
 * `upsertIfNewer` so a late write loses, and expiring through a TTL index when the view has a TTL.
 *
 * Beside the records, a change log lets every replica pick up the rows other replicas wrote
 * within its sync interval: each write appends entries with increasing sequence numbers (ids that
 * sort in sequence order), and a replica reads the entries after the last one it applied. The
 * log expires after a retention period; a replica that restarts loads the records themselves.
 */
import { AbortedError, NotFoundError } from '../../../platform/src/errors';
import type {
  Collection,
  ConditionalWriteOutcome,
  DocumentStore,
  Versioned,
} from '../../../platform/src/storage/collection';
import type { StoredValue } from '../contract-mapping';

/** One record of one view. */
export interface FeatureRowDocument {
  /** See {@link rowId}; `<view>/<encoded entity key>` in records of earlier builds. */
  readonly id: string;
  readonly view: string;
  readonly entityKey: string;
  /** The record's event time, ms since the Unix epoch. */
  readonly eventTime: number;
  /**
   * What `upsertIfNewer` compares: the event time, then the write's order, as fixed-width digits
   * (see {@link rowVersion}), so an older event never replaces a newer one and an equal event
   * time written later does.
   */
  readonly version: string;
  /** Feature name → value; an absent feature is null. */
  readonly values: Readonly<Record<string, StoredValue>>;
  /** Event time + the view's TTL; unset when the view's records never expire. */
  readonly expiresAt?: Date;
  /**
   * The creation time (ms) of the view the record was written to: a view deleted and applied
   * again under its name is another one, whose records the old one's deletion leaves alone.
   * Absent from records of earlier builds.
   */
  readonly registration?: number;
}

/** A record as the change log carries it. */
export interface ChangedRow {
  readonly entityKey: string;
  readonly eventTime: number;
  readonly values: Readonly<Record<string, StoredValue>>;
}

interface ChangeLogDocument {
  /** The sequence number, zero-padded so ids sort in sequence order. */
  readonly id: string;
  readonly view: string;
  /** The replica that wrote the rows (it already holds them). */
  readonly origin: string;
  readonly rows: readonly ChangedRow[];
  /** The write's order (see {@link rowVersion}); absent from entries of earlier builds. */
  readonly order?: number;
  /**
   * The creation time (ms) of the view the rows were written to: a view deleted and applied
   * again under its name is another one. Absent from entries of earlier builds.
   */
  readonly registration?: number;
  readonly expiresAt: Date;
}

interface SequenceDocument {
  readonly id: string;
  readonly next: number;
}

/** One batch of changed rows read from the log. */
export interface ChangeLogEntry {
  readonly sequence: number;
  readonly view: string;
  readonly origin: string;
  readonly rows: readonly ChangedRow[];
  /** The write's order (see {@link rowVersion}); 0 for an entry of an earlier build. */
  readonly order: number;
  /** The view's creation time (ms) when written; undefined for an entry of an earlier build. */
  readonly registration: number | undefined;
}

/** What a change-log entry says of the write that stored its rows. */
export interface WriteOrigin {
  readonly view: string;
  /** The view's creation time (ms): which view of that name. */
  readonly registration: number;
  /** The replica that wrote the rows (it already holds them). */
  readonly origin: string;
  /** The write's order (see {@link rowVersion}). */
  readonly order: number;
}

const SEQUENCE_DIGITS = 15;
/** At most this many rows per change-log document. */
const ROWS_PER_LOG_ENTRY = 500;
/** Records read at once by {@link FeatureRowRepository.restampExpiryOf}. */
const RESTAMP_READ_BATCH = 200;
/**
 * At most this many bytes of rows (as {@link changedRowBytes} bounds them) per change-log
 * document: a quarter of MongoDB's 16 MiB document limit. 500 rows of 4,096-float vectors
 * would be 27 MiB of BSON.
 */
const BYTES_PER_LOG_ENTRY = 4 * 1024 * 1024;

/** An upper bound of a string's size in BSON (length prefix, UTF-8 bytes, terminator). */
function stringBytes(text: string): number {
  return 5 + 3 * text.length;
}

/** An upper bound of a stored value's size in BSON, without its element header. */
function valueBytes(value: StoredValue): number {
  if (typeof value === 'string') return stringBytes(value);
  if (typeof value === 'number') return 8;
  if (typeof value === 'boolean') return 1;
  if (value === null) return 0;
  // An array is a document keyed "0", "1", …: type byte, key, terminator per element.
  let bytes = 5;
  for (let i = 0; i < value.length; i++) {
    const item = value[i];
    bytes += 2 + String(i).length + (typeof item === 'string' ? stringBytes(item) : 8);
  }
  return bytes;
}

/** An upper bound of a changed row's size in BSON, within a change-log document's `rows`. */
export function changedRowBytes(row: ChangedRow): number {
  // Element header and document framing, `entityKey`, `eventTime` and the `values` header.
  let bytes = 64 + stringBytes(row.entityKey);
  for (const [feature, value] of Object.entries(row.values)) {
    bytes += 2 + 3 * feature.length + valueBytes(value);
  }
  return bytes;
}

/** `rows` cut into change-log documents: in order, each within both per-document limits. */
export function logEntriesOf(rows: readonly ChangedRow[]): ChangedRow[][] {
  const entries: ChangedRow[][] = [];
  let current: ChangedRow[] = [];
  let bytes = 0;
  for (const row of rows) {
    const size = changedRowBytes(row);
    if (
      current.length > 0 &&
      (current.length === ROWS_PER_LOG_ENTRY || bytes + size > BYTES_PER_LOG_ENTRY)
    ) {
      entries.push(current);
      current = [];
      bytes = 0;
    }
    current.push(row);
    bytes += size;
  }
  if (current.length > 0) entries.push(current);
  return entries;
}

/**
 * A record's id: the registration (creation time, ms) of the view it was written to, the view's
 * name and the entity key. A view applied again under a name writes records of its own, which a
 * write of the deleted one landing late cannot replace. Records of earlier builds have
 * `<view>/<entity key>`: view names start with a letter, so the two forms never meet.
 */
export function rowId(view: string, registration: number, entityKey: string): string {
  return `${registration}/${view}/${entityKey}`;
}

/**
 * The `version` of a record: its event time, then its write's order, both fixed width. The order
 * is a number storage hands out before the write (see {@link FeatureRowRepository.takeWriteOrder}),
 * so of two writes with the same event time the one that took it later wins, whichever lands
 * first and whatever the writers' clocks say; replicas order the rows they sync alike (the change
 * log carries it). Versions of earlier builds held the wall-clock write time (15 digits): the `1`
 * before the order makes every version of this build later than those at an equal event time,
 * and entries of earlier builds are applied with order 0 to match.
 */
export function rowVersion(eventTime: number, order: number): string {
  return `${String(eventTime).padStart(SEQUENCE_DIGITS, '0')}:1${sequenceId(order)}`;
}

/** The write order in a record's version; 0 for a version of an earlier build. */
export function orderOfVersion(version: string): number {
  const order = version.slice(version.indexOf(':') + 1);
  return order.length === SEQUENCE_DIGITS + 1 && order.startsWith('1') ? Number(order.slice(1)) : 0;
}

function sequenceId(sequence: number): string {
  return String(sequence).padStart(SEQUENCE_DIGITS, '0');
}

export class FeatureRowRepository {
  private constructor(
    private readonly rows: Collection<FeatureRowDocument>,
    private readonly changes: Collection<ChangeLogDocument>,
    private readonly sequences: Collection<SequenceDocument>,
    private readonly retentionMs: number,
  ) {}

  static async open(store: DocumentStore, retentionMs: number): Promise<FeatureRowRepository> {
    const rows = await store.collection<FeatureRowDocument>({
      name: 'feature_rows',
      indexes: [{ fields: ['view'] }],
      expireAtField: 'expiresAt',
    });
    const changes = await store.collection<ChangeLogDocument>({
      name: 'feature_changes',
      expireAtField: 'expiresAt',
    });
    const sequences = await store.collection<SequenceDocument>({ name: 'sequences' });
    return new FeatureRowRepository(rows, changes, sequences, retentionMs);
  }

  /** Writes records, each only when newer than the stored one; one outcome per document. */
  write(documents: readonly FeatureRowDocument[]): Promise<ConditionalWriteOutcome[]> {
    if (documents.length === 0) return Promise.resolve([]);
    return this.rows.upsertIfNewer(documents, 'version');
  }

  /**
   * Every live record of the view registered at `registration` (its creation time, ms), and those
   * of earlier builds, which carry none; streamed. A record of an earlier registration of the name
   * is one its deletion has not reached yet, or one a write that raced it stored. Without a
   * registration, every live record of the name.
   */
  async *scanView(view: string, registration?: number): AsyncIterable<FeatureRowDocument> {
    for await (const { doc } of this.records(view, registration)) yield doc;
  }

  private async *records(
    view: string,
    registration: number | undefined,
  ): AsyncIterable<Versioned<FeatureRowDocument>> {
    for await (const record of this.rows.scan({ view })) {
      const marked = record.doc.registration;
      if (registration === undefined || marked === undefined || marked === registration) {
        yield record;
      }
    }
  }

  /**
   * Sets the expiry of every stored record of the view registered at `registration` (see
   * {@link scanView}) to its event time + `ttlMs` (no expiry when 0), after the view's TTL
   * changed. Otherwise storage drops each record at the expiry of the TTL it was written under
   * while replicas serve it under the new one, and a replica started later misses it. A record
   * written meanwhile keeps what its writer set; one of another view of the name (applied again
   * meanwhile) keeps its own view's TTL. Stops early once `proceed` says no (another TTL change
   * or the view's deletion superseded it). Returns how many changed.
   */
  async restampExpiry(
    view: string,
    registration: number,
    ttlMs: number,
    proceed: () => boolean = () => true,
  ): Promise<number> {
    let changed = 0;
    for await (const record of this.records(view, registration)) {
      if (!proceed()) break;
      if (await this.restamp(record, ttlMs)) changed++;
    }
    return changed;
  }

  /**
   * {@link restampExpiry} for the records of these entity keys of the view registered at
   * `registration`, in the order given, a batch of reads at a time: those a TTL change must reach
   * before storage drops them by the old TTL. Returns how many changed.
   */
  async restampExpiryOf(
    view: string,
    registration: number,
    ttlMs: number,
    entityKeys: readonly string[],
    proceed: () => boolean = () => true,
  ): Promise<number> {
    let changed = 0;
    for (let start = 0; start < entityKeys.length; start += RESTAMP_READ_BATCH) {
      const keys = entityKeys.slice(start, start + RESTAMP_READ_BATCH);
      // A key's record has this build's id, or one of an earlier build, which names no
      // registration (as `scanView` takes them).
      const ids = keys.flatMap((key) => [rowId(view, registration, key), `${view}/${key}`]);
      const found = await this.rows.getMany(ids);
      for (const id of ids) {
        if (!proceed()) return changed;
        const record = found.get(id);
        if (record === undefined) continue;
        const marked = record.doc.registration;
        if (marked !== undefined && marked !== registration) continue;
        if (await this.restamp(record, ttlMs)) changed++;
      }
    }
    return changed;
  }

  /** Sets a record's expiry to its event time + `ttlMs`; false when it had it, or changed. */
  private async restamp(
    { doc, version }: Versioned<FeatureRowDocument>,
    ttlMs: number,
  ): Promise<boolean> {
    const { expiresAt, ...rest } = doc;
    const next: FeatureRowDocument =
      ttlMs > 0 ? { ...rest, expiresAt: new Date(doc.eventTime + ttlMs) } : rest;
    if (expiresAt?.getTime() === next.expiresAt?.getTime()) return false;
    try {
      await this.rows.replace(next, version);
      return true;
    } catch (error) {
      // Written meanwhile (its writer set the TTL it knew), or dropped by storage meanwhile.
      if (error instanceof AbortedError || error instanceof NotFoundError) return false;
      throw error;
    }
  }

  /**
   * Deletes, in batches (a view may hold millions), the records of the view registered at
   * `registration` (its creation time, ms) and those of earlier builds, which carry none; without
   * a registration, every record of the name (a purge before a view is created under it). A view
   * applied again under the name while a deletion runs, on this replica or another, keeps the
   * records written to it.
   */
  async deleteView(view: string, registration?: number): Promise<number> {
    if (registration === undefined) return this.rows.deleteWhere({ view });
    const deleted = await this.rows.deleteWhere({ view, registration });
    return deleted + (await this.rows.deleteWhere({ view, registration: null }));
  }

  /**
   * The order of a write to `view`, taken before its rows are written (see {@link rowVersion}).
   * A counter of its own, not the change log's: an entry's sequence is taken after its rows are
   * stored, so that entries up to a sequence are in storage by then (see `loadedAfter` in
   * online-views.ts). One per view, since it orders writes of one record: views' writes do not
   * contend for it.
   */
  async takeWriteOrder(view: string): Promise<number> {
    return (await this.sequences.increment(`feature_writes/${view}`, { next: 1 })).doc.next;
  }

  /** The stored records of these ids (live ones only), by id. */
  async readRows(ids: readonly string[]): Promise<Map<string, FeatureRowDocument>> {
    const found = await this.rows.getMany(ids);
    return new Map([...found].map(([id, { doc }]) => [id, doc]));
  }

  /** Appends rows a replica stored to the change log. */
  async appendChanges(
    { view, registration, origin, order }: WriteOrigin,
    rows: readonly ChangedRow[],
  ): Promise<void> {
    if (rows.length === 0) return;
    const entries = logEntriesOf(rows);
    const counter = await this.sequences.increment('feature_changes', { next: entries.length });
    const first = counter.doc.next - entries.length + 1;
    const expiresAt = new Date(Date.now() + this.retentionMs);
    for (const [i, entryRows] of entries.entries()) {
      await this.changes.insert({
        id: sequenceId(first + i),
        view,
        origin,
        rows: entryRows,
        order,
        registration,
        expiresAt,
      });
    }
  }

  /** The last sequence number handed out (0 before the first write). */
  async lastSequence(): Promise<number> {
    return (await this.sequences.get('feature_changes'))?.doc.next ?? 0;
  }

  /** Change-log entries after `sequence`, in sequence order. */
  async *changesAfter(sequence: number): AsyncIterable<ChangeLogEntry> {
    let afterId: string | undefined = sequenceId(sequence);
    while (afterId !== undefined) {
      const page = await this.changes.list({ afterId, limit: 200 });
      for (const { doc } of page.items) yield entryOf(doc);
      afterId = page.nextAfterId;
    }
  }

  /** The entries of `sequences` that are stored, in sequence order (one read). */
  async changesAmong(sequences: readonly number[]): Promise<ChangeLogEntry[]> {
    const found = await this.changes.getMany(sequences.map(sequenceId));
    return [...found.values()]
      .map(({ doc }) => entryOf(doc))
      .sort((a, b) => a.sequence - b.sequence);
  }
}

function entryOf(doc: ChangeLogDocument): ChangeLogEntry {
  return {
    sequence: Number(doc.id),
    view: doc.view,
    origin: doc.origin,
    rows: doc.rows,
    order: doc.order ?? 0,
    registration: doc.registration,
  };
}
