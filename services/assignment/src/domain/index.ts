/**
 * The Assignment service's pure domain: hashing, bucketing, targeting, the evaluator and
 * definition validation. No I/O; the gRPC, storage and event layers build on these.
 */
export * from './bucketing';
export * from './configuration';
export * from './evaluator';
export type { FieldViolation } from './field-violation';
export * from './hashing';
export * from './targeting';
export * from './validation';
