/**
 * List pages that fit in a message: a page ends early, with a next page token, rather than outgrow
 * what clients accept. Shared by every service's List methods; each keeps its own token format.
 */

/**
 * The largest message most gRPC clients accept by default (grpc-js, grpc-go, grpcurl): a list page
 * stays within it or the server's own limit (`TANDEM_GRPC_MAX_MESSAGE_BYTES`), whichever is
 * smaller; see {@link maxPageBytes}.
 */
const CLIENT_DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024;

/** An item's field tag and length prefix in the response, beside its own bytes. */
const ITEM_OVERHEAD_BYTES = 6;

/** The most bytes a list response may take on a server sending at most `maxMessageBytes`. */
export function maxPageBytes(maxMessageBytes: number): number {
  return Math.min(CLIENT_DEFAULT_MAX_MESSAGE_BYTES, maxMessageBytes);
}

/** How a page is filled: how many items at most, how each is rendered and sized. */
export interface PageFill<T, M> {
  /** The most items on the page. */
  readonly size: number;
  readonly render: (item: T) => M;
  /** The encoded size of a rendered item, in bytes. */
  readonly encodedBytes: (message: M) => number;
  /** The next page token were the page to end with `item`. */
  readonly tokenAfter: (item: T) => string;
  /** The most bytes the response may take (see {@link maxPageBytes}). */
  readonly maxBytes: number;
}

/** A filled page: its rendered items, the last item on it, and whether items remain. */
export interface FilledPage<T, M> {
  readonly messages: M[];
  readonly last: T | undefined;
  readonly more: boolean;
}

/**
 * Takes `items` (already past the previous page) onto a page until it holds `size` of them or
 * the next one, with the token that would then follow, would pass `maxBytes`. The page always
 * holds one item at least, so that a list can always go on.
 */
export function fillPage<T, M>(
  items: Iterable<T>,
  { size, render, encodedBytes, tokenAfter, maxBytes }: PageFill<T, M>,
): FilledPage<T, M> {
  const messages: M[] = [];
  let last: T | undefined;
  let bytes = 0;
  for (const item of items) {
    if (messages.length === size) return { messages, last, more: true };
    const message = render(item);
    bytes += encodedBytes(message) + ITEM_OVERHEAD_BYTES;
    // Room for the token that would follow were the page to end with this item.
    const tokenBytes = Buffer.byteLength(tokenAfter(item)) + ITEM_OVERHEAD_BYTES;
    if (bytes + tokenBytes > maxBytes && messages.length > 0) return { messages, last, more: true };
    messages.push(message);
    last = item;
  }
  return { messages, last, more: false };
}
