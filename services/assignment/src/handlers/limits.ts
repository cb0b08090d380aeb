/**
 * Size limits of the free-text fields of layers, experiments and holdouts. With the domain's list
 * limits (`MAX_VARIANTS`, `MAX_SURFACES`, `MAX_LAYERS`) they keep one resource far below a gRPC
 * message and a MongoDB document (16 MiB each; a list entry costs a few bytes in protobuf but about
 * a dozen in BSON), so that both stores accept exactly the same writes and a page of a list fits
 * in a response. Checked on the document a write would store, so an update is judged by what it
 * changes into.
 */
import type { FieldViolation } from '../../../platform/src/errors';
import { MAX_OVERRIDES } from '../domain/validation';
import type { ExperimentDocument, HoldoutDocument, LayerDocument } from '../store/documents';

export const MAX_DESCRIPTION_BYTES = 8 * 1024;
export const MAX_OWNER_BYTES = 256;
export const MAX_TAGS = 64;
export const MAX_TAG_BYTES = 128;
export const MAX_UNIT_TYPE_BYTES = 128;
/** A unit id, as Resolve takes it and as an experiment's overrides name it. */
export const MAX_UNIT_ID_BYTES = 256;
/** A bucketing seed (an experiment's or a holdout's): it is hashed with every unit id. */
export const MAX_SEED_BYTES = 256;
/** A concluded experiment's summary, as a description. */
export const MAX_SUMMARY_BYTES = MAX_DESCRIPTION_BYTES;
export const MAX_CONDITION_BYTES = 64 * 1024;
/** All of an experiment's variant payloads together (each is at most 64 KiB on its own). */
export const MAX_PAYLOADS_BYTES = 1024 * 1024;

/** Adds a TOO_LONG violation of `field` to `out` when `value` is over `maxBytes` in UTF-8. */
export function tooLong(
  field: string,
  value: string,
  maxBytes: number,
  out: FieldViolation[],
): void {
  // Under maxBytes / 3 characters, UTF-8 cannot exceed maxBytes: most values skip the count.
  if (value.length * 3 <= maxBytes || Buffer.byteLength(value) <= maxBytes) return;
  out.push({ field, description: `at most ${maxBytes} bytes`, reason: 'TOO_LONG' });
}

/** Violations of the limits every resource shares (fields unprefixed: `description`, …). */
function labelViolations(
  doc: LayerDocument | ExperimentDocument | HoldoutDocument,
): FieldViolation[] {
  const out: FieldViolation[] = [];
  tooLong('description', doc.description, MAX_DESCRIPTION_BYTES, out);
  tooLong('owner', doc.owner, MAX_OWNER_BYTES, out);
  if (doc.tags.length > MAX_TAGS) {
    out.push({ field: 'tags', description: `at most ${MAX_TAGS} tags`, reason: 'TOO_MANY' });
  } else {
    doc.tags.forEach((tag, i) => {
      tooLong(`tags[${i}]`, tag, MAX_TAG_BYTES, out);
    });
  }
  return out;
}

export function layerSizeViolations(doc: LayerDocument): FieldViolation[] {
  return labelViolations(doc);
}

export function holdoutSizeViolations(doc: HoldoutDocument): FieldViolation[] {
  const out = labelViolations(doc);
  tooLong('unit_type', doc.unitType, MAX_UNIT_TYPE_BYTES, out);
  tooLong('seed', doc.seed, MAX_SEED_BYTES, out);
  return out;
}

export function experimentSizeViolations(doc: ExperimentDocument): FieldViolation[] {
  const out = labelViolations(doc);
  tooLong('unit_type', doc.unitType, MAX_UNIT_TYPE_BYTES, out);
  tooLong('seed', doc.seed, MAX_SEED_BYTES, out);
  tooLong('condition', doc.conditionJson, MAX_CONDITION_BYTES, out);
  // Counted by validation (MAX_OVERRIDES): past it, one violation says so.
  if ((doc.overrides?.length ?? 0) <= MAX_OVERRIDES) {
    doc.overrides?.forEach((override, i) => {
      tooLong(`overrides[${i}].unit_id`, override.unitId, MAX_UNIT_ID_BYTES, out);
    });
  }
  let payloads = 0;
  doc.variants.forEach((variant, i) => {
    tooLong(`variants[${i}].description`, variant.description, MAX_DESCRIPTION_BYTES, out);
    payloads += Buffer.byteLength(variant.payloadJson);
  });
  if (payloads > MAX_PAYLOADS_BYTES) {
    out.push({
      field: 'variants',
      description: `the variants' payloads together are at most ${MAX_PAYLOADS_BYTES} bytes encoded`,
      reason: 'TOO_LARGE',
    });
  }
  return out;
}
