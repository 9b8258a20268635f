package registry_test

import (
	"errors"
	"math"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/registry/metricstest"
	"github.com/outpost-edge/outpost/internal/testpg"
	"github.com/outpost-edge/outpost/protocol"
)

// metricsStore opens a fresh store of each engine and returns it with the
// name metricstest writes to.
func metricsStores(t *testing.T, fn func(t *testing.T, r *registry.Registry, store string)) {
	t.Run("sqlite", func(t *testing.T) {
		dir := t.TempDir()
		r, err := registry.Open(dir, registry.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		fn(t, r, filepath.Join(dir, registry.StoreFile))
	})
	t.Run("postgres", func(t *testing.T) {
		url := testpg.Database(t)
		r, err := registry.Open(t.TempDir(), registry.Options{Store: url})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		fn(t, r, url)
	})
}

func hist(counts ...uint64) registry.LatencyHistogram {
	return registry.LatencyHistogram{BoundsMicros: []uint64{1000, 2000, 5000, 10000}, Counts: counts}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestLatencyQuantile(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    registry.LatencyHistogram
		q    float64
		want float64 // microseconds
	}{
		{"empty", hist(0, 0, 0, 0, 0), 0.5, 0},
		{"first bucket from 0", hist(10, 0, 0, 0, 0), 0.5, 500},
		{"middle of the second", hist(10, 10, 0, 0, 0), 0.75, 1500},
		{"rank on a bucket's top", hist(10, 10, 0, 0, 0), 0.5, 1000},
		{"skips empty buckets", hist(0, 0, 4, 0, 0), 0.25, 2750},
		{"p99 in the third", hist(50, 40, 10, 0, 0), 0.99, 2000 + 3000*0.9},
		{"overflow answers the last bound", hist(1, 0, 0, 0, 9), 0.9, 10000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.h.Quantile(tc.q); !near(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestLatencyMerge(t *testing.T) {
	a := hist(1, 2, 3, 4, 5)
	a.SumMicros = 10
	b := hist(5, 4, 3, 2, 1)
	b.SumMicros = 5
	a.Merge(&b)
	if want := []uint64{6, 6, 6, 6, 6}; !equal(a.Counts, want) || a.SumMicros != 15 {
		t.Errorf("same bounds: got %v sum %d, want %v sum 15", a.Counts, a.SumMicros, want)
	}
	// Other bounds: a keeps its own, each count of c in the bucket of a
	// that holds its upper bound.
	c := registry.LatencyHistogram{BoundsMicros: []uint64{1500, 5000}, Counts: []uint64{7, 8, 9}}
	a.Merge(&c)
	wantB := []uint64{1000, 2000, 5000, 10000}
	wantC := []uint64{6, 6 + 7, 6 + 8, 6, 6 + 9}
	if !equal(a.BoundsMicros, wantB) || !equal(a.Counts, wantC) {
		t.Errorf("other bounds: got %v %v, want %v %v", a.BoundsMicros, a.Counts, wantB, wantC)
	}
	var empty registry.LatencyHistogram
	empty.Merge(&c)
	if !equal(empty.Counts, c.Counts) || &empty.Counts[0] == &c.Counts[0] {
		t.Errorf("into empty: got %v, want a copy of %v", empty.Counts, c.Counts)
	}
}

func equal(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestMetrics seeds three hours of minute aggregates from two devices and
// two versions and checks every answer against the sums of what was
// written.
func TestMetrics(t *testing.T) {
	metricsStores(t, func(t *testing.T, r *registry.Registry, store string) {
		t0 := time.Date(2026, 11, 30, 3, 0, 0, 0, time.UTC)
		var rows metricstest.Rows
		type sum struct{ req, errs, bad uint64 }
		sums := map[string]*sum{} // by device/version, over the first hour
		for m := range 180 {
			for _, dev := range []string{"gw-1", "gw-2"} {
				for _, v := range []string{"3", "4"} {
					req := uint64(10 + m%7)
					if dev == "gw-2" {
						req *= 2
					}
					errs := uint64(m % 3)
					a := metricstest.Aggregate{Model: "face", Version: v, Device: dev,
						Start: t0.Add(time.Duration(m)*time.Minute + 5*time.Second), Requests: req, Errors: errs,
						ErrorsByCode: map[string]uint64{"bad_input": errs}, Latency: hist(req/2, req-req/2, 0, 0, 0)}
					if v == "4" {
						// Version 4 is slower: everything in (2 ms, 5 ms].
						a.Latency = hist(0, 0, req, 0, 0)
					}
					if m == 0 && dev == "gw-1" && v == "3" {
						a.ErrorsByCode = map[string]uint64{}
					}
					rows.Add(a)
					if m < 60 {
						k := dev + "/" + v
						if sums[k] == nil {
							sums[k] = &sum{}
						}
						sums[k].req += req
						sums[k].errs += errs
						sums[k].bad += a.ErrorsByCode["bad_input"]
					}
				}
			}
		}
		if err := rows.Write(store); err != nil {
			t.Fatal(err)
		}
		total := func(keys ...string) (s sum) {
			for _, k := range keys {
				s.req += sums[k].req
				s.errs += sums[k].errs
				s.bad += sums[k].bad
			}
			return s
		}
		hour := registry.MetricsQuery{Model: "face", Since: t0, Until: t0.Add(time.Hour)}
		for _, tc := range []struct {
			name     string
			q        registry.MetricsQuery
			want     sum
			versions []string
			points   int
			step     int64
		}{
			{"fleet, every version", hour, total("gw-1/3", "gw-1/4", "gw-2/3", "gw-2/4"), []string{"3", "4"}, 60, 60},
			{"fleet, version 4", with(hour, func(q *registry.MetricsQuery) { q.Version = "4" }), total("gw-1/4", "gw-2/4"), []string{"4"}, 60, 60},
			{"device gw-2", with(hour, func(q *registry.MetricsQuery) { q.Device = "gw-2" }), total("gw-2/3", "gw-2/4"), []string{"3", "4"}, 60, 60},
			{"device and version", with(hour, func(q *registry.MetricsQuery) { q.Device = "gw-1"; q.Version = "3" }), total("gw-1/3"), []string{"3"}, 60, 60},
			{"5 minute steps", with(hour, func(q *registry.MetricsQuery) { q.Step = 5 * time.Minute }), total("gw-1/3", "gw-1/4", "gw-2/3", "gw-2/4"), []string{"3", "4"}, 12, 300},
			{"hour buckets", with(hour, func(q *registry.MetricsQuery) { q.Step = time.Hour }), total("gw-1/3", "gw-1/4", "gw-2/3", "gw-2/4"), []string{"3", "4"}, 1, 3600},
			{"unknown device", with(hour, func(q *registry.MetricsQuery) { q.Device = "gw-9" }), sum{}, []string{}, 60, 60},
		} {
			t.Run(tc.name, func(t *testing.T) {
				m, err := r.Metrics(tc.q)
				if err != nil {
					t.Fatal(err)
				}
				if m.Totals.Requests != tc.want.req || m.Totals.Errors != tc.want.errs || m.Totals.ErrorsByCode["bad_input"] != tc.want.bad {
					t.Errorf("got requests %d errors %d %v, want %d %d bad_input %d", m.Totals.Requests, m.Totals.Errors,
						m.Totals.ErrorsByCode, tc.want.req, tc.want.errs, tc.want.bad)
				}
				if !slicesEqual(m.Versions, tc.versions) {
					t.Errorf("got versions %q, want %q", m.Versions, tc.versions)
				}
				if len(m.Series) != tc.points || m.StepSeconds != tc.step {
					t.Fatalf("got %d points of %d s, want %d of %d", len(m.Series), m.StepSeconds, tc.points, tc.step)
				}
				var req, errs uint64
				for i, p := range m.Series {
					if want := t0.Add(time.Duration(int64(i)*tc.step) * time.Second); !p.Start.Equal(want) {
						t.Fatalf("point %d starts at %s, want %s", i, p.Start, want)
					}
					req += p.Requests
					errs += p.Errors
					if want := float64(p.Requests) / float64(tc.step); !near(p.ThroughputRPS, want) {
						t.Errorf("point %d: got %v rps, want %v", i, p.ThroughputRPS, want)
					}
				}
				if req != tc.want.req || errs != tc.want.errs {
					t.Errorf("series sums to %d requests %d errors, want %d %d", req, errs, tc.want.req, tc.want.errs)
				}
				if want := float64(tc.want.req) / 3600; !near(m.Totals.ThroughputRPS, want) {
					t.Errorf("got %v rps, want %v", m.Totals.ThroughputRPS, want)
				}
			})
		}

		// Quantiles: version 3 alone has half its requests in (0, 1 ms] and
		// half in (1, 2 ms] at every minute; version 4 all in (2, 5 ms].
		m3, err := r.Metrics(with(hour, func(q *registry.MetricsQuery) { q.Version = "3"; q.Device = "gw-1"; q.Step = time.Hour }))
		if err != nil {
			t.Fatal(err)
		}
		if m3.Totals.P50MS < 0.9 || m3.Totals.P50MS > 1.1 || m3.Totals.P99MS < 1.9 || m3.Totals.P99MS > 2 {
			t.Errorf("version 3: got p50 %v ms p99 %v ms, want about 1 and just under 2", m3.Totals.P50MS, m3.Totals.P99MS)
		}
		m4, err := r.Metrics(with(hour, func(q *registry.MetricsQuery) { q.Version = "4" }))
		if err != nil {
			t.Fatal(err)
		}
		if !near(m4.Totals.P50MS, 3.5) || !near(m4.Totals.P90MS, 4.7) || !near(m4.Totals.P99MS, 4.97) {
			t.Errorf("version 4: got p50/p90/p99 %v/%v/%v ms, want 3.5/4.7/4.97", m4.Totals.P50MS, m4.Totals.P90MS, m4.Totals.P99MS)
		}
		if p := m4.Series[10]; !near(p.P50MS, 3.5) {
			t.Errorf("version 4 minute 10: got p50 %v ms, want 3.5", p.P50MS)
		}

		// A range that starts inside a bucket reads that bucket whole, and
		// reports the bucket's start.
		mid, err := r.Metrics(registry.MetricsQuery{Model: "face", Since: t0.Add(90 * time.Second), Until: t0.Add(3 * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		if !mid.Since.Equal(t0.Add(time.Minute)) || len(mid.Series) != 2 {
			t.Errorf("got since %s and %d points, want %s and 2", mid.Since, len(mid.Series), t0.Add(time.Minute))
		}

		// No traffic in the range: zeros, no versions, no error.
		quiet, err := r.Metrics(registry.MetricsQuery{Model: "face", Since: t0.Add(-time.Hour), Until: t0})
		if err != nil || quiet.Totals.Requests != 0 || len(quiet.Versions) != 0 {
			t.Errorf("before the traffic: got %+v, %v; want zeros", quiet, err)
		}
		if _, err := r.Metrics(registry.MetricsQuery{Model: "nope", Since: t0, Until: t0.Add(time.Hour)}); !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("unknown model: got %v, want ErrNotFound", err)
		}
		for _, q := range []registry.MetricsQuery{
			with(hour, func(q *registry.MetricsQuery) { q.Step = 90 * time.Second }),
			with(hour, func(q *registry.MetricsQuery) { q.Until = q.Since }),
			{Model: "face", Since: t0.Add(-365 * 24 * time.Hour), Until: t0, Step: time.Minute},
		} {
			if _, err := r.Metrics(q); !errors.Is(err, registry.ErrInvalidQuery) {
				t.Errorf("%+v: got %v, want ErrInvalidQuery", q, err)
			}
		}

		tot, err := r.ModelTotals()
		if err != nil {
			t.Fatal(err)
		}
		if len(tot) != 2 || tot[0].Version != "3" || tot[1].Version != "4" {
			t.Fatalf("got totals %+v, want face 3 and 4", tot)
		}
		var req uint64
		for _, v := range tot {
			req += v.Requests
			if v.Latency.Total() != v.Requests {
				t.Errorf("version %s: latency counts %d requests, want %d", v.Version, v.Latency.Total(), v.Requests)
			}
		}
		all, err := r.Metrics(registry.MetricsQuery{Model: "face", Since: t0, Until: t0.Add(3 * time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		if req != all.Totals.Requests {
			t.Errorf("totals: got %d requests, want the three hours' %d", req, all.Totals.Requests)
		}
	})
}

func with(q registry.MetricsQuery, fn func(*registry.MetricsQuery)) registry.MetricsQuery {
	fn(&q)
	return q
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestFleetCounts(t *testing.T) {
	metricsStores(t, func(t *testing.T, r *registry.Registry, store string) {
		for i, id := range []string{"gw-1", "gw-2", "gw-3"} {
			if _, err := r.UpdateDevice(id, func(d *registry.Device) {
				d.Online = i < 2
				d.Telemetry.Records = uint64(10 * (i + 1))
				d.Telemetry.Batches = 1
			}); err != nil {
				t.Fatal(err)
			}
		}
		for i, s := range []registry.RolloutState{registry.RolloutRunning, registry.RolloutCompleted, registry.RolloutCompleted} {
			if err := r.PutRollout(&registry.Rollout{ID: registry.NewID("ro-"), Model: "face", Version: int64(i + 1), State: s,
				Created: time.Now()}); err != nil {
				t.Fatal(err)
			}
		}
		fc, err := r.FleetCounts()
		if err != nil {
			t.Fatal(err)
		}
		if fc.Devices != 3 || fc.Online != 2 || fc.TelemetryRecords != 60 || fc.TelemetryBatches != 3 {
			t.Errorf("got %+v, want 3 devices, 2 online, 60 records in 3 batches", fc)
		}
		if fc.Rollouts[registry.RolloutRunning] != 1 || fc.Rollouts[registry.RolloutCompleted] != 2 {
			t.Errorf("got rollouts %v, want 1 running, 2 completed", fc.Rollouts)
		}
	})
}

func TestMergeFeatures(t *testing.T) {
	a := []protocol.FeatureCounts{{Name: "in.mean", Counts: []uint64{1, 2, 3}, NaNs: 1, Sum: 1.5, SumSq: 2}}
	b := []protocol.FeatureCounts{
		{Name: "out.max", Counts: []uint64{4}, Sum: 1},
		{Name: "in.mean", Counts: []uint64{1, 1, 1, 1}, NaNs: 2, Sum: 0.5, SumSq: 1}, // other bins: left out
		{Name: "in.mean", Counts: []uint64{1, 1, 1}, NaNs: 2, Sum: 0.5, SumSq: math.Inf(1)},
	}
	got := registry.MergeFeatures(a, b)
	want := []protocol.FeatureCounts{
		{Name: "in.mean", Counts: []uint64{2, 3, 4}, NaNs: 3, Sum: 2, SumSq: 2},
		{Name: "out.max", Counts: []uint64{4}, Sum: 1},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	// The added list is not aliased.
	got[1].Counts[0] = 99
	if b[0].Counts[0] != 4 {
		t.Error("MergeFeatures aliased the counts it added")
	}
}

// TestFeatures merges the feature histograms of seeded buckets, fleet-wide
// and for one device, minute and hour buckets.
func TestFeatures(t *testing.T) {
	metricsStores(t, func(t *testing.T, r *registry.Registry, store string) {
		t0 := time.Date(2026, 11, 30, 3, 0, 0, 0, time.UTC)
		var rows metricstest.Rows
		want := map[string][]uint64{"": make([]uint64, 3), "gw-1": make([]uint64, 3), "gw-2": make([]uint64, 3)}
		for m := range 10 {
			for d, dev := range []string{"gw-1", "gw-2"} {
				c := []uint64{uint64(m), uint64(d + 1), 5}
				rows.Add(metricstest.Aggregate{Model: "face", Version: "1", Device: dev, Start: t0.Add(time.Duration(m) * time.Minute),
					Requests: 10, Features: []protocol.FeatureCounts{{Name: "input.mean", Counts: c, Sum: 2, SumSq: 4}}})
				for i := range c {
					want[""][i] += c[i]
					want[dev][i] += c[i]
				}
			}
		}
		if err := rows.Write(store); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			device string
			bucket int64
		}{{"", registry.MinuteBucket}, {"gw-1", registry.MinuteBucket}, {"", registry.HourBucket}} {
			f, err := r.Features(registry.FeatureQuery{Model: "face", Version: "1", Device: tc.device, Since: t0, Until: t0.Add(time.Hour), Bucket: tc.bucket})
			if err != nil {
				t.Fatal(err)
			}
			n := uint64(20)
			if tc.device != "" {
				n = 10
			}
			if len(f.Features) != 1 || !reflect.DeepEqual(f.Features[0].Counts, want[tc.device]) || f.Requests != 10*n || f.Records != n || f.Features[0].Sum != float64(2*n) {
				t.Errorf("device %q bucket %d: got %+v, want counts %v over %d records", tc.device, tc.bucket, f, want[tc.device], n)
			}
		}
		// Every device's in one read: the hour, then the minutes 5 to 7.
		all, err := r.DeviceFeatures("face", "1", registry.MinuteBucket, t0, t0.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if len(all) != 2 {
			t.Errorf("devices: got %v, want gw-1 and gw-2", all)
		}
		for _, dev := range []string{"gw-1", "gw-2"} {
			if f := all[dev]; f == nil || len(f.Features) != 1 || !reflect.DeepEqual(f.Features[0].Counts, want[dev]) || f.Requests != 100 || f.Records != 10 {
				t.Errorf("device features of %s: got %+v, want counts %v over 10 records", dev, f, want[dev])
			}
		}
		part, err := r.DeviceFeatures("face", "1", registry.MinuteBucket, t0.Add(5*time.Minute), t0.Add(8*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if f := part["gw-2"]; len(part) != 2 || f == nil || f.Records != 3 || !reflect.DeepEqual(f.Features[0].Counts, []uint64{5 + 6 + 7, 6, 15}) {
			t.Errorf("minutes 5 to 7: got %+v", part)
		}
		if none, err := r.DeviceFeatures("face", "2", registry.MinuteBucket, t0, t0.Add(time.Hour)); err != nil || len(none) != 0 {
			t.Errorf("another version: got %v, %v", none, err)
		}
		if _, err := r.Features(registry.FeatureQuery{Model: "face", Version: "1", Bucket: 300}); !errors.Is(err, registry.ErrInvalidQuery) {
			t.Errorf("bucket 300: got %v, want ErrInvalidQuery", err)
		}
	})
}
