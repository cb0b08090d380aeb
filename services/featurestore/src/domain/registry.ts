/**
 * Entity and feature-view definitions: what makes one valid, and whether applying a new
 * definition over a live one is compatible.
 *
 * Why here: ApplyEntity / ApplyFeatureView are declarative upserts. The rules of a valid
 * definition (INVALID_ARGUMENT, every violation at once) and of a compatible change
 * (FAILED_PRECONDITION with one reason per change) are stated in feature_view.proto and
 * featurestore_service.proto; keeping them pure lets the gRPC layer, tests and the stream
 * consumer share one reading of them. Durations are in ms; field paths use proto field names.
 */

import {
  codePointsBytes,
  fieldBytes,
  SCALAR_FIELD_BYTES,
  TIME_FIELD_BYTES,
} from '../../../platform/src/grpc/request-bytes';
import {
  isConcreteValueType,
  valueLimits,
  valueTypeName,
  ValueType,
  type FieldViolation,
} from './feature-values';
import {
  AggregationFunction,
  AggregationKey,
  type WindowAggregationSpec,
} from './window-aggregation';

/** An entity: a kind of thing features are keyed by (entity.proto). */
export interface EntityDefinition {
  readonly name: string;
  readonly joinKey: string;
  /** STRING or INT64. */
  readonly valueType: ValueType;
  readonly description: string;
  readonly owner: string;
}

/** One typed feature of a view. */
export interface FeatureDefinition {
  readonly name: string;
  readonly valueType: ValueType;
  readonly description: string;
  /** FLOAT_VECTOR only: the exact length required; 0 accepts any length up to 4,096. */
  readonly vectorLength: number;
}

/** One windowed aggregate as declared (the bucket may be left to its default). */
export interface AggregationDefinition {
  readonly feature: string;
  readonly function: AggregationFunction;
  /** The event field aggregated; empty for COUNT. */
  readonly valueField: string;
  readonly windowMs: number;
  /** 0 or undefined: the default, window / 60. */
  readonly bucketMs?: number;
}

/** Values written by clients with WriteFeatures. */
export interface PushSource {
  readonly kind: 'push';
}

/** Values computed from outcome events on NATS JetStream. */
export interface StreamSource {
  readonly kind: 'stream';
  readonly subject: string;
  readonly eventNames: readonly string[];
  readonly key: AggregationKey;
  readonly aggregations: readonly AggregationDefinition[];
  /** 0 or undefined: the default, the longest window. */
  readonly allowedLatenessMs?: number;
}

/** Where a view's values come from. */
export type FeatureViewSource = PushSource | StreamSource;

/** A feature view as applied (feature_view.proto), without the output-only fields. */
export interface FeatureViewDefinition {
  readonly name: string;
  readonly description: string;
  readonly owner: string;
  readonly tags: Readonly<Record<string, string>>;
  readonly entities: readonly string[];
  readonly features: readonly FeatureDefinition[];
  /** 0 = records never expire. */
  readonly ttlMs: number;
  /** undefined = the default, true. */
  readonly online?: boolean;
  /** undefined when the request named no source (reported as a violation). */
  readonly source: FeatureViewSource | undefined;
}

/** One reason a change is refused, shaped like google.rpc.PreconditionFailure.Violation. */
export interface IncompatibleChange {
  /** The field path, for example `features.ctr.value_type`. */
  readonly subject: string;
  /** Why the change is refused. */
  readonly description: string;
}

/** The outcome of comparing a proposed definition with the live one. */
export type DefinitionDiff =
  /** Identical: apply changes nothing and keeps the etag. */
  | { readonly kind: 'unchanged' }
  /** Compatible: store it; `changes` lists what changed, for the log. */
  | { readonly kind: 'compatible'; readonly changes: readonly string[] }
  /** Refused with FAILED_PRECONDITION, one entry per incompatible change. */
  | { readonly kind: 'incompatible'; readonly changes: readonly IncompatibleChange[] };

