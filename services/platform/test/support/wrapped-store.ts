/**
 * Stores whose collections answer some calls as a test says (a fault at an exact call, a call
 * counted, an outage), and every other call as the store does.
 */
import type { Collection, CollectionSpec, DocumentStore } from '../../src/storage/collection';

type Document = { readonly id: string };

/** Replacements of some of a collection's methods, by name. */
export type CollectionOverrides<T extends Document> = Partial<Collection<T>>;

/**
 * `store` whose collections take the methods `overrides` returns for them (given the collection
 * and its spec) instead of their own; the others are the collection's, bound to it.
 */
export function overridingCollections(
  store: DocumentStore,
  overrides: <T extends Document>(
    collection: Collection<T>,
    spec: CollectionSpec,
  ) => CollectionOverrides<T>,
): DocumentStore {
  return {
    ...store,
    collection: async <T extends Document>(spec: CollectionSpec): Promise<Collection<T>> => {
      const collection = await store.collection<T>(spec);
      const replaced = overrides(collection, spec);
      return new Proxy(collection, {
        get: (target, property) => {
          const own = (replaced as Record<PropertyKey, unknown>)[property];
          if (own !== undefined) return own;
          const value = Reflect.get(target, property) as unknown;
          return typeof value === 'function'
            ? (value as (...args: unknown[]) => unknown).bind(target)
            : value;
        },
      });
    },
  };
}

/** `store` whose every collection call runs `before` first, which may throw (an outage). */
export function guardedStore(store: DocumentStore, before: () => void): DocumentStore {
  return {
    ...store,
    collection: async <T extends Document>(spec: CollectionSpec): Promise<Collection<T>> => {
      const collection = await store.collection<T>(spec);
      return new Proxy(collection, {
        get: (target, property) => {
          const value = Reflect.get(target, property) as unknown;
          if (typeof value !== 'function') return value;
          return (...args: unknown[]) => {
            before();
            return (value as (...a: unknown[]) => unknown).apply(target, args);
          };
        },
      });
    },
  };
}
