import {
  evalCondition as growthbookEvalCondition,
  type ConditionInterface,
} from '@growthbook/growthbook';
import {
  InvalidConditionError,
  OPERATOR_IN_ALL,
  REGEX_TOO_COMPLEX,
  UNCOMPILABLE_CONDITION,
  UNSUPPORTED_REGEX,
  compileCondition,
  compileConjunct,
  conjunctsOf,
  toleratedWhenStored,
  validateCondition,
  type Condition,
} from '../../src/domain/targeting';
import { buildSnapshot } from '../../src/domain/evaluator';
import { configuration, experiment } from './fixtures';
import { loadGolden, type GrowthBookSpec } from './golden';

const spec = loadGolden<GrowthBookSpec>('growthbook-spec.json');

function evalCondition(
  attributes: Record<string, unknown>,
  condition: Record<string, unknown>,
): boolean {
  return growthbookEvalCondition(attributes, condition as ConditionInterface);
}

function matches(condition: Condition, attributes: Record<string, unknown>): boolean {
  return compileCondition(condition)(attributes);
}

describe('targeting agrees with the GrowthBook SDK spec where MongoDB semantics do', () => {
  it.each(spec.evalCondition.agree)('%s', (_name, condition, attributes, expected) => {
    expect(evalCondition(attributes, condition)).toBe(expected);
    expect(validateCondition(condition)).toEqual([]);
    expect(matches(condition, attributes)).toBe(expected);
  });
});

describe('targeting follows MongoDB where GrowthBook coerces (documented differences)', () => {
  it.each(spec.evalCondition.differ)('%s', (_name, condition, attributes, growthbook, tandem) => {
    expect(evalCondition(attributes, condition)).toBe(growthbook);
    expect(tandem).not.toBe(growthbook);
    expect(matches(condition, attributes)).toBe(tandem);
  });
});

describe('conditions GrowthBook accepts but Tandem rejects at create/update', () => {
  it.each(spec.evalCondition.invalidInTandem)('%s', (_name, condition) => {
    expect(validateCondition(condition).length).toBeGreaterThan(0);
    expect(() => compileCondition(condition)).toThrow(InvalidConditionError);
  });
});

