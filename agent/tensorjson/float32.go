package tensorjson

import "math"

// Fast float32 parsing. strconv is exact but general; this handles the
// common case (up to 19 significant digits, decimal exponents within ±22)
// with float64 arithmetic that is provably exact there, and defers to
// strconv for everything else, so results always equal strconv's values.
// Formatting is in ftoa.go.

// exact10 holds the powers of ten a float64 represents exactly.
var exact10 = [...]float64{1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10,
	1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22}

// scale returns m * 10^exp correctly rounded to float64, which holds when
// m < 2^53 and |exp| <= 22: both operands are exact, and IEEE division and
// multiplication round once.
func scale(m uint64, exp int) float64 {
	if exp >= 0 {
		return float64(m) * exact10[exp]
	}
	return float64(m) / exact10[-exp]
}

// toFloat32 returns the float32 nearest m * 10^exp (m < 2^53, |exp| <= 22),
// rounding half to even. It rounds the correctly rounded float64 x to
// float32; rounding twice is wrong only when x lands exactly halfway between
// two float32s while the decimal does not, so a halfway x is accepted only
// when it is exact. Subnormal float32 results (fewer mantissa bits) report
// !ok, for strconv to handle.
func toFloat32(m uint64, exp int) (float32, bool) {
	x := scale(m, exp)
	if x < 0x1p-126 {
		return 0, false
	}
	if math.Float64bits(x)&(1<<29-1) == 1<<28 {
		exact := x < 1<<53
		if exp < 0 {
			exact = math.FMA(x, exact10[-exp], -float64(m)) == 0
		}
		if !exact {
			return 0, false
		}
	}
	return float32(x), true
}

// parseFloat32 converts a number already checked against JSON's grammar.
// It returns !ok when the value needs strconv: more than 19 significant
// digits, a large exponent, or a value out of float32 range.
func parseFloat32(num []byte) (float32, bool) {
	i := 0
	neg := num[0] == '-'
	if neg {
		i = 1
	}
	var m uint64
	nd, exp := 0, 0
	for ; i < len(num) && num[i] >= '0' && num[i] <= '9'; i++ {
		if nd == 19 {
			return 0, false
		}
		m = m*10 + uint64(num[i]-'0')
		if m != 0 {
			nd++
		}
	}
	if i < len(num) && num[i] == '.' {
		for i++; i < len(num) && num[i] >= '0' && num[i] <= '9'; i++ {
			if nd == 19 {
				return 0, false
			}
			m = m*10 + uint64(num[i]-'0')
			if m != 0 {
				nd++
			}
			exp--
		}
	}
	if i < len(num) {
		i++ // 'e' or 'E'
		eneg := false
		if num[i] == '+' || num[i] == '-' {
			eneg = num[i] == '-'
			i++
		}
		e := 0
		for ; i < len(num); i++ {
			if e > 1000 {
				return 0, false
			}
			e = e*10 + int(num[i]-'0')
		}
		if eneg {
			e = -e
		}
		exp += e
	}
	if m == 0 {
		if neg {
			return float32(math.Copysign(0, -1)), true
		}
		return 0, true
	}
	if m > 1<<53 || exp < -22 || exp > 22 {
		return 0, false
	}
	f, ok := toFloat32(m, exp)
	if neg {
		f = -f
	}
	return f, ok
}
