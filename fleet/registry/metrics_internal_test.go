package registry

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"

	"github.com/outpost-edge/outpost/protocol"
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

var featureSeeds = []string{
	`[{"Name":"input.mean.0","Counts":[0,1,2],"NaNs":0,"Sum":12.5,"SumSq":40}]`,
	`[{"Name":"a","Counts":null,"NaNs":3,"Sum":-0,"SumSq":1e-7},{"Name":"b","Counts":[],"NaNs":0,"Sum":1E+300,"SumSq":0.5}]`,
	`[]`,
	`null`,
	`[{"Name":"a","Counts":[1],"NaNs":0,"Sum":1.,"SumSq":0}]`,
	`[{"Name":"a","Counts":[1],"NaNs":0,"Sum":.5,"SumSq":0}]`,
	`[{"Name":"a","Counts":[1],"NaNs":0,"Sum":1e400,"SumSq":0}]`,
	`[{"Name":"a\"b","Counts":[1],"NaNs":0,"Sum":1,"SumSq":0}]`,
	`[{"name":"a","counts":[1],"nans":0,"sum":1,"sumsq":0}]`,
	`[{"Name":"a","Counts":[1],"NaNs":0,"Sum":01,"SumSq":0}]`,
	`[{"Name":"a","Counts":[1],"NaNs":0,"Sum":1,"SumSq":0}] `,
	`[{"Name":"a","Counts":[1],"NaNs":0,"Sum":1,"SumSq":0},]`,
}

// FuzzDecodeFeatures: the hand parser agrees with encoding/json on every
// input it accepts, and decodeFeatures fails only where encoding/json does.
func FuzzDecodeFeatures(f *testing.F) {
	for _, s := range featureSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var want []protocol.FeatureCounts
		jerr := json.Unmarshal(b, &want)
		if fast, ok := fastFeatures(b); ok {
			if jerr != nil {
				t.Fatalf("%q: fast parser accepted what encoding/json refuses: %v", b, jerr)
			}
			if !reflect.DeepEqual(fast, want) {
				t.Fatalf("%q: got %+v, want %+v", b, fast, want)
			}
		}
		var got []protocol.FeatureCounts
		if err := decodeFeatures(b, &got); (err != nil) != (jerr != nil && len(b) > 0) {
			t.Fatalf("%q: got error %v, encoding/json %v", b, err, jerr)
		}
	})
}

// TestFeaturesJSONRoundTrip: what ingest writes, the hand parser reads back
// (not encoding/json: the fast path is the one taken).
func TestFeaturesJSONRoundTrip(t *testing.T) {
	fs := []protocol.FeatureCounts{
		{Name: "input.mean.0", Counts: []uint64{0, 1, 18446744073709551615}, NaNs: 2, Sum: 12.5, SumSq: -3.25e-9},
		{Name: "output.max", Counts: nil, Sum: 1e300, SumSq: 7},
		{Name: "x", Counts: []uint64{}},
	}
	got, ok := fastFeatures([]byte(featuresJSON(fs)))
	if !ok {
		t.Fatalf("the hand parser refused %s", featuresJSON(fs))
	}
	if !reflect.DeepEqual(got, fs) {
		t.Fatalf("got %+v, want %+v", got, fs)
	}
}

// BenchmarkDecodeFeatures: the hand parser against encoding/json on six
// features of 21 bins (BenchmarkAggregateIngest's).
func BenchmarkDecodeFeatures(b *testing.B) {
	fs := make([]protocol.FeatureCounts, 6)
	for i := range fs {
		fs[i] = protocol.FeatureCounts{Name: fmt.Sprintf("input.mean.%d", i), Counts: make([]uint64, 21), Sum: 1234.5678, SumSq: 98765.4321}
		for j := range fs[i].Counts {
			fs[i].Counts[j] = uint64(1000 * (j + i))
		}
	}
	in := []byte(featuresJSON(fs))
	for _, leg := range []struct {
		name string
		fn   func([]byte, *[]protocol.FeatureCounts) error
	}{{"hand", decodeFeatures}, {"encoding-json", func(b []byte, v *[]protocol.FeatureCounts) error { return json.Unmarshal(b, v) }}} {
		b.Run(leg.name, func(b *testing.B) {
			for range b.N {
				var out []protocol.FeatureCounts
				if err := leg.fn(in, &out); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
