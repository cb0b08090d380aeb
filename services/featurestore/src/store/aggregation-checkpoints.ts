/**
 * Checkpoints of streaming aggregation state, one per (view, replica).
 *
 * A checkpoint is written in two parts so that its cost does not grow with the de-duplication
 * seen-set: the aggregate state (per-key buckets and counters) is written whole, in chunks of a
 * few MB under a new generation, and the event ids accepted since the previous checkpoint are
 * appended as one document (several of a few MB each when there are many: MongoDB refuses a
 * document over 16 MiB) that expires when the ids are no longer needed. A header document written
 * last makes the new generation current and says how many seen-id documents belong to it, so a
 * checkpoint interrupted half-way is simply not used (its events were never acked and come
 * again).
 *
 * A restore returns at most the aggregator's cap of seen ids, the newest: the seen-id documents
 * live as long as their ids may be needed (the longest window, by the clock), which at a high
 * event rate is far more ids than the aggregator keeps, and reading them all would make start-up
 * memory grow with the event rate. So a writer also deletes the oldest documents once the newer
 * ones hold the cap: a restore would leave them out anyway.
 */
import type { Logger } from '../../../platform/src/logging';
import type { Collection, DocumentStore } from '../../../platform/src/storage/collection';
import { dateOf } from '../contract-mapping';
import {
  DEFAULT_MAX_TRACKED_EVENT_IDS,
  type AggregationCheckpoint,
} from '../domain/window-aggregation';

interface CheckpointDocument {
  readonly id: string;
  /** `<view>/<replica>`, which every document of one checkpoint shares. */
  readonly owner: string;
  readonly kind: 'header' | 'state' | 'seen';
  /** header: the current generation; state: the generation the chunk belongs to. */
  readonly generation?: number;
  /** header: chunks of the current generation. */
  readonly chunkCount?: number;
  /** header: the last seen-id document included; seen: this document's number. */
  readonly seenSequence?: number;
  /** header: when it was written. */
  readonly checkpointTime?: Date;
  /** header: the creation time of the view it was written for (unset before it was recorded). */
  readonly registration?: number;
  /** header: counters kept beside the aggregator's own. */
  readonly extraCounters?: Readonly<Record<string, number>>;
  /** state: one chunk of the JSON of the state. */
  readonly data?: string;
  /** seen, as written before `idsJson`: `[event id, remember until]`, in acceptance order. */
  readonly ids?: readonly (readonly [string, number])[];
  /**
   * seen: the JSON of `[event id, remember until][]`, in acceptance order. One string rather than
   * nested arrays, which both stores check and encode element by element: with tens of thousands
   * of ids per checkpoint that took tens of milliseconds, the string a few.
   */
  readonly idsJson?: string;
  readonly expiresAt?: Date;
}

/** What a restore finds. */
export interface StoredCheckpoint {
  readonly checkpoint: AggregationCheckpoint;
  readonly checkpointTime: Date;
  readonly extraCounters: Readonly<Record<string, number>>;
}

/**
 * Characters of state JSON, or of seen-id JSON, per document: at most 12 MB of UTF-8, within
 * MongoDB's 16 MiB.
 */
const CHUNK_CHARS = 4_000_000;

/** Documents read per page when a view's are deleted: a few pieces of state at a time. */
const DELETE_PAGE_SIZE = 4;

/** Options of {@link AggregationCheckpoints.forOwner}. */
export interface CheckpointWriterOptions {
  /**
   * The most seen event ids a restore returns (the newest): the aggregator's `maxTrackedEventIds`.
   * @default DEFAULT_MAX_TRACKED_EVENT_IDS
   */
  readonly maxSeenEventIds?: number;
  /** Where a restore that leaves older seen ids out says so. Unset: it is not logged. */
  readonly logger?: Logger;
  /**
   * The view's creation time. A checkpoint written for another one (the view deleted and applied
   * again, with a replica writing its last checkpoint of the old view after the deletion) is
   * discarded on restore rather than restored into the new view.
   */
  readonly registration?: number;
}

