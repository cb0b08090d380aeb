/** Mutations are idempotent by `request_id` through the kit's store of first responses. */
export {
  MAX_REQUEST_ID_LENGTH,
  RequestResults,
  type IdentifiedRequest,
  type RequestType,
  type ResponseCodec,
} from '../../../platform/src/storage/request-results';
