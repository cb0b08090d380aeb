/**
 * Why the generated decoder refused a request, field by field. The code is generated with
 * `forceLong=number`, so a 64-bit integer beyond ±(2^53 − 1) cannot be held and its decoder throws
 * without saying where. Only then, off the hot path, the request is decoded again by schema (the
 * contracts' descriptor set, 64-bit integers as bigint) and every such integer is reported by its
 * field path, as the other INVALID_ARGUMENT violations are.
 */
import { fromBinary, ScalarType, type DescMessage } from '@bufbuild/protobuf';
import { reflect, type ReflectMessage } from '@bufbuild/protobuf/reflect';
import type { FieldViolation } from '../errors';
import { contractRegistry, requestMessage } from './descriptor-set';

const SIXTY_FOUR_BIT = new Set([
  ScalarType.INT64,
  ScalarType.UINT64,
  ScalarType.SINT64,
  ScalarType.FIXED64,
  ScalarType.SFIXED64,
]);
const LIMIT = BigInt(Number.MAX_SAFE_INTEGER);
const DESCRIPTION = `an integer beyond ±${Number.MAX_SAFE_INTEGER} (2^53 − 1), the largest this server holds exactly`;
/** The violations' reason, as for any other number out of range. */
const REASON = 'OUT_OF_RANGE';
/**
 * How deep the descriptor set's decoder goes here: past the generated decoders' 100, so that a
 * request they refuse as too deep can still be looked into (which field; any `__proto__` key).
 */
const DIAGNOSTIC_RECURSION_LIMIT = 2_000;
/** Violations reported at most (a status must fit in the trailers). */
const MAX_VIOLATIONS = 20;

/** True for a 64-bit integer (bigint, or a string where the field asks for one) beyond ±2^53. */
function beyondSafe(scalar: ScalarType | undefined, value: unknown): boolean {
  if (scalar === undefined || !SIXTY_FOUR_BIT.has(scalar)) return false;
  if (typeof value !== 'bigint' && typeof value !== 'string') return false;
  const integer = BigInt(value);
  return integer > LIMIT || integer < -LIMIT;
}

/** What a walk looks for: scalar values, map keys; each returns the violation, if any. */
interface Checks {
  readonly scalar?: (
    scalar: ScalarType | undefined,
    value: unknown,
    path: string,
  ) => FieldViolation | undefined;
  readonly mapKey?: (
    keyScalar: ScalarType,
    key: unknown,
    path: string,
  ) => FieldViolation | undefined;
}

/** A path's next segment: `.name`, or nothing at the start. */
const joined = (prefix: string, name: string): string =>
  prefix === '' ? name : `${prefix}.${name}`;

/** Well-known messages whose fields add no segment to a path: a Struct's entries are its keys. */
const TRANSPARENT = new Set([
  'google.protobuf.Struct',
  'google.protobuf.Value',
  'google.protobuf.ListValue',
]);

/**
 * Collects `checks`' violations over `message`, named by field path as the handlers name them:
 * `rows[3].values.ctr`, and a `google.protobuf.Struct`'s entries by their keys
 * (`experiment.condition.country`, not `...condition.fields.country.struct_value`).
 */
function walk(
  message: ReflectMessage,
  prefix: string,
  checks: Checks,
  out: FieldViolation[],
): void {
  const transparent = TRANSPARENT.has(message.desc.typeName);
  for (const field of message.fields) {
    if (out.length >= MAX_VIOLATIONS) return;
    if (!message.isSet(field)) continue;
    const path = transparent ? prefix : joined(prefix, field.name);
    const scalar = (scalarType: ScalarType | undefined, value: unknown, at: string): void => {
      const violation = checks.scalar?.(scalarType, value, at);
      if (violation) out.push(violation);
    };
    switch (field.fieldKind) {
      case 'scalar':
        scalar(field.scalar, message.get(field), path);
        break;
      case 'message':
        walk(message.get(field), path, checks, out);
        break;
      case 'list': {
        let index = 0;
        for (const item of message.get(field)) {
          if (out.length >= MAX_VIOLATIONS) return;
          const at = `${path}[${index}]`;
          if (field.listKind === 'message') walk(item as ReflectMessage, at, checks, out);
          else scalar(field.scalar, item, at);
          index++;
        }
        break;
      }
      case 'map':
        for (const [key, value] of message.get(field)) {
          if (out.length >= MAX_VIOLATIONS) return;
          // A map entry as the other violations name it: `field.key` (AIP-161).
          const entry = joined(path, String(key));
          const keyViolation = checks.mapKey?.(field.mapKey, key, entry);
          if (keyViolation) out.push(keyViolation);
          if (field.mapKind === 'message') walk(value as ReflectMessage, entry, checks, out);
          else scalar(field.scalar, value, entry);
        }
        break;
      default:
        break;
    }
  }
}

/**
 * The violations `checks` find in `bytes`, a request of `methodPath`: none when the method is not
 * a contract's, undefined when the bytes are not its request message (or no descriptor set).
 */
