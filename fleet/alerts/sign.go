package alerts

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The headers of a delivery.
const (
	// HeaderSignature: "t=<unix seconds>,sha256=<hex>", the HMAC-SHA256
	// with the webhook's secret of "<unix seconds>." followed by the body.
	HeaderSignature = "Outpost-Signature"
	// HeaderKey: the idempotency key, the same on every attempt.
	HeaderKey = "Outpost-Idempotency-Key"
	// HeaderEvent: the event type.
	HeaderEvent = "Outpost-Event"
	// HeaderAttempt: 1 for the first attempt, then 2, 3...
	HeaderAttempt = "Outpost-Attempt"
)

// Errors of Verify; callers test with errors.Is.
var (
	// ErrSignature: the signature header is missing, malformed or does
	// not match the body.
	ErrSignature = errors.New("alerts: bad signature")
	// ErrStale: the signature's timestamp is outside the tolerance (a
	// replay, or clocks far apart).
	ErrStale = errors.New("alerts: signature timestamp outside the tolerance")
)

// Sign returns the Outpost-Signature value for body sent at t.
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",sha256=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Verify checks an Outpost-Signature value against body: the HMAC must
// match and its timestamp be within tolerance of now (a receiver's guard
// against replays; docs/MONITORING.md shows the same check without this
// package).
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts, sig string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "sha256":
			sig = v
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: no timestamp", ErrSignature)
	}
	got, err := hex.DecodeString(sig)
	if err != nil || len(got) != sha256.Size {
		return fmt.Errorf("%w: no sha256", ErrSignature)
	}
	if !hmac.Equal(got, mac(secret, ts, body)) {
		return ErrSignature
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: signed %s ago", ErrStale, d.Round(time.Second))
	}
	return nil
}
