package tensorjson

import (
	"encoding/binary"
	"math"
	"math/bits"
)

// Shortest float32 formatting, written for this package after Giulietti's
// "The Schubfach way to render doubles" and specialised to float32, where
// 64-bit arithmetic suffices.
//
// A finite nonzero float32 is v = c·2^q (c < 2^24). Every real strictly
// inside the rounding interval around v, the points nearer v than its
// neighbours, reads back as v; so do the interval's ends when c is even
// (ties round to even). With k chosen so that the interval, scaled by
// 10^-k, is between 1 and 10 wide, the interval holds at least one integer
// and at most one multiple of ten. A multiple of ten inside is the unique
// shortest decimal; otherwise the shortest are the integers inside, all of
// one length, and the one nearest v is floor(v·10^-k) or the next integer.
//
// The scaled values are computed in units of a quarter, as floor(x·10^-k)
// for x = 4v, 4v ± (half gaps) in units of 2^(q-2), with one 64x64-bit
// product each against a 64-bit approximation of 10^-k from above. A
// result whose true value has a fractional part gets its lowest bit set
// (rounding to odd), which keeps every comparison with an even number
// exact. That the error of the approximation never changes the integer part
// and never hides or fakes a fractional part is checked, for every float32,
// by TestFloat32Exhaustive (OUTPOST_EXHAUSTIVE=1).

// maxFloat32Len bounds what putFloat32 writes: "-1.23456789e-38" is 15
// bytes; "-Infinity" with its quotes is 11.
const maxFloat32Len = 16

// The powers of ten the scaling needs: 10^j for j in [pow10Min, pow10Max].
const (
	pow10Min = -31
	pow10Max = 45
)

// floorLog10Pow2 is floor(q·log10(2)) for |q| <= 300 (TestFloorLogs).
func floorLog10Pow2(q int) int { return q * 1262611 >> 22 }

// floorLog10ThreeQuartersPow2 is floor(log10(3/4·2^q)) for |q| <= 300.
func floorLog10ThreeQuartersPow2(q int) int { return (q*1262611 - 524031) >> 22 }

// floorLog2Pow10 is floor(j·log2(10)) for |j| <= 100.
func floorLog2Pow10(j int) int { return j * 1741647 >> 19 }

// mulOdd returns floor(g·x / 2^64), with the lowest bit set when the value
// g·x approximates, which is below it by less than x, is not a whole number
// of 2^64: the low word then exceeds x, and x < 2^32.
func mulOdd(g, x uint64) uint32 {
	hi, lo := bits.Mul64(g, x)
	return uint32(hi) | uint32((lo>>32+math.MaxUint32)>>32)
}

// scaling is what putFloat32 needs for one binary exponent: the power of
// ten k, 10^-k from pow10Table, and the shift h that lines up the product.
type scaling struct {
	g uint64
	h uint8
	k int8
}

// scalings[be] serves the floats with biased exponent be whose rounding
// interval is symmetric, which is all but the powers of two.
var scalings = func() (t [255]scaling) {
	for be := range t {
		t[be] = scalingFor(max(be, 1)-150, false)
	}
	return t
}()

// scalingFor works out the scaling for v = c·2^q; asym marks an interval
// narrower below than above.
func scalingFor(q int, asym bool) scaling {
	k := floorLog10Pow2(q)
	if asym {
		k = floorLog10ThreeQuartersPow2(q)
	}
	return scaling{
		g: pow10Table[-k-pow10Min],
		h: uint8(q + floorLog2Pow10(-k) + 1),
		k: int8(k),
	}
}

// trimZeros removes d's trailing zeros, raising e to match.
func trimZeros(d uint32, e int) (uint32, int) {
	for d%10 == 0 {
		d /= 10
		e++
	}
	return d, e
}

// pow10u32 are the powers of ten that fit in a uint32.
var pow10u32 = [...]uint32{1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9}

// numDigits counts the decimal digits of d > 0.
func numDigits(d uint32) int {
	n := (bits.Len32(d) * 1233) >> 12 // floor(log10(2)·bitlen), one low at most
	if d >= pow10u32[n] {
		n++
	}
	return n
}

// digits8 returns the eight decimal digits of n < 10^8, leading zeros
// included, one per byte of a little-endian word: stored, the most
// significant digit comes first. It splits n into halves, quarters and
// digits in parallel lanes of one word, with no branches: each level takes
// the quotient q of every lane by a multiplication with a scaled inverse
// (exact for the lane's range, which TestDigits8 checks) and makes the word
// (v << w) - q·(m·2^w - 1), which leaves q in the lane's low half and the
// remainder v - q·m in its high half.
func digits8(n uint32) uint64 {
	hi := uint64(n / 10000)
	v := uint64(n)<<32 - hi*(10000<<32-1)       // two lanes below 10^4
	q := (v * 5243 >> 19) & 0x0000007f_0000007f // lane / 100
	v = v<<16 - q*(100<<16-1)                   // four lanes below 100
	q = (v * 103 >> 10) & 0x000f_000f_000f_000f // lane / 10
	return v<<8 - q*(10<<8-1)                   // eight lanes below 10
}