export class AggregationCheckpoints {
  private constructor(private readonly documents: Collection<CheckpointDocument>) {}

  static async open(store: DocumentStore): Promise<AggregationCheckpoints> {
    const documents = await store.collection<CheckpointDocument>({
      name: 'aggregation_checkpoints',
      indexes: [{ fields: ['owner'] }],
      expireAtField: 'expiresAt',
    });
    return new AggregationCheckpoints(documents);
  }

  /** The checkpoint writer of one view on one replica. */
  forOwner(
    view: string,
    replicaId: string,
    options: CheckpointWriterOptions = {},
  ): CheckpointWriter {
    return new CheckpointWriter(this.documents, `${view}/${replicaId}`, options);
  }

  /**
   * Deletes every checkpoint of a view (all replicas). Every document id of the view starts with
   * `<view>/` (see `forOwner`), so in id order they are one run, read a few at a time (a piece of
   * state holds up to 12 MB): not every view's state, which DeleteFeatureView would wait for.
   */
  async deleteView(view: string): Promise<void> {
    const prefix = `${view}/`;
    // Ids greater than the prefix itself: where the run starts.
    let afterId: string | undefined = prefix;
    while (afterId !== undefined) {
      const page = await this.documents.list({ afterId, limit: DELETE_PAGE_SIZE });
      for (const { doc } of page.items) {
        if (!doc.id.startsWith(prefix)) return;
        await this.documents.delete(doc.id);
      }
      afterId = page.nextAfterId;
    }
  }
}

