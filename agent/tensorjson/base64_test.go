package tensorjson

import (
	"bytes"
	"encoding/base64"
	"math/rand/v2"
	"testing"
)

func TestAppendBase64(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	src := make([]byte, 300)
	for i := range src {
		src[i] = byte(r.Uint32())
	}
	// Every length around the eight-byte steps and the tail, with bytes
	// of every value, onto an empty, a used and a full prefix.
	for n := range len(src) {
		for _, prefix := range [][]byte{nil, []byte(`{"b64":"`), make([]byte, 5)} {
			want := base64.StdEncoding.AppendEncode(bytes.Clone(prefix), src[:n])
			got := AppendBase64(bytes.Clone(prefix), src[:n])
			if !bytes.Equal(got, want) {
				t.Fatalf("%d bytes after %q:\n got %q\nwant %q", n, prefix, got, want)
			}
		}
	}
	// Every 12-bit value, in turn: each table entry is used.
	all := make([]byte, 4096*3/2)
	for v := range 4096 {
		bit := v * 12
		for k := range 12 {
			if v>>(11-k)&1 == 1 {
				all[(bit+k)/8] |= 0x80 >> ((bit + k) % 8)
			}
		}
	}
	if got, want := AppendBase64(nil, all), base64.StdEncoding.AppendEncode(nil, all); !bytes.Equal(got, want) {
		t.Fatalf("every 12-bit value in turn:\n got %q\nwant %q", got, want)
	}
}

func FuzzAppendBase64(f *testing.F) {
	f.Add([]byte("hello, world"), []byte("x"))
	f.Fuzz(func(t *testing.T, src, prefix []byte) {
		want := base64.StdEncoding.AppendEncode(bytes.Clone(prefix), src)
		if got := AppendBase64(bytes.Clone(prefix), src); !bytes.Equal(got, want) {
			t.Fatalf("got %q, want %q", got, want)
		}
	})
}

// BenchmarkAppendBase64 encodes face detection's regressors (57,344 bytes)
// with the standard library and with AppendBase64, interleaved.
func BenchmarkAppendBase64(b *testing.B) {
	src := make([]byte, 4*896*16)
	for i := range src {
		src[i] = byte(i * 131)
	}
	dst := make([]byte, 0, base64.StdEncoding.EncodedLen(len(src)))
	b.Run("stdlib", func(b *testing.B) {
		b.SetBytes(int64(len(src)))
		for b.Loop() {
			dst = base64.StdEncoding.AppendEncode(dst[:0], src)
		}
	})
	b.Run("pairs", func(b *testing.B) {
		b.SetBytes(int64(len(src)))
		for b.Loop() {
			dst = AppendBase64(dst[:0], src)
		}
	})
}
