/**
 * Checks of a message's bytes before the generated decoder reads them, which it reads leniently:
 * - Timestamps whose nanos it would hide. The code is generated with Timestamps as Dates, and the
 *   conversion adds the nanos to the seconds whatever they are: a `{seconds: s, nanos: 2e9}` the
 *   spec calls invalid arrives as `s + 2` seconds, a negative nanos as an earlier time, and no
 *   handler can tell. Named by field path as the other violations name fields
 *   (`experiment.scheduled_start_time`, `rows[3].event_time`).
 * - What protobuf parsers refuse and it takes, in the messages read: a field number 0 or a stray
 *   end-group tag, where it stops reading the message and returns what it had (the fields after
 *   it, an etag say, silently dropped; in a nested message, its remaining bytes read as the
 *   parent's fields), and a packed field of partial elements, which it reads past into the
 *   bytes after it. Such bytes are not well-formed: the check returns undefined.
 * - For requests ({@link requestCheck}), every message field is read, and also strings that are
 *   not UTF-8, which it turns into U+FFFD (two unit ids becoming one), and each
 *   `google.protobuf.Value` of a Struct entry or a field for a kind (fields 1–6; none is invalid,
 *   but other languages' clients send one for a Struct entry created and never filled): the
 *   decoder drops a Struct entry without one (a condition `{"country": <no kind>}` would be
 *   stored as none, and target everyone). A list item without one it reads as `null`, which is
 *   what ts-proto's encoder means by it (an `undefined` item): that is taken.
 *
 * The bytes are read without decoding them (fields the check has no use for are skipped by
 * length). The walk is planned once per message type from the contracts' descriptor set; for
 * Timestamps alone, a type no Timestamp can be reached from has no check at all.
 */
import { ScalarType, type DescField, type DescMessage } from '@bufbuild/protobuf';
import { BinaryReader, WireType } from '@bufbuild/protobuf/wire';
import { isUtf8 } from 'node:buffer';
import type { FieldViolation } from '../errors';

const TIMESTAMP = 'google.protobuf.Timestamp';
const VALUE = 'google.protobuf.Value';
/**
 * The tags that set a `google.protobuf.Value`'s kind, as the generated decoder reads them (a kind
 * field of another wire type it skips): null_value, number_value, string_value, bool_value,
 * struct_value, list_value.
 */
const VALUE_KIND_TAGS: ReadonlySet<number> = new Set([
  (1 << 3) | 0,
  (2 << 3) | 1,
  (3 << 3) | 2,
  (4 << 3) | 0,
  (5 << 3) | 2,
  (6 << 3) | 2,
]);
/**
 * Well-known messages whose fields add no segment to a path: a Struct's entries are named by
 * their keys (`experiment.condition.app.os[1]`, not `...fields.app.struct_value...`), as the
 * handlers and `undecodable-fields.ts` name them.
 */
const TRANSPARENT = new Set(['google.protobuf.Struct', VALUE, 'google.protobuf.ListValue']);
/** Timestamp's `nanos` field. */
const NANOS_FIELD = 2;
/** Violations reported at most (a status must fit in the trailers). */
const MAX_VIOLATIONS = 20;
/** Nesting followed at most: deeper than any contract goes, and than the generated decoders do. */
const MAX_DEPTH = 100;

const INVALID_TIMESTAMP_DESCRIPTION = 'nanos must be in [0, 999,999,999] (a Timestamp)';

/** How to walk one message type: the fields the check reads, by number. */
interface Plan {
  readonly fields: Map<number, PlannedField>;
  /** For a `google.protobuf.Value` (requests only): the tags of which one must be present. */
  readonly oneRequired?: ReadonlySet<number>;
}

/** What a field (or a map's value) holds, as far as a check cares. */
type Held =
  | { readonly kind: 'timestamp' }
  | { readonly kind: 'message'; readonly plan: Plan }
  | { readonly kind: 'string' }
  /**
   * A repeated number, bool or enum, packed when length-delimited: its elements must fill it
   * exactly (`width` bytes each, or varints when 0), or the decoder, reading whole elements,
   * runs past it into the bytes after it (which the check would then not have read as fields).
   */
  | { readonly kind: 'packed'; readonly width: number }
  /** A map whose values are not read (only its string keys are). */
  | { readonly kind: 'none' };

interface PlannedField {
  readonly name: string;
  readonly repeated: boolean;
  /** For a map: how its keys are written in a path, and whether they are strings to check. */
  readonly map?: { readonly key: ScalarType; readonly checkKey: boolean };
  /** What the field (for a map, each value) holds. */
  readonly held: Held;
}

