package tensorjson

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/agent/tensor"
)

// checkFloat32 formats the float32 with bits u and returns what is wrong
// with the text, or "": it must be strconv's text exactly (which is the
// shortest, nearest decimal), or differ from it only at a tie (see
// tieToEven, which sets tie), and read back to the same bits.
func checkFloat32(u uint32, buf []byte) (msg string, tie bool) {
	f := math.Float32frombits(u)
	n := putFloat32(buf[:maxFloat32Len], u)
	got := buf[:n]
	if f != f || math.IsInf(float64(f), 0) {
		want := `"NaN"`
		switch {
		case math.IsInf(float64(f), 1):
			want = `"Infinity"`
		case math.IsInf(float64(f), -1):
			want = `"-Infinity"`
		}
		if string(got) != want {
			return fmt.Sprintf("%#08x: got %s, want %s", u, got, want), false
		}
		return "", false
	}
	var wantBuf [32]byte
	want := strconv.AppendFloat(wantBuf[:0], float64(f), 'g', -1, 32)
	if bytes.Equal(got, want) {
		return "", false
	}
	back, err := strconv.ParseFloat(string(got), 32)
	if err == nil && math.Float32bits(float32(back)) == u && tieToEven(f, got, want) {
		return "", true
	}
	return fmt.Sprintf("%#08x (%v): got %q (%d significant digits, reads back as %#08x, %v), strconv writes %q (%d)",
		u, f, got, sigDigits(got), math.Float32bits(float32(back)), err, want, sigDigits(want)), false
}

// tieToEven reports whether got and want are two decimals of the same
// length exactly as near f, got the one whose last digit is even. There
// strconv (Go 1.26's Dragonbox) rounds 2^-12 up to 0.00024414063 against
// its own rule of ties to even; we write 0.00024414062.
func tieToEven(f float32, got, want []byte) bool {
	m, _, _ := strings.Cut(string(got), "e")
	if sigDigits(got) != sigDigits(want) || (m[len(m)-1]-'0')%2 != 0 {
		return false
	}
	v := new(big.Rat).SetFloat64(float64(f))
	g, ok1 := new(big.Rat).SetString(string(got))
	w, ok2 := new(big.Rat).SetString(string(want))
	if !ok1 || !ok2 {
		return false
	}
	dg := new(big.Rat).Sub(g, v)
	dw := new(big.Rat).Sub(w, v)
	return dg.Abs(dg).Cmp(dw.Abs(dw)) == 0
}

// scaled is n, or a tenth of it under the race detector or -short.
func scaled(n int) int {
	if raceEnabled || testing.Short() {
		return n / 10
	}
	return n
}

// appendFloat32 appends f as putFloat32 writes it.
func appendFloat32(dst []byte, f float32) []byte {
	var buf [maxFloat32Len]byte
	n := putFloat32(buf[:], math.Float32bits(f))
	return append(dst, buf[:n]...)
}

// sigDigits counts the significant digits of a formatted number.
func sigDigits(s []byte) int {
	m, _, _ := strings.Cut(string(s), "e")
	m = strings.TrimLeft(strings.NewReplacer("-", "", ".", "").Replace(m), "0")
	return len(strings.TrimRight(m, "0"))
}

// boundaryFloats are the float32s where formatting goes wrong if anywhere:
// every power of two and its neighbours (the interval is lopsided there),
// the subnormals' ends, the largest and smallest values, small integers and
// those around 2^24, powers of ten and their neighbours, and decimals
// people write.
func boundaryFloats() []uint32 {
	var u []uint32
	add := func(f float32) {
		b := math.Float32bits(f)
		u = append(u, b, b-1, b+1, b|1<<31)
	}
	for be := range uint32(255) {
		add(math.Float32frombits(be << 23))
		add(math.Float32frombits(be<<23 | 1<<23 - 1))
	}
	for m := range uint32(1024) {
		u = append(u, m, 1<<23-1-m, 1<<23+m) // subnormals at both ends, the first normals
	}
	for i := range 20000 {
		add(float32(i))
		add(float32(1<<24 - 10000 + i))
	}
	for e := -46; e <= 39; e++ {
		f, _ := strconv.ParseFloat("1e"+strconv.Itoa(e), 32)
		add(float32(f))
		for _, m := range []string{"1.5", "2", "2.5", "3", "5", "9.5", "9.999999", "1.0000001", "1.2345678", "4.2949673"} {
			f, _ := strconv.ParseFloat(m+"e"+strconv.Itoa(e), 32)
			add(float32(f))
		}
	}
	for _, f := range []float32{0.1, 0.2, 0.3, 0.7, 1.1, 3.14159265, 2.7182818, 1e-45, 1.4e-45, 3.4028235e38,
		1.17549435e-38, 1.1754942e-38, 16777216, 16777217, 0.33333334, 65504, 123456, 1234567, 999999.94,
		1e6, 1e-5, 0.0001, 7.038531e-26, 9.999999e-14, 4.7019774e-38, 8.589973e9} {
		add(f)
	}
	for i := 1; i < 1<<20; i *= 3 {
		add(1 / float32(i))
	}
	return u
}

