/**
 * Size limits of the free-text fields of layers, experiments and holdouts. With the domain's list
 * limits (`MAX_VARIANTS`, `MAX_SURFACES`, `MAX_LAYERS`) they keep one resource far below a gRPC
 * message and a MongoDB document (16 MiB each; a list entry costs a few bytes in protobuf but about
 * a dozen in BSON), so that both stores accept exactly the same writes and a page of a list fits
 * in a response. Checked on the document a write would store, so an update is judged by what it
 * changes into.
 */
import type { FieldViolation } from '../../../platform/src/errors';
import {
  fieldBytes,
  requestLimit,
  SCALAR_FIELD_BYTES,
  STRUCT_BYTES_PER_JSON_BYTE,
  TIME_FIELD_BYTES,
  utf16UnitsBytes,
} from '../../../platform/src/grpc/request-bytes';
import { MAX_LAYERS, MAX_OVERRIDES, MAX_SURFACES, MAX_VARIANTS } from '../domain/validation';
import type { ExperimentDocument, HoldoutDocument, LayerDocument } from '../store/documents';
import { MAX_REQUEST_ID_LENGTH } from '../store/request-results';

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
/** One variant's payload, encoded as JSON, as the contract says. */
export const MAX_PAYLOAD_BYTES = 64 * 1024;
/** All of an experiment's variant payloads together (each is at most 64 KiB on its own). */
export const MAX_PAYLOADS_BYTES = 1024 * 1024;
/** An allocation's `analysis_plan_id`. */
export const MAX_ANALYSIS_PLAN_ID_BYTES = 256;

/*
 * Request limits (see `GrpcServer.add`): the most bytes a request of each admin method may take,
 * refused RESOURCE_EXHAUSTED (`REQUEST_TOO_LARGE`) before it is decoded. Each is `requestLimit`
 * (twice, at least 16 KiB) of what the largest valid request holds, every limit above at once,
 * counted with the bounds of `request-bytes.ts`; the contract states them (assignment_service.proto).
 */

/** Ids, surfaces and variant keys: at most 63 ASCII characters (`ID_PATTERN` and the others). */
const NAME_BYTES = 63;
/** An etag: its incarnation and version, two safe integers (see `etagOf`), with room to spare. */
const ETAG_BYTES = 64;
const REQUEST_ID_BYTES = utf16UnitsBytes(MAX_REQUEST_ID_LENGTH);
/** An update mask: each of the ~20 paths it may name, once (none over 25 characters). */
const UPDATE_MASK_BYTES = 1024;
/**
 * A page token (base64url JSON of the last id and the filters, statuses, layer and surface, it was
 * issued for): under 500 bytes for filters naming a layer and a surface.
 */
const PAGE_TOKEN_BYTES = 1024;
/** What a write request carries besides its resource: an update mask and a request id. */
const WRITE_EXTRA_BYTES = fieldBytes(UPDATE_MASK_BYTES) + fieldBytes(REQUEST_ID_BYTES);
/** Description, owner and tags, as every resource has them. */
const LABEL_BYTES =
  fieldBytes(MAX_DESCRIPTION_BYTES) +
  fieldBytes(MAX_OWNER_BYTES) +
  MAX_TAGS * fieldBytes(MAX_TAG_BYTES);
/**
 * The output-only fields of a resource a client read and sends back (ignored): its times, etag and
 * status.
 */
const ECHOED_OUTPUT_BYTES = 6 * TIME_FIELD_BYTES + fieldBytes(ETAG_BYTES) + SCALAR_FIELD_BYTES;
/**
 * Output-only layer allocations counted in a layer sent back as it was read: one per experiment
 * of the layer that is not CONCLUDED, which nothing bounds; this many is far above real use.
 */
export const ECHOED_LAYER_ALLOCATIONS = 10_000;

/** CreateLayer and UpdateLayer (~1 MB of it for echoed allocations). */
export const LAYER_REQUEST_MAX_BYTES = requestLimit(
  fieldBytes(
    fieldBytes(NAME_BYTES) +
      LABEL_BYTES +
      ECHOED_LAYER_ALLOCATIONS *
        fieldBytes(fieldBytes(NAME_BYTES) + fieldBytes(2 * SCALAR_FIELD_BYTES)) +
      ECHOED_OUTPUT_BYTES,
  ) + WRITE_EXTRA_BYTES,
);