/** The seen ids of a seen-id document, in either format; undefined when they cannot be read. */
function seenIdsOf(doc: CheckpointDocument): readonly (readonly [string, number])[] | undefined {
  if (doc.idsJson === undefined) return doc.ids ?? [];
  try {
    const ids = JSON.parse(doc.idsJson) as unknown;
    return Array.isArray(ids) ? (ids as [string, number][]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * `json` cut into pieces of at most {@link CHUNK_CHARS} code units, never between the two halves
 * of a surrogate pair: a lone surrogate is stored (as UTF-8) as U+FFFD, which would change the
 * restored state.
 */
function chunksOf(json: string): string[] {
  const chunks: string[] = [];
  let start = 0;
  do {
    let end = Math.min(json.length, start + CHUNK_CHARS);
    const last = json.charCodeAt(end - 1);
    if (end < json.length && last >= 0xd800 && last <= 0xdbff) end--;
    chunks.push(json.slice(start, end));
    start = end;
  } while (start < json.length);
  return chunks;
}

/** The ids of one seen-id document: their JSON, the latest `remember until` and how many. */
interface SeenPiece {
  readonly json: string;
  readonly until: number;
  readonly count: number;
}

/**
 * `ids` as the JSON of seen-id documents of at most {@link CHUNK_CHARS} characters each, in order;
 * none when there are no ids. A round holds the ids of up to the in-flight limit's events (up to
 * a million), and more after failed writes: in one document they could exceed what storage
 * takes, and every checkpoint after would fail.
 */
function seenPiecesOf(ids: readonly (readonly [string, number])[]): SeenPiece[] {
  if (ids.length === 0) return [];
  const whole = JSON.stringify(ids);
  if (whole.length <= CHUNK_CHARS) {
    const until = ids.reduce((latest, [, u]) => Math.max(latest, u), 0);
    return [{ json: whole, until, count: ids.length }];
  }
  // Too many for one: each entry's JSON, gathered in order into pieces that fit.
  const pieces: SeenPiece[] = [];
  let entries: string[] = [];
  let chars = 2; // the brackets
  let until = 0;
  const close = (): void => {
    pieces.push({ json: `[${entries.join(',')}]`, until, count: entries.length });
    entries = [];
    chars = 2;
    until = 0;
  };
  for (const entry of ids) {
    const json = JSON.stringify(entry);
    if (entries.length > 0 && chars + 1 + json.length > CHUNK_CHARS) close();
    entries.push(json);
    chars += json.length + 1;
    until = Math.max(until, entry[1]);
  }
  close();
  return pieces;
}

/** How many failed writes' state chunks a writer deletes after its next write (see `abandoned`). */
const ABANDONED_KEPT = 16;
/**
 * The most seen-id documents a write deletes as no longer read (see `included`): a backlog (a
 * checkpoint written before they were deleted) goes over the following writes.
 */
const UNREAD_DELETED_PER_WRITE = 16;

export class CheckpointWriter {
  /** The current checkpoint, as far as this writer knows: the last it restored or wrote. */
  private generation = 0;
  private chunkCount = 0;
  private seenSequence = 0;
  /**
   * The highest generation and seen-document number any write has used, failed ones included:
   * never used again, since a write may fail after storage took it (a timeout), and its header,
   * current in storage, must not be given another state or other seen ids.
   */
  private lastGeneration = 0;
  private lastSeenSequence = 0;
  /**
   * The state chunks of the last writes that failed (at most {@link ABANDONED_KEPT}), deleted
   * once a write succeeds. Older ones, from a long outage, were almost surely never stored.
   */
  private abandoned: {
    readonly generation: number;
    readonly chunkCount: number;
    /** The numbers of its seen-id documents. */
    readonly seenDocuments: readonly number[];
  }[] = [];
  /**
   * The seen-id documents the current checkpoint includes, as far as this writer knows (those it
   * restored or wrote), oldest first, with how many ids each holds, and their total. The oldest
   * are deleted once the newer ones hold the cap of ids, all a restore reads back: kept until
   * their ids' horizon (the longest window, up to 30 days), a busy view's documents would pile up
   * far past it, in storage and in what every restart reads. Only the documents this writer
   * wrote count, since no id is in two of them; restored ones count for none, since they may
   * share ids (a failed write's copy left behind), and are deleted once this writer's own hold
   * the cap.
   */
  private included: { readonly id: string; readonly count: number }[] = [];
  private includedIds = 0;

  constructor(
    private readonly documents: Collection<CheckpointDocument>,
    private readonly owner: string,
    private readonly options: CheckpointWriterOptions = {},
  ) {}

  /**
   * Reads the last complete checkpoint, if any, and continues its numbering. Seen ids past the cap
   * are left out, oldest first, and counted in the checkpoint's `dedupeEvictions`.
   */
  async restore(): Promise<StoredCheckpoint | undefined> {
    const header = (await this.documents.get(this.owner))?.doc;
    if (header === undefined) return undefined;
    const { registration } = this.options;
    if (
      registration !== undefined &&
      header.registration !== undefined &&
      header.registration !== registration
    ) {
      return this.discard('it was written for an earlier view of the same name');
    }
    this.generation = header.generation ?? 0;
    this.chunkCount = header.chunkCount ?? 0;
    this.seenSequence = header.seenSequence ?? 0;
    this.lastGeneration = this.generation;
    this.lastSeenSequence = this.seenSequence;
    this.included = [];
    this.includedIds = 0;
    const chunkIds = Array.from({ length: this.chunkCount }, (_, i) => this.chunkId(i));
    const chunks = await this.documents.getMany(chunkIds);
    if (chunkIds.some((id) => chunks.get(id)?.doc.data === undefined)) {
      return this.discard('part of its state is missing');
    }
    const json = chunkIds.map((id) => chunks.get(id)?.doc.data ?? '').join('');
    let state: AggregationCheckpoint;
    try {
      state = JSON.parse(json) as AggregationCheckpoint;
    } catch {
      return this.discard('its state cannot be read');
    }
    const seen = await this.newestSeenIds();
    // Restored without them, the state would count its events again when they are redelivered.
    if (seen === undefined) return this.discard('its seen event ids cannot be read');
    const { ids, left } = seen;
    if (left > 0) {
      this.options.logger?.warn(
        { owner: this.owner, restored: ids.length, forgotten: left },
        'more seen event ids stored than the de-duplication cap; the oldest are forgotten',
      );
    }
    return {
      checkpoint: {
        ...state,
        counters: { ...state.counters, dedupeEvictions: state.counters.dedupeEvictions + left },
        seenEventIds: ids,
      },
      checkpointTime: dateOf(header.checkpointTime ?? 0),
      extraCounters: header.extraCounters ?? {},
    };
  }

  /**
   * Writes `checkpoint` (whose `seenEventIds` are ignored) with the ids accepted since the last
   * write, then makes it current. Throws when storage fails; the previous checkpoint stays current.
   */
  async write(
    checkpoint: AggregationCheckpoint,
    newSeenIds: readonly (readonly [string, number])[],
    extraCounters: Readonly<Record<string, number>>,
  ): Promise<Date> {
    // The seen-set goes in the appended seen-id documents, not in the state.
    const json = JSON.stringify({ ...checkpoint, seenEventIds: [] });
    const generation = ++this.lastGeneration;
    const chunks = chunksOf(json);
    const chunkCount = chunks.length;
    const seenPieces = seenPiecesOf(newSeenIds);
    const firstSeen = this.lastSeenSequence + 1;
    this.lastSeenSequence += seenPieces.length;
    const seenSequence = seenPieces.length > 0 ? this.lastSeenSequence : this.seenSequence;
    try {
      return await this.writeGeneration(
        chunks,
        { generation, chunkCount, firstSeen, seenSequence },
        seenPieces,
        extraCounters,
      );
    } catch (error) {
      // Its seen ids come again in the next write (they were accepted since the last one that
      // succeeded), so its seen-id documents, if stored, are deleted with its chunks.
      this.abandoned.push({
        generation,
        chunkCount,
        seenDocuments: seenPieces.map((_, i) => firstSeen + i),
      });
      if (this.abandoned.length > ABANDONED_KEPT) this.abandoned.shift();
      throw error;
    }
  }

  private async writeGeneration(
    chunks: readonly string[],
    numbers: { generation: number; chunkCount: number; firstSeen: number; seenSequence: number },
    seenPieces: readonly SeenPiece[],
    extraCounters: Readonly<Record<string, number>>,
  ): Promise<Date> {
    const { generation, chunkCount, firstSeen, seenSequence } = numbers;
    for (let i = 0; i < chunkCount; i++) {
      await this.documents.upsert({
        id: `${this.owner}/state/${generation}/${i}`,
        owner: this.owner,
        kind: 'state',
        generation,
        data: chunks[i],
      });
    }
    for (const [i, { json, until }] of seenPieces.entries()) {
      await this.documents.upsert({
        id: this.seenId(firstSeen + i),
        owner: this.owner,
        kind: 'seen',
        seenSequence: firstSeen + i,
        idsJson: json,
        // Kept a minute past the last id's horizon; the aggregator forgets them then anyway.
        expiresAt: new Date(until + 60_000),
      });
    }
    const checkpointTime = new Date();
    await this.documents.upsert({
      id: this.owner,
      owner: this.owner,
      kind: 'header',
      generation,
      chunkCount,
      seenSequence,
      checkpointTime,
      ...(this.options.registration === undefined
        ? {}
        : { registration: this.options.registration }),
      extraCounters: { ...extraCounters },
    });
    const replaced = [
      { generation: this.generation, chunkCount: this.chunkCount, seenDocuments: [] },
      ...this.abandoned.splice(0),
    ];
    this.generation = generation;
    this.chunkCount = chunkCount;
    this.seenSequence = seenSequence;
    for (const previous of replaced) {
      for (let i = 0; i < previous.chunkCount; i++) {
        await this.documents
          .delete(`${this.owner}/state/${previous.generation}/${i}`)
          .catch(() => false);
      }
      for (const sequence of previous.seenDocuments) {
        await this.documents.delete(this.seenId(sequence)).catch(() => false);
      }
    }
    for (const [i, { count }] of seenPieces.entries()) {
      this.include(this.seenId(firstSeen + i), count);
    }
    await this.deleteUnread();
    return checkpointTime;
  }

  private include(id: string, count: number): void {
    this.included.push({ id, count });
    this.includedIds += count;
  }

  /** Deletes the oldest seen-id documents a restore would leave out (see `included`). */
  private async deleteUnread(): Promise<void> {
    const max = this.options.maxSeenEventIds ?? DEFAULT_MAX_TRACKED_EVENT_IDS;
    for (let deleted = 0; deleted < UNREAD_DELETED_PER_WRITE; deleted++) {
      const oldest = this.included[0];
      if (oldest === undefined || this.includedIds - oldest.count < max) return;
      this.included.shift();
      this.includedIds -= oldest.count;
      // One left behind is read and left out, as before, until it expires.
      await this.documents.delete(oldest.id).catch(() => false);
    }
  }

  /**
   * The newest seen ids (up to the cap) of the documents the header includes, oldest first, and
   * how many older ones were left out. Documents are scanned in id order, which is their sequence
   * order (the number is zero-padded), so holding at most twice the cap is enough. Each is noted
   * as `included`, counting no ids. Undefined when a document's ids cannot be read.
   */
  private async newestSeenIds(): Promise<
    { ids: (readonly [string, number])[]; left: number } | undefined
  > {
    const max = this.options.maxSeenEventIds ?? DEFAULT_MAX_TRACKED_EVENT_IDS;
    // By id, in order of the newest copy: an id stored twice (a write that failed after storing
    // its seen ids, written again by the next) takes one place.
    const ids = new Map<string, number>();
    let left = 0;
    const leaveOldest = (): void => {
      for (const id of ids.keys()) {
        if (ids.size <= max) return;
        ids.delete(id);
        left++;
      }
    };
    for await (const { doc } of this.documents.scan({ owner: this.owner })) {
      if (doc.kind !== 'seen' || (doc.seenSequence ?? 0) > this.seenSequence) continue;
      const read = seenIdsOf(doc);
      if (read === undefined) return undefined;
      this.include(doc.id, 0);
      for (const [id, until] of read) {
        ids.delete(id);
        ids.set(id, until);
      }
      if (ids.size >= 2 * max) leaveOldest();
    }
    leaveOldest();
    return { ids: [...ids], left };
  }

  /**
   * Deletes every document of this checkpoint, which cannot be restored: its seen ids belong to
   * the state it was written with, and restored into a rebuilt state they would make the replayed
   * events count as duplicates. Numbering starts again; returns undefined, as for no checkpoint.
   */
  /**
   * Discards a checkpoint the caller could not restore (taken with other aggregation
   * definitions: the view's features reordered, say), for the same reason as `restore` does.
   */
  async discardUnusable(why: string): Promise<void> {
    await this.discard(why);
  }

  private async discard(why: string): Promise<undefined> {
    this.options.logger?.warn(
      { owner: this.owner },
      `aggregation checkpoint discarded: ${why}; the state is rebuilt from the stream`,
    );
    await this.delete();
    return undefined;
  }

  /** Deletes this owner's checkpoint, every document of it: its view is gone. */
  async delete(): Promise<void> {
    const ids: string[] = [];
    for await (const { doc } of this.documents.scan({ owner: this.owner })) ids.push(doc.id);
    for (const id of ids) await this.documents.delete(id);
    this.generation = 0;
    this.chunkCount = 0;
    this.seenSequence = 0;
    this.lastGeneration = 0;
    this.lastSeenSequence = 0;
    this.abandoned = [];
    this.included = [];
    this.includedIds = 0;
  }

  private seenId(sequence: number): string {
    return `${this.owner}/seen/${String(sequence).padStart(12, '0')}`;
  }

  private chunkId(index: number): string {
    return `${this.owner}/state/${this.generation}/${index}`;
  }
}