func TestFloat32Boundaries(t *testing.T) {
	buf := make([]byte, maxFloat32Len)
	bad := 0
	for _, u := range boundaryFloats() {
		if msg, _ := checkFloat32(u, buf); msg != "" {
			t.Error(msg)
			if bad++; bad > 20 {
				t.Fatal("too many failures")
			}
		}
	}
}

// TestFloat32Tie pins the one place where we knowingly differ from
// strconv: 2^-12 = 0.000244140625 lies exactly between two shortest
// candidates, and we round to even.
func TestFloat32Tie(t *testing.T) {
	u := math.Float32bits(0x1p-12)
	var b [maxFloat32Len]byte
	if got := string(b[:putFloat32(b[:], u)]); got != "0.00024414062" {
		t.Errorf("2^-12 is written %s, want 0.00024414062", got)
	}
	if msg, tie := checkFloat32(u, b[:]); msg != "" || !tie {
		t.Errorf("checkFloat32(2^-12) = %q, %v; want a tie", msg, tie)
	}
	if msg, tie := checkFloat32(math.Float32bits(199.26562), b[:]); msg != "" || tie {
		t.Errorf("checkFloat32(199.26562) = %q, %v; want a match", msg, tie)
	}
}

// TestFloat32Exponents checks many random mantissas for every exponent,
// both signs.
func TestFloat32Exponents(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	buf := make([]byte, maxFloat32Len)
	per := scaled(2000)
	for be := range uint32(256) {
		for range per {
			u := be<<23 | r.Uint32()&(1<<23-1) | r.Uint32()&(1<<31)
			if msg, _ := checkFloat32(u, buf); msg != "" {
				t.Fatal(msg)
			}
		}
	}
}

// TestFloat32Random checks four million float32 bit patterns drawn
// uniformly (a tenth under -race or -short): every exponent, sign and
// class, NaN payloads and subnormals included, in the proportions they
// have among all float32s.
func TestFloat32Random(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	buf := make([]byte, maxFloat32Len)
	bad := 0
	for range scaled(4_000_000) {
		if msg, _ := checkFloat32(r.Uint32(), buf); msg != "" {
			t.Error(msg)
			if bad++; bad > 20 {
				t.Fatal("too many failures")
			}
		}
	}
}

// TestFloat32Exhaustive checks every float32 bit pattern, on all CPUs, when
// OUTPOST_EXHAUSTIVE=1 (about 4 minutes on 2 cores).
func TestFloat32Exhaustive(t *testing.T) {
	if os.Getenv("OUTPOST_EXHAUSTIVE") != "1" {
		t.Skip("set OUTPOST_EXHAUSTIVE=1 to check all 2^32 float32s")
	}
	start := time.Now()
	const chunk = 1 << 20
	var next, failed atomic.Uint64
	var mu sync.Mutex // guards msgs and ties
	var msgs []string
	var ties []uint32
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			buf := make([]byte, maxFloat32Len)
			for {
				lo := next.Add(chunk) - chunk
				if lo >= 1<<32 {
					return
				}
				for u := lo; u < lo+chunk; u++ {
					msg, tie := checkFloat32(uint32(u), buf)
					if tie {
						mu.Lock()
						ties = append(ties, uint32(u))
						mu.Unlock()
					}
					if msg != "" && failed.Add(1) <= 20 {
						mu.Lock()
						msgs = append(msgs, msg)
						mu.Unlock()
					}
				}
			}
		})
	}
	wg.Wait()
	for _, m := range msgs {
		t.Error(m)
	}
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of 2^32 float32s formatted wrongly", n)
	}
	slices.Sort(ties)
	if want := []uint32{0x39800000, 0xb9800000}; !slices.Equal(ties, want) {
		t.Errorf("ties written differently from strconv: %#08x, want just ±2^-12 %#08x", ties, want)
	}
	t.Logf("checked 2^32 float32s on %d CPUs in %v", runtime.GOMAXPROCS(0), time.Since(start).Round(time.Second))
}