// putFloat32 writes the float32 whose bits are u into b, which has room for
// maxFloat32Len bytes, as strconv.AppendFloat(f, 'g', -1, 32) writes it:
// the shortest decimal that reads back as f (the nearest if several, the
// even one of two as near, where strconv differs for ±2^-12 alone), in
// exponent form when the leading digit's exponent is below -4 or at least 6.
// NaN and infinities become the strings "NaN", "Infinity" and "-Infinity".
// It returns the number of bytes written, and may scribble on the rest of b.
//
// The digits are formed left-aligned, as a leading digit and eight more
// (trailing zeros filling up), and stored eight at a time; the layouts then
// differ only in where they go.
func putFloat32(b []byte, u uint32) int {
	_ = b[maxFloat32Len-1]
	a := u &^ (1 << 31)
	if a-1 >= 0x7f800000-1 { // zero, infinities and NaN
		return putSpecial32(b, u)
	}
	b[0] = '-'
	w := int(u >> 31)

	// The shortest decimal d·10^e, nearest a, d free of trailing zeros
	// (d < 10^9). This is one function with the layout below: a call
	// between them costs a tenth of the time.
	be := a >> 23
	c := a & (1<<23 - 1)
	if be > 0 {
		c |= 1 << 23
	}
	sc := scalings[be]
	// Bounds in units of 2^(q-2): 4c ± 2, but the gap below a power of two
	// is half as wide (except at the smallest normal exponent).
	cb := c << 2
	cbr := cb + 2
	cbl := cb - 2
	if c == 1<<23 && be > 1 {
		cbl = cb - 1
		sc = scalingFor(int(be)-150, true)
	}
	vb := mulOdd(sc.g, uint64(cb)<<sc.h)
	vbl := mulOdd(sc.g, uint64(cbl)<<sc.h)
	vbr := mulOdd(sc.g, uint64(cbr)<<sc.h)
	k := int(sc.k)
	// Ends are inside only when c is even; move them in by one otherwise
	// (they are exact even numbers then, or odd where comparisons with
	// multiples of four come out the same either way).
	odd := c & 1
	vbl += odd
	vbr -= odd

	// The choices below are made with flags rather than branches: which
	// way they go is as good as random, and a mispredicted branch costs
	// more than working out both sides.
	s := vb >> 2
	q := s / 10 // vbl > 0, so q = 0 is never inside
	var below, above uint32
	if vbl <= q*40 { // 10q inside
		below = 1
	}
	if (q+1)*40 <= vbr { // 10(q+1) inside
		above = 1
	}
	// Otherwise s or s+1, whichever is inside, or the nearer (the even
	// one at a tie: vb is odd unless exact, so only an exact half ties).
	var nearUp, upIn, downOut uint32
	if vb+s&1 > s<<2+2 {
		nearUp = 1
	}
	if (s+1)<<2 <= vbr {
		upIn = 1
	}
	if vbl > s<<2 {
		downOut = 1
	}
	short := below | above
	mask := -short // all ones when a multiple of ten is inside
	d := (s+(nearUp&upIn|downOut))&^mask | (q+1-below)&mask
	d, e := trimZeros(d, k+int(short))

	// The layout.
	nd := numDigits(d)
	x := e + nd - 1 // exponent of the leading digit
	// d has at most nine digits, the first a 0 or 1 (d < 2^28); shifting
	// the other eight by the leading zeros aligns them left.
	top := uint32(0)
	if d >= 1e8 {
		top = 1
		d -= 1e8
	}
	v := digits8(d)
	z := uint(9 - nd)
	lead := '0' + byte(top) + byte(v>>(8*z-8)) // for z = 0 the shift is out of range, giving 0
	rest := v>>(8*z) | 0x30303030_30303030
	switch {
	case x < -4 || x >= 6: // d.ddde±xx
		b[w] = lead
		b[w+1] = '.'
		binary.LittleEndian.PutUint64(b[w+2:], rest)
		w += nd + 1
		if nd == 1 {
			w-- // no point
		}
		sign := byte('+')
		if x < 0 {
			sign, x = '-', -x
		}
		b[w] = 'e'
		b[w+1] = sign
		b[w+2] = digitPairs[2*x]
		b[w+3] = digitPairs[2*x+1]
		return w + 4
	case x < 0: // 0.000ddd
		binary.LittleEndian.PutUint64(b[w:], zeroPoint)
		w += 1 - x
		b[w] = lead
		binary.LittleEndian.PutUint64(b[w+1:], rest)
		return w + nd
	}
	b[w] = lead
	binary.LittleEndian.PutUint64(b[w+1:], rest)
	if x >= nd-1 { // ddd000: the alignment's zeros
		return w + x + 1
	}
	// ddd.ddd: the digits after the point stored again one place right.
	b[w+x+1] = '.'
	binary.LittleEndian.PutUint64(b[w+x+2:], rest>>(8*x))
	return w + nd + 1
}

// zeroPoint is "0.000000" as a little-endian word.
const zeroPoint = 0x30303030_30302e30

// putSpecial32 writes zero, infinities and NaN.
func putSpecial32(b []byte, u uint32) int {
	switch a := u &^ (1 << 31); {
	case a > 0x7f800000:
		return copy(b, `"NaN"`)
	case a == 0x7f800000 && u == a:
		return copy(b, `"Infinity"`)
	case a == 0x7f800000:
		return copy(b, `"-Infinity"`)
	case u == a:
		return copy(b, "0")
	}
	return copy(b, "-0")
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