describe('each supported operator', () => {
  const user = {
    country: 'SE',
    age: 34,
    plan: 'pro',
    tags: ['beta', 'music'],
    app: { version: 12, platform: 'ios' },
    devices: [
      { kind: 'phone', os: 'ios' },
      { kind: 'tv', os: 'tizen' },
    ],
  };
  it.each<[string, Condition, boolean]>([
    ['$eq', { country: { $eq: 'SE' } }, true],
    ['$eq on a miss', { country: { $eq: 'NO' } }, false],
    ['$ne', { country: { $ne: 'NO' } }, true],
    ['$in', { country: { $in: ['SE', 'NO'] } }, true],
    ['$nin', { country: { $nin: ['SE', 'NO'] } }, false],
    ['$gt', { age: { $gt: 33 } }, true],
    ['$gte', { age: { $gte: 34 } }, true],
    ['$lt', { age: { $lt: 34 } }, false],
    ['$lte', { age: { $lte: 34 } }, true],
    ['$exists true', { plan: { $exists: true } }, true],
    ['$exists false', { trial: { $exists: false } }, true],
    ['$regex', { plan: { $regex: '^pr' } }, true],
    ['$regex with $options', { plan: { $regex: '^PR', $options: 'i' } }, true],
    ['$elemMatch on objects', { devices: { $elemMatch: { kind: 'tv', os: 'tizen' } } }, true],
    [
      '$elemMatch on objects, no element matches both',
      { devices: { $elemMatch: { kind: 'tv', os: 'ios' } } },
      false,
    ],
    ['$size', { tags: { $size: 2 } }, true],
    ['$all', { tags: { $all: ['music', 'beta'] } }, true],
    ['$all with a missing element', { tags: { $all: ['music', 'jazz'] } }, false],
    ['$and', { $and: [{ country: 'SE' }, { age: { $gt: 40 } }] }, false],
    ['$or', { $or: [{ country: 'NO' }, { age: { $gt: 30 } }] }, true],
    ['$nor', { $nor: [{ country: 'NO' }, { age: { $gt: 40 } }] }, true],
    ['$not on a field', { age: { $not: { $gt: 40 } } }, true],
    ['$not at the top level', { $not: { country: 'SE' } }, false],
    ['dotted paths', { 'app.version': { $gte: 12 }, 'app.platform': 'ios' }, true],
    ['dotted paths through arrays of objects', { 'devices.kind': 'tv' }, true],
    ['a literal against an array attribute (contains)', { tags: 'beta' }, true],
    ['the empty condition', {}, true],
  ])('%s', (_name, condition, expected) => {
    expect(validateCondition(condition)).toEqual([]);
    expect(matches(condition, user)).toBe(expected);
  });

  it.each<[string, Condition, Record<string, unknown>, boolean]>([
    [
      'found anywhere, as MongoDB and RegExp#test do',
      { ua: { $regex: 'Mobile' } },
      { ua: 'x Mobile y' },
      true,
    ],
    ['anchored', { ua: { $regex: '^Mobile' } }, { ua: 'x Mobile' }, false],
    ['m: ^ at a line start', { ua: { $regex: '^b', $options: 'm' } }, { ua: 'a\nb' }, true],
    ['without m: ^ at the start only', { ua: { $regex: '^b' } }, { ua: 'a\nb' }, false],
    ['s: . matches a newline', { ua: { $regex: 'a.b', $options: 's' } }, { ua: 'a\nb' }, true],
    ['without s: . does not', { ua: { $regex: 'a.b' } }, { ua: 'a\nb' }, false],
    ['classes and escapes', { v: { $regex: '^\\d+\\.\\w+$' } }, { v: '12.beta' }, true],
    ['non-ASCII text', { city: { $regex: '^Malmö$', $options: 'i' } }, { city: 'MALMÖ' }, true],
    ['a number is not a string', { v: { $regex: '1' } }, { v: 1 }, false],
    ['plain text at both anchors: the whole value', { c: { $regex: '^SE$' } }, { c: 'SE' }, true],
    ['plain text at both anchors, not a part', { c: { $regex: '^SE$' } }, { c: 'SEK' }, false],
    ['plain text at the end', { v: { $regex: 'beta$' } }, { v: '2.0-beta' }, true],
    ['plain text at the end, elsewhere', { v: { $regex: 'beta$' } }, { v: 'beta-2' }, false],
    ['an empty pattern', { v: { $regex: '' } }, { v: 'anything' }, true],
    ['an escaped dollar is text', { p: { $regex: '5\\$' } }, { p: 'costs 5$ now' }, true],
    ['an array holding a match', { tags: { $regex: '^be' } }, { tags: ['music', 'beta'] }, true],
  ])('$regex (RE2): %s', (_name, condition, attributes, expected) => {
    expect(validateCondition(condition)).toEqual([]);
    expect(matches(condition, attributes)).toBe(expected);
  });

  it('matches in linear time a $regex that backtracking engines take exponential time over', () => {
    // JavaScript's RegExp needs ~1.5 s for 41 characters of this and doubles about every 1.5 more.
    const condition = { ua: { $regex: '^(a|aa)+$' } };
    expect(matches(condition, { ua: `${'a'.repeat(5_000)}!` })).toBe(false);
    expect(matches(condition, { ua: 'a'.repeat(5_000) })).toBe(true);
  });

  it('compiles once: later changes to the definition do not change the predicate', () => {
    const condition = { country: { $in: ['SE'] } };
    const predicate = compileCondition(condition);
    condition.country.$in.push('NO');
    expect(predicate({ country: 'NO' })).toBe(false);
  });
});

