/**
 * Targeting conditions in MongoDB query syntax over a Resolve request's attributes, evaluated by
 * `sift` (a maintained MongoDB-query engine) and compiled once per configuration version, never per
 * request.
 *
 * Only the operators the contract lists are enabled (`$where`, `$mod`, `$type`, … are not: `$where`
 * would run arbitrary code), and {@link validateCondition} rejects anything sift would choke on or
 * silently misread, so create/update can refuse a bad condition with field paths instead of the
 * evaluator failing at resolve time.
 *
 * Semantics are MongoDB's (sift's), which differ from GrowthBook's `evalCondition` in ways a user
 * porting conditions should know:
 * - Comparisons are type-strict: `{n: {$gt: 5}}` does not match `n: "8"` and `{n: "1"}` does not
 *   match `n: 1`; GrowthBook coerces with JavaScript's `<` and `value + ""`.
 * - A missing attribute fails `$gt/$gte/$lt/$lte` (GrowthBook reads it as null, and `null < 10`).
 * - `$exists: true` matches an attribute that is present with value null (GrowthBook: null is absent).
 * - Dotted paths reach into arrays of objects (`a.b` matches `{a: [{b: 1}]}`); GrowthBook does not.
 * - A literal matches an array attribute that contains it (`{tags: "a"}` matches `tags: ["a", "b"]`);
 *   GrowthBook compares arrays by JSON equality.
 * - `$regex` on a non-string fails (GrowthBook tests `String(value)`).
 * - `$regex` is RE2 syntax, matched in time linear in the attribute's length (`re2js`): no
 *   backreferences or lookaround (refused when the condition is written), and no pattern such as
 *   `^(a|aa)+$` that backtracking engines (JavaScript's, PCRE in MongoDB, GrowthBook's) take
 *   exponential time over, which would let one attribute value stall a replica. A condition's
 *   patterns compile to at most {@link MAX_REGEX_PROGRAM} RE2 instructions together, which bounds
 *   the factor of that linear time.
 * - Empty `$and/$or/$nor` arrays are invalid here (GrowthBook passes an empty `$or`), as in MongoDB.
 * - A top-level `$not: {query}` is accepted (sift and GrowthBook both support it; MongoDB does not).
 * - An attribute named like a JavaScript property (`constructor`, `toString`, `length`, …) is an
 *   ordinary field, as in MongoDB: `{toString: {$exists: true}}` does not match `{}` and
 *   `{"a.length": 3}` does not match `{a: "abc"}`. GrowthBook reads such names from prototypes.
 * For the common shapes (`$in`/`$eq` on strings, numeric comparisons on numbers, `$exists` on absent
 * attributes, `$elemMatch`, `$size`, `$all`, boolean logic) both agree.
 *
 * Where this evaluator still differs from MongoDB itself (found by comparing it with DocumentDB,
 * another MongoDB-compatible engine, over generated conditions; they come from sift's path walk
 * and arise only with arrays inside arrays, scalars where documents are expected or numeric path
 * segments):
 * - Objects compare as maps: `{a: {b: 1, c: 2}}` matches `{a: {c: 2, b: 1}}` (MongoDB compares
 *   field order too; a Struct has none).
 * - A literal also matches inside an array nested in an array (`{a: 1}` matches `a: [[1]]`;
 *   MongoDB looks one level deep); so do comparisons and `$in` (`{a: {$gt: 5}}` and
 *   `{a: {$in: [10]}}` match `a: [[10]]`, `{a: {$nin: [10]}}` does not), and a dotted path
 *   (`{"a.b": 1}` matches `a: [[{b: 1}]]`).
 * - A path through an array's scalars reads them as missing: `{"a.b": null}` matches `a: [1]`.
 * - A numeric segment indexes a string (`{"a.0": "x"}` matches `a: "x"`), does not reach a field
 *   named `0` of an array's documents, and past an array's end is null to `$in: [null]`.
 * - `$elemMatch`'s operator form reaches into an element that is itself an array
 *   (`{$elemMatch: {$gt: 1}}` matches `[1, [2]]`).
 * - In `$regex`, RE2's `\s` leaves out the vertical tab, which PCRE's includes, and `\v` is the
 *   vertical tab alone, where PCRE reads any vertical space (line feed, carriage return, form
 *   feed, U+0085, U+2028, U+2029): write those characters out in a class.
 */
import {
  $and,
  $eq,
  $exists,
  $in,
  $ne,
  $nin,
  $nor,
  $not,
  $options,
  $or,
  createEqualsOperation,
  createQueryOperation,
  createQueryTester,
  EqualsOperation,
} from 'sift';
import { RE2JS } from 're2js';
import type { FieldViolation } from './field-violation';

/** The request attributes a condition is evaluated against (JSON-like values). */
export type Attributes = Readonly<Record<string, unknown>>;

/** A targeting condition: a MongoDB query as a plain JSON object. Empty matches every unit. */
export type Condition = Readonly<Record<string, unknown>>;

/** A compiled condition. */
export type AttributePredicate = (attributes: Attributes) => boolean;

