/**
 * Stream and consumer specs compiled into complete settings: every default applied and every
 * value checked once, so both adapters read the same numbers and reject the same mistakes.
 */
import { InvalidArgumentError, type FieldViolation } from '../errors';
import type { ConsumerSpec, StreamSpec } from './bus';
import { isPublishableSubject } from './subjects';

const SECOND_MS = 1000;
const DAY_MS = 24 * 60 * 60 * SECOND_MS;

/** A stream spec with its defaults applied. */
export interface StreamSettings {
  readonly name: string;
  readonly subjects: readonly string[];
  readonly maxAgeMs: number;
  readonly duplicateWindowMs: number;
  /** Undefined means unlimited. */
  readonly maxBytes: number | undefined;
  readonly storage: 'file' | 'memory';
  readonly replicas: number;
}

/** A consumer spec, without its codec, with its defaults applied. */
export interface ConsumerSettings {
  readonly stream: string;
  readonly durable: string;
  /** Empty means all of the stream's subjects. */
  readonly filterSubjects: readonly string[];
  readonly ackWaitMs: number;
  readonly maxDeliver: number;
  readonly maxAckPending: number;
  readonly deliverPolicy: 'all' | 'new';
  readonly concurrency: number;
  readonly initialRetryDelayMs: number;
  readonly maxRetryDelayMs: number;
  /** Undefined: the durable is never deleted for inactivity. */
  readonly inactiveThresholdMs: number | undefined;
}

/** Stream and durable names become NATS subject tokens, so they cannot hold these. */
const INVALID_NAME = /[\s.*>]/;

function checkName(field: string, value: string, violations: FieldViolation[]): void {
  if (value.length === 0) {
    violations.push({ field, description: 'must not be empty', reason: 'REQUIRED' });
  } else if (INVALID_NAME.test(value)) {
    violations.push({
      field,
      description: 'must not contain whitespace, ".", "*" or ">"',
      reason: 'INVALID_NAME',
    });
  }
}

function checkWholeAtLeast(
  field: string,
  value: number,
  minimum: number,
  violations: FieldViolation[],
): void {
  if (!Number.isInteger(value) || value < minimum) {
    violations.push({
      field,
      description: `must be a whole number of at least ${minimum}`,
      reason: 'OUT_OF_RANGE',
    });
  }
}

function throwIfAny(what: string, violations: FieldViolation[]): void {
  if (violations.length > 0) {
    throw new InvalidArgumentError(`invalid ${what}`, violations);
  }
}

/** Applies the documented defaults of `StreamSpec`; throws `InvalidArgumentError` listing every problem. */
export function streamSettings(spec: StreamSpec): StreamSettings {
  const settings: StreamSettings = {
    name: spec.name,
    subjects: [...spec.subjects],
    maxAgeMs: spec.maxAgeMs ?? 7 * DAY_MS,
    duplicateWindowMs: spec.duplicateWindowMs ?? 2 * 60 * SECOND_MS,
    maxBytes: spec.maxBytes,
    storage: spec.storage ?? 'file',
    replicas: spec.replicas ?? 1,
  };
  const violations: FieldViolation[] = [];
  checkName('name', settings.name, violations);
  if (settings.subjects.length === 0) {
    violations.push({ field: 'subjects', description: 'must not be empty', reason: 'REQUIRED' });
  }
  settings.subjects.forEach((subject, i) => {
    if (subject.length === 0 || subject.split('.').some((token) => token.length === 0)) {
      violations.push({ field: `subjects[${i}]`, description: 'must be a valid subject' });
    }
  });
  checkWholeAtLeast('maxAgeMs', settings.maxAgeMs, 1, violations);
  checkWholeAtLeast('duplicateWindowMs', settings.duplicateWindowMs, 1, violations);
  if (settings.duplicateWindowMs > settings.maxAgeMs) {
    // JetStream refuses a window longer than the events are kept.
    violations.push({ field: 'duplicateWindowMs', description: 'must not exceed maxAgeMs' });
  }
  if (settings.maxBytes !== undefined)
    checkWholeAtLeast('maxBytes', settings.maxBytes, 1, violations);
  checkWholeAtLeast('replicas', settings.replicas, 1, violations);
  throwIfAny(`stream spec ${spec.name}`, violations);
  return settings;
}

