/**
 * Timestamps whose nanos the generated decoder would hide. The code is generated with Timestamps
 * as Dates, and the conversion adds the nanos to the seconds whatever they are: a
 * `{seconds: s, nanos: 2e9}` the spec calls invalid arrives as `s + 2` seconds, a negative nanos
 * as an earlier time, and no handler can tell. This reads a message's bytes without decoding them
 * (only the fields that can lead to a Timestamp are entered; the rest are skipped by length) and
 * names every Timestamp whose nanos lie outside [0, 999,999,999], by field path as the other
 * violations name fields (`experiment.scheduled_start_time`, `rows[3].event_time`).
 *
 * The walk is planned once per message type from the contracts' descriptor set; a type no
 * Timestamp can be reached from (`ResolveRequest`) has no check at all, so its calls cost nothing.
 */
import { ScalarType, type DescField, type DescMessage } from '@bufbuild/protobuf';
import { BinaryReader, WireType } from '@bufbuild/protobuf/wire';
import type { FieldViolation } from '../errors';

const TIMESTAMP = 'google.protobuf.Timestamp';
/** Timestamp's `nanos` field. */
const NANOS_FIELD = 2;
/** Violations reported at most (a status must fit in the trailers). */
const MAX_VIOLATIONS = 20;
/** Nesting followed at most: deeper than any contract goes, and than the generated decoders do. */
const MAX_DEPTH = 100;

const INVALID_TIMESTAMP_DESCRIPTION = 'nanos must be in [0, 999,999,999] (a Timestamp)';

/** How to walk one message type: its fields that can lead to a Timestamp, by number. */
interface Plan {
  readonly fields: Map<number, PlannedField>;
}

interface PlannedField {
  readonly name: string;
  readonly repeated: boolean;
  readonly map: boolean;
  /** How to walk the field's message (for a map, its values'); null for a Timestamp. */
  readonly plan: Plan | null;
  /** For a map: how its keys are written in a path. */
  readonly mapKey?: ScalarType;
}

/** The message type a field holds (a list's items, a map's values), if any. */
function messageOf(field: DescField): DescMessage | undefined {
  if (field.fieldKind === 'message') return field.message;
  if (field.fieldKind === 'list' && field.listKind === 'message') return field.message;
  if (field.fieldKind === 'map' && field.mapKind === 'message') return field.message;
  return undefined;
}

/** The types from which a Timestamp can be reached, among those reachable from `root`. */
function leadingToTimestamp(root: DescMessage): Set<string> {
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

const plans = new WeakMap<DescMessage, Plan | null>();

/** The plan of `type`, or null when no Timestamp can be reached from it (memoized). */
function planOf(type: DescMessage): Plan | null {
  const known = plans.get(type);
  if (known !== undefined) return known;
  const leading = leadingToTimestamp(type);
  if (!leading.has(type.typeName)) {
    plans.set(type, null);
    return null;
  }
  const made = new Map<string, Plan>();
  const make = (message: DescMessage): Plan => {
    const existing = made.get(message.typeName);
    if (existing !== undefined) return existing;
    const plan: Plan = { fields: new Map() };
    made.set(message.typeName, plan);
    for (const field of message.fields) {
      const held = messageOf(field);
      if (held === undefined || !leading.has(held.typeName)) continue;
      const isTimestamp = held.typeName === TIMESTAMP;
      plan.fields.set(field.number, {
        name: field.name,
        repeated: field.fieldKind === 'list',
        map: field.fieldKind === 'map',
        plan: isTimestamp ? null : make(held),
        mapKey: field.fieldKind === 'map' ? field.mapKey : undefined,
      });
    }
    return plan;
  };
  const plan = make(type);
  plans.set(type, plan);
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
          const tag = this.varint32() >>> 0;
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
  readonly name: string;
  /** The item's index in a list, or -1. */
  readonly index: number;
  /** For a map entry: its bytes, to read the key from (the path names the entry by key). */
  readonly entry?: { readonly from: number; readonly to: number; readonly keyType?: ScalarType };
}

function pathOf(place: Place, bytes: Uint8Array): string {
  let segment = place.name;
  if (place.index >= 0) segment += `[${place.index}]`;
  // A map entry as the other violations name it: `field.key` (AIP-161).
  if (place.entry !== undefined) segment += `.${mapKeyOf(bytes, place.entry)}`;
  return place.parent === undefined ? segment : `${pathOf(place.parent, bytes)}.${segment}`;
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
    const tag = scan.varint32() >>> 0;
    if (tag === ((NANOS_FIELD << 3) | VARINT)) nanos = scan.varint32();
    else scan.skip(tag & 7, tag >>> 3);
  }
  return nanos < 0 || nanos > 999_999_999;
}