/** The operators a condition may use (besides `$options`, the flags of a `$regex`). */
export const SUPPORTED_OPERATORS = [
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
  '$elemMatch',
  '$size',
  '$all',
  '$and',
  '$or',
  '$nor',
  '$not',
] as const;

/** How deeply a condition may nest; deeper ones are rejected rather than risking the stack. */
export const MAX_CONDITION_DEPTH = 32;

type SiftOptions = Parameters<typeof createEqualsOperation>[2];

/** What sift asks of an operation (its `Operation`, which it does not export). */
interface ValueOperation {
  readonly keep: boolean;
  readonly done: boolean;
  readonly propop: boolean;
  reset(): void;
  next(item: unknown, key?: unknown, owner?: unknown, root?: boolean, leaf?: boolean): void;
}

/**
 * Whether sift's path walk reached `item` by expanding an array at the end of the path (each
 * element is visited, then the array itself). MongoDB applies `$size` and `$elemMatch` to the
 * array at the path only, never to an array inside it. An element that `$elemMatch` hands to its
 * query is visited at the query's root, and an explicit index (`a.0`) has a string key.
 */
function expandedElement(key: unknown, owner: unknown, root: boolean | undefined): boolean {
  return root !== true && typeof key === 'number' && Array.isArray(owner);
}

/** Whether `value` is an object (not an array) whose keys are all operators, from any realm. */
function operatorKeysOnly(value: unknown): boolean {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const keys = Object.keys(value);
  return keys.length > 0 && keys.every((k) => k.startsWith('$'));
}

/**
 * Whether an `$elemMatch` operand is a query over the elements' fields (`{sku: "a"}`, or, as
 * MongoDB reads it, one of logical operators: `{$or: [{sku: "a"}, {qty: 2}]}`) rather than
 * operators applied to each element (`{$gt: 5}`).
 */
function elemMatchQuery(operand: unknown): boolean {
  if (!operatorKeysOnly(operand)) return true;
  return Object.keys(operand as object).some((k) => k === '$and' || k === '$or' || k === '$nor');
}

/** `$size`: the array at the path has `size` elements (sift's also tried arrays inside it). */
class SizeOperation implements ValueOperation {
  keep = false;
  done = false;
  readonly propop = true;

  constructor(private readonly size: unknown) {}

  reset(): void {
    this.keep = false;
    this.done = false;
  }

  next(item: unknown, key?: unknown, owner?: unknown, root?: boolean): void {
    if (expandedElement(key, owner, root)) return;
    if (Array.isArray(item) && item.length === this.size) {
      this.keep = true;
      this.done = true;
    }
  }
}

/**
 * `$elemMatch`: an element of the array at the path matches. Its query form (fields, or logical
 * operators over fields: see `elemMatchQuery`) takes only documents and arrays, as MongoDB's
 * does, and an array inside the array does not stop the search (sift's did both:
 * `{a: {$elemMatch: {$eq: 1}}}` failed `[1, []]`).
 */
class ElemMatchOperation implements ValueOperation {
  keep = false;
  done = false;
  readonly propop = true;
  private readonly query: ValueOperation;
  private readonly documentsOnly: boolean;

  constructor(params: unknown, ownerQuery: unknown, options: SiftOptions) {
    this.query = createQueryOperation(params as Condition, ownerQuery, options);
    // Not `isOperatorObject`: sift is handed a structured clone, which may come from another
    // realm (jest's), whose objects have another Object.prototype.
    this.documentsOnly = elemMatchQuery(params);
  }

  reset(): void {
    this.keep = false;
    this.done = false;
    this.query.reset();
  }

  next(item: unknown, key?: unknown, owner?: unknown, root?: boolean): void {
    if (this.done || !Array.isArray(item) || expandedElement(key, owner, root)) return;
    for (let i = 0; i < item.length; i++) {
      const element: unknown = item[i];
      if (this.documentsOnly && (typeof element !== 'object' || element === null)) continue;
      this.query.reset();
      this.query.next(element, i, item, false);
      if (this.query.keep) {
        this.keep = true;
        this.done = true;
        return;
      }
    }
  }
}

/**
 * `$all`: every value matches the path as an equality would (a value, or an element of the
 * array), and a `{$elemMatch: …}` as that operator would. sift read a document or an array among
 * the values as a query (`{$all: [{}]}` matched anything). Other operator objects (which MongoDB
 * refuses there) are read as sift read them, so a stored condition keeps its meaning.
 */
class AllOperation implements ValueOperation {
  keep = false;
  done = false;
  readonly propop = true;
  private readonly children: ValueOperation[];

  constructor(params: unknown, ownerQuery: unknown, options: SiftOptions) {
    const values = Array.isArray(params) ? (params as unknown[]) : [params];
    this.children = values.map((value) =>
      operatorKeysOnly(value)
        ? (createQueryOperation(value, ownerQuery, options) as ValueOperation)
        : (new EqualsOperation(value, ownerQuery, options) as ValueOperation),
    );
  }

  reset(): void {
    this.keep = false;
    this.done = false;
    for (const child of this.children) child.reset();
  }

