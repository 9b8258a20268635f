package tensorjson

import "math"

// fp16Overflow is the smallest magnitude that rounds to infinity in IEEE
// half precision (65504 is the largest finite half; halfway to 2^16 rounds up).
const fp16Overflow = 65520

// FloatToHalf converts f to IEEE 754 half precision, rounding to nearest,
// ties to even. Magnitudes of 65520 and above become infinity; NaN stays NaN.
func FloatToHalf(f float64) uint16 {
	b := math.Float64bits(f)
	sign := uint16(b>>48) & 0x8000
	exp := int(b>>52) & 0x7ff
	mant := b & (1<<52 - 1)
	switch {
	case exp == 0x7ff && mant != 0:
		return sign | 0x7e00
	case exp == 0x7ff:
		return sign | 0x7c00
	}
	e := exp - 1023 + 15 // half's biased exponent
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		// Subnormal half (or zero): shift the mantissa, with its implicit
		// one, right so the value is m * 2^-24.
		if e < -10 {
			return sign // below half the smallest subnormal
		}
		m := mant | 1<<52
		shift := uint(52 - 10 + 1 - e)
		return sign | uint16(roundShift(m, shift))
	}
	// Normal: keep 10 mantissa bits; a carry out of the mantissa bumps the
	// exponent, and into infinity if need be, which is the right answer.
	m := roundShift(mant, 42)
	return sign | uint16(uint64(e)<<10+m)
}

// roundShift shifts m right by s bits, rounding to nearest, ties to even.
func roundShift(m uint64, s uint) uint64 {
	q := m >> s
	rem := m & (1<<s - 1)
	half := uint64(1) << (s - 1)
	if rem > half || rem == half && q&1 == 1 {
		q++
	}
	return q
}

// HalfToFloat converts an IEEE 754 half to float32, exactly.
func HalfToFloat(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp == 0 && mant == 0:
		return math.Float32frombits(sign)
	case exp == 0:
		// Subnormal: normalise into float32's wider exponent range.
		e := uint32(127 - 15 + 1)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		return math.Float32frombits(sign | e<<23 | (mant&0x3ff)<<13)
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}