func FuzzFormatFloat32(f *testing.F) {
	for _, u := range boundaryFloats()[:2000] {
		f.Add(u)
	}
	f.Fuzz(func(t *testing.T, u uint32) {
		if msg, _ := checkFloat32(u, make([]byte, maxFloat32Len)); msg != "" {
			t.Fatal(msg)
		}
	})
}

// TestPow10Table recomputes the table with exact arithmetic.
func TestPow10Table(t *testing.T) {
	for j := pow10Min; j <= pow10Max; j++ {
		e := floorLog2Pow10(j) - 63
		// floor(10^j / 2^e) + 1, as num/den.
		num, den := big.NewInt(1), big.NewInt(1)
		ten := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(abs(j))), nil)
		if j >= 0 {
			num.Mul(num, ten)
		} else {
			den.Mul(den, ten)
		}
		if e >= 0 {
			den.Lsh(den, uint(e))
		} else {
			num.Lsh(num, uint(-e))
		}
		g := new(big.Int).Quo(num, den)
		g.Add(g, big.NewInt(1))
		if g.BitLen() != 64 {
			t.Errorf("10^%d: g has %d bits, want 64", j, g.BitLen())
		}
		if got := pow10Table[j-pow10Min]; got != g.Uint64() {
			t.Errorf("pow10Table for 10^%d = %#016x, want %#016x", j, got, g.Uint64())
		}
	}
}

func abs(x int) int { return max(x, -x) }

// TestFloorLogs checks the logarithm shortcuts against exact comparisons of
// powers over the exponents float32 uses and well beyond.
func TestFloorLogs(t *testing.T) {
	pow := func(b, e int) *big.Rat { // b^e
		r := new(big.Rat).SetInt(new(big.Int).Exp(big.NewInt(int64(b)), big.NewInt(int64(abs(e))), nil))
		if e < 0 {
			r.Inv(r)
		}
		return r
	}
	// floorIs reports whether 10^k <= x < 10^(k+1).
	floorIs := func(k int, x *big.Rat) bool {
		return pow(10, k).Cmp(x) <= 0 && x.Cmp(pow(10, k+1)) < 0
	}
	for q := -300; q <= 300; q++ {
		if k := floorLog10Pow2(q); !floorIs(k, pow(2, q)) {
			t.Errorf("floorLog10Pow2(%d) = %d", q, k)
		}
		x := new(big.Rat).Mul(big.NewRat(3, 4), pow(2, q))
		if k := floorLog10ThreeQuartersPow2(q); !floorIs(k, x) {
			t.Errorf("floorLog10ThreeQuartersPow2(%d) = %d", q, k)
		}
	}
	for j := -100; j <= 100; j++ {
		e := floorLog2Pow10(j)
		if x := pow(10, j); pow(2, e).Cmp(x) > 0 || x.Cmp(pow(2, e+1)) >= 0 {
			t.Errorf("floorLog2Pow10(%d) = %d", j, e)
		}
	}
}

// TestScalings checks what putFloat32 assumes of its table: the power of
// ten is in pow10Table, and the shifted bounds stay below 2^32 (so the
// product's error stays below the sticky threshold).
func TestScalings(t *testing.T) {
	for be := 1; be < 255; be++ {
		for _, asym := range []bool{false, true} {
			q := be - 150
			k := floorLog10Pow2(q)
			if asym {
				k = floorLog10ThreeQuartersPow2(q)
			}
			if -k < pow10Min || -k > pow10Max {
				t.Fatalf("exponent %d needs 10^%d, outside the table", be, -k)
			}
			sc := scalingFor(q, asym)
			if uint64(4<<24+2)<<sc.h >= 1<<32 {
				t.Errorf("exponent %d (asym %v): shift %d overflows 32 bits", be, asym, sc.h)
			}
			if !asym && scalings[be] != sc {
				t.Errorf("scalings[%d] = %+v, want %+v", be, scalings[be], sc)
			}
		}
	}
	if scalings[0] != scalings[1] {
		t.Errorf("subnormals scale as %+v, the first normals as %+v; both have q = -149", scalings[0], scalings[1])
	}
}

