/**
 * One problem with one field of a definition, shaped like `google.rpc.BadRequest.FieldViolation`
 * so the gRPC layer can return every problem at once without translating them.
 */
export interface FieldViolation {
  /** The field's path in the contract's names, for example `variants[1].key` or `layer_range.end`. */
  readonly field: string;
  /** What is wrong, for a developer. */
  readonly description: string;
  /** A stable UPPER_SNAKE_CASE code a client can switch on, for example `DUPLICATE_VARIANT_KEY`. */
  readonly reason: string;
}
