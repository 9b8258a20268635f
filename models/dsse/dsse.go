// Package dsse signs and verifies DSSE envelopes (Dead Simple Signing
// Envelope, secure-systems-lab/dsse v1) with Ed25519 keys and an m-of-n
// threshold. Signatures cover the pre-authentication encoding of the payload
// type and the payload, so a payload can never be re-read as another type.
package dsse

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// MaxSize bounds an encoded envelope.
const MaxSize = 8 << 20

// Errors returned by Verify and Parse; callers test with errors.Is.
var (
	// ErrMalformed: the bytes are not a well-formed envelope.
	ErrMalformed = errors.New("dsse: malformed envelope")
	// ErrPayloadType: the envelope carries another kind of payload.
	ErrPayloadType = errors.New("dsse: wrong payload type")
	// ErrThreshold: fewer valid signatures from trusted keys than required
	// (this includes unsigned envelopes and ones signed by unknown keys).
	ErrThreshold = errors.New("dsse: not enough valid signatures")
)

// Envelope is the JSON form of a DSSE envelope.
type Envelope struct {
	PayloadType string      `json:"payloadType"`
	Payload     []byte      `json:"payload"`
	Signatures  []Signature `json:"signatures"`
}

// Signature is one signature over PAE(payloadType, payload).
type Signature struct {
	KeyID string `json:"keyid"`
	Sig   []byte `json:"sig"`
}

// PAE is the DSSE pre-authentication encoding.
func PAE(payloadType string, payload []byte) []byte {
	var b bytes.Buffer
	b.WriteString("DSSEv1 ")
	b.WriteString(strconv.Itoa(len(payloadType)))
	b.WriteByte(' ')
	b.WriteString(payloadType)
	b.WriteByte(' ')
	b.WriteString(strconv.Itoa(len(payload)))
	b.WriteByte(' ')
	b.Write(payload)
	return b.Bytes()
}

// KeyID names a public key: the hex SHA-256 of its 32 raw bytes.
func KeyID(pub ed25519.PublicKey) string {
	s := sha256.Sum256(pub)
	return hex.EncodeToString(s[:])
}

// Sign returns an envelope over payload signed by every key in keys.
func Sign(payloadType string, payload []byte, keys ...ed25519.PrivateKey) *Envelope {
	env := &Envelope{PayloadType: payloadType, Payload: payload}
	msg := PAE(payloadType, payload)
	for _, k := range keys {
		env.Signatures = append(env.Signatures, Signature{
			KeyID: KeyID(k.Public().(ed25519.PublicKey)),
			Sig:   ed25519.Sign(k, msg),
		})
	}
	return env
}

// Marshal encodes the envelope as JSON.
func (e *Envelope) Marshal() []byte {
	b, err := json.Marshal(e)
	if err != nil {
		panic("dsse: marshal: " + err.Error()) // only []byte and strings: cannot fail
	}
	return b
}

// Parse decodes an envelope without verifying it.
func Parse(b []byte) (*Envelope, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrMalformed, len(b))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var e Envelope
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data", ErrMalformed)
	}
	if e.PayloadType == "" || len(e.Payload) == 0 {
		return nil, fmt.Errorf("%w: empty payload or type", ErrMalformed)
	}
	return &e, nil
}

// Verify checks that at least threshold distinct keys among trusted (keyed by
// KeyID) signed the envelope, and that it has the expected payload type.
// Signatures from unknown keys and invalid signatures are ignored; a key
// counts once however often it signed. A threshold below 1 is refused.
func Verify(e *Envelope, payloadType string, trusted map[string]ed25519.PublicKey, threshold int) error {
	if threshold < 1 {
		return fmt.Errorf("%w: threshold %d", ErrThreshold, threshold)
	}
	if e.PayloadType != payloadType {
		return fmt.Errorf("%w: %q, want %q", ErrPayloadType, e.PayloadType, payloadType)
	}
	msg := PAE(e.PayloadType, e.Payload)
	good := map[string]bool{}
	for _, s := range e.Signatures {
		pub, ok := trusted[s.KeyID]
		if !ok || good[s.KeyID] || len(pub) != ed25519.PublicKeySize {
			continue
		}
		if ed25519.Verify(pub, msg, s.Sig) {
			good[s.KeyID] = true
		}
	}
	if len(good) < threshold {
		return fmt.Errorf("%w: %d of %d required", ErrThreshold, len(good), threshold)
	}
	return nil
}