/** Limits and patterns from the contract. */
export const registryLimits = {
  resourceName: /^[a-z][a-z0-9_-]{0,62}$/,
  identifier: /^[a-z][a-z0-9_]{0,62}$/,
  maxDescription: 1_024,
  maxOwner: 256,
  /** A hundred years: a record's expiry (event time + TTL) must stay a date. */
  maxTtlMs: 100 * 365 * 86_400_000,
  maxTags: 64,
  maxTagValue: 256,
  /** An aggregation's `value_field`, `properties.` and a path (ASCII by its pattern). */
  maxValueField: 256,
  maxEntities: 4,
  maxFeatures: 1_000,
  maxAggregations: 100,
  maxEventNames: 64,
  minWindowMs: 1_000,
  maxWindowMs: 30 * 24 * 3_600_000,
  minBucketMs: 1_000,
  maxBucketsPerWindow: 1_440,
  subjectPrefix: 'tandem.events.v1.outcome.',
} as const;

/*
 * The most bytes a valid definition takes encoded, every limit above at once, with the bounds of
 * the kit's `request-bytes.ts`: what the request limits of ApplyEntity and ApplyFeatureView are
 * derived from (see `FEATURE_STORE_REQUEST_LIMITS`). Output-only fields count too, as a client
 * applying a definition it read sends them back.
 */

/** Names, join keys, feature and event names: at most 63 ASCII characters. */
export const MAX_NAME_BYTES = 63;
/** An etag: a version and a creation time in base 36 (`3.mxbhtii0`), with room to spare. */
export const MAX_ETAG_BYTES = 64;
/**
 * An aggregation's `value_field`, a path into an OutcomeEvent (`properties.watch_seconds`): at
 * most `maxValueField` ASCII characters, counted with room to spare, for a value field stored
 * before that limit and applied again unchanged.
 */
const VALUE_FIELD_BYTES = 1024;
/** Etag, create and update time. */
const OUTPUT_BYTES = fieldBytes(MAX_ETAG_BYTES) + 2 * TIME_FIELD_BYTES;

/** An Entity. */
export const MAX_ENTITY_BYTES =
  2 * fieldBytes(MAX_NAME_BYTES) +
  SCALAR_FIELD_BYTES +
  fieldBytes(codePointsBytes(registryLimits.maxDescription)) +
  fieldBytes(codePointsBytes(registryLimits.maxOwner)) +
  OUTPUT_BYTES;

/** A FeatureView: ~4.3 MB, nearly all of it 1,000 features with 1,024-character descriptions. */
export const MAX_FEATURE_VIEW_BYTES =
  fieldBytes(MAX_NAME_BYTES) +
  fieldBytes(codePointsBytes(registryLimits.maxDescription)) +
  fieldBytes(codePointsBytes(registryLimits.maxOwner)) +
  registryLimits.maxTags *
    fieldBytes(
      fieldBytes(MAX_NAME_BYTES) + fieldBytes(codePointsBytes(registryLimits.maxTagValue)),
    ) +
  registryLimits.maxEntities * fieldBytes(MAX_NAME_BYTES) +
  // Each feature: name, value type, description, vector length.
  registryLimits.maxFeatures *
    fieldBytes(
      fieldBytes(MAX_NAME_BYTES) +
        2 * SCALAR_FIELD_BYTES +
        fieldBytes(codePointsBytes(registryLimits.maxDescription)),
    ) +
  // TTL, online.
  TIME_FIELD_BYTES +
  SCALAR_FIELD_BYTES +
  // A stream source (a push source is empty): subject, event names, key, aggregations (feature,
  // function, value field, window, bucket), allowed lateness.
  fieldBytes(
    fieldBytes(registryLimits.subjectPrefix.length + MAX_NAME_BYTES) +
      registryLimits.maxEventNames * fieldBytes(MAX_NAME_BYTES) +
      SCALAR_FIELD_BYTES +
      registryLimits.maxAggregations *
        fieldBytes(
          fieldBytes(MAX_NAME_BYTES) +
            SCALAR_FIELD_BYTES +
            fieldBytes(VALUE_FIELD_BYTES) +
            2 * TIME_FIELD_BYTES,
        ) +
      TIME_FIELD_BYTES,
  ) +
  OUTPUT_BYTES;

/**
 * Whether `text` has more than `max` characters, counted as Unicode code points (an emoji is one,
 * not the two UTF-16 units of `length`), as the contracts' limits are stated.
 */
export function longerThan(text: string, max: number): boolean {
  if (text.length <= max) return false;
  let count = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    // A high surrogate followed by a low one is one code point.
    if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) i++;
    }
    if (++count > max) return true;
  }
  return false;
}

