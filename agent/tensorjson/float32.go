package tensorjson

import (
	"math"
	"strconv"
)

// Fast float32 conversions. strconv is exact but general; these handle the
// common case (up to 19 significant digits, decimal exponents within ±22)
// with float64 arithmetic that is provably exact there, and defer to
// strconv for everything else, so results always equal strconv's values.

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

// appendFloat32 writes f as strconv.AppendFloat(dst, f, 'g', -1, 32) does:
// the shortest decimal that reads back as f, the nearest one if several.
//
// It scales f by a power of ten into [1e8, 1e9), where the nine-digit
// integers are decimals fine enough to pin down any float32, and scales the
// half-gaps to f's neighbours the same way: a decimal reads back as f when
// it lies strictly within them. It then rounds to ever fewer digits while
// the result stays inside. The float64 arithmetic errs by far less than
// 1e-6 in these units, so candidates that clear the bounds by that margin
// are certainly inside; a candidate closer to a bound than that (an exact
// tie, decided by round-half-even) and values outside about 1e-13..1e29 go
// to strconv.
func appendFloat32(dst []byte, f float32) []byte {
	bits := math.Float32bits(f)
	be := int(bits>>23) & 0xff
	if be == 0xff {
		return appendSpecial(dst, float64(f))
	}
	v := math.Abs(float64(f))
	if v < 1e-13 || v >= 1e29 {
		return strconv.AppendFloat(dst, float64(f), 'g', -1, 32)
	}
	// e10 is the decimal exponent of the leading digit, maybe one low:
	// floor((e2-1) * log10(2)) for v in [2^(e2-1), 2^e2).
	e10 := (be - 127) * 78913 >> 18
	x, ok := scaled(v, 8-e10)
	if ok && x >= 1e9-0.5 {
		e10++
		x, ok = scaled(v, 8-e10)
	}
	if !ok {
		return strconv.AppendFloat(dst, float64(f), 'g', -1, 32)
	}
	// Half-gaps to the neighbours, in x's units: ulp/2 above; below too,
	// except at a power of two, where the gap below is half as wide.
	hu, _ := scaled(math.Float64frombits(uint64(be-151+1023)<<52), 8-e10) // 2^(be-151), be >= 1 here
	hl := hu
	if bits&(1<<23-1) == 0 && be > 1 {
		hl = hu / 2
	}
	const margin = 1e-6
	m := uint64(0)
	exp := e10 - 8
	for j := 0; j <= 8; j++ {
		q := math.RoundToEven(x * inv10[j]) // an inexact inverse only matters at ties, which d below judges
		d := q*exact10[j] - x
		bound := hu
		if d < 0 {
			d, bound = -d, hl
		}
		if d > bound-margin {
			if d < bound+margin || j == 0 {
				return strconv.AppendFloat(dst, float64(f), 'g', -1, 32)
			}
			break
		}
		m, exp = uint64(q), e10-8+j
	}
	nd := 1
	for m%10 == 0 && m != 0 {
		m /= 10
		exp++
	}
	for nd < 10 && m >= pow10u[nd] {
		nd++
	}
	return formatG(dst, f < 0, m, nd, exp)
}

// inv10 are the inverses of the first exact powers of ten.
var inv10 = [...]float64{1, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8}

// pow10u are the powers of ten up to ten digits.
var pow10u = [...]uint64{1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9}

// scaled returns v * 10^s, with s within the exact powers.
func scaled(v float64, s int) (float64, bool) {
	switch {
	case s >= 0 && s <= 22:
		return v * exact10[s], true
	case s < 0 && s >= -22:
		return v / exact10[-s], true
	}
	return 0, false
}

// formatG writes m * 10^exp (m has nd digits, no trailing zeros) the way
// strconv's 'g' format with shortest precision does: exponent form when
// the leading digit's exponent is below -4 or at least 6 (hence "1e+06").
func formatG(dst []byte, neg bool, m uint64, nd, exp int) []byte {
	if neg {
		dst = append(dst, '-')
	}
	var buf [20]byte
	i := len(buf)
	for m >= 100 {
		q := m / 100
		r := (m - q*100) * 2
		i -= 2
		buf[i], buf[i+1] = digitPairs[r], digitPairs[r+1]
		m = q
	}
	if m >= 10 {
		i -= 2
		buf[i], buf[i+1] = digitPairs[2*m], digitPairs[2*m+1]
	} else {
		i--
		buf[i] = byte('0' + m)
	}
	ds := buf[i:]
	dp := nd + exp // digits before the decimal point
	if x := dp - 1; x < -4 || x >= 6 {
		dst = append(dst, ds[0])
		if nd > 1 {
			dst = append(dst, '.')
			dst = append(dst, ds[1:]...)
		}
		sign := byte('+')
		if x < 0 {
			sign, x = '-', -x
		}
		if x < 10 {
			return append(dst, 'e', sign, '0', byte('0'+x))
		}
		return strconv.AppendInt(append(dst, 'e', sign), int64(x), 10)
	}
	switch {
	case dp <= 0:
		dst = append(dst, '0', '.')
		for range -dp {
			dst = append(dst, '0')
		}
		return append(dst, ds...)
	case dp >= nd:
		dst = append(dst, ds...)
		for range dp - nd {
			dst = append(dst, '0')
		}
		return dst
	}
	dst = append(dst, ds[:dp]...)
	dst = append(dst, '.')
	return append(dst, ds[dp:]...)
}

const digitPairs = "00010203040506070809" +
	"10111213141516171819" +
	"20212223242526272829" +
	"30313233343536373839" +
	"40414243444546474849" +
	"50515253545556575859" +
	"60616263646566676869" +
	"70717273747576777879" +
	"80818283848586878889" +
	"90919293949596979899"
