/**
 * Property: a condition that validation accepts compiles and evaluates any attributes without
 * throwing or stalling (found nothing on 20,000 runs; kept small by default).
 */
import fc from 'fast-check';
import { compileCondition, validateCondition } from '../../src/domain/targeting';
import { nastyJson, nastyNumber } from '../../../platform/test/support/bad-input';

const fieldName = fc.constantFrom(
  'a',
  'b',
  'a.b',
  'a.0',
  'tags',
  '__proto__',
  'constructor',
  'toString',
  'length',
  '',
  'a..b',
  '$x',
  'a.__proto__',
  '0',
);
const value = nastyJson(3);
const opsArb: fc.Arbitrary<Record<string, unknown>> = fc.letrec((tie) => ({
  ops: fc.dictionary(
    fc.constantFrom(
      '$eq',
      '$ne',
      '$in',
      '$nin',
      '$gt',
      '$gte',
      '$lt',
      '$lte',
      '$exists',
      '$regex',
      '$options',
      '$elemMatch',
      '$size',
      '$all',
      '$not',
      '$where',
      '$function',
      '$foo',
      '$expr',
      '$type',
      '$mod',
    ),
    fc.oneof(
      value,
      fc.array(value, { maxLength: 3 }),
      fc.constantFrom(
        '^a',
        '(a|aa)+$',
        '\\1',
        '(?=x)',
        'a',
        'i',
        'm',
        's',
        'x',
        'g',
        'u',
        '',
        '[',
        '\\p{L}',
        '(?i)A',
        '\\C',
        '\\z',
        '\\Z',
        '\\b',
        '.',
        '\\Q.*\\E',
        '(?P<n>a)',
        '(?<n>a)',
      ),
      nastyNumber(),
      tie('ops'),
      tie('query'),
      fc.array(tie('ops'), { maxLength: 2 }),
    ),
    { maxKeys: 3, minKeys: 1 },
  ),
  query: fc.oneof(
    fc.dictionary(fieldName, fc.oneof(value, tie('ops')), { maxKeys: 3 }),
    fc.dictionary(
      fc.constantFrom('$and', '$or', '$nor'),
      fc.array(tie('query'), { maxLength: 3 }),
      { maxKeys: 2 },
    ),
    fc.record({ $not: tie('query') }),
  ),
})).query;

const attrs = fc.dictionary(fieldName, nastyJson(4), { maxKeys: 5 });

describe('condition fuzz', () => {
  it('a condition that validates compiles and evaluates without throwing', () => {
    fc.assert(
      fc.property(
        opsArb,
        fc.array(attrs, { minLength: 1, maxLength: 5 }),
        (condition, attributeSets) => {
          const json = condition;
          const violations = validateCondition(json);
          if (violations.length > 0) return;
          const predicate = compileCondition(json);
          for (const a of attributeSets) {
            const parsed = a;
            const started = Date.now();
            predicate(parsed);
            if (Date.now() - started > 200) throw new Error('slow');
          }
        },
      ),
      { numRuns: Math.max(2000, 10 * Number(process.env.FUZZ_RUNS ?? 0)) },
    );
  });
});