/** Every problem with an entity definition (INVALID_ARGUMENT). */
export function validateEntity(entity: EntityDefinition): FieldViolation[] {
  const violations: FieldViolation[] = [];
  const add = (field: string, description: string, reason: string): void => {
    violations.push({ field, description, reason });
  };
  if (!registryLimits.resourceName.test(entity.name)) {
    add('name', 'must match ^[a-z][a-z0-9_-]{0,62}$', 'INVALID_NAME');
  }
  if (!registryLimits.identifier.test(entity.joinKey)) {
    add('join_key', 'must match ^[a-z][a-z0-9_]{0,62}$', 'INVALID_NAME');
  }
  if (entity.valueType !== ValueType.String && entity.valueType !== ValueType.Int64) {
    add('value_type', 'must be VALUE_TYPE_STRING or VALUE_TYPE_INT64', 'UNSUPPORTED_VALUE_TYPE');
  }
  if (longerThan(entity.description, registryLimits.maxDescription)) {
    add('description', `must be at most ${registryLimits.maxDescription} characters`, 'TOO_LONG');
  }
  if (longerThan(entity.owner, registryLimits.maxOwner)) {
    add('owner', `must be at most ${registryLimits.maxOwner} characters`, 'TOO_LONG');
  }
  return violations;
}

/**
 * Compares an entity with the live one. The join key and value type may change only while no
 * view references the entity.
 */
export function diffEntity(
  live: EntityDefinition,
  proposed: EntityDefinition,
  referencedByViews: readonly string[],
): DefinitionDiff {
  const changes: string[] = [];
  const incompatible: IncompatibleChange[] = [];
  const referenced = referencedByViews.length > 0;
  const because = `the entity is referenced by feature views ${referencedByViews.join(', ')}`;
  if (live.joinKey !== proposed.joinKey) {
    if (referenced) incompatible.push({ subject: 'join_key', description: because });
    changes.push('join_key');
  }
  if (live.valueType !== proposed.valueType) {
    if (referenced) incompatible.push({ subject: 'value_type', description: because });
    changes.push('value_type');
  }
  if (live.description !== proposed.description) changes.push('description');
  if (live.owner !== proposed.owner) changes.push('owner');
  if (incompatible.length > 0) return { kind: 'incompatible', changes: incompatible };
  return changes.length === 0 ? { kind: 'unchanged' } : { kind: 'compatible', changes };
}

/** The bucket size an aggregation uses: the declared one, else window / 60. */
export function effectiveBucketMs(aggregation: AggregationDefinition): number {
  const declared = aggregation.bucketMs ?? 0;
  return declared > 0 ? declared : aggregation.windowMs / 60;
}

/** The longest window of a stream source, in ms. */
export function longestWindowMs(source: StreamSource): number {
  return source.aggregations.reduce((longest, a) => Math.max(longest, a.windowMs), 0);
}

/** The allowed lateness a stream source uses: the declared one, else the longest window. */
export function effectiveAllowedLatenessMs(source: StreamSource): number {
  const declared = source.allowedLatenessMs ?? 0;
  return declared > 0 ? declared : longestWindowMs(source);
}

/**
 * The resolved aggregations of a valid stream source, in the view's feature order (the order
 * features are served in), ready for a WindowAggregator.
 */
export function windowAggregationSpecs(view: FeatureViewDefinition): WindowAggregationSpec[] {
  const source = view.source;
  if (source?.kind !== 'stream') return [];
  return view.features.flatMap((feature) => {
    const aggregation = source.aggregations.find((a) => a.feature === feature.name);
    return aggregation === undefined
      ? []
      : [
          {
            feature: aggregation.feature,
            function: aggregation.function,
            windowMs: aggregation.windowMs,
            bucketMs: effectiveBucketMs(aggregation),
            valueType: feature.valueType,
          },
        ];
  });
}

/**
 * Every problem with a feature view definition, all at once (INVALID_ARGUMENT). Entity existence
 * and entity types are checked separately by {@link checkViewEntities}, because a missing entity
 * is NOT_FOUND, not INVALID_ARGUMENT.
 */