describe('conjunctsOf', () => {
  it('splits top-level fields and top-level $and members, recursively, in order', () => {
    expect(
      conjunctsOf({
        country: 'SE',
        $and: [{ plan: 'premium', $and: [{ 'app.version': { $gte: 10 } }] }, { tags: 'beta' }],
        $or: [{ a: 1 }, { b: 2 }],
      }),
    ).toEqual([
      { country: 'SE' },
      { plan: 'premium' },
      { 'app.version': { $gte: 10 } },
      { tags: 'beta' },
      { $or: [{ a: 1 }, { b: 2 }] },
    ]);
  });

  it('keeps field operators, $or, $nor and $not whole', () => {
    expect(conjunctsOf({ age: { $gte: 18, $lt: 65 } })).toEqual([{ age: { $gte: 18, $lt: 65 } }]);
    expect(conjunctsOf({ $nor: [{ a: 1 }] })).toEqual([{ $nor: [{ a: 1 }] }]);
    expect(conjunctsOf({ $not: { a: 1 } })).toEqual([{ $not: { a: 1 } }]);
    expect(conjunctsOf({ $and: [{}] })).toEqual([]);
  });

  it('splits fields named constructor or toJSON like any other, and the pieces still match', () => {
    const expected: Condition[] = [{ constructor: 'x' }, { a: 1 }];
    expect(conjunctsOf({ constructor: 'x', a: 1 })).toEqual(expected);
    expect(conjunctsOf({ b: 2, $and: [{ toJSON: 'x', a: 1 }] })).toEqual([
      { b: 2 },
      { toJSON: 'x' },
      { a: 1 },
    ]);
    const all = (condition: Condition, attributes: Record<string, unknown>): boolean =>
      conjunctsOf(condition).every((part) => compileConjunct(part)(attributes));
    expect(all({ constructor: 'x', a: 1 }, { constructor: 'x', a: 1, b: 2 })).toBe(true);
    expect(all({ constructor: 'x', a: 1 }, { constructor: 'y', a: 1 })).toBe(false);
  });
});

// Found by comparing with another MongoDB-compatible engine (DocumentDB) over generated
// conditions and documents; the expected results are MongoDB's, from its manual: an embedded
// document equals only a document with the same fields ("Query on Embedded/Nested Documents"),
// strings compare by simple binary comparison of their UTF-8 bytes ("Comparison/Sort Order"),
// `$regex` is PCRE, whose `$` also matches before a newline that ends the string, and `$size`,
// `$elemMatch` (whose query form takes documents) and `$all` (equalities) apply to the array at
// the path.
describe('equality, order, $regex and array operators as MongoDB, where sift or JavaScript differ', () => {
  it.each<[string, Condition, Record<string, unknown>, boolean]>([
    ['a null field is not a missing one', { a: { b: null } }, { a: { c: 1 } }, false],
    ['a null field equals a null field', { a: { b: null } }, { a: { b: null } }, true],
    ['$in of a document with a null field', { a: { $in: [{ b: null }] } }, { a: {} }, false],
    ['$ne of a document with a null field', { a: { $ne: { b: null } } }, { a: { c: 1 } }, true],
    ['null still matches a missing attribute', { a: null }, {}, true],
    ['null in $in still matches a missing attribute', { a: { $in: [null] } }, {}, true],
    ['documents inside arrays', { a: [{ b: null }] }, { a: [{}] }, false],
    ['a character past U+FFFF sorts after U+FF61', { a: { $gt: '\uFF61' } }, { a: '😀' }, true],
    ['and U+FF61 before it', { a: { $lt: '\uFF61' } }, { a: '😀' }, false],
    ['between two such characters', { a: { $gte: '😀' } }, { a: '😁' }, true],
    ['plain strings as before', { a: { $lte: 'b' } }, { a: 'ab' }, true],
    ['a number and a string do not compare', { a: { $gt: 1 } }, { a: '2' }, false],
    ['comparisons reach into arrays', { a: { $gt: 5 } }, { a: [1, 10] }, true],
    ['$ before a final newline', { a: { $regex: 'a$' } }, { a: 'a\n' }, true],
    ['anchored text before a final newline', { a: { $regex: '^SE$' } }, { a: 'SE\n' }, true],
    ['not before two', { a: { $regex: '^SE$' } }, { a: 'SE\n\n' }, false],
    ['not before a newline inside', { a: { $regex: 'a$' } }, { a: 'a\nb' }, false],
    ['a pattern through the newline', { a: { $regex: 'a\\n$' } }, { a: 'a\n' }, true],
    ['\\z only at the very end', { a: { $regex: 'a\\z' } }, { a: 'a\n' }, false],
    ['with m, before any newline', { a: { $regex: 'a$', $options: 'm' } }, { a: 'a\nb' }, true],
    [
      '$elemMatch past an element that is an array',
      { a: { $elemMatch: { $eq: 1 } } },
      { a: [[], 1] },
      true,
    ],
    ['$elemMatch after one', { a: { $elemMatch: { $eq: 1 } } }, { a: [1, []] }, true],
    [
      '$elemMatch fields test documents only',
      { a: { $elemMatch: { c: null } } },
      { a: [false] },
      false,
    ],
    [
      '$elemMatch fields on a document',
      { a: { $elemMatch: { c: null } } },
      { a: [false, {}] },
      true,
    ],
    [
      '$elemMatch through a path',
      { 'a.b': { $elemMatch: { $gt: 1 } } },
      { a: [{ b: [0] }, { b: [2] }] },
      true,
    ],
    ['$size of the array, not one inside it', { a: { $size: 0 } }, { a: [1, []] }, false],
    ['$size of the array itself', { a: { $size: 2 } }, { a: [1, []] }, true],
    ['$size at an index', { 'a.1': { $size: 0 } }, { a: [1, []] }, true],
    ['$all of an empty document matches only it', { a: { $all: [{}] } }, {}, false],
    ['$all of a document', { a: { $all: [{ b: 1 }] } }, { a: { b: 1, c: 2 } }, false],
    ['$all of a document, in the array', { a: { $all: [{ b: 1 }] } }, { a: [{ b: 1 }, 2] }, true],
    ['$all of an array is not its elements', { a: { $all: [[1]] } }, { a: [1, 2] }, false],
    ['$all of an array, in the array', { a: { $all: [[1], 2] } }, { a: [[1], 2] }, true],
    ['$all with $elemMatch', { a: { $all: [{ $elemMatch: { b: 1 } }] } }, { a: [{ b: 1 }] }, true],
  ])('%s', (_name, condition, attributes, expected) => {
    expect(validateCondition(condition)).toEqual([]);
    expect(matches(condition, attributes)).toBe(expected);
  });
});

