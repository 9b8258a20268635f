// Package enrolment is the bootstrap bundle that joins a device to a fleet:
// `outpost-fleet devices enroll --bundle FILE` writes it, `outpost-agent
// enroll FILE` reads it. Both binaries share the format through this package
// (the agent never imports fleet/, the fleet never imports agent/).
//
// A bundle is one JSON document (docs/SECURITY.md, "Enrolment bundles"):
//
//	{
//	  "outpost_enrolment": 1,               format version (Version)
//	  "created": "2026-11-30T01:00:00Z",
//	  "fleet": {                            the agent config's fleet section
//	    "broker": "tcp://fleet.example:1883",
//	    "brokers": ["tcp://fleet.example:1883", "tcp://fleet2.example:1883"],
//	    "name": "acme", "device": "gw-1", "username": "gw-1",
//	    "labels": {"site": "north"}
//	  },
//	  "root": "<base64 of root.json>",      the fleet's trust root, exact bytes
//	  "password": "..."                     the device's broker password (secret)
//	}
//
// "brokers" is there only when the fleet's broker is a cluster of several
// nodes; "broker" is then the first of them. A bundle naming one broker has
// no "brokers", so agents older than the list still read it.
//
// It holds a secret: writers create it with mode 0600, and readers should
// not leave it lying around once installed.
package enrolment

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/models/trust"
	"github.com/outpost-edge/outpost/protocol"
)

// Version is the bundle format this package writes and reads.
const Version = 1

// MaxSize bounds a bundle; a root with a few keys is a few KiB.
const MaxSize = 1 << 20

// Errors; Parse wraps one of them, callers test with errors.Is.
var (
	// ErrNotBundle: the bytes are not an enrolment bundle at all.
	ErrNotBundle = errors.New("enrolment: not an enrolment bundle")
	// ErrTruncated: the document ends early (a partial copy).
	ErrTruncated = errors.New("enrolment: bundle is truncated")
	// ErrVersion: a bundle format this agent does not read.
	ErrVersion = errors.New("enrolment: unsupported bundle version")
	// ErrInvalid: a well-formed bundle with a missing or bad field.
	ErrInvalid = errors.New("enrolment: invalid bundle")
)

// Bundle is a decoded enrolment bundle.
type Bundle struct {
	Format   int       `json:"outpost_enrolment"`
	Created  time.Time `json:"created"`
	Fleet    Fleet     `json:"fleet"`
	Root     []byte    `json:"root"`
	Password string    `json:"password"`
}

// Fleet is what the agent's fleet config section takes from the bundle.
type Fleet struct {
	// Broker is tcp://host:port or ssl://host:port.
	Broker string `json:"broker"`
	// Brokers, when the broker is a cluster, are its nodes in the order the
	// device tries them, Broker first; absent for a single broker. Use
	// SetBrokers and BrokerList rather than the two fields.
	Brokers  []string          `json:"brokers,omitempty"`
	Name     string            `json:"name"`
	Device   string            `json:"device"`
	Username string            `json:"username"`
	Labels   map[string]string `json:"labels,omitempty"`
	// CleanSession asks the device to connect on a clean session with
	// QoS 0 subscriptions (fleet.clean_session): what devices on a NATS
	// cluster need (docs/SCALE.md). Absent means the agent's default.
	CleanSession bool `json:"clean_session,omitempty"`
}

// SetBrokers names the brokers the device dials, in order: Broker is the
// first, Brokers the whole list if it has more than one.
func (f *Fleet) SetBrokers(urls []string) {
	f.Broker, f.Brokers = "", nil
	if len(urls) > 0 {
		f.Broker = urls[0]
	}
	if len(urls) > 1 {
		f.Brokers = append([]string(nil), urls...)
	}
}

// BrokerList is the brokers the device dials, in order: Brokers, or Broker
// alone in a bundle without a list.
func (f Fleet) BrokerList() []string {
	if len(f.Brokers) > 0 {
		return f.Brokers
	}
	return []string{f.Broker}
}

// Marshal validates b and encodes it, Format set to Version.
func (b Bundle) Marshal() ([]byte, error) {
	b.Format = Version
	if err := b.Validate(); err != nil {
		return nil, err
	}
	return b.marshalUnchecked()
}

func (b Bundle) marshalUnchecked() ([]byte, error) {
	b.Format = Version
	out, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("enrolment: %w", err)
	}
	return append(out, '\n'), nil
}