interface Walk {
  readonly bytes: Uint8Array;
  readonly out: FieldViolation[];
}

/** Checks the message from `from` to `to`, at `place`, walked by `plan` (null: a Timestamp). */
function walk(
  state: Walk,
  from: number,
  to: number,
  plan: Plan | null,
  place: Place | undefined,
  depth: number,
): void {
  if (depth > MAX_DEPTH) return;
  const { bytes, out } = state;
  if (plan === null) {
    if (invalidNanos(bytes, from, to)) out.push(invalidTimestamp(place, bytes));
    return;
  }
  const scan = new Scan(bytes, from, to);
  let counts: Map<number, number> | undefined;
  while (scan.pos < to && out.length < MAX_VIOLATIONS) {
    const tag = scan.varint32() >>> 0;
    const number = tag >>> 3;
    const field = plan.fields.get(number);
    if (field === undefined || (tag & 7) !== LENGTH_DELIMITED) {
      scan.skip(tag & 7, number);
      continue;
    }
    const length = scan.varint32() >>> 0;
    const start = scan.pos;
    scan.pos += length;
    if (length > to - start) throw new Error('truncated');
    let index = -1;
    if (field.repeated) {
      counts ??= new Map();
      index = counts.get(number) ?? 0;
      counts.set(number, index + 1);
    }
    const at: Place = field.map
      ? {
          parent: place,
          name: field.name,
          index,
          entry: { from: start, to: scan.pos, keyType: field.mapKey },
        }
      : { parent: place, name: field.name, index };
    if (field.map) walkEntryValue(state, start, scan.pos, field.plan, at, depth + 1);
    else walk(state, start, scan.pos, field.plan, at, depth + 1);
  }
}

function invalidTimestamp(place: Place | undefined, bytes: Uint8Array): FieldViolation {
  return {
    field: place === undefined ? '' : pathOf(place, bytes),
    description: INVALID_TIMESTAMP_DESCRIPTION,
    reason: 'INVALID_TIMESTAMP',
  };
}

/** A map entry's value (field 2), walked by `plan` (null: a Timestamp). */
function walkEntryValue(
  state: Walk,
  from: number,
  to: number,
  plan: Plan | null,
  place: Place,
  depth: number,
): void {
  const scan = new Scan(state.bytes, from, to);
  while (scan.pos < to && state.out.length < MAX_VIOLATIONS) {
    const tag = scan.varint32() >>> 0;
    if (tag !== ((2 << 3) | LENGTH_DELIMITED)) {
      scan.skip(tag & 7, tag >>> 3);
      continue;
    }
    const length = scan.varint32() >>> 0;
    const start = scan.pos;
    if (length > to - start) throw new Error('truncated');
    scan.pos += length;
    walk(state, start, scan.pos, plan, place, depth);
  }
}

/**
 * A check of encoded `type` messages for Timestamps with invalid nanos, or undefined when no
 * Timestamp can be reached from `type` (nothing to check). The check returns the violations, or
 * undefined for bytes that are not well-formed protobuf: refuse those rather than decode them,
 * since the generated decoder takes some such bytes (a stray end-group tag, a nested message
 * running past its parent) and the Timestamp in them unchecked.
 */
export function timestampNanosCheck(
  type: DescMessage,
): ((bytes: Uint8Array) => FieldViolation[] | undefined) | undefined {
  const plan = planOf(type);
  if (plan === null) return undefined;
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