function violationsIn(
  methodPath: string,
  bytes: Uint8Array,
  checks: Checks,
): FieldViolation[] | undefined {
  let schema: DescMessage | undefined;
  try {
    schema = requestMessage(methodPath);
  } catch {
    return undefined;
  }
  if (schema === undefined) return [];
  try {
    const violations: FieldViolation[] = [];
    const decoded = fromBinary(schema, bytes, { recursionLimit: DIAGNOSTIC_RECURSION_LIMIT });
    walk(reflect(schema, decoded), '', checks, violations);
    return violations;
  } catch {
    return undefined;
  }
}

/**
 * The fields of `bytes`, a request of `methodPath`, that this server cannot hold; empty when the
 * method is not a contract's or the bytes are not that message at all.
 */
export function undecodableFields(methodPath: string, bytes: Uint8Array): FieldViolation[] {
  return (
    violationsIn(methodPath, bytes, {
      scalar: (scalar, value, field) =>
        beyondSafe(scalar, value) ? { field, description: DESCRIPTION, reason: REASON } : undefined,
      mapKey: (scalar, key, field) =>
        beyondSafe(scalar, key)
          ? { field, description: `${DESCRIPTION} (the key)`, reason: REASON }
          : undefined,
    }) ?? []
  );
}

/**
 * The key a JavaScript object cannot hold as its own: the generated decoders build a map as an
 * object, where assigning `__proto__` sets the prototype and the entry is lost (a condition's
 * `{"__proto__": {...}}` would vanish, and the experiment target everyone).
 */
const RESERVED_MAP_KEY = '__proto__';
const RESERVED_KEY_BYTES = Buffer.from(RESERVED_MAP_KEY);

/** Whether `bytes` may hold a map key {@link reservedMapKeys} refuses: a cheap byte search. */
export function mayHoldReservedMapKey(bytes: Buffer): boolean {
  return bytes.includes(RESERVED_KEY_BYTES);
}

/**
 * The map entries of `bytes`, a request of `methodPath`, keyed `__proto__`, by field path; none
 * for a method that is not a contract's; undefined when the bytes cannot be checked (not a
 * message the descriptor set's decoder accepts, though the generated one may: refuse them).
 */
export function reservedMapKeys(
  methodPath: string,
  bytes: Uint8Array,
): FieldViolation[] | undefined {
  return violationsIn(methodPath, bytes, {
    mapKey: (_scalar, key, field) =>
      key === RESERVED_MAP_KEY
        ? {
            field,
            description: `"${RESERVED_MAP_KEY}" cannot be a key: JavaScript objects reserve it`,
            reason: 'RESERVED_KEY',
          }
        : undefined,
  });
}

/** Loads the descriptor set now if it can be found; a request that needs it later tries again. */
export function warmContractRegistry(): void {
  try {
    contractRegistry();
  } catch {
    // Not found (a build without `make gen`): violations are then reported without paths.
  }
}

/**
 * Where `bytes`, a request of `methodPath` the generated decoder refused as nested too deep, goes
 * deepest: the field holding that JSON value (`experiment.condition`, `attributes`), or the
 * message field when no JSON value is on the way. Empty when it cannot tell (not a contract's
 * method, or deeper still than this decode goes).
 */
export function tooDeepFields(methodPath: string, bytes: Uint8Array): FieldViolation[] {
  try {
    const schema = requestMessage(methodPath);
    if (schema === undefined) return [];
    const message = reflect(
      schema,
      fromBinary(schema, bytes, { recursionLimit: DIAGNOSTIC_RECURSION_LIMIT }),
    );
    const deepest = { depth: -1, field: '' };
    descend(message, '', 0, undefined, deepest);
    if (deepest.field === '') return [];
    return [
      {
        field: deepest.field,
        description: `nested deeper than this server decodes (${GENERATED_DECODE_DEPTH} messages; each level of a JSON value takes two or three)`,
        reason: 'TOO_DEEP',
      },
    ];
  } catch {
    return [];
  }
}

/** The nesting of messages at which the generated decoders stop (ts-proto's limit). */
const GENERATED_DECODE_DEPTH = 100;

/** Finds the deepest message under `message`, recording the field that leads there. */
function descend(
  message: ReflectMessage,
  path: string,
  depth: number,
  jsonField: string | undefined,
  deepest: { depth: number; field: string },
): void {
  const transparent = TRANSPARENT.has(message.desc.typeName);
  // The first Struct, Value or ListValue on the way: the caller's JSON value starts there.
  const json = jsonField ?? (transparent ? path : undefined);
  if (depth > deepest.depth) {
    deepest.depth = depth;
    deepest.field = json ?? path;
  }
  for (const field of message.fields) {
    if (!message.isSet(field)) continue;
    const at = transparent ? path : joined(path, field.name);
    if (field.fieldKind === 'message') descend(message.get(field), at, depth + 1, json, deepest);
    else if (field.fieldKind === 'list' && field.listKind === 'message') {
      let index = 0;
      for (const item of message.get(field)) {
        descend(item as ReflectMessage, `${at}[${index}]`, depth + 1, json, deepest);
        index++;
      }
    } else if (field.fieldKind === 'map' && field.mapKind === 'message') {
      for (const [key, value] of message.get(field)) {
        // The entry is a message of its own to the generated decoder, and so is its value.
        descend(value as ReflectMessage, joined(at, String(key)), depth + 2, json, deepest);
      }
    }
  }
}