// Parse decodes and validates a bundle. Unknown fields are refused: a field
// this version does not know may be one it must not ignore.
func Parse(data []byte) (*Bundle, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrNotBundle, len(data), MaxSize)
	}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrTruncated)
	}
	if trimmed[0] != '{' {
		return nil, fmt.Errorf("%w: not a JSON document", ErrNotBundle)
	}
	// The version first, on its own: a newer format may differ anywhere else.
	var head struct {
		Format *int `json:"outpost_enrolment"`
	}
	if err := json.Unmarshal(trimmed, &head); err != nil {
		return nil, syntaxError(err)
	}
	switch {
	case head.Format == nil:
		return nil, fmt.Errorf("%w: no outpost_enrolment version field", ErrNotBundle)
	case *head.Format != Version:
		return nil, fmt.Errorf("%w: format %d, this agent reads %d (use an agent as new as the controller)", ErrVersion, *head.Format, Version)
	}
	var b Bundle
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return nil, syntaxError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: data after the document", ErrNotBundle)
	}
	if err := b.Validate(); err != nil {
		return nil, err
	}
	return &b, nil
}

// syntaxError classifies a decoding error.
func syntaxError(err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	var be base64.CorruptInputError
	switch {
	case errors.As(err, &be):
		return fmt.Errorf("%w: root is not base64 (%v)", ErrInvalid, err)
	case errors.Is(err, io.ErrUnexpectedEOF) || (errors.As(err, &se) && strings.Contains(se.Error(), "unexpected end")):
		return fmt.Errorf("%w (copied only in part?)", ErrTruncated)
	case errors.As(err, &te):
		return fmt.Errorf("%w: %s: want %s", ErrInvalid, te.Field, te.Type)
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return fmt.Errorf("%w: %s", ErrInvalid, strings.TrimPrefix(err.Error(), "json: "))
	default:
		return fmt.Errorf("%w: %v", ErrNotBundle, err)
	}
}

// Validate checks every field; the root must be a root.json signed by its
// own root keys.
func (b *Bundle) Validate() error {
	var errs []string
	if b.Format != Version {
		errs = append(errs, fmt.Sprintf("format %d, want %d", b.Format, Version))
	}
	f := b.Fleet
	if !brokerURL(f.Broker) {
		errs = append(errs, fmt.Sprintf("fleet.broker %q: want tcp://host:port or ssl://host:port", f.Broker))
	}
	if len(f.Brokers) > 0 && f.Brokers[0] != f.Broker {
		errs = append(errs, fmt.Sprintf("fleet.brokers starts with %q, not fleet.broker %q", f.Brokers[0], f.Broker))
	}
	seen := make(map[string]bool, len(f.Brokers))
	for i, u := range f.Brokers {
		switch {
		case !brokerURL(u):
			errs = append(errs, fmt.Sprintf("fleet.brokers[%d] %q: want tcp://host:port or ssl://host:port", i, u))
		case seen[u]:
			errs = append(errs, fmt.Sprintf("fleet.brokers[%d] %q: named twice", i, u))
		}
		seen[u] = true
	}
	if _, err := protocol.DeviceTopics(f.Name, f.Device); err != nil {
		errs = append(errs, fmt.Sprintf("fleet.name %q, fleet.device %q: %v", f.Name, f.Device, err))
	}
	if f.Username == "" || !printable(f.Username) {
		errs = append(errs, "fleet.username is missing or not printable")
	}
	for k, v := range f.Labels {
		if !protocol.ValidLabel(k, v) {
			errs = append(errs, fmt.Sprintf("fleet.labels: bad label %q=%q", k, v))
		}
	}
	if len(b.Root) == 0 {
		errs = append(errs, "root is missing")
	} else if _, err := trust.LoadRoot(b.Root); err != nil {
		errs = append(errs, fmt.Sprintf("root: %v", err))
	}
	if b.Password == "" || !printable(b.Password) {
		errs = append(errs, "password is missing or not printable")
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalid, strings.Join(errs, "; "))
	}
	return nil
}

// brokerURL reports whether s is tcp://host:port or ssl://host:port.
func brokerURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "tcp" || u.Scheme == "ssl") && u.Host != ""
}

// printable reports whether s is visible ASCII without spaces: it goes into
// a one-line password file and an MQTT login.
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}
