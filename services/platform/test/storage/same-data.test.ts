/**
 * `sameData`: whether two documents hold the same data, whichever realm built them (a document a
 * driver decoded carries another realm's prototypes, as does one built in another vm context).
 */
import { runInNewContext } from 'node:vm';
import { isDeepStrictEqual } from 'node:util';
import { sameData } from '../../src/storage/collection';

describe('sameData', () => {
  it('compares data, not prototypes: a document from another realm equals the same one built here', () => {
    const foreign: unknown = runInNewContext(
      '({ id: "h", tags: [], surfaces: ["home"], nested: { at: new Date(5), n: 1 } })',
    );
    const local = { id: 'h', tags: [], surfaces: ['home'], nested: { at: new Date(5), n: 1 } };
    // What util.isDeepStrictEqual makes of it, and why it is not used.
    expect(isDeepStrictEqual(foreign, local)).toBe(false);
    expect(sameData(foreign, local)).toBe(true);
  });

  it('ignores field order and fields holding undefined, and tells apart every other difference', () => {
    expect(sameData({ a: 1, b: [1, 2] }, { b: [1, 2], a: 1, c: undefined })).toBe(true);
    expect(sameData(new Uint8Array([1, 2]), Buffer.from([1, 2]))).toBe(true);
    for (const [a, b] of [
      [{ a: 1 }, { a: '1' }],
      [{ a: null }, {}],
      [{ a: null }, { a: undefined }],
      [
        [1, 2],
        [2, 1],
      ],
      [[1], { 0: 1 }],
      [new Date(1), new Date(2)],
      [new Date(1), 1],
      [new Uint8Array([1]), new Uint8Array([2])],
      [{ a: { b: 1 } }, { a: { b: 2 } }],
      [{ a: 1 }, { a: 1, b: 2 }],
    ] as const) {
      expect(sameData(a, b)).toBe(false);
      expect(sameData(b, a)).toBe(false);
    }
  });
});