export function validateFeatureView(view: FeatureViewDefinition): FieldViolation[] {
  const violations: FieldViolation[] = [];
  const add = (field: string, description: string, reason: string): void => {
    violations.push({ field, description, reason });
  };

  if (!registryLimits.resourceName.test(view.name))
    add('name', 'must match ^[a-z][a-z0-9_-]{0,62}$', 'INVALID_NAME');
  if (longerThan(view.description, registryLimits.maxDescription)) {
    add('description', `must be at most ${registryLimits.maxDescription} characters`, 'TOO_LONG');
  }
  const tagKeys = Object.keys(view.tags);
  if (tagKeys.length > registryLimits.maxTags) {
    add('tags', `must hold at most ${registryLimits.maxTags} entries`, 'TOO_MANY');
  }
  for (const key of tagKeys) {
    if (!registryLimits.resourceName.test(key)) {
      add(`tags.${key}`, 'the key must match ^[a-z][a-z0-9_-]{0,62}$', 'INVALID_NAME');
    }
    if (longerThan(view.tags[key] ?? '', registryLimits.maxTagValue)) {
      add(
        `tags.${key}`,
        `the value must be at most ${registryLimits.maxTagValue} characters`,
        'TOO_LONG',
      );
    }
  }

  if (view.entities.length === 0) add('entities', 'must name at least one entity', 'REQUIRED');
  if (view.entities.length > registryLimits.maxEntities) {
    add('entities', `must name at most ${registryLimits.maxEntities} entities`, 'TOO_MANY');
  }
  view.entities.forEach((entity, i) => {
    // A name no entity can have is a bad request, not a reference to a missing entity.
    if (!registryLimits.resourceName.test(entity)) {
      add(`entities[${i}]`, 'must match ^[a-z][a-z0-9_-]{0,62}$', 'INVALID_NAME');
    } else if (view.entities.indexOf(entity) !== i) {
      add(`entities[${i}]`, `repeats entity ${entity}`, 'DUPLICATE_ENTITY');
    }
  });

  validateFeatures(view.features, add);

  if (!(Number.isFinite(view.ttlMs) && view.ttlMs >= 0 && view.ttlMs <= registryLimits.maxTtlMs))
    add('ttl', 'must be between zero (no expiry) and 100 years', 'OUT_OF_RANGE');
  if (longerThan(view.owner, registryLimits.maxOwner)) {
    add('owner', `must be at most ${registryLimits.maxOwner} characters`, 'TOO_LONG');
  }

  const source = view.source;
  if (source === undefined) {
    add('source', 'is required: set push_source or stream_source', 'REQUIRED');
  } else if (source.kind === 'stream') {
    if (view.entities.length !== 1) {
      add('entities', 'a stream-sourced view must have exactly one entity', 'ONE_ENTITY_REQUIRED');
    }
    validateStreamSource(view, source, add);
  }
  return violations;
}

function validateFeatures(
  features: readonly FeatureDefinition[],
  add: (field: string, description: string, reason: string) => void,
): void {
  if (features.length === 0) add('features', 'must hold at least one feature', 'REQUIRED');
  if (features.length > registryLimits.maxFeatures) {
    add('features', `must hold at most ${registryLimits.maxFeatures} features`, 'TOO_MANY');
  }
  const seen = new Set<string>();
  features.forEach((feature, i) => {
    const at = `features[${i}]`;
    if (!registryLimits.identifier.test(feature.name)) {
      add(`${at}.name`, 'must match ^[a-z][a-z0-9_]{0,62}$', 'INVALID_NAME');
    } else if (seen.has(feature.name)) {
      add(`${at}.name`, `repeats feature ${feature.name}`, 'DUPLICATE_FEATURE');
    }
    seen.add(feature.name);
    if (!isConcreteValueType(feature.valueType)) {
      add(`${at}.value_type`, 'must be set to a concrete value type', 'REQUIRED');
    }
    if (feature.vectorLength !== 0) {
      if (feature.valueType !== ValueType.FloatVector) {
        add(`${at}.vector_length`, 'may be set only for VALUE_TYPE_FLOAT_VECTOR', 'MUST_BE_UNSET');
      } else if (
        !Number.isInteger(feature.vectorLength) ||
        feature.vectorLength < 0 ||
        feature.vectorLength > valueLimits.maxVectorLength
      ) {
        add(
          `${at}.vector_length`,
          `must be between 0 and ${valueLimits.maxVectorLength}`,
          'OUT_OF_RANGE',
        );
      }
    }
    if (longerThan(feature.description, registryLimits.maxDescription)) {
      add(
        `${at}.description`,
        `must be at most ${registryLimits.maxDescription} characters`,
        'TOO_LONG',
      );
    }
  });
}