  next(item: unknown, key?: unknown, owner?: unknown, root?: boolean, leaf?: boolean): void {
    let all = true;
    for (const child of this.children) {
      if (!child.done) child.next(item, key, owner, root, leaf);
      if (!child.keep) all = false;
    }
    this.keep = all;
    this.done = all;
  }
}

// Only these operations are given to sift, so an operator slipping past validation still throws.
const operations = {
  $eq,
  $ne,
  $in,
  $nin,
  $gt: comparison((order) => order > 0),
  $gte: comparison((order) => order >= 0),
  $lt: comparison((order) => order < 0),
  $lte: comparison((order) => order <= 0),
  $exists,
  $regex,
  $options,
  $elemMatch: (params: unknown, ownerQuery: unknown, options: SiftOptions) =>
    new ElemMatchOperation(params, ownerQuery, options),
  $size: (params: unknown) => new SizeOperation(params),
  $all: (params: unknown, ownerQuery: unknown, options: SiftOptions) =>
    new AllOperation(params, ownerQuery, options),
  $and,
  $or,
  $nor,
  $not,
};

/**
 * Equality as MongoDB's for JSON values, given to sift for literals, `$eq`, `$ne`, `$in` and
 * `$nin`: `null` in a condition matches a missing attribute, but inside an object a key holding
 * null is not a missing key (sift's own `equals` took `{b: null}` for equal to `{c: 1}`). Objects
 * are compared as maps, whatever the order of their keys (see the module comment).
 */
function equalsValue(expected: unknown, actual: unknown): boolean {
  if (expected === null || expected === undefined) return actual === null || actual === undefined;
  return sameValue(expected, actual);
}

function sameValue(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((item, i) => sameValue(item, b[i]));
  }
  const keys = Object.keys(a);
  if (keys.length !== Object.keys(b).length) return false;
  return keys.every(
    (key) =>
      Object.hasOwn(b, key) &&
      sameValue((a as Record<string, unknown>)[key], (b as Record<string, unknown>)[key]),
  );
}

const LOGICAL = new Set(['$and', '$or', '$nor']);
/** MongoDB's `$options` flags that mean something here ('u': RE2 is Unicode-aware anyway). */
const REGEX_FLAGS = /^[imsu]*$/;
const RE2_FLAGS: Readonly<Record<string, number>> = {
  i: RE2JS.CASE_INSENSITIVE,
  m: RE2JS.MULTILINE,
  s: RE2JS.DOTALL,
  u: 0,
};

/**
 * The reason of a `$regex` that JavaScript's RegExp accepts and RE2 does not (a backreference,
 * lookaround). Refused when a condition is written; a condition stored before `$regex` was RE2
 * keeps being evaluated, with RegExp for that pattern, so upgrading does not change who an
 * experiment targets (the service logs which experiments have one).
 */
export const UNSUPPORTED_REGEX = 'UNSUPPORTED_REGEX';

/**
 * Reasons of rules tightened after conditions were first stored: `$all` of an empty array (sift
 * matches every unit, MongoDB none) and `$not` of a plain value (MongoDB refuses it; sift reads it
 * as "not equal"). Refused when a condition is written; a stored one keeps being evaluated as it
 * was, like an {@link UNSUPPORTED_REGEX}.
 */
export const EMPTY_ALL = 'EMPTY_ALL';
export const NOT_OF_VALUE = 'NOT_OF_VALUE';
/**
 * A problem inside an operator object of `$all` (`{$all: [{$exists: 1}]}`), which validation did
 * not look into before: refused when written, evaluated as it was when stored. A problem there
 * that is tolerated on its own (an {@link UNSUPPORTED_REGEX}) keeps its own reason.
 */
export const OPERATOR_IN_ALL = 'OPERATOR_IN_ALL';

/**
 * A condition sift cannot compile as it is compiled: split into conjuncts, each with the names
 * of `escapeName` escaped (a field named `constructor` beside `{$in: [{$gt: 1}]}`, say, which
 * the whole condition had hidden). Refused when written; one stored before this check matches
 * no unit, as it effectively did (sift read it as a value no attributes equal).
 */
export const UNCOMPILABLE_CONDITION = 'UNCOMPILABLE_CONDITION';

/**
 * The most RE2 instructions a condition's `$regex` patterns may compile to together (plain-text
 * patterns, tested as strings, excepted). RE2's time is linear in the attribute's length, but
 * with a factor that grows with the pattern's program: `[a-z]{1000}[a-z]{1000}[a-z]{1000}[0-9]`
 * (3,003 instructions) took ~4 s on one 60,000-character attribute, where 1,000 took ~150 ms at
 * the 64 KiB attribute limit and take a few milliseconds on a kilobyte. Typical targeting
 * patterns take 10–50, a length check such as `^.{0,255}$` 514 (counted repetition is expanded);
 * a long list of alternatives is a `$in`.
 */
export const MAX_REGEX_PROGRAM = 1_024;
/** The reason of a condition over {@link MAX_REGEX_PROGRAM}; one stored before the limit is kept. */
export const REGEX_TOO_COMPLEX = 'REGEX_TOO_COMPLEX';

