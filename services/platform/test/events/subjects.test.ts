import { subjectMatches, subjectsOverlap } from '../../src/events/subjects';

describe('subjectMatches', () => {
  it.each([
    ['tandem.events.v1.exposure', 'tandem.events.v1.exposure', true],
    ['tandem.events.v1.exposure', 'tandem.events.v1.decision', false],
    ['tandem.events.v1.*', 'tandem.events.v1.exposure', true],
    ['tandem.events.v1.*', 'tandem.events.v1.outcome.play', false],
    ['tandem.events.v1.>', 'tandem.events.v1.outcome.play', true],
    ['tandem.events.v1.>', 'tandem.events.v1', false],
    ['tandem.*.v1.exposure', 'tandem.events.v1.exposure', true],
    ['tandem.events', 'tandem.events.v1', false],
  ])('%s matches %s: %s', (pattern, subject, expected) => {
    expect(subjectMatches(pattern, subject)).toBe(expected);
  });
});

describe('subjectsOverlap', () => {
  it.each([
    ['a.b', 'a.b', true],
    ['a.b', 'a.c', false],
    ['a.*', 'a.b', true],
    ['a.>', 'a.b.c', true],
    ['a.*', 'a.b.c', false],
    ['a.*.c', 'a.b.*', true],
    ['a.>', 'b.>', false],
  ])('%s and %s overlap: %s', (a, b, expected) => {
    expect(subjectsOverlap(a, b)).toBe(expected);
    expect(subjectsOverlap(b, a)).toBe(expected);
  });
});