// MongoDB's semantics, from its manual: a field is present only when the document has it
// ($exists, $ne/$in with null: "Query for Null or Missing Fields"), a dotted path reaches into
// embedded documents and array elements, never into a string, and a query document's fields are
// all conditions. These names are inherited from JavaScript prototypes or read specially by sift.
describe('attributes named like JavaScript properties are ordinary fields, as in MongoDB', () => {
  it.each<[string, Condition, Record<string, unknown>, boolean]>([
    ['$exists false, absent', { constructor: { $exists: false } }, {}, true],
    ['$exists true, present', { constructor: { $exists: true } }, { constructor: 'x' }, true],
    ['equality beside other attributes', { constructor: 'x' }, { constructor: 'x', b: 1 }, true],
    ['equality, another value', { constructor: 'x' }, { constructor: 'y' }, false],
    ['beside another field', { constructor: 'x', b: 1 }, { constructor: 'x', b: 1, c: 2 }, true],
    ['$ne null, absent', { toString: { $ne: null } }, {}, false],
    ['$exists true, absent', { valueOf: { $exists: true } }, {}, false],
    ['$in [null], absent', { hasOwnProperty: { $in: [null] } }, {}, true],
    ['nested, $ne null, absent', { 'a.constructor': { $ne: null } }, { a: {} }, false],
    ['nested, present', { 'a.isPrototypeOf': 1 }, { a: { isPrototypeOf: 1 } }, true],
    ['a string has no fields', { 'a.length': 3 }, { a: 'abc' }, false],
    ['a string method is no field', { 'a.toUpperCase': { $ne: null } }, { a: 'abc' }, false],
    ['an array length is no field', { 'a.length': { $exists: true } }, { a: [1] }, false],
    ['an array element field named length', { 'a.length': 2 }, { a: [{ length: 2 }] }, true],
    [
      'an array index still works beside one',
      { 'a.0': 1, 'a.length': { $exists: false } },
      { a: [1] },
      true,
    ],
    ['$or', { $or: [{ constructor: 'x' }] }, { constructor: 'x', b: 1 }, true],
    ['$nor', { $nor: [{ toString: { $exists: true } }] }, {}, true],
    ['$not at the top level', { $not: { constructor: 'x' } }, { constructor: 'x', b: 1 }, false],
    [
      '$elemMatch over objects',
      { a: { $elemMatch: { constructor: 'x' } } },
      { a: [{ constructor: 'x', b: 1 }] },
      true,
    ],
    [
      '$elemMatch, no element matches',
      { a: { $elemMatch: { toJSON: 1 } } },
      { a: [{ toJSON: 2 }] },
      false,
    ],
    ['an object literal', { a: { toJSON: 1 } }, { a: { toJSON: 1 } }, true],
    ['an object literal, another value', { a: { toJSON: 1 } }, { a: { toJSON: 2 } }, false],
    [
      '$in of object literals',
      { a: { $in: [{ constructor: 1 }] } },
      { a: { constructor: 1 } },
      true,
    ],
    ['$eq of an object literal', { a: { $eq: { valueOf: [1] } } }, { a: { valueOf: [1] } }, true],
    ['$regex', { constructor: { $regex: '^x' } }, { constructor: 'xy' }, true],
    ['$not of operators', { toString: { $not: { $eq: 'x' } } }, { toString: 'x' }, false],
    ['names starting with ~ stay distinct', { '~constructor': 1 }, { constructor: 1 }, false],
    ['a name starting with ~', { '~x': 1, constructor: { $exists: false } }, { '~x': 1 }, true],
  ])('%s', (_name, condition, attributes, expected) => {
    expect(validateCondition(condition)).toEqual([]);
    expect(matches(condition, attributes)).toBe(expected);
  });
});