/** The message type a field holds (a list's items, a map's values), if any. */
function messageOf(field: DescField): DescMessage | undefined {
  if (field.fieldKind === 'message') return field.message;
  if (field.fieldKind === 'list' && field.listKind === 'message') return field.message;
  if (field.fieldKind === 'map' && field.mapKind === 'message') return field.message;
  return undefined;
}

/** Whether a field holds strings (a list's items, a map's values). */
function holdsStrings(field: DescField): boolean {
  if (field.fieldKind === 'scalar') return field.scalar === ScalarType.STRING;
  if (field.fieldKind === 'list')
    return field.listKind === 'scalar' && field.scalar === ScalarType.STRING;
  if (field.fieldKind === 'map')
    return field.mapKind === 'scalar' && field.scalar === ScalarType.STRING;
  return false;
}

/** For a repeated number, bool or enum field: the width of a packed element (0: a varint). */
function packedWidth(field: DescField): number | undefined {
  if (field.fieldKind !== 'list') return undefined;
  if (field.listKind === 'enum') return 0;
  if (field.listKind !== 'scalar') return undefined;
  switch (field.scalar) {
    case ScalarType.STRING:
    case ScalarType.BYTES:
      return undefined;
    case ScalarType.FLOAT:
    case ScalarType.FIXED32:
    case ScalarType.SFIXED32:
      return 4;
    case ScalarType.DOUBLE:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return 8;
    default:
      return 0;
  }
}

/** The types reachable from `root`, by name. */
function reachable(root: DescMessage): Map<string, DescMessage> {
  const types = new Map<string, DescMessage>();
  const pending = [root];
  while (pending.length > 0) {
    const type = pending.pop() as DescMessage;
    if (types.has(type.typeName)) continue;
    types.set(type.typeName, type);
    for (const field of type.fields) {
      const held = messageOf(field);
      if (held !== undefined) pending.push(held);
    }
  }
  return types;
}

/** The types from which a Timestamp can be reached, among those reachable from `root`. */
function leadingToTimestamp(root: DescMessage): Set<string> {
  const types = reachable(root);
  const leading = new Set<string>([TIMESTAMP]);
  // To a fixed point: recursive types (Struct, Value) settle once nothing more is added.
  for (let changed = true; changed;) {
    changed = false;
    for (const [name, type] of types) {
      if (leading.has(name)) continue;
      if (type.fields.some((f) => leading.has(messageOf(f)?.typeName ?? ''))) {
        leading.add(name);
        changed = true;
      }
    }
  }
  return leading;
}

/** What a check reads: Timestamps only, or every message and string too (requests). */
type Scope = 'timestamps' | 'everything';

const plans: Record<Scope, WeakMap<DescMessage, Plan | null>> = {
  timestamps: new WeakMap(),
  everything: new WeakMap(),
};

/**
 * The plan of `type` for `scope` (memoized), or null when there is nothing to read: for
 * Timestamps, no Timestamp can be reached from it.
 */
function planOf(type: DescMessage, scope: Scope): Plan | null {
  const known = plans[scope].get(type);
  if (known !== undefined) return known;
  const entered =
    scope === 'everything' ? new Set(reachable(type).keys()) : leadingToTimestamp(type);
  if (!entered.has(type.typeName)) {
    plans[scope].set(type, null);
    return null;
  }
  const made = new Map<string, Plan>();
  const make = (message: DescMessage): Plan => {
    const existing = made.get(message.typeName);
    if (existing !== undefined) return existing;
    const plan: Plan = {
      fields: new Map(),
      oneRequired:
        scope === 'everything' && message.typeName === VALUE ? VALUE_KIND_TAGS : undefined,
    };
    made.set(message.typeName, plan);
    const transparent = TRANSPARENT.has(message.typeName);
    for (const field of message.fields) {
      const message = messageOf(field);
      let held: Held;
      if (message !== undefined && entered.has(message.typeName)) {
        held =
          message.typeName === TIMESTAMP
            ? { kind: 'timestamp' }
            : { kind: 'message', plan: make(message) };
      } else if (packedWidth(field) !== undefined) {
        held = { kind: 'packed', width: packedWidth(field) ?? 0 };
      } else if (scope === 'everything' && holdsStrings(field)) {
        held = { kind: 'string' };
      } else if (
        scope === 'everything' &&
        field.fieldKind === 'map' &&
        field.mapKey === ScalarType.STRING
      ) {
        // Its values are read no further, but its keys are strings.
        held = { kind: 'none' };
      } else continue;
      plan.fields.set(field.number, {
        name: transparent ? '' : field.name,
        repeated: field.fieldKind === 'list',
        map:
          field.fieldKind === 'map'
            ? {
                key: field.mapKey,
                checkKey: scope === 'everything' && field.mapKey === ScalarType.STRING,
              }
            : undefined,
        held,
      });
    }
    return plan;
  };
  const plan = make(type);
  plans[scope].set(type, plan);
  return plan;
}