/** Whether a stored condition with this problem is still evaluated (as it was when stored). */
export function toleratedWhenStored(violation: { readonly reason?: string }): boolean {
  return (
    violation.reason === UNSUPPORTED_REGEX ||
    violation.reason === REGEX_TOO_COMPLEX ||
    violation.reason === EMPTY_ALL ||
    violation.reason === NOT_OF_VALUE ||
    violation.reason === OPERATOR_IN_ALL ||
    violation.reason === UNCOMPILABLE_CONDITION
  );
}

/** Compiles a `$regex` with its `$options`; throws on what RE2 does not accept. */
function compileRe2(pattern: string, flags: unknown): RE2JS {
  let bits = 0;
  if (typeof flags === 'string') for (const flag of flags) bits |= RE2_FLAGS[flag] ?? 0;
  return RE2JS.compile(pattern, bits);
}

/** JavaScript's RegExp for a pattern RE2 refuses (see {@link UNSUPPORTED_REGEX}). */
function compileRegExp(pattern: string, flags: unknown): RegExp {
  return new RegExp(pattern, typeof flags === 'string' && REGEX_FLAGS.test(flags) ? flags : '');
}

const REGEX_META = /[\\^$.|?*+()[\]{}]/;

/**
 * A `$regex` that is plain text, optionally anchored (`Mobile`, `^ios`, `beta$`, `^SE$`) and
 * without the `i` or `m` flag, as a string test: the same answer as RE2 at a hundredth of its cost.
 */
function literalTest(pattern: string, flags: unknown): ((value: string) => boolean) | undefined {
  if (typeof flags === 'string' && /[im]/.test(flags)) return undefined;
  const atStart = pattern.startsWith('^');
  const atEnd = pattern.length > (atStart ? 1 : 0) && pattern.endsWith('$');
  const text = pattern.slice(atStart ? 1 : 0, atEnd ? -1 : undefined);
  if (REGEX_META.test(text)) return undefined;
  if (atStart && atEnd) return (value) => value === text;
  if (atStart) return (value) => value.startsWith(text);
  if (atEnd) return (value) => value.endsWith(text);
  return (value) => value.includes(text);
}

/**
 * A `$regex` as a test of a string: RE2, or RegExp for a pattern stored before RE2. Without the
 * `m` flag, MongoDB's engine (PCRE) lets `$` match before a newline that ends the string as well
 * as at its end, and RE2 and RegExp do not; so a pattern with a `$` (and no `\z`, which only
 * matches at the very end) is tried again on a value without its final newline: what can match
 * there and not in the whole value is a `$` matching at that newline.
 */
function regexTest(pattern: string, flags: unknown): (value: string) => boolean {
  const test = engineTest(pattern, flags);
  const multiline = typeof flags === 'string' && flags.includes('m');
  if (multiline || !pattern.includes('$') || pattern.includes('\\z')) return test;
  return (value) => test(value) || (value.endsWith('\n') && test(value.slice(0, -1)));
}

function engineTest(pattern: string, flags: unknown): (value: string) => boolean {
  const literal = literalTest(pattern, flags);
  if (literal !== undefined) return literal;
  try {
    const regex = compileRe2(pattern, flags);
    return (value) => regex.test(value);
  } catch {
    const regex = compileRegExp(pattern, flags);
    return (value) => regex.test(value);
  }
}

/**
 * Order of two strings by code point, which is the order of their UTF-8 bytes, as MongoDB
 * compares them. JavaScript's `<` compares UTF-16 units, which puts a character past U+FFFF (a
 * surrogate pair, 0xD800–0xDFFF) before U+E000–U+FFFF.
 */
function compareStrings(a: string, b: string): number {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    const xPair = x >= 0xd800 && x <= 0xdfff;
    const yPair = y >= 0xd800 && y <= 0xdfff;
    if (xPair !== yPair) return xPair ? 1 : -1;
    return x - y;
  }
  return a.length - b.length;
}

/**
 * `$gt`, `$gte`, `$lt` and `$lte`: a number against a number, a string against a string (by code
 * point), anything else (missing, null, another type) no match, as in MongoDB. Validation allows
 * only a number or a string as the operand.
 */
function comparison(accepts: (order: number) => boolean) {
  return (
    operand: unknown,
    ownerQuery: unknown,
    options: Parameters<typeof createEqualsOperation>[2],
  ) =>
    createEqualsOperation(
      (value: unknown) => {
        if (typeof value === 'number' && typeof operand === 'number') {
          return accepts(value < operand ? -1 : value > operand ? 1 : 0);
        }
        if (typeof value === 'string' && typeof operand === 'string') {
          return accepts(compareStrings(value, operand));
        }
        return false;
      },
      ownerQuery,
      options,
    );
}

/** sift's `$regex`, matched by RE2 instead of a backtracking RegExp (a string value, found anywhere). */
function $regex(
  pattern: string,
  ownerQuery: { $options?: unknown },
  options: Parameters<typeof createEqualsOperation>[2],
) {
  const test = regexTest(pattern, ownerQuery.$options);
  return createEqualsOperation(
    (value: unknown) => typeof value === 'string' && test(value),
    ownerQuery,
    options,
  );
}