/**
 * CreateExperiment and UpdateExperiment. Payloads and the condition are limited as JSON, and a
 * Struct may take 5.5 times its JSON (a list of numbers): a valid experiment may take ~7.4 MB,
 * mostly its payloads, so this limit stays near the default message limit (16 MiB).
 */
export const EXPERIMENT_REQUEST_MAX_BYTES = requestLimit(
  fieldBytes(
    fieldBytes(NAME_BYTES) +
      LABEL_BYTES +
      fieldBytes(MAX_UNIT_TYPE_BYTES) +
      MAX_SURFACES * fieldBytes(NAME_BYTES) +
      // Each variant: its key, description, weight and the overhead of its payload's field.
      MAX_VARIANTS *
        fieldBytes(
          fieldBytes(NAME_BYTES) +
            fieldBytes(MAX_DESCRIPTION_BYTES) +
            SCALAR_FIELD_BYTES +
            fieldBytes(0),
        ) +
      STRUCT_BYTES_PER_JSON_BYTE * MAX_PAYLOADS_BYTES +
      fieldBytes(STRUCT_BYTES_PER_JSON_BYTE * MAX_CONDITION_BYTES) +
      // Layer id and range, seed, bandit settings.
      fieldBytes(NAME_BYTES) +
      fieldBytes(2 * SCALAR_FIELD_BYTES) +
      fieldBytes(MAX_SEED_BYTES) +
      fieldBytes(SCALAR_FIELD_BYTES) +
      MAX_OVERRIDES * fieldBytes(fieldBytes(MAX_UNIT_ID_BYTES) + fieldBytes(NAME_BYTES)) +
      // Coverage, hash version, allocation mode, sticky; scheduled start and end, sticky TTL.
      4 * SCALAR_FIELD_BYTES +
      3 * TIME_FIELD_BYTES +
      // The conclusion (output only, sent back with an experiment read).
      fieldBytes(fieldBytes(NAME_BYTES) + fieldBytes(MAX_SUMMARY_BYTES) + TIME_FIELD_BYTES) +
      ECHOED_OUTPUT_BYTES,
  ) + WRITE_EXTRA_BYTES,
);

/** CreateHoldout and UpdateHoldout. */
export const HOLDOUT_REQUEST_MAX_BYTES = requestLimit(
  fieldBytes(
    fieldBytes(NAME_BYTES) +
      LABEL_BYTES +
      fieldBytes(MAX_UNIT_TYPE_BYTES) +
      fieldBytes(MAX_SEED_BYTES) +
      (MAX_SURFACES + MAX_LAYERS) * fieldBytes(NAME_BYTES) +
      // Fraction, hash version.
      2 * SCALAR_FIELD_BYTES +
      ECHOED_OUTPUT_BYTES,
  ) + WRITE_EXTRA_BYTES,
);

/** UpdateAllocation: a weight per variant, with its evidence. */
export const ALLOCATION_REQUEST_MAX_BYTES = requestLimit(
  fieldBytes(
    fieldBytes(NAME_BYTES) +
      MAX_VARIANTS * fieldBytes(fieldBytes(NAME_BYTES) + 4 * SCALAR_FIELD_BYTES) +
      fieldBytes(MAX_ANALYSIS_PLAN_ID_BYTES) +
      // Minimum arm share, sequence, method; source (output only).
      3 * SCALAR_FIELD_BYTES +
      fieldBytes(NAME_BYTES) +
      ECHOED_OUTPUT_BYTES,
  ) + WRITE_EXTRA_BYTES,
);

/** ConcludeExperiment: its summary, as a description. */
export const CONCLUDE_REQUEST_MAX_BYTES = requestLimit(
  2 * fieldBytes(NAME_BYTES) +
    fieldBytes(ETAG_BYTES) +
    fieldBytes(MAX_SUMMARY_BYTES) +
    fieldBytes(REQUEST_ID_BYTES),
);

/**
 * The reads and the other writes (Get, List, Delete, Start, Stop, GetAllocation): an id, an etag,
 * a request id, a page size and token, the list filters (each status once, a layer, a surface)
 * and a sequence, all at once.
 */
export const SMALL_REQUEST_MAX_BYTES = requestLimit(
  3 * fieldBytes(NAME_BYTES) +
    fieldBytes(ETAG_BYTES) +
    fieldBytes(REQUEST_ID_BYTES) +
    fieldBytes(PAGE_TOKEN_BYTES) +
    fieldBytes(8) +
    2 * SCALAR_FIELD_BYTES,
);

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
