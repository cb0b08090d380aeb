/**
 * What Resolve sends for each shared result of a configuration snapshot, made once per snapshot:
 * the `Assignment` message, the token record (for results in the experiment) and the encoded
 * entries of both, side by side in one append-only arena and found by the result's `key`.
 *
 * Why an arena rather than a map from result to message to bytes: on a busy server Resolve's time
 * goes to cache misses, not to computation (its handler took about five times as long with the
 * caches flushed between calls as in a hot loop), and a response carries a few dozen assignments.
 * Reaching each one's bytes through WeakMaps and one Buffer object per encoding touched several
 * cold cache lines per assignment; here both encodings of an assignment are adjacent bytes of one
 * buffer, at offsets read from one typed array.
 *
 * Results made for one resolve only (STICKY, several surfaces; `key` -1) are rendered per call, and
 * so are the response entries of the FULL view (a debugging view; the arena holds the BASIC ones).
 */
import {
  AssignmentReason as ReasonMessage,
  type Assignment,
} from '../../../../gen/ts/tandem/assignment/v1/assignment';
import type { EncodedFields } from '../../../platform/src/grpc/wire';
import type { AssignmentSnapshot, ResolvedAssignment } from '../domain';
import { encodeTokenAssignment, type TokenAssignment } from '../resolve-token';
import { asEnum } from './messages';
import { encodeResponseAssignment } from './resolve-response';

/** A resolve's assignments as a response and a token carry them, in the same order. */
export interface RenderedAssignments {
  /** The messages of the response. */
  readonly assignments: Assignment[];
  /** Their encoded `assignments` entries in the response. */
  readonly responseEntries: EncodedFields;
  /** The token records of those in the experiment (the only ones a token records). */
  readonly inExperiment: TokenAssignment[];
  /** Their encoded `assignments` entries in the token body. */
  readonly tokenEntries: EncodedFields;
}

const INITIAL_ARENA_BYTES = 64 * 1024;

/** The `Assignment` of `resolved`; the layer and etag only for the FULL view. */
function toMessage(resolved: ResolvedAssignment, full: boolean): Assignment {
  return {
    experimentId: resolved.experiment.id,
    variantKey: resolved.variant.key,
    inExperiment: resolved.inExperiment,
    reason: asEnum<ReasonMessage>(resolved.reason),
    layerId: full ? resolved.experiment.layerId : '',
    holdoutId: resolved.holdoutId,
    surfaces: resolved.surfaces as string[],
    experimentEtag: full ? resolved.experiment.etag : '',
    allocationSequence: resolved.allocationSequence,
    payloadJson: resolved.variant.payloadJson,
  };
}

function toTokenAssignment(resolved: ResolvedAssignment): TokenAssignment {
  return {
    experimentId: resolved.experiment.id,
    variantKey: resolved.variant.key,
    reason: resolved.reason,
    etag: resolved.experiment.etag,
    layerId: resolved.experiment.layerId,
    surfaces: resolved.surfaces,
    allocationSequence: resolved.allocationSequence,
  };
}

/** The rendered shared results of one snapshot. */
export class RenderedResults {
  private arena = Buffer.allocUnsafe(INITIAL_ARENA_BYTES);
  private used = 0;
  /**
   * Per key, at 3 * key: where the response entry starts, where it ends and the token entry starts
   * (0 until the result is rendered: a response entry is never empty), where the token entry ends
   * (equal to its start for a result that is not in the experiment).
   */
  private readonly offsets: Int32Array;
  private readonly messages: (Assignment | undefined)[];
  private readonly records: (TokenAssignment | undefined)[];

  constructor(snapshot: AssignmentSnapshot) {
    this.offsets = new Int32Array(3 * snapshot.resultKeys);
    this.messages = new Array<Assignment | undefined>(snapshot.resultKeys).fill(undefined);
    this.records = new Array<TokenAssignment | undefined>(snapshot.resultKeys).fill(undefined);
  }

  /**
   * The response and token form of `results`, in their order; the response's in the FULL view
   * when `full` (see `AssignmentView`), else the BASIC one.
   */
  render(results: readonly ResolvedAssignment[], full = false): RenderedAssignments {
    const offsets = this.offsets;
    const assignments: Assignment[] = [];
    const responseSources: Buffer[] = [];
    const responseRanges: number[] = [];
    const inExperiment: TokenAssignment[] = [];
    const tokenSources: Buffer[] = [];
    const tokenRanges: number[] = [];
    for (const resolved of results) {
      const key = resolved.key;
      const shared = key >= 0;
      if (shared && offsets[3 * key + 1] === 0) this.add(key, resolved);
      // An entry added later may replace the arena; this one's bytes stay where they are in the
      // arena read here, which is never written again.
      const arena = this.arena;
      if (shared && !full) {
        assignments.push(this.messages[key] as Assignment);
        responseSources.push(arena);
        responseRanges.push(offsets[3 * key] ?? 0, offsets[3 * key + 1] ?? 0);
      } else {
        const message = toMessage(resolved, full);
        const bytes = encodeResponseAssignment(message);
        assignments.push(message);
        responseSources.push(bytes);
        responseRanges.push(0, bytes.length);
      }
      if (!resolved.inExperiment) continue;
      if (shared) {
        inExperiment.push(this.records[key] as TokenAssignment);
        tokenSources.push(arena);
        tokenRanges.push(offsets[3 * key + 1] ?? 0, offsets[3 * key + 2] ?? 0);
      } else {
        const record = toTokenAssignment(resolved);
        const tokenBytes = encodeTokenAssignment(record);
        inExperiment.push(record);
        tokenSources.push(tokenBytes);
        tokenRanges.push(0, tokenBytes.length);
      }
    }
    return {
      assignments,
      responseEntries: { sources: responseSources, ranges: responseRanges },
      inExperiment,
      tokenEntries: { sources: tokenSources, ranges: tokenRanges },
    };
  }

  private add(key: number, resolved: ResolvedAssignment): void {
    const message = Object.freeze(toMessage(resolved, false));
    const record = resolved.inExperiment ? Object.freeze(toTokenAssignment(resolved)) : undefined;
    const response = encodeResponseAssignment(message);
    const token = record === undefined ? undefined : encodeTokenAssignment(record);
    const size = response.length + (token?.length ?? 0);
    if (this.used + size > this.arena.length) {
      const grown = Buffer.allocUnsafe(Math.max(2 * this.arena.length, this.used + size));
      this.arena.copy(grown, 0, 0, this.used);
      // The old arena is never written again: entries handed over earlier still read from it.
      this.arena = grown;
    }
    const start = this.used;
    response.copy(this.arena, start);
    token?.copy(this.arena, start + response.length);
    this.used += size;
    this.offsets[3 * key] = start;
    this.offsets[3 * key + 1] = start + response.length;
    this.offsets[3 * key + 2] = start + size;
    this.messages[key] = message;
    this.records[key] = record;
  }
}