/** Thrown when compiling a condition that {@link validateCondition} rejects. */
export class InvalidConditionError extends Error {
  constructor(readonly violations: readonly FieldViolation[]) {
    super(`invalid condition: ${violations.map((v) => `${v.field}: ${v.description}`).join('; ')}`);
    this.name = 'InvalidConditionError';
  }
}

const matchAll: AttributePredicate = () => true;

/** Whether a condition is absent or `{}`, which matches every unit. */
export function isEmptyCondition(condition: Condition | null | undefined): boolean {
  return condition === undefined || condition === null || Object.keys(condition).length === 0;
}

/**
 * Every problem with a condition, with field paths under `path` (for example
 * `condition.country.$in`): not an object, an unknown or misplaced operator, an operand of the
 * wrong type, a regex that does not compile, an empty `$and/$or/$nor`, too deep a nesting.
 */
export function validateCondition(condition: unknown, path = 'condition'): FieldViolation[] {
  const out: FieldViolation[] = [];
  if (condition === undefined || condition === null) return out;
  validateQuery(condition, path, 0, out);
  const program = regexProgramSize(condition);
  if (program > MAX_REGEX_PROGRAM) {
    out.push(
      violation(
        path,
        `its $regex patterns compile to ${program} RE2 instructions, more than ${MAX_REGEX_PROGRAM}: the time to test an attribute grows with them (write a list of alternatives as $in)`,
        REGEX_TOO_COMPLEX,
      ),
    );
  }
  // Also beside problems a stored condition may have (EMPTY_ALL, …): it is then evaluated, and
  // what cannot be compiled must be known.
  if (out.every(toleratedWhenStored) && !out.some((v) => v.reason === UNCOMPILABLE_CONDITION)) {
    // Defence in depth: anything sift still refuses is reported, not thrown at resolve time.
    // What is compiled, exactly: the whole condition and each conjunct, escaped as they are.
    const whole = condition as Condition;
    for (const part of [whole, ...conjunctsOf(whole)]) {
      const problem = compileProblem(part);
      if (problem !== undefined) {
        out.push(violation(path, `not a valid query: ${problem}`, UNCOMPILABLE_CONDITION));
        break;
      }
    }
  }
  return out;
}

/**
 * The RE2 instructions of the `$regex` patterns in `condition` that are tested with RE2 (not as
 * plain text), together; a pattern RE2 refuses counts nothing (validation reports it). Only the
 * operators of fields are looked at, as validation reads them: a `$regex` key inside a value
 * (`{$eq: {$regex: …}}`) is a value.
 */
function regexProgramSize(condition: unknown): number {
  let total = 0;
  const query = (value: unknown): void => {
    if (!isPlainObject(value)) return;
    for (const [key, operand] of Object.entries(value)) {
      if (key === '$and' || key === '$or' || key === '$nor') {
        if (Array.isArray(operand)) operand.forEach(query);
      } else if (key === '$not') {
        query(operand);
      } else if (!key.startsWith('$') && isOperatorObject(operand)) {
        operators(operand);
      }
    }
  };
  const operators = (ops: Record<string, unknown>): void => {
    const pattern = ops.$regex;
    if (typeof pattern === 'string' && literalTest(pattern, ops.$options) === undefined) {
      try {
        total += compileRe2(pattern, ops.$options).programSize();
      } catch {
        // Not RE2: reported as such.
      }
    }
    for (const [op, operand] of Object.entries(ops)) {
      if (op === '$not' || op === '$elemMatch') {
        if (isOperatorObject(operand)) operators(operand);
        else query(operand);
      } else if (op === '$all' && Array.isArray(operand)) {
        for (const item of operand) if (isOperatorObject(item)) operators(item);
      }
    }
  };
  query(condition);
  return total;
}