/** The OutcomeEvent fields an aggregation can read (`properties.<key>` besides). */
const OUTCOME_FIELDS = new Set([
  'value',
  'event_id',
  'name',
  'unit.id',
  'unit.type',
  'item_id',
  'decision_id',
  'source',
  'surface',
]);
/** A key path into `properties`, a Struct: its keys verbatim, one per segment. */
const propertiesPathPattern = /^properties(\.[A-Za-z0-9_-]+)+$/;

/** Whether `path` names a field of OutcomeEvent (any other would make every event invalid). */
function isOutcomeField(path: string): boolean {
  return OUTCOME_FIELDS.has(path) || propertiesPathPattern.test(path);
}

function validateStreamSource(
  view: FeatureViewDefinition,
  source: StreamSource,
  add: (field: string, description: string, reason: string) => void,
): void {
  const at = 'stream_source';
  validateSubject(source.subject, (d) => {
    add(`${at}.subject`, d, 'INVALID_SUBJECT');
  });
  if (source.eventNames.length > registryLimits.maxEventNames) {
    add(`${at}.event_names`, `must hold at most ${registryLimits.maxEventNames} names`, 'TOO_MANY');
  }
  source.eventNames.forEach((name, i) => {
    if (!registryLimits.identifier.test(name)) {
      add(`${at}.event_names[${i}]`, 'must match ^[a-z][a-z0-9_]{0,62}$', 'INVALID_NAME');
    }
  });
  if (source.key !== AggregationKey.UnitId && source.key !== AggregationKey.ItemId) {
    add(`${at}.key`, 'must be AGGREGATION_KEY_UNIT_ID or AGGREGATION_KEY_ITEM_ID', 'REQUIRED');
  }
  if (source.aggregations.length === 0)
    add(`${at}.aggregations`, 'must hold at least one', 'REQUIRED');
  if (source.aggregations.length > registryLimits.maxAggregations) {
    add(`${at}.aggregations`, `must hold at most ${registryLimits.maxAggregations}`, 'TOO_MANY');
  }

  const features = new Map(view.features.map((f) => [f.name, f]));
  const produced = new Set<string>();
  source.aggregations.forEach((aggregation, i) => {
    const path = `${at}.aggregations[${i}]`;
    const feature = features.get(aggregation.feature);
    if (feature === undefined) {
      add(
        `${path}.feature`,
        `names no feature of the view: ${aggregation.feature}`,
        'UNKNOWN_FEATURE',
      );
    } else if (produced.has(aggregation.feature)) {
      add(
        `${path}.feature`,
        `feature ${aggregation.feature} is produced by another aggregation`,
        'DUPLICATE_FEATURE',
      );
    } else {
      const problem = featureTypeProblem(aggregation, feature.valueType);
      if (problem !== undefined) add(`${path}.feature`, problem, 'WRONG_VALUE_TYPE');
    }
    produced.add(aggregation.feature);
    validateAggregation(aggregation, path, add, feature?.valueType);
  });
  view.features.forEach((feature, i) => {
    if (!produced.has(feature.name)) {
      add(
        `features[${i}]`,
        `is not produced by any aggregation of the stream source`,
        'NOT_AGGREGATED',
      );
    }
  });

  const longest = longestWindowMs(source);
  const lateness = source.allowedLatenessMs ?? 0;
  if (!(Number.isFinite(lateness) && lateness >= 0)) {
    add(`${at}.allowed_lateness`, 'must not be negative', 'OUT_OF_RANGE');
  } else if (longest > 0 && lateness > longest) {
    add(`${at}.allowed_lateness`, 'may not exceed the longest window', 'OUT_OF_RANGE');
  }
  if (view.ttlMs > 0 && view.ttlMs < longest) {
    add('ttl', 'must be zero or at least the longest window of the stream source', 'OUT_OF_RANGE');
  }
}

