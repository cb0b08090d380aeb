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
import { contractRegistry } from './descriptor-set';

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
/** Violations reported at most (a status must fit in the trailers). */
const MAX_VIOLATIONS = 20;

/** The request message of a gRPC method path (`/tandem.x.v1.Service/Method`), if it is a contract's. */
function requestMessage(methodPath: string): DescMessage | undefined {
  const [, serviceName, methodName] = methodPath.split('/');
  if (serviceName === undefined || methodName === undefined) return undefined;
  const service = contractRegistry().getService(serviceName);
  return service?.methods.find((method) => method.name === methodName)?.input;
}

/** True for a 64-bit integer (bigint, or a string where the field asks for one) beyond ±2^53. */
function beyondSafe(scalar: ScalarType | undefined, value: unknown): boolean {
  if (scalar === undefined || !SIXTY_FOUR_BIT.has(scalar)) return false;
  if (typeof value !== 'bigint' && typeof value !== 'string') return false;
  const integer = BigInt(value);
  return integer > LIMIT || integer < -LIMIT;
}

function walk(message: ReflectMessage, prefix: string, out: FieldViolation[]): void {
  for (const field of message.fields) {
    if (out.length >= MAX_VIOLATIONS) return;
    if (!message.isSet(field)) continue;
    const path = `${prefix}${field.name}`;
    switch (field.fieldKind) {
      case 'scalar':
        if (beyondSafe(field.scalar, message.get(field)))
          out.push({ field: path, description: DESCRIPTION, reason: REASON });
        break;
      case 'message':
        walk(message.get(field), `${path}.`, out);
        break;
      case 'list': {
        let index = 0;
        for (const item of message.get(field)) {
          if (out.length >= MAX_VIOLATIONS) return;
          if (field.listKind === 'message') walk(item as ReflectMessage, `${path}[${index}].`, out);
          else if (beyondSafe(field.scalar, item)) {
            out.push({ field: `${path}[${index}]`, description: DESCRIPTION, reason: REASON });
          }
          index++;
        }
        break;
      }
      case 'map':
        for (const [key, value] of message.get(field)) {
          if (out.length >= MAX_VIOLATIONS) return;
          // A map entry as the other violations name it: `field.key` (AIP-161).
          const entry = `${path}.${String(key)}`;
          if (beyondSafe(field.mapKey, key)) {
            out.push({ field: entry, description: `${DESCRIPTION} (the key)`, reason: REASON });
          }
          if (field.mapKind === 'message') walk(value as ReflectMessage, `${entry}.`, out);
          else if (beyondSafe(field.scalar, value))
            out.push({ field: entry, description: DESCRIPTION, reason: REASON });
        }
        break;
      default:
        break;
    }
  }
}

/**
 * The fields of `bytes`, a request of `methodPath`, that this server cannot hold; empty when the
 * method is not a contract's or the bytes are not that message at all.
 */
export function undecodableFields(methodPath: string, bytes: Uint8Array): FieldViolation[] {
  try {
    const schema = requestMessage(methodPath);
    if (schema === undefined) return [];
    const violations: FieldViolation[] = [];
    walk(reflect(schema, fromBinary(schema, bytes)), '', violations);
    return violations;
  } catch {
    return [];
  }
}

/** Loads the descriptor set now if it can be found; a request that needs it later tries again. */
export function warmContractRegistry(): void {
  try {
    contractRegistry();
  } catch {
    // Not found (a build without `make gen`): violations are then reported without paths.
  }
}