/** Why sift refuses to compile a (valid-looking) conjunct as {@link compileConjunct} would. */
function compileProblem(conjunct: Condition): string | undefined {
  try {
    testerOf(conjunct);
    return undefined;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}

/**
 * Compiles a condition into a predicate over attributes. An empty condition compiles to a
 * predicate that matches every unit without calling sift. The condition is copied, so later
 * changes to the caller's object do not change the predicate.
 * @throws InvalidConditionError when {@link validateCondition} reports a problem.
 */
export function compileCondition(condition: Condition | null | undefined): AttributePredicate {
  if (condition === undefined || condition === null || isEmptyCondition(condition)) {
    return matchAll;
  }
  const violations = validateCondition(condition);
  if (violations.length > 0) throw new InvalidConditionError(violations);
  return compileConjunct(condition);
}

/**
 * Compiles, without validating it again, a condition {@link validateCondition} accepted or one of
 * its {@link conjunctsOf}. Like {@link compileCondition}, it copies the condition. The predicate
 * may keep an escaped copy of an attributes object it was given while that object lives: do not
 * change an attributes object between evaluations (the service makes one per request).
 * @throws when sift cannot compile it (`UNCOMPILABLE_CONDITION`, which validation reports).
 */
export function compileConjunct(conjunct: Condition): AttributePredicate {
  if (isEmptyCondition(conjunct)) return matchAll;
  return testerOf(conjunct);
}

function testerOf(conjunct: Condition): AttributePredicate {
  const escaped = escapeQuery(conjunct, false);
  if (JSON.stringify(escaped) === JSON.stringify(conjunct)) {
    const tester = createQueryTester<unknown, unknown>(structuredClone(conjunct), {
      operations,
      compare: equalsValue,
    });
    return (attributes) => tester(attributes);
  }
  // Rare: the conjunct names something sift would read from a prototype or misread (see
  // `escapeName`), so it reads a copy of the attributes with the same names escaped, made once
  // per attributes object whatever the number of such conjuncts.
  const tester = createQueryTester<unknown, unknown>(escaped, { operations, compare: equalsValue });
  return (attributes) => tester(escapedAttributes(attributes));
}

/** The escaped copy of each attributes object, while it lives (one resolve). */
const escapedCopies = new WeakMap<object, unknown>();

function escapedAttributes(attributes: Attributes): unknown {
  let copy = escapedCopies.get(attributes);
  if (copy === undefined) {
    copy = escapeValue(attributes, true);
    escapedCopies.set(attributes, copy);
  }
  return copy;
}

/**
 * Names that JSON values inherit from their prototypes (`toString`, `constructor`, an array's or a
 * string's `length`, `hasOwnProperty`, …) and `toJSON`. sift reads a path through `value[name]`,
 * so `{"a.length": 3}` matched the string `"abc"` and `{toString: {$ne: null}}` a unit without
 * that attribute; and it reads a query object with its own `constructor` or `toJSON` key as a
 * value to compare with, so `{constructor: "x"}` matched only attributes equal to exactly that.
 * MongoDB has none of this: an attribute of any of these names is an ordinary field.
 */
const INHERITED_NAMES: ReadonlySet<string> = new Set([
  ...[
    Object.prototype,
    Array.prototype,
    String.prototype,
    Number.prototype,
    Boolean.prototype,
  ].flatMap((prototype) => Object.getOwnPropertyNames(prototype)),
  'toJSON',
]);

/**
 * The names to escape at the attributes' root, which is always a plain object: those of
 * Object.prototype and `toJSON`, not a string's or an array's (so `sub` or `link` at the root
 * costs nothing).
 */
const ROOT_INHERITED_NAMES: ReadonlySet<string> = new Set([
  ...Object.getOwnPropertyNames(Object.prototype),
  'toJSON',
]);

/**
 * A field name as the escaped copies of conditions and attributes hold it: an inherited name
 * (or one starting with `~`, so the mapping stays one-to-one) prefixed with `~`, which no
 * prototype has. Numeric segments (array indexes in a path) are never inherited names. At the
 * root, only Object.prototype's names are inherited.
 */
function escapeName(name: string, root: boolean): string {
  const inherited = root ? ROOT_INHERITED_NAMES : INHERITED_NAMES;
  return inherited.has(name) || name.startsWith('~') ? `~${name}` : name;
}

/**
 * A JSON value (the attributes, at the root, or a literal in a condition, never at the root) with
 * every object key escaped.
 */
function escapeValue(value: unknown, root = false): unknown {
  if (Array.isArray(value)) return value.map((item) => escapeValue(item));
  if (typeof value !== 'object' || value === null) return value;
  const out: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) out[escapeName(key, root)] = escapeValue(item);
  return out;
}

/**
 * A valid query with its field paths and literals escaped; operators and operands kept. `nested`
 * for a query over values below the root (`$elemMatch`'s, `$not`'s under a field).
 */
function escapeQuery(query: Condition, nested: boolean): Condition {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(query)) {
    if (LOGICAL.has(key) && Array.isArray(value)) {
      out[key] = value.map((member) => escapeQuery(member as Condition, nested));
    } else if (key === '$not' && isPlainObject(value)) {
      out[key] = escapeQuery(value, nested);
    } else if (key.startsWith('$')) {
      out[key] = value;
    } else {
      const segments = key.split('.').map((segment, i) => escapeName(segment, !nested && i === 0));
      out[segments.join('.')] = escapeFieldValue(value);
    }
  }
  return out;
}

function escapeFieldValue(value: unknown): unknown {
  if (!operatorKeysOnly(value)) return escapeValue(value);
  const out: Record<string, unknown> = {};
  for (const [op, operand] of Object.entries(value as Record<string, unknown>)) {
    switch (op) {
      case '$eq':
      case '$ne':
      case '$in':
      case '$nin':
        out[op] = escapeValue(operand);
        break;
      case '$all':
        // Values, or operators (`$elemMatch`) that read fields below this one.
        out[op] = Array.isArray(operand)
          ? operand.map((item) =>
              operatorKeysOnly(item) ? escapeFieldValue(item) : escapeValue(item),
            )
          : escapeValue(operand);
        break;
      case '$elemMatch':
        out[op] = elemMatchQuery(operand)
          ? escapeQuery(operand as Condition, true)
          : escapeFieldValue(operand);
        break;
      case '$not':
        // Operators, or (stored before NOT_OF_VALUE) a document sift reads as a query below.
        out[op] = operatorKeysOnly(operand)
          ? escapeFieldValue(operand)
          : isPlainObject(operand)
            ? escapeQuery(operand, true)
            : escapeValue(operand);
        break;
      default:
        out[op] = operand;
    }
  }
  return out;
}