/** Protobuf wire types. */
const VARINT = 0;
const FIXED64 = 1;
const LENGTH_DELIMITED = 2;
const START_GROUP = 3;
const END_GROUP = 4;
const FIXED32 = 5;

/**
 * A read position in a message's bytes. Hand-rolled rather than bufbuild's reader, which makes
 * an array per tag and a view per nested message: with those, checking a 500-row write took
 * almost as long as decoding it.
 */
class Scan {
  pos: number;
  constructor(
    readonly bytes: Uint8Array,
    from: number,
    readonly end: number,
  ) {
    this.pos = from;
  }

  /** A varint's low 32 bits, as a signed int32 (as an int32 field is decoded). */
  varint32(): number {
    const { bytes } = this;
    let result = 0;
    for (let shift = 0; shift < 35; shift += 7) {
      const byte = this.byte(bytes);
      result |= (byte & 0x7f) << shift;
      if (byte < 0x80) return result;
    }
    // A 64-bit varint: its remaining bytes hold no bit of the low 32.
    for (let i = 0; i < 5; i++) if (this.byte(bytes) < 0x80) return result;
    throw new Error('varint too long');
  }

  /** A length-delimited value's bounds (its length just read), moving past it. */
  delimited(): readonly [start: number, end: number] {
    const length = this.varint32() >>> 0;
    const start = this.pos;
    if (length > this.end - start) throw new Error('truncated');
    this.pos += length;
    return [start, this.pos];
  }

  /** A tag; throws on field number 0, which no message has (the decoder stops there). */
  tag(): number {
    const tag = this.varint32() >>> 0;
    if (tag >>> 3 === 0) throw new Error('field number 0');
    return tag;
  }

  private byte(bytes: Uint8Array): number {
    if (this.pos >= this.end) throw new Error('truncated');
    return bytes[this.pos++] as number;
  }

  /** Skips a field's value of `wireType` (whose tag was just read). */
  skip(wireType: number, fieldNumber: number): void {
    switch (wireType) {
      case VARINT:
        while (this.byte(this.bytes) >= 0x80);
        return;
      case FIXED64:
        this.advance(8);
        return;
      case LENGTH_DELIMITED:
        this.advance(this.varint32() >>> 0);
        return;
      case FIXED32:
        this.advance(4);
        return;
      case START_GROUP:
        for (;;) {
          const tag = this.tag();
          if ((tag & 7) === END_GROUP) {
            if (tag >>> 3 !== fieldNumber) throw new Error('unmatched group');
            return;
          }
          this.skip(tag & 7, tag >>> 3);
        }
      default:
        throw new Error(`wire type ${wireType}`);
    }
  }

  private advance(bytes: number): void {
    if (bytes > this.end - this.pos) throw new Error('truncated');
    this.pos += bytes;
  }
}

/** Where a walk is: the field path from the message's top, made into a string only when needed. */
interface Place {
  readonly parent: Place | undefined;
  /** The field's name; empty for a field of a Struct, Value or ListValue (see TRANSPARENT). */
  readonly name: string;
  /** The item's index in a list, or -1. */
  readonly index: number;
  /** For a map entry: its bytes, to read the key from (the path names the entry by key). */
  readonly entry?: { readonly from: number; readonly to: number; readonly keyType?: ScalarType };
}

function pathOf(place: Place, bytes: Uint8Array): string {
  let path = place.parent === undefined ? '' : pathOf(place.parent, bytes);
  if (place.name !== '') path = path === '' ? place.name : `${path}.${place.name}`;
  if (place.index >= 0) path += `[${place.index}]`;
  // A map entry as the other violations name it: `field.key` (AIP-161).
  if (place.entry !== undefined) {
    const key = mapKeyOf(bytes, place.entry);
    path = path === '' ? key : `${path}.${key}`;
  }
  return path;
}

/** A map entry's key as a path segment (its default when absent; `?` when unreadable). */
function mapKeyOf(
  bytes: Uint8Array,
  entry: { readonly from: number; readonly to: number; readonly keyType?: ScalarType },
): string {
  try {
    const reader = new BinaryReader(bytes.subarray(entry.from, entry.to));
    let key: string | undefined;
    while (reader.pos < reader.len) {
      const [number, wireType] = reader.tag();
      if (number === 1 && wireType === keyWireType(entry.keyType))
        key = readKey(reader, entry.keyType);
      else reader.skip(wireType, number);
    }
    return (
      key ??
      (entry.keyType === ScalarType.STRING ? '' : entry.keyType === ScalarType.BOOL ? 'false' : '0')
    );
  } catch {
    return '?';
  }
}