function validateSubject(subject: string, add: (description: string) => void): void {
  const prefix = registryLimits.subjectPrefix;
  if (!subject.startsWith(prefix) || subject.length === prefix.length) {
    add(`must start with ${prefix} followed by an event name or a wildcard`);
    return;
  }
  // An outcome's name is the subject's last token and holds no dot: one token after the prefix.
  const tokens = subject.slice(prefix.length).split('.');
  if (tokens.length > 1) {
    add(`must be ${prefix} followed by one event name, * or > (an event name is one token)`);
    return;
  }
  const [token = ''] = tokens;
  if (token !== '*' && token !== '>' && !registryLimits.identifier.test(token)) {
    add(`token ${JSON.stringify(token)} is not an event name, * or >`);
  }
}

function featureTypeProblem(
  aggregation: AggregationDefinition,
  type: ValueType,
): string | undefined {
  switch (aggregation.function) {
    case AggregationFunction.Count:
    case AggregationFunction.DistinctCount:
      return type === ValueType.Int64
        ? undefined
        : 'COUNT and DISTINCT_COUNT need VALUE_TYPE_INT64';
    case AggregationFunction.Sum:
    case AggregationFunction.Mean:
    case AggregationFunction.Min:
    case AggregationFunction.Max:
      return type === ValueType.Double
        ? undefined
        : 'SUM, MEAN, MIN and MAX need VALUE_TYPE_DOUBLE';
    case AggregationFunction.Last:
      if (aggregation.valueField === 'value') {
        return type === ValueType.Double ? undefined : 'LAST of `value` needs VALUE_TYPE_DOUBLE';
      }
      return type === ValueType.Double || type === ValueType.String
        ? undefined
        : 'LAST needs VALUE_TYPE_DOUBLE or VALUE_TYPE_STRING';
    default:
      return undefined; // the function itself is reported by validateAggregation
  }
}

/**
 * What is wrong with aggregating `value_field` as declared, when its type is known: every
 * OutcomeEvent field but `value` is a string, so SUM, MEAN, MIN and MAX of one would skip every
 * event, and LAST of one needs a string feature. (`properties.<key>` may hold either.)
 */
function valueFieldTypeProblem(
  aggregation: AggregationDefinition,
  featureType: ValueType | undefined,
): string | undefined {
  const field = aggregation.valueField;
  if (field === 'value' || !OUTCOME_FIELDS.has(field)) return undefined;
  switch (aggregation.function) {
    case AggregationFunction.Sum:
    case AggregationFunction.Mean:
    case AggregationFunction.Min:
    case AggregationFunction.Max:
      return `SUM, MEAN, MIN and MAX need a number; ${field} is a string`;
    case AggregationFunction.Last:
      return featureType === undefined || featureType === ValueType.String
        ? undefined
        : `${field} is a string: LAST of it needs a VALUE_TYPE_STRING feature`;
    default:
      return undefined;
  }
}

function validateAggregation(
  aggregation: AggregationDefinition,
  path: string,
  add: (field: string, description: string, reason: string) => void,
  featureType: ValueType | undefined,
): void {
  const fn = aggregation.function;
  if (!(fn >= AggregationFunction.Count && fn <= AggregationFunction.DistinctCount)) {
    add(`${path}.function`, 'must be set', 'REQUIRED');
  }
  if (fn === AggregationFunction.Count) {
    if (aggregation.valueField !== '')
      add(`${path}.value_field`, 'must be empty for COUNT', 'MUST_BE_UNSET');
  } else if (aggregation.valueField.length > registryLimits.maxValueField) {
    add(
      `${path}.value_field`,
      `must be at most ${registryLimits.maxValueField} characters`,
      'TOO_LONG',
    );
  } else if (!isOutcomeField(aggregation.valueField)) {
    add(
      `${path}.value_field`,
      'must name an OutcomeEvent field (value, item_id, unit.id, …) or properties.<key>',
      'INVALID_PATH',
    );
  } else {
    const problem = valueFieldTypeProblem(aggregation, featureType);
    if (problem !== undefined) add(`${path}.value_field`, problem, 'VALUE_FIELD_TYPE');
  }
  const window = aggregation.windowMs;
  if (
    !Number.isInteger(window) ||
    window < registryLimits.minWindowMs ||
    window > registryLimits.maxWindowMs
  ) {
    add(`${path}.window`, 'must be a whole number of ms between 1s and 30d', 'OUT_OF_RANGE');
    return;
  }
  const bucket = effectiveBucketMs(aggregation);
  const bucketField = `${path}.bucket`;
  if ((aggregation.bucketMs ?? 0) < 0) {
    add(bucketField, 'must be a whole number of ms, at least 1s', 'OUT_OF_RANGE');
  } else if (!Number.isInteger(bucket) || bucket < registryLimits.minBucketMs) {
    add(
      bucketField,
      (aggregation.bucketMs ?? 0) > 0
        ? 'must be a whole number of ms, at least 1s'
        : 'the default (window / 60) is under 1s or not whole ms: set bucket explicitly',
      'OUT_OF_RANGE',
    );
  } else if (window % bucket !== 0) {
    add(`${path}.window`, 'must be a whole multiple of the bucket', 'NOT_A_MULTIPLE');
  } else if (window / bucket > registryLimits.maxBucketsPerWindow) {
    add(
      bucketField,
      `makes more than ${registryLimits.maxBucketsPerWindow} buckets per window`,
      'TOO_MANY',
    );
  }
}

