package trust

import (
	"crypto/ed25519"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/models/dsse"
	"github.com/outpost-edge/outpost/models/manifest"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func seedKey(b byte) ed25519.PrivateKey {
	s := make([]byte, 32)
	s[0] = b
	return ed25519.NewKeyFromSeed(s)
}

func rootDoc(v int64, root, targets ed25519.PrivateKey) RootDoc {
	d := RootDoc{Version: v, Expires: t0.Add(time.Hour), Keys: map[string]Key{}, Roles: map[string]Role{}}
	for role, k := range map[string]ed25519.PrivateKey{RoleRoot: root, RoleTargets: targets} {
		id, key := NewKey(k.Public().(ed25519.PublicKey))
		d.Keys[id] = key
		d.Roles[role] = Role{KeyIDs: []string{id}, Threshold: 1}
	}
	return d
}

func model() manifest.Manifest {
	return manifest.Manifest{Name: "m", Version: 1, SHA256: strings.Repeat("0", 64), Length: 1, Runtime: "tflite",
		Inputs:  []manifest.Tensor{{Name: "i", DataType: "FP32", Shape: []int{1}}},
		Outputs: []manifest.Tensor{{Name: "o", DataType: "FP32", Shape: []int{1}}}}
}

func TestLoadRootRefuses(t *testing.T) {
	r, tg := seedKey(1), seedKey(2)
	good, err := SignRoot(rootDoc(1, r, tg), r)
	if err != nil {
		t.Fatal(err)
	}
	bySomeoneElse, _ := SignRoot(rootDoc(1, r, tg), seedKey(3))
	release, _ := SignRelease(Release{Serial: 1, Expires: t0.Add(time.Hour), Model: model()}, r)
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"valid", good, nil},
		{"signed by a key it does not list", bySomeoneElse, dsse.ErrThreshold},
		{"a release is not a root", release, dsse.ErrPayloadType},
		{"garbage", []byte("{"), dsse.ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadRoot(tt.b)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestSignRootRefusesBadThreshold(t *testing.T) {
	d := rootDoc(1, seedKey(1), seedKey(2))
	d.Roles[RoleTargets] = Role{KeyIDs: d.Roles[RoleTargets].KeyIDs, Threshold: 2}
	if _, err := SignRoot(d, seedKey(1)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("got %v, want ErrInvalid", err)
	}
}

// FuzzVerifyRelease feeds arbitrary release envelopes to a fixed root: none
// may verify unless signed by the targets key.
func FuzzVerifyRelease(f *testing.F) {
	r, tg := seedKey(1), seedKey(2)
	rb, err := SignRoot(rootDoc(1, r, tg), r)
	if err != nil {
		f.Fatal(err)
	}
	root, err := LoadRoot(rb)
	if err != nil {
		f.Fatal(err)
	}
	good, _ := SignRelease(Release{Serial: 1, Expires: t0.Add(time.Hour), Model: model()}, tg)
	bad, _ := SignRelease(Release{Serial: 1, Expires: t0.Add(time.Hour), Model: model()}, r)
	f.Add(good)
	f.Add(bad)
	f.Add(rb)
	f.Fuzz(func(t *testing.T, b []byte) {
		rel, err := root.VerifyRelease(b, t0)
		if err != nil {
			return
		}
		env, _ := dsse.Parse(b)
		if dsse.Verify(env, ReleaseType, map[string]ed25519.PublicKey{dsse.KeyID(tg.Public().(ed25519.PublicKey)): tg.Public().(ed25519.PublicKey)}, 1) != nil {
			t.Fatalf("release %+v verified without the targets key", rel)
		}
	})
}

// FuzzLoadRoot checks that the root parser never panics and never accepts an
// inconsistent root.
func FuzzLoadRoot(f *testing.F) {
	r, tg := seedKey(1), seedKey(2)
	rb, _ := SignRoot(rootDoc(1, r, tg), r)
	f.Add(rb)
	f.Add([]byte(`{"payloadType":"application/vnd.outpost.root+json","payload":"e30=","signatures":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		root, err := LoadRoot(b)
		if err != nil {
			return
		}
		if err := root.Doc.validate(); err != nil {
			t.Fatalf("accepted invalid root: %v", err)
		}
	})
}