// TestDigits8 checks the lane arithmetic exhaustively and digits8 on a
// spread of inputs.
func TestDigits8(t *testing.T) {
	for x := range uint64(10000) {
		if x*5243>>19 != x/100 || x < 100 && x*103>>10 != x/10 {
			t.Fatalf("division by multiplication is wrong for %d", x)
		}
	}
	var b [8]byte
	for n := uint32(0); n < 1e8; n += 9973 {
		for _, v := range []uint32{n, 1e8 - 1 - n, n / 1000} {
			putUint64(b[:], digits8(v)|0x30303030_30303030)
			if want := fmt.Sprintf("%08d", v); string(b[:]) != want {
				t.Fatalf("digits8(%d) = %q, want %q", v, b[:], want)
			}
		}
	}
}

func putUint64(b []byte, v uint64) {
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
}

// TestEncodeFloats checks the FP32 and FP16 array writers against strconv,
// element by element: flat and nested, into nil, into a buffer too small
// (which must grow) and after existing bytes (which must stay).
func TestEncodeFloats(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	var f32 []float32
	for _, u := range boundaryFloats()[:5000] {
		f32 = append(f32, math.Float32frombits(u))
	}
	for range scaled(5000) {
		f32 = append(f32, r.Float32()*2-1, math.Float32frombits(r.Uint32()))
	}
	f32 = append(f32, float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)))
	var data []byte
	var want []string
	for _, f := range f32 {
		data = binary.LittleEndian.AppendUint32(data, math.Float32bits(f))
		want = append(want, wantFloat(float64(f)))
	}
	checkArrays(t, tensor.FP32, data, want)

	var halves []byte
	want = want[:0]
	for h := range 1 << 16 {
		halves = binary.LittleEndian.AppendUint16(halves, uint16(h))
		want = append(want, wantFloat(float64(HalfToFloat(uint16(h)))))
	}
	checkArrays(t, tensor.FP16, halves, want)
}

// wantFloat is the JSON Encoder promises for f (a float32 value).
func wantFloat(f float64) string {
	switch {
	case f != f:
		return `"NaN"`
	case math.IsInf(f, 1):
		return `"Infinity"`
	case math.IsInf(f, -1):
		return `"-Infinity"`
	case f == 0x1p-12 || f == -0x1p-12:
		return strings.Replace(strconv.FormatFloat(f, 'g', -1, 32), "63", "62", 1) // see TestFloat32Tie
	}
	return strconv.FormatFloat(f, 'g', -1, 32)
}

func checkArrays(t *testing.T, dt tensor.DataType, data []byte, want []string) {
	t.Helper()
	flat := "[" + strings.Join(want, ",") + "]"
	for _, dst := range [][]byte{nil, make([]byte, 0, 7), []byte("prefix:")} {
		prefix := string(dst)
		got := string(Encoder{}.AppendFlat(dst, dt, data, nil))
		if got != prefix+flat {
			t.Fatalf("%s AppendFlat after %q: got %d bytes, want %d; first difference at %d", dt, prefix, len(got), len(prefix+flat), firstDiff(got, prefix+flat))
		}
	}
	// Rows of four, nested as [n/4, 2, 2].
	n := len(want) / 4 * 4
	var nested strings.Builder
	nested.WriteByte('[')
	for i := 0; i < n; i += 4 {
		if i > 0 {
			nested.WriteByte(',')
		}
		fmt.Fprintf(&nested, "[[%s,%s],[%s,%s]]", want[i], want[i+1], want[i+2], want[i+3])
	}
	nested.WriteByte(']')
	size := len(data) / len(want)
	got := string(Encoder{}.Append(nil, dt, []int{n / 4, 2, 2}, data[:n*size], nil))
	if got != nested.String() {
		t.Fatalf("%s Append nested: first difference at %d", dt, firstDiff(got, nested.String()))
	}
}

func firstDiff(a, b string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestEncodeFloatsNoAllocs checks that encoding into a buffer with room
// allocates nothing.
func TestEncodeFloatsNoAllocs(t *testing.T) {
	if testing.CoverMode() != "" || raceEnabled {
		t.Skip("instrumentation allocates")
	}
	data := make([]byte, 4*896*16)
	for i := range 896 * 16 {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(float32(i)*0.0123))
	}
	shape := []int{1, 896, 16}
	out := Encoder{}.Append(nil, tensor.FP32, shape, data, nil)
	allocs := testing.AllocsPerRun(10, func() {
		out = Encoder{}.Append(out[:0], tensor.FP32, shape, data, nil)
		out = Encoder{}.AppendFlat(out[:0], tensor.FP32, data, nil)
	})
	if allocs != 0 {
		t.Errorf("encoding into a reused buffer: %v allocations, want 0", allocs)
	}
}