/**
 * The conjuncts of a condition: the queries that must all match for it to match. MongoDB reads a
 * query's top-level fields, and the members of a top-level `$and`, as a conjunction, so
 * `{country: "SE", $and: [{plan: "premium"}, {"app.version": {$gte: 10}}]}` has the three conjuncts
 * `{country: "SE"}`, `{plan: "premium"}` and `{"app.version": {$gte: 10}}`. An evaluator that
 * compiles conjuncts rather than whole conditions evaluates a rule that many conditions share
 * ("Nordics on iOS") once per unit. Field operators (`{age: {$gte: 18, $lt: 65}}`) and
 * `$or/$nor/$not` stay whole. The condition must be valid (see {@link validateCondition}).
 */
export function conjunctsOf(condition: Condition): Condition[] {
  const out: Condition[] = [];
  for (const [key, value] of Object.entries(condition)) {
    if (key === '$and' && Array.isArray(value)) {
      for (const member of value) out.push(...conjunctsOf(member as Condition));
    } else {
      out.push({ [key]: value });
    }
  }
  return out;
}

function violation(field: string, description: string, reason: string): FieldViolation {
  return { field, description, reason };
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}

function isJsonValue(value: unknown, depth: number): boolean {
  if (depth > MAX_CONDITION_DEPTH) return false;
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return true;
  if (typeof value === 'number') return Number.isFinite(value);
  if (Array.isArray(value)) return value.every((v) => isJsonValue(v, depth + 1));
  if (isPlainObject(value)) return Object.values(value).every((v) => isJsonValue(v, depth + 1));
  return false;
}

function isOperatorObject(value: unknown): value is Record<string, unknown> {
  return isPlainObject(value) && operatorKeysOnly(value);
}

function tooDeep(path: string, depth: number, out: FieldViolation[]): boolean {
  if (depth <= MAX_CONDITION_DEPTH) return false;
  out.push(
    violation(path, `nested deeper than ${MAX_CONDITION_DEPTH} levels`, 'CONDITION_TOO_DEEP'),
  );
  return true;
}

// A query: field paths mapped to values or operator objects, plus top-level $and/$or/$nor/$not.
function validateQuery(query: unknown, path: string, depth: number, out: FieldViolation[]): void {
  if (tooDeep(path, depth, out)) return;
  if (!isPlainObject(query)) {
    out.push(violation(path, 'must be an object (a MongoDB query)', 'INVALID_CONDITION'));
    return;
  }
  for (const [key, value] of Object.entries(query)) {
    const at = `${path}.${key}`;
    if (LOGICAL.has(key)) {
      if (!Array.isArray(value) || value.length === 0) {
        out.push(violation(at, `${key} takes a non-empty array of conditions`, 'INVALID_OPERAND'));
        continue;
      }
      value.forEach((item, i) => {
        validateQuery(item, `${at}[${i}]`, depth + 1, out);
      });
    } else if (key === '$not') {
      validateQuery(value, at, depth + 1, out);
    } else if (key.startsWith('$')) {
      out.push(
        SUPPORTED_OPERATORS.includes(key as (typeof SUPPORTED_OPERATORS)[number])
          ? violation(at, `${key} must be applied to an attribute`, 'MISPLACED_OPERATOR')
          : violation(at, `unknown operator ${key}`, 'UNKNOWN_OPERATOR'),
      );
    } else if (key === '' || key.split('.').some((segment) => segment === '')) {
      out.push(
        violation(at, 'attribute paths must be non-empty dot-separated names', 'INVALID_PATH'),
      );
    } else {
      validateFieldValue(value, at, depth + 1, out);
    }
  }
}

// The value of an attribute path: a literal to compare with, or an object of operators.
function validateFieldValue(
  value: unknown,
  path: string,
  depth: number,
  out: FieldViolation[],
): void {
  if (tooDeep(path, depth, out)) return;
  if (isPlainObject(value) && Object.keys(value).some((k) => k.startsWith('$'))) {
    if (!isOperatorObject(value)) {
      out.push(
        violation(
          path,
          'mixes operators and plain keys; use one or the other',
          'INVALID_CONDITION',
        ),
      );
      return;
    }
    validateOperators(value, path, depth, out);
    return;
  }
  if (!isJsonValue(value, depth)) {
    out.push(violation(path, 'must be a JSON value or an object of operators', 'INVALID_OPERAND'));
  }
}

