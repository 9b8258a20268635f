package routing

import (
	"context"
	"fmt"
	"strings"
	"testing"
)

// TestPoint: a key's point is stable, in [0, 100), depends on the model,
// and keys spread evenly (each tenth of the range gets its share within a
// bound that 2,000 uniform keys break once in far more than a million runs).
func TestPoint(t *testing.T) {
	if Point("k", "face") != Point("k", "face") {
		t.Fatal("the same key and model moved")
	}
	if Point("k", "face") == Point("k", "hand") {
		t.Error("a key falls at the same point for two models")
	}
	var deciles [10]int
	const n = 2000
	for i := range n {
		p := Point(fmt.Sprintf("client-%d", i), "face")
		if p < 0 || p >= 100 {
			t.Fatalf("point %v out of [0, 100)", p)
		}
		deciles[int(p/10)]++
	}
	// mean 200, sd sqrt(2000*.1*.9) = 13.4: 6 sd.
	for d, got := range deciles {
		if got < 200-80 || got > 200+80 {
			t.Errorf("decile %d holds %d of %d keys, want 200±80", d, got, n)
		}
	}
}

// TestCanary: with a key the arm is the key's point against the share;
// without one the share is near the percent.
func TestCanary(t *testing.T) {
	ctx := context.Background()
	k := WithKey(ctx, "gw-7")
	p := Point("gw-7", "face")
	if Canary(k, "face", p+0.001) != true || Canary(k, "face", p) != false {
		t.Errorf("key at %v: canary above it %v, at it %v", p, Canary(k, "face", p+0.001), Canary(k, "face", p))
	}
	if got, ok := Key(WithKey(ctx, "")); ok {
		t.Errorf("an empty key was kept: %q", got)
	}
	long := strings.Repeat("x", 1000)
	if got, _ := Key(WithKey(ctx, long)); len(got) != MaxKeyLen {
		t.Errorf("a long key kept %d bytes, want %d", len(got), MaxKeyLen)
	}
	const n = 4000
	canary, sampled := 0, 0
	for range n {
		if Canary(ctx, "face", 10) {
			canary++
		}
		if Sample(10) {
			sampled++
		}
	}
	// mean 400, sd sqrt(4000*.1*.9) = 19: 6 sd.
	for what, got := range map[string]int{"canary": canary, "sample": sampled} {
		if got < 400-114 || got > 400+114 {
			t.Errorf("%s took %d of %d at 10%%, want 400±114", what, got, n)
		}
	}
}