describe('validateCondition', () => {
  it('reports every problem at once, with field paths', () => {
    const problems = validateCondition({
      country: { $in: 'SE' },
      age: { $gt: [1] },
      plan: { $regex: '(' },
      $where: 'sleep(1000)',
      tags: { $size: -1 },
      app: { $foo: 1 },
      seen: { $exists: 'yes' },
      $or: [],
      mixed: { $eq: 1, plain: 2 },
      'a..b': 1,
      nested: { $or: [{ $eq: 1 }] },
      flags: { $regex: 'x', $options: 'g' },
      // MongoDB matches nothing with an empty $all (sift everything); it refuses $not of a value.
      labels: { $all: [] },
      negated: { $not: 5 },
      negatedQuery: { $not: { b: 1 } },
      negatedMixed: { $not: { $gt: 5, b: 1 } },
    });
    expect(problems.map((p) => [p.field, p.reason])).toEqual([
      ['condition.country.$in', 'INVALID_OPERAND'],
      ['condition.age.$gt', 'INVALID_OPERAND'],
      ['condition.plan.$regex', 'INVALID_REGEX'],
      ['condition.$where', 'UNKNOWN_OPERATOR'],
      ['condition.tags.$size', 'INVALID_OPERAND'],
      ['condition.app.$foo', 'UNKNOWN_OPERATOR'],
      ['condition.seen.$exists', 'INVALID_OPERAND'],
      ['condition.$or', 'INVALID_OPERAND'],
      ['condition.mixed', 'INVALID_CONDITION'],
      ['condition.a..b', 'INVALID_PATH'],
      ['condition.nested.$or', 'MISPLACED_OPERATOR'],
      ['condition.flags.$options', 'INVALID_OPERAND'],
      ['condition.labels.$all', 'EMPTY_ALL'],
      ['condition.negated.$not', 'NOT_OF_VALUE'],
      ['condition.negatedQuery.$not', 'NOT_OF_VALUE'],
      ['condition.negatedMixed.$not', 'INVALID_CONDITION'],
    ]);
  });

  it('refuses what RE2 does not accept (backreferences, lookaround), saying so', () => {
    for (const pattern of ['(a)\\1', 'a(?=b)', 'a(?!b)', 'a(?<=b)']) {
      const problems = validateCondition({ ua: { $regex: pattern } });
      expect(problems.map((p) => [p.field, p.reason])).toEqual([
        ['condition.ua.$regex', UNSUPPORTED_REGEX],
      ]);
      expect(problems[0]?.description).toMatch(
        /^not RE2 syntax \(no backreferences or lookaround\)/,
      );
    }
  });

  it('refuses patterns whose RE2 program would make testing an attribute slow, together per condition', () => {
    const reasons = (condition: Condition) =>
      validateCondition(condition).map((p) => [p.field, p.reason]);
    // ~4 s on one 60,000-character attribute before the limit.
    expect(reasons({ ua: { $regex: '[a-z]{1000}[a-z]{1000}[a-z]{1000}[0-9]' } })).toEqual([
      ['condition', REGEX_TOO_COMPLEX],
    ]);
    // Each within it, not both: the time to test a unit's attributes adds up.
    const half = '[a-z]{600}[0-9]';
    expect(reasons({ ua: { $regex: half } })).toEqual([]);
    expect(
      reasons({ $or: [{ ua: { $regex: half } }, { ref: { $not: { $regex: half } } }] }),
    ).toEqual([['condition', REGEX_TOO_COMPLEX]]);
    // A length check (514 instructions) is within it; a `$regex` key inside a value is a value.
    expect(reasons({ name: { $regex: '^.{0,255}$' } })).toEqual([]);
    const big = '^[ab]{600}$';
    expect(
      reasons({
        a: { $eq: { $regex: big } },
        b: { $in: [{ c: { $regex: big } }] },
        d: { $regex: big },
      }),
    ).toEqual([]);
    expect(reasons({ a: { $elemMatch: { b: { $regex: big } } }, d: { $regex: big } })).toEqual([
      ['condition', REGEX_TOO_COMPLEX],
    ]);
    // Typical patterns, and plain text of any length (tested as a string, not by RE2).
    expect(
      reasons({
        ua: { $regex: '^(iPhone|iPad|iPod)', $options: 'i' },
        url: { $regex: '^(?:https?://)?(?:www\\.)?example\\.(com|org)/checkout' },
        ref: { $regex: 'x'.repeat(5_000) },
      }),
    ).toEqual([]);
    // One stored before the limit is still evaluated, as it was.
    expect(toleratedWhenStored({ reason: REGEX_TOO_COMPLEX })).toBe(true);
  });

  it('reports an operator among $in values with its path, beside the other problems of the condition', () => {
    const problems = validateCondition({ a: { $in: [1, { $gt: 1 }] }, b: { $foo: 1 } });
    expect(problems.map((p) => [p.field, p.reason])).toEqual([
      ['condition.a.$in[1]', UNCOMPILABLE_CONDITION],
      ['condition.b.$foo', 'UNKNOWN_OPERATOR'],
    ]);
    // A document of plain fields is a value.
    expect(validateCondition({ a: { $nin: [{ b: 1 }] } })).toEqual([]);
  });

  it('refuses what sift cannot compile once split and escaped, which the whole condition hid', () => {
    // sift reads an object with its own `constructor` or `toJSON` as a value, so it never looked
    // at the `$in` of operators beside it; split into conjuncts, it refuses that `$in`.
    for (const condition of [
      { constructor: 1, a: { $in: [{ $gt: 1 }] } },
      { toJSON: 1, $or: [{ a: { $in: [{ $gt: 1 }] } }] },
      { a: { $in: [{ $gt: 1 }] } },
    ]) {
      expect(validateCondition(condition).map((p) => p.reason)).toEqual([UNCOMPILABLE_CONDITION]);
      expect(() => compileCondition(condition)).toThrow(InvalidConditionError);
    }
    // Stored before this check, it matches no unit, as it effectively did, instead of failing
    // the load of every configuration that holds it.
    expect(toleratedWhenStored({ reason: UNCOMPILABLE_CONDITION })).toBe(true);
    expect(() => compileConjunct({ a: { $in: [{ $gt: 1 }] } })).toThrow();
  });

  it('escapes names below the root that strings and arrays inherit, there only', () => {
    expect(matches({ 'a.sub': { $ne: null } }, { a: 'abc' })).toBe(false);
    expect(matches({ 'a.sub': 1 }, { a: { sub: 1 } })).toBe(true);
    expect(matches({ sub: 'x', 'a.length': 2 }, { sub: 'x', a: [{ length: 2 }] })).toBe(true);
    expect(matches({ a: { $all: [{ $elemMatch: { 'b.length': 1 } }] } }, { a: [{ b: 'x' }] })).toBe(
      false,
    );
    expect(
      matches({ a: { $all: [{ $elemMatch: { 'b.length': 1 } }] } }, { a: [{ b: { length: 1 } }] }),
    ).toBe(true);
  });

  it('evaluates a $regex stored before RE2 (a lookahead) as JavaScript did', () => {
    const notABot = compileConjunct({ ua: { $regex: '^(?!.*bot)', $options: 'i' } });
    expect(notABot({ ua: 'Mozilla/5.0' })).toBe(true);
    expect(notABot({ ua: 'GoogleBot/2.1' })).toBe(false);
  });

  it('finds problems inside $and/$or/$elemMatch with indexed paths', () => {
    const problems = validateCondition({
      $and: [{ a: 1 }, { b: { $gt: {} } }],
      list: { $elemMatch: { $lt: null } },
    });
    expect(problems.map((p) => p.field)).toEqual([
      'condition.$and[1].b.$gt',
      'condition.list.$elemMatch.$lt',
    ]);
  });

  it('checks the operator objects inside $all like any: a $regex RE2 refuses stays refused there', () => {
    // RE2 refuses the lookahead; a backtracking RegExp takes exponential time over (a|aa)+.
    const pattern = '^(a|aa)+(?!z)$';
    expect(validateCondition({ ua: { $all: [{ $regex: pattern }] } })).toEqual([
      expect.objectContaining({ field: 'condition.ua.$all[0].$regex', reason: UNSUPPORTED_REGEX }),
    ]);
    expect(
      validateCondition({ ua: { $all: [{ $elemMatch: { f: { $regex: pattern } } }] } }).map(
        (v) => v.field,
      ),
    ).toEqual(['condition.ua.$all[0].$elemMatch.f.$regex']);
    expect(validateCondition({ ua: { $all: [{ $elemMatch: { $gt: 2 } }, 'x'] } })).toEqual([]);
  });

  it('refuses other problems inside $all when written, but evaluates a condition stored with one', () => {
    // Accepted before validation looked inside $all: such conditions may be stored.
    const stored: Condition[] = [
      { tags: { $all: [{ $exists: 1 }] } },
      { tags: { $all: [{ $or: [{ a: 1 }] }] } },
      { tags: { $all: [{ $elemMatch: {} }] } },
      { tags: { $all: [{ $regex: 'a', $options: 'x' }] } },
    ];
    for (const condition of stored) {
      const problems = validateCondition(condition);
      expect(problems.map((v) => v.reason)).toEqual([OPERATOR_IN_ALL]);
      expect(problems.every(toleratedWhenStored)).toBe(true);
      expect(() => compileConjunct(condition)).not.toThrow();
    }
    // As sift read it when it was stored, and the configuration holding it still loads.
    expect(compileConjunct({ tags: { $all: [{ $exists: 1 }] } })({ tags: ['x'] })).toBe(true);
    const snapshot = buildSnapshot(
      configuration({
        experiments: stored.map((condition, i) => experiment({ id: `old-${i}`, condition })),
      }),
    );
    expect([...snapshot.outdatedConditions.keys()]).toEqual(['old-0', 'old-1', 'old-2', 'old-3']);
  });

  it('reads an $elemMatch of $or, $and or $nor alone as a query over the elements, as MongoDB does', () => {
    const condition = { cart: { $elemMatch: { $or: [{ sku: 'a1' }, { qty: { $gt: 5 } }] } } };
    expect(validateCondition(condition)).toEqual([]);
    const matches = compileCondition(condition);
    expect(matches({ cart: [{ sku: 'b', qty: 9 }] })).toBe(true);
    expect(matches({ cart: [{ sku: 'a1', qty: 1 }] })).toBe(true);
    expect(matches({ cart: [{ sku: 'b', qty: 1 }] })).toBe(false);
    // Elements that are not documents match no field of the query, as in MongoDB.
    expect(
      compileCondition({ cart: { $elemMatch: { $or: [{ sku: null }] } } })({ cart: [5] }),
    ).toBe(false);
    expect(
      compileConjunct({ cart: { $elemMatch: { $nor: [{ sku: 'a1' }] } } })({
        cart: [{ sku: 'b' }],
      }),
    ).toBe(true);
  });

  it('rejects a condition that is not an object', () => {
    expect(validateCondition(['a'])[0]?.reason).toBe('INVALID_CONDITION');
    expect(validateCondition('country = SE')[0]?.reason).toBe('INVALID_CONDITION');
  });

  it('rejects operators sift supports but the contract does not ($where, $mod, $type)', () => {
    for (const condition of [
      { $where: 'true' },
      { a: { $mod: [2, 0] } },
      { a: { $type: 'string' } },
    ]) {
      expect(validateCondition(condition)[0]?.reason).toBe('UNKNOWN_OPERATOR');
    }
  });

  it('rejects nesting deeper than the limit', () => {
    let condition: Record<string, unknown> = { a: 1 };
    for (let i = 0; i < 40; i++) condition = { $and: [condition] };
    expect(validateCondition(condition).some((p) => p.reason === 'CONDITION_TOO_DEEP')).toBe(true);
  });

  it('accepts an absent condition', () => {
    expect(validateCondition(undefined)).toEqual([]);
    expect(compileCondition(undefined)({})).toBe(true);
  });
});