function keyWireType(keyType: ScalarType | undefined): WireType {
  switch (keyType) {
    case ScalarType.STRING:
      return WireType.LengthDelimited;
    case ScalarType.FIXED32:
    case ScalarType.SFIXED32:
      return WireType.Bit32;
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return WireType.Bit64;
    default:
      return WireType.Varint;
  }
}

function readKey(reader: BinaryReader, keyType: ScalarType | undefined): string {
  switch (keyType) {
    case ScalarType.STRING:
      return reader.string();
    case ScalarType.BOOL:
      return String(reader.bool());
    case ScalarType.SINT32:
      return String(reader.sint32());
    case ScalarType.SINT64:
      return String(reader.sint64());
    case ScalarType.UINT32:
      return String(reader.uint32());
    case ScalarType.UINT64:
      return String(reader.uint64());
    case ScalarType.FIXED32:
      return String(reader.fixed32());
    case ScalarType.SFIXED32:
      return String(reader.sfixed32());
    case ScalarType.FIXED64:
      return String(reader.fixed64());
    case ScalarType.SFIXED64:
      return String(reader.sfixed64());
    case ScalarType.INT32:
      return String(reader.int32());
    default:
      return String(reader.int64());
  }
}

/** Whether the Timestamp from `from` to `to` holds nanos outside its range (the last counts). */
function invalidNanos(bytes: Uint8Array, from: number, to: number): boolean {
  const scan = new Scan(bytes, from, to);
  let nanos = 0;
  while (scan.pos < to) {
    const tag = scan.tag();
    if (tag === ((NANOS_FIELD << 3) | VARINT)) nanos = scan.varint32();
    else scan.skip(tag & 7, tag >>> 3);
  }
  return nanos < 0 || nanos > 999_999_999;
}

interface Walk {
  readonly bytes: Uint8Array;
  readonly out: FieldViolation[];
}

/** Checks what `held` holds from `from` to `to`, at `place`. */
function visit(
  state: Walk,
  from: number,
  to: number,
  held: Held,
  place: Place,
  depth: number,
): void {
  switch (held.kind) {
    case 'timestamp':
      if (invalidNanos(state.bytes, from, to)) state.out.push(invalidTimestamp(place, state.bytes));
      return;
    case 'message':
      walk(state, from, to, held.plan, place, depth);
      return;
    case 'string':
      if (!isUtf8At(state.bytes, from, to)) state.out.push(invalidUtf8(place, state.bytes));
      return;
    case 'packed':
      checkPacked(state.bytes, from, to, held.width);
      return;
    case 'none':
      return;
  }
}

/** Throws unless packed elements of `width` bytes (varints when 0) fill `from` to `to` exactly. */
function checkPacked(bytes: Uint8Array, from: number, to: number, width: number): void {
  if (width > 0) {
    if ((to - from) % width !== 0) throw new Error('packed field of partial elements');
    return;
  }
  const scan = new Scan(bytes, from, to);
  // A last varint cut short reads past `to`, and the scan throws.
  while (scan.pos < to) scan.varint32();
}

/** Checks the message from `from` to `to`, at `place` (undefined at the top), by `plan`. */
function walk(
  state: Walk,
  from: number,
  to: number,
  plan: Plan,
  place: Place | undefined,
  depth: number,
): void {
  if (depth > MAX_DEPTH) return;
  const { bytes, out } = state;
  const scan = new Scan(bytes, from, to);
  let counts: Map<number, number> | undefined;
  const { oneRequired } = plan;
  // A list item without a kind is read as null and kept (ts-proto's own client writes an
  // `undefined` item so): only a Struct entry's or a field's Value must have one.
  let found = oneRequired === undefined || (place !== undefined && place.index >= 0);
  while (scan.pos < to && out.length < MAX_VIOLATIONS) {
    const tag = scan.tag();
    const number = tag >>> 3;
    if (!found && oneRequired?.has(tag) === true) found = true;
    const field = plan.fields.get(number);
    if (field === undefined || (tag & 7) !== LENGTH_DELIMITED) {
      scan.skip(tag & 7, number);
      continue;
    }
    const [start, end] = scan.delimited();
    let index = -1;
    if (field.repeated) {
      counts ??= new Map();
      index = counts.get(number) ?? 0;
      counts.set(number, index + 1);
    }
    if (field.map !== undefined) {
      const at: Place = {
        parent: place,
        name: field.name,
        index,
        entry: { from: start, to: end, keyType: field.map.key },
      };
      walkEntry(state, start, end, field, at, depth + 1);
    } else {
      visit(state, start, end, field.held, { parent: place, name: field.name, index }, depth + 1);
    }
  }
  if (!found && out.length < MAX_VIOLATIONS) out.push(noValue(place, bytes));
}