/** Applies the documented defaults of `ConsumerSpec`; throws `InvalidArgumentError` listing every problem. */
export function consumerSettings(spec: ConsumerSpec<unknown>): ConsumerSettings {
  const settings: ConsumerSettings = {
    stream: spec.stream,
    durable: spec.durable,
    filterSubjects: [...(spec.filterSubjects ?? [])],
    ackWaitMs: spec.ackWaitMs ?? 30 * SECOND_MS,
    maxDeliver: spec.maxDeliver ?? 5,
    maxAckPending: spec.maxAckPending ?? 1000,
    deliverPolicy: spec.deliverPolicy ?? 'all',
    concurrency: spec.concurrency ?? 1,
    initialRetryDelayMs: spec.initialRetryDelayMs ?? SECOND_MS,
    maxRetryDelayMs: spec.maxRetryDelayMs ?? 30 * SECOND_MS,
    inactiveThresholdMs: spec.inactiveThresholdMs,
  };
  const violations: FieldViolation[] = [];
  checkName('stream', settings.stream, violations);
  checkName('durable', settings.durable, violations);
  checkWholeAtLeast('ackWaitMs', settings.ackWaitMs, 1, violations);
  checkWholeAtLeast('maxDeliver', settings.maxDeliver, 1, violations);
  checkWholeAtLeast('maxAckPending', settings.maxAckPending, 1, violations);
  checkWholeAtLeast('concurrency', settings.concurrency, 1, violations);
  checkWholeAtLeast('initialRetryDelayMs', settings.initialRetryDelayMs, 0, violations);
  checkWholeAtLeast('maxRetryDelayMs', settings.maxRetryDelayMs, 0, violations);
  if (settings.inactiveThresholdMs !== undefined)
    checkWholeAtLeast('inactiveThresholdMs', settings.inactiveThresholdMs, 1, violations);
  if (settings.maxRetryDelayMs < settings.initialRetryDelayMs) {
    violations.push({
      field: 'maxRetryDelayMs',
      description: 'must not be below initialRetryDelayMs',
    });
  }
  throwIfAny(`consumer spec ${spec.stream}/${spec.durable}`, violations);
  return settings;
}

/** Checks what `publish` needs before anything is sent; throws `InvalidArgumentError`. */
export function checkPublish(subject: string, eventId: string): void {
  const violations: FieldViolation[] = [];
  if (!isPublishableSubject(subject)) {
    violations.push({
      field: 'subject',
      description: 'must be a subject without wildcards or whitespace',
    });
  }
  if (eventId.length === 0) {
    violations.push({ field: 'eventId', description: 'must not be empty', reason: 'REQUIRED' });
  } else if (/[\r\n]/.test(eventId)) {
    // It travels as the Nats-Msg-Id header, which cannot hold a line break: NATS refuses it on
    // every try, so it must not be taken for an outage (a buffered publisher would retry it
    // forever at the head of its queue). Refused by every adapter alike.
    violations.push({
      field: 'eventId',
      description: 'must not contain a line break (it is sent as a message header)',
      reason: 'INVALID_EVENT_ID',
    });
  }
  throwIfAny(`publish to ${subject}`, violations);
}

/**
 * The back-off before redelivering an event whose handler threw on delivery `deliveryCount`:
 * exponential (initial · 2^(n-1)) and capped, so a failing dependency is not hammered.
 */
export function retryDelayMs(settings: ConsumerSettings, deliveryCount: number): number {
  const exponent = Math.max(0, deliveryCount - 1);
  // Cap the exponent too: 2^1024 is Infinity, and a stuck event can reach any delivery count.
  const delay = settings.initialRetryDelayMs * 2 ** Math.min(exponent, 30);
  return Math.min(delay, settings.maxRetryDelayMs);
}

/** What a batch consumer spec adds to `ConsumerSettings`, with its defaults applied. */
export interface BatchSettings {
  readonly maxBatchSize: number;
  readonly acknowledgement: 'each' | 'cumulative';
}

/** Applies the defaults of `BatchConsumerSpec`'s own fields; throws `InvalidArgumentError` listing every problem. */
export function batchSettings(spec: {
  readonly stream: string;
  readonly durable: string;
  readonly maxBatchSize?: number;
  readonly acknowledgement?: string;
}): BatchSettings {
  const maxBatchSize = spec.maxBatchSize ?? 1000;
  const acknowledgement = spec.acknowledgement ?? 'each';
  const violations: FieldViolation[] = [];
  checkWholeAtLeast('maxBatchSize', maxBatchSize, 1, violations);
  if (acknowledgement !== 'each' && acknowledgement !== 'cumulative') {
    violations.push({
      field: 'acknowledgement',
      description: 'must be "each" or "cumulative"',
      reason: 'OUT_OF_RANGE',
    });
  }
  throwIfAny(`consumer spec ${spec.stream}/${spec.durable}`, violations);
  return { maxBatchSize, acknowledgement: acknowledgement as BatchSettings['acknowledgement'] };
}