/**
 * Checks a view's entities against the registry: `missing` (NOT_FOUND) and violations of the
 * rules that depend on entity definitions (INVALID_ARGUMENT): distinct join keys, and a
 * stream-sourced view's entity being VALUE_TYPE_STRING.
 */
export function checkViewEntities(
  view: FeatureViewDefinition,
  entities: ReadonlyMap<string, EntityDefinition>,
): { missing: string[]; violations: FieldViolation[] } {
  const missing: string[] = [];
  const violations: FieldViolation[] = [];
  const joinKeys = new Map<string, string>();
  view.entities.forEach((name, i) => {
    const entity = entities.get(name);
    if (entity === undefined) {
      missing.push(name);
      return;
    }
    const other = joinKeys.get(entity.joinKey);
    if (other !== undefined && other !== name) {
      violations.push({
        field: `entities[${i}]`,
        description: `join key ${entity.joinKey} is also the join key of entity ${other}`,
        reason: 'DUPLICATE_JOIN_KEY',
      });
    }
    joinKeys.set(entity.joinKey, name);
    if (view.source?.kind === 'stream' && entity.valueType !== ValueType.String) {
      violations.push({
        field: `entities[${i}]`,
        description: 'the entity of a stream-sourced view must be of VALUE_TYPE_STRING',
        reason: 'UNSUPPORTED_VALUE_TYPE',
      });
    }
  });
  return { missing, violations };
}

/**
 * Compares a proposed view with the live one (featurestore_service.proto, ApplyFeatureView).
 * Compatible: description, owner, tags, ttl, online, feature descriptions and order, and new
 * features on a push-sourced view. Everything else is incompatible, because stored values and
 * readers depend on it. Both definitions are assumed valid.
 */
