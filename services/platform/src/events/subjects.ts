/**
 * NATS subject matching, for the in-process bus (which must route like a server) and for the
 * client-side filter the NATS adapter falls back to on servers without `filter_subjects`.
 *
 * Subjects are dot-separated tokens. In a pattern `*` matches exactly one token and `>` (last
 * token only) matches one or more remaining tokens, as in the NATS server.
 */

/** True when `subject` (no wildcards) is matched by `pattern` (wildcards allowed). */
export function subjectMatches(pattern: string, subject: string): boolean {
  const wanted = pattern.split('.');
  const actual = subject.split('.');
  for (let i = 0; i < wanted.length; i++) {
    const token = wanted[i];
    if (token === '>') return i === wanted.length - 1 && actual.length > i;
    if (i >= actual.length) return false;
    if (token !== '*' && token !== actual[i]) return false;
  }
  return wanted.length === actual.length;
}

/** True when any of `patterns` matches `subject`; an empty list matches everything. */
export function matchesAnySubject(patterns: readonly string[], subject: string): boolean {
  return patterns.length === 0 || patterns.some((pattern) => subjectMatches(pattern, subject));
}

/**
 * Whitespace, which ends a subject in the NATS protocol: the client refuses a subject holding
 * any (the same characters it checks), on every try.
 */
const SUBJECT_WHITESPACE = /[ \n\r\t]/;

/** True when `subject` is a concrete subject a message can be published on. */
export function isPublishableSubject(subject: string): boolean {
  return (
    subject.length > 0 &&
    !SUBJECT_WHITESPACE.test(subject) &&
    subject.split('.').every((t) => t.length > 0 && t !== '*' && t !== '>')
  );
}

/**
 * True when some subject matches both patterns; JetStream refuses two streams whose subjects
 * overlap, because a message could not be stored in exactly one of them.
 */
export function subjectsOverlap(a: string, b: string): boolean {
  const left = a.split('.');
  const right = b.split('.');
  for (let i = 0; i < Math.min(left.length, right.length); i++) {
    if (left[i] === '>' || right[i] === '>') return true;
    if (left[i] !== '*' && right[i] !== '*' && left[i] !== right[i]) return false;
  }
  return left.length === right.length;
}