function validateOperators(
  operators: Record<string, unknown>,
  path: string,
  depth: number,
  out: FieldViolation[],
): void {
  for (const [op, operand] of Object.entries(operators)) {
    const at = `${path}.${op}`;
    switch (op) {
      case '$eq':
      case '$ne':
        if (!isJsonValue(operand, depth))
          out.push(violation(at, `${op} takes a JSON value`, 'INVALID_OPERAND'));
        break;
      case '$gt':
      case '$gte':
      case '$lt':
      case '$lte':
        if (!(
          typeof operand === 'string' ||
          (typeof operand === 'number' && Number.isFinite(operand))
        )) {
          out.push(violation(at, `${op} takes a number or a string`, 'INVALID_OPERAND'));
        }
        break;
      case '$in':
      case '$nin':
        if (!Array.isArray(operand) || !isJsonValue(operand, depth)) {
          out.push(violation(at, `${op} takes an array of values`, 'INVALID_OPERAND'));
        } else {
          // An operator object among the values (`{$in: [{$gt: 1}]}`): MongoDB refuses it ("cannot
          // nest $ under $in") and sift cannot compile it. Found here, with its path and beside
          // the condition's other problems, rather than by the compile check run without them.
          operand.forEach((item, i) => {
            if (isPlainObject(item) && Object.keys(item).some((key) => key.startsWith('$'))) {
              out.push(
                violation(
                  `${at}[${i}]`,
                  `${op} takes values, not operators`,
                  UNCOMPILABLE_CONDITION,
                ),
              );
            }
          });
        }
        break;
      case '$all':
        // MongoDB matches nothing with an empty `$all`, sift everything: neither is meant.
        if (!Array.isArray(operand) || !isJsonValue(operand, depth)) {
          out.push(violation(at, '$all takes an array of values', 'INVALID_OPERAND'));
        } else if (operand.length === 0) {
          out.push(violation(at, '$all takes a non-empty array of values', EMPTY_ALL));
        } else {
          // Its operator objects (`{$elemMatch: …}`) are checked as any: a `$regex` RE2 refuses
          // would otherwise run as a backtracking RegExp. Their other problems were not looked
          // for before, so a stored condition with one is still evaluated (OPERATOR_IN_ALL).
          operand.forEach((item, i) => {
            if (!isOperatorObject(item)) return;
            const inner: FieldViolation[] = [];
            validateOperators(item, `${at}[${i}]`, depth + 1, inner);
            for (const problem of inner) {
              out.push(
                toleratedWhenStored(problem) ? problem : { ...problem, reason: OPERATOR_IN_ALL },
              );
            }
          });
        }
        break;
      case '$exists':
        if (typeof operand !== 'boolean')
          out.push(violation(at, '$exists takes true or false', 'INVALID_OPERAND'));
        break;
      case '$size':
        if (!(typeof operand === 'number' && Number.isInteger(operand) && operand >= 0)) {
          out.push(violation(at, '$size takes a non-negative integer', 'INVALID_OPERAND'));
        }
        break;
      case '$regex':
        validateRegex(operand, operators.$options, at, out);
        break;
      case '$options':
        if (!('$regex' in operators)) {
          out.push(violation(at, '$options is only allowed beside $regex', 'MISPLACED_OPERATOR'));
        } else if (typeof operand !== 'string' || !REGEX_FLAGS.test(operand)) {
          out.push(violation(at, '$options takes regex flags among "imsu"', 'INVALID_OPERAND'));
        }
        break;
      case '$elemMatch':
        if (!isPlainObject(operand) || Object.keys(operand).length === 0) {
          out.push(violation(at, '$elemMatch takes a non-empty object', 'INVALID_OPERAND'));
        } else if (elemMatchQuery(operand)) validateQuery(operand, at, depth + 1, out);
        else validateOperators(operand, at, depth + 1, out);
        break;
      case '$not':
        // As MongoDB: `{$not: 5}` is refused there, not read as "not equal to 5".
        if (isPlainObject(operand) && Object.keys(operand).some((k) => k.startsWith('$'))) {
          validateFieldValue(operand, at, depth + 1, out);
        } else if (isJsonValue(operand, depth)) {
          out.push(
            violation(
              at,
              '$not takes an object of operators, such as {"$gt": 5} or {"$regex": "^a"}',
              NOT_OF_VALUE,
            ),
          );
        } else validateFieldValue(operand, at, depth + 1, out);
        break;
      case '$and':
      case '$or':
      case '$nor':
        out.push(
          violation(
            at,
            `${op} is only allowed at the top level of a condition`,
            'MISPLACED_OPERATOR',
          ),
        );
        break;
      default:
        out.push(violation(at, `unknown operator ${op}`, 'UNKNOWN_OPERATOR'));
    }
  }
}

function validateRegex(
  pattern: unknown,
  flags: unknown,
  path: string,
  out: FieldViolation[],
): void {
  if (typeof pattern !== 'string') {
    out.push(violation(path, '$regex takes a string', 'INVALID_OPERAND'));
    return;
  }
  try {
    compileRe2(pattern, flags);
  } catch (error) {
    const problem = (error as Error).message;
    let javascript = true;
    try {
      compileRegExp(pattern, flags);
    } catch {
      javascript = false;
    }
    out.push(
      javascript
        ? violation(
            path,
            `not RE2 syntax (no backreferences or lookaround): ${problem}`,
            UNSUPPORTED_REGEX,
          )
        : violation(path, `invalid regular expression: ${problem}`, 'INVALID_REGEX'),
    );
  }
}
