package dsse

import (
	"crypto/ed25519"
	"errors"
	"testing"
)

func key(t testing.TB, seed byte) ed25519.PrivateKey {
	t.Helper()
	s := make([]byte, ed25519.SeedSize)
	s[0] = seed
	return ed25519.NewKeyFromSeed(s)
}

func pubs(keys ...ed25519.PrivateKey) map[string]ed25519.PublicKey {
	m := map[string]ed25519.PublicKey{}
	for _, k := range keys {
		p := k.Public().(ed25519.PublicKey)
		m[KeyID(p)] = p
	}
	return m
}

func TestPAE(t *testing.T) {
	// The example from the DSSE specification.
	got := string(PAE("http://example.com/HelloWorld", []byte("hello world")))
	want := "DSSEv1 29 http://example.com/HelloWorld 11 hello world"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestVerify(t *testing.T) {
	a, b, c := key(t, 1), key(t, 2), key(t, 3)
	const typ = "application/vnd.test"
	payload := []byte(`{"x":1}`)
	tampered := Sign(typ, payload, a, b)
	tampered.Payload = []byte(`{"x":2}`)
	dup := Sign(typ, payload, a)
	dup.Signatures = append(dup.Signatures, dup.Signatures[0])
	tests := []struct {
		name      string
		env       *Envelope
		typ       string
		trusted   map[string]ed25519.PublicKey
		threshold int
		want      error
	}{
		{"one of one", Sign(typ, payload, a), typ, pubs(a), 1, nil},
		{"two of three", Sign(typ, payload, a, c), typ, pubs(a, b, c), 2, nil},
		{"unsigned", Sign(typ, payload), typ, pubs(a), 1, ErrThreshold},
		{"untrusted key", Sign(typ, payload, c), typ, pubs(a, b), 1, ErrThreshold},
		{"below threshold", Sign(typ, payload, a), typ, pubs(a, b), 2, ErrThreshold},
		{"same key twice", dup, typ, pubs(a, b), 2, ErrThreshold},
		{"payload edited after signing", tampered, typ, pubs(a, b), 1, ErrThreshold},
		{"other payload type", Sign("other", payload, a), typ, pubs(a), 1, ErrPayloadType},
		{"zero threshold", Sign(typ, payload), typ, pubs(a), 0, ErrThreshold},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, err := Parse(tt.env.Marshal())
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			err = Verify(env, tt.typ, tt.trusted, tt.threshold)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

var parseSeeds = []string{
	`{"payloadType":"t","payload":"eA==","signatures":[]}`,
	`{"payloadType":"t","payload":"eA==","signatures":[{"keyid":"k","sig":"AA=="}]}`,
	`{"payloadType":"t","payload":"eA==","signatures":[],"x":1}`,
	`{"payloadType":"","payload":""}`,
	`{"payloadType":"t","payload":"eA=="} {}`,
	`[]`,
}

func TestParseRefuses(t *testing.T) {
	for _, s := range parseSeeds[2:] {
		if _, err := Parse([]byte(s)); !errors.Is(err, ErrMalformed) {
			t.Errorf("Parse(%s): got %v, want ErrMalformed", s, err)
		}
	}
}

func FuzzParseVerify(f *testing.F) {
	k := key(f, 1)
	f.Add(Sign("t", []byte("x"), k).Marshal())
	for _, s := range parseSeeds {
		f.Add([]byte(s))
	}
	trusted := pubs(k)
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Parse(b)
		if err != nil {
			return
		}
		if Verify(e, "t", trusted, 1) == nil && string(e.Payload) != "x" {
			t.Fatalf("forged payload %q verified", e.Payload)
		}
	})
}
