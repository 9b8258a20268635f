// Package routing places a request in a canary's arm: a request's routing
// key (the Outpost-Routing-Key header over HTTP, the outpost-routing-key
// metadata over gRPC) travels in its context, and Canary hashes it with the
// model's name into [0, 100) so the same key lands on the same arm every time
// for the same model and share. A request without a key is placed at random.
//
// It has no cgo: the HTTP and gRPC servers set the key, the serving
// registry reads it.
package routing

import (
	"context"
	"hash/fnv"
	"math/rand/v2"
)

// Header is the HTTP request header carrying the routing key; MetadataKey is
// the gRPC metadata key (lower case, as gRPC sends it).
const (
	Header      = "Outpost-Routing-Key"
	MetadataKey = "outpost-routing-key"
)

// MaxKeyLen bounds the part of a key that is hashed: a longer key is cut.
const MaxKeyLen = 256

type keyCtx struct{}

// WithKey returns ctx carrying a request's routing key; an empty key leaves
// ctx as it is (the request is placed at random).
func WithKey(ctx context.Context, key string) context.Context {
	if key == "" {
		return ctx
	}
	if len(key) > MaxKeyLen {
		key = key[:MaxKeyLen]
	}
	return context.WithValue(ctx, keyCtx{}, key)
}

// Key returns the routing key ctx carries, if any.
func Key(ctx context.Context) (string, bool) {
	k, ok := ctx.Value(keyCtx{}).(string)
	return k, ok
}

// Point is where key falls for model in [0, 100): FNV-1a 64 of the model's
// name, a zero byte and the key, mixed, scaled. It never changes for the
// same key and model, so a client keeps its arm as long as the share does.
func Point(key, model string) float64 {
	h := fnv.New64a()
	h.Write([]byte(model))
	h.Write([]byte{0})
	h.Write([]byte(key))
	// FNV's high bits barely move between keys that differ in their last
	// bytes ("client-1", "client-2"): a finalizer (MurmurHash3's fmix64)
	// spreads every input bit over all of them.
	x := h.Sum64()
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	// The top 53 bits make an exact float64 in [0, 1).
	return float64(x>>11) / (1 << 53) * 100
}

// Canary reports whether the request with ctx goes to the candidate of model,
// which answers percent of the requests: by its key's Point when it has one,
// at random otherwise.
func Canary(ctx context.Context, model string, percent float64) bool {
	if k, ok := Key(ctx); ok {
		return Point(k, model) < percent
	}
	return rand.Float64()*100 < percent
}

// Sample reports whether a request is among percent of them (at random), as
// a shadow's copies are chosen.
func Sample(percent float64) bool { return rand.Float64()*100 < percent }
