package protocol

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/models/dsse"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/trust"
)

var t0 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

func seedKey(b byte) ed25519.PrivateKey {
	s := make([]byte, 32)
	s[0] = b
	return ed25519.NewKeyFromSeed(s)
}

// testRoot signs a root version v with one key per role in roles.
func testRoot(t testing.TB, v int64, roles map[string]ed25519.PrivateKey, signers ...ed25519.PrivateKey) []byte {
	t.Helper()
	d := trust.RootDoc{Version: v, Expires: t0.Add(365 * 24 * time.Hour), Keys: map[string]trust.Key{}, Roles: map[string]trust.Role{}}
	for role, k := range roles {
		id, key := trust.NewKey(k.Public().(ed25519.PublicKey))
		d.Keys[id] = key
		d.Roles[role] = trust.Role{KeyIDs: []string{id}, Threshold: 1}
	}
	b, err := trust.SignRoot(d, signers...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func testManifest(sha string, length int64) manifest.Manifest {
	return manifest.Manifest{Name: "face", Version: 2, SHA256: sha, Length: length, Runtime: "tflite",
		Inputs:  []manifest.Tensor{{Name: "i", DataType: "FP32", Shape: []int{1}}},
		Outputs: []manifest.Tensor{{Name: "o", DataType: "FP32", Shape: []int{1}}}}
}

func testRelease(t testing.TB, m manifest.Manifest, key ed25519.PrivateKey) []byte {
	t.Helper()
	b, err := trust.SignRelease(trust.Release{Serial: 7, Expires: t0.Add(20 * 24 * time.Hour), Model: m}, key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func installCommand(release []byte) *Command {
	sha := strings.Repeat("ab", 32)
	return &Command{
		ID: "c0ffee", Kind: CommandInstall, Fleet: "acme", Device: "gw-1", RolloutID: "r-1",
		Issued: t0, Expires: t0.Add(time.Hour),
		Install: &Install{Model: "face", Version: 2, Release: release,
			Artifact: Artifact{SHA256: sha, Length: 1000, ChunkSize: 300, Chunks: 4}},
	}
}

type fixture struct {
	rootKey, targets ed25519.PrivateKey
	anchor           *trust.Root
	roots            [][]byte
	release          []byte
}

func newFixture(t testing.TB) *fixture {
	f := &fixture{rootKey: seedKey(1), targets: seedKey(2)}
	r1 := testRoot(t, 1, map[string]ed25519.PrivateKey{trust.RoleRoot: f.rootKey, trust.RoleTargets: f.targets}, f.rootKey)
	var err error
	if f.anchor, err = trust.LoadRoot(r1); err != nil {
		t.Fatal(err)
	}
	f.roots = [][]byte{r1}
	f.release = testRelease(t, testManifest(strings.Repeat("ab", 32), 1000), f.targets)
	return f
}

func TestVerifyCommand(t *testing.T) {
	f := newFixture(t)
	opts := VerifyOptions{Fleet: "acme", Device: "gw-1", Now: t0.Add(time.Minute)}
	sign := func(c *Command, keys ...ed25519.PrivateKey) []byte {
		b, err := SignCommand(c, f.roots, keys...)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	mutate := func(fn func(c *Command)) *Command {
		c := installCommand(f.release)
		fn(c)
		return c
	}
	good := sign(installCommand(f.release), f.targets)

	// A payload edited after signing.
	var msg CommandMessage
	if err := json.Unmarshal(good, &msg); err != nil {
		t.Fatal(err)
	}
	env, err := dsse.Parse(msg.Envelope)
	if err != nil {
		t.Fatal(err)
	}
	env.Payload = []byte(strings.Replace(string(env.Payload), `"gw-1"`, `"gw-2"`, 1))
	msg.Envelope = env.Marshal()
	edited, _ := json.Marshal(msg)

	// A release for other bytes than the install names (mix and match).
	other := testRelease(t, testManifest(strings.Repeat("cd", 32), 1000), f.targets)
	// A release signed by the wrong key.
	forged := testRelease(t, testManifest(strings.Repeat("ab", 32), 1000), seedKey(9))

	tests := []struct {
		name string
		b    []byte
		opts VerifyOptions
		want error
	}{
		{"valid", good, opts, nil},
		{"unsigned", sign(installCommand(f.release)), opts, dsse.ErrThreshold},
		{"signed by an unknown key", sign(installCommand(f.release), seedKey(9)), opts, dsse.ErrThreshold},
		{"signed by the root key, not the command role", sign(installCommand(f.release), f.rootKey), opts, dsse.ErrThreshold},
		{"edited after signing", edited, opts, dsse.ErrThreshold},
		{"expired", good, VerifyOptions{Fleet: "acme", Device: "gw-1", Now: t0.Add(time.Hour)}, ErrCommandExpired},
		{"issued in the future", good, VerifyOptions{Fleet: "acme", Device: "gw-1", Now: t0.Add(-time.Hour)}, ErrCommandNotYetValid},
		{"for another device", good, VerifyOptions{Fleet: "acme", Device: "gw-2", Now: opts.Now}, ErrWrongTarget},
		{"for another fleet", good, VerifyOptions{Fleet: "other", Device: "gw-1", Now: opts.Now}, ErrWrongTarget},
		{"release of other bytes", sign(mutate(func(c *Command) { c.Install.Release = other }), f.targets), opts, ErrInvalidCommand},
		{"install of another version", sign(mutate(func(c *Command) { c.Install.Version = 3 }), f.targets), opts, ErrInvalidCommand},
		{"forged release", sign(mutate(func(c *Command) { c.Install.Release = forged }), f.targets), opts, dsse.ErrThreshold},
		{"garbage", []byte("{}"), opts, dsse.ErrMalformed},
		{"not json", []byte("\x00"), opts, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := VerifyCommand(tt.b, f.anchor, tt.opts)
			if (tt.want == nil) != (err == nil) || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if err == nil && (v.Release == nil || v.Release.Model.Name != "face" || v.Install.Version != 2 || v.Root.Doc.Version != 1) {
				t.Fatalf("got %+v, want face v2 with its release under root v1", v)
			}
		})
	}
	// A command that outlives its release: the release's expiry still holds.
	long := sign(mutate(func(c *Command) { c.Expires = t0.Add(MaxCommandLifetime) }), f.targets)
	if _, err := VerifyCommand(long, f.anchor, VerifyOptions{Fleet: "acme", Device: "gw-1", Now: t0.Add(21 * 24 * time.Hour)}); !errors.Is(err, trust.ErrExpired) {
		t.Fatalf("got %v, want trust.ErrExpired for an expired release", err)
	}
}

func TestVerifyCommandRotationAndCommandsRole(t *testing.T) {
	f := newFixture(t)
	opts := VerifyOptions{Fleet: "acme", Device: "gw-1", Now: t0.Add(time.Minute)}
	// Root v2 adds a commands role; commands must now be signed by it.
	cmdKey, newTargets := seedKey(3), seedKey(4)
	r2 := testRoot(t, 2, map[string]ed25519.PrivateKey{trust.RoleRoot: f.rootKey, trust.RoleTargets: newTargets, RoleCommands: cmdKey}, f.rootKey)
	roots := [][]byte{f.roots[0], r2}
	release := testRelease(t, testManifest(strings.Repeat("ab", 32), 1000), newTargets)

	b, err := SignCommand(installCommand(release), roots, cmdKey)
	if err != nil {
		t.Fatal(err)
	}
	v, err := VerifyCommand(b, f.anchor, opts)
	if err != nil {
		t.Fatalf("command under root v2's commands role: %v", err)
	}
	if v.Root.Doc.Version != 2 || CommandRole(&v.Root.Doc) != RoleCommands {
		t.Fatalf("got root v%d role %s, want v2 commands", v.Root.Doc.Version, CommandRole(&v.Root.Doc))
	}
	// The targets key no longer signs commands once a commands role exists.
	b, _ = SignCommand(installCommand(release), roots, newTargets)
	if _, err := VerifyCommand(b, f.anchor, opts); !errors.Is(err, dsse.ErrThreshold) {
		t.Fatalf("targets-signed command under a commands role: got %v, want dsse.ErrThreshold", err)
	}
	// Without the chain the device does not know the new keys.
	b, _ = SignCommand(installCommand(release), nil, cmdKey)
	if _, err := VerifyCommand(b, f.anchor, opts); !errors.Is(err, dsse.ErrThreshold) {
		t.Fatalf("no chain: got %v, want dsse.ErrThreshold", err)
	}
	// A forged v2 (not signed by v1's root key) is refused.
	bad := testRoot(t, 2, map[string]ed25519.PrivateKey{trust.RoleRoot: seedKey(8), trust.RoleTargets: seedKey(8)}, seedKey(8))
	b, _ = SignCommand(installCommand(release), [][]byte{f.roots[0], bad}, seedKey(8))
	if _, err := VerifyCommand(b, f.anchor, opts); !errors.Is(err, dsse.ErrThreshold) {
		t.Fatalf("forged root: got %v, want dsse.ErrThreshold", err)
	}
}

func TestCommandKinds(t *testing.T) {
	f := newFixture(t)
	opts := VerifyOptions{Fleet: "acme", Device: "gw-1", Now: t0.Add(time.Minute)}
	base := Command{ID: "c1", Fleet: "acme", Device: "gw-1", RolloutID: "r-1", Issued: t0, Expires: t0.Add(time.Hour)}
	rb := base
	rb.Kind, rb.Rollback = CommandRollback, &Rollback{Model: "face", Version: 2, Reason: "gate failed"}
	ab := base
	ab.Kind, ab.Abort = CommandAbort, &Abort{Reason: "superseded"}
	for _, c := range []Command{rb, ab} {
		b, err := SignCommand(&c, f.roots, f.targets)
		if err != nil {
			t.Fatal(err)
		}
		v, err := VerifyCommand(b, f.anchor, opts)
		if err != nil {
			t.Fatalf("%s: %v", c.Kind, err)
		}
		if v.Kind != c.Kind || v.Release != nil {
			t.Fatalf("got kind %s release %v, want %s and no release", v.Kind, v.Release, c.Kind)
		}
	}
}

func TestCommandValidate(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name string
		fn   func(c *Command)
	}{
		{"empty id", func(c *Command) { c.ID = "" }},
		{"id with a slash", func(c *Command) { c.ID = "a/b" }},
		{"no rollout", func(c *Command) { c.RolloutID = "" }},
		{"wildcard device", func(c *Command) { c.Device = "+" }},
		{"no expiry", func(c *Command) { c.Expires = time.Time{} }},
		{"lifetime too long", func(c *Command) { c.Expires = c.Issued.Add(MaxCommandLifetime + time.Second) }},
		{"two bodies", func(c *Command) { c.Abort = &Abort{} }},
		{"kind mismatch", func(c *Command) { c.Kind = CommandRollback }},
		{"bad model", func(c *Command) { c.Install.Model = "Face!" }},
		{"zero version", func(c *Command) { c.Install.Version = 0 }},
		{"chunk count wrong", func(c *Command) { c.Install.Artifact.Chunks = 3 }},
		{"chunk too big", func(c *Command) {
			c.Install.Artifact.ChunkSize = MaxChunkSize + 1
			c.Install.Artifact.Chunks = 1
		}},
		{"bad digest", func(c *Command) { c.Install.Artifact.SHA256 = strings.Repeat("AB", 32) }},
		{"no release", func(c *Command) { c.Install.Release = nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := installCommand(f.release)
			tt.fn(c)
			if _, err := SignCommand(c, f.roots, f.targets); !errors.Is(err, ErrInvalidCommand) {
				t.Fatalf("got %v, want ErrInvalidCommand", err)
			}
		})
	}
	if n := ChunkCount(1000, 300); n != 4 {
		t.Fatalf("ChunkCount(1000, 300) = %d, want 4", n)
	}
	if n := ChunkCount(900, 300); n != 3 {
		t.Fatalf("ChunkCount(900, 300) = %d, want 3", n)
	}
}

func FuzzVerifyCommand(f *testing.F) {
	fx := newFixture(f)
	good, err := SignCommand(installCommand(fx.release), fx.roots, fx.targets)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"envelope":{"payloadType":"x","payload":"eA==","signatures":[]}}`))
	f.Add([]byte(`{"roots":[{}],"envelope":null}`))
	opts := VerifyOptions{Fleet: "acme", Device: "gw-1", Now: t0.Add(time.Minute)}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 64<<10 {
			return // the size bound is tested elsewhere; keep executions cheap
		}
		v, err := VerifyCommand(b, fx.anchor, opts)
		if err == nil && (v.Device != "gw-1" || v.Validate() != nil) {
			t.Fatalf("accepted %+v", v)
		}
	})
}

func FuzzParseCommand(f *testing.F) {
	fx := newFixture(f)
	p, _ := json.Marshal(installCommand(fx.release))
	f.Add(p)
	f.Add([]byte(`{"id":"x","kind":"abort","abort":{}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseCommand(b)
		if err == nil && c.Validate() != nil {
			t.Fatalf("ParseCommand accepted an invalid command %+v", c)
		}
		if _, _, err := ParseCommandMessage(b); err == nil && len(b) > MaxCommandSize {
			t.Fatal("accepted an oversized message")
		}
	})
}
