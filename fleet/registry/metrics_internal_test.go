package registry

import (
	"encoding/json"
	"reflect"
	"testing"
)

var latencySeeds = []string{
	`{"bounds_micros":[1000,2000,5000],"counts":[1,2,3,4],"sum_micros":12345}`,
	`{"counts":[0,7],"sum_micros":0,"bounds_micros":[250]}`,
	`{"bounds_micros":[],"counts":[],"sum_micros":0}`,
	`{"bounds_micros":null,"counts":null,"sum_micros":0}`,
	`{}`,
	`{ "bounds_micros": [1000], "counts": [1, 2], "sum_micros": 3 }`,
	`{"bounds_micros":[1000],"counts":[1,2],"sum_micros":3,"extra":1}`,
	`{"bounds_micros":[18446744073709551615],"counts":[1,2],"sum_micros":3}`,
	`{"bounds_micros":[18446744073709551616],"counts":[1,2],"sum_micros":3}`,
	`{"bounds_micros":[1000],"counts":[1],"sum_micros":3}`,
}

// FuzzDecodeLatency: the hand parser agrees with encoding/json on every
// input it accepts, and decodeLatency fails only where encoding/json does.
func FuzzDecodeLatency(f *testing.F) {
	for _, s := range latencySeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var want LatencyHistogram
		jerr := json.Unmarshal(b, &want)
		var fast LatencyHistogram
		if fastLatency(b, &fast) {
			if jerr != nil {
				t.Fatalf("%q: fast parser accepted what encoding/json refuses: %v", b, jerr)
			}
			if !reflect.DeepEqual(norm(fast), norm(want)) {
				t.Fatalf("%q: got %+v, want %+v", b, fast, want)
			}
		}
		var got LatencyHistogram
		if err := decodeLatency(b, &got); (err != nil) != (jerr != nil && len(b) > 0) {
			t.Fatalf("%q: got error %v, encoding/json %v", b, err, jerr)
		}
	})
}

// norm treats an empty slice and nil alike.
func norm(h LatencyHistogram) LatencyHistogram {
	if len(h.BoundsMicros) == 0 {
		h.BoundsMicros = nil
	}
	if len(h.Counts) == 0 {
		h.Counts = nil
	}
	return h
}

// BenchmarkDecodeLatency: the hand parser against encoding/json on the
// agent's default histogram.
func BenchmarkDecodeLatency(b *testing.B) {
	in := []byte(`{"bounds_micros":[250,500,1000,2500,5000,10000,25000,50000,100000,250000,500000,1000000,2500000,10000000],"counts":[0,3,17,40,22,9,5,2,1,0,0,0,0,0,0],"sum_micros":512345}`)
	b.Run("hand", func(b *testing.B) {
		for range b.N {
			var h LatencyHistogram
			if err := decodeLatency(in, &h); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		for range b.N {
			var h LatencyHistogram
			if err := json.Unmarshal(in, &h); err != nil {
				b.Fatal(err)
			}
		}
	})
}