/** A map entry: its key (field 1) when it is a string to check, its value (field 2) by `field`. */
function walkEntry(
  state: Walk,
  from: number,
  to: number,
  field: PlannedField,
  place: Place,
  depth: number,
): void {
  const scan = new Scan(state.bytes, from, to);
  let hasValue = false;
  while (scan.pos < to && state.out.length < MAX_VIOLATIONS) {
    const tag = scan.tag();
    const number = tag >>> 3;
    if ((tag & 7) !== LENGTH_DELIMITED || (number !== 1 && number !== 2)) {
      scan.skip(tag & 7, number);
      continue;
    }
    const [start, end] = scan.delimited();
    if (number === 2) {
      hasValue = true;
      visit(state, start, end, field.held, place, depth);
    } else if (field.map?.checkKey === true && !isUtf8At(state.bytes, start, end)) {
      state.out.push(invalidUtf8(place, state.bytes));
    }
  }
  // An entry without its value holds the value's default: for a Value, one without a kind.
  if (
    !hasValue &&
    field.held.kind === 'message' &&
    field.held.plan.oneRequired !== undefined &&
    state.out.length < MAX_VIOLATIONS
  ) {
    state.out.push(noValue(place, state.bytes));
  }
}

/** Whether the bytes from `from` to `to` are UTF-8 (ASCII, most strings, without a call). */
function isUtf8At(bytes: Uint8Array, from: number, to: number): boolean {
  for (let i = from; i < to; i++) {
    if ((bytes[i] as number) >= 0x80) return isUtf8(bytes.subarray(from, to));
  }
  return true;
}

function invalidTimestamp(place: Place | undefined, bytes: Uint8Array): FieldViolation {
  return {
    field: place === undefined ? '' : pathOf(place, bytes),
    description: INVALID_TIMESTAMP_DESCRIPTION,
    reason: 'INVALID_TIMESTAMP',
  };
}

function invalidUtf8(place: Place, bytes: Uint8Array): FieldViolation {
  return {
    field: pathOf(place, bytes),
    description: 'must be UTF-8 text (a protobuf string)',
    reason: 'INVALID_UTF8',
  };
}

function noValue(place: Place | undefined, bytes: Uint8Array): FieldViolation {
  return {
    field: place === undefined ? '' : pathOf(place, bytes),
    description:
      'a google.protobuf.Value must have a kind set (null, a number, a string, a bool, a struct or a list)',
    reason: 'NO_VALUE',
  };
}

/** A check of encoded messages: their violations, or undefined for bytes not well-formed. */
export type WireCheck = (bytes: Uint8Array) => FieldViolation[] | undefined;

function checkBy(plan: Plan): WireCheck {
  return (bytes) => {
    const out: FieldViolation[] = [];
    try {
      walk({ bytes, out }, 0, bytes.length, plan, undefined, 0);
    } catch {
      return undefined;
    }
    return out;
  };
}

/**
 * A check of encoded `type` messages for Timestamps with invalid nanos, or undefined when no
 * Timestamp can be reached from `type` (nothing to check). The check returns the violations, or
 * undefined for bytes that are not well-formed protobuf: refuse those rather than decode them,
 * since the generated decoder takes some such bytes (a stray end-group tag, a nested message
 * running past its parent) and the Timestamp in them unchecked.
 */
export function timestampNanosCheck(type: DescMessage): WireCheck | undefined {
  const plan = planOf(type, 'timestamps');
  return plan === null ? undefined : checkBy(plan);
}

/**
 * The check of a request of `type` before it is decoded: what {@link timestampNanosCheck} finds,
 * strings that are not UTF-8 (`INVALID_UTF8`), and `google.protobuf.Value`s without a kind, in a
 * Struct entry or a field of their own (`NO_VALUE`; a list item without one is null), by field
 * path; undefined from the check for
 * bytes that are not well-formed protobuf anywhere in the message (field number 0, an end-group
 * tag without its start, a length past its message, wire types 6 and 7).
 */
export function requestCheck(type: DescMessage): WireCheck {
  return checkBy(planOf(type, 'everything') ?? { fields: new Map() });
}
