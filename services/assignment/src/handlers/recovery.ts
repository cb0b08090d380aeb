/**
 * The answer to a retried admin write whose first call stored its change but not its response:
 * a storage call that failed after taking effect (a timeout) fails the call, and the retry, run
 * again, is refused by the change itself (ALREADY_EXISTS for a create, ABORTED for the etag an
 * update moved, NOT_FOUND for a delete, FAILED_PRECONDITION for a start made). Every write of a
 * `request_id` stores its request's stamp with the resource (see `Stamped`), and a deletion
 * beside it; when the resource still carries the retry's stamp, the change is the first call's,
 * and its response is built from what is stored. Changed by another write since, it is not:
 * the refusal stands.
 */
import type { Collection } from '../../../platform/src/storage/collection';
import { stampedWith } from '../../../platform/src/storage/write-stamps';
import type { AssignmentContext } from '../assignment-context';
import type { WriteRequests } from '../configuration-writes';
import type { ResourceKind } from '../store/configuration-store';
import { keepInHistory } from './allocations';
import { allocationMessage, experimentMessage, holdoutMessage, layerMessage } from './messages';

/** The response of the first call of `request`, when `stamp` shows it made its change. */
export async function recoverWrite<M extends keyof WriteRequests>(
  context: AssignmentContext,
  method: M,
  request: WriteRequests[M],
  stamp: string,
): Promise<unknown> {
  const { store } = context;
  // A deletion is counted (and stamped) before the document goes: the stamp alone does not say
  // it went. It did when nothing is stored under the id, or only an incarnation created after
  // that count.
  const deleted = async (
    kind: ResourceKind,
    id: string,
    collection: Collection<{ readonly id: string; readonly incarnation?: number }>,
  ): Promise<object | undefined> => {
    if (!(await store.lastDeletedBy(kind, id, stamp))) return undefined;
    const stored = await collection.get(id);
    if (stored === undefined) return {};
    const created = stored.doc.incarnation ?? 1;
    return created === (await store.incarnationOf(kind, id)) ? {} : undefined;
  };
  const experiment = async (id: string): Promise<object | undefined> => {
    const stored = stampedWith(await store.experiments.get(id), stamp);
    return stored && { experiment: experimentMessage(stored) };
  };
  const holdout = async (id: string): Promise<object | undefined> => {
    const stored = stampedWith(await store.holdouts.get(id), stamp);
    return stored && { holdout: holdoutMessage(stored) };
  };
  const layer = async (id: string): Promise<object | undefined> => {
    const stored = stampedWith(await store.layers.get(id), stamp);
    return stored && { layer: layerMessage(stored, context.configuration.current()) };
  };
  switch (method) {
    case 'CreateLayer':
    case 'UpdateLayer':
      return layer((request as WriteRequests['CreateLayer']).layer?.id ?? '');
    case 'DeleteLayer':
      return deleted('layer', (request as WriteRequests['DeleteLayer']).id, store.layers);
    case 'CreateExperiment':
    case 'UpdateExperiment':
      return experiment((request as WriteRequests['CreateExperiment']).experiment?.id ?? '');
    case 'StartExperiment':
    case 'StopExperiment':
    case 'ConcludeExperiment':
      return experiment((request as WriteRequests['StartExperiment']).id);
    case 'DeleteExperiment':
      return deleted(
        'experiment',
        (request as WriteRequests['DeleteExperiment']).id,
        store.experiments,
      );
    case 'CreateHoldout':
    case 'UpdateHoldout':
      return holdout((request as WriteRequests['CreateHoldout']).holdout?.id ?? '');
    case 'DeleteHoldout':
      return deleted('holdout', (request as WriteRequests['DeleteHoldout']).id, store.holdouts);
    case 'UpdateAllocation': {
      const id = (request as WriteRequests['UpdateAllocation']).allocation?.experimentId ?? '';
      const stored = stampedWith(await store.allocations.get(id), stamp);
      const of = stored && (await store.experiments.get(id));
      if (!stored || !of) return undefined;
      // The first call may have failed before keeping it in the history.
      await keepInHistory(context, of.doc, stored);
      return { allocation: allocationMessage(of.doc, stored) };
    }
  }
  return undefined;
}
