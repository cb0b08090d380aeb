import {
  checkValue,
  utf8Length,
  ValueType,
  type FeatureValue,
} from '../../src/domain/feature-values';

const at = { field: 'rows[3].values.ctr' };

describe('checkValue', () => {
  it.each<[ValueType, FeatureValue]>([
    [ValueType.Double, { kind: 'double', value: -1.5 }],
    [ValueType.Int64, { kind: 'int64', value: Number.MAX_SAFE_INTEGER }],
    [ValueType.Int64, { kind: 'int64', value: -Number.MAX_SAFE_INTEGER }],
    [ValueType.String, { kind: 'string', value: 'jazz' }],
    [ValueType.Bool, { kind: 'bool', value: false }],
    [ValueType.FloatVector, { kind: 'floatVector', value: [0.1, -2, 3.4e38] }],
    [ValueType.FloatVector, { kind: 'floatVector', value: new Float32Array([1, 2]) }],
    [ValueType.StringList, { kind: 'stringList', value: ['a', 'b'] }],
  ])('accepts a valid value of type %s', (type, value) => {
    expect(checkValue(type, value, at)).toBeUndefined();
  });

  it('names the field path and both kinds when the value has the wrong type', () => {
    expect(checkValue(ValueType.Double, { kind: 'string', value: '0.1' }, at)).toEqual({
      field: 'rows[3].values.ctr',
      description: 'must be a VALUE_TYPE_DOUBLE value, not a string value',
      reason: 'WRONG_VALUE_TYPE',
    });
  });

  it.each([Number.NaN, Infinity, -Infinity])('rejects the non-finite double %s', (value) => {
    expect(checkValue(ValueType.Double, { kind: 'double', value }, at)?.description).toMatch(
      /finite/,
    );
  });

  it.each([2 ** 53, -(2 ** 53), 1.5, Number.NaN])(
    'rejects the int64 %s outside the safe integers',
    (value) => {
      expect(checkValue(ValueType.Int64, { kind: 'int64', value }, at)?.description).toMatch(
        /2\^53/,
      );
    },
  );

  it('requires the declared vector length, finite floats and floats that fit 32 bits', () => {
    const vector = (value: number[]): FeatureValue => ({ kind: 'floatVector', value });
    expect(
      checkValue(ValueType.FloatVector, vector([1, 2]), { vectorLength: 3 })?.description,
    ).toBe('must hold exactly 3 floats, not 2');
    expect(
      checkValue(ValueType.FloatVector, vector([1, 2, 3]), { vectorLength: 3 }),
    ).toBeUndefined();
    expect(checkValue(ValueType.FloatVector, vector([1, Number.NaN]))?.description).toMatch(
      /element 1/,
    );
    expect(checkValue(ValueType.FloatVector, vector([1e39]))?.description).toMatch(/32-bit/);
    expect(
      checkValue(ValueType.FloatVector, vector(new Array<number>(4_097).fill(0))),
    ).toBeDefined();
    expect(
      checkValue(ValueType.FloatVector, vector(new Array<number>(4_096).fill(0))),
    ).toBeUndefined();
  });

  it('limits strings to 65,536 UTF-8 bytes and lists to 1,024 strings', () => {
    expect(
      checkValue(ValueType.String, { kind: 'string', value: 'a'.repeat(65_536) }),
    ).toBeUndefined();
    expect(
      checkValue(ValueType.String, { kind: 'string', value: 'é'.repeat(32_769) }),
    ).toBeDefined();
    const list = (n: number): FeatureValue => ({
      kind: 'stringList',
      value: new Array<string>(n).fill('x'),
    });
    expect(checkValue(ValueType.StringList, list(1_024))).toBeUndefined();
    expect(checkValue(ValueType.StringList, list(1_025))).toBeDefined();
  });

  it('accepts null unless the value must be present, and rejects an unspecified type', () => {
    expect(checkValue(ValueType.Double, null)).toBeUndefined();
    expect(
      checkValue(ValueType.String, null, { field: 'rows[0].entity_key.user_id', nullable: false }),
    ).toEqual({
      field: 'rows[0].entity_key.user_id',
      description: 'must not be null',
      reason: 'NULL_VALUE',
    });
    expect(checkValue(ValueType.Unspecified, { kind: 'bool', value: true })).toBeDefined();
  });
});

describe('utf8Length', () => {
  it('counts UTF-8 bytes like an encoder does', () => {
    for (const s of ['', 'abc', 'é', '€', '😀', 'a😀é€', '\ud800']) {
      expect(utf8Length(s)).toBe(new TextEncoder().encode(s).length);
    }
  });
});