export function diffFeatureView(
  live: FeatureViewDefinition,
  proposed: FeatureViewDefinition,
): DefinitionDiff {
  const changes: string[] = [];
  const incompatible: IncompatibleChange[] = [];
  const refuse = (subject: string, description: string): void => {
    incompatible.push({ subject, description });
  };

  if (!sameList(live.entities, proposed.entities)) {
    refuse(
      'entities',
      `the entities cannot change (${live.entities.join(', ')} → ${proposed.entities.join(', ')})`,
    );
  }

  const proposedFeatures = new Map(proposed.features.map((f) => [f.name, f]));
  const liveNames = new Set(live.features.map((f) => f.name));
  for (const before of live.features) {
    const after = proposedFeatures.get(before.name);
    const subject = `features.${before.name}`;
    if (after === undefined) {
      refuse(subject, `feature ${before.name} cannot be removed`);
      continue;
    }
    if (after.valueType !== before.valueType) {
      refuse(
        `${subject}.value_type`,
        `the type cannot change (${valueTypeName(before.valueType)} → ${valueTypeName(after.valueType)})`,
      );
    }
    if (after.vectorLength !== before.vectorLength) {
      refuse(
        `${subject}.vector_length`,
        `the vector length cannot change (${before.vectorLength} → ${after.vectorLength})`,
      );
    }
    if (after.description !== before.description) changes.push(`${subject}.description`);
  }
  const added = proposed.features.filter((f) => !liveNames.has(f.name));
  const liveKind = live.source?.kind;
  const proposedKind = proposed.source?.kind;
  if (liveKind !== proposedKind) {
    refuse('source', `the source cannot switch (${String(liveKind)} → ${String(proposedKind)})`);
  } else if (live.source?.kind === 'stream' && proposed.source?.kind === 'stream') {
    diffStreamSource(live.source, proposed.source, refuse);
  }
  for (const feature of added) {
    if (proposedKind === 'stream') {
      refuse(
        `features.${feature.name}`,
        'features cannot be added to a stream-sourced view: apply a new view instead',
      );
    } else changes.push(`features.${feature.name}`);
  }
  const liveOrder = live.features.map((f) => f.name).filter((n) => proposedFeatures.has(n));
  const proposedOrder = proposed.features.map((f) => f.name).filter((n) => liveNames.has(n));
  if (!sameList(liveOrder, proposedOrder)) changes.push('features (order)');

  if (live.description !== proposed.description) changes.push('description');
  if (live.owner !== proposed.owner) changes.push('owner');
  if (!sameTags(live.tags, proposed.tags)) changes.push('tags');
  if (live.ttlMs !== proposed.ttlMs) changes.push('ttl');
  if ((live.online ?? true) !== (proposed.online ?? true)) changes.push('online');

  if (incompatible.length > 0) return { kind: 'incompatible', changes: incompatible };
  return changes.length === 0 ? { kind: 'unchanged' } : { kind: 'compatible', changes };
}

/** Whether two stream sources read and aggregate the same events the same way (see the diff). */
export function sameStreamSource(a: StreamSource, b: StreamSource): boolean {
  let same = true;
  diffStreamSource(a, b, () => {
    same = false;
  });
  return same;
}

function diffStreamSource(
  live: StreamSource,
  proposed: StreamSource,
  refuse: (subject: string, description: string) => void,
): void {
  const why = 'stream sources are immutable: apply a new view (for example name_v2) instead';
  const at = 'stream_source';
  if (live.subject !== proposed.subject) refuse(`${at}.subject`, `the subject changed; ${why}`);
  // A set of names: order and repeats mean nothing.
  const names = (source: StreamSource) => [...new Set(source.eventNames)].sort();
  if (!sameList(names(live), names(proposed))) {
    refuse(`${at}.event_names`, `the event names changed; ${why}`);
  }
  if (live.key !== proposed.key) refuse(`${at}.key`, `the key changed; ${why}`);
  if (effectiveAllowedLatenessMs(live) !== effectiveAllowedLatenessMs(proposed)) {
    refuse(`${at}.allowed_lateness`, `the allowed lateness changed; ${why}`);
  }
  const proposedByFeature = new Map(proposed.aggregations.map((a) => [a.feature, a]));
  const liveFeatures = new Set(live.aggregations.map((a) => a.feature));
  for (const before of live.aggregations) {
    const after = proposedByFeature.get(before.feature);
    const subject = `${at}.aggregations.${before.feature}`;
    if (after === undefined) {
      refuse(subject, `the aggregation of ${before.feature} was removed; ${why}`);
      continue;
    }
    if (after.function !== before.function) {
      refuse(
        `${subject}.function`,
        `the function changed (${AggregationFunction[before.function]} → ${AggregationFunction[after.function]}); ${why}`,
      );
    }
    if (after.valueField !== before.valueField) {
      refuse(`${subject}.value_field`, `the value field changed; ${why}`);
    }
    if (after.windowMs !== before.windowMs) {
      refuse(`${subject}.window`, `the window changed; ${why}`);
    }
    if (effectiveBucketMs(after) !== effectiveBucketMs(before)) {
      refuse(`${subject}.bucket`, `the bucket changed; ${why}`);
    }
  }
  for (const after of proposed.aggregations) {
    if (!liveFeatures.has(after.feature)) {
      refuse(`${at}.aggregations.${after.feature}`, `an aggregation was added; ${why}`);
    }
  }
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function sameTags(
  a: Readonly<Record<string, string>>,
  b: Readonly<Record<string, string>>,
): boolean {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => a[k] === b[k]);
}
