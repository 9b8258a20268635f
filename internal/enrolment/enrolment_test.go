package enrolment

import (
	"bytes"
	"encoding/base64"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/keyring"
)

func validBundle(t testing.TB) Bundle {
	t.Helper()
	k, err := keyring.Init(filepath.Join(t.TempDir(), "keys"), keyring.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return Bundle{
		Created:  time.Date(2026, 11, 30, 1, 0, 0, 0, time.UTC),
		Fleet:    Fleet{Broker: "tcp://fleet.example:1883", Name: "acme", Device: "gw-1", Username: "gw-1", Labels: map[string]string{"site": "north"}},
		Root:     k.Root().Raw,
		Password: "s3cret-Pw_0",
	}
}

func TestRoundTrip(t *testing.T) {
	b := validBundle(t)
	data, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Root, b.Root) || got.Password != b.Password || got.Fleet.Broker != b.Fleet.Broker ||
		got.Fleet.Labels["site"] != "north" || got.Format != Version || !got.Created.Equal(b.Created) {
		t.Fatalf("got %+v, want %+v", got, b)
	}
}

// badBundles are documents Parse must refuse, with the error each gets.
func badBundles(t testing.TB) []struct {
	name string
	data []byte
	want error
} {
	b := validBundle(t)
	good, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	replace := func(old, new string) []byte {
		if !bytes.Contains(good, []byte(old)) {
			t.Fatalf("%q is not in the bundle", old)
		}
		return bytes.Replace(good, []byte(old), []byte(new), 1)
	}
	badRoot := Bundle{Created: b.Created, Fleet: b.Fleet, Root: append([]byte(nil), b.Root...), Password: b.Password, Format: Version}
	badRoot.Root[len(badRoot.Root)/2] ^= 0x20
	return []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"blank", []byte(" \n"), ErrTruncated},
		{"truncated", good[:len(good)/2], ErrTruncated},
		{"truncated by one byte", good[:len(good)-2], ErrTruncated},
		{"garbage", []byte("\x1f\x8b\x08\x00 not json"), ErrNotBundle},
		{"a tar.gz name", []byte("gw-1.tar.gz"), ErrNotBundle},
		{"another JSON document", []byte(`{"payloadType":"x","payload":"","signatures":[]}`), ErrNotBundle},
		{"a JSON array", []byte(`[1,2]`), ErrNotBundle},
		{"version 2", replace(`"outpost_enrolment": 1`, `"outpost_enrolment": 2`), ErrVersion},
		{"version 0", replace(`"outpost_enrolment": 1`, `"outpost_enrolment": 0`), ErrVersion},
		{"version as a string", replace(`"outpost_enrolment": 1`, `"outpost_enrolment": "1"`), ErrInvalid},
		{"trailing data", append(append([]byte(nil), good...), `{}`...), ErrNotBundle},
		{"unknown field", replace(`"password"`, `"passwd": "x", "password"`), ErrInvalid},
		{"no password", replace(`"password": "s3cret-Pw_0"`, `"password": ""`), ErrInvalid},
		{"password with a newline", replace(`"password": "s3cret-Pw_0"`, `"password": "a\nb"`), ErrInvalid},
		{"http broker", replace(`tcp://fleet.example:1883`, `http://fleet.example:1883`), ErrInvalid},
		{"broker without host", replace(`tcp://fleet.example:1883`, `tcp://`), ErrInvalid},
		{"device with a slash", replace(`"device": "gw-1"`, `"device": "gw/1"`), ErrInvalid},
		{"fleet wildcard", replace(`"name": "acme"`, `"name": "#"`), ErrInvalid},
		{"bad label", replace(`"site": "north"`, `"site": "a,b"`), ErrInvalid},
		{"root not base64", replace(`"root": "`, `"root": "!!`), ErrInvalid},
		{"no root", replace(`"root": "`+base64.StdEncoding.EncodeToString(b.Root)+`"`, `"root": ""`), ErrInvalid},
		{"root with a forged byte", mustJSON(t, badRoot), ErrInvalid},
		{"too big", append([]byte("{"), bytes.Repeat([]byte(" "), MaxSize)...), ErrNotBundle},
	}
}

func mustJSON(t testing.TB, b Bundle) []byte {
	t.Helper()
	// Marshal validates; write the document without it.
	data, err := Bundle{Created: b.Created, Fleet: b.Fleet, Root: []byte("x"), Password: b.Password}.marshalUnchecked()
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Replace(data, []byte(`"eA=="`), []byte(`"`+base64.StdEncoding.EncodeToString(b.Root)+`"`), 1)
}

func TestParseRefuses(t *testing.T) {
	for _, tt := range badBundles(t) {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Parse(tt.data)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v (bundle %v), want %v", err, b, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "enrolment: ") {
				t.Errorf("error %q does not say where it comes from", err)
			}
		})
	}
}

func TestMarshalValidates(t *testing.T) {
	b := validBundle(t)
	b.Fleet.Broker = "localhost:1883"
	if _, err := b.Marshal(); !errors.Is(err, ErrInvalid) {
		t.Fatalf("got %v, want ErrInvalid", err)
	}
}

// FuzzParse: no input crashes Parse, every refusal is one of the
// sentinels, and what it accepts survives a round trip. The seeds (the
// table above and a good bundle) also run in the normal tests.
func FuzzParse(f *testing.F) {
	b := validBundle(f)
	good, err := b.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	for _, tt := range badBundles(f) {
		f.Add(tt.data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrNotBundle) && !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrVersion) && !errors.Is(err, ErrInvalid) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		again, err := got.Marshal()
		if err != nil {
			t.Fatalf("accepted bundle does not marshal: %v", err)
		}
		if _, err := Parse(again); err != nil {
			t.Fatalf("re-encoded bundle refused: %v", err)
		}
	})
}
